//! Moving the head: where `consume` and the size and age limits land,
//! persisting the new cursor, and forgetting the records and deleting the
//! segment files wholly before it.

use std::fs;
use std::io;

use super::FileBacklog;
use crate::backlog::BacklogError;

impl FileBacklog {
    /// Where the cursor lands after skipping `n` live points, and how many
    /// points that actually skips.
    pub(super) fn plan_advance(&self, mut n: u64) -> (u64, u64) {
        let mut cursor = self.cursor;
        let mut skipped = 0;
        for r in &self.index {
            if n == 0 {
                break;
            }
            let start = cursor.max(r.first_seq);
            let avail = r.end() - start;
            if n < avail {
                return (start + n, skipped + n);
            }
            n -= avail;
            skipped += avail;
            cursor = r.end();
        }
        (cursor, skipped)
    }

    /// Where the cursor lands after dropping the records stored before
    /// `cutoff`, and how many points that drops.
    pub(super) fn plan_age(&self, cutoff: i64) -> (u64, u64) {
        let mut cursor = self.cursor;
        let mut dropped = 0;
        for r in &self.index {
            if r.stored_at >= cutoff {
                break;
            }
            dropped += r.end() - cursor.max(r.first_seq);
            cursor = r.end();
        }
        (cursor, dropped)
    }

    /// Persist the new head, then forget records and delete segments that
    /// are wholly before it. On error nothing changes.
    pub(super) fn commit_cursor(&mut self, cursor: u64) -> Result<(), BacklogError> {
        // Nothing live left: the head moves to the end, past records dropped
        // as damaged, so that a restart does not find and report them again.
        let cursor = if self.index.iter().any(|r| r.end() > cursor) {
            cursor
        } else {
            self.skip_limit(cursor, self.next_seq)
        };
        if cursor != self.cursor {
            self.write_cursor(cursor)?;
            self.cursor = cursor;
        }
        while let Some(r) = self.index.front() {
            if r.end() > cursor {
                break;
            }
            if self
                .cache
                .as_ref()
                .is_some_and(|c| c.first_seq == r.first_seq)
            {
                self.cache = None;
            }
            self.indexed_points -= u64::from(r.count);
            self.index.pop_front();
        }
        self.gc_segments();
        Ok(())
    }

    /// Delete the segment files before the one holding the oldest live
    /// record (all of them when the backlog is empty). A file that cannot be
    /// deleted now is retried after the next cursor move.
    pub(super) fn gc_segments(&mut self) {
        let keep_from = self.index.front().map(|r| r.seg);
        while let Some(s) = self.segments.front() {
            if keep_from.is_some_and(|k| s.id >= k) {
                break;
            }
            let id = s.id;
            match fs::remove_file(self.segment_path(id)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => break,
            }
            self.segments.pop_front();
            if self.active.as_ref().is_some_and(|a| a.id == id) {
                self.active = None;
            }
            if self.reader.as_ref().is_some_and(|(r, _)| *r == id) {
                self.reader = None;
            }
        }
    }

    /// After records were dropped at the head, move the cursor to the first
    /// one left (their points are gone), and let their segments go. Best
    /// effort: the error that dropped them is reported already.
    pub(super) fn skip_to_head(&mut self) {
        let head = self.index.front().map_or(self.next_seq, |r| r.first_seq);
        let _ = self.commit_cursor(self.skip_limit(self.cursor, head));
    }

    /// How far the head may move from `cursor` towards `to` over sequence
    /// numbers that are not on disk: not past points in quarantine.
    pub(super) fn skip_limit(&self, cursor: u64, to: u64) -> u64 {
        self.held
            .iter()
            .filter(|&&(_, end)| end > cursor)
            .map(|&(start, _)| start)
            .fold(to, u64::min)
            .max(cursor)
    }
}
