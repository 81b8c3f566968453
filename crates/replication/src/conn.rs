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

/// A replication byte stream: plain TCP or TCP under mutual TLS.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}
pub type BoxStream = Box<dyn ByteStream>;
pub type StreamReadHalf = tokio::io::ReadHalf<BoxStream>;
pub type StreamWriteHalf = tokio::io::WriteHalf<BoxStream>;

/// Opens the send process's connection to `target_name` at `address`: TCP, then mutual TLS
/// with the target's certificate pinned to `target_name` when this process holds a TLS
/// identity for `sender_name` (`redoubt_tls::registry`). Bounded by `timeout_ms`.
pub async fn connect(
    address: &str,
    sender_name: &str,
    target_name: &str,
    timeout_ms: u64,
) -> Result<BoxStream, ReplicationError> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let stream = tokio::time::timeout(
        std::time::Duration::from_millis(timeout_ms),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map_err(|_| timed_out())??;
    stream.set_nodelay(true)?;
    match redoubt_tls::registry::lookup(sender_name) {
        None => Ok(Box::new(stream)),
        Some(tls) => {
            let stream = tls.connect(stream, target_name).await.map_err(|error| {
                std::io::Error::new(std::io::ErrorKind::PermissionDenied, error.to_string())
            })?;
            Ok(Box::new(stream))
        }
    }
}

/// A stream whose first bytes were already read (to route it): they are read again first.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let count = buf.remaining().min(self.prefix.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + count]);
            self.offset += count;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
