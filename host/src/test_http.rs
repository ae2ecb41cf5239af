//! Test helpers for the HTTP client code: one request read off a raw
//! stream (head and Content-Length body) and requests as wasi:http hands
//! them to the host.

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use wasmtime_wasi_http::WasiBody;

/// One request read from `io`: its head (lower-cased) and body. Bytes
/// after it stay in `buf` for the next call. `None` at end of stream or on
/// an error.
pub async fn read_request<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return Some((head, body));
            }
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A request to `url` with `body`, its Host header set as wasi:http does.
pub fn request(method: http::Method, url: &str, body: &'static [u8]) -> http::Request<WasiBody> {
    let uri: http::Uri = url.parse().unwrap();
    http::Request::builder()
        .method(method)
        .header(http::header::HOST, uri.authority().unwrap().as_str())
        .uri(uri)
        .body(
            http_body_util::Full::new(Bytes::from_static(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}
