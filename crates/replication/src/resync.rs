//! Whether a replica is consistent, as its apply thread learns it from the super-transaction
//! markers production journals (`resync:begin` … `resync:end`, `redoubt_journal`).
//!
//! Between the two markers a replica receives whole regions as production has them *now*,
//! in order with the writes that keep coming: it is a mix of two points in time and equals
//! production as of no seq. Before the begin marker it was a prefix of production's history
//! (if it was one at all: a replica that has never finished a sync holds nothing usable), so
//! a resync target keeps a snapshot of seq `begin - 1` until the end marker
//! (`snapshot::PRE_RESYNC_SNAPSHOT_NAME`). Pure state, no I/O: the apply thread feeds it and
//! persists it with its checkpoint.

use serde::{Deserialize, Serialize};

/// What the apply thread knows about the replica's consistency (kept in its state file).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncState {
    /// The replica equals production as of its applied seq: it applied every record from
    /// seq 1, or a super transaction ended since it was created; false during one.
    pub replica_synced: bool,
    /// The begin seq of the super transaction under way on this replica.
    pub open_begin_seq: Option<u64>,
    /// `replica_synced` just before the open (or the last) super transaction began.
    pub synced_before: bool,
    /// (begin, end) seqs of the last completed super transaction.
    pub last: Option<(u64, u64)>,
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
    Ended {
        begin_seq: Option<u64>,
        end_seq: u64,
    },
}

impl ResyncState {
    /// Record `seq` was applied; answers the event a product marker in it stands for.
    /// A begin while one is open (production extended its super transaction, or a replay
    /// after a restart) changes nothing.
    pub fn on_applied(&mut self, seq: u64, marker: Option<&[u8]>) -> Option<ResyncEvent> {
        if seq == 1 {
            // A replica that receives production's very first record has everything.
            self.replica_synced = true;
        }
        let marker = marker?;
        if marker == redoubt_journal::RESYNC_BEGIN_MARKER.as_bytes() {
            if self.open_begin_seq.is_some() {
                return None;
            }
            self.synced_before = self.replica_synced;
            self.replica_synced = false;
            self.open_begin_seq = Some(seq);
            Some(ResyncEvent::Began {
                begin_seq: seq,
                consistent_before: self.synced_before,
            })
        } else if marker == redoubt_journal::RESYNC_END_MARKER.as_bytes() {
            let begin_seq = self.open_begin_seq.take();
            if let Some(begin_seq) = begin_seq {
                self.last = Some((begin_seq, seq));
            }
            self.replica_synced = true;
            Some(ResyncEvent::Ended {
                begin_seq,
                end_seq: seq,
            })
        } else {
            None
        }
    }

    /// The replica was rolled back to `seq`: back before a begin it is what it was then;
    /// back inside the last completed super transaction it is mid-resync again (the resume
    /// re-applies its end). Older super transactions are not remembered: rolling back across
    /// one of them keeps the state from before the last one.
    pub fn on_rolled_back(&mut self, seq: u64) {
        if let Some(begin_seq) = self.open_begin_seq {
            if seq < begin_seq {
                self.open_begin_seq = None;
                self.replica_synced = self.synced_before;
            }
            return;
        }
        if let Some((begin_seq, end_seq)) = self.last {
            if seq >= end_seq {
                return;
            }
            if seq >= begin_seq {
                self.open_begin_seq = Some(begin_seq);
                self.replica_synced = false;
            } else {
                self.replica_synced = self.synced_before;
            }
        }
    }

    /// Whether the replica equals production as of `seq` (a seq it has applied), as far as
    /// this state knows: inside the open or last super transaction it does not.
    pub fn consistent_at(&self, seq: u64) -> bool {
        if let Some(begin_seq) = self.open_begin_seq {
            return seq < begin_seq && self.synced_before;
        }
        match self.last {
            Some((begin_seq, end_seq)) if seq >= begin_seq && seq < end_seq => false,
            Some((begin_seq, _)) if seq < begin_seq => self.synced_before,
            _ => self.replica_synced,
        }
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
        assert_eq!(state.on_applied(5, None), None);
        assert_eq!(
            state.on_applied(6, Some(BEGIN)),
            Some(ResyncEvent::Began {
                begin_seq: 6,
                consistent_before: false
            })
        );
        assert!(!state.replica_synced);
        assert_eq!(
            state.on_applied(9, Some(END)),
            Some(ResyncEvent::Ended {
                begin_seq: Some(6),
                end_seq: 9
            })
        );
        assert!(state.replica_synced);
        assert!(!state.consistent_at(7));
        assert!(state.consistent_at(9));
    }

    #[test]
    fn a_resync_of_a_synced_replica_has_a_consistent_point_before_it() {
        let mut state = ResyncState::default();
        state.on_applied(1, None);
        assert!(state.replica_synced);
        assert_eq!(
            state.on_applied(10, Some(BEGIN)),
            Some(ResyncEvent::Began {
                begin_seq: 10,
                consistent_before: true
            })
        );
        // A replay of the begin, or production extending its super transaction: nothing new.
        assert_eq!(state.on_applied(10, Some(BEGIN)), None);
        assert!(state.consistent_at(9));
        assert!(!state.consistent_at(10));
        assert!(!state.consistent_at(12));
        // A user marker is not a product marker.
        assert_eq!(state.on_applied(11, Some(b"before-upgrade")), None);
    }

    #[test]
    fn rollback_before_or_into_a_super_transaction_restores_what_was_true_there() {
        let mut state = ResyncState::default();
        state.on_applied(1, None);
        state.on_applied(10, Some(BEGIN));
        state.on_applied(20, Some(END));
        // Back into it: mid-resync again until the resume re-applies the end.
        let mut inside = state.clone();
        inside.on_rolled_back(15);
        assert_eq!(inside.open_begin_seq, Some(10));
        assert!(!inside.replica_synced);
        assert_eq!(
            inside.on_applied(20, Some(END)),
            Some(ResyncEvent::Ended {
                begin_seq: Some(10),
                end_seq: 20
            })
        );
        assert!(inside.replica_synced);
        // Back before it: consistent, as the replica was then.
        let mut before = state.clone();
        before.on_rolled_back(9);
        assert!(before.replica_synced);
        assert_eq!(before.open_begin_seq, None);
        // After it: nothing changes.
        let mut after = state.clone();
        after.on_rolled_back(25);
        assert_eq!(after, state);
        // An open one, rolled back before its begin.
        let mut open = ResyncState::default();
        open.on_applied(1, None);
        open.on_applied(30, Some(BEGIN));
        open.on_rolled_back(29);
        assert_eq!(open.open_begin_seq, None);
        assert!(open.replica_synced);
    }
}
