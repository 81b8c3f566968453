//! The NBD server: one export per LV, over TCP or a unix socket.
//!
//! ```text
//!  socket ─▶ handshake (options) ─▶ read loop ──spawn per request──▶ Engine (writes, flush)
//!                                      │                             Volume (reads)
//!                                      └───────────── replies ◀── writer task ◀──┘
//! ```
//!
//! Requests of one connection run concurrently and may be answered out of order, as NBD
//! allows. Each connection is bounded in requests and bytes in flight, so a client that sends
//! faster than the disk takes only stalls itself.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use redoubt_nbd_proto::{
    self as nbd, BlockSize, Command, CommandFlags, Info, InfoRequest, NbdErrno, OptionError,
    OptionReply, OptionRequest, ProtocolError, ReplyChunk, RequestHeader, TlsGate, TlsMode,
    TransmissionFlags,
};
use redoubt_tls::TlsContext;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

use crate::block::BlockVolume;
use crate::engine::{Engine, Op, OpError};
use crate::payload::Payload;

/// Requests of one connection being served at once.
pub const IN_FLIGHT_REQUESTS_MAX: u32 = 128;
/// Payload, read-buffer and queued reply bytes of one connection in flight, in MiB: a reply
/// holds its share until it is written to the socket, so a client that never reads its
/// replies stops being served instead of filling memory.
pub const IN_FLIGHT_MIB_MAX: u32 = 256;
/// The same bound over every connection of one server (there may be `CONNECTIONS_MAX`).
pub const SERVER_IN_FLIGHT_MIB_MAX: u32 = 1024;
/// A client that takes no reply bytes for this long is disconnected, and what its requests
/// held is released.
pub const REPLY_STALL_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Options one client may send before it must start transmission.
pub const OPTIONS_PER_HANDSHAKE_MAX: usize = 256;
/// The handshake must finish within this time, so idle sockets do not pile up.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 30_000;
/// Room for the header of a read reply (simple or structured offset-data), in bytes.
const REPLY_HEADER_BYTES_MAX: usize = 64;
/// Bytes of replies gathered into one socket write.
const REPLY_COALESCE_BYTES_MAX: usize = 4 << 20;

const _: () = assert!(
    IN_FLIGHT_MIB_MAX as u64 * 1024 * 1024 >= nbd::limits::REQUEST_PAYLOAD_BYTES_MAX as u64
);
const _: () = assert!(SERVER_IN_FLIGHT_MIB_MAX >= IN_FLIGHT_MIB_MAX);

/// One LV served under its name.
pub struct Export {
    pub name: String,
    pub lv_id: u32,
    pub volume: Arc<dyn BlockVolume>,
    pub engine: Engine,
    pub read_only: bool,
    pub description: String,
}

impl Export {
    fn size_bytes(&self) -> u64 {
        self.volume.size_bytes()
    }

    fn transmission_flags(&self) -> TransmissionFlags {
        let mut flags = TransmissionFlags::HAS_FLAGS
            | TransmissionFlags::SEND_FLUSH
            | TransmissionFlags::SEND_FUA
            | TransmissionFlags::CAN_MULTI_CONN;
        if self.read_only {
            flags = flags | TransmissionFlags::READ_ONLY;
        } else {
            flags = flags | TransmissionFlags::SEND_TRIM | TransmissionFlags::SEND_WRITE_ZEROES;
        }
        flags
    }
}

/// An export served by something other than production's engine: a snapshot view of a
/// replica (`redoubt_replication::snapshot`). Calls block; the server runs them off the
/// async threads. Errors carry the errno the client gets (`NbdErrno::from_io_error`).
pub trait ExportBackend: Send + Sync + 'static {
    fn size_bytes(&self) -> u64;
    /// Read-only exports refuse writes with EPERM before the backend sees them.
    fn read_only(&self) -> bool;
    fn read_at(&self, buffer: &mut [u8], offset_bytes: u64) -> io::Result<()>;
    fn write_at(&self, data: &[u8], offset_bytes: u64) -> io::Result<()>;
    /// Zeroes the range (TRIM is served by this too).
    fn write_zeroes(&self, offset_bytes: u64, length_bytes: u64) -> io::Result<()>;
    fn flush(&self) -> io::Result<()>;
}

/// A named export of an [`ExportBackend`].
pub struct BackendExport {
    pub name: String,
    pub description: String,
    pub backend: Arc<dyn ExportBackend>,
}

/// What one export name serves.
#[derive(Clone)]
enum Served {
    Engine(Arc<Export>),
    Backend(Arc<BackendExport>),
}

impl Served {
    fn name(&self) -> &str {
        match self {
            Served::Engine(export) => &export.name,
            Served::Backend(export) => &export.name,
        }
    }

    fn description(&self) -> &str {
        match self {
            Served::Engine(export) => &export.description,
            Served::Backend(export) => &export.description,
        }
    }

    fn size_bytes(&self) -> u64 {
        match self {
            Served::Engine(export) => export.size_bytes(),
            Served::Backend(export) => export.backend.size_bytes(),
        }
    }

    fn read_only(&self) -> bool {
        match self {
            Served::Engine(export) => export.read_only,
            Served::Backend(export) => export.backend.read_only(),
        }
    }

    fn transmission_flags(&self) -> TransmissionFlags {
        match self {
            Served::Engine(export) => export.transmission_flags(),
            Served::Backend(export) => {
                let mut flags = TransmissionFlags::HAS_FLAGS
                    | TransmissionFlags::SEND_FLUSH
                    | TransmissionFlags::SEND_FUA
                    | TransmissionFlags::CAN_MULTI_CONN;
                if export.backend.read_only() {
                    flags = flags | TransmissionFlags::READ_ONLY;
                } else {
                    flags =
                        flags | TransmissionFlags::SEND_TRIM | TransmissionFlags::SEND_WRITE_ZEROES;
                }
                flags
            }
        }
    }
}

/// The exports a server offers, by exact name, and the TLS identity they require, if any.
pub struct Exports {
    by_name: BTreeMap<String, Served>,
    tls: Option<Arc<TlsContext>>,
    /// `SERVER_IN_FLIGHT_MIB_MAX` shared by every connection to these exports.
    in_flight_mib: Arc<Semaphore>,
    reply_stall_timeout_ms: u64,
}

impl Default for Exports {
    fn default() -> Exports {
        Exports::new(Vec::new())
    }
}

impl Exports {
    pub fn new(exports: Vec<Export>) -> Exports {
        Exports {
            by_name: exports
                .into_iter()
                .map(|e| (e.name.clone(), Served::Engine(Arc::new(e))))
                .collect(),
            tls: None,
            in_flight_mib: Arc::new(Semaphore::new(SERVER_IN_FLIGHT_MIB_MAX as usize)),
            reply_stall_timeout_ms: REPLY_STALL_TIMEOUT_MS_DEFAULT,
        }
    }

    /// Requires TLS (NBD STARTTLS) with a client certificate of `tls`'s CA on every
    /// connection: before TLS only `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT` are served.
    pub fn with_tls(mut self, tls: Arc<TlsContext>) -> Exports {
        self.tls = Some(tls);
        self
    }

    /// Disconnects a client that takes no reply bytes for this long (tests use a short one).
    pub fn with_reply_stall_timeout_ms(mut self, timeout_ms: u64) -> Exports {
        self.reply_stall_timeout_ms = timeout_ms;
        self
    }

    /// Whether connections must start TLS.
    pub fn requires_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Exports of backends (snapshot views).
    pub fn with_backends(exports: Vec<BackendExport>) -> Exports {
        Exports {
            by_name: exports
                .into_iter()
                .map(|e| (e.name.clone(), Served::Backend(Arc::new(e))))
                .collect(),
            tls: None,
            in_flight_mib: Arc::new(Semaphore::new(SERVER_IN_FLIGHT_MIB_MAX as usize)),
            reply_stall_timeout_ms: REPLY_STALL_TIMEOUT_MS_DEFAULT,
        }
    }

    /// The engine export of that name.
    pub fn get(&self, name: &str) -> Option<&Arc<Export>> {
        match self.by_name.get(name) {
            Some(Served::Engine(export)) => Some(export),
            _ => None,
        }
    }

    fn served(&self, name: &str) -> Option<&Served> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the handshake took longer than {HANDSHAKE_TIMEOUT_MS} ms")]
    HandshakeTimeout,
    #[error("more than {OPTIONS_PER_HANDSHAKE_MAX} options")]
    TooManyOptions,
    #[error("the client sent data after NBD_OPT_STARTTLS before the TLS handshake")]
    DataBeforeTls,
    #[error("the client's TLS handshake was refused (no or wrong certificate)")]
    TlsRefused,
}

/// How the option haggling ended.
enum Haggled {
    /// Transmission with this export.
    Go(Negotiated),
    /// The client aborted, or asked for an export that does not exist.
    Closed,
    /// STARTTLS was acknowledged: the TLS handshake comes next.
    StartTls,
}

struct Negotiated {
    export: Served,
    structured_replies: bool,
    server_in_flight_mib: Arc<Semaphore>,
    reply_stall_timeout_ms: u64,
}

/// Serves one client connection until it disconnects. Errors end only this connection.
pub async fn serve_connection<S>(
    mut stream: S,
    exports: Arc<Exports>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // One deadline for the whole handshake, TLS included.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let mode = if exports.tls.is_some() {
        TlsMode::ForcedBeforeTls
    } else {
        TlsMode::NoTls
    };
    let haggled = tokio::time::timeout_at(deadline, async {
        let client_flags = greet(&mut stream).await?;
        haggle(&mut stream, &exports, client_flags, mode).await
    })
    .await
    .map_err(|_| ConnectionError::HandshakeTimeout)??;
    let (client_flags, haggled) = haggled;
    match haggled {
        Haggled::Go(negotiated) => transmission(stream, negotiated).await,
        Haggled::Closed => Ok(()),
        Haggled::StartTls => {
            let Some(tls) = exports.tls.clone() else {
                return Err(ConnectionError::TlsRefused);
            };
            // Refusals (no certificate, another CA) are logged and counted by the context.
            let accepted = tokio::time::timeout_at(deadline, tls.accept(stream, "NBD client"))
                .await
                .map_err(|_| ConnectionError::HandshakeTimeout)?;
            let Some((mut stream, _identity)) = accepted else {
                return Err(ConnectionError::TlsRefused);
            };
            let haggled = tokio::time::timeout_at(
                deadline,
                haggle(&mut stream, &exports, client_flags, TlsMode::ForcedOverTls),
            )
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout)??;
            match haggled.1 {
                Haggled::Go(negotiated) => transmission(stream, negotiated).await,
                Haggled::Closed | Haggled::StartTls => Ok(()),
            }
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
) -> Result<(), ConnectionError> {
    let mut chunk = [0u8; 16 * 1024];
    let count = stream.read(&mut chunk).await?;
    if count == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    buffer.extend_from_slice(&chunk[..count]);
    Ok(())
}

/// Sends the greeting and reads the client's flags (exactly their 4 bytes, so nothing the
/// client sends after them is buffered here).
async fn greet<S>(stream: &mut S) -> Result<nbd::ClientFlags, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    nbd::encode_server_greeting(&mut out);
    stream.write_all(&out).await?;
    let mut bytes = [0u8; nbd::CLIENT_FLAGS_BYTES];
    stream.read_exact(&mut bytes).await?;
    match nbd::decode_client_flags(&bytes)? {
        Some((flags, _)) => Ok(flags),
        None => Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
    }
}

/// The option haggling, under `mode`'s TLS rules ([`nbd::tls_gate`]).
async fn haggle<S>(
    stream: &mut S,
    exports: &Exports,
    client_flags: nbd::ClientFlags,
    mode: TlsMode,
) -> Result<(nbd::ClientFlags, Haggled), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    let mut buffer = Vec::new();
    let mut structured_replies = false;
    for _ in 0..OPTIONS_PER_HANDSHAKE_MAX {
        let option = loop {
            match nbd::decode_option(&buffer) {
                Ok(Some((option, consumed))) => {
                    buffer.drain(..consumed);
                    break option;
                }
                Ok(None) => read_more(stream, &mut buffer).await?,
                Err(error @ ProtocolError::OptionTooLong { option, .. }) => {
                    out.clear();
                    let reply = OptionReply::Error {
                        error: OptionError::TooBig,
                        message: "option data too long",
                    };
                    nbd::encode_option_reply(&mut out, option, &reply);
                    stream.write_all(&out).await?;
                    return Err(error.into());
                }
                Err(error) => return Err(error.into()),
            }
        };
        out.clear();
        let code = option.option();
        match nbd::tls_gate(mode, &option) {
            TlsGate::Serve => {}
            TlsGate::Close => return Ok((client_flags, Haggled::Closed)),
            TlsGate::Refuse(error) => {
                let message = match error {
                    OptionError::TlsReqd => "TLS is required: send NBD_OPT_STARTTLS first",
                    OptionError::Policy => "TLS is not enabled for these exports",
                    _ => "TLS is already on",
                };
                let reply = OptionReply::Error { error, message };
                nbd::encode_option_reply(&mut out, code, &reply);
                stream.write_all(&out).await?;
                continue;
            }
            TlsGate::StartTls => {
                // Bytes sent ahead of the ACK would be read as if they came over TLS.
                if !buffer.is_empty() {
                    return Err(ConnectionError::DataBeforeTls);
                }
                nbd::encode_option_reply(&mut out, code, &OptionReply::Ack);
                stream.write_all(&out).await?;
                stream.flush().await?;
                return Ok((client_flags, Haggled::StartTls));
            }
        }
        match option {
            OptionRequest::ExportName { name } => {
                // This option has no error reply: an unknown name closes the connection.
                let Some(export) = exports.served(&name) else {
                    return Ok((client_flags, Haggled::Closed));
                };
                nbd::encode_export_name_reply(
                    &mut out,
                    export.size_bytes(),
                    export.transmission_flags(),
                    client_flags,
                );
                stream.write_all(&out).await?;
                return Ok((
                    client_flags,
                    Haggled::Go(Negotiated {
                        export: export.clone(),
                        structured_replies,
                        server_in_flight_mib: exports.in_flight_mib.clone(),
                        reply_stall_timeout_ms: exports.reply_stall_timeout_ms,
                    }),
                ));
            }
            OptionRequest::Abort => {
                nbd::encode_option_reply(&mut out, code, &OptionReply::Ack);
                stream.write_all(&out).await?;
                return Ok((client_flags, Haggled::Closed));
            }
            OptionRequest::List => {
                for name in exports.names() {
                    let description = exports.served(name).map_or("", |e| e.description());
                    nbd::encode_option_reply(
                        &mut out,
                        code,
                        &OptionReply::Server { name, description },
                    );
                }
                nbd::encode_option_reply(&mut out, code, &OptionReply::Ack);
            }
            // The gate above answered it in every mode.
            OptionRequest::StartTls => {}
            OptionRequest::Info(query) | OptionRequest::Go(query) => {
                let going = code == nbd::option_code::GO;
                match exports.served(&query.name) {
                    None => {
                        let message = format!(
                            "no export named {:?}; NBD_OPT_LIST shows the exports",
                            query.name
                        );
                        let reply = OptionReply::Error {
                            error: OptionError::Unknown,
                            message: &message,
                        };
                        nbd::encode_option_reply(&mut out, code, &reply);
                    }
                    Some(export) => {
                        let info = Info::Export {
                            size_bytes: export.size_bytes(),
                            transmission_flags: export.transmission_flags(),
                        };
                        nbd::encode_option_reply(&mut out, code, &OptionReply::Info(info));
                        if query.requests(InfoRequest::Name) {
                            nbd::encode_option_reply(
                                &mut out,
                                code,
                                &OptionReply::Info(Info::Name(export.name())),
                            );
                        }
                        if query.requests(InfoRequest::Description) {
                            let description = Info::Description(export.description());
                            nbd::encode_option_reply(
                                &mut out,
                                code,
                                &OptionReply::Info(description),
                            );
                        }
                        let block_size = Info::BlockSize(BlockSize::REDOUBT);
                        nbd::encode_option_reply(&mut out, code, &OptionReply::Info(block_size));
                        nbd::encode_option_reply(&mut out, code, &OptionReply::Ack);
                        if going {
                            stream.write_all(&out).await?;
                            return Ok((
                                client_flags,
                                Haggled::Go(Negotiated {
                                    export: export.clone(),
                                    structured_replies,
                                    server_in_flight_mib: exports.in_flight_mib.clone(),
                                    reply_stall_timeout_ms: exports.reply_stall_timeout_ms,
                                }),
                            ));
                        }
                    }
                }
            }
            OptionRequest::StructuredReply => {
                structured_replies = true;
                nbd::encode_option_reply(&mut out, code, &OptionReply::Ack);
            }
            OptionRequest::Unsupported { .. } => {
                let reply = OptionReply::Error {
                    error: OptionError::Unsup,
                    message: "option not supported",
                };
                nbd::encode_option_reply(&mut out, code, &reply);
            }
            OptionRequest::Malformed { reason, .. } => {
                let message = reason.to_string();
                let reply = OptionReply::Error {
                    error: OptionError::Invalid,
                    message: &message,
                };
                nbd::encode_option_reply(&mut out, code, &reply);
            }
        }
        stream.write_all(&out).await?;
    }
    Err(ConnectionError::TooManyOptions)
}

async fn transmission<S>(stream: S, negotiated: Negotiated) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (replies, reply_queue) = mpsc::channel::<Reply>(IN_FLIGHT_REQUESTS_MAX as usize);
    let (stalled, mut writer_gone) = tokio::sync::oneshot::channel::<()>();
    let writer_task = tokio::spawn(write_replies(
        writer,
        reply_queue,
        negotiated.reply_stall_timeout_ms,
        stalled,
    ));
    let requests = Arc::new(Semaphore::new(IN_FLIGHT_REQUESTS_MAX as usize));
    let mebibytes = Arc::new(Semaphore::new(IN_FLIGHT_MIB_MAX as usize));
    let server_mebibytes = negotiated.server_in_flight_mib;
    let export = negotiated.export;
    let flags = export.transmission_flags();
    let mut header_bytes = [0u8; nbd::REQUEST_HEADER_BYTES];
    let outcome = loop {
        // The writer gives up on a client that takes no replies: stop reading its requests.
        let read = tokio::select! {
            read = reader.read_exact(&mut header_bytes) => read,
            _ = &mut writer_gone => break Ok(()),
        };
        if let Err(error) = read {
            // A client that closes without NBD_CMD_DISC is common (kill, crash): not an error.
            break if error.kind() == io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(error.into())
            };
        }
        let header = match nbd::decode_request_header(&header_bytes) {
            Ok(Some((header, _))) => header,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error.into()),
        };
        if header.command == Command::Disc {
            break Ok(());
        }
        let mebibytes_needed = header
            .length_bytes
            .div_ceil(1 << 20)
            .clamp(1, IN_FLIGHT_MIB_MAX);
        // Waiting for permits ends too when the writer gives up (nothing would free them).
        let permits = tokio::select! {
            permits = async {
                (
                    requests.clone().acquire_owned().await,
                    mebibytes.clone().acquire_many_owned(mebibytes_needed).await,
                    server_mebibytes.clone().acquire_many_owned(mebibytes_needed).await,
                )
            } => permits,
            _ = &mut writer_gone => break Ok(()),
        };
        let (Ok(request_permit), Ok(byte_permit), Ok(server_byte_permit)) = permits else {
            break Ok(());
        };
        let held = Held(request_permit, byte_permit, server_byte_permit);
        let mut payload = Payload::for_filling(header.payload_length_bytes());
        if let Err(error) = reader.read_exact(payload.as_mut_slice()).await {
            break Err(error.into());
        }
        if !payload.is_empty() {
            payload.seal_checksum();
        }
        let verdict = nbd::validate(&header, export.size_bytes(), export.read_only())
            .and_then(|()| nbd::validate_negotiated(&header, flags));
        if let Err(errno) = verdict {
            let mut reply = Vec::new();
            encode_error(
                &mut reply,
                &header,
                errno,
                "invalid request",
                negotiated.structured_replies,
            );
            if replies
                .send(Reply {
                    bytes: reply,
                    held: Some(held),
                })
                .await
                .is_err()
            {
                break Ok(());
            }
            continue;
        }
        let export = export.clone();
        let replies = replies.clone();
        let structured = negotiated.structured_replies;
        tokio::spawn(async move {
            let reply = match &export {
                Served::Engine(export) => execute(export, header, payload, structured).await,
                Served::Backend(export) => {
                    execute_backend(export, header, payload, structured).await
                }
            };
            // The permits travel with the reply and are released once it is on the socket.
            let _ = replies
                .send(Reply {
                    bytes: reply,
                    held: Some(held),
                })
                .await;
        });
    };
    // Answer every request already taken before closing (NBD_CMD_DISC semantics).
    let _ = requests.acquire_many(IN_FLIGHT_REQUESTS_MAX).await;
    drop(replies);
    let written = writer_task
        .await
        .map_err(|error| io::Error::other(error.to_string()))?;
    outcome.and(written.map_err(ConnectionError::from))
}

/// What one request holds until its reply is written: its slot, its bytes on this connection
/// and its bytes on the server. Never read: dropping it is what releases them.
#[allow(dead_code)]
struct Held(
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
);

struct Reply {
    bytes: Vec<u8>,
    held: Option<Held>,
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Reply>,
    stall_timeout_ms: u64,
    stalled: tokio::sync::oneshot::Sender<()>,
) -> io::Result<()> {
    let stall = Duration::from_millis(stall_timeout_ms);
    let mut held: Vec<Held> = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut buffer = first.bytes;
        held.extend(first.held);
        while buffer.len() < REPLY_COALESCE_BYTES_MAX {
            match queue.try_recv() {
                Ok(more) => {
                    buffer.extend_from_slice(&more.bytes);
                    held.extend(more.held);
                }
                Err(_) => break,
            }
        }
        let mut written = 0;
        while written < buffer.len() {
            match tokio::time::timeout(stall, writer.write(&buffer[written..])).await {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(count)) => written += count,
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    let _ = stalled.send(());
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client took no reply bytes for {stall_timeout_ms} ms"),
                    ));
                }
            }
        }
        held.clear();
    }
    writer.flush().await?;
    writer.shutdown().await
}

fn encode_error(
    out: &mut Vec<u8>,
    header: &RequestHeader,
    errno: NbdErrno,
    message: &str,
    structured: bool,
) {
    if structured && header.command == Command::Read {
        nbd::encode_structured_reply(
            out,
            header.handle,
            true,
            &ReplyChunk::Error {
                error: errno,
                message,
            },
        );
    } else {
        nbd::encode_simple_reply(out, header.handle, Some(errno));
    }
}

fn volume_errno(error: &io::Error) -> NbdErrno {
    NbdErrno::from_io_error(error)
}

fn op_errno(error: &OpError) -> NbdErrno {
    match error {
        OpError::Io(_) | OpError::Stopped(_) => NbdErrno::EIO,
    }
}

/// Submits a write and, in sync mode, waits until the recovery servers hold it.
async fn submit_replicated(export: &Export, op: Op, sync: bool) -> Result<(), (NbdErrno, String)> {
    let seq = export
        .engine
        .submit(op)
        .await
        .map_err(|e| (op_errno(&e), e.to_string()))?;
    if sync {
        export.engine.wait_shipped(seq).await;
    }
    Ok(())
}

async fn execute(
    export: &Export,
    header: RequestHeader,
    payload: Payload,
    structured: bool,
) -> Vec<u8> {
    let fua = header.flags.contains(CommandFlags::FUA);
    // Sync mode: the write must be durable here (FUA) and on every recovery server.
    let sync = export.engine.sync_replication();
    let lv_id = export.lv_id;
    let mut reply = Vec::new();
    let result: Result<(), (NbdErrno, String)> = match header.command {
        Command::Read => {
            // An acknowledged write to these blocks may not be in the LV yet.
            if let Err(error) = export
                .engine
                .wait_readable(lv_id, header.offset_bytes, u64::from(header.length_bytes))
                .await
            {
                let mut reply = Vec::new();
                encode_error(
                    &mut reply,
                    &header,
                    op_errno(&error),
                    &error.to_string(),
                    structured,
                );
                return reply;
            }
            let volume = export.volume.clone();
            let length = header.length_bytes as usize;
            let offset = header.offset_bytes;
            // The data is read straight behind the reply header: one buffer per read, which
            // is what the connection's memory bound counts, and no copy.
            let read = tokio::task::spawn_blocking(move || {
                let mut reply = Vec::with_capacity(REPLY_HEADER_BYTES_MAX + length);
                if structured {
                    nbd::encode_offset_data_header(
                        &mut reply,
                        header.handle,
                        true,
                        offset,
                        header.length_bytes,
                    );
                } else {
                    nbd::encode_simple_reply(&mut reply, header.handle, None);
                }
                let header_bytes = reply.len();
                reply.resize(header_bytes + length, 0);
                volume
                    .read_at(&mut reply[header_bytes..], offset)
                    .map(|()| reply)
            })
            .await;
            match read {
                Ok(Ok(read_reply)) => return read_reply,
                Ok(Err(error)) => Err((volume_errno(&error), error.to_string())),
                Err(error) => Err((NbdErrno::EIO, error.to_string())),
            }
        }
        Command::Write => {
            let op = Op::Write {
                lv_id,
                offset_bytes: header.offset_bytes,
                data: payload,
                fua: fua || sync,
            };
            submit_replicated(export, op, sync).await
        }
        Command::WriteZeroes => {
            let op = Op::WriteZeroes {
                lv_id,
                offset_bytes: header.offset_bytes,
                length_bytes: header.length_bytes,
                fua: fua || sync,
            };
            submit_replicated(export, op, sync).await
        }
        Command::Trim => {
            let op = Op::Trim {
                lv_id,
                offset_bytes: header.offset_bytes,
                length_bytes: header.length_bytes,
            };
            submit_replicated(export, op, false).await
        }
        Command::Flush => export
            .engine
            .submit(Op::Flush)
            .await
            .map(|_| ())
            .map_err(|e| (op_errno(&e), e.to_string())),
        Command::Disc | Command::Unknown(_) => {
            Err((NbdErrno::EINVAL, "unsupported command".into()))
        }
    };
    match result {
        Ok(()) => nbd::encode_simple_reply(&mut reply, header.handle, None),
        Err((errno, message)) => {
            tracing::warn!(export = %export.name, ?errno, %message, "request failed");
            encode_error(&mut reply, &header, errno, &message, structured);
        }
    }
    reply
}

/// Serves one request of a backend export (a snapshot view): blocking calls off the async
/// threads.
async fn execute_backend(
    export: &BackendExport,
    header: RequestHeader,
    payload: Payload,
    structured: bool,
) -> Vec<u8> {
    let backend = export.backend.clone();
    let offset = header.offset_bytes;
    let length = header.length_bytes;
    let command = header.command;
    let fua = header.flags.contains(CommandFlags::FUA);
    let outcome = tokio::task::spawn_blocking(move || -> io::Result<Option<Payload>> {
        match command {
            Command::Read => {
                let mut data = Payload::for_filling(length as usize);
                backend.read_at(data.as_mut_slice(), offset)?;
                Ok(Some(data))
            }
            Command::Write => {
                backend.write_at(payload.as_slice(), offset)?;
                if fua {
                    backend.flush()?;
                }
                Ok(None)
            }
            Command::WriteZeroes | Command::Trim => {
                backend.write_zeroes(offset, u64::from(length))?;
                if fua {
                    backend.flush()?;
                }
                Ok(None)
            }
            Command::Flush => backend.flush().map(|()| None),
            Command::Disc | Command::Unknown(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unsupported command",
            )),
        }
    })
    .await
    .unwrap_or_else(|error| Err(io::Error::other(error.to_string())));
    let mut reply = Vec::new();
    match outcome {
        Ok(Some(data)) => {
            if structured {
                nbd::encode_offset_data_header(&mut reply, header.handle, true, offset, length);
            } else {
                nbd::encode_simple_reply(&mut reply, header.handle, None);
            }
            reply.extend_from_slice(data.as_slice());
        }
        Ok(None) => nbd::encode_simple_reply(&mut reply, header.handle, None),
        Err(error) => {
            tracing::warn!(export = %export.name, %error, "request failed");
            let errno = volume_errno(&error);
            encode_error(&mut reply, &header, errno, &error.to_string(), structured);
        }
    }
    reply
}
