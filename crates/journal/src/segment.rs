//! Segment files: naming and the 64-byte segment header. Pure; no I/O.

use crate::record::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"REDOUBTJ";
/// The segment format version written by this build.
pub const SEGMENT_FORMAT_VERSION_CURRENT: u16 = 1;
/// The oldest segment format version this build still reads.
pub const SEGMENT_FORMAT_VERSION_MIN: u16 = 1;
/// Size of the segment header; records start right after it.
pub const SEGMENT_HEADER_SIZE_BYTES: usize = 64;
/// Suffix of a sealed segment file.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Extra suffix of the one open segment, which may have an unsynced or torn tail.
pub const PARTIAL_SUFFIX: &str = ".partial";

const OFFSET_MAGIC: usize = 0;
const OFFSET_VERSION: usize = 8;
const OFFSET_HEADER_SIZE: usize = 10;
const OFFSET_GROUP_ID: usize = 16;
const OFFSET_FIRST_SEQ: usize = 32;
const OFFSET_RESERVED: usize = 40;
const OFFSET_HEADER_CRC: usize = 60;
const SEQ_HEX_DIGITS: usize = 16;

const _: () = assert!(OFFSET_HEADER_CRC + 4 == SEGMENT_HEADER_SIZE_BYTES);

/// Identity of a replication group (a UUID's bytes). Stored in every segment header so a
/// journal directory can never be opened as another group's journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub [u8; 16]);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub group_id: GroupId,
    /// Sequence number of the first record in the segment (also in the file name).
    pub first_seq: u64,
}

/// Why a segment header is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentHeaderError {
    #[error("segment header is {available_bytes} bytes, need {SEGMENT_HEADER_SIZE_BYTES}")]
    Short { available_bytes: usize },
    #[error("bad segment magic")]
    BadMagic,
    #[error("segment header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unsupported segment format version {version}")]
    UnsupportedVersion { version: u16 },
    #[error(
        "segment header declares {header_size_bytes} bytes, expected {SEGMENT_HEADER_SIZE_BYTES}"
    )]
    HeaderSize { header_size_bytes: u16 },
    #[error("reserved segment header bytes are not zero")]
    ReservedNonZero,
    #[error("segment first sequence number is 0")]
    SeqZero,
}

impl SegmentHeader {
    /// Encode to the fixed on-disk form.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_SIZE_BYTES] {
        assert!(self.first_seq > 0, "segment first seq is 0");
        let mut bytes = [0u8; SEGMENT_HEADER_SIZE_BYTES];
        bytes[OFFSET_MAGIC..OFFSET_MAGIC + 8].copy_from_slice(&SEGMENT_MAGIC);
        put_u16(&mut bytes, OFFSET_VERSION, SEGMENT_FORMAT_VERSION_CURRENT);
        put_u16(
            &mut bytes,
            OFFSET_HEADER_SIZE,
            SEGMENT_HEADER_SIZE_BYTES as u16,
        );
        bytes[OFFSET_GROUP_ID..OFFSET_GROUP_ID + 16].copy_from_slice(&self.group_id.0);
        put_u64(&mut bytes, OFFSET_FIRST_SEQ, self.first_seq);
        let crc = crc32c::crc32c(&bytes);
        put_u32(&mut bytes, OFFSET_HEADER_CRC, crc);
        debug_assert_eq!(SegmentHeader::decode(&bytes), Ok(*self));
        bytes
    }

    /// Decode and validate the header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
        let header = bytes
            .get(..SEGMENT_HEADER_SIZE_BYTES)
            .ok_or(SegmentHeaderError::Short {
                available_bytes: bytes.len(),
            })?;
        if header[OFFSET_MAGIC..OFFSET_MAGIC + 8] != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::BadMagic);
        }
        let stored = get_u32(header, OFFSET_HEADER_CRC);
        let mut zeroed = [0u8; SEGMENT_HEADER_SIZE_BYTES];
        zeroed.copy_from_slice(header);
        put_u32(&mut zeroed, OFFSET_HEADER_CRC, 0);
        let computed = crc32c::crc32c(&zeroed);
        if stored != computed {
            return Err(SegmentHeaderError::Checksum { stored, computed });
        }
        let version = get_u16(header, OFFSET_VERSION);
        if !(SEGMENT_FORMAT_VERSION_MIN..=SEGMENT_FORMAT_VERSION_CURRENT).contains(&version) {
            return Err(SegmentHeaderError::UnsupportedVersion { version });
        }
        let header_size_bytes = get_u16(header, OFFSET_HEADER_SIZE);
        if usize::from(header_size_bytes) != SEGMENT_HEADER_SIZE_BYTES {
            return Err(SegmentHeaderError::HeaderSize { header_size_bytes });
        }
        let reserved_zero = header[12..OFFSET_GROUP_ID].iter().all(|&b| b == 0)
            && header[OFFSET_RESERVED..OFFSET_HEADER_CRC]
                .iter()
                .all(|&b| b == 0);
        if !reserved_zero {
            return Err(SegmentHeaderError::ReservedNonZero);
        }
        let first_seq = get_u64(header, OFFSET_FIRST_SEQ);
        if first_seq == 0 {
            return Err(SegmentHeaderError::SeqZero);
        }
        let mut group_id = [0u8; 16];
        group_id.copy_from_slice(&header[OFFSET_GROUP_ID..OFFSET_GROUP_ID + 16]);
        Ok(SegmentHeader {
            group_id: GroupId(group_id),
            first_seq,
        })
    }
}

/// The file name of the segment starting at `first_seq`: 16 lowercase hex digits so names
/// sort in sequence order, `.seg`, and `.partial` while the segment is open.
pub fn segment_file_name(first_seq: u64, partial: bool) -> String {
    let suffix = if partial { PARTIAL_SUFFIX } else { "" };
    format!(
        "{first_seq:0width$x}{SEGMENT_SUFFIX}{suffix}",
        width = SEQ_HEX_DIGITS
    )
}

/// Parse a segment file name into `(first_seq, partial)`; `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<(u64, bool)> {
    let (stem, partial) = match name.strip_suffix(PARTIAL_SUFFIX) {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    let digits = stem.strip_suffix(SEGMENT_SUFFIX)?;
    let canonical = digits.len() == SEQ_HEX_DIGITS
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !canonical {
        return None;
    }
    let first_seq = u64::from_str_radix(digits, 16).ok()?;
    Some((first_seq, partial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_seq() {
        assert_eq!(segment_file_name(0x1a, false), "000000000000001a.seg");
        assert_eq!(segment_file_name(1, true), "0000000000000001.seg.partial");
        for (seq, partial) in [(1, false), (u64::MAX, true), (0xdead_beef, false)] {
            let name = segment_file_name(seq, partial);
            assert_eq!(parse_segment_file_name(&name), Some((seq, partial)));
        }
        assert!(segment_file_name(9, false) < segment_file_name(10, false));
        for other in [
            "x.seg",
            "000000000000001A.seg",
            "000000000000001a.seg.tmp",
            "lock",
        ] {
            assert_eq!(parse_segment_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn header_round_trips_and_detects_every_flip() {
        let header = SegmentHeader {
            group_id: GroupId([7; 16]),
            first_seq: 42,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
        assert_eq!(
            SegmentHeader::decode(&bytes[..10]),
            Err(SegmentHeaderError::Short {
                available_bytes: 10
            })
        );
        for index in 0..bytes.len() {
            let mut corrupt = bytes;
            corrupt[index] ^= 0x10;
            assert!(
                SegmentHeader::decode(&corrupt).is_err(),
                "flip in byte {index}"
            );
        }
    }
}
