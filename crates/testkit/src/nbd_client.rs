//! A blocking NBD client for tests: fixed newstyle, NBD_OPT_GO, simple replies only. It can
//! pipeline requests and send raw bytes, to play a hostile client.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use redoubt_nbd_proto::{
    self as nbd, client, ClientFlags, Command, CommandFlags, RequestHeader, TransmissionFlags,
};

pub struct NbdClient {
    stream: TcpStream,
    pub size_bytes: u64,
    pub flags: TransmissionFlags,
    handle_next: u64,
    /// Read lengths of requests in flight, by handle, to know how much data a reply carries.
    read_lengths: HashMap<u64, u32>,
}

/// An answered request: its handle, the NBD error (0 = success) and the read data.
#[derive(Debug)]
pub struct Answer {
    pub handle: u64,
    pub error: u32,
    pub data: Vec<u8>,
}

fn protocol(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

impl NbdClient {
    /// Connects to `address` (`host:port`) and negotiates export `name` with NBD_OPT_GO.
    pub fn connect(address: &str, name: &str) -> io::Result<NbdClient> {
        let mut stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut greeting = [0u8; nbd::SERVER_GREETING_BYTES];
        stream.read_exact(&mut greeting)?;
        client::decode_server_greeting(&greeting).map_err(protocol)?;
        let mut out = Vec::new();
        client::encode_client_flags(&mut out, ClientFlags::KNOWN);
        client::encode_go(&mut out, name, &[]);
        stream.write_all(&out)?;
        let mut size_bytes = None;
        let mut flags = TransmissionFlags::empty();
        loop {
            let (reply_type, payload) = read_option_reply(&mut stream)?;
            let raw = client::RawOptionReply {
                option: nbd::option_code::GO,
                reply_type,
                payload: &payload,
            };
            if raw.is_error() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("GO {name:?} refused: {}", String::from_utf8_lossy(&payload)),
                ));
            }
            if let Some(nbd::Info::Export {
                size_bytes: size,
                transmission_flags,
            }) = raw.info()
            {
                size_bytes = Some(size);
                flags = transmission_flags;
            }
            if reply_type == nbd::reply_type::ACK {
                break;
            }
        }
        Ok(NbdClient {
            stream,
            size_bytes: size_bytes.ok_or_else(|| protocol("GO without NBD_INFO_EXPORT"))?,
            flags,
            handle_next: 1,
            read_lengths: HashMap::new(),
        })
    }

    /// The export names NBD_OPT_LIST returns.
    pub fn list(address: &str) -> io::Result<Vec<String>> {
        let mut stream = TcpStream::connect(address)?;
        let mut greeting = [0u8; nbd::SERVER_GREETING_BYTES];
        stream.read_exact(&mut greeting)?;
        let mut out = Vec::new();
        client::encode_client_flags(&mut out, ClientFlags::KNOWN);
        client::encode_option(&mut out, nbd::option_code::LIST, &[]);
        stream.write_all(&out)?;
        let mut names = Vec::new();
        loop {
            let (reply_type, payload) = read_option_reply(&mut stream)?;
            let raw = client::RawOptionReply {
                option: nbd::option_code::LIST,
                reply_type,
                payload: &payload,
            };
            if let Some((name, _)) = raw.server() {
                names.push(name.to_string());
            } else if reply_type == nbd::reply_type::ACK {
                return Ok(names);
            } else {
                return Err(protocol(format!("unexpected reply type {reply_type:#x}")));
            }
        }
    }

    /// Sends one request without waiting for its reply; returns its handle.
    pub fn send(
        &mut self,
        command: Command,
        flags: CommandFlags,
        offset_bytes: u64,
        length_bytes: u32,
        payload: &[u8],
    ) -> io::Result<u64> {
        let handle = self.handle_next;
        self.handle_next += 1;
        let header = RequestHeader {
            flags,
            command,
            handle,
            offset_bytes,
            length_bytes,
        };
        let mut out = Vec::with_capacity(nbd::REQUEST_HEADER_BYTES + payload.len());
        client::encode_request(&mut out, &header, payload);
        if command == Command::Read {
            self.read_lengths.insert(handle, length_bytes);
        }
        self.stream.write_all(&out)?;
        Ok(handle)
    }

    /// Receives the next reply (any handle: the server may answer out of order).
    pub fn receive(&mut self) -> io::Result<Answer> {
        let mut header = [0u8; nbd::SIMPLE_REPLY_HEADER_BYTES];
        self.stream.read_exact(&mut header)?;
        let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if magic != nbd::SIMPLE_REPLY_MAGIC {
            return Err(protocol(format!("reply magic {magic:#x}")));
        }
        let error = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let mut handle_bytes = [0u8; 8];
        handle_bytes.copy_from_slice(&header[8..16]);
        let handle = u64::from_be_bytes(handle_bytes);
        let length = self.read_lengths.remove(&handle).unwrap_or(0);
        let mut data = Vec::new();
        if error == 0 && length > 0 {
            data.resize(length as usize, 0);
            self.stream.read_exact(&mut data)?;
        }
        Ok(Answer {
            handle,
            error,
            data,
        })
    }

    fn call(
        &mut self,
        command: Command,
        flags: CommandFlags,
        offset_bytes: u64,
        length_bytes: u32,
        payload: &[u8],
    ) -> io::Result<Answer> {
        let handle = self.send(command, flags, offset_bytes, length_bytes, payload)?;
        let answer = self.receive()?;
        assert_eq!(answer.handle, handle, "one request in flight");
        Ok(answer)
    }

    /// Writes `data` at `offset_bytes`; `Ok(errno)` with 0 for success.
    pub fn write(&mut self, offset_bytes: u64, data: &[u8], fua: bool) -> io::Result<u32> {
        let flags = if fua {
            CommandFlags::FUA
        } else {
            CommandFlags::empty()
        };
        let length = u32::try_from(data.len()).map_err(protocol)?;
        Ok(self
            .call(Command::Write, flags, offset_bytes, length, data)?
            .error)
    }

    pub fn read(
        &mut self,
        offset_bytes: u64,
        length_bytes: u32,
    ) -> io::Result<Result<Vec<u8>, u32>> {
        let answer = self.call(
            Command::Read,
            CommandFlags::empty(),
            offset_bytes,
            length_bytes,
            &[],
        )?;
        Ok(if answer.error == 0 {
            Ok(answer.data)
        } else {
            Err(answer.error)
        })
    }

    pub fn flush(&mut self) -> io::Result<u32> {
        Ok(self
            .call(Command::Flush, CommandFlags::empty(), 0, 0, &[])?
            .error)
    }

    pub fn trim(&mut self, offset_bytes: u64, length_bytes: u32) -> io::Result<u32> {
        Ok(self
            .call(
                Command::Trim,
                CommandFlags::empty(),
                offset_bytes,
                length_bytes,
                &[],
            )?
            .error)
    }

    pub fn write_zeroes(&mut self, offset_bytes: u64, length_bytes: u32) -> io::Result<u32> {
        Ok(self
            .call(
                Command::WriteZeroes,
                CommandFlags::empty(),
                offset_bytes,
                length_bytes,
                &[],
            )?
            .error)
    }

    /// Sends bytes as they are (a hostile or broken client).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Whether the server has closed the connection (reads EOF or an error).
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }

    /// NBD_CMD_DISC, then close.
    pub fn disconnect(mut self) -> io::Result<()> {
        let handle = self.handle_next;
        let header = RequestHeader {
            flags: CommandFlags::empty(),
            command: Command::Disc,
            handle,
            offset_bytes: 0,
            length_bytes: 0,
        };
        let mut out = Vec::new();
        client::encode_request(&mut out, &header, &[]);
        self.stream.write_all(&out)
    }
}

fn read_option_reply(stream: &mut TcpStream) -> io::Result<(u32, Vec<u8>)> {
    let mut header = [0u8; nbd::OPTION_REPLY_HEADER_BYTES];
    stream.read_exact(&mut header)?;
    let reply_type = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    let length = u32::from_be_bytes([header[16], header[17], header[18], header[19]]);
    if length > 64 * 1024 {
        return Err(protocol(format!("option reply of {length} bytes")));
    }
    let mut payload = vec![0u8; length as usize];
    stream.read_exact(&mut payload)?;
    Ok((reply_type, payload))
}
