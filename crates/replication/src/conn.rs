//! Frames over a byte stream: the only place that moves wire frames between sockets and the
//! sans-IO codec of `redoubt-wire`.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use redoubt_wire::{Frame, FrameReceiver, FrameSequencer};

use crate::error::ReplicationError;

/// Bytes read from the socket per call.
const READ_CHUNK_BYTES: usize = 256 * 1024;

pub struct FrameWriter<W> {
    writer: W,
    sequencer: FrameSequencer,
    buffer: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(writer: W) -> FrameWriter<W> {
        FrameWriter {
            writer,
            sequencer: FrameSequencer::new(),
            buffer: Vec::new(),
        }
    }

    pub fn set_version(&mut self, version: u16) {
        self.sequencer.set_version(version);
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), ReplicationError> {
        self.buffer.clear();
        self.sequencer.encode(frame, &mut self.buffer)?;
        self.writer.write_all(&self.buffer).await?;
        self.writer.flush().await?;
        Ok(())
    }
}

pub struct FrameReader<R> {
    reader: R,
    receiver: FrameReceiver,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already consumed; compacted before the next read.
    consumed: usize,
    chunk: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(reader: R) -> FrameReader<R> {
        FrameReader {
            reader,
            receiver: FrameReceiver::new(),
            buffer: Vec::new(),
            consumed: 0,
            chunk: vec![0u8; READ_CHUNK_BYTES],
        }
    }

    pub fn set_version(&mut self, version: u16) {
        self.receiver.set_version(version);
    }

    /// The next frame. Cancel-safe: dropping the future loses no bytes.
    /// A closed connection is [`ReplicationError::Closed`], or a truncated
    /// frame error if it closed in the middle of one.
    pub async fn receive(&mut self) -> Result<Frame, ReplicationError> {
        loop {
            if let Some((frame, used)) = self.receiver.decode(&self.buffer[self.consumed..])? {
                self.consumed += used;
                return Ok(frame);
            }
            if self.consumed > 0 {
                self.buffer.drain(..self.consumed);
                self.consumed = 0;
            }
            // Read into a scratch chunk, not into `buffer`: if this future is dropped mid-read
            // (a `select!` picked another branch), `buffer` must still hold only real bytes.
            let count = self.reader.read(&mut self.chunk[..]).await?;
            if count == 0 {
                self.receiver.at_eof(&self.buffer)?;
                return Err(ReplicationError::Closed);
            }
            self.buffer.extend_from_slice(&self.chunk[..count]);
        }
    }
}
