//! `redoubt-history`: the judge of write-order fidelity.
//!
//! Every replication test proves one guarantee with this crate: **a replica (or a snapshot,
//! or a rolled-back image) equals production as of exactly one sequence number, never a
//! mix.**
//!
//! ```text
//!   generate(WorkloadConfig) ─▶ WriteOp::payload(run_id) ─▶ production (datatap → journal)
//!          │                                                    │ ack with seq
//!          ▼                                                    ▼
//!   History::record_write(op, seq), record_flush()     replica / snapshot / rollback
//!          │                                                    │ ImageReader
//!          └──────────────▶ check_prefix / check_exact / check_at_least ◀┘
//! ```
//!
//! # Block format
//!
//! Every generated write covers whole 4096-byte blocks, and every block says which write made
//! it, so an image can be judged from its bytes alone. Integers are little-endian.
//!
//! | bytes        | field            | meaning                                                  |
//! |--------------|------------------|----------------------------------------------------------|
//! | 0..8         | magic            | `b"RDBTHIST"`                                            |
//! | 8..16        | `run_id`         | per-run id: data of an earlier run is never mistaken     |
//! | 16..24       | `write_id`       | 1-based issue order of the write in the workload        |
//! | 24..32       | `block_index`    | where the block belongs in its LV (× 4096 = byte offset) |
//! | 32..36       | `lv_index`       | which LV of the group                                    |
//! | 36..40       | `block_in_write` | position of the block in its write                       |
//! | 40..44       | `block_count`    | blocks in the write                                      |
//! | 44..48       | version          | [`BLOCK_FORMAT_VERSION`]                                 |
//! | 48..4092     | filler           | words `seed + i·γ`, `seed` = a mix of all fields above   |
//! | 4092..4096   | crc32c           | CRC32C of bytes 0..4092                                  |
//!
//! An all-zero block means "never written". Because the filler depends on every field, a
//! block glued from two writes (a torn write, a mixed sector) fails the checksum, and the
//! decoder reports how many leading bytes still match the header ([`Corruption::Torn`]).
//!
//! # The interval proof
//!
//! [`History`] records writes in the order production acknowledged them, each with the seq
//! the journal gave it. Let block `b` hold write `w`, applied at seq `s_w`, and let the next
//! write to `b` have seq `s_next` (∞ if none). Then the image can only be production as of a
//! seq `S` with `s_w <= S < s_next`. A zero block says `S < s_first` (the first write to
//! `b`). [`check_prefix`] intersects these intervals over every block, in LV then block
//! order. If the intersection is non-empty, every block equals production's block at any `S`
//! in it, so the image *is* production at `S` ([`PrefixProof`]). If it becomes empty at some
//! block, that block and the block that set the opposite bound hold two different points in
//! time, and the [`Violation`] names both:
//!
//! ```text
//! lv 1 block 37 (byte offset 151552) holds write 812 (seq 812) but lv 0 block 3 (byte offset
//! 12288) still holds write 790 (seq 790), overwritten at seq 801 by write 801: the image mixes
//! two points in time
//! ```
//!
//! The check is one pass over the image; per block it does a hash lookup and a binary search
//! in that block's list of writers (built once per history in O(blocks + block-writes)).
//!
//! # Example
//!
//! ```
//! use redoubt_history::{check_prefix, generate, writes, History, MemoryImages, WorkloadConfig};
//!
//! let lv_sizes_bytes = vec![64 * 4096, 32 * 4096];
//! let run_id = 0x5EED;
//! let events = generate(&WorkloadConfig::new(7, lv_sizes_bytes.clone(), 200)).unwrap();
//! let history = History::from_workload(run_id, &lv_sizes_bytes, &events).unwrap();
//!
//! // A correct replica applied the first 120 writes in order.
//! let mut replica = MemoryImages::zeroed(&lv_sizes_bytes);
//! for op in writes(&events).take(120) {
//!     replica.apply(&op, run_id);
//! }
//! let proof = check_prefix(&history, &mut replica).unwrap();
//! assert!(proof.seq_min <= 120 && 120 <= proof.seq_max);
//! ```
//!
//! # Architecture invariants
//!
//! - Generator, block codec, history and checker are pure; the only I/O is behind
//!   [`ImageReader`] (and [`FileImages`] implements it with `pread`).
//! - The workload comes from our own SplitMix64 and the filler from our own mixer, never a
//!   library RNG, so a seed from a failed run reproduces forever and old images still decode.
//! - Decoding never panics on any bytes; everything an image holds is either a proof or a
//!   [`Violation`] whose message names the block, its byte offset and what it holds.

mod block;
mod check;
mod history;
mod image;
mod rng;
mod workload;

pub use block::{
    decode_block, encode_block, BlockContent, BlockIdentity, Corruption,
    BLOCK_CHECKSUM_OFFSET_BYTES, BLOCK_FORMAT_VERSION, BLOCK_HEADER_SIZE_BYTES, BLOCK_MAGIC,
    BLOCK_SIZE_BYTES,
};
pub use check::{
    check_at_least, check_exact, check_prefix, BlockLocation, BlockState, PrefixProof, Violation,
    WriteRef,
};
pub use history::{ExpectedImage, History, HistoryError, RecordedWrite};
pub use image::{FileImages, ImageReader, MemoryImages};
pub use rng::SplitMix64;
pub use workload::{
    generate, lv_block_counts, writes, WorkloadConfig, WorkloadError, WorkloadEvent, WriteOp,
    BLOCKS_PER_WRITE_MAX, HOT_SPOT_COUNT_MAX, LV_BLOCK_COUNT_MAX, LV_COUNT_MAX, WRITE_COUNT_MAX,
};
