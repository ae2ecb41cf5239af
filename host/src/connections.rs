//! Keep-alive HTTP/1.1 connections, one pool per sink.
//!
//! wasmtime-wasi-http's `default_send_request` opens a connection for every
//! request and closes it after the answer. At 100-point batches that TCP
//! set-up (and, for `https`, a TLS handshake) costs more than the write, so
//! the sink's requests go through this pool instead: a connection whose
//! answer was read to the end goes back to the pool and carries the next
//! request to the same server; one that failed, was cut short, or was
//! closed by the server is dropped.
//!
//! Connection checks (the sink's only `GET`/`HEAD` requests: `/ping` at
//! start, on every reconnect attempt and on each periodic reconnect) always
//! open a new connection and, once answered, replace the pooled ones, so
//! "reconnect" keeps its meaning: after a check, writes go over connections
//! opened since.
//!
//! Timeouts are the guest's (connect, first byte, between bytes), as in
//! `default_send_request`, and errors map to the same wasi:http codes.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::tls::TlsClient;

/// Drives the rest of the exchange once the response head is in; its
/// result reaches the guest through the request's future. Pooled
/// connections run on their own task, so this has nothing left to do.
pub type IoFuture = Box<dyn std::future::Future<Output = Result<(), Error>> + Send>;

/// `default_send_request`'s timeout when the guest sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A pooled connection idle this long is closed rather than reused: well
/// under the idle timeouts of common servers and proxies, so the server
/// seldom closes one just as a request goes out on it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections kept per server: one per request the sink may have in
/// flight (`max_requests_in_flight` is at most 16).
const MAX_IDLE: usize = 16;

/// A byte stream a connection runs over: TCP or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Idle connections by scheme and authority (`http://127.0.0.1:8086`).
type Idle = Arc<Mutex<HashMap<String, Vec<IdleConnection>>>>;

struct IdleConnection {
    sender: SendRequest<WasiBody>,
    since: Instant,
}

/// One sink's connections. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Connections {
    tls: TlsClient,
    idle: Idle,
}

impl Connections {
    /// A pool whose `https` connections use `tls`.
    pub fn new(tls: TlsClient) -> Connections {
        Connections {
            tls,
            idle: Arc::default(),
        }
    }

    /// Send `req` on an idle connection to its server, or on a new one.
    pub async fn send(
        &self,
        mut req: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, IoFuture), Error> {
        let timeouts = Timeouts::from(options);
        let uri = req.uri().clone();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let key = format!("{}://{authority}", if https { "https" } else { "http" });
        let check = matches!(*req.method(), http::Method::GET | http::Method::HEAD);

        // The request line carries only the path: scheme and authority are
        // for proxies (the Host header is already set).
        *req.uri_mut() = http::Uri::builder()
            .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;

        if !check {
            while let Some(mut sender) = self.take_idle(&key) {
                // An idle connection is ready at once; one the server closed
                // errs, and one still finishing its last answer is not worth
                // waiting for.
                match tokio::time::timeout(Duration::from_millis(50), sender.ready()).await {
                    Ok(Ok(())) => {}
                    _ => continue,
                }
                let sent = tokio::time::timeout(timeouts.first_byte, sender.try_send_request(req))
                    .await
                    .map_err(|_| Error::ConnectionReadTimeout)?;
                match sent {
                    Ok(res) => return Ok(self.answer(res, sender, key, false, timeouts)),
                    Err(mut e) => match e.take_message() {
                        // Never written: the connection was already gone.
                        // Try the next one.
                        Some(back) => req = back,
                        None => return Err(Error::from(e.into_error())),
                    },
                }
            }
        }

        let stream = self
            .connect(https, &host, port, &authority, timeouts.connect)
            .await?;
        let (mut sender, conn) = tokio::time::timeout(
            timeouts.connect,
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
        // The connection outlives this request: it runs on its own task,
        // which ends when the server closes it or its last sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let res = tokio::time::timeout(timeouts.first_byte, sender.send_request(req))
            .await
            .map_err(|_| Error::ConnectionReadTimeout)??;
        Ok(self.answer(res, sender, key, check, timeouts))
    }

    /// A new connection to `host:port`, TLS if `https`.
    async fn connect(
        &self,
        https: bool,
        host: &str,
        port: u16,
        authority: &str,
        timeout: Duration,
    ) -> Result<Box<dyn Stream>, Error> {
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
            Ok(stream) => stream.map_err(Error::Connect)?,
            Err(_) => return Err(Error::ConnectionTimeout),
        };
        // Head and body leave at once, not after the server's delayed ACK.
        tcp.set_nodelay(true).map_err(Error::Connect)?;
        if !https {
            return Ok(Box::new(tcp));
        }
        let tls = self.tls.handshake(tcp, host, authority, timeout).await?;
        Ok(Box::new(tls))
    }

    /// The response, its body wrapped to return `sender` to the pool once
    /// read to the end (after a check, in place of the pooled ones).
    fn answer(
        &self,
        res: http::Response<hyper::body::Incoming>,
        sender: SendRequest<WasiBody>,
        key: String,
        check: bool,
        timeouts: Timeouts,
    ) -> (http::Response<WasiBody>, IoFuture) {
        // tokio panics on a zero interval.
        let between = timeouts.between_bytes.max(Duration::from_nanos(1));
        let mut timeout = tokio::time::interval(between);
        timeout.reset();
        let (parts, incoming) = res.into_parts();
        let body = Returning {
            home: Some(Home {
                idle: self.idle.clone(),
                key,
                sender,
                replace: check,
            }),
            incoming,
            timeout,
        };
        let io: IoFuture = Box::new(async { Ok(()) });
        (http::Response::from_parts(parts, body.boxed_unsync()), io)
    }

    /// The newest idle connection to `key` not timed out or closed.
    fn take_idle(&self, key: &str) -> Option<SendRequest<WasiBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < IDLE_TIMEOUT && !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }
}

/// The guest's timeouts, or `default_send_request`'s where it set none.
#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    first_byte: Duration,
    between_bytes: Duration,
}

impl From<Option<RequestOptions>> for Timeouts {
    fn from(o: Option<RequestOptions>) -> Timeouts {
        let or_default = |t: Option<Duration>| t.unwrap_or(DEFAULT_TIMEOUT);
        Timeouts {
            connect: or_default(o.and_then(|o| o.connect_timeout)),
            first_byte: or_default(o.and_then(|o| o.first_byte_timeout)),
            between_bytes: or_default(o.and_then(|o| o.between_bytes_timeout)),
        }
    }
}

/// Where a connection goes back to once its answer is read.
struct Home {
    idle: Idle,
    key: String,
    sender: SendRequest<WasiBody>,
    /// A check's fresh connection replaces the idle ones.
    replace: bool,
}

impl Home {
    fn go(self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(self.key).or_default();
        if self.replace {
            list.clear();
        }
        if list.len() < MAX_IDLE {
            list.push(IdleConnection {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

/// The response body, with the between-bytes timeout (as in
/// `default_send_request`); read to the end, it returns its connection to
/// the pool. Dropped before that, the connection closes with it.
struct Returning {
    home: Option<Home>,
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl Returning {
    fn go_home_if_done(&mut self) {
        if self.incoming.is_end_stream() {
            if let Some(home) = self.home.take() {
                home.go();
            }
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // A 204 has no body frames: the guest may drop it unread.
        self.go_home_if_done();
    }
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(home) = this.home.take() {
                    home.go();
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.home = None;
                Poll::Ready(Some(Err(if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    Error::from(e)
                })))
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.timeout.reset();
                this.go_home_if_done();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(this.timeout.poll_tick(cx));
                this.home = None;
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_http::read_request;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;

    /// What the test server saw: per request (connection number, method,
    /// body), and each connection's end.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Request(usize, String, Vec<u8>),
        Closed(usize),
    }

    /// A keep-alive HTTP/1.1 server on 127.0.0.1 answering `204` to every
    /// request; with `close_after_each`, it says `Connection: close` and
    /// closes instead.
    async fn server(close_after_each: bool) -> (u16, mpsc::UnboundedReceiver<Seen>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some((head, body)) = read_request(&mut tcp, &mut buf).await {
                        let method = head.split(' ').next().unwrap_or("").to_uppercase();
                        let _ = tx.send(Seen::Request(n, method, body));
                        let answer: &[u8] = if close_after_each {
                            b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
                        } else {
                            b"HTTP/1.1 204 No Content\r\n\r\n"
                        };
                        if tcp.write_all(answer).await.is_err() || close_after_each {
                            break;
                        }
                    }
                    let _ = tx.send(Seen::Closed(n));
                });
            }
        });
        (port, rx)
    }

    fn request(method: http::Method, port: u16, body: &'static [u8]) -> http::Request<WasiBody> {
        crate::test_http::request(method, &format!("http://127.0.0.1:{port}/write"), body)
    }

    fn pool() -> Connections {
        Connections::new(TlsClient::new("out", None, false).unwrap())
    }

    /// Send, check the 204, read the answer to its end.
    async fn exchange(pool: &Connections, method: http::Method, port: u16, body: &'static [u8]) {
        let (res, io) = pool.send(request(method, port, body), None).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::NO_CONTENT);
        res.into_body().collect().await.unwrap();
        Box::into_pin(io).await.unwrap();
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the server saw nothing within 5 s")
            .expect("server gone")
    }

    #[tokio::test]
    async fn writes_one_after_another_share_one_connection() {
        let (port, mut rx) = server(false).await;
        let pool = pool();
        for body in [&b"a v=1\n"[..], b"b v=2\n", b"c v=3\n"] {
            let body: &'static [u8] = body;
            exchange(&pool, http::Method::POST, port, body).await;
            assert_eq!(
                next(&mut rx).await,
                Seen::Request(1, "POST".into(), body.to_vec())
            );
        }
    }

    #[tokio::test]
    async fn a_check_opens_a_new_connection_which_then_replaces_the_idle_one() {
        let (port, mut rx) = server(false).await;
        let pool = pool();
        exchange(&pool, http::Method::POST, port, b"a v=1\n").await;
        assert_eq!(
            next(&mut rx).await,
            Seen::Request(1, "POST".into(), b"a v=1\n".to_vec())
        );
        exchange(&pool, http::Method::GET, port, b"").await;
        assert_eq!(next(&mut rx).await, Seen::Request(2, "GET".into(), vec![]));
        // The old connection is closed; the next write goes over the new.
        assert_eq!(next(&mut rx).await, Seen::Closed(1));
        exchange(&pool, http::Method::POST, port, b"b v=2\n").await;
        assert_eq!(
            next(&mut rx).await,
            Seen::Request(2, "POST".into(), b"b v=2\n".to_vec())
        );
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_reused() {
        let (port, mut rx) = server(true).await;
        let pool = pool();
        exchange(&pool, http::Method::POST, port, b"a v=1\n").await;
        assert_eq!(
            next(&mut rx).await,
            Seen::Request(1, "POST".into(), b"a v=1\n".to_vec())
        );
        assert_eq!(next(&mut rx).await, Seen::Closed(1));
        exchange(&pool, http::Method::POST, port, b"b v=2\n").await;
        assert_eq!(
            next(&mut rx).await,
            Seen::Request(2, "POST".into(), b"b v=2\n".to_vec())
        );
    }

    #[tokio::test]
    async fn a_204_dropped_unread_still_returns_its_connection() {
        let (port, mut rx) = server(false).await;
        let pool = pool();
        let (res, _io) = pool
            .send(request(http::Method::POST, port, b"a v=1\n"), None)
            .await
            .unwrap();
        assert_eq!(
            next(&mut rx).await,
            Seen::Request(1, "POST".into(), b"a v=1\n".to_vec())
        );
        // A 204 has no body: dropping it unread still counts as read.
        drop(res);
        exchange(&pool, http::Method::POST, port, b"b v=2\n").await;
        assert_eq!(
            next(&mut rx).await,
            Seen::Request(1, "POST".into(), b"b v=2\n".to_vec())
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = pool()
            .send(request(http::Method::POST, port, b"x"), None)
            .await
            .err();
        assert!(matches!(e, Some(Error::Connect(_))), "{e:?}");
    }
}
