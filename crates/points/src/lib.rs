//! Restore points: what a user types after `--at` / `--to` (`latest`, `seq:N`, `mark:NAME`,
//! or an RFC 3339 time) and how a server turns it into the one sequence number its image
//! will equal. Pure: the caller supplies the window it holds (from its undo journal and
//! journal copy), the markers it knows and the record times; nothing here reads a file or a
//! clock.
//!
//! "As of seq N" always means: every record with seq ≤ N applied, none after. Seq 0 is the
//! empty history (before the first write).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest marker name; the journal's own limit (`MARKER_NAME_BYTES_MAX`) is larger, this is
/// the name rule of the configuration (`[a-z0-9][a-z0-9._-]{0,62}`) that every user-facing
/// name follows.
pub const MARKER_NAME_BYTES_MAX: usize = 63;
/// Longest POINT text accepted, so a hostile request cannot make us parse megabytes.
pub const POINT_TEXT_BYTES_MAX: usize = 128;

/// A restore point as the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Point {
    /// The newest record the server holds.
    Latest,
    /// Production as of this sequence number.
    Seq(u64),
    /// The sequence number of a named event marker.
    Mark(String),
    /// The last record with a timestamp at or before this time (unix nanoseconds).
    Time { unix_ns: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    #[error("restore point is empty: use latest, seq:N, mark:NAME or an RFC 3339 time")]
    Empty,
    #[error("restore point is {length_bytes} bytes long, the limit is {POINT_TEXT_BYTES_MAX}")]
    TooLong { length_bytes: usize },
    #[error("restore point {text:?}: {reason}")]
    Invalid { text: String, reason: String },
}

impl Point {
    pub fn parse(text: &str) -> Result<Point, PointError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(PointError::Empty);
        }
        if text.len() > POINT_TEXT_BYTES_MAX {
            return Err(PointError::TooLong {
                length_bytes: text.len(),
            });
        }
        let invalid = |reason: String| PointError::Invalid {
            text: text.to_string(),
            reason,
        };
        if text == "latest" {
            return Ok(Point::Latest);
        }
        if let Some(number) = text.strip_prefix("seq:") {
            let seq = number.parse::<u64>().map_err(|_| {
                invalid(format!(
                    "{number:?} is not a sequence number (a whole number ≥ 0)"
                ))
            })?;
            return Ok(Point::Seq(seq));
        }
        if let Some(name) = text.strip_prefix("mark:") {
            check_marker_name(name).map_err(invalid)?;
            return Ok(Point::Mark(name.to_string()));
        }
        // humantime reads UTC only; a ±HH:MM zone is split off here and applied after.
        let (local, offset_seconds) = split_offset(text).map_err(invalid)?;
        if offset_seconds.is_none() && !(text.ends_with('Z') || text.ends_with('z')) {
            // A time without zone would be read as UTC and silently shift a user elsewhere.
            return Err(invalid(
                "a time needs its zone, e.g. 2026-11-25T21:30:00Z or +01:00".to_string(),
            ));
        }
        let time = humantime::parse_rfc3339_weak(local).map_err(|error| {
            invalid(format!(
                "not latest, seq:N, mark:NAME, nor an RFC 3339 time ({error})"
            ))
        })?;
        let utc_ns = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| invalid("a time before 1970 cannot be in any window".to_string()))?
            .as_nanos() as i128;
        let unix_ns = utc_ns - i128::from(offset_seconds.unwrap_or(0)) * 1_000_000_000;
        let unix_ns = u64::try_from(unix_ns).map_err(|_| {
            invalid("the time is before 1970 or after 2554, outside any window".to_string())
        })?;
        Ok(Point::Time { unix_ns })
    }
}

/// Split a trailing `±HH:MM` zone off an RFC 3339 time: (the time without it, the offset in
/// seconds east of UTC), or the text unchanged and `None` when there is no such zone.
fn split_offset(text: &str) -> Result<(&str, Option<i64>), String> {
    let bytes = text.as_bytes();
    // "…T21:30:00+01:00": the zone is the last six characters, after the 'T' part.
    if bytes.len() <= 6 || !text.contains('T') && !text.contains('t') {
        return Ok((text, None));
    }
    let Some(zone) = text.get(text.len() - 6..) else {
        return Ok((text, None));
    };
    if !zone.is_ascii() {
        return Ok((text, None));
    }
    let zone_bytes = zone.as_bytes();
    let sign = match zone_bytes[0] {
        b'+' => 1i64,
        b'-' => -1i64,
        _ => return Ok((text, None)),
    };
    if zone_bytes[3] != b':' {
        return Ok((text, None));
    }
    let hours = zone[1..3]
        .parse::<i64>()
        .map_err(|_| format!("zone {zone:?} is not ±HH:MM"))?;
    let minutes = zone[4..6]
        .parse::<i64>()
        .map_err(|_| format!("zone {zone:?} is not ±HH:MM"))?;
    if hours > 23 || minutes > 59 {
        return Err(format!("zone {zone:?} is out of range"));
    }
    Ok((
        &text[..text.len() - 6],
        Some(sign * (hours * 3600 + minutes * 60)),
    ))
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Point::Latest => f.write_str("latest"),
            Point::Seq(seq) => write!(f, "seq:{seq}"),
            Point::Mark(name) => write!(f, "mark:{name}"),
            Point::Time { unix_ns } => f.write_str(&format_time(*unix_ns)),
        }
    }
}

/// Check a marker name against the name rule; the reason says what is wrong.
pub fn check_marker_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a marker name cannot be empty".to_string());
    }
    if name.len() > MARKER_NAME_BYTES_MAX {
        return Err(format!(
            "marker name is {} bytes long, the limit is {MARKER_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !(first_ok && rest_ok) {
        return Err(format!(
            "marker name {name:?} must match [a-z0-9][a-z0-9._-]{{0,62}}"
        ));
    }
    Ok(())
}

/// RFC 3339 with milliseconds, UTC, e.g. `2026-11-25T21:30:00.123Z`.
pub fn format_time(unix_ns: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_ns);
    humantime::format_rfc3339_millis(time).to_string()
}

/// A named event marker: the journal record `mark` wrote, with its place in the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub name: String,
    pub seq: u64,
    pub time_unix_ns: u64,
}

/// What one server can restore: every image as of a seq in `first_seq..=last_seq`.
#[derive(Clone, Copy, Debug)]
pub struct Window<'a> {
    /// Oldest restorable image (the seq before the oldest undo record still kept).
    pub first_seq: u64,
    /// Newest restorable image (the newest record held durably).
    pub last_seq: u64,
    /// Markers known to this server, any order.
    pub markers: &'a [Marker],
    /// (seq, unix ns) of records in the window, ascending seq. Times may step back when the
    /// production clock did; resolution treats them as their running maximum so the answer
    /// is still one well-defined seq.
    pub times: &'a [(u64, u64)],
}

/// The seq a point resolved to, with the time of that record when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub seq: u64,
    pub time_unix_ns: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no marker named {name:?} is known here")]
    UnknownMarker { name: String },
    #[error("{point} (seq {seq}) is outside the restore window seq {first_seq}..={last_seq}")]
    OutsideWindow {
        point: String,
        seq: u64,
        first_seq: u64,
        last_seq: u64,
    },
    #[error("{point} is before the oldest record of the restore window ({oldest})")]
    BeforeWindow { point: String, oldest: String },
    #[error("{point}: no record times are known in the window seq {first_seq}..={last_seq}")]
    NoTimes {
        point: String,
        first_seq: u64,
        last_seq: u64,
    },
}

impl Window<'_> {
    pub fn resolve(&self, point: &Point) -> Result<Resolved, ResolveError> {
        let resolved = match point {
            Point::Latest => Resolved {
                seq: self.last_seq,
                time_unix_ns: self.time_of(self.last_seq),
            },
            Point::Seq(seq) => Resolved {
                seq: *seq,
                time_unix_ns: self.time_of(*seq),
            },
            Point::Mark(name) => {
                let marker = self
                    .markers
                    .iter()
                    .filter(|marker| &marker.name == name)
                    // A name reused later means the newest event of that name.
                    .max_by_key(|marker| marker.seq)
                    .ok_or_else(|| ResolveError::UnknownMarker { name: name.clone() })?;
                Resolved {
                    seq: marker.seq,
                    time_unix_ns: Some(marker.time_unix_ns),
                }
            }
            Point::Time { unix_ns } => self.resolve_time(point, *unix_ns)?,
        };
        if resolved.seq < self.first_seq || resolved.seq > self.last_seq {
            return Err(ResolveError::OutsideWindow {
                point: point.to_string(),
                seq: resolved.seq,
                first_seq: self.first_seq,
                last_seq: self.last_seq,
            });
        }
        Ok(resolved)
    }

    fn time_of(&self, seq: u64) -> Option<u64> {
        self.times
            .binary_search_by_key(&seq, |(s, _)| *s)
            .ok()
            .map(|index| self.times[index].1)
    }

    fn resolve_time(&self, point: &Point, unix_ns: u64) -> Result<Resolved, ResolveError> {
        let Some(&(_, oldest_ns)) = self.times.first() else {
            return Err(ResolveError::NoTimes {
                point: point.to_string(),
                first_seq: self.first_seq,
                last_seq: self.last_seq,
            });
        };
        // The last record whose running-maximum time is ≤ the point.
        let mut best = None;
        let mut running_max_ns = 0u64;
        for &(seq, time_ns) in self.times {
            running_max_ns = running_max_ns.max(time_ns);
            if running_max_ns > unix_ns {
                break;
            }
            best = Some(Resolved {
                seq,
                time_unix_ns: Some(time_ns),
            });
        }
        match best {
            Some(resolved) => Ok(resolved),
            // Before the first record we know the time of: the image just before it is still
            // restorable when the window starts there.
            None => {
                let (first_record_seq, _) = self.times[0];
                if first_record_seq > self.first_seq {
                    Ok(Resolved {
                        seq: first_record_seq - 1,
                        time_unix_ns: None,
                    })
                } else {
                    Err(ResolveError::BeforeWindow {
                        point: point.to_string(),
                        oldest: format_time(oldest_ns),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(Point::parse("latest"), Ok(Point::Latest));
        assert_eq!(Point::parse(" seq:42 "), Ok(Point::Seq(42)));
        assert_eq!(
            Point::parse("mark:before-upgrade"),
            Ok(Point::Mark("before-upgrade".into()))
        );
        assert_eq!(
            Point::parse("1970-01-01T00:00:01Z"),
            Ok(Point::Time {
                unix_ns: 1_000_000_000
            })
        );
        assert_eq!(
            Point::parse("1970-01-01T01:00:01+01:00"),
            Ok(Point::Time {
                unix_ns: 1_000_000_000
            })
        );
        assert_eq!(
            Point::parse("1970-01-01T00:00:00.250Z"),
            Ok(Point::Time {
                unix_ns: 250_000_000
            })
        );
    }

    #[test]
    fn refuses_bad_points_with_reasons() {
        assert_eq!(Point::parse(""), Err(PointError::Empty));
        for bad in [
            "seq:",
            "seq:-1",
            "seq:1.5",
            "mark:",
            "mark:../etc",
            "mark:UPPER",
            "yesterday",
            "2026-11-25T21:30:00",
            "2026-13-01T00:00:00Z",
        ] {
            let error = Point::parse(bad).expect_err(bad);
            assert!(
                matches!(error, PointError::Invalid { .. }),
                "{bad}: {error}"
            );
        }
        assert!(matches!(
            Point::parse(&"x".repeat(POINT_TEXT_BYTES_MAX + 1)),
            Err(PointError::TooLong { .. })
        ));
    }

    #[test]
    fn display_round_trips() {
        for text in ["latest", "seq:7", "mark:m1", "2026-11-25T21:30:00.123Z"] {
            let point = Point::parse(text).expect(text);
            assert_eq!(Point::parse(&point.to_string()), Ok(point));
        }
    }

    fn window<'a>(markers: &'a [Marker], times: &'a [(u64, u64)]) -> Window<'a> {
        Window {
            first_seq: 10,
            last_seq: 20,
            markers,
            times,
        }
    }

    #[test]
    fn resolves_seq_mark_latest_and_refuses_outside() {
        let markers = [
            Marker {
                name: "m".into(),
                seq: 12,
                time_unix_ns: 5,
            },
            Marker {
                name: "m".into(),
                seq: 15,
                time_unix_ns: 6,
            },
        ];
        let w = window(&markers, &[]);
        assert_eq!(w.resolve(&Point::Latest).map(|r| r.seq), Ok(20));
        assert_eq!(w.resolve(&Point::Seq(10)).map(|r| r.seq), Ok(10));
        assert_eq!(w.resolve(&Point::Mark("m".into())).map(|r| r.seq), Ok(15));
        assert!(matches!(
            w.resolve(&Point::Mark("nope".into())),
            Err(ResolveError::UnknownMarker { .. })
        ));
        assert!(matches!(
            w.resolve(&Point::Seq(9)),
            Err(ResolveError::OutsideWindow { .. })
        ));
        assert!(matches!(
            w.resolve(&Point::Seq(21)),
            Err(ResolveError::OutsideWindow { .. })
        ));
    }

    #[test]
    fn resolves_time_to_last_record_at_or_before() {
        let times = [(11, 100), (12, 200), (13, 200), (14, 150), (15, 300)];
        let w = window(&[], &times);
        let at = |ns| w.resolve(&Point::Time { unix_ns: ns }).map(|r| r.seq);
        assert_eq!(at(100), Ok(11));
        assert_eq!(at(199), Ok(11));
        // 14's clock stepped back: it still counts as at 200, after 13.
        assert_eq!(at(200), Ok(14));
        assert_eq!(at(299), Ok(14));
        assert_eq!(at(1_000), Ok(15));
        // Before the first known record: the image just before it (seq 10) is in the window.
        assert_eq!(at(50), Ok(10));
        let narrow = Window { first_seq: 11, ..w };
        assert!(matches!(
            narrow.resolve(&Point::Time { unix_ns: 50 }),
            Err(ResolveError::BeforeWindow { .. })
        ));
        assert!(matches!(
            window(&[], &[]).resolve(&Point::Time { unix_ns: 50 }),
            Err(ResolveError::NoTimes { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,160}") {
            let _ = Point::parse(&text);
        }

        #[test]
        fn time_resolution_is_monotonic(
            mut times in proptest::collection::vec(0u64..1_000, 1..40),
            a in 0u64..1_100,
            b in 0u64..1_100,
        ) {
            times.sort_unstable();
            let indexed: Vec<(u64, u64)> =
                times.iter().enumerate().map(|(i, t)| (i as u64 + 1, *t)).collect();
            let w = Window { first_seq: 0, last_seq: indexed.len() as u64, markers: &[], times: &indexed };
            let (low, high) = (a.min(b), a.max(b));
            let low_seq = w.resolve(&Point::Time { unix_ns: low }).map(|r| r.seq).unwrap_or(0);
            let high_seq = w.resolve(&Point::Time { unix_ns: high }).map(|r| r.seq).unwrap_or(0);
            proptest::prop_assert!(low_seq <= high_seq);
        }
    }
}
