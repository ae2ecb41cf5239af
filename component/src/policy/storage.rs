//! The durability side of the policy: puts points in the backlog, applies
//! its limits (points, bytes, age), decides when to fsync, and rides out a
//! backlog that cannot be written (disk full, read-only) by holding a
//! bounded number of points in memory until it can.

use std::collections::VecDeque;

use super::log::{Level, LogLine};
use super::Instant;
use crate::backlog::Backlog;
use crate::config::{BacklogSync, Settings, NANOS};
use crate::point::Point;

/// How often a backlog that failed a write is tried again.
const RETRY_NS: u64 = 1_000_000_000;
/// Points held in memory while the backlog cannot be written, at least.
const MIN_HELD_POINTS: u64 = 10_000;

/// Why points were dropped; each reason is counted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `max_backlog_size`.
    Size,
    /// `max_backlog_bytes`.
    Bytes,
    /// `max_backlog_age`.
    Age,
    /// The backlog could not be written and the memory hold was full.
    Storage,
    /// Damaged records found in the backlog.
    Corrupt,
}

/// Dropped points by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Drops {
    pub size: u64,
    pub bytes: u64,
    pub age: u64,
    pub storage: u64,
    pub corrupt: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.size + self.bytes + self.age + self.storage + self.corrupt
    }

    pub fn add(&mut self, reason: DropReason, n: u64) {
        *self.of(reason) += n;
    }

    fn of(&mut self, reason: DropReason) -> &mut u64 {
        match reason {
            DropReason::Size => &mut self.size,
            DropReason::Bytes => &mut self.bytes,
            DropReason::Age => &mut self.age,
            DropReason::Storage => &mut self.storage,
            DropReason::Corrupt => &mut self.corrupt,
        }
    }

    /// Take away `other` (counts of points that turned out not dropped).
    pub fn remove(&mut self, other: &Drops) {
        self.size -= other.size;
        self.bytes -= other.bytes;
        self.age -= other.age;
        self.storage -= other.storage;
        self.corrupt -= other.corrupt;
    }

    /// Move up to `n` counts out of these into a new `Drops`.
    fn take(&mut self, mut n: u64) -> Drops {
        let mut out = Drops::default();
        for reason in [DropReason::Size, DropReason::Bytes, DropReason::Age] {
            let k = n.min(*self.of(reason));
            *self.of(reason) -= k;
            out.add(reason, k);
            n -= k;
        }
        out
    }
}

/// What the storage layer reports back to the policy on every call.
pub struct Report<'a> {
    pub logs: &'a mut VecDeque<LogLine>,
    pub drops: &'a mut Drops,
    /// Points that entered the backlog (the `backlogged` counter).
    pub stored: &'a mut u64,
}

impl Report<'_> {
    fn log(&mut self, level: Level, message: String) {
        self.logs.push_back(LogLine { level, message });
    }

    fn dropped(&mut self, reason: DropReason, n: u64, message: String) {
        if n > 0 {
            self.drops.add(reason, n);
            self.log(Level::Warn, message);
        }
    }

    /// Points dropped from the backlog's head by a limit.
    fn dropped_head<B: Backlog>(
        &mut self,
        storage: &mut Storage<B>,
        reason: DropReason,
        n: u64,
        message: String,
    ) {
        storage.head_dropped(reason, n);
        self.dropped(reason, n, message);
    }
}

pub struct Storage<B: Backlog> {
    backlog: B,
    max_points: u64,
    max_bytes: u64,
    max_age_ns: i64,
    sync: BacklogSync,
    /// Appends not yet fsynced.
    dirty: bool,
    last_sync: Instant,
    /// Batches that could not be written yet, oldest first.
    held: VecDeque<Vec<Point>>,
    held_points: u64,
    held_limit: u64,
    /// While the backlog is failing: when to try it again.
    retry_at: Option<Instant>,
    /// Head points out for delivery (an in-flight write or a bisection);
    /// of those, `lost` were dropped by a limit meanwhile (by reason), so
    /// their answer must not consume newer points in their place.
    reserved: u64,
    lost: Drops,
}

/// Why `append_durable` failed, and what it left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurableError {
    /// The append failed: nothing of the batch is stored.
    Append(String),
    /// The record is appended (it will be delivered) but the fsync failed:
    /// it may not survive a power cut.
    Sync(String),
}

/// What an answered reservation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumed {
    /// Points taken from the backlog.
    pub consumed: u64,
    /// Points a limit had dropped while they were out, which the server
    /// took all the same: counted as answered, no longer as dropped.
    pub reclaimed: Drops,
}

impl<B: Backlog> Storage<B> {
    pub fn new(backlog: B, s: &Settings, now: Instant) -> Self {
        Storage {
            backlog,
            max_points: s.max_backlog_size,
            max_bytes: s.max_backlog_bytes,
            max_age_ns: (s.max_backlog_age * NANOS) as i64,
            sync: s.backlog_sync,
            dirty: false,
            last_sync: now,
            held: VecDeque::new(),
            held_points: 0,
            held_limit: MIN_HELD_POINTS.max(10 * s.batch_size as u64),
            retry_at: None,
            reserved: 0,
            lost: Drops::default(),
        }
    }

    pub fn backlog(&self) -> &B {
        &self.backlog
    }

    pub fn backlog_mut(&mut self) -> &mut B {
        &mut self.backlog
    }

    pub fn into_backlog(self) -> B {
        self.backlog
    }

    /// Points in the backlog proper.
    pub fn len(&self) -> u64 {
        self.backlog.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backlog.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.backlog.bytes()
    }

    /// Points held in memory because the backlog could not be written.
    pub fn held_points(&self) -> u64 {
        self.held_points
    }

    pub fn held(&self) -> impl Iterator<Item = &Point> {
        self.held.iter().flatten()
    }

    /// The oldest points; records found damaged on the way are dropped
    /// by the backlog and counted here.
    pub fn peek(
        &mut self,
        max: usize,
        r: &mut Report,
    ) -> Result<Vec<Point>, crate::backlog::BacklogError> {
        let got = self.backlog.peek(max);
        let lost = self.backlog.take_read_losses();
        if lost > 0 {
            r.drops.add(DropReason::Corrupt, lost);
        }
        got
    }

    /// The `n` head points are out for delivery until `consume_reserved`
    /// or `release`.
    pub fn reserve(&mut self, n: u64) {
        self.reserved = n;
        self.lost = Drops::default();
    }

    /// The next `n` reserved points are done with (the server answered
    /// for them): consume those still in the backlog.
    pub fn consume_reserved(&mut self, n: u64) -> Result<Consumed, crate::backlog::BacklogError> {
        let n = n.min(self.reserved);
        // Limits drop from the head, so the lost ones come first.
        let reclaimed = self.lost.take(n);
        self.reserved -= n;
        let consumed = n - reclaimed.total();
        self.backlog.consume(consumed)?;
        Ok(Consumed {
            consumed,
            reclaimed,
        })
    }

    /// The reserved points stay in the backlog (the delivery failed); any
    /// a limit dropped meanwhile stay dropped.
    pub fn release(&mut self) {
        self.reserved = 0;
        self.lost = Drops::default();
    }

    /// A limit dropped `n` head points: some may be reserved ones.
    fn head_dropped(&mut self, reason: DropReason, n: u64) {
        let free = self.reserved - self.lost.total();
        self.lost.add(reason, n.min(free));
    }

    /// The oldest held batch, to send while the backlog cannot take it.
    pub fn take_held(&mut self) -> Option<Vec<Point>> {
        let batch = self.held.pop_front()?;
        self.held_points -= batch.len() as u64;
        if self.held.is_empty() {
            self.retry_at = None;
        }
        Some(batch)
    }

    /// Put a batch in the backlog (or, while it cannot be written, in the
    /// memory hold behind older held batches). Returns whether it is in the
    /// backlog.
    pub fn put(&mut self, points: Vec<Point>, now: Instant, wall: i64, r: &mut Report) -> bool {
        if points.is_empty() {
            return true;
        }
        if self.held.is_empty() && self.append(&points, now, wall, r) {
            return true;
        }
        self.hold(points, r);
        false
    }

    /// Append `points` as the reserved head of an otherwise empty backlog
    /// (a memory batch about to be bisected), unless something is held or
    /// the backlog fails; true if they are in.
    pub fn put_reserved(
        &mut self,
        points: &[Point],
        now: Instant,
        wall: i64,
        r: &mut Report,
    ) -> bool {
        if !self.held.is_empty() || !self.backlog.is_empty() {
            return false;
        }
        self.reserve(points.len() as u64);
        let ok = self.append(points, now, wall, r);
        if !ok {
            self.release();
        }
        ok
    }

    fn append(&mut self, points: &[Point], now: Instant, wall: i64, r: &mut Report) -> bool {
        match self.backlog.append(points, wall) {
            Ok(()) => {
                *r.stored += points.len() as u64;
                self.dirty = true;
                if self.sync == BacklogSync::Always {
                    self.sync_now(now, r);
                }
                self.enforce_limits(r);
                true
            }
            Err(e) => {
                if self.retry_at.is_none() {
                    let limit = self.held_limit;
                    r.log(
                        Level::Error,
                        format!(
                            "Could not write to the backlog ({e}); holding up to {limit} points in memory and retrying every second"
                        ),
                    );
                }
                self.retry_at = Some(now + RETRY_NS);
                false
            }
        }
    }

    /// Append `points` as one record and force it to stable storage,
    /// whatever `backlog_sync` says (a durable acknowledgement). No limit
    /// is applied and nothing is held: the caller checked the room and
    /// refuses on failure. See [`DurableError`] for what a failure left.
    pub fn append_durable(
        &mut self,
        points: &[Point],
        now: Instant,
        wall: i64,
        r: &mut Report,
    ) -> Result<(), DurableError> {
        if let Err(e) = self.backlog.append(points, wall) {
            return Err(DurableError::Append(e.to_string()));
        }
        *r.stored += points.len() as u64;
        self.dirty = true;
        match self.backlog.sync_durable() {
            Ok(()) => {
                self.dirty = false;
                self.last_sync = now;
                Ok(())
            }
            // `dirty` stays: the next sync tries again.
            Err(e) => Err(DurableError::Sync(e.to_string())),
        }
    }

    /// Points and bytes the backlog takes before `max_backlog_size` or
    /// `max_backlog_bytes` is reached.
    pub fn room(&self) -> (u64, u64) {
        (
            self.max_points.saturating_sub(self.backlog.len()),
            self.max_bytes.saturating_sub(self.backlog.bytes()),
        )
    }

    /// The limits themselves (points, bytes).
    pub fn limits(&self) -> (u64, u64) {
        (self.max_points, self.max_bytes)
    }

    fn hold(&mut self, points: Vec<Point>, r: &mut Report) {
        self.held_points += points.len() as u64;
        self.held.push_back(points);
        let mut dropped = 0;
        while self.held_points > self.held_limit {
            let Some(oldest) = self.held.pop_front() else {
                break;
            };
            self.held_points -= oldest.len() as u64;
            dropped += oldest.len() as u64;
        }
        let limit = self.held_limit;
        r.dropped(
            DropReason::Storage,
            dropped,
            format!("Backlog not writable and memory hold full ({limit} points): dropped {dropped} oldest points"),
        );
    }

    /// Timers: retry a failing backlog, enforce the age limit, interval sync.
    pub fn tick(&mut self, now: Instant, wall: i64, r: &mut Report) {
        if self.retry_at.is_some_and(|t| now >= t) {
            let mut written = 0;
            while let Some(batch) = self.held.front() {
                let batch = batch.clone();
                if !self.append(&batch, now, wall, r) {
                    break;
                }
                written += batch.len() as u64;
                self.held_points -= batch.len() as u64;
                self.held.pop_front();
            }
            if self.held.is_empty() {
                self.retry_at = None;
                if written > 0 {
                    r.log(
                        Level::Info,
                        format!("Backlog writable again: stored {written} held points"),
                    );
                }
            }
        }
        self.enforce_age(wall, r);
        self.maybe_sync(now, r);
    }

    /// fsync as `backlog_sync` says, after a group of appends.
    pub fn maybe_sync(&mut self, now: Instant, r: &mut Report) {
        let due = match self.sync {
            BacklogSync::Batch | BacklogSync::Always => true,
            BacklogSync::IntervalMs(ms) => now >= self.last_sync + ms * 1_000_000,
            BacklogSync::Never => false,
        };
        if self.dirty && due {
            self.sync_now(now, r);
        }
    }

    fn sync_now(&mut self, now: Instant, r: &mut Report) {
        match self.backlog.sync() {
            Ok(()) => {
                self.dirty = false;
                self.last_sync = now;
            }
            Err(e) => r.log(
                Level::Error,
                format!("Could not sync the backlog to disk: {e}"),
            ),
        }
    }

    /// When storage next needs a tick.
    pub fn poll_timeout(&self, now: Instant, wall: i64) -> Option<Instant> {
        let mut at = self.retry_at;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if let (true, BacklogSync::IntervalMs(ms)) = (self.dirty, self.sync) {
            consider(self.last_sync + ms * 1_000_000);
        }
        if let Some(oldest) = self.backlog.oldest_stored_at() {
            let expires = oldest.saturating_add(self.max_age_ns);
            consider(now + expires.saturating_sub(wall).max(0) as u64);
        }
        at
    }

    fn enforce_limits(&mut self, r: &mut Report) {
        let max = self.max_points;
        if self.backlog.len() > max {
            match self.backlog.enforce_size(max) {
                Ok(n) => r.dropped_head(
                    self,
                    DropReason::Size,
                    n,
                    format!("Backlog full (max_backlog_size={max}): dropped {n} oldest points"),
                ),
                Err(e) => r.log(
                    Level::Error,
                    format!("Could not apply max_backlog_size: {e}"),
                ),
            }
        }
        let max = self.max_bytes;
        if self.backlog.bytes() > max {
            match self.backlog.enforce_bytes(max) {
                Ok(n) => r.dropped_head(
                    self,
                    DropReason::Bytes,
                    n,
                    format!("Backlog over max_backlog_bytes={max}: dropped {n} oldest points"),
                ),
                Err(e) => r.log(
                    Level::Error,
                    format!("Could not apply max_backlog_bytes: {e}"),
                ),
            }
        }
    }

    fn enforce_age(&mut self, wall: i64, r: &mut Report) {
        let max_age = self.max_age_ns;
        let expired = self
            .backlog
            .oldest_stored_at()
            .is_some_and(|t| wall.saturating_sub(t) >= max_age);
        if !expired {
            return;
        }
        // Points whose age has reached the limit go: stored_at <= wall - max_age.
        match self.backlog.enforce_age(wall - max_age + 1) {
            Ok(n) => {
                let age = max_age as f64 / NANOS;
                r.dropped_head(
                    self,
                    DropReason::Age,
                    n,
                    format!("Dropped {n} backlog points older than max_backlog_age ({age} s)"),
                );
            }
            Err(e) => r.log(
                Level::Error,
                format!("Could not apply max_backlog_age: {e}"),
            ),
        }
    }
}
