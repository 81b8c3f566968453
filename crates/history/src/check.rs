//! The checker: proves an image equals production as of exactly one point in its history,
//! or names the first block that shows it does not.

use std::fmt;
use std::io;

use crate::block::{decode_block, BlockContent, BlockIdentity, Corruption, BLOCK_SIZE_BYTES};
use crate::history::{History, RecordedWrite};
use crate::image::ImageReader;

/// One block of one LV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockLocation {
    pub lv_index: u32,
    pub block_index: u64,
}

impl BlockLocation {
    pub fn offset_bytes(&self) -> u64 {
        self.block_index.saturating_mul(BLOCK_SIZE_BYTES as u64)
    }
}

impl fmt::Display for BlockLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lv {} block {} (byte offset {})",
            self.lv_index,
            self.block_index,
            self.offset_bytes()
        )
    }
}

/// A write of the history, named by id and seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRef {
    pub write_id: u64,
    pub seq: u64,
}

impl WriteRef {
    fn of(write: &RecordedWrite) -> Self {
        Self {
            write_id: write.op.write_id,
            seq: write.seq,
        }
    }
}

impl fmt::Display for WriteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "write {} (seq {})", self.write_id, self.seq)
    }
}

/// A valid block, placed in the history: what it holds and what overwrote that next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockState {
    pub location: BlockLocation,
    /// `None`: the block is zero.
    pub held: Option<WriteRef>,
    /// The first write after `held` (or the first write at all, for a zero block) that
    /// covered this block; `None` if production never overwrote it.
    pub next: Option<WriteRef>,
}

impl BlockState {
    /// The image's seq is at least this.
    fn seq_lower(&self) -> u64 {
        self.held.map_or(0, |held| held.seq)
    }

    /// The image's seq is below this.
    fn seq_upper_exclusive(&self) -> u64 {
        self.next.map_or(u64::MAX, |next| next.seq)
    }

    /// "lv 1 block 37 (byte offset ..) holds write 812 (seq 812)".
    fn describe_held(&self) -> String {
        match self.held {
            Some(held) => format!("{} holds {held}", self.location),
            None => format!("{} is zero (never written)", self.location),
        }
    }

    /// "lv 0 block 3 (..) still holds write 790 (seq 790), overwritten at seq 801 by write 801".
    fn describe_stale(&self) -> String {
        match (self.held, self.next) {
            (Some(held), Some(next)) => format!(
                "{} still holds {held}, overwritten at seq {} by write {}",
                self.location, next.seq, next.write_id
            ),
            (None, Some(next)) => format!(
                "{} is still zero, although write {} wrote it at seq {}",
                self.location, next.write_id, next.seq
            ),
            (_, None) => self.describe_held(),
        }
    }
}

/// The image equals production as of every seq in `seq_min..=seq_max` (both are recorded
/// seqs, or 0 for "before any write"; the image is the same at all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixProof {
    pub seq_min: u64,
    pub seq_max: u64,
    pub block_count: u64,
    /// Blocks that were not zero.
    pub block_written_count: u64,
}

/// Why an image is not production as of one seq. Each message names the first offending
/// block (LV, block index, byte offset) and says what it holds.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error("{}", describe_corrupt(.location, .corruption))]
    Corrupt {
        location: BlockLocation,
        corruption: Corruption,
    },
    #[error(
        "{location} holds foreign data (not zero and no history block header): something other \
         than this workload wrote it"
    )]
    Foreign { location: BlockLocation },
    #[error(
        "{location} holds write {} of another run (run id {:#018x}; this run is {run_id_expected:#018x}): \
         stale data that should have been overwritten or never copied",
        .identity.write_id, .identity.run_id
    )]
    StaleRun {
        location: BlockLocation,
        identity: BlockIdentity,
        run_id_expected: u64,
    },
    #[error(
        "{location} holds block {} of write {}, which belongs at lv {} block {}: a misdirected write",
        .identity.block_in_write, .identity.write_id, .identity.lv_index, .identity.block_index
    )]
    Misplaced {
        location: BlockLocation,
        identity: BlockIdentity,
    },
    #[error("{location} holds write {write_id}, which production never acknowledged")]
    UnknownWrite {
        location: BlockLocation,
        write_id: u64,
    },
    #[error(
        "{location} holds block {} of {} of write {}, but production's write {} covered lv {} blocks \
         {}..{}",
        .identity.block_in_write, .identity.block_count, .identity.write_id, .identity.write_id,
        .recorded.op.lv_index, .recorded.op.block_first(),
        .recorded.op.block_first() + u64::from(.recorded.op.block_count)
    )]
    NotInWrite {
        location: BlockLocation,
        identity: BlockIdentity,
        recorded: RecordedWrite,
    },
    /// Two blocks disagree about the point in time: `newer` holds a write that `older` has
    /// not seen overwritten yet. `offender` is the one found second in LV, block order.
    #[error("{}", describe_mixed(.offender, .newer, .older))]
    MixedPointsInTime {
        offender: BlockLocation,
        // Boxed to keep `Result<_, Violation>` small on the success path.
        newer: Box<BlockState>,
        older: Box<BlockState>,
    },
    #[error(
        "{}, but production as of seq {seq} {}",
        .found.describe_held(),
        describe_expected(.expected)
    )]
    NotAtSeq {
        found: BlockState,
        seq: u64,
        expected: Option<WriteRef>,
    },
    #[error(
        "{}, but every write up to seq {seq_min} was acknowledged before a completed flush and \
         must read back: an acknowledged write was lost",
        .found.describe_stale()
    )]
    LostWrite { found: BlockState, seq_min: u64 },
    /// The image could not be read, so nothing was proven.
    #[error("read {location}")]
    ReadFailed {
        location: BlockLocation,
        #[source]
        source: io::Error,
    },
}

impl Violation {
    /// The block the message is about (the first offending one).
    pub fn location(&self) -> BlockLocation {
        match self {
            Violation::Corrupt { location, .. }
            | Violation::Foreign { location }
            | Violation::StaleRun { location, .. }
            | Violation::Misplaced { location, .. }
            | Violation::UnknownWrite { location, .. }
            | Violation::NotInWrite { location, .. }
            | Violation::MixedPointsInTime {
                offender: location, ..
            }
            | Violation::ReadFailed { location, .. } => *location,
            Violation::NotAtSeq { found, .. } | Violation::LostWrite { found, .. } => {
                found.location
            }
        }
    }
}

fn describe_corrupt(location: &BlockLocation, corruption: &Corruption) -> String {
    match corruption {
        Corruption::Torn {
            header,
            intact_bytes,
        } => format!(
            "{location} is torn: its first {intact_bytes} bytes are block {} of write {} but the \
             rest is not (a partial write, or pieces of two writes in one block)",
            header.block_in_write, header.write_id
        ),
        Corruption::ChecksumMismatch { stored, computed } => format!(
            "{location} is corrupt: checksum mismatch (stored {stored:#010x}, computed \
             {computed:#010x}) with a damaged header"
        ),
        Corruption::InvalidHeader { header } => format!(
            "{location} is corrupt: its checksum matches but its header is impossible (write {}, \
             block {} of {})",
            header.write_id, header.block_in_write, header.block_count
        ),
        Corruption::UnknownVersion { version } => {
            format!("{location} has history block format version {version}, unknown to this build")
        }
    }
}

fn describe_mixed(offender: &BlockLocation, newer: &BlockState, older: &BlockState) -> String {
    let suffix = "the image mixes two points in time";
    if *offender == newer.location {
        format!(
            "{} but {}: {suffix}",
            newer.describe_held(),
            older.describe_stale()
        )
    } else {
        format!(
            "{}, but {}: {suffix}",
            older.describe_stale(),
            newer.describe_held()
        )
    }
}

fn describe_expected(expected: &Option<WriteRef>) -> String {
    match expected {
        Some(write) => format!("held {write}"),
        None => "held zero (never written)".to_string(),
    }
}

/// Proves the image equals production as of exactly one point of `history` (any seq in the
/// returned range), or returns the first block that shows it is a mix, or damaged.
///
/// O(blocks × log(writes per block)) after a one-time O(blocks + block-writes) index build.
pub fn check_prefix<R: ImageReader + ?Sized>(
    history: &History,
    reader: &mut R,
) -> Result<PrefixProof, Violation> {
    scan(history, reader, 0)
}

/// Like [`check_prefix`], and also every write with `seq <= seq_min` reads back (each block
/// is as new as, or newer than, production's block at `seq_min`). Use
/// `history.flush_seq_last()` for "everything acknowledged before the last FLUSH survived".
pub fn check_at_least<R: ImageReader + ?Sized>(
    history: &History,
    seq_min: u64,
    reader: &mut R,
) -> Result<PrefixProof, Violation> {
    let proof = scan(history, reader, seq_min)?;
    assert!(proof.seq_max >= history.seq_floor(seq_min));
    Ok(proof)
}

/// Proves the image equals production as of `seq` (e.g. after a rollback to `seq`), or names
/// the first block that differs.
pub fn check_exact<R: ImageReader + ?Sized>(
    history: &History,
    seq: u64,
    reader: &mut R,
) -> Result<PrefixProof, Violation> {
    let seq_canonical = history.seq_floor(seq);
    let mut counts = Counts::default();
    let mut buf = [0u8; BLOCK_SIZE_BYTES];
    for_each_block(history, |location| {
        let found = read_state(history, reader, location, &mut buf)?;
        counts.add(&found);
        let expected = expected_at(history, location, seq_canonical);
        if found.held != expected {
            return Err(Violation::NotAtSeq {
                found,
                seq: seq_canonical,
                expected,
            });
        }
        Ok(())
    })?;
    Ok(PrefixProof {
        seq_min: seq_canonical,
        seq_max: seq_canonical,
        block_count: counts.blocks,
        block_written_count: counts.written,
    })
}

#[derive(Default)]
struct Counts {
    blocks: u64,
    written: u64,
}

impl Counts {
    fn add(&mut self, state: &BlockState) {
        self.blocks += 1;
        self.written += u64::from(state.held.is_some());
    }
}

/// The interval proof: every block narrows `[lower, upper)`, the set of seqs the image can
/// be; the first block that empties it conflicts with the block that set the other bound.
fn scan<R: ImageReader + ?Sized>(
    history: &History,
    reader: &mut R,
    seq_floor: u64,
) -> Result<PrefixProof, Violation> {
    // `None` witnesses: the lower bound came from the caller's floor, the upper from nothing.
    let mut lower: (u64, Option<BlockState>) = (seq_floor, None);
    let mut upper: (u64, Option<BlockState>) = (u64::MAX, None);
    let mut counts = Counts::default();
    let mut buf = [0u8; BLOCK_SIZE_BYTES];
    for_each_block(history, |location| {
        let state = read_state(history, reader, location, &mut buf)?;
        counts.add(&state);
        if state.seq_upper_exclusive() <= lower.0 {
            return Err(match lower.1 {
                Some(newer) => Violation::MixedPointsInTime {
                    offender: location,
                    newer: Box::new(newer),
                    older: Box::new(state),
                },
                None => Violation::LostWrite {
                    found: state,
                    seq_min: seq_floor,
                },
            });
        }
        if state.seq_lower() >= upper.0 {
            // `upper` is below u64::MAX, so some block set it.
            if let Some(older) = upper.1 {
                return Err(Violation::MixedPointsInTime {
                    offender: location,
                    newer: Box::new(state),
                    older: Box::new(older),
                });
            }
        }
        if state.seq_lower() > lower.0 {
            lower = (state.seq_lower(), Some(state));
        }
        if state.seq_upper_exclusive() < upper.0 {
            upper = (state.seq_upper_exclusive(), Some(state));
        }
        assert!(lower.0 < upper.0);
        Ok(())
    })?;
    let seq_max = history.seq_floor(upper.0 - 1);
    assert!(lower.0 < upper.0);
    Ok(PrefixProof {
        seq_min: history.seq_floor(lower.0),
        seq_max,
        block_count: counts.blocks,
        block_written_count: counts.written,
    })
}

fn for_each_block(
    history: &History,
    mut visit: impl FnMut(BlockLocation) -> Result<(), Violation>,
) -> Result<(), Violation> {
    for (lv_index, &block_count) in history.lv_block_counts().iter().enumerate() {
        for block_index in 0..block_count {
            visit(BlockLocation {
                lv_index: lv_index as u32,
                block_index,
            })?;
        }
    }
    Ok(())
}

/// The write production's block held as of `seq`, or `None` for zero.
fn expected_at(history: &History, location: BlockLocation, seq: u64) -> Option<WriteRef> {
    let writes = history.writes();
    let writers = history
        .index()
        .writers(location.lv_index, location.block_index);
    let count = writers.partition_point(|&position| writes[position as usize].seq <= seq);
    let position = *writers.get(count.checked_sub(1)?)?;
    Some(WriteRef::of(&writes[position as usize]))
}

/// Reads and decodes one block and places it in the history.
fn read_state<R: ImageReader + ?Sized>(
    history: &History,
    reader: &mut R,
    location: BlockLocation,
    buf: &mut [u8; BLOCK_SIZE_BYTES],
) -> Result<BlockState, Violation> {
    reader
        .read_block(location.lv_index, location.block_index, buf)
        .map_err(|source| Violation::ReadFailed { location, source })?;
    let writes = history.writes();
    let writers = history
        .index()
        .writers(location.lv_index, location.block_index);
    let identity = match decode_block(buf) {
        BlockContent::Zero => {
            return Ok(BlockState {
                location,
                held: None,
                next: writers.first().map(|&p| WriteRef::of(&writes[p as usize])),
            })
        }
        BlockContent::Foreign => return Err(Violation::Foreign { location }),
        BlockContent::Corrupt(corruption) => {
            return Err(Violation::Corrupt {
                location,
                corruption,
            })
        }
        BlockContent::Written(identity) => identity,
    };
    let position = resolve_write(history, location, &identity)?;
    // The writer list is in position order; a valid identity is always in it.
    let rank = writers
        .binary_search(&position)
        .map_err(|_| Violation::Misplaced { location, identity })?;
    let next = writers
        .get(rank + 1)
        .map(|&p| WriteRef::of(&writes[p as usize]));
    let held = WriteRef::of(&writes[position as usize]);
    debug_assert!(next.is_none_or(|next| next.seq > held.seq));
    Ok(BlockState {
        location,
        held: Some(held),
        next,
    })
}

/// Checks a decoded identity against its location and the history; returns the write's
/// position in the history.
fn resolve_write(
    history: &History,
    location: BlockLocation,
    identity: &BlockIdentity,
) -> Result<u32, Violation> {
    if identity.run_id != history.run_id() {
        return Err(Violation::StaleRun {
            location,
            identity: *identity,
            run_id_expected: history.run_id(),
        });
    }
    if identity.lv_index != location.lv_index || identity.block_index != location.block_index {
        return Err(Violation::Misplaced {
            location,
            identity: *identity,
        });
    }
    let Some(position) = history.position_of(identity.write_id) else {
        return Err(Violation::UnknownWrite {
            location,
            write_id: identity.write_id,
        });
    };
    let recorded = history.writes()[position as usize];
    let op = &recorded.op;
    let shape_matches = op.lv_index == identity.lv_index
        && op.block_count == identity.block_count
        && identity.block_in_write < op.block_count
        && op.block_first() + u64::from(identity.block_in_write) == identity.block_index;
    if !shape_matches {
        return Err(Violation::NotInWrite {
            location,
            identity: *identity,
            recorded,
        });
    }
    Ok(position)
}
