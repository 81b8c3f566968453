//! `Records` batches: consecutive journal records, optionally zstd-compressed.

use redoubt_journal::{
    decode as decode_record, encode as encode_record, encoded_size_bytes, OwnedRecord, Record,
    RECORD_HEADER_SIZE_BYTES,
};

use crate::error::WireError;
use crate::frame::{get_u32, get_u64, FrameType, BATCH_BYTES_MAX, FLAG_COMPRESSED};

/// Bytes of the `Records` payload before the body: first_seq, record_count, records_bytes.
pub const RECORDS_PREFIX_BYTES: usize = 16;

/// A validated batch of consecutive journal records `first_seq..=last_seq()`.
///
/// Only built by [`RecordsBatchBuilder::finish`] or by decoding, so it always holds
/// `record_count >= 1` valid records with consecutive seqs and at most [`BATCH_BYTES_MAX`]
/// bytes. Equality compares the records, not whether the wire form is compressed.
#[derive(Debug, Clone)]
pub struct RecordsBatch {
    first_seq: u64,
    record_count: u32,
    /// The records exactly as the journal encodes them, back to back.
    records: Vec<u8>,
    /// The zstd form sent on the wire, when compression was asked for and saved enough.
    compressed: Option<Vec<u8>>,
}

impl PartialEq for RecordsBatch {
    fn eq(&self, other: &RecordsBatch) -> bool {
        self.first_seq == other.first_seq
            && self.record_count == other.record_count
            && self.records == other.records
    }
}

impl Eq for RecordsBatch {}

impl RecordsBatch {
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    pub fn last_seq(&self) -> u64 {
        // Checked at construction: first_seq + record_count - 1 does not overflow.
        self.first_seq + u64::from(self.record_count) - 1
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// The encoded records (journal format), e.g. to hand to `Journal::append_replicated`.
    pub fn records_bytes(&self) -> &[u8] {
        &self.records
    }

    /// Uncompressed size; this is what flow control and backlogs count.
    pub fn len_bytes(&self) -> u64 {
        self.records.len() as u64
    }

    /// Whether the batch goes on the wire compressed (only known for built batches).
    pub fn is_compressed(&self) -> bool {
        self.compressed.is_some()
    }

    /// The records, in seq order.
    pub fn iter(&self) -> impl Iterator<Item = Record<'_>> + '_ {
        let mut rest = &self.records[..];
        // Validated at construction, so decoding cannot fail; stop rather than panic anyway.
        std::iter::from_fn(move || match decode_record(rest) {
            Ok(Some((record, used))) => {
                rest = rest.get(used..).unwrap_or_default();
                Some(record)
            }
            _ => None,
        })
    }

    /// Appends the payload of a `Records` frame; returns the header flags.
    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<u8, WireError> {
        let records_bytes = u32::try_from(self.records.len())
            .ok()
            .filter(|&length| length <= BATCH_BYTES_MAX)
            .ok_or(WireError::BatchTooLarge {
                bytes: self.len_bytes(),
                bytes_max: BATCH_BYTES_MAX,
            })?;
        out.extend_from_slice(&self.first_seq.to_le_bytes());
        out.extend_from_slice(&self.record_count.to_le_bytes());
        out.extend_from_slice(&records_bytes.to_le_bytes());
        match &self.compressed {
            Some(body) => {
                out.extend_from_slice(body);
                Ok(FLAG_COMPRESSED)
            }
            None => {
                out.extend_from_slice(&self.records);
                Ok(0)
            }
        }
    }

    /// Decode and fully validate the payload of a `Records` frame.
    pub(crate) fn decode_body(flags: u8, payload: &[u8]) -> Result<RecordsBatch, WireError> {
        let frame_type = FrameType::Records;
        let (prefix, body) =
            payload
                .split_at_checked(RECORDS_PREFIX_BYTES)
                .ok_or(WireError::Malformed {
                    frame_type,
                    reason: "payload shorter than the records prefix",
                })?;
        let first_seq = get_u64(prefix, 0);
        let record_count = get_u32(prefix, 8);
        let records_bytes = get_u32(prefix, 12);
        check_shape(first_seq, record_count, records_bytes)?;
        let records = if flags & FLAG_COMPRESSED != 0 {
            decompress(body, records_bytes)?
        } else {
            if body.len() != records_bytes as usize {
                return Err(WireError::Malformed {
                    frame_type,
                    reason: "records_bytes differs from the body length",
                });
            }
            body.to_vec()
        };
        validate_records(first_seq, record_count, &records)?;
        Ok(RecordsBatch {
            first_seq,
            record_count,
            records,
            compressed: None,
        })
    }
}

/// Checks on the prefix alone, before any decompression or allocation.
fn check_shape(first_seq: u64, record_count: u32, records_bytes: u32) -> Result<(), WireError> {
    if records_bytes > BATCH_BYTES_MAX {
        return Err(WireError::BatchTooLarge {
            bytes: u64::from(records_bytes),
            bytes_max: BATCH_BYTES_MAX,
        });
    }
    if record_count == 0 {
        return Err(WireError::BatchEmpty);
    }
    let frame_type = FrameType::Records;
    if first_seq == 0 || first_seq.checked_add(u64::from(record_count) - 1).is_none() {
        return Err(WireError::Malformed {
            frame_type,
            reason: "first_seq is 0 or the seq range overflows",
        });
    }
    if u64::from(record_count) * RECORD_HEADER_SIZE_BYTES as u64 > u64::from(records_bytes) {
        return Err(WireError::Malformed {
            frame_type,
            reason: "record_count records cannot fit in records_bytes",
        });
    }
    Ok(())
}

/// Zip-bomb safe: the output buffer is exactly the declared size (<= BATCH_BYTES_MAX) and
/// zstd fails rather than write past it; a shorter output is an error too.
fn decompress(body: &[u8], records_bytes: u32) -> Result<Vec<u8>, WireError> {
    let records = zstd::bulk::decompress(body, records_bytes as usize).map_err(|error| {
        WireError::Compression {
            reason: error.to_string(),
        }
    })?;
    if records.len() != records_bytes as usize {
        return Err(WireError::DecompressedLength {
            declared: records_bytes,
            actual: records.len() as u64,
        });
    }
    Ok(records)
}

fn validate_records(first_seq: u64, record_count: u32, records: &[u8]) -> Result<(), WireError> {
    let records_bytes = u32::try_from(records.len()).unwrap_or(u32::MAX);
    let mut rest = records;
    let mut index: u32 = 0;
    while !rest.is_empty() {
        if index == record_count {
            return Err(WireError::BatchCount {
                declared: record_count,
                found: index.saturating_add(1),
            });
        }
        let (record, used) = match decode_record(rest) {
            Ok(Some(decoded)) => decoded,
            Ok(None) => {
                return Err(WireError::BatchRecordTruncated {
                    index,
                    records_bytes,
                })
            }
            Err(source) => return Err(WireError::BatchRecord { index, source }),
        };
        let expected = first_seq + u64::from(index);
        if record.header.seq != expected {
            return Err(WireError::BatchSeq {
                index,
                expected,
                found: record.header.seq,
            });
        }
        rest = rest.get(used..).unwrap_or_default();
        index += 1;
    }
    if index != record_count {
        return Err(WireError::BatchCount {
            declared: record_count,
            found: index,
        });
    }
    Ok(())
}

/// Bytes of a batch's start that are compressed first to judge the whole: a batch whose
/// sample does not shrink by 1/8 is sent plain without spending zstd on the rest (already
/// compressed or encrypted data, random test data).
pub const COMPRESSION_SAMPLE_BYTES: usize = 64 << 10;

/// zstd at one level, with one context reused for every batch.
pub struct BatchCompressor {
    compressor: zstd::bulk::Compressor<'static>,
}

impl BatchCompressor {
    pub fn new(level: i32) -> Result<BatchCompressor, WireError> {
        let compressor =
            zstd::bulk::Compressor::new(level).map_err(|error| WireError::Compression {
                reason: error.to_string(),
            })?;
        Ok(BatchCompressor { compressor })
    }

    /// `body` compressed, when that saves at least 1/8 of its bytes; `None` to send it plain.
    fn compress_if_it_pays(&mut self, body: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        let saves_enough = |compressed: usize, plain: usize| compressed * 8 <= plain * 7;
        let failed = |error: std::io::Error| WireError::Compression {
            reason: error.to_string(),
        };
        if body.len() > 2 * COMPRESSION_SAMPLE_BYTES {
            let sample = &body[..COMPRESSION_SAMPLE_BYTES];
            let compressed = self.compressor.compress(sample).map_err(failed)?;
            if !saves_enough(compressed.len(), sample.len()) {
                return Ok(None);
            }
        }
        let compressed = self.compressor.compress(body).map_err(failed)?;
        Ok(saves_enough(compressed.len(), body.len()).then_some(compressed))
    }
}

/// Whether [`RecordsBatchBuilder::push`] took the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum BatchPush {
    Added,
    /// The record would exceed the byte budget: finish this batch, start the next with it.
    Full,
}

/// Collects consecutive records up to a byte budget (uncompressed, journal encoding).
#[derive(Debug, Clone)]
pub struct RecordsBatchBuilder {
    budget_bytes: u64,
    first_seq: u64,
    record_count: u32,
    records: Vec<u8>,
}

impl RecordsBatchBuilder {
    /// `budget_bytes` is clamped to `1..=BATCH_BYTES_MAX`. A single record larger than the
    /// budget is still accepted into an empty batch (records are at most 32 MiB + 64 bytes).
    pub fn new(budget_bytes: u32) -> RecordsBatchBuilder {
        RecordsBatchBuilder {
            budget_bytes: u64::from(budget_bytes.clamp(1, BATCH_BYTES_MAX)),
            first_seq: 0,
            record_count: 0,
            records: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn len_bytes(&self) -> u64 {
        self.records.len() as u64
    }

    /// The seq the next record must have (`None` while empty: any seq >= 1 starts a batch).
    pub fn next_seq(&self) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        self.first_seq.checked_add(u64::from(self.record_count))
    }

    pub fn push_owned(&mut self, record: &OwnedRecord) -> Result<BatchPush, WireError> {
        self.push(&record.as_record())
    }

    /// Add `record` if it fits the budget. Errors (nothing added): an invalid record, or a
    /// seq that does not continue the batch.
    pub fn push(&mut self, record: &Record<'_>) -> Result<BatchPush, WireError> {
        record
            .header
            .validate(record.payload)
            .map_err(|error| WireError::BatchRecord {
                index: self.record_count,
                source: error.into(),
            })?;
        if !self.is_empty() {
            let expected = self.next_seq();
            if expected != Some(record.header.seq) {
                return Err(WireError::BatchSeq {
                    index: self.record_count,
                    expected: expected.unwrap_or(u64::MAX),
                    found: record.header.seq,
                });
            }
        }
        let size = encoded_size_bytes(record.payload.len());
        let total = self.len_bytes() + size;
        if !self.is_empty() && total > self.budget_bytes {
            return Ok(BatchPush::Full);
        }
        if total > u64::from(BATCH_BYTES_MAX) || self.record_count == u32::MAX {
            return Ok(BatchPush::Full);
        }
        if self.is_empty() {
            self.first_seq = record.header.seq;
        }
        encode_record(&record.header, record.payload, &mut self.records);
        self.record_count += 1;
        Ok(BatchPush::Added)
    }

    /// The batch; compressed with zstd at `compression_level` when that saves at least 1/8
    /// of the bytes (otherwise sent plain).
    pub fn finish(self, compression_level: Option<i32>) -> Result<RecordsBatch, WireError> {
        match compression_level {
            Some(level) => self.finish_with(Some(&mut BatchCompressor::new(level)?)),
            None => self.finish_with(None),
        }
    }

    /// [`RecordsBatchBuilder::finish`] with a compressor kept across batches (a zstd context
    /// costs more to make than a small batch costs to compress).
    pub fn finish_with(
        self,
        compressor: Option<&mut BatchCompressor>,
    ) -> Result<RecordsBatch, WireError> {
        if self.is_empty() {
            return Err(WireError::BatchEmpty);
        }
        let compressed = match compressor {
            Some(compressor) => compressor.compress_if_it_pays(&self.records)?,
            None => None,
        };
        Ok(RecordsBatch {
            first_seq: self.first_seq,
            record_count: self.record_count,
            records: self.records,
            compressed,
        })
    }
}
