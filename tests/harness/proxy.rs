//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1 ([`FaultProxy`]).
//!
//! It listens on a port of its own and forwards every request to an
//! upstream server on 127.0.0.1 (a real influxd or VictoriaMetrics), unless
//! a *script* says otherwise: a queue of ([`Match`], [`Fault`]) rules that
//! are used up one request at a time, in order. When no queued rule matches
//! a request, the *default* behaviour applies ([`Fault::Forward`] unless
//! changed with [`FaultProxy::set_default`]). Every request is recorded
//! ([`FaultProxy::requests`]) with its headers, its body (gunzipped too)
//! and what was done with it.
//!
//! Plain std: one thread per client connection, one fresh upstream
//! connection per forwarded request (`Connection: close` upstream, the
//! client connection is kept alive as the client asks). Request bodies may
//! be Content-Length or chunked; upstream answers may be Content-Length,
//! chunked or close-delimited; the client always gets Content-Length.
//! If the upstream cannot be reached (stopped server), the client
//! connection is reset, which is what a client talking to the stopped
//! server directly would see on an established connection.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long connecting to the upstream may take.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request or response head accepted (bytes).
const MAX_HEAD: usize = 64 * 1024;

/// Which requests a scripted rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// Every request.
    Any,
    /// Requests whose target (path and query) starts with this, e.g.
    /// `"/write"`, `"/ping"`, `"/query"`, `"/api/v2/write"`.
    PathPrefix(String),
}

impl Match {
    /// `Match::PathPrefix(prefix.into())`.
    pub fn path(prefix: &str) -> Match {
        Match::PathPrefix(prefix.to_string())
    }

    fn matches(&self, target: &str) -> bool {
        match self {
            Match::Any => true,
            Match::PathPrefix(p) => target.starts_with(p.as_str()),
        }
    }
}

/// What the proxy does with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Pass the request to the upstream and return its answer.
    Forward,
    /// Answer this without forwarding (Content-Length is set by the proxy;
    /// the body is not sent for 204 and 304).
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Forward (so the server stores the data), throw its answer away and
    /// answer this instead: e.g. a 204 lost on the way back.
    AnswerAfterForward {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Wait this long after reading the request, then forward: a slow server.
    Delay(Duration),
    /// Read the request and never answer; the connection stays open until
    /// the client closes it or the proxy is dropped.
    Hang,
    /// Read only part of the request body (half of its Content-Length, or
    /// half of its first chunk), then close the connection with RST.
    ResetMidBody,
    /// Forward, send the client only the first half of the upstream's
    /// answer (head and body as bytes on the wire), then RST.
    ResetMidResponse,
    /// RST the connection without answering. On a new connection whose
    /// first rule is (`Match::Any`, `Refuse`), or when the script is empty
    /// and this is the default, nothing at all is read: the connection is
    /// reset as soon as it is accepted, and no [`Seen`] is recorded (see
    /// [`FaultProxy::refused_connections`]). Otherwise (a `PathPrefix`
    /// rule, or a kept-alive connection) the request head is read first.
    Refuse,
}

impl Fault {
    /// `Fault::Answer` with this status and body and no extra header.
    pub fn answer(status: u16, body: &str) -> Fault {
        Fault::Answer {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    /// `Fault::AnswerAfterForward` with this status and body.
    pub fn answer_after_forward(status: u16, body: &str) -> Fault {
        Fault::AnswerAfterForward {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    /// An answer shaped like an InfluxDB 1.x error: JSON `{"error":"msg"}`,
    /// `Content-Type: application/json` and `X-Influxdb-Error: msg`.
    pub fn influx_error(status: u16, msg: &str) -> Fault {
        let body = format!("{{\"error\":{}}}\n", serde_json::Value::from(msg));
        Fault::answer(status, &body)
            .with_header("Content-Type", "application/json")
            .with_header("X-Influxdb-Error", msg)
    }

    /// Add a header to an `Answer` / `AnswerAfterForward` (e.g.
    /// `Retry-After`). Panics for the other variants.
    pub fn with_header(mut self, name: &str, value: &str) -> Fault {
        match &mut self {
            Fault::Answer { headers, .. } | Fault::AnswerAfterForward { headers, .. } => {
                headers.push((name.to_string(), value.to_string()));
            }
            other => panic!("Fault::with_header on {other:?}: only answers have headers"),
        }
        self
    }
}

/// One request the proxy read, and what it did with it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Order of arrival, from 1, over the proxy's life (not reset by
    /// [`FaultProxy::clear_seen`]).
    pub seq: u64,
    /// Which client connection it came on (from 1): equal for requests
    /// sent on one kept-alive connection.
    pub connection: u64,
    pub method: String,
    /// Path and query, as sent (`/write?db=x&precision=ns`).
    pub target: String,
    /// Header names lowercased, values trimmed, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body as received (de-chunked, still compressed if it was).
    pub body: Vec<u8>,
    /// `body` gunzipped when `content-encoding: gzip`, else `body` itself.
    pub body_decoded: Vec<u8>,
    /// Why gunzipping failed, if it did (`body_decoded` is then `body`).
    pub gzip_error: Option<String>,
    /// Whether the whole body was read (false for `ResetMidBody`,
    /// `Refuse`, or a client that went away mid-body).
    pub complete: bool,
    /// The behaviour applied.
    pub fault: Fault,
    /// Status of the upstream's answer, when the request was forwarded.
    pub upstream_status: Option<u16>,
    /// Why forwarding failed (the client connection was then reset).
    pub upstream_error: Option<String>,
    /// Status of the complete answer the client got, if any (`None` while
    /// pending, for Hang / resets, or when writing to the client failed).
    pub answered: Option<u16>,
}

impl Seen {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query parameter, percent-decoded (`+` as space).
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `body_decoded` as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body_decoded).into_owned()
    }
}

/// The proxy. Dropping it stops it: the listener closes, every open client
/// and upstream connection is shut down, and its threads are joined.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listen on 127.0.0.1 (a port the OS picks) and forward to
    /// `127.0.0.1:upstream_port`. The upstream need not be up yet.
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("fault proxy: bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("fault proxy: local_addr")
            .port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            state: Mutex::new(State {
                script: VecDeque::new(),
                default: Fault::Forward,
                seen: Vec::new(),
                next_seq: 1,
                connections: 0,
                refused: 0,
            }),
            stop_signal: Condvar::new(),
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(1),
            workers: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fault-proxy-{port}"))
                .spawn(move || accept_loop(listener, shared))
                .expect("spawn fault proxy thread")
        };
        FaultProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port the proxy listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`: give this to the client instead of the
    /// upstream's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The upstream port requests are forwarded to.
    pub fn upstream_port(&self) -> u16 {
        self.shared.upstream.port()
    }

    /// Queue `faults`, in order, for the next requests that `matches`
    /// (one fault per request). A request takes the first queued rule that
    /// matches it; rules for other paths stay queued.
    pub fn script(&self, matches: Match, faults: impl IntoIterator<Item = Fault>) {
        let mut st = self.shared.lock();
        for fault in faults {
            st.script.push_back((matches.clone(), fault));
        }
    }

    /// Queue one rule: `script(matches, [fault])`.
    pub fn push(&self, matches: Match, fault: Fault) {
        self.script(matches, [fault]);
    }

    /// Queue the same fault `times` times for requests that `matches`.
    pub fn repeat(&self, matches: Match, fault: Fault, times: usize) {
        self.script(matches, std::iter::repeat_n(fault, times));
    }

    /// How many queued rules have not been used yet.
    pub fn pending(&self) -> usize {
        self.shared.lock().script.len()
    }

    /// Drop every queued rule (the default stays).
    pub fn clear_script(&self) {
        self.shared.lock().script.clear();
    }

    /// The behaviour for requests no queued rule matches (initially
    /// [`Fault::Forward`]). E.g. `Fault::answer(503, "")` for an outage,
    /// [`Fault::Refuse`] for a dead server, `Fault::Forward` to heal.
    pub fn set_default(&self, fault: Fault) {
        self.shared.lock().default = fault;
    }

    /// Every request seen since the start or [`FaultProxy::clear_seen`],
    /// in order of arrival.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }

    /// The requests seen whose target starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Seen> {
        let st = self.shared.lock();
        st.seen
            .iter()
            .filter(|s| s.target.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Forget the requests seen so far.
    pub fn clear_seen(&self) {
        self.shared.lock().seen.clear();
    }

    /// Client connections accepted so far (including refused ones).
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// Connections reset as soon as they were accepted (see
    /// [`Fault::Refuse`]).
    pub fn refused_connections(&self) -> u64 {
        self.shared.lock().refused
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop();
        // Wake the blocking accept(); it sees `stopping` and returns.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
    }
}

struct State {
    script: VecDeque<(Match, Fault)>,
    default: Fault,
    seen: Vec<Seen>,
    next_seq: u64,
    connections: u64,
    refused: u64,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Signalled (with `state` locked) when the proxy stops: ends `Delay`s.
    stop_signal: Condvar,
    stopping: AtomicBool,
    /// Clones of every open client and upstream socket, to shut them down
    /// (and so wake their blocked threads) when the proxy stops.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_socket: AtomicU64,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        {
            let _st = self.lock();
            self.stopping.store(true, Ordering::SeqCst);
            self.stop_signal.notify_all();
        }
        for socket in lock(&self.sockets).values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Remember a clone of `stream` so [`Shared::stop`] can shut it down.
    fn register(&self, stream: &TcpStream) -> u64 {
        let id = self.next_socket.fetch_add(1, Ordering::Relaxed);
        let mut sockets = lock(&self.sockets);
        if self.stopping() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Ok(clone) = stream.try_clone() {
            sockets.insert(id, clone);
        }
        id
    }

    fn unregister(&self, id: u64) {
        lock(&self.sockets).remove(&id);
    }

    /// Wait `d`, or less if the proxy stops; returns false if it stopped.
    fn sleep(&self, d: Duration) -> bool {
        let st = self.lock();
        let _st = self
            .stop_signal
            .wait_timeout_while(st, d, |_| !self.stopping())
            .unwrap_or_else(|e| e.into_inner());
        !self.stopping()
    }

    /// For a fresh connection: whether to reset it before reading anything.
    fn refuse_at_accept(&self) -> bool {
        let mut st = self.lock();
        st.connections += 1;
        let refuse = match st.script.front() {
            Some((Match::Any, Fault::Refuse)) => {
                st.script.pop_front();
                true
            }
            Some(_) => false,
            None => st.default == Fault::Refuse,
        };
        if refuse {
            st.refused += 1;
        }
        refuse
    }

    /// Take the first queued rule matching `target`, or the default.
    fn take_fault(&self, target: &str) -> Fault {
        let mut st = self.lock();
        match st.script.iter().position(|(m, _)| m.matches(target)) {
            Some(i) => st.script.remove(i).expect("index from position").1,
            None => st.default.clone(),
        }
    }

    fn record(&self, mut seen: Seen) -> u64 {
        let mut st = self.lock();
        seen.seq = st.next_seq;
        st.next_seq += 1;
        let seq = seen.seq;
        st.seen.push(seen);
        seq
    }

    /// Update the recorded request `seq` (if not cleared meanwhile).
    fn update(&self, seq: u64, f: impl FnOnce(&mut Seen)) {
        let mut st = self.lock();
        if let Some(seen) = st.seen.iter_mut().rev().find(|s| s.seq == seq) {
            f(seen);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_conn = 0u64;
    for stream in listener.incoming() {
        if shared.stopping() {
            break;
        }
        let Ok(stream) = stream else {
            continue;
        };
        next_conn += 1;
        let conn = next_conn;
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("fault-proxy-conn-{conn}"))
                .spawn(move || serve(&shared, stream, conn))
        };
        let mut workers = lock(&shared.workers);
        workers.retain(|w| !w.is_finished());
        if let Ok(worker) = worker {
            workers.push(worker);
        }
    }
}

/// A parsed request or response head.
struct Head {
    /// Request: method, target, version. Response: version, status, reason.
    start: [String; 3],
    /// Names lowercased, values trimmed.
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }

    fn content_length(&self) -> io::Result<Option<usize>> {
        match self.get("content-length") {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| bad_data(format!("bad content-length {v:?}"))),
        }
    }
}

fn bad_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Read a head; `None` on a clean EOF before its first byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut total = 0;
    let mut line = Vec::new();
    // Skip empty lines before the start line (RFC 9112 2.2).
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            return if total == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        total += n;
        if !trim_eol(&line).is_empty() {
            break;
        }
        if total > MAX_HEAD {
            return Err(bad_data("head too long".into()));
        }
    }
    let start_line = String::from_utf8_lossy(trim_eol(&line)).into_owned();
    let mut parts = start_line.splitn(3, ' ');
    let start = [(); 3].map(|_| parts.next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        total += n;
        if total > MAX_HEAD {
            return Err(bad_data("head too long".into()));
        }
        let text = trim_eol(&line);
        if text.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(text);
        let Some((name, value)) = text.split_once(':') else {
            return Err(bad_data(format!("bad header line {text:?}")));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Some(Head { start, headers }))
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Read a chunked body (trailers are read and dropped). With `limit`, stop
/// after that many body bytes (for `ResetMidBody`).
fn read_chunked(r: &mut impl BufRead, limit: Option<usize>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let text = String::from_utf8_lossy(trim_eol(&line)).into_owned();
        let size_text = text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| bad_data(format!("bad chunk size line {text:?}")))?;
        if size == 0 {
            // Trailer section, up to an empty line.
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line)? == 0 || trim_eol(&line).is_empty() {
                    return Ok(body);
                }
            }
        }
        let take = match limit {
            Some(limit) => size.min(limit.saturating_sub(body.len())),
            None => size,
        };
        let start = body.len();
        body.resize(start + take, 0);
        r.read_exact(&mut body[start..])?;
        if take < size {
            return Ok(body);
        }
        line.clear();
        r.read_until(b'\n', &mut line)?; // the CRLF after the chunk
    }
}

fn read_exact_vec(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut body = vec![0; n];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Read a request body by its framing (no framing: no body).
fn read_request_body(r: &mut impl BufRead, head: &Head) -> io::Result<Vec<u8>> {
    if head.chunked() {
        read_chunked(r, None)
    } else {
        read_exact_vec(r, head.content_length()?.unwrap_or(0))
    }
}

/// The first half of a request body (for `ResetMidBody`).
fn read_half_request_body(r: &mut impl BufRead, head: &Head) -> io::Result<Vec<u8>> {
    if head.chunked() {
        // Half of the first chunk: peek at its size without consuming more.
        let buffered = r.fill_buf()?;
        let text = String::from_utf8_lossy(buffered);
        let size = text
            .split(['\r', '\n', ';'])
            .next()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        read_chunked(r, Some(size.div_ceil(2).max(1)))
    } else {
        let len = head.content_length()?.unwrap_or(0);
        read_exact_vec(r, len.div_ceil(2))
    }
}

/// Headers that concern one connection only and are not passed on.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "expect"
    )
}

/// A complete upstream answer.
struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn from_fault(status: u16, headers: &[(String, String)], body: &str) -> Response {
        Response {
            status,
            reason: reason(status).to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// The bytes for the client, always Content-Length framed.
    fn to_bytes(&self, head_request: bool, keep_alive: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        let no_body = matches!(self.status, 100..=199 | 204 | 304);
        for (k, v) in &self.headers {
            let lower = k.to_ascii_lowercase();
            // A HEAD answer keeps the upstream's Content-Length (of the
            // body it would have sent).
            let keep_length = head_request && lower == "content-length";
            if hop_by_hop(&lower) && !keep_length {
                continue;
            }
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !no_body && !head_request {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut bytes = out.into_bytes();
        if !no_body && !head_request {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Send the request to the upstream on a fresh connection and read its
/// whole answer.
fn forward(shared: &Shared, head: &Head, body: &[u8]) -> io::Result<Response> {
    let upstream = TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT)?;
    let id = shared.register(&upstream);
    let result = exchange(&upstream, head, body);
    shared.unregister(id);
    result
}

fn exchange(upstream: &TcpStream, head: &Head, body: &[u8]) -> io::Result<Response> {
    let [method, target, _] = &head.start;
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in &head.headers {
        if !hop_by_hop(k) {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    let framed = head.chunked() || head.get("content-length").is_some();
    if framed || !body.is_empty() {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("connection: close\r\n\r\n");
    let mut writer = upstream;
    writer.write_all(out.as_bytes())?;
    writer.write_all(body)?;
    writer.flush()?;

    let mut r = BufReader::new(upstream);
    loop {
        let Some(resp) = read_head(&mut r)? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed without answering",
            ));
        };
        let status: u16 = resp.start[1]
            .parse()
            .map_err(|_| bad_data(format!("bad upstream status line {:?}", resp.start)))?;
        if (100..200).contains(&status) {
            continue; // 100 Continue and friends: the real answer follows
        }
        let body = if method.eq_ignore_ascii_case("HEAD") || matches!(status, 204 | 304) {
            Vec::new()
        } else if resp.chunked() {
            read_chunked(&mut r, None)?
        } else if let Some(n) = resp.content_length()? {
            read_exact_vec(&mut r, n)?
        } else {
            let mut all = Vec::new();
            r.read_to_end(&mut all)?;
            all
        };
        return Ok(Response {
            status,
            reason: resp.start[2].clone(),
            headers: resp.headers,
            body,
        });
    }
}

/// Gunzip `body` when `content-encoding: gzip`.
fn decode(headers: &[(String, String)], body: &[u8]) -> (Vec<u8>, Option<String>) {
    let gzip = headers
        .iter()
        .any(|(k, v)| k == "content-encoding" && v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return (body.to_vec(), None);
    }
    let mut out = Vec::new();
    match flate2::read::MultiGzDecoder::new(body).read_to_end(&mut out) {
        Ok(_) => (out, None),
        Err(e) => (body.to_vec(), Some(e.to_string())),
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Close `stream` with an RST: SO_LINGER 0, and every clone of it gone.
fn reset(shared: &Shared, id: u64, stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an fd we own, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    shared.unregister(id);
    drop(stream);
}

/// Serve one client connection until it closes, asks to close, is reset,
/// or the proxy stops.
fn serve(shared: &Shared, stream: TcpStream, conn: u64) {
    let id = shared.register(&stream);
    if shared.refuse_at_accept() {
        reset(shared, id, stream);
        return;
    }
    let mut r = BufReader::new(stream);
    while let Ok(Some(head)) = read_head(&mut r) {
        let [method, target, version] = &head.start;
        let keep_alive = if version.eq_ignore_ascii_case("HTTP/1.0") {
            head.has_token("connection", "keep-alive")
        } else {
            !head.has_token("connection", "close")
        };
        let fault = shared.take_fault(target);
        let mut seen = Seen {
            seq: 0,
            connection: conn,
            method: method.clone(),
            target: target.clone(),
            headers: head.headers.clone(),
            body: Vec::new(),
            body_decoded: Vec::new(),
            gzip_error: None,
            complete: false,
            fault: fault.clone(),
            upstream_status: None,
            upstream_error: None,
            answered: None,
        };
        match fault {
            Fault::Refuse => {
                shared.record(seen);
                reset(shared, id, r.into_inner());
                return;
            }
            Fault::ResetMidBody => {
                if let Ok(part) = read_half_request_body(&mut r, &head) {
                    seen.body_decoded = part.clone();
                    seen.body = part;
                }
                shared.record(seen);
                reset(shared, id, r.into_inner());
                return;
            }
            _ => {}
        }
        if head.has_token("expect", "100-continue")
            && r.get_ref()
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .is_err()
        {
            break;
        }
        let body = read_request_body(&mut r, &head);
        seen.complete = body.is_ok();
        let body = body.unwrap_or_default();
        (seen.body_decoded, seen.gzip_error) = decode(&head.headers, &body);
        seen.body = body.clone();
        let complete = seen.complete;
        let seq = shared.record(seen);
        if !complete {
            break;
        }

        let answer = match &fault {
            Fault::Forward | Fault::Delay(_) | Fault::ResetMidResponse => {
                if let Fault::Delay(d) = fault {
                    if !shared.sleep(d) {
                        break;
                    }
                }
                match forward(shared, &head, &body) {
                    Ok(resp) => {
                        shared.update(seq, |s| s.upstream_status = Some(resp.status));
                        resp
                    }
                    Err(e) => {
                        shared.update(seq, |s| s.upstream_error = Some(e.to_string()));
                        reset(shared, id, r.into_inner());
                        return;
                    }
                }
            }
            Fault::Answer {
                status,
                headers,
                body,
            } => Response::from_fault(*status, headers, body),
            Fault::AnswerAfterForward {
                status,
                headers,
                body: answer_body,
            } => {
                match forward(shared, &head, &body) {
                    Ok(resp) => shared.update(seq, |s| s.upstream_status = Some(resp.status)),
                    Err(e) => shared.update(seq, |s| s.upstream_error = Some(e.to_string())),
                }
                Response::from_fault(*status, headers, answer_body)
            }
            Fault::Hang => {
                // Never answer; swallow whatever else comes until EOF.
                let mut sink = [0u8; 4096];
                while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
                break;
            }
            Fault::Refuse | Fault::ResetMidBody => unreachable!("handled above"),
        };
        let bytes = answer.to_bytes(method.eq_ignore_ascii_case("HEAD"), keep_alive);
        if fault == Fault::ResetMidResponse {
            let _ = r.get_ref().write_all(&bytes[..bytes.len() / 2]);
            reset(shared, id, r.into_inner());
            return;
        }
        // Recorded before the client can have it, so a test that got the
        // answer always finds it recorded; undone if the write fails.
        shared.update(seq, |s| s.answered = Some(answer.status));
        if r.get_ref().write_all(&bytes).is_err() {
            shared.update(seq, |s| s.answered = None);
            break;
        }
        if !keep_alive {
            break;
        }
    }
    let stream = r.into_inner();
    let _ = stream.shutdown(Shutdown::Both);
    shared.unregister(id);
}
