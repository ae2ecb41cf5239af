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
//!   the payload: the postcard encoding of [`RecordHeader`] followed by the
//!   codec body ([`encode_points`]). Every point has a global sequence number
//!   (the first point ever appended is 0); a record holds `count` points from
//!   `first_seq` on.
//! * `cursor`: the sequence number of the oldest live point, in two 32-byte
//!   slots written alternately (magic, u64 generation, u64 seq, CRC32C), so a
//!   torn write of one slot leaves the other intact.
//! * `quarantine/`: segments whose header was unreadable, moved aside at open.
//!
//! In memory only an index of records is kept (about 40 bytes per record),
//! never the points, plus the last decoded record for the usual
//! `peek(n)` / `consume(n)` rhythm.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Backlog, BacklogError, RecoveryReport};
use crate::codec::{decode_points, encode_points};
use crate::point::Point;

/// Default size after which the writer rolls to a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;

const SEG_MAGIC: &[u8; 8] = b"INFXSEG\0";
const SEG_VERSION: u16 = 1;
const SEG_HEADER_LEN: u64 = 16;
/// Length and CRC in front of every record payload.
const FRAME_LEN: u64 = 8;
const RECORD_VERSION: u8 = 1;
const CURSOR_FILE: &str = "cursor";
const CURSOR_MAGIC: &[u8; 8] = b"INFXCUR\0";
const CURSOR_SLOT_LEN: u64 = 32;
const QUARANTINE_DIR: &str = "quarantine";

/// When appended records are forced to stable storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync the segment after every append, and the cursor after every move.
    Always,
    /// fsync only in [`Backlog::sync`], which the policy calls after a group
    /// of appends.
    #[default]
    Batch,
    /// Never fsync; the OS writes back when it likes. A killed process loses
    /// nothing, a power cut may lose the recent tail.
    Never,
}

/// The postcard-encoded start of every record payload.
#[derive(Debug, Serialize, Deserialize)]
struct RecordHeader {
    version: u8,
    first_seq: u64,
    count: u32,
    stored_at: i64,
}

/// Where one live record is, and what it holds.
#[derive(Clone, Copy, Debug)]
struct RecordMeta {
    seg: u64,
    /// Offset of the record's length field in the segment.
    offset: u64,
    /// Payload length.
    len: u32,
    first_seq: u64,
    count: u32,
    stored_at: i64,
}

impl RecordMeta {
    fn end(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }
}

/// A segment file kept in the directory.
#[derive(Debug)]
struct Segment {
    id: u64,
    size: u64,
}

/// The segment being appended to (always the last of `segments`).
#[derive(Debug)]
struct Active {
    id: u64,
    file: File,
    /// Written since the last fsync.
    dirty: bool,
}

/// The last record `peek` decoded.
#[derive(Debug)]
struct Cache {
    first_seq: u64,
    points: Vec<Point>,
}

/// Why a record could not be read back.
enum LoadError {
    /// The storage failed; retrying may help.
    Io(String),
    /// The record is damaged; it must be skipped.
    Corrupt(String),
    /// The whole segment file is gone; its records must be skipped.
    Missing(String),
}

/// A [`Backlog`] in a directory of append-only segment files.
#[derive(Debug)]
pub struct FileBacklog {
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
}

fn err(msg: String) -> BacklogError {
    BacklogError(msg)
}

fn segment_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

fn segment_header() -> [u8; SEG_HEADER_LEN as usize] {
    let mut h = [0u8; SEG_HEADER_LEN as usize];
    h[..8].copy_from_slice(SEG_MAGIC);
    h[8..10].copy_from_slice(&SEG_VERSION.to_le_bytes());
    h
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"))
}

/// fsync a directory so new entries in it survive a power cut. Best effort:
/// not every platform (or WASI host) lets a directory be opened or synced.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Parse a record payload: header, then body.
fn decode_payload(payload: &[u8]) -> Result<(RecordHeader, Vec<Point>), String> {
    let (h, body) = postcard::take_from_bytes::<RecordHeader>(payload)
        .map_err(|e| format!("undecodable record header: {e}"))?;
    check_header(&h)?;
    let points = decode_points(body).map_err(|e| e.to_string())?;
    if points.len() != h.count as usize {
        return Err(format!(
            "record header says {} points but the body holds {}",
            h.count,
            points.len()
        ));
    }
    Ok((h, points))
}

fn check_header(h: &RecordHeader) -> Result<(), String> {
    if h.version != RECORD_VERSION {
        return Err(format!("unknown record version {}", h.version));
    }
    if h.count == 0 {
        return Err("record holds no points".to_string());
    }
    if h.first_seq.checked_add(u64::from(h.count)).is_none() {
        return Err(format!("sequence number {} out of range", h.first_seq));
    }
    Ok(())
}

/// Whether a complete record with a good checksum starts at `at`.
fn valid_frame_at(data: &[u8], at: usize) -> bool {
    if data.len() - at < FRAME_LEN as usize {
        return false;
    }
    let len = u32_at(data, at) as usize;
    let Some(end) = (at + FRAME_LEN as usize).checked_add(len) else {
        return false;
    };
    len > 0 && end <= data.len() && crc32c::crc32c(&data[at + 8..end]) == u32_at(data, at + 4)
}

/// State carried across segments while recovering at open.
struct Scan<'a> {
    dir: &'a Path,
    /// The stored cursor, if a valid slot was found.
    cursor: Option<u64>,
    /// End sequence number of the last good record.
    prev_end: u64,
    index: VecDeque<RecordMeta>,
    segments: VecDeque<Segment>,
    /// Damage found since the last good record: reported only if that record
    /// lies after the cursor (damage among delivered points is not news).
    pending: Vec<(u64, String)>,
    good_records: u64,
    good_bytes: u64,
    report: &'a mut RecoveryReport,
    data: Vec<u8>,
}

impl Scan<'_> {
    fn corrupt(&mut self, records: u64, warning: String) {
        self.pending.push((records, warning));
    }

    fn flush_pending(&mut self) {
        for (n, w) in self.pending.drain(..) {
            self.report.corrupt_records += n;
            self.report.warnings.push(w);
        }
    }

    /// Cut `file` at `at`; returns the new size (the old one if it failed).
    fn cut(&mut self, file: &File, path: &Path, at: usize) -> u64 {
        match file.set_len(at as u64) {
            Ok(()) => at as u64,
            Err(e) => {
                self.report.warnings.push(format!(
                    "could not truncate backlog segment {} at offset {at}: {e}",
                    path.display()
                ));
                self.data.len() as u64
            }
        }
    }

    fn quarantine(&mut self, path: &Path, id: u64, reason: &str) {
        let qdir = self.dir.join(QUARANTINE_DIR);
        let name = segment_name(id);
        let mut target = qdir.join(&name);
        let mut n = 1;
        while target.exists() {
            target = qdir.join(format!("{name}.{n}"));
            n += 1;
        }
        let moved = fs::create_dir_all(&qdir).and_then(|()| fs::rename(path, &target));
        self.report.warnings.push(match moved {
            Ok(()) => format!(
                "backlog segment {} has a bad header ({reason}); moved it to {}",
                path.display(),
                target.display()
            ),
            Err(e) => format!(
                "backlog segment {} has a bad header ({reason}) and could not be moved to {}: {e}; \
                 left it in place, unread",
                path.display(),
                target.display()
            ),
        });
    }

    fn segment(&mut self, id: u64, last: bool) {
        let path = self.dir.join(segment_name(id));
        let read = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|e| match e.kind() {
                // Still readable; repairs that need writing will warn.
                io::ErrorKind::PermissionDenied => File::open(&path),
                _ => Err(e),
            })
            .and_then(|mut f| {
                self.data.clear();
                f.read_to_end(&mut self.data).map(|_| f)
            });
        let file = match read {
            Ok(f) => f,
            Err(e) => {
                self.report.warnings.push(format!(
                    "could not read backlog segment {}: {e}; left it in place, unread",
                    path.display()
                ));
                return;
            }
        };
        let header = segment_header();
        if self.data.len() < header.len() {
            if last && header.starts_with(&self.data) {
                // A segment whose creation was interrupted: it holds no records.
                let n = self.data.len() as u64;
                match fs::remove_file(&path) {
                    Ok(()) => {
                        self.report.torn_bytes += n;
                        self.report.warnings.push(format!(
                            "backlog segment {}: removed it, its header was cut at {n} bytes \
                             (creation interrupted by a crash)",
                            path.display()
                        ));
                    }
                    Err(e) => self.report.warnings.push(format!(
                        "could not remove incomplete backlog segment {}: {e}",
                        path.display()
                    )),
                }
            } else {
                let reason = format!("only {} bytes long", self.data.len());
                self.quarantine(&path, id, &reason);
            }
            return;
        }
        if &self.data[..8] != SEG_MAGIC {
            self.quarantine(&path, id, "wrong magic");
            return;
        }
        let version = u16::from_le_bytes([self.data[8], self.data[9]]);
        if version != SEG_VERSION {
            self.quarantine(&path, id, &format!("unknown format version {version}"));
            return;
        }

        let mut size = self.data.len() as u64;
        let mut off = SEG_HEADER_LEN as usize;
        while off < self.data.len() {
            let rem = self.data.len() - off;
            let len = if rem >= FRAME_LEN as usize {
                u32_at(&self.data, off) as usize
            } else {
                0
            };
            let end = off + FRAME_LEN as usize + len;
            let torn = rem < FRAME_LEN as usize
                || end > self.data.len()
                || (len == 0 && self.data[off..].iter().all(|&b| b == 0));
            if last && torn {
                // An append interrupted by a crash (or zeros the filesystem
                // put where the unwritten tail would have been).
                size = self.cut(&file, &path, off);
                self.report.torn_bytes += rem as u64;
                self.report.warnings.push(format!(
                    "backlog segment {}: cut a torn tail of {rem} bytes at offset {off} \
                     (a write interrupted by a crash)",
                    path.display()
                ));
                break;
            }
            let payload_ok = len > 0
                && !torn
                && crc32c::crc32c(&self.data[off + 8..end]) == u32_at(&self.data, off + 4);
            if !payload_ok {
                if len > 0 && !torn && (end == self.data.len() || valid_frame_at(&self.data, end)) {
                    // The length leads to the next record: only this one is bad.
                    let w = format!(
                        "backlog segment {}: skipped a corrupt record at offset {off} \
                         ({len} bytes): checksum mismatch",
                        path.display()
                    );
                    self.corrupt(1, w);
                    off = end;
                    continue;
                }
                // The length field itself is garbage: the records after it
                // cannot be found. Cut them, estimating how many there were.
                let avg = self.good_bytes.checked_div(self.good_records).unwrap_or(0);
                let lost = (rem as u64 + avg / 2).checked_div(avg).unwrap_or(1).max(1);
                size = self.cut(&file, &path, off);
                let w = format!(
                    "backlog segment {}: the record at offset {off} is damaged and the records \
                     after it cannot be located; cut the remaining {rem} bytes (about {lost} records)",
                    path.display()
                );
                self.corrupt(lost, w);
                break;
            }
            let payload = &self.data[off + 8..end];
            let parsed = postcard::take_from_bytes::<RecordHeader>(payload)
                .map_err(|e| format!("undecodable record header: {e}"))
                .and_then(|(h, _)| check_header(&h).map(|()| h));
            let h = match parsed {
                Ok(h) if h.first_seq < self.prev_end => Err(format!(
                    "sequence number {} goes backwards (the previous record ended at {})",
                    h.first_seq, self.prev_end
                )),
                other => other,
            };
            let h = h.and_then(|h| {
                let live = self
                    .cursor
                    .is_none_or(|c| h.first_seq + u64::from(h.count) > c);
                if live {
                    // Decode the body once now, so a bad one is found at open.
                    decode_payload(payload).map(|(h, _)| (h, true))
                } else {
                    Ok((h, false))
                }
            });
            match h {
                Err(why) => {
                    let w = format!(
                        "backlog segment {}: skipped a corrupt record at offset {off} ({len} bytes): {why}",
                        path.display()
                    );
                    self.corrupt(1, w);
                }
                Ok((h, live)) => {
                    if self.cursor.is_some_and(|c| h.first_seq <= c) {
                        self.pending.clear();
                    } else {
                        self.flush_pending();
                    }
                    self.prev_end = h.first_seq + u64::from(h.count);
                    self.good_records += 1;
                    self.good_bytes += (FRAME_LEN as usize + len) as u64;
                    if live {
                        self.index.push_back(RecordMeta {
                            seg: id,
                            offset: off as u64,
                            len: len as u32,
                            first_seq: h.first_seq,
                            count: h.count,
                            stored_at: h.stored_at,
                        });
                    }
                }
            }
            off = end;
        }
        self.segments.push_back(Segment { id, size });
    }
}

/// Read the cursor file: the (generation, seq) of the newest valid slot.
fn read_cursor(
    path: &Path,
    have_segments: bool,
    report: &mut RecoveryReport,
) -> Option<(u64, u64)> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if have_segments {
                report.warnings.push(format!(
                    "backlog cursor {} is missing; starting from the oldest record \
                     (points already delivered may be sent again)",
                    path.display()
                ));
            }
            return None;
        }
        Err(e) => {
            report.warnings.push(format!(
                "could not read backlog cursor {}: {e}; starting from the oldest record \
                 (points already delivered may be sent again)",
                path.display()
            ));
            return None;
        }
    };
    let best = data
        .chunks_exact(CURSOR_SLOT_LEN as usize)
        .take(2)
        .filter(|s| &s[..8] == CURSOR_MAGIC && crc32c::crc32c(&s[..24]) == u32_at(s, 24))
        .map(|s| (u64_at(s, 8), u64_at(s, 16)))
        .max_by_key(|&(generation, _)| generation);
    if best.is_none() {
        report.warnings.push(format!(
            "backlog cursor {} has no valid slot; starting from the oldest record \
             (points already delivered may be sent again)",
            path.display()
        ));
    }
    best
}

impl FileBacklog {
    /// Open (creating if needed) the backlog in `dir`, repairing what a crash
    /// or damage left behind. Fails only if the directory cannot be created
    /// or listed.
    pub fn open(
        dir: &Path,
        sync_mode: SyncMode,
    ) -> Result<(FileBacklog, RecoveryReport), BacklogError> {
        fs::create_dir_all(dir).map_err(|e| {
            err(format!(
                "could not create backlog directory {}: {e}",
                dir.display()
            ))
        })?;
        let list_err = |e: io::Error| {
            err(format!(
                "could not read backlog directory {}: {e}",
                dir.display()
            ))
        };
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(list_err)? {
            let entry = entry.map_err(list_err)?;
            let Some(id) = entry.file_name().to_str().and_then(parse_segment_name) else {
                continue;
            };
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                ids.push(id);
            }
        }
        ids.sort_unstable();

        let mut report = RecoveryReport::default();
        let stored = read_cursor(&dir.join(CURSOR_FILE), !ids.is_empty(), &mut report);
        let mut scan = Scan {
            dir,
            cursor: stored.map(|(_, seq)| seq),
            prev_end: 0,
            index: VecDeque::new(),
            segments: VecDeque::new(),
            pending: Vec::new(),
            good_records: 0,
            good_bytes: 0,
            report: &mut report,
            data: Vec::new(),
        };
        for (i, &id) in ids.iter().enumerate() {
            scan.segment(id, i + 1 == ids.len());
        }
        scan.flush_pending();
        let Scan {
            index,
            segments,
            prev_end,
            ..
        } = scan;

        let cursor = match stored {
            Some((_, seq)) => seq,
            None => index.front().map_or(prev_end, |r| r.first_seq),
        };
        let mut b = FileBacklog {
            dir: dir.to_path_buf(),
            sync_mode,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segments,
            indexed_points: index.iter().map(|r| u64::from(r.count)).sum(),
            index,
            cursor,
            cursor_gen: stored.map_or(0, |(generation, _)| generation),
            cursor_file: None,
            next_seq: prev_end.max(cursor),
            next_segment_id: ids.last().map_or(0, |&id| id + 1),
            active: None,
            reader: None,
            cache: None,
            dir_dirty: false,
            buf: Vec::new(),
        };
        if stored.is_none() {
            // Record where we start, so the next open finds a valid cursor.
            if let Err(e) = b.write_cursor(cursor) {
                report.warnings.push(e.0);
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

    fn cursor_path(&self) -> PathBuf {
        self.dir.join(CURSOR_FILE)
    }

    /// Persist `seq` as the head, in the slot the last write did not use.
    fn write_cursor(&mut self, seq: u64) -> Result<(), BacklogError> {
        let generation = self.cursor_gen + 1;
        let mut slot = [0u8; CURSOR_SLOT_LEN as usize];
        slot[..8].copy_from_slice(CURSOR_MAGIC);
        slot[8..16].copy_from_slice(&generation.to_le_bytes());
        slot[16..24].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32c::crc32c(&slot[..24]);
        slot[24..28].copy_from_slice(&crc.to_le_bytes());
        let path = self.cursor_path();
        let always = self.sync_mode == SyncMode::Always;
        let file = match self.cursor_file.take() {
            Some(f) => Ok(f),
            None => OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path),
        };
        let result = file.and_then(|mut f| {
            f.seek(SeekFrom::Start((generation % 2) * CURSOR_SLOT_LEN))?;
            f.write_all(&slot)?;
            if always {
                f.sync_data()?;
            }
            Ok(f)
        });
        match result {
            Ok(f) => {
                self.cursor_file = Some(f);
                self.cursor_gen = generation;
                Ok(())
            }
            Err(e) => Err(err(format!(
                "could not write backlog cursor {}: {e}",
                path.display()
            ))),
        }
    }

    /// Where the cursor lands after skipping `n` live points, and how many
    /// points that actually skips.
    fn plan_advance(&self, mut n: u64) -> (u64, u64) {
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

    /// Persist the new head, then forget records and delete segments that
    /// are wholly before it. On error nothing changes.
    fn commit_cursor(&mut self, cursor: u64) -> Result<(), BacklogError> {
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
    fn gc_segments(&mut self) {
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

    /// Stop appending to the active segment (fsyncing it first in Batch
    /// mode, since `sync()` only reaches the active one).
    fn retire_active(&mut self) -> Result<(), BacklogError> {
        if let Some(a) = &mut self.active {
            if a.dirty && self.sync_mode == SyncMode::Batch {
                a.file.sync_data().map_err(|e| {
                    err(format!(
                        "could not sync backlog segment {}: {e}",
                        self.dir.join(segment_name(a.id)).display()
                    ))
                })?;
            }
        }
        self.active = None;
        Ok(())
    }

    fn create_segment(&mut self) -> Result<(), BacklogError> {
        let (id, path, mut file) = loop {
            let id = self.next_segment_id;
            self.next_segment_id += 1;
            let path = self.segment_path(id);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (id, path, f),
                // A file we could not quarantine or remove holds this id.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(err(format!(
                        "could not create backlog segment {}: {e}",
                        path.display()
                    )));
                }
            }
        };
        let always = self.sync_mode == SyncMode::Always;
        let written = file.write_all(&segment_header()).and_then(|()| {
            if always {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(err(format!(
                "could not write the header of backlog segment {}: {e}",
                path.display()
            )));
        }
        if always {
            sync_dir(&self.dir);
        } else {
            self.dir_dirty = true;
        }
        self.segments.push_back(Segment {
            id,
            size: SEG_HEADER_LEN,
        });
        self.active = Some(Active {
            id,
            file,
            dirty: true,
        });
        Ok(())
    }

    /// Write one framed record to the active segment; returns (segment,
    /// offset). On error the segment is cut back to its previous length.
    fn write_frame(&mut self, frame: &[u8]) -> Result<(u64, u64), BacklogError> {
        let need = frame.len() as u64;
        if self.active.is_some() {
            let size = self.segments.back().map_or(0, |s| s.size);
            if size > SEG_HEADER_LEN && size + need > self.segment_bytes {
                self.retire_active()?;
            }
        }
        if self.active.is_none() {
            self.create_segment()?;
        }
        let always = self.sync_mode == SyncMode::Always;
        let a = self.active.as_mut().expect("an active segment");
        let seg = self
            .segments
            .back_mut()
            .expect("the active segment is listed");
        let offset = seg.size;
        let written =
            a.file
                .write_all(frame)
                .and_then(|()| if always { a.file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                seg.size += need;
                a.dirty = true;
                Ok((a.id, offset))
            }
            Err(e) => {
                let path = self.dir.join(segment_name(a.id));
                // Best effort: take back whatever part of the record landed.
                let undone = a
                    .file
                    .set_len(offset)
                    .and_then(|()| a.file.seek(SeekFrom::Start(offset)));
                if undone.is_err() {
                    // The tail is unknown: never append behind it again.
                    if let Ok(m) = fs::metadata(&path) {
                        seg.size = m.len();
                    }
                    if self.sync_mode == SyncMode::Batch {
                        // `sync()` will not reach this file any more.
                        let _ = a.file.sync_data();
                    }
                    self.active = None;
                }
                Err(err(format!(
                    "could not append to backlog segment {}: {e}",
                    path.display()
                )))
            }
        }
    }

    /// Read and decode one record from its segment.
    fn load(&mut self, r: &RecordMeta) -> Result<Vec<Point>, LoadError> {
        let path = self.segment_path(r.seg);
        let io_err = |e: io::Error| {
            if e.kind() == io::ErrorKind::NotFound {
                LoadError::Missing(format!(
                    "backlog segment {} disappeared; dropped the points it held",
                    path.display()
                ))
            } else {
                LoadError::Io(format!(
                    "could not read backlog segment {}: {e}",
                    path.display()
                ))
            }
        };
        if self.reader.as_ref().is_none_or(|(id, _)| *id != r.seg) {
            self.reader = None;
            let f = File::open(&path).map_err(io_err)?;
            self.reader = Some((r.seg, f));
        }
        let (_, file) = self.reader.as_mut().expect("reader just opened");
        let total = FRAME_LEN as usize + r.len as usize;
        self.buf.clear();
        self.buf.resize(total, 0);
        let read = file
            .seek(SeekFrom::Start(r.offset))
            .and_then(|_| file.read_exact(&mut self.buf));
        if let Err(e) = read {
            self.reader = None;
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Err(LoadError::Corrupt(format!(
                    "backlog segment {} was cut short before offset {}",
                    path.display(),
                    r.offset
                )));
            }
            return Err(io_err(e));
        }
        let corrupt = |why: String| {
            LoadError::Corrupt(format!(
                "backlog segment {}: the record at offset {} became unreadable ({why}); \
                 dropped its {} points",
                path.display(),
                r.offset,
                r.count
            ))
        };
        let payload = &self.buf[8..];
        if u32_at(&self.buf, 0) != r.len || crc32c::crc32c(payload) != u32_at(&self.buf, 4) {
            return Err(corrupt("checksum mismatch".to_string()));
        }
        let (h, points) = decode_payload(payload).map_err(corrupt)?;
        if h.first_seq != r.first_seq || h.count != r.count {
            return Err(corrupt("record header changed".to_string()));
        }
        Ok(points)
    }

    /// Forget a segment file that vanished, with all its records.
    fn forget_segment(&mut self, id: u64) {
        self.index.retain(|x| x.seg != id);
        self.indexed_points = self.index.iter().map(|r| u64::from(r.count)).sum();
        self.segments.retain(|s| s.id != id);
        self.cache = None;
        self.reader = None;
        if self.active.as_ref().is_some_and(|a| a.id == id) {
            self.active = None;
        }
    }

    /// Forget index entry `i` (its record could not be read back).
    fn drop_record(&mut self, i: usize) {
        if let Some(r) = self.index.remove(i) {
            self.indexed_points -= u64::from(r.count);
            if self
                .cache
                .as_ref()
                .is_some_and(|c| c.first_seq == r.first_seq)
            {
                self.cache = None;
            }
        }
    }
}

impl Backlog for FileBacklog {
    fn append(&mut self, points: &[Point], stored_at: i64) -> Result<(), BacklogError> {
        if points.is_empty() {
            return Ok(());
        }
        let count = u32::try_from(points.len()).map_err(|_| {
            err(format!(
                "could not append {} points to the backlog: batch too large",
                points.len()
            ))
        })?;
        let header = RecordHeader {
            version: RECORD_VERSION,
            first_seq: self.next_seq,
            count,
            stored_at,
        };
        let mut frame = std::mem::take(&mut self.buf);
        frame.clear();
        frame.extend_from_slice(&[0u8; FRAME_LEN as usize]);
        let mut frame = postcard::to_extend(&header, frame)
            .map_err(|e| err(format!("could not encode a backlog record header: {e}")))?;
        encode_points(points, &mut frame);
        let len = frame.len() - FRAME_LEN as usize;
        let Ok(len32) = u32::try_from(len) else {
            self.buf = frame;
            return Err(err(format!(
                "could not append {} points to the backlog: the record would be {len} bytes",
                points.len()
            )));
        };
        let crc = crc32c::crc32c(&frame[8..]);
        frame[..4].copy_from_slice(&len32.to_le_bytes());
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let written = self.write_frame(&frame);
        self.buf = frame;
        let (seg, offset) = written?;
        self.index.push_back(RecordMeta {
            seg,
            offset,
            len: len32,
            first_seq: self.next_seq,
            count,
            stored_at,
        });
        self.next_seq += u64::from(count);
        self.indexed_points += u64::from(count);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), BacklogError> {
        if self.sync_mode != SyncMode::Batch {
            return Ok(());
        }
        if let Some(a) = &mut self.active {
            if a.dirty {
                a.file.sync_data().map_err(|e| {
                    err(format!(
                        "could not sync backlog segment {}: {e}",
                        self.dir.join(segment_name(a.id)).display()
                    ))
                })?;
                a.dirty = false;
            }
        }
        if self.dir_dirty {
            sync_dir(&self.dir);
            self.dir_dirty = false;
        }
        Ok(())
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
        let mut out = Vec::with_capacity(max.min(self.len() as usize));
        let mut i = 0;
        while out.len() < max && i < self.index.len() {
            let r = self.index[i];
            let skip = self.cursor.saturating_sub(r.first_seq) as usize;
            let want = (r.count as usize - skip).min(max - out.len());
            let last_touched = out.len() + want == max || i + 1 == self.index.len();
            match &self.cache {
                Some(c) if c.first_seq == r.first_seq => {
                    out.extend_from_slice(&c.points[skip..skip + want]);
                }
                _ => match self.load(&r) {
                    Ok(points) if last_touched => {
                        out.extend_from_slice(&points[skip..skip + want]);
                        self.cache = Some(Cache {
                            first_seq: r.first_seq,
                            points,
                        });
                    }
                    Ok(points) => out.extend(points.into_iter().skip(skip).take(want)),
                    Err(LoadError::Io(msg)) => return Err(err(msg)),
                    Err(LoadError::Corrupt(msg)) => {
                        self.drop_record(i);
                        return Err(err(msg));
                    }
                    Err(LoadError::Missing(msg)) => {
                        self.forget_segment(r.seg);
                        return Err(err(msg));
                    }
                },
            }
            i += 1;
        }
        Ok(out)
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
        let mut cursor = self.cursor;
        let mut dropped = 0;
        for r in &self.index {
            if r.stored_at >= cutoff {
                break;
            }
            dropped += r.end() - cursor.max(r.first_seq);
            cursor = r.end();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backlog::memory::MemoryBacklog;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!(
                "influx-sink-backlog-{}-{name}-{n}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&p);
            TestDir(p)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn pts(from: u64, n: u64) -> Vec<Point> {
        (from..from + n)
            .map(|i| Point {
                line: format!("cpu,host=h{} usage={i}i,idle={}", i % 3, i as f64 / 7.0),
                series_len: 9,
                timestamp: i as i64,
            })
            .collect()
    }

    fn stamps(v: &[Point]) -> Vec<u64> {
        v.iter().map(|p| p.timestamp as u64).collect()
    }

    fn range(a: u64, b: u64) -> Vec<u64> {
        (a..b).collect()
    }

    fn open(d: &TestDir) -> (FileBacklog, RecoveryReport) {
        FileBacklog::open(&d.0, SyncMode::Batch).unwrap()
    }

    fn open_clean(d: &TestDir) -> FileBacklog {
        let (b, r) = open(d);
        assert!(
            r.warnings.is_empty(),
            "unexpected warnings: {:?}",
            r.warnings
        );
        assert_eq!((r.torn_bytes, r.corrupt_records), (0, 0));
        b
    }

    fn seg_files(d: &TestDir) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    fn disk_bytes(d: &TestDir) -> u64 {
        seg_files(d)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    }

    /// (offset, total length) of every record in a segment file.
    fn frames(path: &Path) -> Vec<(usize, usize)> {
        let data = fs::read(path).unwrap();
        let mut off = SEG_HEADER_LEN as usize;
        let mut v = Vec::new();
        while off < data.len() {
            let len = 8 + u32_at(&data, off) as usize;
            v.push((off, len));
            off += len;
        }
        v
    }

    fn flip(path: &Path, at: usize, mask: u8) {
        let mut data = fs::read(path).unwrap();
        data[at] ^= mask;
        fs::write(path, data).unwrap();
    }

    fn copy_dir(from: &TestDir, to: &TestDir) {
        fs::create_dir_all(&to.0).unwrap();
        for e in fs::read_dir(&from.0).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                fs::copy(e.path(), to.0.join(e.file_name())).unwrap();
            }
        }
    }

    fn drain(b: &mut FileBacklog, step: usize) -> Vec<u64> {
        let mut all = Vec::new();
        loop {
            let p = b.peek(step).unwrap();
            if p.is_empty() {
                return all;
            }
            all.extend(stamps(&p));
            b.consume(p.len() as u64).unwrap();
        }
    }

    #[test]
    fn fifo_across_segments_and_reopen() {
        let d = TestDir::new("fifo");
        let mut b = open_clean(&d);
        b.set_segment_bytes(1024);
        for i in 0..40 {
            b.append(&pts(i * 5, 5), i as i64).unwrap();
            if i % 3 == 0 {
                b.sync().unwrap();
            }
        }
        assert!(seg_files(&d).len() > 3);
        assert_eq!(b.len(), 200);
        assert_eq!(b.bytes(), disk_bytes(&d));
        assert_eq!(stamps(&b.peek(1000).unwrap()), range(0, 200));
        drop(b);

        let (mut b, r) = open(&d);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.points, 200);
        assert_eq!(stamps(&b.peek(1000).unwrap()), range(0, 200));
        assert_eq!(b.oldest_stored_at(), Some(0));
        // Appends after a reopen start a new segment.
        let before = seg_files(&d);
        b.append(&pts(200, 5), 40).unwrap();
        let after = seg_files(&d);
        assert_eq!(after.len(), before.len() + 1);
        assert!(after.last() > before.last());
        assert_eq!(drain(&mut b, 7), range(0, 205));
        assert!(b.is_empty());
        assert!(seg_files(&d).is_empty());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn peek_spans_records() {
        let d = TestDir::new("peek");
        let mut b = open_clean(&d);
        for i in 0..3 {
            b.append(&pts(i * 4, 4), 0).unwrap();
        }
        assert!(b.peek(0).unwrap().is_empty());
        b.consume(2).unwrap();
        assert_eq!(b.len(), 10);
        assert_eq!(stamps(&b.peek(7).unwrap()), range(2, 9));
        assert_eq!(stamps(&b.peek(7).unwrap()), range(2, 9));
        assert_eq!(stamps(&b.peek(100).unwrap()), range(2, 12));
        b.consume(3).unwrap();
        assert_eq!(stamps(&b.peek(3).unwrap()), range(5, 8));
        b.consume(1).unwrap();
        assert_eq!(stamps(&b.peek(1).unwrap()), range(6, 7));
        b.consume(100).unwrap();
        assert!(b.is_empty());
        assert!(b.peek(10).unwrap().is_empty());
    }

    #[test]
    fn consume_survives_reopen() {
        let d = TestDir::new("consume");
        let mut b = open_clean(&d);
        for i in 0..10 {
            b.append(&pts(i * 10, 10), i as i64).unwrap();
        }
        b.consume(35).unwrap();
        drop(b);
        let (mut b, r) = open(&d);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(r.points, 65);
        assert_eq!(b.oldest_stored_at(), Some(3));
        assert_eq!(drain(&mut b, 30), range(35, 100));
        drop(b);
        let mut b = open_clean(&d);
        assert!(b.is_empty());
        assert!(seg_files(&d).is_empty());
        assert!(b.peek(10).unwrap().is_empty());
    }

    #[test]
    fn enforce_size_and_age() {
        let d = TestDir::new("enforce");
        let mut b = open_clean(&d);
        b.set_segment_bytes(1); // one record per segment
        for i in 0..10 {
            b.append(&pts(i * 10, 10), i as i64 * 100).unwrap();
        }
        assert_eq!(seg_files(&d).len(), 10);
        assert_eq!(b.enforce_size(1000).unwrap(), 0);
        assert_eq!(b.enforce_size(75).unwrap(), 25);
        assert_eq!(b.len(), 75);
        assert_eq!(seg_files(&d).len(), 8);
        assert_eq!(b.bytes(), disk_bytes(&d));
        assert_eq!(stamps(&b.peek(1).unwrap()), vec![25]);
        assert_eq!(b.oldest_stored_at(), Some(200));

        assert_eq!(b.enforce_age(500).unwrap(), 25);
        assert_eq!(b.enforce_age(500).unwrap(), 0);
        assert_eq!(b.len(), 50);
        assert_eq!(seg_files(&d).len(), 5);
        assert_eq!(b.oldest_stored_at(), Some(500));
        drop(b);

        let mut b = open_clean(&d);
        assert_eq!(b.len(), 50);
        assert_eq!(stamps(&b.peek(1).unwrap()), vec![50]);
        assert_eq!(b.enforce_age(i64::MAX).unwrap(), 50);
        assert!(b.is_empty());
        assert_eq!(b.oldest_stored_at(), None);
        assert!(seg_files(&d).is_empty());
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn torn_tail_at_every_offset_is_cut() {
        let template = TestDir::new("torn-template");
        let mut b = open_clean(&template);
        b.append(&pts(0, 3), 1).unwrap();
        b.append(&pts(3, 5), 2).unwrap();
        b.append(&pts(8, 4), 3).unwrap();
        drop(b);
        let seg = seg_files(&template).pop().unwrap();
        let name = seg.file_name().unwrap().to_owned();
        let (start, len) = *frames(&seg).last().unwrap();
        for cut in start..start + len {
            let d = TestDir::new("torn");
            copy_dir(&template, &d);
            let path = d.0.join(&name);
            OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(cut as u64)
                .unwrap();
            let (mut b, r) = open(&d);
            assert_eq!(r.torn_bytes, (cut - start) as u64, "cut at {cut}");
            assert_eq!(r.corrupt_records, 0);
            if cut > start {
                assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
                let w = &r.warnings[0];
                assert!(
                    w.contains(&path.display().to_string())
                        && w.contains(&format!("offset {start}")),
                    "{w}"
                );
            } else {
                assert!(r.warnings.is_empty());
            }
            assert_eq!(r.points, 8);
            assert_eq!(fs::metadata(&path).unwrap().len(), start as u64);
            assert_eq!(b.next_seq, 8);
            b.append(&pts(8, 2), 4).unwrap();
            assert_eq!(seg_files(&d).len(), 2);
            drop(b);
            let mut b = open_clean(&d);
            assert_eq!(drain(&mut b, 100), range(0, 10));
        }
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let d = TestDir::new("zeros");
        let mut b = open_clean(&d);
        b.append(&pts(0, 3), 1).unwrap();
        drop(b);
        let seg = seg_files(&d).pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len + 100)
            .unwrap();
        let (mut b, r) = open(&d);
        assert_eq!((r.torn_bytes, r.corrupt_records, r.points), (100, 0, 3));
        assert_eq!(drain(&mut b, 10), range(0, 3));
    }

    #[test]
    fn interrupted_segment_creation_is_removed() {
        for n in [0usize, 5, 15] {
            let d = TestDir::new("creation");
            let mut b = open_clean(&d);
            b.append(&pts(0, 3), 1).unwrap();
            drop(b);
            let path = d.0.join(segment_name(7));
            fs::write(&path, &segment_header()[..n]).unwrap();
            let (mut b, r) = open(&d);
            assert_eq!(
                (r.torn_bytes, r.corrupt_records, r.points),
                (n as u64, 0, 3)
            );
            assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
            assert!(!path.exists());
            b.append(&pts(3, 1), 2).unwrap();
            assert_eq!(drain(&mut b, 10), range(0, 4));
        }
    }

    #[test]
    fn flipped_bit_in_a_middle_record_is_skipped() {
        for (field, at) in [("payload", 20), ("crc", 5)] {
            let d = TestDir::new("flip");
            let mut b = open_clean(&d);
            for i in 0..5 {
                b.append(&pts(i * 4, 4), i as i64).unwrap();
            }
            drop(b);
            let seg = seg_files(&d).pop().unwrap();
            let (off, _) = frames(&seg)[2];
            flip(&seg, off + at, 0x10);
            let (mut b, r) = open(&d);
            assert_eq!(
                (r.corrupt_records, r.torn_bytes, r.points),
                (1, 0, 16),
                "{field}"
            );
            assert_eq!(r.warnings.len(), 1);
            assert!(
                r.warnings[0].contains(&format!("offset {off}")),
                "{:?}",
                r.warnings
            );
            let expect: Vec<u64> = range(0, 8).into_iter().chain(range(12, 20)).collect();
            assert_eq!(stamps(&b.peek(100).unwrap()), expect);
            // Still reported while the damage lies ahead of the head...
            b.consume(8).unwrap();
            drop(b);
            let (mut b, r) = open(&d);
            assert_eq!(r.corrupt_records, 1);
            // ...but not once the head has moved past it.
            b.consume(1).unwrap();
            drop(b);
            let mut b = open_clean(&d);
            assert_eq!(drain(&mut b, 3), range(13, 20));
        }
    }

    #[test]
    fn garbage_length_cuts_the_rest_of_the_segment() {
        let d = TestDir::new("garbage-len");
        let mut b = open_clean(&d);
        b.append(&pts(0, 4), 0).unwrap();
        // Room for about four records per segment.
        b.set_segment_bytes(SEG_HEADER_LEN + 4 * (b.bytes() - SEG_HEADER_LEN) + 10);
        for i in 1..12 {
            b.append(&pts(i * 4, 4), i as i64).unwrap();
        }
        drop(b);
        let segs = seg_files(&d);
        assert!(segs.len() >= 3);
        let first = &segs[0];
        let fr = frames(first);
        assert!(fr.len() >= 3);
        let first_points = 4 * fr.len() as u64;
        flip(first, fr[1].0 + 2, 0x40); // length of record 1 becomes huge
        let (mut b, r) = open(&d);
        assert_eq!(r.torn_bytes, 0);
        assert_eq!(r.corrupt_records, fr.len() as u64 - 1, "{:?}", r.warnings);
        assert_eq!(fs::metadata(first).unwrap().len(), fr[1].0 as u64);
        let expect: Vec<u64> = range(0, 4)
            .into_iter()
            .chain(range(first_points, 48))
            .collect();
        assert_eq!(drain(&mut b, 5), expect);
    }

    #[test]
    fn bad_segment_header_is_quarantined() {
        let d = TestDir::new("quarantine");
        let mut b = open_clean(&d);
        b.set_segment_bytes(1);
        for i in 0..3 {
            b.append(&pts(i * 5, 5), i as i64).unwrap();
        }
        drop(b);
        let segs = seg_files(&d);
        flip(&segs[1], 2, 0xff);
        let (mut b, r) = open(&d);
        assert_eq!(r.points, 10);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("quarantine"), "{:?}", r.warnings);
        let moved = d.0.join(QUARANTINE_DIR).join(segs[1].file_name().unwrap());
        assert!(moved.exists() && !segs[1].exists());
        assert_eq!(b.peek(100).unwrap().len(), 10);
        drop(b);
        let mut b = open_clean(&d);
        let expect: Vec<u64> = range(0, 5).into_iter().chain(range(10, 15)).collect();
        assert_eq!(drain(&mut b, 100), expect);
        assert!(moved.exists());
    }

    #[test]
    fn cursor_slots() {
        let d = TestDir::new("cursor");
        let mut b = open_clean(&d);
        for i in 0..3 {
            b.append(&pts(i * 10, 10), i as i64).unwrap();
        }
        b.consume(5).unwrap();
        b.consume(5).unwrap();
        drop(b);
        let path = d.0.join(CURSOR_FILE);
        let data = fs::read(&path).unwrap();
        let newest = (0..2).max_by_key(|&i| u64_at(&data, i * 32 + 8)).unwrap();

        // The newest slot torn: the older one (5) is used.
        let d1 = TestDir::new("cursor-one");
        copy_dir(&d, &d1);
        flip(&d1.0.join(CURSOR_FILE), newest * 32 + 17, 1);
        let (b, r) = open(&d1);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(b.len(), 25);
        drop(b);

        // Both slots bad: start from the oldest record.
        flip(&path, 3, 1);
        flip(&path, 32 + 3, 1);
        let (mut b, r) = open(&d);
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains(&path.display().to_string()),
            "{:?}",
            r.warnings
        );
        assert_eq!(r.points, 30);
        b.consume(12).unwrap();
        drop(b);
        let mut b = open_clean(&d);
        assert_eq!(drain(&mut b, 100), range(12, 30));
    }

    #[test]
    fn sequence_numbers_continue_after_reopen() {
        let d = TestDir::new("seq");
        let mut b = open_clean(&d);
        b.append(&pts(0, 5), 0).unwrap();
        b.append(&pts(5, 5), 0).unwrap();
        drop(b);
        let mut b = open_clean(&d);
        assert_eq!(b.next_seq, 10);
        b.append(&pts(10, 5), 0).unwrap();
        assert_eq!(b.index.back().unwrap().first_seq, 10);
        b.consume(15).unwrap();
        assert!(seg_files(&d).is_empty());
        drop(b);
        // Nothing left on disk but the cursor: numbering still continues.
        let mut b = open_clean(&d);
        assert_eq!(b.next_seq, 15);
        b.append(&pts(15, 2), 0).unwrap();
        assert_eq!(b.index.back().unwrap().first_seq, 15);
        drop(b);
        let b = open_clean(&d);
        assert_eq!((b.cursor, b.next_seq, b.len()), (15, 17, 2));
    }

    #[test]
    fn failed_append_leaves_the_segment_consistent() {
        let d = TestDir::new("fail");
        let mut b = open_clean(&d);
        b.append(&pts(0, 3), 0).unwrap();
        let seg = seg_files(&d).pop().unwrap();
        let size = fs::metadata(&seg).unwrap().len();
        // Swap in a read-only handle: the next write fails.
        b.active.as_mut().unwrap().file = File::open(&seg).unwrap();
        let e = b.append(&pts(3, 3), 0).unwrap_err();
        assert!(
            e.0.starts_with("could not append to backlog segment")
                && e.0.contains(&seg.display().to_string()),
            "{e}"
        );
        assert_eq!(fs::metadata(&seg).unwrap().len(), size);
        assert_eq!((b.len(), b.next_seq), (3, 3));
        b.append(&pts(3, 3), 0).unwrap();
        drop(b);
        let mut b = open_clean(&d);
        assert_eq!(drain(&mut b, 100), range(0, 6));
    }

    #[test]
    fn record_damaged_after_open_is_dropped_once() {
        let d = TestDir::new("late-damage");
        let mut b = open_clean(&d);
        for i in 0..3 {
            b.append(&pts(i * 4, 4), 0).unwrap();
        }
        let seg = seg_files(&d).pop().unwrap();
        let (off, _) = frames(&seg)[1];
        flip(&seg, off + 30, 4);
        let e = b.peek(100).unwrap_err();
        assert!(e.0.contains(&format!("offset {off}")), "{e}");
        assert_eq!(b.len(), 8);
        let expect: Vec<u64> = range(0, 4).into_iter().chain(range(8, 12)).collect();
        assert_eq!(drain(&mut b, 100), expect);
    }

    #[test]
    fn sync_modes_work() {
        for mode in [SyncMode::Always, SyncMode::Batch, SyncMode::Never] {
            let d = TestDir::new("modes");
            let (mut b, _) = FileBacklog::open(&d.0, mode).unwrap();
            b.set_segment_bytes(300);
            for i in 0..10 {
                b.append(&pts(i * 3, 3), 0).unwrap();
                b.sync().unwrap();
            }
            b.consume(4).unwrap();
            drop(b);
            let (mut b, r) = FileBacklog::open(&d.0, mode).unwrap();
            assert!(r.warnings.is_empty());
            assert_eq!(drain(&mut b, 7), range(4, 30));
        }
    }

    /// Random operations against MemoryBacklog as the model, with reopens.
    #[test]
    fn matches_memory_backlog() {
        for seed in 1..=4u64 {
            let d = TestDir::new("model");
            let mut f = open_clean(&d);
            f.set_segment_bytes(2000);
            let mut m = MemoryBacklog::new();
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let (mut seq, mut now) = (0, 0i64);
            for step in 0..3000 {
                match next(100) {
                    0..=39 => {
                        let n = 1 + next(20);
                        now += next(3) as i64;
                        f.append(&pts(seq, n), now).unwrap();
                        m.append(&pts(seq, n), now).unwrap();
                        seq += n;
                    }
                    40..=59 => {
                        let n = next(30) as usize;
                        assert_eq!(
                            f.peek(n).unwrap(),
                            m.peek(n).unwrap(),
                            "seed {seed} step {step}"
                        );
                    }
                    60..=79 => {
                        let n = next(25);
                        f.consume(n).unwrap();
                        m.consume(n).unwrap();
                    }
                    80..=84 => {
                        let n = next(200);
                        assert_eq!(f.enforce_size(n).unwrap(), m.enforce_size(n).unwrap());
                    }
                    85..=89 => {
                        let cutoff = now - next(40) as i64;
                        assert_eq!(
                            f.enforce_age(cutoff).unwrap(),
                            m.enforce_age(cutoff).unwrap()
                        );
                    }
                    90..=94 => f.sync().unwrap(),
                    _ => {
                        drop(f);
                        f = open_clean(&d);
                        f.set_segment_bytes(2000);
                    }
                }
                assert_eq!(f.len(), m.len(), "seed {seed} step {step}");
                assert_eq!(f.oldest_stored_at(), m.oldest_stored_at());
                assert_eq!(f.bytes(), disk_bytes(&d));
                assert_eq!(f.is_empty(), seg_files(&d).is_empty());
            }
        }
    }

    /// Rough speed: `cargo test --release -p influx-sink-component --lib
    /// backlog::file::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed() {
        use std::time::Instant;
        let total: u64 = std::env::var("BACKLOG_SPEED_POINTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000);
        let mode = match std::env::var("BACKLOG_SPEED_MODE").as_deref() {
            Ok("always") => SyncMode::Always,
            Ok("never") => SyncMode::Never,
            _ => SyncMode::Batch,
        };
        let batch = 100u64;
        let points: Vec<Point> = (0..total)
            .map(|i| {
                let series = format!("system,host=server{:02},region=eu-west-{}", i % 50, i % 3);
                let fields: Vec<String> = (0..20)
                    .map(|f| match f % 4 {
                        0 => format!("f{f}={}i", (i * 7 + f) % 100_000),
                        1 => format!("f{f}={:.3}", (i as f64 * 0.37 + f as f64).sin() * 100.0),
                        2 => format!("f{f}={}", i % 2 == 0),
                        _ => format!("f{f}=\"s{}\"", i % 10),
                    })
                    .collect();
                Point {
                    series_len: series.len() as u32,
                    line: format!("{series} {}", fields.join(",")),
                    timestamp: 1_700_000_000_000_000_000 + i as i64 * 1_000_000,
                }
            })
            .collect();
        let d = TestDir::new("speed");
        let (mut b, _) = FileBacklog::open(&d.0, mode).unwrap();
        let t = Instant::now();
        for (i, chunk) in points.chunks(batch as usize).enumerate() {
            b.append(chunk, i as i64).unwrap();
            b.sync().unwrap();
        }
        let append = t.elapsed();
        let bytes = b.bytes();
        drop(b);
        let t = Instant::now();
        let (mut b, r) = FileBacklog::open(&d.0, mode).unwrap();
        let open = t.elapsed();
        assert_eq!(r.points, total);
        let t = Instant::now();
        let mut n = 0;
        loop {
            let p = b.peek(batch as usize).unwrap();
            if p.is_empty() {
                break;
            }
            n += p.len() as u64;
            b.consume(p.len() as u64).unwrap();
        }
        let drain = t.elapsed();
        assert_eq!(n, total);
        let rate = |d: std::time::Duration| total as f64 / d.as_secs_f64();
        println!(
            "{total} points ({} bytes/point on disk, {mode:?}): append+sync per {batch} {:?} = {:.0} points/s; \
             open (recovery, decodes everything) {:?} = {:.0} points/s; peek+consume {batch} {:?} = {:.0} points/s",
            bytes / total,
            append,
            rate(append),
            open,
            rate(open),
            drain,
            rate(drain)
        );
    }
}
