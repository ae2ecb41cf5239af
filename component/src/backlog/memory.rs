//! The backlog in RAM: for `enable_persistent_storage = false`, and for the
//! deterministic simulator, which can inject a full disk
//! ([`MemoryBacklog::fail_appends`]), a failing fsync
//! ([`MemoryBacklog::fail_syncs`]) or a power cut ([`MemoryBacklog::crash`]).

use std::collections::VecDeque;

use super::{Backlog, BacklogError};
use crate::codec::encode_points;
use crate::point::Point;

/// One appended batch.
#[derive(Debug)]
struct Record {
    stored_at: i64,
    points: Vec<Point>,
    /// `encode_points` size of the whole batch, measured at append.
    bytes: u64,
}

/// A [`Backlog`] kept in a `VecDeque` of batches.
#[derive(Debug, Default)]
pub struct MemoryBacklog {
    records: VecDeque<Record>,
    /// Points of the front record already consumed or dropped.
    head_skip: usize,
    /// Live points (all records minus `head_skip`).
    len: u64,
    /// Sum of `Record::bytes`.
    bytes: u64,
    /// How many records at the back were appended since the last `sync()`.
    unsynced: usize,
    fail_appends: bool,
    fail_syncs: bool,
    scratch: Vec<u8>,
}

impl MemoryBacklog {
    pub fn new() -> Self {
        Self::default()
    }

    /// While `on`, every append fails as it would on a full disk.
    pub fn fail_appends(&mut self, on: bool) {
        self.fail_appends = on;
    }

    /// While `on`, every `sync()` fails (as an fsync can on a failing
    /// disk); appends since the last good sync stay unsynced.
    pub fn fail_syncs(&mut self, on: bool) {
        self.fail_syncs = on;
    }

    /// Model a power cut: every append made since the last `sync()` that is
    /// still in the backlog is lost.
    pub fn crash(&mut self) {
        let keep = self.records.len() - self.unsynced.min(self.records.len());
        while self.records.len() > keep {
            let r = self.records.pop_back().expect("len > keep");
            self.bytes -= r.bytes;
        }
        if self.records.is_empty() {
            self.head_skip = 0;
        }
        self.unsynced = 0;
        self.recount();
    }

    fn recount(&mut self) {
        let total: usize = self.records.iter().map(|r| r.points.len()).sum();
        self.len = (total - self.head_skip) as u64;
    }

    /// Drop up to `n` points from the head; returns how many went.
    fn drop_front(&mut self, mut n: u64) -> u64 {
        let mut dropped = 0;
        while n > 0 {
            let Some(front) = self.records.front() else {
                break;
            };
            let avail = (front.points.len() - self.head_skip) as u64;
            if n < avail {
                self.head_skip += n as usize;
                dropped += n;
                break;
            }
            n -= avail;
            dropped += avail;
            self.pop_front();
        }
        self.len -= dropped;
        dropped
    }

    fn pop_front(&mut self) {
        if let Some(r) = self.records.pop_front() {
            self.bytes -= r.bytes;
            self.head_skip = 0;
            self.unsynced = self.unsynced.min(self.records.len());
        }
    }
}

impl Backlog for MemoryBacklog {
    fn append(&mut self, points: &[Point], stored_at: i64) -> Result<(), BacklogError> {
        if self.fail_appends {
            return Err(BacklogError(
                "could not append to in-memory backlog: No space left on device (simulated)"
                    .to_string(),
            ));
        }
        if points.is_empty() {
            return Ok(());
        }
        self.scratch.clear();
        encode_points(points, &mut self.scratch);
        let bytes = self.scratch.len() as u64;
        self.records.push_back(Record {
            stored_at,
            points: points.to_vec(),
            bytes,
        });
        self.len += points.len() as u64;
        self.bytes += bytes;
        self.unsynced += 1;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), BacklogError> {
        if self.fail_syncs {
            return Err(BacklogError(
                "could not sync in-memory backlog: Input/output error (simulated)".to_string(),
            ));
        }
        self.unsynced = 0;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    fn peek(&mut self, max: usize) -> Result<Vec<Point>, BacklogError> {
        let mut out = Vec::with_capacity(max.min(self.len as usize));
        let mut skip = self.head_skip;
        for r in &self.records {
            let want = (max - out.len()).min(r.points.len() - skip);
            out.extend_from_slice(&r.points[skip..skip + want]);
            skip = 0;
            if out.len() == max {
                break;
            }
        }
        Ok(out)
    }

    fn consume(&mut self, n: u64) -> Result<(), BacklogError> {
        self.drop_front(n);
        Ok(())
    }

    fn enforce_size(&mut self, max_points: u64) -> Result<u64, BacklogError> {
        Ok(self.drop_front(self.len.saturating_sub(max_points)))
    }

    fn enforce_age(&mut self, cutoff: i64) -> Result<u64, BacklogError> {
        let mut dropped = 0;
        while let Some(front) = self.records.front() {
            if front.stored_at >= cutoff {
                break;
            }
            dropped += (front.points.len() - self.head_skip) as u64;
            self.pop_front();
        }
        self.len -= dropped;
        Ok(dropped)
    }

    fn oldest_stored_at(&self) -> Option<i64> {
        self.records.front().map(|r| r.stored_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(from: i64, n: i64) -> Vec<Point> {
        (from..from + n)
            .map(|i| {
                let line = format!("m,host=a v={i}i");
                Point {
                    series_len: 8,
                    line,
                    timestamp: i,
                }
            })
            .collect()
    }

    fn stamps(v: &[Point]) -> Vec<i64> {
        v.iter().map(|p| p.timestamp).collect()
    }

    #[test]
    fn fifo_peek_consume() {
        let mut b = MemoryBacklog::new();
        assert!(b.is_empty());
        b.append(&pts(0, 3), 10).unwrap();
        b.append(&pts(3, 4), 20).unwrap();
        b.append(&[], 25).unwrap();
        assert_eq!(b.len(), 7);
        assert!(b.bytes() > 0);
        assert_eq!(stamps(&b.peek(5).unwrap()), vec![0, 1, 2, 3, 4]);
        b.consume(2).unwrap();
        assert_eq!(stamps(&b.peek(100).unwrap()), vec![2, 3, 4, 5, 6]);
        assert_eq!(b.oldest_stored_at(), Some(10));
        b.consume(1).unwrap();
        assert_eq!(b.oldest_stored_at(), Some(20));
        b.consume(100).unwrap();
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
        assert_eq!(b.oldest_stored_at(), None);
        assert!(b.peek(10).unwrap().is_empty());
    }

    #[test]
    fn enforce_limits() {
        let mut b = MemoryBacklog::new();
        b.append(&pts(0, 5), 10).unwrap();
        b.append(&pts(5, 5), 20).unwrap();
        b.append(&pts(10, 5), 30).unwrap();
        assert_eq!(b.enforce_size(12).unwrap(), 3);
        assert_eq!(b.len(), 12);
        assert_eq!(b.enforce_size(12).unwrap(), 0);
        assert_eq!(b.enforce_age(25).unwrap(), 7);
        assert_eq!(stamps(&b.peek(100).unwrap()), (10..15).collect::<Vec<_>>());
        assert_eq!(b.enforce_age(25).unwrap(), 0);
    }

    #[test]
    fn fail_appends_stores_nothing() {
        let mut b = MemoryBacklog::new();
        b.fail_appends(true);
        assert!(b.append(&pts(0, 3), 1).is_err());
        assert!(b.is_empty());
        b.fail_appends(false);
        b.append(&pts(0, 3), 1).unwrap();
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn crash_drops_only_unsynced_appends() {
        let mut b = MemoryBacklog::new();
        b.append(&pts(0, 3), 1).unwrap();
        b.append(&pts(3, 3), 2).unwrap();
        b.sync().unwrap();
        b.append(&pts(6, 3), 3).unwrap();
        b.append(&pts(9, 3), 4).unwrap();
        b.consume(1).unwrap();
        b.crash();
        assert_eq!(b.len(), 5);
        assert_eq!(stamps(&b.peek(100).unwrap()), vec![1, 2, 3, 4, 5]);
        // A crash right after a sync loses nothing.
        b.crash();
        assert_eq!(b.len(), 5);
        // Unsynced appends that were already consumed are simply gone.
        b.append(&pts(12, 2), 5).unwrap();
        b.consume(7).unwrap();
        b.crash();
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
        // Consuming into the unsynced tail, then crashing.
        b.append(&pts(20, 2), 6).unwrap();
        b.sync().unwrap();
        b.append(&pts(22, 2), 7).unwrap();
        b.consume(3).unwrap();
        b.crash();
        assert!(b.is_empty());
        b.append(&pts(30, 1), 8).unwrap();
        assert_eq!(stamps(&b.peek(10).unwrap()), vec![30]);
    }
}
