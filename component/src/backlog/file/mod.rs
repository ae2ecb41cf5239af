//! The backlog on disk: append-only segment files plus a head cursor.
//!
//! Only `std::fs` / `std::io` are used, so the same code runs natively and
//! inside the component, where std maps onto wasi:filesystem (no mmap, no
//! locks, no threads). Nothing is ever rewritten in place except the two
//! cursor slots.
//!
//! # Layout of the directory
//!
//! * `NNNNNNNNNNNNNNNN.seg` (16 lowercase hex digits, increasing): a segment.
//!   It starts with a 16-byte header, `b"INFXSEG\0"`, a u16 LE format
//!   version (1) and zero padding, followed by records. The writer rolls to a
//!   new segment once the current one would exceed the segment limit.
//! * A record is `u32 LE payload length`, `u32 LE CRC32C of the payload`, and
//!   the payload: the postcard encoding of a `RecordHeader` followed by the
//!   codec body ([`encode_points`](crate::codec::encode_points)). Every point has a global sequence number
//!   (the first point ever appended is 0); a record holds `count` points from
//!   `first_seq` on.
//! * `cursor`: the sequence number of the oldest live point, in two 32-byte
//!   slots written alternately (magic, u64 generation, u64 seq, CRC32C), so a
//!   torn write of one slot leaves the other intact.
//! * `quarantine/`: segments whose header was unreadable, moved aside at open.
//!
//! # Recovery at open
//!
//! Every segment is read once and parsed by [`parse_segment_bytes`]: records
//! are checked by length, CRC32C and header, not decoded (that is left to
//! `peek`, which drops a record that fails and reports it once). After
//! damage, reading resumes at the next offset where a record with a good
//! checksum and a sound header starts, so damage costs only the records it
//! touched. A torn tail of the last segment is cut; damage that no intact
//! record follows is cut; damage followed by intact records is left in place
//! (skipped again, and reported while it lies after the cursor). Sequence
//! numbers tell exactly how many points were lost between intact records
//! (a deleted segment file too); see [`RecoveryReport`].
//!
//! In memory only an index of records is kept (about 40 bytes per record),
//! never the points, plus the last decoded record for the usual
//! `peek(n)` / `consume(n)` rhythm.
//!
//! # Where things are
//!
//! `segment` (file names, header, parsing a segment's bytes), `record`
//! (framing, header, encoding), `cursor` (the cursor file), `recovery`
//! (what `open` does), `writer` (appending, rolling, fsyncs), `reader`
//! (`peek`), `head` (moving the cursor, deleting segments) and `inspect`
//! (read-only helpers for tools); this module holds [`FileBacklog`] itself.

mod cursor;
mod head;
pub mod inspect;
mod reader;
mod record;
mod recovery;
mod segment;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{Backlog, BacklogError, RecoveryReport};
use crate::point::Point;
use reader::Cache;
use record::RecordMeta;
use segment::{segment_name, Segment};
use writer::Active;

pub use recovery::{HintedRecord, IndexHint};
pub use segment::{parse_segment_bytes, ParsedSegment, SegmentHeader, SegmentItem, TailKind};
pub use writer::{SyncMode, DEFAULT_SEGMENT_BYTES};

/// Bytes one append adds to [`FileBacklog::bytes`] beyond the codec body
/// of its points, at most: the frame, the longest record header, and the
/// header of a new segment should the record start one.
pub const MAX_RECORD_OVERHEAD: u64 =
    record::FRAME_LEN + record::MAX_HEADER_LEN + segment::SEG_HEADER_LEN;

/// The largest record payload (header and codec body) the frame's u32
/// length can describe; an append of more fails and stores nothing.
pub const MAX_RECORD_PAYLOAD: u64 = u32::MAX as u64;

/// A [`Backlog`] in a directory of append-only segment files.
#[derive(Debug)]
pub struct FileBacklog {
    /// Points dropped because their record failed its checks when read,
    /// not yet reported (`take_read_losses`).
    read_losses: u64,
    dir: PathBuf,
    sync_mode: SyncMode,
    segment_bytes: u64,
    /// Segment files on disk, oldest first; the active one, if any, is last.
    segments: VecDeque<Segment>,
    /// Records holding at least one point at or after `cursor`, oldest first.
    index: VecDeque<RecordMeta>,
    /// Sum of `count` over `index`.
    indexed_points: u64,
    /// Sequence number of the oldest live point.
    cursor: u64,
    /// Generation of the last cursor slot written.
    cursor_gen: u64,
    cursor_file: Option<File>,
    /// Sequence number the next appended point gets.
    next_seq: u64,
    next_segment_id: u64,
    active: Option<Active>,
    /// A read handle on one segment, for `peek`.
    reader: Option<(u64, File)>,
    cache: Option<Cache>,
    /// A segment was created since the last directory fsync.
    dir_dirty: bool,
    /// Scratch buffer for encoding and reading records.
    buf: Vec<u8>,
    /// (first_seq, end) of the intact records in quarantine at open. Moving
    /// the head over sequence numbers that are not on disk (at open, after a
    /// dropped record) stops at them, so that a segment put back before
    /// newer points are consumed is delivered; consuming newer points does
    /// move the head past them.
    held: Vec<(u64, u64)>,
}

fn err(msg: String) -> BacklogError {
    BacklogError(msg)
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

impl FileBacklog {
    /// Open (creating if needed) the backlog in `dir`, repairing what a crash
    /// or damage left behind. Fails only if the directory cannot be created
    /// or listed.
    ///
    /// Records are checked by their CRC32C and header, not decoded: a body
    /// that fails to decode despite a good checksum (a bug, not damage) is
    /// found by `peek`, which drops that record and reports it once.
    pub fn open(
        dir: &Path,
        sync_mode: SyncMode,
    ) -> Result<(FileBacklog, RecoveryReport), BacklogError> {
        FileBacklog::open_with(dir, sync_mode, false, None)
    }

    /// Open a backlog that a live instance has been using until now (a
    /// swap to another version): the same recovery, but the checksums of
    /// records before the last segment are left to the reads, which check
    /// every record anyway. Cuts the swap pause by the checksum time of the
    /// whole backlog.
    pub fn open_trusted(
        dir: &Path,
        sync_mode: SyncMode,
        hint: Option<&IndexHint>,
    ) -> Result<(FileBacklog, RecoveryReport), BacklogError> {
        FileBacklog::open_with(dir, sync_mode, true, hint)
    }

    fn open_with(
        dir: &Path,
        sync_mode: SyncMode,
        trusted: bool,
        hint: Option<&IndexHint>,
    ) -> Result<(FileBacklog, RecoveryReport), BacklogError> {
        fs::create_dir_all(dir).map_err(|e| {
            err(format!(
                "could not create backlog directory {}: {e}",
                dir.display()
            ))
        })?;
        let ids = segment::segment_ids(dir).map_err(|e| {
            err(format!(
                "could not read backlog directory {}: {e}",
                dir.display()
            ))
        })?;

        let mut report = RecoveryReport::default();
        let stored =
            cursor::read_cursor_slots(&dir.join(cursor::CURSOR_FILE), !ids.is_empty(), &mut report);
        let recovery::Recovered {
            index,
            segments,
            quarantined,
            next_seq,
            cursor,
        } = recovery::recover(dir, &ids, stored, trusted, hint, &mut report);
        let mut b = FileBacklog {
            dir: dir.to_path_buf(),
            sync_mode,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segments,
            indexed_points: index.iter().map(|r| u64::from(r.count)).sum(),
            index,
            cursor,
            cursor_gen: stored.map_or(0, |s| s.generation),
            cursor_file: None,
            next_seq: next_seq.max(cursor),
            next_segment_id: ids.last().map_or(0, |&id| id + 1),
            active: None,
            reader: None,
            cache: None,
            dir_dirty: false,
            buf: Vec::new(),
            held: quarantined,
            read_losses: 0,
        };
        // Points between the cursor and the first intact record are not on
        // disk (lost, or delivered): start at that record, so that a loss is
        // reported once, not at every open until the next consume.
        let head = b.skip_limit(cursor, b.index.front().map_or(b.next_seq, |r| r.first_seq));
        if stored.is_none() {
            // Record where we start, so the next open finds a valid cursor;
            // in a new file, so that no damaged slot can come back to life.
            let _ = fs::remove_file(b.cursor_path());
        }
        if stored.is_none_or(|s| s.seq != head) {
            match b.write_cursor(head) {
                Ok(()) => b.cursor = head,
                Err(e) => report.warnings.push(e.0),
            }
        }
        // Segments wholly before the cursor (consumed before a crash, or
        // holding only damaged records) go now.
        b.gc_segments();
        report.points = b.len();
        Ok((b, report))
    }

    /// Roll to a new segment once the current one would exceed `n` bytes.
    pub fn set_segment_bytes(&mut self, n: u64) {
        self.segment_bytes = n;
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }
}

impl Backlog for FileBacklog {
    fn append(&mut self, points: &[Point], stored_at: i64) -> Result<(), BacklogError> {
        self.append_record(points, stored_at)
    }

    fn sync(&mut self) -> Result<(), BacklogError> {
        self.sync_batch()
    }

    fn sync_durable(&mut self) -> Result<(), BacklogError> {
        self.sync_forced()
    }

    fn len(&self) -> u64 {
        let skipped = self
            .index
            .front()
            .map_or(0, |r| self.cursor.saturating_sub(r.first_seq));
        self.indexed_points - skipped
    }

    fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Reads from disk; only the last record touched is kept decoded. A
    /// record found damaged is dropped and reported as an error once, so the
    /// next call moves past it.
    fn peek(&mut self, max: usize) -> Result<Vec<Point>, BacklogError> {
        self.peek_points(max)
    }

    fn take_read_losses(&mut self) -> u64 {
        std::mem::take(&mut self.read_losses)
    }

    fn index_hint(&self) -> Option<IndexHint> {
        Some(self.hint())
    }

    fn consume(&mut self, n: u64) -> Result<(), BacklogError> {
        let (cursor, _) = self.plan_advance(n);
        self.commit_cursor(cursor)
    }

    fn enforce_size(&mut self, max_points: u64) -> Result<u64, BacklogError> {
        let excess = self.len().saturating_sub(max_points);
        if excess == 0 {
            return Ok(0);
        }
        let (cursor, dropped) = self.plan_advance(excess);
        self.commit_cursor(cursor)?;
        Ok(dropped)
    }

    fn enforce_age(&mut self, cutoff: i64) -> Result<u64, BacklogError> {
        let (cursor, dropped) = self.plan_age(cutoff);
        if dropped == 0 {
            return Ok(0);
        }
        self.commit_cursor(cursor)?;
        Ok(dropped)
    }

    fn oldest_stored_at(&self) -> Option<i64> {
        self.index.front().map(|r| r.stored_at)
    }
}
