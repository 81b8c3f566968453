//! A deliberately small HTTP/1.1 client for agent-to-agent calls (verify's peer check) and
//! tests: one request per connection, `Connection: close`, bounded response size.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response we read.
pub const RESPONSE_BYTES_MAX: u64 = 16 << 20;

/// Sends one request and returns the status code and the body. The whole exchange is bounded
/// by `timeout`.
pub async fn request(
    address: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    tokio::time::timeout(timeout, exchange(None, address, method, path, body))
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

/// [`request`] to the agent of server `server`: over mutual TLS, the peer's certificate
/// pinned to `server`, when this process holds a TLS identity (`redoubt_tls::registry`).
pub async fn request_to(
    server: &str,
    address: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    tokio::time::timeout(timeout, exchange(Some(server), address, method, path, body))
        .await
        .map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

async fn exchange(
    server: Option<&str>,
    address: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    match server.and(redoubt_tls::registry::any()) {
        Some(tls) => {
            let server = server.unwrap_or_default();
            let stream = tls
                .connect(stream, server)
                .await
                .map_err(|error| format!("connect: {error}"))?;
            talk(stream, address, method, path, body).await
        }
        None => talk(stream, address, method, path, body).await,
    }
}

async fn talk<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    address: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|error| format!("send: {error}"))?;
    stream
        .write_all(body.as_bytes())
        .await
        .map_err(|error| format!("send: {error}"))?;
    let mut response = Vec::new();
    stream
        .take(RESPONSE_BYTES_MAX + 1)
        .read_to_end(&mut response)
        .await
        .map_err(|error| format!("receive: {error}"))?;
    if response.len() as u64 > RESPONSE_BYTES_MAX {
        return Err(format!("response larger than {RESPONSE_BYTES_MAX} bytes"));
    }
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Result<(u16, String), String> {
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("response without a complete header")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let body = &response[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let body = String::from_utf8(body).map_err(|_| "response body is not UTF-8".to_string())?;
    Ok((status, body))
}

fn dechunk(mut bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&bytes[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = bytes.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        bytes = bytes.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, "{}".to_string()));
        let chunked =
            b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (409, "abcde".to_string()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }
}
