//! The delivery policy as a sans-IO state machine, after quinn-proto's
//! `Connection`: handlers take what happened and `now`, polls say what to do.
//!
//! The driver (the component glue, the simulator, a test) calls
//! [`Policy::write`] (or [`Policy::write_durable`], which answers only once
//! the points are fsynced in the backlog: see `durable`) /
//! [`Policy::flush`] / [`Policy::handle_outcome`] as
//! things happen, then [`Policy::tick`] and [`Policy::poll_transmit`] until
//! it returns `None`, then sleeps until [`Policy::poll_timeout`]. The policy
//! never reads a clock and never does I/O except through its [`Backlog`].

pub mod backoff;
mod durable;
pub mod http;
mod log;
mod ready;
pub mod storage;

use std::collections::VecDeque;

use crate::backlog::Backlog;
use crate::config::{Api, Settings, NANOS};
use crate::point::Point;
use crate::stamp::Stamper;
use backoff::Jitter;
pub use durable::Refusal;
pub use http::{Outcome, Purpose, Request, Verdict};
pub use log::{Level, LogLine};
use ready::Ready;
pub use storage::{DropReason, Drops};
use storage::{Report, Storage};

/// Monotonic time in nanoseconds, from an origin the driver chooses.
pub type Instant = u64;

/// Full batches held in memory while connected before they go to the
/// backlog: bounds memory when the server is slow but up.
const MAX_READY_BATCHES: usize = 4;
/// Points held for sending while connected, at least (small batches):
/// `room` offers the host this much, so it need not write tiny chunks.
const MIN_READY_POINTS: usize = 4096;
/// The same bound in bytes, for large batches of large points: memory is
/// capped per instance (`max_memory_mb`), and a snapshot needs about twice
/// what is held.
const MAX_READY_BYTES: usize = 8 << 20;

/// Where the points of an in-flight write live.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// Only in memory: on failure they go to the backlog.
    Memory(Vec<Point>),
    /// The oldest points of the backlog, reserved there: on success they
    /// are consumed.
    Backlog(Vec<Point>),
    /// The next piece of the batch being resent in pieces (`Rework`).
    Piece,
}

/// A batch the server refused as a whole (bad data, too large), resent in
/// pieces until every point is delivered or known bad. Pieces finish left
/// to right, so a backlog batch is consumed from its head as they do.
#[derive(Debug, Clone, PartialEq)]
struct Rework {
    /// Pieces still to send; the next (leftmost) is last.
    pieces: Vec<Vec<Point>>,
    /// The points are the backlog's reserved head, else only in memory.
    in_backlog: bool,
}

impl Rework {
    fn points(&self) -> impl Iterator<Item = &Point> {
        self.pieces.iter().rev().flatten()
    }
}

/// Lines the server refused for good, for the dead-letter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The server's reason, for the comment line above the lines.
    pub reason: String,
    /// Line protocol as sent (write precision), uncompressed.
    pub lines: Vec<u8>,
    pub points: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Flight {
    Ping { periodic: bool },
    CreateDatabase,
    Write(Source),
}

#[derive(Debug, Clone, PartialEq)]
struct InFlight {
    id: u64,
    what: Flight,
    deadline: Instant,
    /// Its answer, kept until every older request is decided.
    answer: Option<Outcome>,
}

/// Progress of one backlog flush, for its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Drain {
    announced: u64,
    written: u64,
    /// The backlog held only durable writes made while connected: their
    /// delivery is routine, logged at debug level and not shown as the
    /// "draining" state (else every durable write would log two lines).
    quiet: bool,
}

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// A connection check is due now (at start, or attempt `attempt`).
    Connecting {
        attempt: u32,
    },
    Connected,
    /// Waiting to make reconnect attempt `attempt` at `at`.
    BackingOff {
        attempt: u32,
        at: Instant,
    },
}

/// What `Policy::carry` hands to a successor instance: points borrowed
/// when written (`Carried<&Point>`), owned when read; the same bytes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Carried<P = Point> {
    pub counters: Counters,
    /// Accepted points not in the backlog, oldest first.
    pub points: Vec<P>,
    pub conn: CarriedConn,
    pub streak: u32,
    pub active: u32,
    /// Per server: failure streak, ns it still rests.
    pub health: Vec<(u32, u64)>,
    pub since_check_ns: u64,
    pub batch_age_ns: Option<u64>,
    pub outage_logged: bool,
    pub auth_failing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CarriedConn {
    Connected,
    Connecting { attempt: u32 },
    BackingOff { attempt: u32, in_ns: u64 },
}

impl<P> Carried<P> {
    /// The same with `f` applied to each point.
    fn map_points<'a, Q>(&'a self, f: impl FnMut(&'a P) -> Q) -> Carried<Q> {
        Carried {
            counters: self.counters.clone(),
            points: self.points.iter().map(f).collect(),
            conn: self.conn,
            streak: self.streak,
            active: self.active,
            health: self.health.clone(),
            since_check_ns: self.since_check_ns,
            batch_age_ns: self.batch_age_ns,
            outage_logged: self.outage_logged,
            auth_failing: self.auth_failing,
        }
    }
}

impl Carried<&Point> {
    pub fn to_owned(&self) -> Carried {
        self.map_points(|p| (*p).clone())
    }
}

impl Carried {
    pub fn as_refs(&self) -> Carried<&Point> {
        self.map_points(|p| p)
    }
}

/// One server's record, for failover across `urls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Health {
    /// Failures since its last delivery; picks its next delay.
    streak: u32,
    /// Not tried again before this.
    down_until: Instant,
}

/// Counters, as `stats` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub accepted: u64,
    pub delivered: u64,
    pub backlogged: u64,
    pub dropped: u64,
    pub rejected: u64,
    pub reconnect_attempts: u64,
    /// `dropped` by reason.
    pub drops: Drops,
}

/// A snapshot of what the policy holds, for `stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub counters: Counters,
    pub backlog_points: u64,
    pub backlog_bytes: u64,
    /// Accepted points not yet delivered: batch, ready, in flight, backlog.
    pub pending: u64,
    pub state: &'static str,
}

pub struct Policy<B: Backlog> {
    s: Settings,
    storage: Storage<B>,
    conn: Conn,
    /// Failures since the last proven delivery; picks the next delay.
    streak: u32,
    batch: Vec<Point>,
    batch_started: Option<Instant>,
    ready: Ready,
    /// Requests out, oldest first: a ping, a create, a backlog batch or a
    /// piece of a rework alone; or up to `max_requests_in_flight` memory
    /// batches.
    flights: VecDeque<InFlight>,
    rework: Option<Rework>,
    next_id: u64,
    need_create_db: bool,
    /// A 404 "database not found" already led to a create: the next one
    /// backs off instead of looping.
    created_on_404: bool,
    /// Credentials are being refused (logged once until a delivery).
    auth_failing: bool,
    /// The reason of the last rejection logged at warning level.
    last_reject: String,
    /// The server's `Retry-After`, used for the next delay instead of the
    /// backoff schedule.
    server_delay: Option<u64>,
    /// Index of the server in use in `Settings::endpoints`.
    active: usize,
    /// With several servers (`urls`): each one's own failures.
    health: Vec<Health>,
    dead: VecDeque<DeadLetter>,
    /// Last successful connection check, for periodic reconnection.
    last_check: Instant,
    outage_logged: bool,
    /// Backlog points flushed since the drain began (for its log lines).
    draining: Option<Drain>,
    /// `counters.backlogged` after the last durable write made while
    /// connected to a backlog that held only such writes: while it still
    /// matches, nothing else entered the backlog (a quiet `Drain`).
    durable_mark: Option<u64>,
    durable_refused: durable::Refusals,
    counters: Counters,
    /// Times for points that came without one.
    stamper: Stamper,
    jitter: Jitter,
    logs: VecDeque<LogLine>,
    /// The latest (monotonic, wall) pair seen, to turn wall-clock deadlines
    /// (the age limit) into monotonic wake-ups.
    clock: (Instant, i64),
}

impl<B: Backlog> Policy<B> {
    /// A policy that will check the server on its first `poll_transmit`.
    pub fn new(settings: Settings, backlog: B, now: Instant, wall: i64) -> Self {
        let seed = settings
            .name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        let mut p = Policy {
            storage: Storage::new(backlog, &settings, now),
            s: settings,
            conn: Conn::Connecting { attempt: 0 },
            streak: 0,
            batch: Vec::new(),
            batch_started: None,
            ready: Ready::default(),
            flights: VecDeque::new(),
            rework: None,
            next_id: 1,
            need_create_db: false,
            created_on_404: false,
            auth_failing: false,
            last_reject: String::new(),
            server_delay: None,
            active: 0,
            health: Vec::new(),
            dead: VecDeque::new(),
            last_check: now,
            outage_logged: false,
            draining: None,
            durable_mark: None,
            durable_refused: durable::Refusals::default(),
            counters: Counters::default(),
            stamper: Stamper::default(),
            jitter: Jitter::new(seed),
            logs: VecDeque::new(),
            clock: (now, wall),
        };
        p.health = vec![Health::default(); p.s.endpoints.len()];
        if !p.storage.is_empty() {
            p.log(
                Level::Info,
                format!(
                    "Found {} backlog points from an earlier run",
                    p.storage.len()
                ),
            );
        }
        p
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    pub fn backlog(&self) -> &B {
        self.storage.backlog()
    }

    /// The backlog itself (tests and simulations inject faults through it).
    pub fn backlog_mut(&mut self) -> &mut B {
        self.storage.backlog_mut()
    }

    /// Points held in memory because the backlog could not be written.
    pub fn held_points(&self) -> u64 {
        self.storage.held_points()
    }

    /// Count points found damaged in the backlog at open.
    pub fn count_corrupt(&mut self, n: u64) {
        self.with_storage(|_, r| r.drops.add(DropReason::Corrupt, n));
    }

    /// Give the backlog back (tests: a crash keeps only what is on disk).
    pub fn into_backlog(self) -> B {
        self.storage.into_backlog()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The stamper's state, for a snapshot.
    pub fn stamper(&self) -> &Stamper {
        &self.stamper
    }

    /// Carry on with a predecessor's stamper (a swap).
    pub fn resume_stamps(&mut self, stamper: Stamper) {
        self.stamper = stamper;
    }

    /// Count points refused before they reached the policy (malformed).
    pub fn count_rejected(&mut self, n: u64) {
        self.counters.rejected += n;
    }

    /// The points only in memory, oldest first, borrowed (a snapshot of a
    /// large batch must not need twice its memory).
    fn memory_points(&self) -> Vec<&Point> {
        let mut points = Vec::new();
        if let Some(rw) = self.rework.as_ref().filter(|r| !r.in_backlog) {
            points.extend(rw.points());
        }
        for p in self.memory_flights() {
            points.extend(p.iter());
        }
        points.extend(self.storage.held());
        points.extend(self.ready.iter());
        points.extend(self.batch.iter());
        points
    }

    /// Everything a successor instance (maybe another version) needs to
    /// carry on where this one stops: counters, points only in memory,
    /// connection and backoff state. Times are kept as durations from
    /// `now`, so the successor's clock origin does not matter.
    pub fn carry(&self, now: Instant) -> Carried<&Point> {
        let left = |t: Instant| t.saturating_sub(now);
        Carried {
            counters: self.counters.clone(),
            points: self.memory_points(),
            conn: match self.conn {
                Conn::Connected => CarriedConn::Connected,
                Conn::Connecting { attempt } => CarriedConn::Connecting { attempt },
                Conn::BackingOff { attempt, at } => CarriedConn::BackingOff {
                    attempt,
                    in_ns: left(at),
                },
            },
            streak: self.streak,
            active: self.active as u32,
            health: self
                .health
                .iter()
                .map(|h| (h.streak, left(h.down_until)))
                .collect(),
            since_check_ns: now.saturating_sub(self.last_check),
            batch_age_ns: self.batch_started.map(|t| now.saturating_sub(t)),
            outage_logged: self.outage_logged,
            auth_failing: self.auth_failing,
        }
    }

    /// Continue from a predecessor's `carry` (on a fresh policy over the
    /// same backlog).
    pub fn resume(&mut self, c: Carried, now: Instant, wall: i64) {
        // The backlog was opened by the predecessor first: not news.
        self.logs.clear();
        let n = c.points.len();
        self.conn = match c.conn {
            CarriedConn::Connected => Conn::Connected,
            CarriedConn::Connecting { attempt } => Conn::Connecting { attempt },
            CarriedConn::BackingOff { attempt, in_ns } => Conn::BackingOff {
                attempt,
                at: now + in_ns,
            },
        };
        // Full batches wait to be sent, the rest is the batch being
        // filled: no disk write here, so the swap pause stays short.
        let bs = self.s.batch_size as usize;
        let mut points = c.points;
        let batch = points.split_off(points.len() - points.len() % bs);
        let mut it = points.into_iter();
        while it.len() > 0 {
            self.ready.push_back(it.by_ref().take(bs).collect());
        }
        self.batch = batch;
        if !self.batch.is_empty() {
            let age = c.batch_age_ns.unwrap_or(0);
            self.batch_started = Some(now.saturating_sub(age));
        }
        self.counters = c.counters;
        self.clock = (now, wall);
        self.streak = c.streak;
        if c.health.len() == self.health.len() {
            self.active = c.active as usize;
            for (h, (streak, in_ns)) in self.health.iter_mut().zip(c.health) {
                *h = Health {
                    streak,
                    down_until: now + in_ns,
                };
            }
        }
        self.last_check = now.saturating_sub(c.since_check_ns);
        self.outage_logged = c.outage_logged;
        self.auth_failing = c.auth_failing;
        self.log(
            Level::Info,
            format!(
                "Resumed from a snapshot: {n} points from memory, {} in the backlog",
                self.storage.len()
            ),
        );
    }

    pub fn stats(&self) -> Stats {
        let in_memory = (self.batch.len() + self.ready.points()) as u64;
        let flying = self.memory_flights().map(|p| p.len() as u64).sum::<u64>()
            + self
                .rework
                .as_ref()
                .filter(|r| !r.in_backlog)
                .map_or(0, |r| r.points().count() as u64);
        Stats {
            counters: self.counters.clone(),
            backlog_points: self.storage.len(),
            backlog_bytes: self.storage.bytes(),
            pending: in_memory + flying + self.storage.held_points() + self.storage.len(),
            state: match self.conn {
                Conn::Connected if self.draining.is_some_and(|d| !d.quiet) => "draining",
                Conn::Connected => "connected",
                Conn::Connecting { .. } => "connecting",
                Conn::BackingOff { .. } => "backing-off",
            },
        }
    }

    /// Points the policy takes now without putting them in the backlog
    /// while the server is up (`u64::MAX`: there is no such bound, as the
    /// server is down and points go to the backlog anyway). A replayable
    /// source writes at most this much, so a server slower than its input
    /// slows the input instead of filling the backlog; 0 while the first
    /// connection check is under way.
    pub fn room(&self) -> u64 {
        match self.conn {
            Conn::Connecting { attempt: 0 } => 0,
            Conn::Connected => {
                let held = self.ready.points() + self.batch.len();
                if self.ready.bytes() >= MAX_READY_BYTES / 2 {
                    return 0;
                }
                self.ready_capacity().saturating_sub(held) as u64
            }
            Conn::Connecting { .. } | Conn::BackingOff { .. } => u64::MAX,
        }
    }

    /// Points held for sending while connected before they spill.
    fn ready_capacity(&self) -> usize {
        (MAX_READY_BATCHES * self.s.batch_size as usize).max(MIN_READY_POINTS)
    }

    /// Is a request with this id still awaited? The driver drops any other.
    pub fn awaits(&self, id: u64) -> bool {
        self.flights
            .iter()
            .any(|f| f.id == id && f.answer.is_none())
    }

    /// The points of the memory batches out, oldest first.
    fn memory_flights(&self) -> impl Iterator<Item = &Vec<Point>> {
        self.flights.iter().filter_map(|f| match &f.what {
            Flight::Write(Source::Memory(p)) => Some(p),
            _ => None,
        })
    }

    /// May another memory batch go out beside those already out? Only
    /// while nothing else is due: the backlog, a rework, a check.
    fn may_add_flight(&self, now: Instant) -> bool {
        let all_memory = self
            .flights
            .back()
            .is_none_or(|f| matches!(f.what, Flight::Write(Source::Memory(_))));
        all_memory
            && self.flights.len() < self.s.max_requests_in_flight as usize
            && self.conn == Conn::Connected
            && !self.need_create_db
            && !self.periodic_due(now)
            && self.rework.is_none()
            && self.storage.is_empty()
            && (self.storage.held_points() > 0 || !self.ready.is_empty())
    }

    /// Give up on the requests out from the `keep`-th on: their memory
    /// points go to the backlog, oldest first (after whatever the caller
    /// put there), and their answers are no longer awaited. One that
    /// reached the server is sent again later: InfluxDB overwrites the
    /// identical points.
    fn abandon_flights(&mut self, keep: usize) {
        while self.flights.len() > keep {
            let Some(f) = self.flights.remove(keep) else {
                break;
            };
            match f.what {
                Flight::Write(Source::Memory(points)) => {
                    self.put(points);
                }
                Flight::Write(Source::Backlog(_)) => self.storage.release(),
                _ => {}
            }
        }
    }

    // ----- commands from the pipeline -----

    /// Accept validated points; those timestamped `UNSTAMPED` get their
    /// time here (see `stamp`).
    pub fn write(&mut self, mut points: Vec<Point>, now: Instant, wall: i64) {
        self.clock = (now, wall);
        self.stamper
            .stamp(&mut points, wall, self.s.precision.nanos());
        self.counters.accepted += points.len() as u64;
        for p in points {
            if self.batch.is_empty() {
                self.batch_started = Some(now);
            }
            self.batch.push(p);
            if self.batch.len() >= self.s.batch_size as usize {
                self.seal_batch();
            }
        }
        self.sync_backlog();
    }

    /// Send the current batch without waiting for `batch_timeout`.
    pub fn flush(&mut self, now: Instant, wall: i64) {
        self.clock = (now, wall);
        self.seal_batch();
        self.sync_backlog();
    }

    /// Stop: whatever is not delivered goes to the backlog (which, with
    /// persistent storage disabled, is lost with the process: said in a log).
    pub fn shutdown(&mut self, now: Instant, wall: i64) {
        self.clock = (now, wall);
        self.seal_batch();
        self.spill_in_flight();
        self.drop_rework();
        while let Some(b) = self.ready.pop_front() {
            self.put(b);
        }
        self.flights.clear();
        self.storage.release();
        self.sync_backlog();
        let held = self.storage.held_points();
        if held > 0 {
            self.log(
                Level::Error,
                format!("The backlog could not be written: {held} points held in memory are lost at exit"),
            );
        }
        if !self.s.enable_persistent_storage && !self.storage.is_empty() {
            let n = self.storage.len();
            self.log(
                Level::Warn,
                format!("Persistent storage is disabled: {n} undelivered points are lost at exit"),
            );
        }
    }

    // ----- handlers of what happened -----

    /// A request ended.
    pub fn handle_outcome(&mut self, id: u64, outcome: Outcome, now: Instant, wall: i64) {
        self.clock = (now, wall);
        let Some(flight) = self
            .flights
            .iter_mut()
            .find(|f| f.id == id && f.answer.is_none())
        else {
            return; // timed out or abandoned already, or unknown
        };
        flight.answer = Some(outcome);
        // Answers are decided in the order their requests went out, each
        // as if it were the only one: a younger answer waits for its elders.
        while let Some(f) = self.flights.pop_front_if(|f| f.answer.is_some()) {
            if let Some(outcome) = f.answer {
                self.decide(f.what, outcome, now, wall);
            }
        }
        self.sync_backlog();
    }

    fn decide(&mut self, what: Flight, outcome: Outcome, now: Instant, wall: i64) {
        match (what, outcome) {
            (what, Outcome::Failed { reason }) => self.on_failure(what, &reason, now),
            (Flight::Ping { periodic }, Outcome::Answer { status, body, .. }) => {
                if (200..300).contains(&status) {
                    self.on_connected(periodic, now);
                } else {
                    let reason = format!(
                        "/ping answered HTTP {status}: {}",
                        http::server_reason(&body)
                    );
                    self.on_failure(Flight::Ping { periodic }, &reason, now);
                }
            }
            (Flight::CreateDatabase, Outcome::Answer { status, body, .. }) => {
                if !(200..300).contains(&status) {
                    let level = if status == 401 || status == 403 {
                        Level::Warn
                    } else {
                        Level::Debug
                    };
                    let reason = http::server_reason(&body);
                    self.log(
                        level,
                        format!(
                            "Could not create database {}: HTTP {status} {reason}",
                            self.s.database
                        ),
                    );
                }
            }
            (
                Flight::Write(source),
                Outcome::Answer {
                    status,
                    retry_after,
                    body,
                },
            ) => {
                let cap = secs(self.s.max_reconnect_delay);
                let verdict =
                    http::classify(self.s.api, status, retry_after.as_deref(), &body, wall, cap);
                self.on_write_verdict(source, verdict, now)
            }
        }
    }

    /// Timers: request deadline, batch timeout, age limit. Call before
    /// `poll_transmit` on every turn.
    pub fn tick(&mut self, now: Instant, wall: i64) {
        self.clock = (now, wall);
        // The oldest request out has the earliest deadline.
        if let Some(f) = self.flights.pop_front_if(|f| now >= f.deadline) {
            let reason = format!(
                "no answer within connection_timeout ({} s)",
                self.s.connection_timeout
            );
            self.on_failure(f.what, &reason, now);
        }
        if self
            .batch_started
            .is_some_and(|t| now >= t + secs(self.s.batch_timeout))
        {
            self.seal_batch();
        }
        self.with_storage(|st, r| st.tick(now, wall, r));
    }

    // ----- polls -----

    /// The next request to send, if any is due now.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Request> {
        if !self.flights.is_empty() && !self.may_add_flight(now) {
            return None;
        }
        let id = self.next_id;
        let (what, request) = match self.conn {
            Conn::BackingOff { at, .. } if now < at => return None,
            Conn::BackingOff { attempt, .. } => {
                self.conn = Conn::Connecting { attempt };
                self.counters.reconnect_attempts += 1;
                let addr = self.address();
                self.log(
                    Level::Info,
                    format!("Attempting to reconnect to InfluxDB at {addr} (attempt {attempt})"),
                );
                (
                    Flight::Ping { periodic: false },
                    Request::ping(id, &self.s, self.active),
                )
            }
            Conn::Connecting { .. } => (
                Flight::Ping { periodic: false },
                Request::ping(id, &self.s, self.active),
            ),
            Conn::Connected if self.need_create_db => {
                self.need_create_db = false;
                (
                    Flight::CreateDatabase,
                    Request::create_database(id, &self.s, self.active),
                )
            }
            Conn::Connected if self.periodic_due(now) => {
                let addr = self.address();
                let every = self.s.periodic_reconnect_interval;
                self.log(
                    Level::Info,
                    format!(
                        "Performing periodic reconnect to InfluxDB at {addr} (every {every} s)"
                    ),
                );
                (
                    Flight::Ping { periodic: true },
                    Request::ping(id, &self.s, self.active),
                )
            }
            Conn::Connected if self.rework.is_some() => {
                let piece = self.rework.as_ref().and_then(|r| r.pieces.last())?;
                let req = Request::write(id, &self.s, self.active, piece);
                (Flight::Write(Source::Piece), req)
            }
            Conn::Connected if !self.storage.is_empty() => {
                let max = self.s.batch_size as usize;
                let points = match self.with_storage(|st, r| st.peek(max, r)) {
                    Ok(p) if !p.is_empty() => p,
                    Ok(_) => return None,
                    Err(e) => {
                        self.log(Level::Error, format!("Could not read the backlog: {e}"));
                        return None;
                    }
                };
                if self.draining.is_none() {
                    let announced = self.storage.len();
                    let quiet = self.durable_mark == Some(self.counters.backlogged);
                    self.draining = Some(Drain {
                        announced,
                        written: 0,
                        quiet,
                    });
                    if !quiet {
                        self.log(
                            Level::Info,
                            format!("Flushing {announced} backlog points to InfluxDB"),
                        );
                    }
                }
                self.storage.reserve(points.len() as u64);
                let req = Request::write(id, &self.s, self.active, &points);
                (Flight::Write(Source::Backlog(points)), req)
            }
            Conn::Connected => {
                // Held points (the backlog could not take them) are older
                // than the ready batches.
                let points = self
                    .storage
                    .take_held()
                    .or_else(|| self.ready.pop_front())?;
                let req = Request::write(id, &self.s, self.active, &points);
                (Flight::Write(Source::Memory(points)), req)
            }
        };
        self.next_id += 1;
        self.flights.push_back(InFlight {
            id,
            what,
            deadline: now + secs(self.s.connection_timeout),
            answer: None,
        });
        Some(request)
    }

    /// When the policy next needs a `tick`, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (now, wall) = self.clock;
        let mut at: Option<Instant> = None;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some(f) = self.flights.iter().find(|f| f.answer.is_none()) {
            consider(f.deadline);
            if self.may_add_flight(now) {
                consider(now);
            }
        } else {
            match self.conn {
                Conn::BackingOff { at, .. } => consider(at),
                Conn::Connecting { .. } => consider(now),
                Conn::Connected => {
                    if self.need_create_db
                        || self.rework.is_some()
                        || !self.ready.is_empty()
                        || !self.storage.is_empty()
                        || self.storage.held_points() > 0
                    {
                        consider(now);
                    }
                    if self.s.periodic_reconnect_interval > 0.0 {
                        consider(self.last_check + secs(self.s.periodic_reconnect_interval));
                    }
                }
            }
        }
        if let Some(t) = self.batch_started {
            consider(t + secs(self.s.batch_timeout));
        }
        if let Some(t) = self.storage.poll_timeout(now, wall) {
            consider(t);
        }
        at
    }

    /// The next log line for the operator.
    pub fn poll_log(&mut self) -> Option<LogLine> {
        self.logs.pop_front()
    }

    /// The next lines refused for good, for the dead-letter file.
    pub fn poll_dead_letter(&mut self) -> Option<DeadLetter> {
        self.dead.pop_front()
    }

    // ----- internals -----

    fn log(&mut self, level: Level, message: String) {
        self.logs.push_back(LogLine { level, message });
    }

    fn periodic_due(&self, now: Instant) -> bool {
        self.s.periodic_reconnect_interval > 0.0
            && now >= self.last_check + secs(self.s.periodic_reconnect_interval)
    }

    /// Move the current batch on: to the send queue while connected and
    /// nothing older waits in the backlog, else to the backlog.
    fn seal_batch(&mut self) {
        self.batch_started = None;
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if self.conn == Conn::Connected {
            self.ready.push_back(batch);
            let held = self.ready.bytes();
            let most = self.ready_capacity().div_ceil(self.s.batch_size as usize);
            if self.ready.len() > most || (self.ready.len() > 1 && held > MAX_READY_BYTES) {
                // The server is slower than the input: keep order by moving
                // the in-flight batch and the oldest ready one to the backlog.
                self.spill_in_flight();
                if let Some(oldest) = self.ready.pop_front() {
                    self.put(oldest);
                }
            }
        } else {
            self.put(batch);
        }
    }

    /// If a memory-only write is in flight, copy its points into the
    /// backlog (whose head they become) so they survive a crash and keep
    /// their place in line; its success then consumes them from there.
    fn spill_in_flight(&mut self) {
        // Younger memory batches out go to the backlog behind the oldest.
        let keep = usize::from(
            self.flights
                .front()
                .is_some_and(|f| matches!(f.what, Flight::Write(Source::Memory(_)))),
        );
        let Some(flight) = self.flights.front_mut() else {
            return;
        };
        let Flight::Write(source @ Source::Memory(_)) = &mut flight.what else {
            return;
        };
        let Source::Memory(points) = std::mem::replace(source, Source::Piece) else {
            unreachable!()
        };
        // Backlog empty while a memory write flies: these become its head.
        let kept = if self.put_reserved(&points) {
            Source::Backlog(points)
        } else {
            self.put(points.clone());
            Source::Memory(points)
        };
        if let Some(InFlight {
            what: Flight::Write(source),
            ..
        }) = self.flights.front_mut()
        {
            *source = kept;
        }
        self.abandon_flights(keep);
    }

    /// Put a batch in the backlog; false if it could only be held in
    /// memory (backlog not writable).
    fn put(&mut self, points: Vec<Point>) -> bool {
        let (now, wall) = self.clock;
        self.with_storage(|st, r| st.put(points, now, wall, r))
    }

    /// Append a memory batch as the reserved head of the empty backlog.
    fn put_reserved(&mut self, points: &[Point]) -> bool {
        let (now, wall) = self.clock;
        self.with_storage(|st, r| st.put_reserved(points, now, wall, r))
    }

    fn sync_backlog(&mut self) {
        let now = self.clock.0;
        self.with_storage(|st, r| st.maybe_sync(now, r));
    }

    /// Run a storage operation with the policy's logs and counters.
    fn with_storage<T>(&mut self, f: impl FnOnce(&mut Storage<B>, &mut Report) -> T) -> T {
        let mut r = Report {
            logs: &mut self.logs,
            drops: &mut self.counters.drops,
            stored: &mut self.counters.backlogged,
        };
        let out = f(&mut self.storage, &mut r);
        self.counters.dropped = self.counters.drops.total();
        out
    }

    fn on_connected(&mut self, periodic: bool, now: Instant) {
        self.last_check = now;
        match self.conn {
            Conn::Connected if periodic => {
                self.log(
                    Level::Info,
                    "Periodic reconnect: connection to InfluxDB is healthy".into(),
                );
            }
            Conn::Connecting { attempt: 0 } => {
                self.log(
                    Level::Info,
                    format!("Connected to InfluxDB at {}", self.address()),
                );
                self.need_create_db = self.creates_database();
            }
            _ => {
                self.log(Level::Info, "Successfully reconnected to InfluxDB".into());
                self.need_create_db = self.creates_database();
            }
        }
        self.conn = Conn::Connected;
        self.outage_logged = false;
        if self.storage.is_empty()
            && self.storage.held_points() == 0
            && self.ready.is_empty()
            && self.rework.is_none()
        {
            self.streak = 0;
        }
    }

    fn creates_database(&self) -> bool {
        self.s.api == Api::V1 && self.s.auto_create_database
    }

    /// The server in use, `host:port`, for log lines.
    fn address(&self) -> String {
        self.s.endpoints[self.active].authority()
    }

    fn on_write_verdict(&mut self, source: Source, verdict: Verdict, now: Instant) {
        let (points, from_backlog) = match source {
            Source::Memory(p) => (p, false),
            Source::Backlog(p) => (p, true),
            Source::Piece => match self.rework.as_mut().and_then(|r| r.pieces.pop()) {
                Some(p) => (p, self.rework.as_ref().is_some_and(|r| r.in_backlog)),
                None => return,
            },
        };
        let piece = self.rework.is_some();
        let n = points.len();
        let refused_all = |dropped: Option<u64>| n == 1 || dropped.is_some_and(|d| d >= n as u64);
        match verdict {
            Verdict::Delivered => self.finish(points, from_backlog, &[], ""),
            Verdict::Partial {
                lines: Some(lines),
                reason,
                ..
            } => self.finish(points, from_backlog, &lines, &reason),
            Verdict::Partial {
                dropped, reason, ..
            } if refused_all(dropped) => {
                let all: Vec<usize> = (0..n).collect();
                self.finish(points, from_backlog, &all, &reason)
            }
            Verdict::BadData { reason } if n == 1 => {
                self.finish(points, from_backlog, &[0], &reason)
            }
            Verdict::TooLarge { reason } if n == 1 => {
                let reason = format!("{reason} (a single point larger than the server accepts)");
                self.finish(points, from_backlog, &[0], &reason)
            }
            Verdict::Partial { reason, .. } | Verdict::BadData { reason } => {
                if !piece {
                    self.log(
                        Level::Warn,
                        format!("InfluxDB refused {n} points ({reason}); resending them in halves to find the bad lines"),
                    );
                }
                self.split(points, from_backlog, piece);
            }
            Verdict::TooLarge { reason } => {
                self.log(
                    Level::Warn,
                    format!("A batch of {n} points is too large for InfluxDB ({reason}); sending it in halves"),
                );
                self.split(points, from_backlog, piece);
            }
            Verdict::NoDatabase { reason } if self.creates_database() && !self.created_on_404 => {
                self.created_on_404 = true;
                self.need_create_db = true;
                self.log(
                    Level::Warn,
                    format!(
                        "Database {} does not exist ({reason}); creating it (auto_create_database = true)",
                        self.s.database
                    ),
                );
                self.give_back(points, from_backlog, piece);
            }
            Verdict::NoDatabase { reason } => {
                let hint = if self.creates_database() {
                    "creating it did not help; check the user's rights"
                } else {
                    "create it or set auto_create_database = true"
                };
                self.log(
                    Level::Error,
                    format!(
                        "Database {} does not exist on {} ({hint}); keeping the data and retrying",
                        self.s.database,
                        self.address()
                    ),
                );
                self.give_back(points, from_backlog, piece);
                self.on_failure(Flight::Write(Source::Piece), &reason, now);
            }
            Verdict::Auth { status, reason } => {
                if !self.auth_failing {
                    self.auth_failing = true;
                    let what = match self.s.api {
                        Api::V1 if self.s.token.is_empty() => "username and password",
                        _ => "token",
                    };
                    self.log(
                        Level::Error,
                        format!(
                            "Authentication failed: InfluxDB at {} answered HTTP {status}; check the {what} of output [{}]. Keeping the data and retrying",
                            self.address(),
                            self.s.name
                        ),
                    );
                }
                self.give_back(points, from_backlog, piece);
                self.on_failure(Flight::Write(Source::Piece), &reason, now);
            }
            Verdict::Retry { after, reason } => {
                let reason = match after {
                    Some(d) => {
                        self.server_delay = Some(d);
                        format!("{reason} (server asked to retry after {} s)", fmt_secs(d))
                    }
                    None => reason,
                };
                self.give_back(points, from_backlog, piece);
                self.on_failure(Flight::Write(Source::Piece), &reason, now);
            }
        }
    }

    /// Undo taking a write's points: a piece goes back on top of its
    /// rework, a backlog batch stays reserved until `on_failure` releases
    /// it, a memory batch goes to the backlog.
    fn give_back(&mut self, points: Vec<Point>, from_backlog: bool, piece: bool) {
        if piece {
            if let Some(rw) = self.rework.as_mut() {
                rw.pieces.push(points);
                return;
            }
        }
        if from_backlog {
            self.storage.release();
        } else {
            self.put(points);
        }
    }

    /// Resend `points` in halves, left first.
    fn split(&mut self, mut points: Vec<Point>, from_backlog: bool, piece: bool) {
        let right = points.split_off(points.len() / 2);
        if !piece {
            let in_backlog = from_backlog || self.put_reserved(&points_concat(&points, &right));
            self.rework = Some(Rework {
                pieces: Vec::new(),
                in_backlog,
            });
            // The rework goes alone: younger batches out wait behind it.
            self.abandon_flights(0);
        }
        if let Some(rw) = self.rework.as_mut() {
            rw.pieces.push(right);
            rw.pieces.push(points);
        }
    }

    /// End the rework (a failure, or shutdown): its points go back to the
    /// backlog, or stay there.
    fn drop_rework(&mut self) {
        if let Some(rw) = self.rework.take() {
            if rw.in_backlog {
                self.storage.release();
            } else {
                let points: Vec<Point> = rw.points().cloned().collect();
                self.put(points);
            }
        }
    }

    /// A write is done with: the points at `rejected` (indices) were
    /// refused for good and go to the dead-letter file, the rest are in.
    fn finish(&mut self, points: Vec<Point>, from_backlog: bool, rejected: &[usize], reason: &str) {
        let n = points.len() as u64;
        if from_backlog {
            match self.storage.consume_reserved(n) {
                // Points a limit dropped while they were out reached the
                // server all the same: they count as answered, not dropped.
                Ok(done) => {
                    self.counters.drops.remove(&done.reclaimed);
                    self.counters.dropped = self.counters.drops.total();
                }
                Err(e) => self.log(
                    Level::Error,
                    format!("Could not advance the backlog cursor: {e}"),
                ),
            }
        }
        let bad: Vec<&Point> = rejected.iter().filter_map(|i| points.get(*i)).collect();
        let bad_n = bad.len() as u64;
        self.counters.rejected += bad_n;
        self.counters.delivered += n - bad_n;
        self.streak = 0;
        self.health[self.active].streak = 0;
        self.auth_failing = false;
        self.created_on_404 = false;
        if !bad.is_empty() {
            let lines = http::body_of(&bad, self.s.precision.nanos());
            let level = if reason == self.last_reject {
                Level::Debug
            } else {
                Level::Warn
            };
            self.last_reject = reason.to_string();
            self.log(
                level,
                format!(
                    "InfluxDB rejected {} of {n} points for good ({reason}); they are in the dead-letter file",
                    bad.len()
                ),
            );
            self.dead.push_back(DeadLetter {
                reason: reason.to_string(),
                lines,
                points: bad.len() as u64,
            });
        }
        if self.rework.as_ref().is_some_and(|r| r.pieces.is_empty()) {
            self.rework = None;
        }
        if from_backlog {
            let drain = self.draining.get_or_insert(Drain::default());
            drain.written += n;
            if self.storage.is_empty() {
                let Drain {
                    announced,
                    written,
                    quiet,
                } = self.draining.take().unwrap_or_default();
                // Something other than routine durable writes joined it.
                let quiet = quiet && self.durable_mark == Some(self.counters.backlogged);
                let level = if quiet { Level::Debug } else { Level::Info };
                let mut line = format!("Successfully wrote {written} backlog points to InfluxDB");
                if written > announced {
                    // The server was slower than the input while draining.
                    line.push_str(&format!(
                        " ({} joined the backlog during the flush)",
                        written - announced
                    ));
                }
                self.log(level, line);
            }
        }
    }

    /// A request failed: keep its points, leave the connected state, and
    /// schedule the next attempt.
    fn on_failure(&mut self, what: Flight, reason: &str, now: Instant) {
        // What is in the backlog now waits for a recovery, which is news.
        self.durable_mark = None;
        if self.draining.is_some_and(|d| d.quiet) {
            self.draining = None;
        }
        match what {
            Flight::Write(Source::Memory(points)) => {
                self.put(points);
            }
            Flight::Write(Source::Backlog(_)) => self.storage.release(),
            _ => {}
        }
        self.abandon_flights(0);
        self.drop_rework();
        while let Some(b) = self.ready.pop_front() {
            self.put(b);
        }
        if self.s.endpoints.len() > 1 {
            return self.fail_over(reason, now);
        }
        let attempt = match self.conn {
            Conn::Connecting { attempt } if attempt > 0 => {
                let max = self.s.reconnect_attempts;
                let next = attempt + 1;
                let delay = self.next_delay(next);
                self.log(
                    Level::Warn,
                    format!(
                        "Reconnect attempt {attempt} failed: {reason}; next attempt in {} s",
                        fmt_secs(delay)
                    ),
                );
                if attempt == max {
                    let every = self.s.max_reconnect_delay;
                    self.log(
                        Level::Warn,
                        format!("Could not reconnect after {max} attempts; keeping data in the backlog and retrying every {every} s"),
                    );
                }
                self.streak = next;
                self.conn = Conn::BackingOff {
                    attempt: next,
                    at: now + delay,
                };
                return;
            }
            _ => {
                self.streak += 1;
                self.streak
            }
        };
        self.log(
            Level::Warn,
            format!(
                "Connection to InfluxDB at {} failed: {reason}",
                self.address()
            ),
        );
        if !self.outage_logged {
            self.outage_logged = true;
            self.log(
                Level::Warn,
                "Not connected to InfluxDB, storing data in backlog".into(),
            );
        }
        let delay = self.next_delay(attempt);
        self.conn = Conn::BackingOff {
            attempt,
            at: now + delay,
        };
    }

    /// Several servers: rest the failing one for its own backoff delay and
    /// move to the next that is not resting, or wait for the first to rest
    /// its time out.
    fn fail_over(&mut self, reason: &str, now: Instant) {
        let from = self.active;
        let streak = self.health[from].streak + 1;
        let delay = self.next_delay(streak);
        self.health[from] = Health {
            streak,
            down_until: now + delay,
        };
        let addr = self.address();
        self.log(
            Level::Warn,
            format!(
                "InfluxDB at {addr} failed: {reason}; resting it for {} s",
                fmt_secs(delay)
            ),
        );
        let n = self.health.len();
        let next = (1..n)
            .map(|k| (from + k) % n)
            .find(|&i| self.health[i].down_until <= now);
        if let Some(i) = next {
            self.active = i;
            self.conn = Conn::Connecting { attempt: 0 };
            let to = self.address();
            self.log(Level::Info, format!("Failing over from {addr} to {to}"));
            return;
        }
        let (i, at) = self
            .health
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.down_until))
            .min_by_key(|&(_, t)| t)
            .expect("at least one server");
        self.active = i;
        self.conn = Conn::BackingOff {
            attempt: self.health[i].streak,
            at,
        };
        if !self.outage_logged {
            self.outage_logged = true;
            self.log(
                Level::Warn,
                format!("All {n} InfluxDB servers failed; storing data in backlog"),
            );
        }
    }

    fn next_delay(&mut self, attempt: u32) -> u64 {
        if let Some(d) = self.server_delay.take() {
            return d;
        }
        let base = backoff::delay_ns(&self.s, attempt);
        self.jitter.apply(base, self.s.reconnect_jitter)
    }
}

fn secs(s: f64) -> u64 {
    (s * NANOS) as u64
}

fn fmt_secs(ns: u64) -> String {
    let s = ns as f64 / NANOS;
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.3}")
    }
}

fn points_concat(a: &[Point], b: &[Point]) -> Vec<Point> {
    a.iter().chain(b).cloned().collect()
}

#[cfg(test)]
mod answer_tests;
#[cfg(test)]
mod durable_tests;
#[cfg(test)]
mod tests;
