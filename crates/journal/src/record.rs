//! Record codec: one journal record = a fixed 64-byte header + a payload.
//!
//! Pure functions only; no I/O. The byte layout is documented in `docs/journal-format.md`
//! and must stay decodable forever: recovery has to read every format version ever written.

/// "RDJR" little-endian: marks the start of every record.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RDJR");
/// The record format version written by this build.
pub const RECORD_FORMAT_VERSION_CURRENT: u16 = 1;
/// The oldest record format version this build still decodes.
pub const RECORD_FORMAT_VERSION_MIN: u16 = 1;
/// Size of the fixed record header on disk.
pub const RECORD_HEADER_SIZE_BYTES: usize = 64;
/// Largest payload of one record. Matches the NBD write cap so one NBD write is one record.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = 32 * 1024 * 1024;
/// Largest marker name. Markers are human-named events (e.g. "before-upgrade"), not data.
pub const MARKER_NAME_BYTES_MAX: u32 = 256;
/// The marker the datatap journals when a super transaction (full sync, bitmap resync,
/// checksum or failback resync) starts sending regions: a replica that applies the records
/// after it is a mix of two points in time until [`RESYNC_END_MARKER`]. Product markers hold
/// a ':' so they never collide with user markers (`[a-z0-9._-]`).
pub const RESYNC_BEGIN_MARKER: &str = "resync:begin";
/// The marker after the last region of a super transaction: from here on a replica that
/// applied it equals production as of each seq again.
pub const RESYNC_END_MARKER: &str = "resync:end";
/// Which recovery servers a super transaction resends its regions for. The records go to every
/// recovery server in journal order all the same; a server the super transaction is not for
/// already holds the regions as of their seq (each region is read after everything before it
/// is applied), so applying them changes nothing there and it stays consistent throughout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ResyncTargets {
    /// Every recovery server: a journal overflow, a new LV, a new group or production.
    #[default]
    Every,
    /// Only these (a recovery server added, a checksum or failback resync of one server).
    Only(std::collections::BTreeSet<String>),
}

impl ResyncTargets {
    /// The targets of a super transaction under way joined by a new request: what both need.
    pub fn widened(&self, other: &ResyncTargets) -> ResyncTargets {
        match (self, other) {
            (ResyncTargets::Only(ours), ResyncTargets::Only(theirs)) => {
                ResyncTargets::Only(ours.union(theirs).cloned().collect())
            }
            _ => ResyncTargets::Every,
        }
    }

    /// Whether `other`'s targets are all among ours.
    pub fn covers(&self, other: &ResyncTargets) -> bool {
        match (self, other) {
            (ResyncTargets::Every, _) => true,
            (ResyncTargets::Only(_), ResyncTargets::Every) => false,
            (ResyncTargets::Only(ours), ResyncTargets::Only(theirs)) => theirs.is_subset(ours),
        }
    }

    pub fn includes(&self, server: &str) -> bool {
        match self {
            ResyncTargets::Every => true,
            ResyncTargets::Only(servers) => servers.contains(server),
        }
    }

    /// The `resync:begin` marker that announces a super transaction for these targets:
    /// `resync:begin` for every one, `resync:begin:dr-b,dr-c` for some. A list that would not
    /// fit a marker names every server instead (safe: a bystander only loses restore points).
    pub fn begin_marker(&self) -> String {
        match self {
            ResyncTargets::Only(servers) if !servers.is_empty() => {
                let names: Vec<&str> = servers.iter().map(String::as_str).collect();
                let marker = format!("{RESYNC_BEGIN_MARKER}:{}", names.join(","));
                if marker.len() <= MARKER_NAME_BYTES_MAX as usize {
                    marker
                } else {
                    RESYNC_BEGIN_MARKER.to_string()
                }
            }
            _ => RESYNC_BEGIN_MARKER.to_string(),
        }
    }

    /// The targets a `resync:begin` marker names; `None` for any other marker.
    pub fn from_begin_marker(marker: &[u8]) -> Option<ResyncTargets> {
        let rest = marker.strip_prefix(RESYNC_BEGIN_MARKER.as_bytes())?;
        if rest.is_empty() {
            return Some(ResyncTargets::Every);
        }
        let list = std::str::from_utf8(rest.strip_prefix(b":")?).ok()?;
        let servers: std::collections::BTreeSet<String> = list
            .split(',')
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect();
        // An empty list would make every replica a bystander: treat it as every server.
        Some(if servers.is_empty() {
            ResyncTargets::Every
        } else {
            ResyncTargets::Only(servers)
        })
    }
}

/// Largest encoded record (header + payload).
pub const RECORD_SIZE_BYTES_MAX: u64 =
    RECORD_HEADER_SIZE_BYTES as u64 + RECORD_PAYLOAD_BYTES_MAX as u64;

const OFFSET_MAGIC: usize = 0;
const OFFSET_VERSION: usize = 4;
const OFFSET_KIND: usize = 6;
const OFFSET_FLAGS: usize = 7;
const OFFSET_LV_ID: usize = 8;
const OFFSET_LENGTH: usize = 12;
const OFFSET_OFFSET: usize = 16;
const OFFSET_SEQ: usize = 24;
const OFFSET_TIMESTAMP: usize = 32;
const OFFSET_PAYLOAD_LENGTH: usize = 40;
const OFFSET_PAYLOAD_CRC: usize = 44;
const OFFSET_RESERVED: usize = 48;
const OFFSET_HEADER_CRC: usize = 60;

const _: () = assert!(OFFSET_HEADER_CRC + 4 == RECORD_HEADER_SIZE_BYTES);
const _: () = assert!(OFFSET_RESERVED + 12 == OFFSET_HEADER_CRC);
const _: () = assert!(MARKER_NAME_BYTES_MAX <= RECORD_PAYLOAD_BYTES_MAX);

/// What a record describes. The numeric values are on disk; never reuse a retired value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// New data for `[offset, offset + length)` of an LV; payload = the data.
    Write = 1,
    /// The range reads as zeroes from now on; no payload.
    WriteZeroes = 2,
    /// The range was discarded; no payload.
    Trim = 3,
    /// A named point in the write history (consistency point); payload = UTF-8 name.
    Marker = 4,
    /// Data that a write overwrote on a replica (ABA undo journal); payload = old data.
    Undo = 5,
}

impl RecordKind {
    /// Decode the on-disk kind byte.
    pub fn from_u8(value: u8) -> Option<RecordKind> {
        match value {
            1 => Some(RecordKind::Write),
            2 => Some(RecordKind::WriteZeroes),
            3 => Some(RecordKind::Trim),
            4 => Some(RecordKind::Marker),
            5 => Some(RecordKind::Undo),
            _ => None,
        }
    }

    /// Whether the payload carries the data of the range (`payload_length == length_bytes`).
    pub fn carries_data(self) -> bool {
        matches!(self, RecordKind::Write | RecordKind::Undo)
    }
}

/// The metadata of one record. Checksums and the payload length are derived at encode time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub lv_id: u32,
    pub offset_bytes: u64,
    pub length_bytes: u32,
    /// Global sequence number within the replication group; starts at 1, no gaps.
    pub seq: u64,
    /// Wall-clock time of the write, unix nanoseconds. Supplied by the caller (clock injected).
    pub timestamp_ns: u64,
}

/// A decoded record borrowing its payload from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub header: RecordHeader,
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Copy the payload out, e.g. to keep the record past the buffer's lifetime.
    pub fn to_owned_record(&self) -> OwnedRecord {
        OwnedRecord {
            header: self.header,
            payload: self.payload.to_vec(),
        }
    }

    /// Bytes this record occupies on disk.
    pub fn encoded_size_bytes(&self) -> u64 {
        encoded_size_bytes(self.payload.len())
    }
}

/// A record owning its payload, as returned by the journal reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub header: RecordHeader,
    pub payload: Vec<u8>,
}

impl OwnedRecord {
    /// Borrow as a [`Record`].
    pub fn as_record(&self) -> Record<'_> {
        Record {
            header: self.header,
            payload: &self.payload,
        }
    }
}

/// Bytes a record with `payload_length` bytes of payload occupies on disk.
pub fn encoded_size_bytes(payload_length: usize) -> u64 {
    RECORD_HEADER_SIZE_BYTES as u64 + payload_length as u64
}

/// Why a record's fields are not a valid combination. Returned for caller input (append) and
/// for decoded bytes (a checksummed but invalid record means a bug or a hostile writer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecord {
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("sequence number 0 is reserved for \"no record\"")]
    SeqZero,
    #[error("payload of {payload_bytes} bytes exceeds the cap of {payload_bytes_max} bytes")]
    PayloadTooLarge {
        payload_bytes: u64,
        payload_bytes_max: u32,
    },
    #[error(
        "{kind:?} record covers {length_bytes} bytes but carries {payload_bytes} payload bytes"
    )]
    PayloadLengthMismatch {
        kind: RecordKind,
        length_bytes: u32,
        payload_bytes: u64,
    },
    #[error("{kind:?} record covers zero bytes")]
    LengthZero { kind: RecordKind },
    #[error("range offset {offset_bytes} + length {length_bytes} overflows u64")]
    RangeOverflow {
        offset_bytes: u64,
        length_bytes: u32,
    },
    #[error("marker must have offset 0, length 0 and lv id 0")]
    MarkerRange,
    #[error("marker name must be 1..={MARKER_NAME_BYTES_MAX} bytes of UTF-8")]
    MarkerName,
    #[error("reserved header bytes are not zero")]
    ReservedNonZero,
}

impl RecordHeader {
    /// Check that the header and payload form a valid record. The same rules apply before
    /// encoding (caller input) and after decoding (disk input).
    pub fn validate(&self, payload: &[u8]) -> Result<(), InvalidRecord> {
        let payload_bytes = payload.len() as u64;
        if self.seq == 0 {
            return Err(InvalidRecord::SeqZero);
        }
        if payload_bytes > u64::from(RECORD_PAYLOAD_BYTES_MAX) {
            return Err(InvalidRecord::PayloadTooLarge {
                payload_bytes,
                payload_bytes_max: RECORD_PAYLOAD_BYTES_MAX,
            });
        }
        if self
            .offset_bytes
            .checked_add(u64::from(self.length_bytes))
            .is_none()
        {
            return Err(InvalidRecord::RangeOverflow {
                offset_bytes: self.offset_bytes,
                length_bytes: self.length_bytes,
            });
        }
        match self.kind {
            RecordKind::Write | RecordKind::Undo | RecordKind::WriteZeroes | RecordKind::Trim => {
                if self.length_bytes == 0 {
                    return Err(InvalidRecord::LengthZero { kind: self.kind });
                }
                let payload_expected = if self.kind.carries_data() {
                    self.length_bytes
                } else {
                    0
                };
                if payload_bytes != u64::from(payload_expected) {
                    return Err(InvalidRecord::PayloadLengthMismatch {
                        kind: self.kind,
                        length_bytes: self.length_bytes,
                        payload_bytes,
                    });
                }
            }
            RecordKind::Marker => {
                if self.offset_bytes != 0 || self.length_bytes != 0 || self.lv_id != 0 {
                    return Err(InvalidRecord::MarkerRange);
                }
                let name_ok = !payload.is_empty()
                    && payload_bytes <= u64::from(MARKER_NAME_BYTES_MAX)
                    && std::str::from_utf8(payload).is_ok();
                if !name_ok {
                    return Err(InvalidRecord::MarkerName);
                }
            }
        }
        Ok(())
    }
}

/// Why bytes at a record position are not a record. Every variant means "torn or corrupt";
/// "need more bytes" is `Ok(None)` from [`decode`], never an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad record magic {found:#010x}")]
    BadMagic { found: u32 },
    #[error("record header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("unsupported record format version {version}")]
    UnsupportedVersion { version: u16 },
    #[error("invalid record: {0}")]
    Invalid(#[from] InvalidRecord),
    #[error("record payload checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    PayloadChecksum { stored: u32, computed: u32 },
}

/// The `lv_id` of an LV, derived from its name so that production and every recovery server
/// agree without exchanging a table: CRC32C of the name, never 0. Two names of one group
/// that map to the same id are refused when the group's volumes are opened.
pub fn lv_id_for_name(name: &str) -> u32 {
    match crc32c::crc32c(name.as_bytes()) {
        0 => 1,
        id => id,
    }
}

/// Append the encoding of `header` + `payload` to `out`.
///
/// Panics if the record is invalid: callers validate input with [`RecordHeader::validate`]
/// first, so an invalid record here is a programmer error, and it must never reach disk.
pub fn encode(header: &RecordHeader, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&encode_header(header, payload, crc32c::crc32c(payload)));
    out.extend_from_slice(payload);
    debug_assert_eq!(
        decode(&out[start..])
            .ok()
            .flatten()
            .map(|(record, used)| (record.header, used)),
        Some((*header, out.len() - start)),
        "encoded record decodes back to itself"
    );
}

/// The header bytes of a record whose payload checksum the caller already has (computed where
/// the data arrived, off the journal's thread). The payload follows the header on disk.
///
/// Panics if the record is invalid, as [`encode`] does.
pub fn encode_header(
    header: &RecordHeader,
    payload: &[u8],
    payload_crc32c: u32,
) -> [u8; RECORD_HEADER_SIZE_BYTES] {
    assert_eq!(header.validate(payload), Ok(()), "encode an invalid record");
    debug_assert_eq!(crc32c::crc32c(payload), payload_crc32c, "payload checksum");
    let payload_length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut bytes = [0u8; RECORD_HEADER_SIZE_BYTES];
    put_u32(&mut bytes, OFFSET_MAGIC, RECORD_MAGIC);
    put_u16(&mut bytes, OFFSET_VERSION, RECORD_FORMAT_VERSION_CURRENT);
    bytes[OFFSET_KIND] = header.kind as u8;
    bytes[OFFSET_FLAGS] = 0;
    put_u32(&mut bytes, OFFSET_LV_ID, header.lv_id);
    put_u32(&mut bytes, OFFSET_LENGTH, header.length_bytes);
    put_u64(&mut bytes, OFFSET_OFFSET, header.offset_bytes);
    put_u64(&mut bytes, OFFSET_SEQ, header.seq);
    put_u64(&mut bytes, OFFSET_TIMESTAMP, header.timestamp_ns);
    put_u32(&mut bytes, OFFSET_PAYLOAD_LENGTH, payload_length);
    put_u32(&mut bytes, OFFSET_PAYLOAD_CRC, payload_crc32c);
    // The header checksum is computed with its own field zeroed, which it still is here.
    let header_crc = crc32c::crc32c(&bytes);
    put_u32(&mut bytes, OFFSET_HEADER_CRC, header_crc);
    bytes
}

/// Decode just the header and return it with the payload length it announces.
///
/// `Ok(None)` means fewer than [`RECORD_HEADER_SIZE_BYTES`] bytes are available and none of
/// them contradicts a record start yet. Streaming readers use this to size the payload read.
pub fn decode_header(bytes: &[u8]) -> Result<Option<(RecordHeader, u32)>, DecodeError> {
    if bytes.len() >= 4 {
        let found = get_u32(bytes, OFFSET_MAGIC);
        if found != RECORD_MAGIC {
            return Err(DecodeError::BadMagic { found });
        }
    }
    let Some(header_bytes) = bytes.get(..RECORD_HEADER_SIZE_BYTES) else {
        return Ok(None);
    };
    let stored = get_u32(header_bytes, OFFSET_HEADER_CRC);
    let mut zeroed = [0u8; RECORD_HEADER_SIZE_BYTES];
    zeroed.copy_from_slice(header_bytes);
    put_u32(&mut zeroed, OFFSET_HEADER_CRC, 0);
    let computed = crc32c::crc32c(&zeroed);
    // Check the checksum before trusting any field, so a flipped length or version byte is
    // reported as corruption rather than as "need more bytes" or "too new".
    if stored != computed {
        return Err(DecodeError::HeaderChecksum { stored, computed });
    }
    let version = get_u16(header_bytes, OFFSET_VERSION);
    if !(RECORD_FORMAT_VERSION_MIN..=RECORD_FORMAT_VERSION_CURRENT).contains(&version) {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let kind_byte = header_bytes[OFFSET_KIND];
    let kind =
        RecordKind::from_u8(kind_byte).ok_or(DecodeError::Invalid(InvalidRecord::UnknownKind {
            kind: kind_byte,
        }))?;
    let reserved_zero = header_bytes[OFFSET_FLAGS] == 0
        && header_bytes[OFFSET_RESERVED..OFFSET_HEADER_CRC]
            .iter()
            .all(|&b| b == 0);
    if !reserved_zero {
        return Err(DecodeError::Invalid(InvalidRecord::ReservedNonZero));
    }
    let payload_length = get_u32(header_bytes, OFFSET_PAYLOAD_LENGTH);
    if payload_length > RECORD_PAYLOAD_BYTES_MAX {
        return Err(DecodeError::Invalid(InvalidRecord::PayloadTooLarge {
            payload_bytes: u64::from(payload_length),
            payload_bytes_max: RECORD_PAYLOAD_BYTES_MAX,
        }));
    }
    let header = RecordHeader {
        kind,
        lv_id: get_u32(header_bytes, OFFSET_LV_ID),
        offset_bytes: get_u64(header_bytes, OFFSET_OFFSET),
        length_bytes: get_u32(header_bytes, OFFSET_LENGTH),
        seq: get_u64(header_bytes, OFFSET_SEQ),
        timestamp_ns: get_u64(header_bytes, OFFSET_TIMESTAMP),
    };
    Ok(Some((header, payload_length)))
}

/// Decode one record from the start of `bytes`.
///
/// - `Ok(Some((record, consumed)))`: a complete, checksummed, valid record of `consumed` bytes.
/// - `Ok(None)`: `bytes` is a strict prefix of a record that may still be valid: need more.
/// - `Err(_)`: the bytes are torn or corrupt; more bytes would not help.
pub fn decode(bytes: &[u8]) -> Result<Option<(Record<'_>, usize)>, DecodeError> {
    let Some((header, payload_length)) = decode_header(bytes)? else {
        return Ok(None);
    };
    let consumed = RECORD_HEADER_SIZE_BYTES + payload_length as usize;
    let Some(record_bytes) = bytes.get(..consumed) else {
        return Ok(None);
    };
    let payload = &record_bytes[RECORD_HEADER_SIZE_BYTES..];
    let stored = get_u32(record_bytes, OFFSET_PAYLOAD_CRC);
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(DecodeError::PayloadChecksum { stored, computed });
    }
    header.validate(payload)?;
    // Pair assertion: what we hand out is exactly what `encode` accepts.
    assert_eq!(payload.len(), payload_length as usize);
    assert!(consumed >= RECORD_HEADER_SIZE_BYTES);
    Ok(Some((Record { header, payload }, consumed)))
}

pub(crate) fn put_u16(bytes: &mut [u8], offset: usize, value: u16) {
    bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

// Callers only pass slices already checked to hold the fixed-size header, so the slicing
// below stays in bounds; a violation is a programmer error and panics loudly.
pub(crate) fn get_u16(bytes: &[u8], offset: usize) -> u16 {
    let mut raw = [0u8; 2];
    raw.copy_from_slice(&bytes[offset..offset + 2]);
    u16::from_le_bytes(raw)
}

pub(crate) fn get_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(raw)
}

pub(crate) fn get_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_begin_markers_name_their_targets() {
        let only = |names: &[&str]| {
            ResyncTargets::Only(names.iter().map(|name| name.to_string()).collect())
        };
        assert_eq!(ResyncTargets::Every.begin_marker(), "resync:begin");
        assert_eq!(
            only(&["dr-c", "dr-b"]).begin_marker(),
            "resync:begin:dr-b,dr-c"
        );
        for targets in [
            ResyncTargets::Every,
            only(&["dr-c"]),
            only(&["dr-b", "dr-c"]),
        ] {
            let marker = targets.begin_marker();
            assert_eq!(
                ResyncTargets::from_begin_marker(marker.as_bytes()),
                Some(targets.clone())
            );
        }
        assert_eq!(ResyncTargets::from_begin_marker(b"resync:end"), None);
        assert_eq!(ResyncTargets::from_begin_marker(b"resync:beginning"), None);
        assert_eq!(ResyncTargets::from_begin_marker(b"before-upgrade"), None);
        assert_eq!(
            ResyncTargets::from_begin_marker(b"resync:begin:"),
            Some(ResyncTargets::Every)
        );
        let long = only(&[&"a".repeat(200), &"b".repeat(200)]);
        assert_eq!(
            long.begin_marker(),
            "resync:begin",
            "too long: every server"
        );
        assert!(only(&["dr-c"]).widened(&only(&["dr-b"])) == only(&["dr-b", "dr-c"]));
        assert!(only(&["dr-c"]).widened(&ResyncTargets::Every) == ResyncTargets::Every);
        assert!(only(&["dr-b", "dr-c"]).covers(&only(&["dr-c"])));
        assert!(!only(&["dr-c"]).covers(&only(&["dr-b"])));
        assert!(!only(&["dr-c"]).covers(&ResyncTargets::Every));
        assert!(ResyncTargets::Every.covers(&only(&["dr-c"])));
        assert!(!only(&["dr-c"]).includes("dr-b"));
    }
    use proptest::prelude::*;

    fn write_header(seq: u64, length_bytes: u32) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Write,
            lv_id: 7,
            offset_bytes: 4096,
            length_bytes,
            seq,
            timestamp_ns: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn round_trip_each_kind() {
        let cases: Vec<(RecordHeader, Vec<u8>)> = vec![
            (write_header(1, 5), b"hello".to_vec()),
            (
                RecordHeader {
                    kind: RecordKind::WriteZeroes,
                    ..write_header(2, 1 << 20)
                },
                vec![],
            ),
            (
                RecordHeader {
                    kind: RecordKind::Trim,
                    ..write_header(3, 512)
                },
                vec![],
            ),
            (
                RecordHeader {
                    kind: RecordKind::Marker,
                    lv_id: 0,
                    offset_bytes: 0,
                    length_bytes: 0,
                    ..write_header(4, 0)
                },
                b"before-upgrade".to_vec(),
            ),
            (
                RecordHeader {
                    kind: RecordKind::Undo,
                    ..write_header(5, 3)
                },
                vec![9, 8, 7],
            ),
        ];
        for (header, payload) in cases {
            let mut out = Vec::new();
            encode(&header, &payload, &mut out);
            assert_eq!(out.len() as u64, encoded_size_bytes(payload.len()));
            let (record, used) = decode(&out).unwrap().unwrap();
            assert_eq!(used, out.len());
            assert_eq!(record.header, header);
            assert_eq!(record.payload, &payload[..]);
        }
    }

    #[test]
    fn every_strict_prefix_needs_more_bytes() {
        let mut out = Vec::new();
        encode(&write_header(9, 100), &[0xAB; 100], &mut out);
        for cut in 0..out.len() {
            assert_eq!(decode(&out[..cut]), Ok(None), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut out = Vec::new();
        encode(&write_header(9, 40), &[0x5A; 40], &mut out);
        for index in 0..out.len() {
            for bit in 0..8 {
                let mut corrupt = out.clone();
                corrupt[index] ^= 1 << bit;
                assert!(decode(&corrupt).is_err(), "flip bit {bit} of byte {index}");
            }
        }
    }

    #[test]
    fn invalid_records_are_rejected_before_encoding() {
        let header = write_header(1, 4);
        assert_eq!(
            header.validate(b"abc"),
            Err(InvalidRecord::PayloadLengthMismatch {
                kind: RecordKind::Write,
                length_bytes: 4,
                payload_bytes: 3
            })
        );
        assert_eq!(
            write_header(0, 1).validate(b"a"),
            Err(InvalidRecord::SeqZero)
        );
        let overflow = RecordHeader {
            offset_bytes: u64::MAX,
            ..write_header(1, 1)
        };
        assert!(matches!(
            overflow.validate(b"a"),
            Err(InvalidRecord::RangeOverflow { .. })
        ));
        let marker = RecordHeader {
            kind: RecordKind::Marker,
            ..write_header(1, 0)
        };
        assert_eq!(marker.validate(b"x"), Err(InvalidRecord::MarkerRange));
        let marker = RecordHeader {
            lv_id: 0,
            offset_bytes: 0,
            ..marker
        };
        assert_eq!(marker.validate(&[0xFF]), Err(InvalidRecord::MarkerName));
        assert_eq!(marker.validate(b""), Err(InvalidRecord::MarkerName));
        let trim = RecordHeader {
            kind: RecordKind::Trim,
            ..write_header(1, 0)
        };
        assert_eq!(
            trim.validate(b""),
            Err(InvalidRecord::LengthZero {
                kind: RecordKind::Trim
            })
        );
    }

    #[test]
    #[should_panic(expected = "encode an invalid record")]
    fn encode_asserts_validity() {
        encode(&write_header(1, 4), b"abc", &mut Vec::new());
    }

    #[test]
    fn newer_version_is_reported_not_misread() {
        let mut out = Vec::new();
        encode(&write_header(1, 1), b"z", &mut out);
        put_u16(&mut out, OFFSET_VERSION, RECORD_FORMAT_VERSION_CURRENT + 1);
        put_u32(&mut out, OFFSET_HEADER_CRC, 0);
        let crc = crc32c::crc32c(&out[..RECORD_HEADER_SIZE_BYTES]);
        put_u32(&mut out, OFFSET_HEADER_CRC, crc);
        assert_eq!(
            decode(&out),
            Err(DecodeError::UnsupportedVersion {
                version: RECORD_FORMAT_VERSION_CURRENT + 1
            })
        );
    }

    #[test]
    fn zero_filled_tail_is_corrupt_not_a_record() {
        assert_eq!(decode(&[0u8; 200]), Err(DecodeError::BadMagic { found: 0 }));
    }

    /// The body of `fuzz/fuzz_targets/journal_record.rs`, kept here so it compiles in CI.
    fn fuzz_body(mut data: &[u8]) {
        while let Ok(Some((record, used))) = decode(data) {
            assert!(used >= RECORD_HEADER_SIZE_BYTES);
            assert!(used <= data.len());
            assert_eq!(record.header.validate(record.payload), Ok(()));
            let mut again = Vec::new();
            encode(&record.header, record.payload, &mut again);
            assert_eq!(&again[..], &data[..used]);
            data = &data[used..];
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            fuzz_body(&bytes);
            // Decoding is a function of the bytes alone.
            prop_assert_eq!(decode(&bytes), decode(&bytes));
        }

        #[test]
        fn decode_after_valid_prefix_never_panics(
            payload in proptest::collection::vec(any::<u8>(), 1..300),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
            seq in 1u64..u64::MAX,
            lv_id in any::<u32>(),
            offset_bytes in 0u64..(1 << 50),
        ) {
            let header = RecordHeader {
                kind: RecordKind::Write,
                lv_id,
                offset_bytes,
                length_bytes: payload.len() as u32,
                seq,
                timestamp_ns: seq,
            };
            let mut out = Vec::new();
            encode(&header, &payload, &mut out);
            let first_len = out.len();
            out.extend_from_slice(&tail);
            let (record, used) = decode(&out).unwrap().unwrap();
            prop_assert_eq!(used, first_len);
            prop_assert_eq!(record.header, header);
            fuzz_body(&out);
        }
    }
}
