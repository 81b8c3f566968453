//! Bit-flag newtypes for the four NBD flag fields.
//!
//! Each field gets its own type so a command flag can never be tested against the transmission
//! flags by accident; all of them keep unknown bits (`from_bits_retain`) because the decoder
//! must report what the peer sent, and policy about unknown bits lives in the callers.

macro_rules! flag_set {
    ($(#[$meta:meta])* $name:ident($repr:ty) { $($(#[$flag_meta:meta])* $flag:ident = $bit:expr;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name($repr);

        impl $name {
            $($(#[$flag_meta])* pub const $flag: $name = $name(1 << $bit);)*

            /// Every flag this crate knows for the field.
            pub const KNOWN: $name = $name(0 $(| (1 << $bit))*);

            /// No flags set.
            pub const fn empty() -> Self {
                $name(0)
            }

            /// Wraps raw wire bits, keeping unknown ones.
            pub const fn from_bits_retain(bits: $repr) -> Self {
                $name(bits)
            }

            /// The raw wire bits.
            pub const fn bits(self) -> $repr {
                self.0
            }

            /// True when every bit of `other` is set in `self`.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// True when any bit of `other` is set in `self`.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            /// The bits of `self` and `other` together.
            pub const fn union(self, other: Self) -> Self {
                $name(self.0 | other.0)
            }

            /// The bits of `self` that are not in `other`.
            pub const fn difference(self, other: Self) -> Self {
                $name(self.0 & !other.0)
            }

            /// Bits set that this crate does not know.
            pub const fn unknown(self) -> Self {
                self.difference(Self::KNOWN)
            }

            /// True when no bit is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, other: $name) -> $name {
                self.union(other)
            }
        }
    };
}

flag_set! {
    /// Handshake flags, sent by the server in the greeting (16 bits).
    HandshakeFlags(u16) {
        /// `NBD_FLAG_FIXED_NEWSTYLE`.
        FIXED_NEWSTYLE = 0;
        /// `NBD_FLAG_NO_ZEROES`.
        NO_ZEROES = 1;
    }
}

flag_set! {
    /// Client flags, the client's answer to the greeting (32 bits).
    ClientFlags(u32) {
        /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
        FIXED_NEWSTYLE = 0;
        /// `NBD_FLAG_C_NO_ZEROES`: omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
        NO_ZEROES = 1;
    }
}

flag_set! {
    /// Transmission flags, sent with the export size (16 bits).
    TransmissionFlags(u16) {
        /// `NBD_FLAG_HAS_FLAGS`: MUST always be set.
        HAS_FLAGS = 0;
        /// `NBD_FLAG_READ_ONLY`.
        READ_ONLY = 1;
        /// `NBD_FLAG_SEND_FLUSH`: the server understands `NBD_CMD_FLUSH`.
        SEND_FLUSH = 2;
        /// `NBD_FLAG_SEND_FUA`: the server honours `NBD_CMD_FLAG_FUA`.
        SEND_FUA = 3;
        /// `NBD_FLAG_ROTATIONAL`: a scheduling hint to the client.
        ROTATIONAL = 4;
        /// `NBD_FLAG_SEND_TRIM`: the server understands `NBD_CMD_TRIM`.
        SEND_TRIM = 5;
        /// `NBD_FLAG_SEND_WRITE_ZEROES`: `NBD_CMD_WRITE_ZEROES` and `NBD_CMD_FLAG_NO_HOLE`.
        SEND_WRITE_ZEROES = 6;
        /// `NBD_FLAG_SEND_DF`: only valid once structured replies are negotiated.
        SEND_DF = 7;
        /// `NBD_FLAG_CAN_MULTI_CONN`: FLUSH/FUA are visible across connections.
        CAN_MULTI_CONN = 8;
        /// `NBD_FLAG_SEND_RESIZE` (experimental extension; never set by us).
        SEND_RESIZE = 9;
        /// `NBD_FLAG_SEND_CACHE`.
        SEND_CACHE = 10;
        /// `NBD_FLAG_SEND_FAST_ZERO`: requires `SEND_WRITE_ZEROES`.
        SEND_FAST_ZERO = 11;
    }
}

flag_set! {
    /// Command flags carried by every transmission request (16 bits).
    CommandFlags(u16) {
        /// `NBD_CMD_FLAG_FUA`: persist before replying. Valid on every command.
        FUA = 0;
        /// `NBD_CMD_FLAG_NO_HOLE`: valid on `NBD_CMD_WRITE_ZEROES` only.
        NO_HOLE = 1;
        /// `NBD_CMD_FLAG_DF`: don't fragment; valid on `NBD_CMD_READ` only.
        DF = 2;
        /// `NBD_CMD_FLAG_REQ_ONE`: valid on `NBD_CMD_BLOCK_STATUS` only (unsupported here).
        REQ_ONE = 3;
        /// `NBD_CMD_FLAG_FAST_ZERO`: valid on `NBD_CMD_WRITE_ZEROES` only.
        FAST_ZERO = 4;
    }
}

flag_set! {
    /// Structured reply chunk flags (16 bits).
    ReplyFlags(u16) {
        /// `NBD_REPLY_FLAG_DONE`: this is the final chunk for the handle.
        DONE = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_positions_match_the_spec() {
        assert_eq!(HandshakeFlags::FIXED_NEWSTYLE.bits(), 0x0001);
        assert_eq!(HandshakeFlags::NO_ZEROES.bits(), 0x0002);
        assert_eq!(TransmissionFlags::HAS_FLAGS.bits(), 0x0001);
        assert_eq!(TransmissionFlags::SEND_WRITE_ZEROES.bits(), 0x0040);
        assert_eq!(TransmissionFlags::CAN_MULTI_CONN.bits(), 0x0100);
        assert_eq!(TransmissionFlags::SEND_FAST_ZERO.bits(), 0x0800);
        assert_eq!(CommandFlags::FUA.bits(), 0x0001);
        assert_eq!(CommandFlags::FAST_ZERO.bits(), 0x0010);
        assert_eq!(ReplyFlags::DONE.bits(), 0x0001);
    }

    #[test]
    fn unknown_bits_are_retained_and_reported() {
        let flags = CommandFlags::from_bits_retain(0x8001);
        assert!(flags.contains(CommandFlags::FUA));
        assert_eq!(flags.unknown().bits(), 0x8000);
        assert!(CommandFlags::FUA.unknown().is_empty());
        let both = ClientFlags::FIXED_NEWSTYLE | ClientFlags::NO_ZEROES;
        assert_eq!(both, ClientFlags::KNOWN);
        assert!(!both
            .difference(ClientFlags::NO_ZEROES)
            .intersects(ClientFlags::NO_ZEROES));
    }
}
