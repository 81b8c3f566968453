//! Per-connection framing state: frame sequence numbers, the negotiated version, and the
//! end-of-stream check.

use crate::error::WireError;
use crate::frame::{decode_frame, encode_frame, Frame, FrameHeader, PROTOCOL_VERSION_MIN};

/// The first frame sequence number of every connection and direction.
pub const FRAME_SEQ_FIRST: u64 = 1;

/// Sending side of one connection: numbers frames 1, 2, 3, ... and stamps the version.
#[derive(Debug, Clone)]
pub struct FrameSequencer {
    next_seq: u64,
    version: u16,
}

impl Default for FrameSequencer {
    fn default() -> FrameSequencer {
        FrameSequencer::new()
    }
}

impl FrameSequencer {
    /// Starts at [`FRAME_SEQ_FIRST`] with the handshake version [`PROTOCOL_VERSION_MIN`].
    pub fn new() -> FrameSequencer {
        FrameSequencer {
            next_seq: FRAME_SEQ_FIRST,
            version: PROTOCOL_VERSION_MIN,
        }
    }

    /// After the handshake: stamp every later frame with the negotiated version.
    pub fn set_version(&mut self, version: u16) {
        self.version = version;
    }

    pub fn version(&self) -> u16 {
        self.version
    }

    /// The frame seq the next encoded frame gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Append `frame` to `out` with the next frame seq; returns that seq. On error nothing
    /// is appended and the seq is not used.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<u64, WireError> {
        let seq = self.next_seq;
        let next = seq.checked_add(1).ok_or(WireError::FrameSeqExhausted)?;
        // Handshake frames keep the frozen handshake version whatever was negotiated.
        let version = if frame.frame_type().is_handshake() {
            PROTOCOL_VERSION_MIN
        } else {
            self.version
        };
        encode_frame(frame, version, seq, out)?;
        self.next_seq = next;
        Ok(seq)
    }
}

/// Receiving side of one connection: decodes frames from the front of a buffer and rejects
/// any frame whose seq is not exactly the next one (replayed, reordered, dropped or
/// injected frames), or whose version differs from the negotiated one. After the first
/// error every call returns [`WireError::Poisoned`]: the connection must be closed.
#[derive(Debug, Clone)]
pub struct FrameReceiver {
    expected_seq: u64,
    version: Option<u16>,
    poisoned: bool,
}

impl Default for FrameReceiver {
    fn default() -> FrameReceiver {
        FrameReceiver::new()
    }
}

impl FrameReceiver {
    pub fn new() -> FrameReceiver {
        FrameReceiver {
            expected_seq: FRAME_SEQ_FIRST,
            version: None,
            poisoned: false,
        }
    }

    /// After the handshake: every later frame must carry exactly `version`. Before this,
    /// handshake frames must carry [`PROTOCOL_VERSION_MIN`].
    pub fn set_version(&mut self, version: u16) {
        self.version = Some(version);
    }

    /// The frame seq the next frame must carry.
    pub fn expected_seq(&self) -> u64 {
        self.expected_seq
    }

    /// Decode the next frame from the front of `buffer`; the caller drops `consumed` bytes.
    /// `Ok(None)`: need more bytes (call [`FrameReceiver::at_eof`] when the peer closes).
    pub fn decode(&mut self, buffer: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
        if self.poisoned {
            return Err(WireError::Poisoned);
        }
        let result = decode_frame(buffer).and_then(|decoded| match decoded {
            None => Ok(None),
            Some((header, frame, consumed)) => {
                self.check(&header)?;
                Ok(Some((frame, consumed)))
            }
        });
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn check(&mut self, header: &FrameHeader) -> Result<(), WireError> {
        if header.frame_seq != self.expected_seq {
            return Err(WireError::FrameSeq {
                expected: self.expected_seq,
                found: header.frame_seq,
            });
        }
        let handshake = header.frame_type.is_handshake();
        let expected_version = match self.version {
            Some(version) if !handshake => version,
            _ => PROTOCOL_VERSION_MIN,
        };
        if header.version != expected_version {
            return Err(WireError::VersionMismatch {
                expected: expected_version,
                found: header.version,
            });
        }
        self.expected_seq = self
            .expected_seq
            .checked_add(1)
            .ok_or(WireError::FrameSeqExhausted)?;
        Ok(())
    }

    /// The peer closed the connection with `buffered` bytes not yet decoded: anything left
    /// over is a frame cut short, never silently dropped.
    pub fn at_eof(&self, buffered: &[u8]) -> Result<(), WireError> {
        finish(buffered)
    }
}

/// End of stream: leftover bytes are a [`WireError::TruncatedFrame`].
pub fn finish(buffered: &[u8]) -> Result<(), WireError> {
    if buffered.is_empty() {
        Ok(())
    } else {
        Err(WireError::TruncatedFrame {
            buffered_bytes: buffered.len(),
        })
    }
}
