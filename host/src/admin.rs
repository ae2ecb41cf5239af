//! Live-upgrade triggers: the admin endpoint (`--admin ADDR`, `POST /swap`),
//! its client (`influx-sink swap`), and the component file watcher.
//!
//! Every trigger turns into a [`SwapRequest`] for the pipeline, which swaps
//! each matching sink between two calls and answers with one line per sink.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::log;

/// Largest admin request accepted (a path, not a component).
const MAX_REQUEST: usize = 16 * 1024;

/// Swap the sinks running `from` (every sink if `None`) to the component
/// at `path`.
#[derive(Debug)]
pub struct SwapRequest {
    pub path: PathBuf,
    /// Only the sinks whose component file is this one.
    pub from: Option<PathBuf>,
    /// What triggered it, for the log.
    pub trigger: &'static str,
    pub reply: oneshot::Sender<SwapReport>,
}

/// One line per sink; `ok` when every sink swapped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwapReport {
    pub ok: bool,
    pub lines: Vec<String>,
}

/// `PORT` alone means `127.0.0.1:PORT`.
pub fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    let full = if v.chars().all(|c| c.is_ascii_digit()) {
        format!("127.0.0.1:{v}")
    } else {
        v.to_string()
    };
    full.parse()
        .map_err(|_| format!("--admin {v}: expected PORT or IP:PORT, e.g. 127.0.0.1:9180"))
}

/// Serve `POST /swap` (body: a component path) until `stop`.
pub async fn serve(
    listener: TcpListener,
    swaps: mpsc::Sender<SwapRequest>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.changed() => return,
        };
        let Ok((mut stream, _)) = conn else { continue };
        let swaps = swaps.clone();
        tokio::spawn(async move {
            let (status, body) = match read_request(&mut stream).await {
                Ok((method, target, body)) => handle(&method, &target, &body, &swaps).await,
                Err(e) => (400, format!("bad request: {e}\n")),
            };
            let reason = match status {
                200 => "OK",
                400 => "Bad Request",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Conflict",
            };
            let head = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn handle(
    method: &str,
    target: &str,
    body: &[u8],
    swaps: &mpsc::Sender<SwapRequest>,
) -> (u16, String) {
    if target != "/swap" {
        return (404, "only POST /swap is served here\n".into());
    }
    if method != "POST" {
        return (
            405,
            "use POST /swap with the component's path as the body\n".into(),
        );
    }
    let path = String::from_utf8_lossy(body).trim().to_string();
    if path.is_empty() {
        return (
            400,
            "the body must be the path of the new component\n".into(),
        );
    }
    let report = request_swap(swaps, PathBuf::from(path), None, "admin").await;
    let status = if report.ok { 200 } else { 409 };
    (status, report.lines.join("\n") + "\n")
}

/// Hand a swap to the pipeline and wait for its report.
pub async fn request_swap(
    swaps: &mpsc::Sender<SwapRequest>,
    path: PathBuf,
    from: Option<PathBuf>,
    trigger: &'static str,
) -> SwapReport {
    let (reply, answer) = oneshot::channel();
    let req = SwapRequest {
        path,
        from,
        trigger,
        reply,
    };
    if swaps.send(req).await.is_err() {
        return SwapReport {
            ok: false,
            lines: vec!["the pipeline is shutting down".into()],
        };
    }
    answer.await.unwrap_or(SwapReport {
        ok: false,
        lines: vec!["the pipeline stopped before answering".into()],
    })
}

/// Method, target and body of one HTTP/1.1 request (Content-Length only).
async fn read_request(
    stream: &mut tokio::net::TcpStream,
) -> Result<(String, String, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST {
            return Err("request too large".into());
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    if length > MAX_REQUEST {
        return Err("body too large".into());
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("body cut short".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok((method, target, body))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `influx-sink swap --admin ADDR PATH`: ask a running host to swap.
/// Returns the host's answer, or why it could not be asked.
pub fn client_swap(addr: &str, path: &Path) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr = parse_addr(addr)?;
    let path = std::fs::canonicalize(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .display()
        .to_string();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the admin endpoint at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let req = format!(
        "POST /swap HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{path}",
        path.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let ok = head.starts_with("HTTP/1.1 200");
    if ok {
        Ok(body.trim_end().to_string())
    } else {
        Err(body.trim_end().to_string())
    }
}

/// Watch component files; when one changes (and has stopped changing),
/// swap the sinks that run it to its new content.
pub async fn watch_files(
    paths: Vec<PathBuf>,
    swaps: mpsc::Sender<SwapRequest>,
    mut stop: watch::Receiver<bool>,
) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let mut seen: Vec<_> = paths.iter().map(|p| stamp(p)).collect();
    let mut changing: Vec<bool> = vec![false; paths.len()];
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return,
        }
        for (i, p) in paths.iter().enumerate() {
            let now = stamp(p);
            if now != seen[i] {
                // Still being written: wait for it to settle.
                seen[i] = now;
                changing[i] = true;
                continue;
            }
            if changing[i] && now.is_some() {
                changing[i] = false;
                let report = request_swap(&swaps, p.clone(), Some(p.clone()), "file change").await;
                if !report.ok {
                    log::warn("host", &format!("{} changed; swap failed", p.display()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses() {
        assert_eq!(parse_addr("9180").unwrap().to_string(), "127.0.0.1:9180");
        assert_eq!(parse_addr("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert!(parse_addr("localhost").unwrap_err().contains("--admin"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn admin_endpoint_hands_swaps_to_the_pipeline_and_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, mut rx) = mpsc::channel(4);
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve(listener, tx, stop));
        // The pipeline's side: answer ok for one path, an error otherwise.
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let ok = req.path.ends_with("good.wasm");
                let _ = req.reply.send(SwapReport {
                    ok,
                    lines: vec![format!("[out] {} {}", req.trigger, req.path.display())],
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.wasm");
        let bad = dir.path().join("bad.wasm");
        std::fs::write(&good, b"x").unwrap();
        std::fs::write(&bad, b"x").unwrap();
        let a = addr.clone();
        let (ok, err, missing) = tokio::task::spawn_blocking(move || {
            (
                client_swap(&a, &good),
                client_swap(&a, &bad),
                client_swap(&a, Path::new("/nonexistent/x.wasm")),
            )
        })
        .await
        .unwrap();
        assert!(ok.unwrap().starts_with("[out] admin /"));
        assert!(err.unwrap_err().contains("bad.wasm"));
        assert!(missing.unwrap_err().contains("/nonexistent/x.wasm"));
        stop_tx.send(true).unwrap();
    }
}
