//! The component: carries the policy's actions out over WASI 0.2.
//! It decides nothing; every decision is in `policy`.

use std::cell::RefCell;

use crate::backlog::file::{FileBacklog, IndexHint, SyncMode, DEFAULT_SEGMENT_BYTES};
use crate::backlog::memory::MemoryBacklog;
use crate::backlog::Backlog;
use crate::config::{BacklogSync, Settings, NANOS};
use crate::deadletter::DeadLetterFile;
use crate::line_protocol::{self, FieldValue};
use crate::policy::{Level, Outcome, Policy, Refusal, Request};
use crate::snapshot;
use crate::stamp::UNSTAMPED;

wit_bindgen::generate!({
    path: "../wit",
    world: "influx-sink",
    generate_all,
});

use exports::influx::sink::output::{self as wit, Guest, GuestSink};
use wasi::clocks::{monotonic_clock, wall_clock};
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, FutureIncomingResponse, IncomingBody, InputStream, Method, OutgoingBody,
    OutgoingRequest, OutputStream, RequestOptions, Scheme,
};
use wasi::io::poll::Pollable;
use wasi::io::streams::StreamError;

/// The preopened directory the host gives this sink for its backlog.
const BACKLOG_DIR: &str = "/backlog";
/// While a request is in flight, ask to be woken this often to progress it.
/// A backstop: our host polls as soon as an exchange moves on; a host that
/// does not still sees each answer within 5 ms.
const IN_FLIGHT_WAKE_NS: u64 = 5_000_000;
/// Largest error body kept from a server answer.
const MAX_ANSWER_BODY: usize = 64 * 1024;

struct Component;

impl Guest for Component {
    type Sink = Sink;
}

pub struct Sink {
    inner: RefCell<Driver>,
}

struct Driver {
    name: String,
    policy: Policy<Box<dyn Backlog>>,
    /// HTTP requests in progress, oldest first.
    exchanges: Vec<Exchange>,
    /// Where refused lines go (none without persistent storage).
    dead: Option<DeadLetterFile>,
    /// Builds the state went through before this one (snapshots).
    lineage: Vec<String>,
}

fn now() -> u64 {
    monotonic_clock::now()
}

fn wall() -> i64 {
    let t = wall_clock::now();
    t.seconds as i64 * 1_000_000_000 + t.nanoseconds as i64
}

/// One log line to stderr in a single write, so lines never interleave.
fn emit(name: &str, level: Level, message: &str) {
    use std::io::Write;
    if level >= Level::Info {
        let line = format!(
            "{} {:<5} [{name}] {message}\n",
            crate::timefmt::rfc3339_millis(wall()),
            level.as_str()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// The sink's backlog, and the points its recovery found lost to damage.
/// `handover`: a live predecessor used the backlog until now (a swap), so
/// checksums are left to the reads and its index of sealed segments is
/// reused where the files are unchanged (see `FileBacklog::open_trusted`).
fn open_backlog(
    s: &Settings,
    handover: Option<Option<&IndexHint>>,
) -> Result<(Box<dyn Backlog>, u64), String> {
    if !s.enable_persistent_storage {
        return Ok((Box::new(MemoryBacklog::new()), 0));
    }
    // The policy decides when to sync in `batch` and `interval_ms` modes.
    let mode = match s.backlog_sync {
        BacklogSync::Always => SyncMode::Always,
        BacklogSync::Batch | BacklogSync::IntervalMs(_) => SyncMode::Batch,
        BacklogSync::Never => SyncMode::Never,
    };
    let dir = std::path::Path::new(BACKLOG_DIR);
    let opened = match handover {
        Some(hint) => FileBacklog::open_trusted(dir, mode, hint),
        None => FileBacklog::open(dir, mode),
    };
    let (mut backlog, report) = opened.map_err(|e| {
        format!("[{}] persistent storage is enabled but the backlog directory {BACKLOG_DIR} is not usable: {e}", s.name)
    })?;
    // Space is freed a segment at a time: keep segments small against the limit.
    backlog.set_segment_bytes((s.max_backlog_bytes / 16).clamp(64 * 1024, DEFAULT_SEGMENT_BYTES));
    for w in &report.warnings {
        emit(&s.name, Level::Warn, w);
    }
    Ok((
        Box::new(backlog),
        report.lost_points + report.tail_points_estimate,
    ))
}

impl Driver {
    fn new(settings: Settings, handover: Option<Option<&IndexHint>>) -> Result<Self, String> {
        let (backlog, lost) = open_backlog(&settings, handover)?;
        let name = settings.name.clone();
        let dead = settings.enable_persistent_storage.then(|| {
            DeadLetterFile::new(
                std::path::Path::new(BACKLOG_DIR),
                settings.max_rejected_bytes,
            )
        });
        let mut policy = Policy::new(settings, backlog, now(), wall());
        policy.count_corrupt(lost);
        Ok(Driver {
            name,
            policy,
            exchanges: Vec::new(),
            dead,
            lineage: Vec::new(),
        })
    }

    /// Log lines and dead letters out of the policy.
    fn drain_outputs(&mut self) {
        while let Some(line) = self.policy.poll_log() {
            emit(&self.name, line.level, &line.message);
        }
        while let Some(letter) = self.policy.poll_dead_letter() {
            let precision = self.policy.settings().precision.name();
            let written = match &self.dead {
                Some(f) => f
                    .append(&self.name, wall(), precision, &letter)
                    .map_err(|e| format!("could not write {}: {e}", f.path().display())),
                None => {
                    Err("persistent storage is disabled, so there is no dead-letter file".into())
                }
            };
            if let Err(why) = written {
                let first = String::from_utf8_lossy(&letter.lines);
                let first = first.lines().next().unwrap_or_default();
                emit(
                    &self.name,
                    Level::Error,
                    &format!(
                        "{} refused point(s) are counted but not kept ({why}); the first: {first}",
                        letter.points
                    ),
                );
            }
        }
    }

    /// One turn: finish what HTTP can finish, run timers, start what is due.
    fn turn(&mut self) -> u64 {
        for _ in 0..64 {
            let (t, w) = (now(), wall());
            let mut i = 0;
            while i < self.exchanges.len() {
                if let Some(outcome) = self.exchanges[i].progress() {
                    let id = self.exchanges.remove(i).id;
                    self.policy.handle_outcome(id, outcome, t, w);
                } else {
                    i += 1;
                }
            }
            self.policy.tick(t, w);
            // Timed out or abandoned: dropping an exchange aborts it.
            let policy = &self.policy;
            self.exchanges.retain(|ex| policy.awaits(ex.id));
            let Some(req) = self.policy.poll_transmit(t) else {
                break;
            };
            let id = req.id;
            // The next iteration makes its first progress; an answer that
            // is already there is then handed to the policy, never lost.
            match Exchange::start(req, self.policy.settings()) {
                Ok(ex) => self.exchanges.push(ex),
                Err(reason) => self
                    .policy
                    .handle_outcome(id, Outcome::Failed { reason }, t, w),
            }
        }
        self.drain_outputs();
        let t = now();
        let mut wake = self
            .policy
            .poll_timeout()
            .map_or(u64::MAX, |at| at.saturating_sub(t));
        if !self.exchanges.is_empty() {
            wake = wake.min(IN_FLIGHT_WAKE_NS);
        }
        wake
    }
}

/// One HTTP request in progress, driven by non-blocking calls only.
struct Exchange {
    id: u64,
    // Field order is drop order: pollables before what they watch, child
    // streams before their bodies, bodies before the response future.
    // wasmtime only advances a pending operation when its pollable is
    // asked `ready()`, so each progress step asks first.
    out_ready: Option<Pollable>,
    in_ready: Option<Pollable>,
    answer_ready: Pollable,
    out_stream: Option<OutputStream>,
    out_body: Option<OutgoingBody>,
    body: Vec<u8>,
    written: usize,
    in_stream: Option<InputStream>,
    in_body: Option<IncomingBody>,
    answer: Option<(u16, Option<String>, Vec<u8>)>,
    future: FutureIncomingResponse,
}

impl Exchange {
    fn start(req: Request, s: &Settings) -> Result<Exchange, String> {
        let headers = Fields::new();
        let mut all = req.headers.clone();
        if !req.body.is_empty() {
            all.push(("content-length".into(), req.body.len().to_string()));
        }
        for (k, v) in &all {
            headers
                .append(k, v.as_bytes())
                .map_err(|e| format!("bad request header {k}: {e:?}"))?;
        }
        let request = OutgoingRequest::new(headers);
        let method = if req.method == "GET" {
            Method::Get
        } else {
            Method::Post
        };
        request.set_method(&method).map_err(|_| "bad method")?;
        let server = &s.endpoints[req.server];
        let scheme = if server.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        request
            .set_scheme(Some(&scheme))
            .map_err(|_| "bad scheme")?;
        let authority = server.authority();
        request
            .set_authority(Some(&authority))
            .map_err(|_| format!("bad server address {authority}"))?;
        request
            .set_path_with_query(Some(&req.path))
            .map_err(|_| format!("bad path {}", req.path))?;
        let out_body = request.body().map_err(|_| "request body unavailable")?;
        let out_stream = out_body
            .write()
            .map_err(|_| "request body stream unavailable")?;
        let options = RequestOptions::new();
        // The policy's deadline (connection_timeout) ends a silent exchange
        // and logs why; the host's timeouts are only a backstop, set later
        // so that they never race it for the reason logged.
        let backstop = ((s.connection_timeout * NANOS) as u64).saturating_mul(2);
        let _ = options.set_connect_timeout(Some(backstop));
        let _ = options.set_first_byte_timeout(Some(backstop));
        let _ = options.set_between_bytes_timeout(Some(backstop));
        let future = outgoing_handler::handle(request, Some(options))
            .map_err(|e| format!("request refused: {e:?}"))?;
        let ex = Exchange {
            id: req.id,
            out_ready: Some(out_stream.subscribe()),
            in_ready: None,
            answer_ready: future.subscribe(),
            out_stream: Some(out_stream),
            out_body: Some(out_body),
            body: req.body,
            written: 0,
            in_stream: None,
            in_body: None,
            answer: None,
            future,
        };
        Ok(ex)
    }

    /// Advance without blocking; `Some` once the request has ended.
    fn progress(&mut self) -> Option<Outcome> {
        if let Err(reason) = self.write_body() {
            return Some(Outcome::Failed { reason });
        }
        if self.answer.is_none() {
            if !self.answer_ready.ready() {
                return None;
            }
            match self.future.get()? {
                Err(()) => {
                    return Some(Outcome::Failed {
                        reason: "answer already taken".into(),
                    })
                }
                Ok(Err(code)) => {
                    return Some(Outcome::Failed {
                        reason: describe_error(&code),
                    })
                }
                Ok(Ok(resp)) => {
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .first()
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    let status = resp.status();
                    if status == 204 {
                        // No Content: there is no body to wait for, and
                        // dropping the answer unread keeps its connection.
                        return Some(Outcome::Answer {
                            status,
                            retry_after,
                            body: String::new(),
                        });
                    }
                    let body = resp.consume().ok()?;
                    self.in_stream = body.stream().ok();
                    self.in_ready = self.in_stream.as_ref().map(|s| s.subscribe());
                    self.in_body = Some(body);
                    self.answer = Some((status, retry_after, Vec::new()));
                }
            }
        }
        let (_, _, buf) = self.answer.as_mut()?;
        let Some(stream) = &self.in_stream else {
            return self.finish_answer();
        };
        if self.in_ready.as_ref().is_some_and(|p| !p.ready()) {
            return None;
        }
        loop {
            match stream.read(16 * 1024) {
                Ok(bytes) if bytes.is_empty() => return None,
                Ok(bytes) => {
                    let room = MAX_ANSWER_BODY.saturating_sub(buf.len());
                    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                Err(StreamError::Closed) => return self.finish_answer(),
                Err(StreamError::LastOperationFailed(e)) => {
                    return Some(Outcome::Failed {
                        reason: format!("answer broke off: {}", e.to_debug_string()),
                    })
                }
            }
        }
    }

    fn finish_answer(&mut self) -> Option<Outcome> {
        self.in_ready = None;
        self.in_stream = None;
        self.in_body = None;
        let (status, retry_after, body) = self.answer.take()?;
        Some(Outcome::Answer {
            status,
            retry_after,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    fn write_body(&mut self) -> Result<(), String> {
        let Some(stream) = &self.out_stream else {
            return Ok(());
        };
        if self.out_ready.as_ref().is_some_and(|p| !p.ready()) {
            return Ok(());
        }
        while self.written < self.body.len() {
            let room = stream
                .check_write()
                .map_err(|e| format!("sending the request failed: {}", stream_error(&e)))?;
            if room == 0 {
                return Ok(());
            }
            let end = self.body.len().min(self.written + room as usize);
            stream
                .write(&self.body[self.written..end])
                .map_err(|e| format!("sending the request failed: {}", stream_error(&e)))?;
            self.written = end;
        }
        self.out_ready = None;
        self.out_stream = None;
        if let Some(body) = self.out_body.take() {
            OutgoingBody::finish(body, None)
                .map_err(|e| format!("finishing the request failed: {}", describe_error(&e)))?;
        }
        Ok(())
    }
}

fn stream_error(e: &StreamError) -> String {
    match e {
        StreamError::Closed => "connection closed".into(),
        StreamError::LastOperationFailed(err) => err.to_debug_string(),
    }
}

fn describe_error(code: &wasi::http::types::ErrorCode) -> String {
    use wasi::http::types::ErrorCode as E;
    match code {
        E::ConnectionRefused => "connection refused".into(),
        E::ConnectionTimeout => "connection timed out".into(),
        E::ConnectionReadTimeout => "read timed out".into(),
        E::ConnectionTerminated => "connection terminated".into(),
        E::DnsError(_) => "host name lookup failed".into(),
        E::HttpRequestDenied => {
            "request denied by the host (address not allowed for this sink)".into()
        }
        E::HttpProtocolError => "connection reset or broken HTTP exchange".into(),
        E::TlsCertificateError => "TLS certificate not trusted (see the host's log)".into(),
        E::TlsAlertReceived(_) => "the server ended the TLS handshake with an alert".into(),
        E::TlsProtocolError => "TLS handshake failed".into(),
        E::HttpResponseIncomplete => "the answer was cut off".into(),
        E::HttpResponseTimeout => "the answer timed out".into(),
        other => format!("{other:?}"),
    }
}

fn to_rejections(errors: Vec<(usize, line_protocol::LineError)>) -> Vec<wit::Rejection> {
    errors
        .into_iter()
        .map(|(i, e)| wit::Rejection {
            index: i as u32,
            reason: e.reason,
        })
        .collect()
}

fn precision_ns(p: wit::Precision) -> i64 {
    match p {
        wit::Precision::Nanoseconds => 1,
        wit::Precision::Microseconds => 1_000,
        wit::Precision::Milliseconds => 1_000_000,
        wit::Precision::Seconds => 1_000_000_000,
        wit::Precision::Minutes => 60_000_000_000,
        wit::Precision::Hours => 3_600_000_000_000,
    }
}

fn to_field(v: wit::FieldValue) -> FieldValue {
    match v {
        wit::FieldValue::Float(f) => FieldValue::Float(f),
        wit::FieldValue::Integer(i) => FieldValue::Integer(i),
        wit::FieldValue::Unsigned(u) => FieldValue::Unsigned(u),
        wit::FieldValue::Text(s) => FieldValue::Text(s),
        wit::FieldValue::Boolean(b) => FieldValue::Boolean(b),
    }
}

impl GuestSink for Sink {
    fn open(name: String, settings: Vec<(String, String)>) -> Result<wit::Sink, String> {
        let (settings, warnings) =
            Settings::from_pairs(&name, &settings).map_err(|e| e.to_string())?;
        for key in &warnings {
            emit(
                &name,
                Level::Warn,
                &format!("unknown key `{key}` is ignored"),
            );
        }
        let driver = Driver::new(settings, None)?;
        Ok(wit::Sink::new(Sink {
            inner: RefCell::new(driver),
        }))
    }

    fn version() -> String {
        snapshot::BUILD_VERSION.to_string()
    }

    fn restore(bytes: Vec<u8>) -> Result<wit::Sink, String> {
        let state = snapshot::decode(&bytes)?;
        let mut driver = Driver::new(state.settings, Some(state.backlog_hint.as_ref()))?;
        driver.policy.resume(state.carried, now(), wall());
        driver.policy.resume_stamps(state.stamper);
        driver.lineage = state.lineage;
        driver.drain_outputs();
        Ok(wit::Sink::new(Sink {
            inner: RefCell::new(driver),
        }))
    }

    fn write_lines(&self, lines: Vec<u8>) -> wit::WriteResult {
        let mut d = self.inner.borrow_mut();
        let w = wall();
        let (points, errors) = line_protocol::parse_lines(&lines, UNSTAMPED);
        let accepted = points.len() as u32;
        d.policy.count_rejected(errors.len() as u64);
        d.policy.write(points, now(), w);
        let rejected = to_rejections(errors);
        wit::WriteResult { accepted, rejected }
    }

    fn write_points(&self, points: Vec<wit::Point>) -> wit::WriteResult {
        let mut d = self.inner.borrow_mut();
        let w = wall();
        let mut ok = Vec::with_capacity(points.len());
        let mut rejected = Vec::new();
        for (i, p) in points.into_iter().enumerate() {
            let fields: Vec<(String, FieldValue)> = p
                .fields
                .into_iter()
                .map(|(k, v)| (k, to_field(v)))
                .collect();
            match line_protocol::point_from_parts(
                &p.measurement,
                &p.tags,
                &fields,
                p.timestamp,
                UNSTAMPED,
            ) {
                Ok(point) => ok.push(point),
                Err(e) => rejected.push(wit::Rejection {
                    index: i as u32,
                    reason: e.reason,
                }),
            }
        }
        let accepted = ok.len() as u32;
        d.policy.count_rejected(rejected.len() as u64);
        d.policy.write(ok, now(), w);
        wit::WriteResult { accepted, rejected }
    }

    fn write_durable(
        &self,
        writes: Vec<wit::DurableWrite>,
        in_memory_ok: bool,
    ) -> Vec<Result<wit::WriteResult, wit::DurableRefusal>> {
        let mut d = self.inner.borrow_mut();
        let w = wall();
        let mut batches = Vec::with_capacity(writes.len());
        let mut rejections = Vec::with_capacity(writes.len());
        for write in &writes {
            let unit = precision_ns(write.precision);
            let (points, errors) = line_protocol::parse_lines_in(&write.lines, UNSTAMPED, unit);
            batches.push(points);
            rejections.push(errors);
        }
        drop(writes);
        let stored: Vec<Result<u64, Refusal>> =
            if in_memory_ok && !d.policy.settings().enable_persistent_storage {
                let counts: Vec<u64> = batches.iter().map(|b| b.len() as u64).collect();
                d.policy
                    .write(batches.into_iter().flatten().collect(), now(), w);
                counts.into_iter().map(Ok).collect()
            } else {
                d.policy.write_durable_group(batches, now(), w)
            };
        stored
            .into_iter()
            .zip(rejections)
            .map(|(result, errors)| match result {
                Ok(n) => {
                    // Bad lines of a stored write are refused; those of a
                    // refused write are sent again by the client, and
                    // counted then.
                    d.policy.count_rejected(errors.len() as u64);
                    Ok(wit::WriteResult {
                        accepted: n as u32,
                        rejected: to_rejections(errors),
                    })
                }
                Err(Refusal::Full { retry_after_s }) => {
                    Err(wit::DurableRefusal::Full(retry_after_s))
                }
                Err(Refusal::TooLarge(why)) => Err(wit::DurableRefusal::TooLarge(why)),
                Err(Refusal::Storage(why)) => Err(wit::DurableRefusal::Storage(why)),
            })
            .collect()
    }

    fn poll(&self) -> u64 {
        self.inner.borrow_mut().turn()
    }

    fn flush(&self) {
        let mut d = self.inner.borrow_mut();
        d.policy.flush(now(), wall());
    }

    fn shutdown(&self) {
        let mut d = self.inner.borrow_mut();
        d.exchanges.clear();
        d.policy.shutdown(now(), wall());
        d.drain_outputs();
    }

    fn stats(&self) -> wit::Stats {
        let d = self.inner.borrow();
        let s = d.policy.stats();
        wit::Stats {
            accepted: s.counters.accepted,
            delivered: s.counters.delivered,
            backlogged: s.counters.backlogged,
            dropped: s.counters.dropped,
            dropped_by: wit::Drops {
                size: s.counters.drops.size,
                bytes: s.counters.drops.bytes,
                age: s.counters.drops.age,
                storage: s.counters.drops.storage,
                corrupt: s.counters.drops.corrupt,
            },
            rejected: s.counters.rejected,
            backlog_points: s.backlog_points,
            backlog_bytes: s.backlog_bytes,
            pending: s.pending,
            held_points: d.policy.held_points(),
            reconnect_attempts: s.counters.reconnect_attempts,
            state: s.state.to_string(),
            room: d.policy.room(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let d = self.inner.borrow();
        let mut lineage = d.lineage.clone();
        lineage.push(snapshot::BUILD_VERSION.to_string());
        let hint = d.policy.backlog().index_hint();
        snapshot::encode(
            d.policy.settings(),
            &d.policy.carry(now()),
            hint.as_ref(),
            d.policy.stamper(),
            &lineage,
        )
    }
}

export!(Component);
