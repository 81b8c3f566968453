//! Which points of production's history a replica can be trusted at, as its apply thread
//! learns it from the super-transaction markers production journals (`resync:begin` …
//! `resync:end`, `redoubt_journal`).
//!
//! Between the two markers a replica receives whole regions as production has them *now*,
//! in order with the writes that keep coming: at those seqs it is a mix of two points in time
//! and equals production as of no seq. Before a replica has received everything from seq 1,
//! or finished its first sync, it holds nothing usable. Consistency is a property of the seq,
//! not of the replica's path: a rollback to seq S leaves a replica exactly as consistent as
//! S is. A resync target keeps a snapshot of seq `begin - 1` until the end marker
//! (`snapshot::PRE_RESYNC_SNAPSHOT_NAME`); rollbacks, snapshots and promotions to an
//! inconsistent seq are refused. Pure state, no I/O: the apply thread feeds it and persists
//! it with its checkpoint.

use serde::{Deserialize, Serialize};

/// Super transactions remembered; older ones are beyond any restore window in practice
/// (each rewrites regions, and the undo journal holds the pre-images of those writes).
pub const RESYNC_INTERVALS_MAX: usize = 64;

/// One super transaction as this replica saw it: seqs `begin_seq..end_seq` are inconsistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncInterval {
    pub begin_seq: u64,
    /// `None` while under way.
    pub end_seq: Option<u64>,
}

/// What the apply thread knows about the consistency of its replica's points (kept in its
/// state file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncState {
    /// The first seq at which the replica equalled production: 0 when it received everything
    /// from seq 1, the end of its first super transaction otherwise; `None`: not yet.
    pub consistent_from_seq: Option<u64>,
    /// Super transactions seen, oldest first (at most [`RESYNC_INTERVALS_MAX`]).
    pub intervals: Vec<ResyncInterval>,
}

/// A change the apply thread reports to its observer once the run holding the marker is
/// applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncEvent {
    /// A super transaction began at `begin_seq`; `consistent_before`: the replica equalled
    /// production as of `begin_seq - 1`.
    Began {
        begin_seq: u64,
        consistent_before: bool,
    },
    /// The super transaction ended at `end_seq`: the replica is consistent again.
    Ended { begin_seq: u64, end_seq: u64 },
}

impl ResyncState {
    /// A replica that follows production from `checkpoint_seq` on (after a failover):
    /// `consistent` says whether it equals production there.
    pub fn following_from(checkpoint_seq: u64, consistent: bool) -> ResyncState {
        ResyncState {
            consistent_from_seq: consistent.then_some(checkpoint_seq),
            intervals: Vec::new(),
        }
    }

    /// The super transaction under way, if one is.
    pub fn open_begin_seq(&self) -> Option<u64> {
        self.intervals
            .last()
            .filter(|interval| interval.end_seq.is_none())
            .map(|interval| interval.begin_seq)
    }

    /// Record `seq` was applied on the replica of recovery server `server`; answers the event
    /// a product marker in it stands for. A marker already known (a replay after a restart, a
    /// resume after a rollback, production extending its super transaction) reports its event
    /// again but changes nothing. A super transaction for other servers (`resync:begin:dr-c`
    /// seen on dr-b) leaves this replica consistent: it already holds the regions it resends.
    pub fn on_applied(
        &mut self,
        seq: u64,
        marker: Option<&[u8]>,
        server: &str,
    ) -> Option<ResyncEvent> {
        if seq == 1 && self.consistent_from_seq.is_none() {
            // A replica that receives production's very first record has everything, from
            // the empty image before it on.
            self.consistent_from_seq = Some(0);
        }
        let marker = marker?;
        if let Some(targets) = redoubt_journal::ResyncTargets::from_begin_marker(marker) {
            if !targets.includes(server) && self.open_begin_seq().is_none() {
                return None;
            }
            let known = self.intervals.iter().any(|interval| {
                interval.begin_seq == seq
                    || (interval.begin_seq < seq && interval.end_seq.is_none_or(|end| seq < end))
            });
            if !known {
                self.intervals.push(ResyncInterval {
                    begin_seq: seq,
                    end_seq: None,
                });
                if self.intervals.len() > RESYNC_INTERVALS_MAX {
                    self.intervals.remove(0);
                }
            }
            let begin_seq = self
                .intervals
                .iter()
                .rev()
                .find(|interval| interval.begin_seq <= seq)
                .map_or(seq, |interval| interval.begin_seq);
            Some(ResyncEvent::Began {
                begin_seq,
                consistent_before: self.consistent_at(begin_seq.saturating_sub(1)),
            })
        } else if marker == redoubt_journal::RESYNC_END_MARKER.as_bytes() {
            let begin_seq = match self
                .intervals
                .iter_mut()
                .rev()
                .find(|interval| interval.begin_seq < seq)
            {
                Some(interval) if interval.end_seq.is_none_or(|end| end == seq) => {
                    interval.end_seq = Some(seq);
                    interval.begin_seq
                }
                // The end of a super transaction for other servers: nothing changes here.
                _ if self.consistent_from_seq.is_some() => return None,
                // The end of a super transaction whose begin came before this replica's
                // first record: seqs before it were never consistent here anyway.
                _ => seq,
            };
            if self.consistent_from_seq.is_none() {
                self.consistent_from_seq = Some(seq);
            }
            Some(ResyncEvent::Ended {
                begin_seq,
                end_seq: seq,
            })
        } else {
            None
        }
    }

    /// Whether the replica, at `seq`, equals production as of `seq`.
    pub fn consistent_at(&self, seq: u64) -> bool {
        self.inconsistent_reason(seq).is_none()
    }

    /// Why the replica at `seq` is not production as of `seq` (`None`: it is).
    pub fn inconsistent_reason(&self, seq: u64) -> Option<String> {
        let Some(from_seq) = self.consistent_from_seq else {
            return Some(
                "this replica holds no consistent image yet: its first sync has not ended"
                    .to_string(),
            );
        };
        if seq < from_seq {
            return Some(format!(
                "this replica became consistent at seq {from_seq} (its first sync ended there); it holds no image of earlier points"
            ));
        }
        for interval in &self.intervals {
            match interval.end_seq {
                Some(end_seq) if (interval.begin_seq..end_seq).contains(&seq) => {
                    return Some(format!(
                        "seq {seq} is inside the super transaction of seqs {}..{end_seq}, when the replica was a mix of two points in time; choose a point before seq {} or from seq {end_seq} on",
                        interval.begin_seq, interval.begin_seq
                    ));
                }
                None if seq >= interval.begin_seq => {
                    return Some(format!(
                        "seq {seq} is inside the super transaction under way since seq {}: the replica is a mix of two points in time there; choose a point before seq {}",
                        interval.begin_seq, interval.begin_seq
                    ));
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: &[u8] = redoubt_journal::RESYNC_BEGIN_MARKER.as_bytes();
    const END: &[u8] = redoubt_journal::RESYNC_END_MARKER.as_bytes();

    #[test]
    fn an_initial_sync_has_nothing_consistent_before_it() {
        let mut state = ResyncState::default();
        // First contact after seq 1: the replica holds nothing usable yet.
        assert_eq!(state.on_applied(5, None, "dr-b"), None);
        assert_eq!(
            state.on_applied(6, Some(BEGIN), "dr-b"),
            Some(ResyncEvent::Began {
                begin_seq: 6,
                consistent_before: false
            })
        );
        assert!(!state.consistent_at(7));
        assert_eq!(
            state.on_applied(9, Some(END), "dr-b"),
            Some(ResyncEvent::Ended {
                begin_seq: 6,
                end_seq: 9
            })
        );
        assert!(!state.consistent_at(5));
        assert!(!state.consistent_at(7));
        assert!(state.consistent_at(9));
        assert!(state.consistent_at(12));
    }

    #[test]
    fn a_resync_of_a_synced_replica_has_a_consistent_point_before_it() {
        let mut state = ResyncState::default();
        state.on_applied(1, None, "dr-b");
        assert!(state.consistent_at(1));
        assert!(state.consistent_at(0));
        assert_eq!(
            state.on_applied(10, Some(BEGIN), "dr-b"),
            Some(ResyncEvent::Began {
                begin_seq: 10,
                consistent_before: true
            })
        );
        assert_eq!(state.open_begin_seq(), Some(10));
        // A replay of the begin: the same event, nothing new.
        let before = state.clone();
        assert_eq!(
            state.on_applied(10, Some(BEGIN), "dr-b"),
            Some(ResyncEvent::Began {
                begin_seq: 10,
                consistent_before: true
            })
        );
        assert_eq!(state, before);
        assert!(state.consistent_at(9));
        assert!(!state.consistent_at(10));
        let reason = state.inconsistent_reason(12).unwrap();
        assert!(reason.contains("before seq 10"), "{reason}");
        // A user marker is not a product marker.
        assert_eq!(state.on_applied(11, Some(b"before-upgrade"), "dr-b"), None);
        state.on_applied(20, Some(END), "dr-b");
        assert_eq!(state.open_begin_seq(), None);
        assert!(state.consistent_at(9));
        assert!(!state.consistent_at(19));
        assert!(state.consistent_at(20));
    }

    #[test]
    fn replays_after_a_rollback_change_nothing() {
        let mut state = ResyncState::default();
        state.on_applied(1, None, "dr-b");
        state.on_applied(10, Some(BEGIN), "dr-b");
        state.on_applied(20, Some(END), "dr-b");
        state.on_applied(30, Some(BEGIN), "dr-b");
        let known = state.clone();
        // Rolled back to 15 and resumed: 20, then 30 are applied again.
        assert_eq!(
            state.on_applied(20, Some(END), "dr-b"),
            Some(ResyncEvent::Ended {
                begin_seq: 10,
                end_seq: 20
            })
        );
        state.on_applied(30, Some(BEGIN), "dr-b");
        assert_eq!(state, known);
        assert!(!state.consistent_at(15));
        assert!(state.consistent_at(25));
        assert!(!state.consistent_at(31));
    }

    #[test]
    fn intervals_are_bounded_and_a_follower_starts_where_it_was_told() {
        let mut state = ResyncState::following_from(100, true);
        assert!(state.consistent_at(100));
        assert!(!state.consistent_at(99));
        for index in 0..(RESYNC_INTERVALS_MAX as u64 + 10) {
            let begin = 200 + index * 10;
            state.on_applied(begin, Some(BEGIN), "dr-b");
            state.on_applied(begin + 5, Some(END), "dr-b");
        }
        assert_eq!(state.intervals.len(), RESYNC_INTERVALS_MAX);
        assert!(!ResyncState::following_from(100, false).consistent_at(150));
    }

    #[test]
    fn a_super_transaction_for_another_server_leaves_a_synced_replica_consistent() {
        let mut state = ResyncState::default();
        state.on_applied(1, None, "dr-b");
        // dr-c was added: production resends every region for it alone.
        assert_eq!(
            state.on_applied(10, Some(b"resync:begin:dr-c"), "dr-b"),
            None
        );
        assert_eq!(state.open_begin_seq(), None);
        assert!(
            state.consistent_at(15),
            "{:?}",
            state.inconsistent_reason(15)
        );
        assert_eq!(state.on_applied(20, Some(END), "dr-b"), None);
        assert!(state.consistent_at(25));
        // The same markers on dr-c: a super transaction from seq 10 to 20.
        let mut added = ResyncState::default();
        added.on_applied(5, None, "dr-c");
        assert!(matches!(
            added.on_applied(10, Some(b"resync:begin:dr-c"), "dr-c"),
            Some(ResyncEvent::Began { begin_seq: 10, .. })
        ));
        assert!(!added.consistent_at(15));
        added.on_applied(20, Some(END), "dr-c");
        assert!(added.consistent_at(20));
        // A wider begin inside it that names dr-b too makes dr-b inconsistent from there.
        assert!(matches!(
            state.on_applied(30, Some(b"resync:begin:dr-b,dr-c"), "dr-b"),
            Some(ResyncEvent::Began {
                begin_seq: 30,
                consistent_before: true
            })
        ));
        assert!(!state.consistent_at(31));
    }
}
