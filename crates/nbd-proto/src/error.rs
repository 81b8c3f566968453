//! Fatal protocol errors.
//!
//! Everything here means "the byte stream can no longer be trusted": the caller must drop the
//! connection (a hard disconnect in spec terms). Recoverable problems — an unknown option, a
//! malformed option body, an unknown command, an out-of-range request — are *not* errors of the
//! decoder; they decode to values the server answers and then keeps serving.

/// A violation that forces a hard disconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The client set a flag we did not advertise or do not know (spec: server MUST drop).
    #[error("client flags {flags:#010x} contain unknown bits {unknown:#010x}")]
    UnknownClientFlags {
        /// The raw client flags.
        flags: u32,
        /// The offending bits.
        unknown: u32,
    },

    /// An option header did not start with `IHAVEOPT`.
    #[error("option header magic {magic:#018x} is not IHAVEOPT")]
    BadOptionMagic {
        /// The magic received.
        magic: u64,
    },

    /// An option's data length exceeds `OPTION_LENGTH_BYTES_MAX`.
    #[error("option {option} declares {length_bytes} bytes of data, above the limit of {length_bytes_max}")]
    OptionTooLong {
        /// The option code, so the server may send `NBD_REP_ERR_TOO_BIG` before disconnecting.
        option: u32,
        /// The declared length.
        length_bytes: u32,
        /// The limit in force.
        length_bytes_max: u32,
    },

    /// A transmission request did not start with `NBD_REQUEST_MAGIC`.
    #[error("request magic {magic:#010x} is not NBD_REQUEST_MAGIC")]
    BadRequestMagic {
        /// The magic received.
        magic: u32,
    },

    /// A write request announces a payload above `REQUEST_PAYLOAD_BYTES_MAX`.
    ///
    /// Fatal because the payload follows the header on the stream: the only way to stay in sync
    /// would be to read and discard it, which is exactly the denial of service the limit exists
    /// to stop.
    #[error("write payload of {length_bytes} bytes is above the limit of {length_bytes_max}")]
    WritePayloadTooLarge {
        /// The declared payload length.
        length_bytes: u32,
        /// The limit in force.
        length_bytes_max: u32,
    },

    /// Client side: the server greeting did not start with `NBDMAGIC` + `IHAVEOPT`.
    #[error("server greeting magic is wrong (not a fixed-newstyle NBD server)")]
    BadGreetingMagic,

    /// Client side: an option reply did not start with the option reply magic.
    #[error("option reply magic {magic:#018x} is wrong")]
    BadOptionReplyMagic {
        /// The magic received.
        magic: u64,
    },

    /// Client side: a transmission reply did not start with a known reply magic.
    #[error("reply magic {magic:#010x} is neither simple nor structured")]
    BadReplyMagic {
        /// The magic received.
        magic: u32,
    },

    /// Client side: a reply declares a payload above the client's limit.
    #[error("reply payload of {length_bytes} bytes is above the limit of {length_bytes_max}")]
    ReplyTooLong {
        /// The declared length.
        length_bytes: u32,
        /// The limit in force.
        length_bytes_max: u32,
    },
}
