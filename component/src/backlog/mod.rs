//! The backlog: points that could not be delivered yet, oldest first.
//!
//! The policy only talks to the [`Backlog`] trait. [`file::FileBacklog`]
//! keeps it on disk (std::fs, which the component's std maps onto
//! wasi:filesystem); [`memory::MemoryBacklog`] keeps it in RAM, for
//! `enable_persistent_storage = false` and for the simulator, where it can
//! also inject faults.

pub mod file;
pub mod memory;

use crate::point::Point;

/// A failed storage operation, phrased for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacklogError(pub String);

impl std::fmt::Display for BacklogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BacklogError {}

/// What opening an existing backlog found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Points found intact.
    pub points: u64,
    /// Bytes cut from a torn tail (a write interrupted by a crash).
    pub torn_bytes: u64,
    /// Records skipped because their checksum or encoding was bad.
    pub corrupt_records: u64,
    /// Undelivered points lost to damage, counted exactly from sequence
    /// numbers: every one from the head to the end of the last intact record
    /// that no intact record holds, whether its record was damaged, cut, or
    /// in a segment file that disappeared. The head is the stored cursor when
    /// it is known to be the newest one written (else the first intact
    /// record, and losses before it are not counted). Damage among delivered
    /// points is not counted; after a power cut, points delivered just
    /// before it whose cursor update did not reach the disk may be.
    pub lost_points: u64,
    /// Points estimated lost after the last intact record (a torn tail, a
    /// damaged end): no later record tells how many there were, so this is
    /// their bytes at the average density of the intact records, at least 1
    /// when anything was cut or skipped there. A segment file deleted at the
    /// very end of the backlog leaves no trace and is not counted.
    pub tail_points_estimate: u64,
    /// Segments with a bad header, moved to `quarantine/` (or left in place
    /// when that failed), unread.
    pub quarantined_segments: u64,
    /// Undelivered points in intact records of quarantined segments (moved
    /// now or at an earlier open, and still in `quarantine/`): set aside, not
    /// lost. `points + lost_points + quarantined_points` is every undelivered
    /// point up to the end of the last intact record.
    pub quarantined_points: u64,
    /// Human-readable warnings, one per repair, naming the file and offset.
    pub warnings: Vec<String>,
}

/// Ordered, durable storage of undelivered points.
///
/// Points are appended in batches (one record each) and leave from the head
/// only when acknowledged (`consume`) or dropped by a limit. `stored_at` is
/// the wall-clock time (ns) a batch entered the backlog; the age limit
/// compares against it, as the gateway did with `_backlog_time`.
pub trait Backlog {
    /// Append one batch as one record. On error nothing of it is stored.
    fn append(&mut self, points: &[Point], stored_at: i64) -> Result<(), BacklogError>;
    /// Make every append so far durable (fsync), as the backlog's sync
    /// mode says (`SyncMode::Never` makes this a no-op).
    fn sync(&mut self) -> Result<(), BacklogError>;
    /// Make every append so far durable whatever the sync mode: a durable
    /// acknowledgement (`Policy::write_durable`) needs it on stable storage
    /// even where `backlog_sync = never` leaves the rest to the OS.
    fn sync_durable(&mut self) -> Result<(), BacklogError> {
        self.sync()
    }
    /// Points in the backlog.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes the backlog occupies (on disk, or encoded size in memory).
    fn bytes(&self) -> u64;
    /// Up to `max` of the oldest points, without removing them.
    fn peek(&mut self, max: usize) -> Result<Vec<Point>, BacklogError>;
    /// Remove the `n` oldest points (delivered); the new head is persisted so
    /// a restart does not send them again.
    fn consume(&mut self, n: u64) -> Result<(), BacklogError>;
    /// Drop the oldest points until at most `max_points` remain; returns how
    /// many were dropped.
    fn enforce_size(&mut self, max_points: u64) -> Result<u64, BacklogError>;
    /// Drop every point stored before `cutoff` (wall ns); returns how many.
    fn enforce_age(&mut self, cutoff: i64) -> Result<u64, BacklogError>;
    /// `stored_at` of the oldest point, if any.
    fn oldest_stored_at(&self) -> Option<i64>;

    /// Points dropped since the last call because their record failed its
    /// checks when read (damage after open); the caller counts them.
    fn take_read_losses(&mut self) -> u64 {
        0
    }

    /// What a successor instance may reuse of this backlog's index instead
    /// of reading it again (a live upgrade); `None` if nothing.
    fn index_hint(&self) -> Option<file::IndexHint> {
        None
    }

    /// Drop the oldest points until `bytes()` is at most `max_bytes`;
    /// returns how many were dropped. Storage frees space in whole units
    /// (a file segment), so this drops in growing steps until it does,
    /// overshooting by less than twice the last step.
    fn enforce_bytes(&mut self, max_bytes: u64) -> Result<u64, BacklogError> {
        let mut dropped = 0;
        let mut step = 0u64;
        while self.bytes() > max_bytes && !self.is_empty() {
            let (len, bytes) = (self.len(), self.bytes());
            let share = (len as u128 * (bytes - max_bytes) as u128).div_ceil(bytes as u128) as u64;
            step = share.max(step.saturating_mul(2)).clamp(1, len);
            let n = self.enforce_size(len - step)?;
            if n == 0 {
                break; // nothing more can go
            }
            dropped += n;
        }
        Ok(dropped)
    }
}

/// Lets a driver choose the storage at run time (`Policy<Box<dyn Backlog>>`).
impl<B: Backlog + ?Sized> Backlog for Box<B> {
    fn append(&mut self, points: &[Point], stored_at: i64) -> Result<(), BacklogError> {
        (**self).append(points, stored_at)
    }
    fn sync(&mut self) -> Result<(), BacklogError> {
        (**self).sync()
    }
    fn sync_durable(&mut self) -> Result<(), BacklogError> {
        (**self).sync_durable()
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn bytes(&self) -> u64 {
        (**self).bytes()
    }
    fn peek(&mut self, max: usize) -> Result<Vec<Point>, BacklogError> {
        (**self).peek(max)
    }
    fn consume(&mut self, n: u64) -> Result<(), BacklogError> {
        (**self).consume(n)
    }
    fn enforce_size(&mut self, max_points: u64) -> Result<u64, BacklogError> {
        (**self).enforce_size(max_points)
    }
    fn enforce_age(&mut self, cutoff: i64) -> Result<u64, BacklogError> {
        (**self).enforce_age(cutoff)
    }
    fn oldest_stored_at(&self) -> Option<i64> {
        (**self).oldest_stored_at()
    }
    fn take_read_losses(&mut self) -> u64 {
        (**self).take_read_losses()
    }
    fn index_hint(&self) -> Option<file::IndexHint> {
        (**self).index_hint()
    }
    fn enforce_bytes(&mut self, max_bytes: u64) -> Result<u64, BacklogError> {
        (**self).enforce_bytes(max_bytes)
    }
}
