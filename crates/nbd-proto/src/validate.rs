//! Checks a decoded request against an export before the server touches storage.
//!
//! The decoder only rejects what breaks the byte stream; everything here is answered with an
//! error reply and the connection keeps serving. Error choices follow proto.md "Error values":
//!
//! | condition                                             | error    |
//! |-------------------------------------------------------|----------|
//! | unknown command, unknown flag, flag not for command   | EINVAL   |
//! | FLUSH with non-zero offset or length                  | EINVAL   |
//! | WRITE / TRIM / WRITE_ZEROES on a read-only export     | EPERM    |
//! | zero length (READ, WRITE, TRIM, WRITE_ZEROES)         | EINVAL   |
//! | READ / WRITE above `REQUEST_PAYLOAD_BYTES_MAX`        | EINVAL   |
//! | WRITE / WRITE_ZEROES past the end (or offset overflow) | ENOSPC   |
//! | READ / TRIM past the end (or offset overflow)         | EINVAL   |
//!
//! Zero-length requests: the spec leaves them unspecified (the server SHOULD NOT disconnect).
//! We answer EINVAL rather than succeed so that every write that reaches the journal covers at
//! least one byte — an invariant the journal can then assert instead of special-casing.
//!
//! EOVERFLOW is never returned: the spec reserves it for `NBD_CMD_FLAG_DF` reads that cannot
//! be sent as one chunk, and every read we accept fits one chunk.

use crate::flags::{CommandFlags, TransmissionFlags};
use crate::handshake::BlockSize;
use crate::limits::REQUEST_PAYLOAD_BYTES_MAX;
use crate::transmission::{Command, NbdErrno, RequestHeader};

/// Validates `request` against an export of `export_size_bytes`, read-only or not.
///
/// `Ok(())` means the server may execute it. `NBD_CMD_DISC` is always `Ok` (it gets no reply).
/// Does not check negotiated features; see [`validate_negotiated`].
pub fn validate(
    request: &RequestHeader,
    export_size_bytes: u64,
    read_only: bool,
) -> Result<(), NbdErrno> {
    let allowed_flags = match request.command {
        Command::Unknown(_) => return Err(NbdErrno::EINVAL),
        Command::Read => CommandFlags::FUA | CommandFlags::DF,
        Command::WriteZeroes => CommandFlags::FUA | CommandFlags::NO_HOLE | CommandFlags::FAST_ZERO,
        Command::Write | Command::Disc | Command::Flush | Command::Trim => CommandFlags::FUA,
    };
    if !request.flags.difference(allowed_flags).is_empty() {
        return Err(NbdErrno::EINVAL);
    }
    match request.command {
        Command::Disc => return Ok(()),
        Command::Flush => {
            // Offset and length are reserved and MUST be zero.
            let reserved_clear = request.offset_bytes == 0 && request.length_bytes == 0;
            return if reserved_clear {
                Ok(())
            } else {
                Err(NbdErrno::EINVAL)
            };
        }
        _ => {}
    }
    if read_only && request.command.is_mutation() {
        return Err(NbdErrno::EPERM);
    }
    if request.length_bytes == 0 {
        return Err(NbdErrno::EINVAL);
    }
    let carries_data = matches!(request.command, Command::Read | Command::Write);
    if carries_data && request.length_bytes > REQUEST_PAYLOAD_BYTES_MAX {
        return Err(NbdErrno::EINVAL);
    }
    let end_bytes = request
        .offset_bytes
        .checked_add(u64::from(request.length_bytes));
    let within_export = end_bytes.is_some_and(|end_bytes| end_bytes <= export_size_bytes);
    if !within_export {
        let writes_data = matches!(request.command, Command::Write | Command::WriteZeroes);
        return Err(if writes_data {
            NbdErrno::ENOSPC
        } else {
            NbdErrno::EINVAL
        });
    }
    debug_assert!(request.length_bytes > 0);
    debug_assert!(request.offset_bytes < export_size_bytes);
    Ok(())
}

/// Checks that the request only uses commands and flags the server advertised in
/// `transmission_flags` (the client MUST NOT use unadvertised features; we answer EINVAL).
pub fn validate_negotiated(
    request: &RequestHeader,
    transmission_flags: TransmissionFlags,
) -> Result<(), NbdErrno> {
    let command_needs = match request.command {
        Command::Flush => TransmissionFlags::SEND_FLUSH,
        Command::Trim => TransmissionFlags::SEND_TRIM,
        Command::WriteZeroes => TransmissionFlags::SEND_WRITE_ZEROES,
        _ => TransmissionFlags::empty(),
    };
    let flag_needs = [
        (CommandFlags::FUA, TransmissionFlags::SEND_FUA),
        (CommandFlags::DF, TransmissionFlags::SEND_DF),
        (CommandFlags::FAST_ZERO, TransmissionFlags::SEND_FAST_ZERO),
    ];
    let mut needs = command_needs;
    for (command_flag, transmission_flag) in flag_needs {
        if request.flags.contains(command_flag) {
            needs = needs | transmission_flag;
        }
    }
    if transmission_flags.contains(needs) {
        Ok(())
    } else {
        Err(NbdErrno::EINVAL)
    }
}

/// Checks alignment to an advertised minimum block size and length against the advertised
/// maximum (proto.md "Block size constraints": the server SHOULD answer EINVAL).
///
/// Only meaningful once the client has agreed to the constraints, i.e. it sent `NBD_OPT_GO`
/// with an `NBD_INFO_BLOCK_SIZE` request; otherwise clients may legitimately send unaligned
/// requests and the server must serve them. Trim and write-zeroes are exempt from the maximum
/// (they carry no payload); write-zeroes with `FAST_ZERO` is exempt as the spec says.
pub fn validate_block_size(request: &RequestHeader, block_size: BlockSize) -> Result<(), NbdErrno> {
    assert!(
        block_size.is_valid(),
        "invalid block size constraints {block_size:?}"
    );
    let ranged = matches!(
        request.command,
        Command::Read | Command::Write | Command::Trim | Command::WriteZeroes
    );
    if !ranged {
        return Ok(());
    }
    let minimum_bytes = u64::from(block_size.minimum_bytes);
    let aligned = request.offset_bytes.is_multiple_of(minimum_bytes)
        && u64::from(request.length_bytes) % minimum_bytes == 0;
    if !aligned {
        return Err(NbdErrno::EINVAL);
    }
    let bounded_by_maximum = match request.command {
        Command::Read | Command::Write => true,
        Command::WriteZeroes => !request.flags.contains(CommandFlags::FAST_ZERO),
        _ => false,
    };
    if bounded_by_maximum && request.length_bytes > block_size.maximum_bytes {
        return Err(NbdErrno::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1 << 20;

    fn request(command: Command, offset_bytes: u64, length_bytes: u32) -> RequestHeader {
        RequestHeader {
            flags: CommandFlags::empty(),
            command,
            handle: 1,
            offset_bytes,
            length_bytes,
        }
    }

    fn with_flags(mut header: RequestHeader, flags: CommandFlags) -> RequestHeader {
        header.flags = flags;
        header
    }

    #[test]
    fn in_range_requests_pass() {
        for command in [
            Command::Read,
            Command::Write,
            Command::Trim,
            Command::WriteZeroes,
        ] {
            assert_eq!(validate(&request(command, 0, 512), SIZE, false), Ok(()));
            assert_eq!(
                validate(&request(command, SIZE - 1, 1), SIZE, false),
                Ok(()),
                "last byte"
            );
        }
        assert_eq!(validate(&request(Command::Flush, 0, 0), SIZE, true), Ok(()));
        assert_eq!(validate(&request(Command::Disc, 0, 0), SIZE, true), Ok(()));
        assert_eq!(
            validate(&request(Command::Read, 0, 512), SIZE, true),
            Ok(())
        );
    }

    #[test]
    fn past_the_end_is_enospc_for_writes_and_einval_otherwise() {
        let cases = [
            (Command::Write, NbdErrno::ENOSPC),
            (Command::WriteZeroes, NbdErrno::ENOSPC),
            (Command::Read, NbdErrno::EINVAL),
            (Command::Trim, NbdErrno::EINVAL),
        ];
        for (command, expected) in cases {
            assert_eq!(
                validate(&request(command, SIZE - 1, 2), SIZE, false),
                Err(expected)
            );
            assert_eq!(
                validate(&request(command, SIZE, 1), SIZE, false),
                Err(expected)
            );
            // offset + length wraps u64: must not be mistaken for an in-range request.
            assert_eq!(
                validate(&request(command, u64::MAX, 2), SIZE, false),
                Err(expected)
            );
            assert_eq!(
                validate(&request(command, u64::MAX, 1), u64::MAX, false),
                Err(expected)
            );
        }
    }

    #[test]
    fn zero_length_is_einval() {
        for command in [
            Command::Read,
            Command::Write,
            Command::Trim,
            Command::WriteZeroes,
        ] {
            assert_eq!(
                validate(&request(command, 0, 0), SIZE, false),
                Err(NbdErrno::EINVAL)
            );
        }
    }

    #[test]
    fn mutations_on_read_only_are_eperm() {
        for command in [Command::Write, Command::Trim, Command::WriteZeroes] {
            assert_eq!(
                validate(&request(command, 0, 512), SIZE, true),
                Err(NbdErrno::EPERM)
            );
        }
    }

    #[test]
    fn oversized_reads_and_writes_are_einval_but_trim_is_not() {
        let size = u64::MAX;
        let over = REQUEST_PAYLOAD_BYTES_MAX + 1;
        assert_eq!(
            validate(&request(Command::Read, 0, over), size, false),
            Err(NbdErrno::EINVAL)
        );
        assert_eq!(
            validate(&request(Command::Write, 0, over), size, false),
            Err(NbdErrno::EINVAL)
        );
        let at = REQUEST_PAYLOAD_BYTES_MAX;
        assert_eq!(
            validate(&request(Command::Read, 0, at), size, false),
            Ok(())
        );
        assert_eq!(
            validate(&request(Command::Trim, 0, u32::MAX), size, false),
            Ok(())
        );
        assert_eq!(
            validate(&request(Command::WriteZeroes, 0, u32::MAX), size, false),
            Ok(())
        );
    }

    #[test]
    fn unknown_commands_and_flags_are_einval() {
        let unknown = request(Command::Unknown(5), 0, 512);
        assert_eq!(validate(&unknown, SIZE, false), Err(NbdErrno::EINVAL));
        let bad_bit = with_flags(
            request(Command::Read, 0, 512),
            CommandFlags::from_bits_retain(0x100),
        );
        assert_eq!(validate(&bad_bit, SIZE, false), Err(NbdErrno::EINVAL));
    }

    #[test]
    fn flags_must_apply_to_the_command() {
        let einval = Err(NbdErrno::EINVAL);
        let write_df = with_flags(request(Command::Write, 0, 512), CommandFlags::DF);
        assert_eq!(validate(&write_df, SIZE, false), einval);
        let read_no_hole = with_flags(request(Command::Read, 0, 512), CommandFlags::NO_HOLE);
        assert_eq!(validate(&read_no_hole, SIZE, false), einval);
        let trim_fast_zero = with_flags(request(Command::Trim, 0, 512), CommandFlags::FAST_ZERO);
        assert_eq!(validate(&trim_fast_zero, SIZE, false), einval);
        let read_req_one = with_flags(request(Command::Read, 0, 512), CommandFlags::REQ_ONE);
        assert_eq!(validate(&read_req_one, SIZE, false), einval);

        let zeroes = CommandFlags::FUA | CommandFlags::NO_HOLE | CommandFlags::FAST_ZERO;
        let write_zeroes = with_flags(request(Command::WriteZeroes, 0, 512), zeroes);
        assert_eq!(validate(&write_zeroes, SIZE, false), Ok(()));
        let read_df = with_flags(
            request(Command::Read, 0, 512),
            CommandFlags::FUA | CommandFlags::DF,
        );
        assert_eq!(validate(&read_df, SIZE, false), Ok(()));
        let flush_fua = with_flags(request(Command::Flush, 0, 0), CommandFlags::FUA);
        assert_eq!(validate(&flush_fua, SIZE, false), Ok(()));
    }

    #[test]
    fn flush_with_reserved_fields_set_is_einval() {
        assert_eq!(
            validate(&request(Command::Flush, 1, 0), SIZE, false),
            Err(NbdErrno::EINVAL)
        );
        assert_eq!(
            validate(&request(Command::Flush, 0, 1), SIZE, false),
            Err(NbdErrno::EINVAL)
        );
    }

    #[test]
    fn negotiated_features_gate_commands_and_flags() {
        let minimal = TransmissionFlags::HAS_FLAGS;
        let full = TransmissionFlags::KNOWN;
        let cases = [
            request(Command::Flush, 0, 0),
            request(Command::Trim, 0, 512),
            request(Command::WriteZeroes, 0, 512),
            with_flags(request(Command::Write, 0, 512), CommandFlags::FUA),
            with_flags(request(Command::Read, 0, 512), CommandFlags::DF),
            with_flags(
                request(Command::WriteZeroes, 0, 512),
                CommandFlags::FAST_ZERO,
            ),
        ];
        for header in cases {
            assert_eq!(
                validate_negotiated(&header, minimal),
                Err(NbdErrno::EINVAL),
                "{header:?}"
            );
            assert_eq!(validate_negotiated(&header, full), Ok(()), "{header:?}");
        }
        let plain = [
            request(Command::Read, 0, 512),
            request(Command::Write, 0, 512),
        ];
        for header in plain {
            assert_eq!(validate_negotiated(&header, minimal), Ok(()));
        }
    }

    #[test]
    fn block_size_constraints_apply_to_ranged_commands() {
        let block_size = BlockSize {
            minimum_bytes: 512,
            preferred_bytes: 4096,
            maximum_bytes: 1 << 20,
        };
        let check = |header: RequestHeader| validate_block_size(&header, block_size);
        assert_eq!(check(request(Command::Read, 512, 1024)), Ok(()));
        assert_eq!(
            check(request(Command::Read, 100, 512)),
            Err(NbdErrno::EINVAL)
        );
        assert_eq!(
            check(request(Command::Write, 512, 100)),
            Err(NbdErrno::EINVAL)
        );
        assert_eq!(check(request(Command::Trim, 1, 512)), Err(NbdErrno::EINVAL));
        assert_eq!(
            check(request(Command::Write, 0, (1 << 20) + 512)),
            Err(NbdErrno::EINVAL)
        );
        assert_eq!(
            check(request(Command::Trim, 0, 1 << 30)),
            Ok(()),
            "trim has no maximum"
        );
        let big_zeroes = request(Command::WriteZeroes, 0, 1 << 30);
        assert_eq!(check(big_zeroes), Err(NbdErrno::EINVAL));
        assert_eq!(
            check(with_flags(big_zeroes, CommandFlags::FAST_ZERO)),
            Ok(())
        );
        assert_eq!(check(request(Command::Flush, 0, 0)), Ok(()));
    }
}
