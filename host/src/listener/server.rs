//! The accept loop: HTTP/1.1 connections on hyper, bounded against
//! hostile clients, and a graceful stop.
//!
//! Bounds: at most `max_connections` open connections (one more is
//! answered `503` and closed, by a small fixed set of tasks; beyond those
//! it is just closed); a request head must arrive within
//! `header_timeout` (slowloris; this also closes idle keep-alive
//! connections) and be at most `max_header_size` bytes (`431`); a body
//! must arrive within `read_timeout` and is at most `max_body_size` (see
//! [`super::endpoints`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use wasmtime_wasi_http::io::TokioIo;

use super::acceptor::Acceptor;
use super::config::ListenerConfig;
use super::endpoints::{handle, Shared};
use super::reply::BUILD;
use crate::log;

/// Connections over the limit answered `503` at the same time; more are
/// closed without an answer.
const REFUSERS: usize = 16;
/// How long a refused connection is given to take its `503`.
const REFUSE_TIME: Duration = Duration::from_secs(1);

/// Serve InfluxDB's write API on `listener` until `shutdown` resolves,
/// handing writes to `acceptor`. Then stop accepting, let requests in
/// flight finish for up to `shutdown_timeout`, and return.
pub async fn serve<A: Acceptor>(
    listener: TcpListener,
    cfg: ListenerConfig,
    acceptor: Arc<A>,
    shutdown: impl Future<Output = ()>,
) {
    let scope = format!("listener {}", cfg.name);
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let refusers = Arc::new(Semaphore::new(REFUSERS));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer)
        .header_read_timeout(cfg.header_timeout)
        .max_header_size(cfg.max_header_size)
        .keep_alive(true);
    let grace = cfg.shutdown_timeout;
    let refusal: Arc<[u8]> = refusal_bytes(&cfg.version).into();
    let shared = Arc::new(Shared::new(cfg, acceptor));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    log::warn(&scope, &format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Ok(refuser) = refusers.clone().try_acquire_owned() {
                let refusal = refusal.clone();
                tokio::spawn(async move {
                    refuse(stream, &refusal).await;
                    drop(refuser);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req, peer).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log::warn(
            &scope,
            &format!(
                "{} connections still open after {grace:?}; closing them",
                connections.len()
            ),
        );
        connections.shutdown().await;
    }
}

/// The canned answer to a connection over the limit.
fn refusal_bytes(version: &str) -> Vec<u8> {
    let body = r#"{"error":"too many open connections; retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nRetry-After: 1\r\nX-Influxdb-Version: {version}\r\n\
         X-Influxdb-Build: {BUILD}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Answer `503` and close; what the client sent meanwhile is read and
/// dropped, so closing does not reset the connection before it reads the
/// answer.
async fn refuse(mut stream: TcpStream, refusal: &[u8]) {
    let _ = tokio::time::timeout(REFUSE_TIME, async {
        stream.write_all(refusal).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// hyper's timer on tokio's clock (what `hyper_util::rt::TokioTimer`
/// does, without the dependency).
#[derive(Debug, Clone, Copy)]
struct TokioTimer;

impl Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(TokioSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(TokioSleep(Box::pin(tokio::time::sleep_until(
            deadline.into(),
        ))))
    }
}

struct TokioSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for TokioSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl Sleep for TokioSleep {}
