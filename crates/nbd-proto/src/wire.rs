//! Big-endian cursor over a borrowed byte slice.
//!
//! Every read returns `None` when the input is too short, so decoders can map "ran out of bytes"
//! to `Ok(None)` (need more input) without ever indexing out of bounds.

pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, position: 0 }
    }

    /// Bytes consumed so far.
    pub(crate) fn position(&self) -> usize {
        debug_assert!(self.position <= self.bytes.len());
        self.position
    }

    /// Bytes not yet consumed.
    pub(crate) fn remaining(&self) -> usize {
        debug_assert!(self.position <= self.bytes.len());
        self.bytes.len() - self.position
    }

    pub(crate) fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(count)?;
        let slice = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let slice = self.take(N)?;
        <[u8; N]>::try_from(slice).ok()
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array::<2>().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array::<4>().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array::<8>().map(u64::from_be_bytes)
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Converts a length that the caller has already bounded to the `u32` the wire needs.
///
/// Panics on overflow: every call site asserts the bound first, so overflow is a programmer
/// error in this crate, never a property of peer input.
pub(crate) fn length_u32(length: usize) -> u32 {
    match u32::try_from(length) {
        Ok(length) => length,
        Err(_) => panic!("length {length} does not fit the 32-bit wire field"),
    }
}

/// Truncates a human-readable message to at most `length_bytes_max` bytes on a char boundary.
///
/// Error messages often embed peer-supplied names; truncating keeps the encoder total instead of
/// making every caller re-check the NBD string limit.
pub(crate) fn truncate_message(message: &str, length_bytes_max: usize) -> &str {
    if message.len() <= length_bytes_max {
        return message;
    }
    let mut end = length_bytes_max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let truncated = &message[..end];
    debug_assert!(truncated.len() <= length_bytes_max);
    truncated
}

/// NBD strings: UTF-8, no NUL (proto.md "Conventions").
pub(crate) fn parse_string(bytes: &[u8]) -> Result<&str, StringError> {
    let text = std::str::from_utf8(bytes).map_err(|_| StringError::NotUtf8)?;
    if text.contains('\0') {
        return Err(StringError::ContainsNul);
    }
    Ok(text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StringError {
    NotUtf8,
    ContainsNul,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_reads_big_endian_and_stops_at_end() {
        let bytes = [0x01, 0x02, 0x03, 0x04, 0x05];
        let mut cursor = Cursor::new(&bytes);
        assert_eq!(cursor.u16(), Some(0x0102));
        assert_eq!(cursor.u32(), None, "only 3 bytes remain");
        assert_eq!(cursor.position(), 2, "a failed read consumes nothing");
        assert_eq!(cursor.remaining(), 3);
        assert_eq!(cursor.take(3), Some(&bytes[2..]));
        assert_eq!(cursor.take(1), None);
    }

    #[test]
    fn truncate_message_respects_char_boundaries() {
        assert_eq!(truncate_message("abc", 10), "abc");
        assert_eq!(truncate_message("abcdef", 3), "abc");
        // 'é' is two bytes; cutting in its middle must back off to the boundary.
        assert_eq!(truncate_message("aé", 2), "a");
    }

    #[test]
    fn parse_string_rejects_nul_and_bad_utf8() {
        assert_eq!(parse_string(b"disk0"), Ok("disk0"));
        assert_eq!(parse_string(b"a\0b"), Err(StringError::ContainsNul));
        assert_eq!(parse_string(&[0xff, 0xfe]), Err(StringError::NotUtf8));
    }
}
