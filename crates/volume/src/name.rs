//! LV name validation. A name becomes a file name inside a container directory, so the rules
//! are what keeps a hostile configuration from reaching outside that directory.

use crate::error::{Result, VolumeError};

/// Longest LV name, matching `[a-z0-9][a-z0-9._-]{0,62}` from the configuration contract.
pub const LV_NAME_LENGTH_BYTES_MAX: usize = 63;

/// Checks `name` against `[a-z0-9][a-z0-9._-]{0,62}`.
///
/// The first character is alphanumeric, so `.`, `..` and hidden files (where the container
/// keeps its manifest and lock) can never be named; `/` and NUL are outside the alphabet, so a
/// name is always exactly one path component.
pub fn validate_lv_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(VolumeError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("name is empty");
    }
    if name.len() > LV_NAME_LENGTH_BYTES_MAX {
        return invalid("name is longer than 63 bytes");
    }
    if name.contains('\0') {
        return invalid("name contains a NUL byte");
    }
    if name.contains('/') {
        return invalid("name contains '/' and would escape the container directory");
    }
    if name == "." || name == ".." {
        return invalid("name is a relative directory reference");
    }
    let bytes = name.as_bytes();
    if !(bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit()) {
        return invalid("name must start with a lowercase letter or digit");
    }
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-');
    if !bytes.iter().all(|&b| allowed(b)) {
        return invalid("name may only contain a-z, 0-9, '.', '_' and '-'");
    }
    debug_assert!(!name.starts_with('.'));
    debug_assert_eq!(std::path::Path::new(name).components().count(), 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for name in ["a", "lv_data01", "0", "a.b-c_d", &"x".repeat(63)] {
            assert!(validate_lv_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_escapes_and_bad_alphabet() {
        let long = "x".repeat(64);
        for name in [
            "", ".", "..", "../etc", "a/b", "/abs", "a\0b", ".hidden", "-a", "_a", "A", "lv data",
            "é", &long,
        ] {
            let error = validate_lv_name(name).unwrap_err();
            assert!(matches!(error, VolumeError::InvalidName { .. }), "{name:?}");
        }
    }

    #[test]
    fn dots_inside_are_one_component() {
        // "a..b" is a single harmless path component; only a leading dot is dangerous.
        assert!(validate_lv_name("a..b").is_ok());
        assert_eq!(std::path::Path::new("a..b").components().count(), 1);
    }
}
