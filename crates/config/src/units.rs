//! Human units in the configuration file: sizes, durations and rates.
//!
//! Parsing is strict on purpose: a typo in a container size must be an error, not a silently
//! different number of bytes.

use std::fmt;

/// Largest size the configuration accepts (1 PiB): nothing we manage is bigger, and the limit
/// keeps every size arithmetic far away from `u64` overflow.
pub const SIZE_BYTES_MAX: u64 = 1 << 50;

/// Longest duration the configuration accepts (10 years), for the same reason.
pub const DURATION_SECONDS_MAX: u64 = 10 * 365 * 24 * 3600;

const SIZE_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

const DURATION_UNITS: &[(&str, u64)] = &[("s", 1), ("m", 60), ("h", 3600), ("d", 86400)];

/// Parses `"10GiB"`, `"512MiB"`, `"4096B"`, `"4096"` (bytes) into bytes.
pub fn parse_size_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = split_number(text);
    if digits.is_empty() {
        return Err(format!(
            "`{text}` is not a size: expected a whole number and a unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB), e.g. \"10GiB\""
        ));
    }
    let multiplier = if unit.is_empty() {
        1
    } else {
        match SIZE_UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, multiplier)) => *multiplier,
            None => {
                return Err(format!(
                    "unknown size unit `{unit}` in `{text}`: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                ))
            }
        }
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is too large to be a size"))?;
    let bytes = number
        .checked_mul(multiplier)
        .filter(|bytes| *bytes <= SIZE_BYTES_MAX)
        .ok_or_else(|| format!("`{text}` is larger than the 1 PiB limit"))?;
    Ok(bytes)
}

/// Parses `"24h"`, `"30m"`, `"90s"`, `"7d"` into seconds.
pub fn parse_duration_seconds(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = split_number(text);
    if digits.is_empty() || unit.is_empty() {
        return Err(format!(
            "`{text}` is not a duration: expected a whole number and a unit (s, m, h, d), e.g. \"24h\""
        ));
    }
    let multiplier = match DURATION_UNITS.iter().find(|(name, _)| *name == unit) {
        Some((_, multiplier)) => *multiplier,
        None => {
            return Err(format!(
                "unknown duration unit `{unit}` in `{text}`: use s, m, h or d"
            ))
        }
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is too large to be a duration"))?;
    number
        .checked_mul(multiplier)
        .filter(|seconds| *seconds <= DURATION_SECONDS_MAX)
        .ok_or_else(|| format!("`{text}` is longer than the 10-year limit"))
}

/// Parses a throttle: `"0"` (unlimited) or a size per second such as `"200MiB/s"`.
/// Returns bytes per second, 0 meaning unlimited.
pub fn parse_rate_bytes_per_second(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    let Some(size) = text.strip_suffix("/s") else {
        return Err(format!(
            "`{text}` is not a rate: expected \"0\" (unlimited) or a size per second, e.g. \"200MiB/s\""
        ));
    };
    parse_size_bytes(size)
}

fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(text.len(), |(index, _)| index);
    (&text[..end], &text[end..])
}

/// Formats bytes the way a person writes them in the config (`10GiB`, `4096B`).
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, multiplier) in &SIZE_UNITS[..4] {
            if self.0 >= *multiplier && self.0.is_multiple_of(*multiplier) {
                return write!(f, "{}{name}", self.0 / multiplier);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Formats seconds as the largest exact unit (`24h`, `90s`).
pub struct Seconds(pub u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, multiplier) in DURATION_UNITS.iter().rev() {
            if self.0 >= *multiplier && self.0.is_multiple_of(*multiplier) {
                return write!(f, "{}{name}", self.0 / multiplier);
            }
        }
        write!(f, "{}s", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_bytes("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size_bytes("4096"), Ok(4096));
        assert_eq!(parse_size_bytes("4096B"), Ok(4096));
        assert_eq!(parse_size_bytes("2MB"), Ok(2_000_000));
        assert!(parse_size_bytes("10 GiB").is_err());
        assert!(parse_size_bytes("10gib").is_err());
        assert!(parse_size_bytes("GiB").is_err());
        assert!(parse_size_bytes("-1GiB").is_err());
        assert!(parse_size_bytes("1.5GiB").is_err());
        assert!(parse_size_bytes("2048TiB").is_err());
        assert!(parse_size_bytes("99999999999999999999999").is_err());
    }

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration_seconds("24h"), Ok(86400));
        assert_eq!(parse_duration_seconds("7d"), Ok(7 * 86400));
        assert!(parse_duration_seconds("24").is_err());
        assert!(parse_duration_seconds("1w").is_err());
        assert_eq!(parse_rate_bytes_per_second("0"), Ok(0));
        assert_eq!(parse_rate_bytes_per_second("200MiB/s"), Ok(200 << 20));
        assert!(parse_rate_bytes_per_second("200MiB").is_err());
    }

    #[test]
    fn display_round_trips() {
        for text in ["10GiB", "100B", "3KiB", "1TiB"] {
            let bytes = parse_size_bytes(text).unwrap();
            assert_eq!(Bytes(bytes).to_string(), text);
        }
        for text in ["36h", "90s", "7d", "30m"] {
            let seconds = parse_duration_seconds(text).unwrap();
            assert_eq!(Seconds(seconds).to_string(), text);
        }
    }
}
