//! Deterministic simulation: the real policy on a simulated clock against a
//! simulated server, so hours of outage play in milliseconds. Used by the
//! unit tests, by `influx-sink simulate` (the capacity planner) and by the
//! benchmarks.

use std::collections::VecDeque;

use crate::backlog::{Backlog, BacklogError};
use crate::config::{Settings, NANOS};
use crate::point::Point;
use crate::policy::{DeadLetter, Instant, LogLine, Outcome, Policy, Purpose, Refusal, Request};

/// The fields after `seq` of the points the host's generator makes (what
/// a solar inverter reports: a 20-field point is about 545 bytes of line
/// protocol, like the gateway's); the component's tests make the same.
pub const INVERTER_FIELDS: [&str; 19] = [
    "pv1_voltage_v",
    "pv1_current_a",
    "pv2_voltage_v",
    "pv2_current_a",
    "grid_voltage_l1_v",
    "grid_voltage_l2_v",
    "grid_voltage_l3_v",
    "grid_current_l1_a",
    "grid_current_l2_a",
    "grid_current_l3_a",
    "active_power_w",
    "reactive_power_var",
    "power_factor",
    "grid_frequency_hz",
    "internal_temp_c",
    "daily_energy_kwh",
    "total_energy_kwh",
    "insulation_res_kohm",
    "efficiency_pct",
];

/// How the simulated server behaves while it is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownMode {
    /// Connections are refused at once.
    Refuse,
    /// Connections are accepted and never answered.
    Hang,
}

/// How the simulated server refuses lines that `SimServer::bad` marks, as
/// the real servers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectMode {
    /// InfluxDB 1.x: stores the good lines, answers 400 `partial write:
    /// ... dropped=N`.
    PartialV1,
    /// InfluxDB 2.x on a parse error: stores nothing, answers 400.
    WholeBatch,
    /// InfluxDB 3 with `accept_partial`: stores the good lines, answers 400
    /// naming each bad line.
    PartialV3,
}

/// A server that is down during some windows and answers 204 otherwise.
#[derive(Debug, Clone)]
pub struct SimServer {
    pub down: Vec<(Instant, Instant)>,
    pub mode: DownMode,
    /// Time from request to answer while up.
    pub latency: u64,
    /// Scripted answers for the next writes (status, body), used first.
    pub script: VecDeque<(u16, String)>,
    /// Points received in 2xx-answered writes, in arrival order, as lines.
    pub received: Vec<String>,
    /// Count only, when `keep_lines` is false (large simulations).
    pub received_count: u64,
    pub keep_lines: bool,
    /// Lines containing this text are refused, in `reject_mode`.
    pub bad: Option<String>,
    pub reject_mode: RejectMode,
    /// Writes of more points than this get 413.
    pub max_points: Option<u32>,
    /// Sent with every 429 and 503 answer.
    pub retry_after: Option<String>,
    /// Path of every request that reached the server while up.
    pub paths: Vec<String>,
    /// Requests whose path starts with this prefix are refused during
    /// this window (one of several servers down).
    pub down_prefix: Option<(String, Instant, Instant)>,
}

impl SimServer {
    pub fn new() -> Self {
        SimServer {
            down: Vec::new(),
            mode: DownMode::Refuse,
            latency: 1_000_000,
            script: VecDeque::new(),
            received: Vec::new(),
            received_count: 0,
            keep_lines: true,
            bad: None,
            reject_mode: RejectMode::PartialV1,
            max_points: None,
            retry_after: None,
            paths: Vec::new(),
            down_prefix: None,
        }
    }

    pub fn is_down(&self, t: Instant) -> bool {
        self.down.iter().any(|&(a, b)| t >= a && t < b)
    }

    /// The answer to `req` sent at `t`, and when it arrives (None: never).
    fn answer(&mut self, req: &Request, t: Instant) -> Option<(Instant, Outcome)> {
        let prefix_down = self
            .down_prefix
            .as_ref()
            .is_some_and(|(p, a, b)| req.path.starts_with(p.as_str()) && t >= *a && t < *b);
        if self.is_down(t) || prefix_down {
            return match self.mode {
                DownMode::Refuse => Some((
                    t,
                    Outcome::Failed {
                        reason: "connection refused".into(),
                    },
                )),
                DownMode::Hang => None,
            };
        }
        self.paths.push(req.path.clone());
        let scripted = match req.purpose {
            Purpose::Write => self.script.pop_front(),
            _ => None,
        };
        let (status, body) = match scripted {
            Some(answer) => {
                if (200..300).contains(&answer.0) {
                    self.store(&Self::lines(req));
                }
                answer
            }
            None if req.purpose == Purpose::Write => self.write(req),
            None => (204, String::new()),
        };
        let retry_after = self
            .retry_after
            .clone()
            .filter(|_| status == 429 || status == 503);
        Some((
            t + self.latency,
            Outcome::Answer {
                status,
                retry_after,
                body,
            },
        ))
    }

    /// A write's lines, gunzipped as a server would.
    fn lines(req: &Request) -> Vec<String> {
        let gzipped = req
            .headers
            .iter()
            .any(|(k, v)| k == "content-encoding" && v == "gzip");
        let body = if gzipped {
            crate::policy::http::gzip::decompress(&req.body).expect("the sink's gzip is valid")
        } else {
            req.body.clone()
        };
        String::from_utf8_lossy(&body)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn store(&mut self, lines: &[String]) {
        self.received_count += lines.len() as u64;
        if self.keep_lines {
            self.received.extend(lines.iter().cloned());
        }
    }

    /// A write as a real server answers it: 413 over `max_points`, bad
    /// lines refused in `reject_mode`, else stored.
    fn write(&mut self, req: &Request) -> (u16, String) {
        if self.max_points.is_some_and(|m| req.points > m) {
            return (413, r#"{"error":"Request Entity Too Large"}"#.into());
        }
        let lines = Self::lines(req);
        let is_bad = |l: &String| self.bad.as_ref().is_some_and(|b| l.contains(b.as_str()));
        let bad: Vec<usize> = (0..lines.len()).filter(|i| is_bad(&lines[*i])).collect();
        if bad.is_empty() {
            self.store(&lines);
            return (204, String::new());
        }
        let good: Vec<String> = lines.iter().filter(|l| !is_bad(l)).cloned().collect();
        match self.reject_mode {
            RejectMode::WholeBatch => (
                400,
                format!(
                    r#"{{"code":"invalid","message":"unable to parse '{}': bad value"}}"#,
                    lines[bad[0]]
                ),
            ),
            RejectMode::PartialV1 => {
                self.store(&good);
                (
                    400,
                    format!(
                        r#"{{"error":"partial write: field type conflict: input field \"v\" on measurement \"m\" is type string, already exists as type float dropped={}"}}"#,
                        bad.len()
                    ),
                )
            }
            RejectMode::PartialV3 => {
                self.store(&good);
                let data: Vec<String> = bad
                    .iter()
                    .map(|i| format!(r#"{{"original_line":"x","line_number":{},"error_message":"invalid column type"}}"#, i + 1))
                    .collect();
                (
                    400,
                    format!(
                        r#"{{"error":"partial write of line protocol occurred","data":[{}]}}"#,
                        data.join(",")
                    ),
                )
            }
        }
    }
}

impl Default for SimServer {
    fn default() -> Self {
        Self::new()
    }
}

/// A reconnect attempt as the simulation saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub n: u64,
    pub at: Instant,
    pub ok: bool,
}

/// The policy, a server and a clock.
pub struct Sim<B: Backlog> {
    pub policy: Policy<B>,
    pub server: SimServer,
    pub now: Instant,
    /// Wall clock at simulated time 0, ns since the epoch.
    pub wall0: i64,
    /// Answers on their way, by request id and arrival time.
    pending: Vec<(u64, Instant, Outcome)>,
    /// Ping in flight that is a reconnect attempt: (attempt number, sent at).
    attempt_in_flight: Option<(u64, Instant)>,
    pub attempts: Vec<Attempt>,
    pub logs: Vec<(Instant, LogLine)>,
    /// What the policy sent to the dead-letter file.
    pub dead: Vec<DeadLetter>,
    pub requests: u64,
    /// Policy turns taken (to show the sink never busy-loops).
    pub turns: u64,
}

impl<B: Backlog> Sim<B> {
    pub fn new(settings: Settings, backlog: B, server: SimServer) -> Self {
        let wall0 = 1_700_000_000 * 1_000_000_000;
        let policy = Policy::new(settings, backlog, 0, wall0);
        let mut sim = Sim {
            policy,
            server,
            now: 0,
            wall0,
            pending: Vec::new(),
            attempt_in_flight: None,
            attempts: Vec::new(),
            logs: Vec::new(),
            dead: Vec::new(),
            requests: 0,
            turns: 0,
        };
        sim.turn();
        sim
    }

    pub fn wall(&self) -> i64 {
        self.wall0 + self.now as i64
    }

    /// Accept points now.
    pub fn write(&mut self, points: Vec<Point>) {
        let wall = self.wall();
        self.policy.write(points, self.now, wall);
        self.turn();
    }

    /// Accept points now, durably (`Policy::write_durable`).
    pub fn write_durable(&mut self, points: Vec<Point>) -> Result<u64, Refusal> {
        let wall = self.wall();
        let got = self.policy.write_durable(points, self.now, wall);
        self.turn();
        got
    }

    /// Accept concurrent writes now, in one group commit.
    pub fn write_durable_group(&mut self, writes: Vec<Vec<Point>>) -> Vec<Result<u64, Refusal>> {
        let wall = self.wall();
        let got = self.policy.write_durable_group(writes, self.now, wall);
        self.turn();
        got
    }

    /// Run until `end`, waking only when the policy or the server asks.
    /// Panics if the policy keeps asking for turns without time passing:
    /// that would be a busy loop in a real host.
    pub fn run_until(&mut self, end: Instant) {
        let mut same_instant = 0u32;
        while let Some(t) = self.next_event().filter(|t| *t <= end) {
            same_instant = if t <= self.now { same_instant + 1 } else { 0 };
            assert!(
                same_instant < 1000,
                "policy busy-loops at t={} ns",
                self.now
            );
            self.now = self.now.max(t);
            self.turn();
        }
        self.now = self.now.max(end);
        self.turn();
    }

    /// Run until `done` holds (checked after every turn) or `limit`.
    pub fn run_while(&mut self, limit: Instant, mut keep_going: impl FnMut(&Self) -> bool) {
        while keep_going(self) {
            match self.next_event().filter(|t| *t <= limit) {
                Some(t) => {
                    self.now = self.now.max(t);
                    self.turn();
                }
                None => break,
            }
        }
    }

    pub fn next_event(&self) -> Option<Instant> {
        let a = self.policy.poll_timeout();
        let b = self.pending.iter().map(|p| p.1).min();
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One driver turn: deliver a due answer, tick, send what is due.
    pub fn turn(&mut self) {
        self.turns += 1;
        let wall = self.wall();
        for _ in 0..10_000 {
            // Due answers, earliest first.
            while let Some(i) = (0..self.pending.len())
                .filter(|&i| self.pending[i].1 <= self.now)
                .min_by_key(|&i| self.pending[i].1)
            {
                let (id, _, outcome) = self.pending.remove(i);
                self.record_attempt(&outcome);
                self.policy.handle_outcome(id, outcome, self.now, wall);
            }
            self.policy.tick(self.now, wall);
            // Timed out or abandoned: the driver drops them.
            self.pending.retain(|p| self.policy.awaits(p.0));
            if let Some((n, at)) = self.attempt_in_flight {
                if self.pending.is_empty() && !self.policy.stats().state.starts_with("connecting") {
                    // timed out without an answer
                    self.attempts.push(Attempt { n, at, ok: false });
                    self.attempt_in_flight = None;
                }
            }
            let before = self.policy.counters().reconnect_attempts;
            let Some(req) = self.policy.poll_transmit(self.now) else {
                break;
            };
            self.requests += 1;
            let after = self.policy.counters().reconnect_attempts;
            if after > before {
                self.attempt_in_flight = Some((after, self.now));
            }
            if let Some((at, outcome)) = self.server.answer(&req, self.now) {
                self.pending.push((req.id, at, outcome));
            }
        }
        while let Some(line) = self.policy.poll_log() {
            self.logs.push((self.now, line));
        }
        while let Some(d) = self.policy.poll_dead_letter() {
            self.dead.push(d);
        }
    }

    fn record_attempt(&mut self, outcome: &Outcome) {
        if let Some((n, at)) = self.attempt_in_flight.take() {
            let ok =
                matches!(outcome, Outcome::Answer { status, .. } if (200..300).contains(status));
            self.attempts.push(Attempt { n, at, ok });
        }
    }

    /// Requests whose answers are on their way.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Log messages so far (without time), for assertions.
    pub fn messages(&self) -> Vec<&str> {
        self.logs.iter().map(|(_, l)| l.message.as_str()).collect()
    }
}

pub fn secs(s: f64) -> Instant {
    (s * NANOS) as Instant
}

/// A backlog that keeps counts, not points: lets the planner simulate
/// millions of points in little memory. Every point is a copy of `sample`.
pub struct ModelBacklog {
    records: VecDeque<(i64, u64)>,
    len: u64,
    sample: Point,
    bytes_per_point: u64,
}

impl ModelBacklog {
    pub fn new(sample: Point, bytes_per_point: u64) -> Self {
        ModelBacklog {
            records: VecDeque::new(),
            len: 0,
            sample,
            bytes_per_point,
        }
    }

    fn drop_front(&mut self, mut n: u64) {
        while n > 0 {
            let Some(front) = self.records.front_mut() else {
                break;
            };
            let k = front.1.min(n);
            front.1 -= k;
            self.len -= k;
            n -= k;
            if front.1 == 0 {
                self.records.pop_front();
            }
        }
    }
}

impl Backlog for ModelBacklog {
    fn append(&mut self, points: &[Point], stored_at: i64) -> Result<(), BacklogError> {
        self.records.push_back((stored_at, points.len() as u64));
        self.len += points.len() as u64;
        Ok(())
    }
    fn sync(&mut self) -> Result<(), BacklogError> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn bytes(&self) -> u64 {
        self.len * self.bytes_per_point
    }
    fn peek(&mut self, max: usize) -> Result<Vec<Point>, BacklogError> {
        Ok(vec![
            self.sample.clone();
            (max as u64).min(self.len) as usize
        ])
    }
    fn consume(&mut self, n: u64) -> Result<(), BacklogError> {
        self.drop_front(n);
        Ok(())
    }
    fn enforce_size(&mut self, max_points: u64) -> Result<u64, BacklogError> {
        let excess = self.len.saturating_sub(max_points);
        self.drop_front(excess);
        Ok(excess)
    }
    fn enforce_age(&mut self, cutoff: i64) -> Result<u64, BacklogError> {
        let n: u64 = self
            .records
            .iter()
            .take_while(|r| r.0 < cutoff)
            .map(|r| r.1)
            .sum();
        self.drop_front(n);
        Ok(n)
    }
    fn oldest_stored_at(&self) -> Option<i64> {
        self.records.front().map(|r| r.0)
    }
}

/// What `influx-sink simulate` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct OutageReport {
    pub attempts: Vec<Attempt>,
    pub recovered_at: Option<Instant>,
    pub drained_at: Option<Instant>,
    pub accepted: u64,
    pub delivered: u64,
    pub backlog_peak: u64,
    pub dropped: u64,
    pub disk_peak_bytes: u64,
    pub bytes_per_point: u64,
}

/// Play an outage of `outage` seconds from t=0 at `rate` points/s, with
/// `sample` as every point; runs until the backlog has drained (or gives up
/// after a simulated day past the outage).
pub fn plan_outage(
    settings: Settings,
    outage: f64,
    rate: f64,
    sample: Point,
    bytes_per_point: u64,
    mode: DownMode,
) -> OutageReport {
    let mut server = SimServer::new();
    server.down.push((0, secs(outage)));
    server.mode = mode;
    server.keep_lines = false;
    let backlog = ModelBacklog::new(sample.clone(), bytes_per_point);
    let mut sim = Sim::new(settings, backlog, server);
    let step = if rate > 0.0 {
        (1.0 / rate).max(0.01)
    } else {
        f64::INFINITY
    };
    let per_step = if rate > 0.0 {
        (rate * step).round().max(1.0) as usize
    } else {
        0
    };
    let stop_input = secs(outage) + secs(60.0);
    let limit = secs(outage + 86400.0);
    let mut next_write = 0u64;
    let mut peak = 0u64;
    let mut recovered_at = None;
    let mut drained_at = None;
    let mut flushed = false;
    loop {
        let writing = per_step > 0 && next_write <= stop_input;
        if !writing && !flushed {
            // The input ended: send the last partial batch now, as `run` does.
            flushed = true;
            let wall = sim.wall();
            sim.policy.flush(sim.now, wall);
            sim.turn();
        }
        let next = match (sim.next_event(), writing) {
            (Some(e), true) => e.min(next_write),
            (Some(e), false) => e,
            (None, true) => next_write,
            (None, false) => break,
        };
        if next > limit {
            break;
        }
        sim.now = sim.now.max(next);
        if writing && next_write <= sim.now {
            sim.write(vec![sample.clone(); per_step]);
            next_write += secs(step);
        } else {
            sim.turn();
        }
        let st = sim.policy.stats();
        peak = peak.max(st.backlog_points);
        if recovered_at.is_none() {
            recovered_at = sim.attempts.iter().find(|a| a.ok).map(|a| a.at);
        }
        if recovered_at.is_some()
            && st.backlog_points == 0
            && drained_at.is_none()
            && sim.now >= secs(outage)
        {
            drained_at = Some(sim.now);
        }
        if drained_at.is_some() && !writing && st.pending == 0 {
            break;
        }
    }
    let c = sim.policy.counters().clone();
    OutageReport {
        attempts: sim.attempts.clone(),
        recovered_at,
        drained_at,
        accepted: c.accepted,
        delivered: c.delivered,
        backlog_peak: peak,
        dropped: c.dropped,
        disk_peak_bytes: peak * bytes_per_point,
        bytes_per_point,
    }
}
