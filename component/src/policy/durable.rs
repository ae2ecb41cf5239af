//! Durable writes: points acknowledged only once they are in the backlog
//! and on stable storage, for a listener that answers its HTTP client 204
//! only then (a client that got 204 may forget its points).
//!
//! [`Policy::write_durable`] stamps the points as [`Policy::write`] does,
//! stores the whole batch as one backlog append, which is one record (the
//! file backlog gives every record a CRC and cuts a torn tail at open, so a
//! crash keeps all of the batch or none of it), and forces it to disk
//! whatever `backlog_sync` says. It never drops points to make room: a
//! batch that does not fit is refused ([`Refusal::Full`]) and the client
//! retries, so back-pressure reaches the client instead of the data. From
//! the backlog the points go out as any backlog points do: oldest first, in
//! batches of `batch_size`, removed only once acknowledged; at once while
//! connected (the policy wakes now whenever the backlog is not empty).
//!
//! One batch is always one record: the record format's only bound is its
//! u32 length fields (4 GiB of payload, 2^32-1 points), far above what one
//! HTTP request can carry in a component's memory, and a batch over it is
//! refused ([`Refusal::TooLarge`]) rather than split.
//!
//! What the acknowledgement does not promise: the backlog's limits still
//! apply to what is stored. `max_backlog_age` drops durable points as any
//! others, and a non-durable path (`write` spilling to the backlog in an
//! outage) that takes the backlog over `max_backlog_size` or
//! `max_backlog_bytes` drops the oldest points, durable or not (records are
//! not marked, and the backlog format stays as it is). Order between the
//! two paths is not kept: the backlog goes out before points held only in
//! memory, so a durable write may overtake an older `write`.

use super::storage::DurableError;
use super::{secs, Backlog, Conn, Instant, Level, Policy};
use crate::backlog::file::{MAX_RECORD_OVERHEAD, MAX_RECORD_PAYLOAD};
use crate::codec::encode_points;
use crate::point::Point;

const NS_PER_S: u64 = 1_000_000_000;

/// Durable writes refused since the last one stored, for the log: the
/// listener answers each, the operator hears of each kind once.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    count: u64,
    last: Option<std::mem::Discriminant<Refusal>>,
}

/// Why [`Policy::write_durable`] did not acknowledge a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The batch would take the backlog over `max_backlog_size` or
    /// `max_backlog_bytes`. Nothing was stored, nothing dropped, nothing
    /// counted. Worth retrying after `retry_after_s` seconds (HTTP 503 with
    /// `Retry-After`): the next reconnect attempt while backing off, the
    /// connection check's timeout while one is out, 1 s while connected
    /// (the backlog is being delivered); at least 1, at most
    /// `max_reconnect_delay`.
    Full { retry_after_s: u64 },
    /// The batch can never be taken: more points or bytes than the limits
    /// allow even in an empty backlog, or more than one record holds.
    /// Nothing stored, nothing counted (HTTP 413).
    TooLarge(String),
    /// The backlog failed, or is not durable at all, for this reason
    /// (operator-readable). If the append failed, or persistent storage is
    /// disabled, nothing was stored and nothing counted. If only the fsync
    /// failed, the points are in the backlog and will be delivered (so
    /// they are counted as accepted) but might not survive a power cut: a
    /// client that retries may store them twice (InfluxDB overwrites
    /// identical points with explicit timestamps; stamped ones get new
    /// stamps).
    Storage(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Full { retry_after_s } => {
                write!(f, "the backlog is full; retry after {retry_after_s} s")
            }
            Refusal::TooLarge(reason) | Refusal::Storage(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for Refusal {}

/// The bytes a batch adds to the backlog, at most: its codec body (as
/// the backlog will encode it) plus the file backlog's record overhead.
fn record_bytes(points: &[Point]) -> u64 {
    let mut body = Vec::new();
    encode_points(points, &mut body);
    body.len() as u64 + MAX_RECORD_OVERHEAD
}

impl<B: Backlog> Policy<B> {
    /// Accept points only once they are on stable storage: stamp those
    /// without a time (as `write` does), store them all as one backlog
    /// record, fsync it. `Ok(n)`: the `n` points are stored, counted as
    /// accepted, and will be delivered from the backlog. Never drops
    /// anything to make room; see [`Refusal`] for what a refusal left.
    pub fn write_durable(
        &mut self,
        points: Vec<Point>,
        now: Instant,
        wall: i64,
    ) -> Result<u64, Refusal> {
        let mut one = self.write_durable_group(vec![points], now, wall);
        one.pop().unwrap_or(Ok(0))
    }

    /// A group commit of concurrent writes: each is taken whole or refused
    /// whole, in order, as room allows; all that are taken are stored as
    /// one backlog record with one fsync, so the cost of the sync is shared.
    /// One result per write, as [`Self::write_durable`] gives it.
    pub fn write_durable_group(
        &mut self,
        mut writes: Vec<Vec<Point>>,
        now: Instant,
        wall: i64,
    ) -> Vec<Result<u64, Refusal>> {
        self.clock = (now, wall);
        let mut results: Vec<Result<u64, Refusal>> = Vec::with_capacity(writes.len());
        if !self.s.enable_persistent_storage {
            for w in &writes {
                results.push(if w.is_empty() {
                    Ok(0)
                } else {
                    let reason = format!(
                        "output [{}] has enable_persistent_storage = false: its backlog is only in memory, so no write can be acknowledged as durable",
                        self.s.name
                    );
                    Err(self.refuse(Refusal::Storage(reason)))
                });
            }
            return results;
        }
        let (max_points, max_bytes) = self.storage.limits();
        // One record holds the whole group; the frame's length field bounds
        // it (only reachable with max_backlog_bytes over 4 GiB).
        let most = max_bytes.min(MAX_RECORD_PAYLOAD);
        let (mut room_points, mut room_bytes) = self.storage.room();
        // The group's record: its overhead is paid once.
        room_bytes = room_bytes.saturating_sub(MAX_RECORD_OVERHEAD);
        let mut taken: Vec<Point> = Vec::new();
        let mut taken_n = 0u64;
        for points in &mut writes {
            let n = points.len() as u64;
            if n == 0 {
                results.push(Ok(0));
                continue;
            }
            if n > max_points || n > u64::from(u32::MAX) {
                let reason = format!(
                    "{n} points in one write; the backlog holds at most {max_points} (max_backlog_size)"
                );
                results.push(Err(self.refuse(Refusal::TooLarge(reason))));
                continue;
            }
            // Stamp before measuring: the encoding depends on the times. A
            // refusal after this only uses up stamps, which stay unique.
            self.stamper.stamp(points, wall, self.s.precision.nanos());
            let need = record_bytes(points);
            if need > most {
                let limit = if most == max_bytes {
                    "max_backlog_bytes"
                } else {
                    "one backlog record"
                };
                let reason = format!(
                    "{n} points in one write take {need} bytes in the backlog; it holds at most {most} ({limit})"
                );
                results.push(Err(self.refuse(Refusal::TooLarge(reason))));
                continue;
            }
            let body = need - MAX_RECORD_OVERHEAD;
            if n > room_points || body > room_bytes || taken_n + n > u64::from(u32::MAX) {
                let retry_after_s = self.retry_after_s(now);
                results.push(Err(self.refuse(Refusal::Full { retry_after_s })));
                continue;
            }
            room_points -= n;
            room_bytes -= body;
            taken_n += n;
            taken.append(points);
            results.push(Ok(n));
        }
        if taken_n == 0 {
            return results;
        }
        let failure = self.store_durable(&taken, now, wall);
        if let Some(refusal) = failure {
            for r in results.iter_mut().filter(|r| matches!(r, Ok(n) if *n > 0)) {
                *r = Err(refusal.clone());
            }
        }
        results
    }

    /// Append `points` as one record and sync it; `None` when they are
    /// durable, else the refusal every write in them gets.
    fn store_durable(&mut self, points: &[Point], now: Instant, wall: i64) -> Option<Refusal> {
        let n = points.len() as u64;
        let was_empty = self.storage.is_empty();
        let before = self.counters.backlogged;
        let stored = self.with_storage(|st, r| st.append_durable(points, now, wall, r));
        match stored {
            Ok(()) => {}
            Err(DurableError::Append(e)) => {
                let reason = format!("could not store the points in the backlog: {e}");
                return Some(self.refuse(Refusal::Storage(reason)));
            }
            Err(DurableError::Sync(e)) => {
                self.counters.accepted += n;
                self.durable_mark = None;
                let reason = format!(
                    "stored {n} points in the backlog but could not sync it to disk ({e}); they will be delivered but may not survive a power cut"
                );
                return Some(self.refuse(Refusal::Storage(reason)));
            }
        }
        self.counters.accepted += n;
        // Delivering what only durable writes made while connected put in
        // the backlog is routine, not a recovery to announce (see `Drain`).
        let routine =
            self.conn == Conn::Connected && (was_empty || self.durable_mark == Some(before));
        self.durable_mark = routine.then_some(self.counters.backlogged);
        if self.durable_refused.count > 0 {
            let k = std::mem::take(&mut self.durable_refused).count;
            self.log(
                Level::Info,
                format!("Durable writes are stored again ({k} refused meanwhile)"),
            );
        }
        None
    }

    /// Room for durable writes now: (points, bytes of codec body). A batch
    /// of `n` points whose encoding takes `b` bytes is taken if `n` and `b`
    /// are within these; the encoding is usually smaller than the line
    /// protocol it came from, though not always. For a listener that
    /// answers 503 before reading a body.
    pub fn durable_room(&self) -> (u64, u64) {
        if !self.s.enable_persistent_storage {
            return (0, 0);
        }
        let (points, bytes) = self.storage.room();
        (points, bytes.saturating_sub(MAX_RECORD_OVERHEAD))
    }

    /// Seconds after which a refused durable write may fit (see
    /// [`Refusal::Full`]).
    fn retry_after_s(&self, now: Instant) -> u64 {
        let ns = match self.conn {
            Conn::BackingOff { at, .. } => at.saturating_sub(now),
            Conn::Connecting { .. } => secs(self.s.connection_timeout),
            Conn::Connected => NS_PER_S,
        };
        let cap = (self.s.max_reconnect_delay.ceil() as u64).max(1);
        ns.div_ceil(NS_PER_S).clamp(1, cap)
    }

    /// Log a refusal unless the last one was of the same kind, and pass
    /// it on.
    fn refuse(&mut self, refusal: Refusal) -> Refusal {
        let kind = std::mem::discriminant(&refusal);
        if self.durable_refused.last != Some(kind) {
            let level = match refusal {
                Refusal::Full { .. } | Refusal::TooLarge(_) => Level::Warn,
                Refusal::Storage(_) => Level::Error,
            };
            let (n, b) = self.storage.limits();
            let why = match &refusal {
                Refusal::Full { .. } => format!(
                    "the backlog is full (max_backlog_size={n}, max_backlog_bytes={b}), nothing is dropped for them"
                ),
                other => other.to_string(),
            };
            self.log(level, format!("Refusing a durable write: {why}"));
        }
        self.durable_refused.count += 1;
        self.durable_refused.last = Some(kind);
        refusal
    }
}
