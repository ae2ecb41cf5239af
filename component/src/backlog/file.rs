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

/// What a live instance knows of its sealed segments, handed to its
/// successor in a swap so the reopen need not read them: per segment, its
/// size and its records after the cursor. Only a hint: a segment whose size
/// on disk differs is read as usual.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexHint {
    /// (segment id, size in bytes, its records after the cursor).
    pub segments: Vec<(u64, u64, Vec<HintedRecord>)>,
}

/// A record as (offset, payload length, first_seq, count, stored_at).
pub type HintedRecord = (u64, u32, u64, u32, i64);

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

/// Parse and check the header at the start of a record payload.
fn parse_header(payload: &[u8]) -> Result<RecordHeader, String> {
    let (h, _) = postcard::take_from_bytes::<RecordHeader>(payload)
        .map_err(|e| format!("undecodable record header: {e}"))?;
    check_header(&h)?;
    Ok(h)
}

/// The payload length of a complete frame with a good checksum at `at`.
fn frame_at(data: &[u8], at: usize) -> Option<usize> {
    frame_checked(data, at, true)
}

/// A frame's payload length; its checksum is compared only if `verify`.
fn frame_checked(data: &[u8], at: usize, verify: bool) -> Option<usize> {
    let rest = data.get(at..)?;
    if rest.len() < FRAME_LEN as usize {
        return None;
    }
    let len = u32_at(rest, 0) as usize;
    if len == 0 || len > rest.len() - FRAME_LEN as usize {
        return None;
    }
    if !verify {
        return Some(len);
    }
    let payload = &rest[FRAME_LEN as usize..FRAME_LEN as usize + len];
    (crate::crc::crc32c(payload) == u32_at(rest, 4)).then_some(len)
}

/// The first offset at or after `from` where a record with a good checksum
/// and a sound header starts: where reading resumes after damage.
fn next_record(data: &[u8], from: usize) -> Option<usize> {
    let last = data.len().checked_sub(FRAME_LEN as usize + 1)?;
    (from..=last).find(|&at| {
        // Cheap test first: a payload starts with the record version.
        data[at + FRAME_LEN as usize] == RECORD_VERSION
            && frame_at(data, at).is_some_and(|len| {
                let start = at + FRAME_LEN as usize;
                parse_header(&data[start..start + len]).is_ok()
            })
    })
}

/// What the 16-byte header of a segment file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentHeader {
    /// The magic and the format version this code writes.
    Valid,
    /// The file is shorter than a header. `prefix`: its bytes are the start
    /// of a valid header (a creation interrupted by a crash).
    Short { len: u64, prefix: bool },
    /// Not `INFXSEG\0`.
    WrongMagic,
    /// A format version this code does not know.
    UnknownVersion(u16),
}

/// One stretch of a segment file after its header; see
/// [`parse_segment_bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentItem {
    /// A record with a good checksum and a sound header (its body is not
    /// decoded). `len` is the payload length.
    Record {
        offset: u64,
        len: u32,
        first_seq: u64,
        count: u32,
        stored_at: i64,
    },
    /// A frame with a good checksum whose record header is unusable.
    BadHeader { offset: u64, len: u32, why: String },
    /// Damaged bytes followed by a readable record. `one_record`: the length
    /// field of the damaged frame leads exactly there (its payload or
    /// checksum was hit: one record lost); otherwise the length was hit too
    /// and reading resumed at the next record found by its checksum.
    Damaged {
        offset: u64,
        bytes: u64,
        one_record: bool,
    },
    /// Damaged bytes up to the end of the file: no readable record follows.
    Tail {
        offset: u64,
        bytes: u64,
        kind: TailKind,
    },
}

impl SegmentItem {
    /// Where the item starts in the file.
    pub fn offset(&self) -> u64 {
        match *self {
            SegmentItem::Record { offset, .. }
            | SegmentItem::BadHeader { offset, .. }
            | SegmentItem::Damaged { offset, .. }
            | SegmentItem::Tail { offset, .. } => offset,
        }
    }

    /// How many bytes of the file it covers.
    pub fn bytes(&self) -> u64 {
        match *self {
            SegmentItem::Record { len, .. } | SegmentItem::BadHeader { len, .. } => {
                FRAME_LEN + u64::from(len)
            }
            SegmentItem::Damaged { bytes, .. } | SegmentItem::Tail { bytes, .. } => bytes,
        }
    }
}

/// What the damaged end of a segment file looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailKind {
    /// One whole frame: its length reaches exactly the end of the file, but
    /// its checksum fails.
    Record,
    /// An append cut short: fewer bytes than a frame header, a length past
    /// the end of the file, or only zeros.
    Torn,
    /// Anything else: a length field that is garbage.
    Garbage,
}

/// A segment file's bytes, parsed; see [`parse_segment_bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedSegment {
    pub header: SegmentHeader,
    /// The bytes after the header, in order: each item starts where the
    /// previous one ended, the first at the header's end, the last ends at
    /// the end of the data. Empty for a file shorter than a header.
    pub items: Vec<SegmentItem>,
}

/// Parse one segment file's bytes, as recovery at open does: records are
/// found by their length fields and checked by their CRC32C and header
/// (their bodies are not decoded: the checksum already vouches for them);
/// after damage, reading resumes at the next offset where a record with a
/// good checksum and a sound header starts, so one damaged record never
/// hides the intact ones after it. The records after a bad header are read
/// too (recovery counts what a quarantined segment holds).
///
/// Pure and total: any input gives an answer, never a panic.
pub fn parse_segment_bytes(data: &[u8]) -> ParsedSegment {
    parse_segment_checked(data, true)
}

/// `parse_segment_bytes`, comparing record checksums only if `verify`
/// (record headers and lengths are always checked).
fn parse_segment_checked(data: &[u8], verify: bool) -> ParsedSegment {
    let hlen = SEG_HEADER_LEN as usize;
    if data.len() < hlen {
        return ParsedSegment {
            header: SegmentHeader::Short {
                len: data.len() as u64,
                prefix: segment_header().starts_with(data),
            },
            items: Vec::new(),
        };
    }
    let header = if &data[..8] != SEG_MAGIC {
        SegmentHeader::WrongMagic
    } else {
        match u16::from_le_bytes([data[8], data[9]]) {
            SEG_VERSION => SegmentHeader::Valid,
            v => SegmentHeader::UnknownVersion(v),
        }
    };
    let n = data.len();
    let mut items = Vec::new();
    let mut off = hlen;
    while off < n {
        if let Some(len) = frame_checked(data, off, verify) {
            let start = off + FRAME_LEN as usize;
            let len32 = len as u32;
            items.push(match parse_header(&data[start..start + len]) {
                Ok(h) => SegmentItem::Record {
                    offset: off as u64,
                    len: len32,
                    first_seq: h.first_seq,
                    count: h.count,
                    stored_at: h.stored_at,
                },
                Err(why) => SegmentItem::BadHeader {
                    offset: off as u64,
                    len: len32,
                    why,
                },
            });
            off = start + len;
            continue;
        }
        let rem = n - off;
        // Where the damaged frame's own length field says it ends.
        let (len, claimed_end) = if rem >= FRAME_LEN as usize {
            let len = u32_at(data, off);
            (len, off as u64 + FRAME_LEN + u64::from(len))
        } else {
            (0, u64::MAX)
        };
        match next_record(data, off + 1) {
            Some(next) => {
                items.push(SegmentItem::Damaged {
                    offset: off as u64,
                    bytes: (next - off) as u64,
                    one_record: claimed_end == next as u64,
                });
                off = next;
            }
            None => {
                let kind = if len > 0 && claimed_end == n as u64 {
                    TailKind::Record
                } else if rem < FRAME_LEN as usize
                    || claimed_end > n as u64
                    || (len == 0 && data[off..].iter().all(|&b| b == 0))
                {
                    TailKind::Torn
                } else {
                    TailKind::Garbage
                };
                items.push(SegmentItem::Tail {
                    offset: off as u64,
                    bytes: rem as u64,
                    kind,
                });
                break;
            }
        }
    }
    ParsedSegment { header, items }
}

/// Points that `bytes` of records held, at the average density of the
/// intact records seen (at least one when `bytes > 0`).
fn estimate_points(bytes: u64, good_bytes: u64, good_points: u64) -> u64 {
    if bytes == 0 {
        return 0;
    }
    if good_bytes == 0 {
        return 1;
    }
    let est = (u128::from(bytes) * u128::from(good_points) + u128::from(good_bytes / 2))
        / u128::from(good_bytes);
    u64::try_from(est).unwrap_or(u64::MAX).max(1)
}

/// Points lost and points quarantined, from the sequence numbers of the
/// intact records (`index`, live ones) and of the intact records found in
/// quarantined segments: every sequence number from the head up to the end
/// of the last intact record that no intact record holds was lost. The head
/// is the cursor when it can be trusted, else the first intact record.
fn account(
    index: &VecDeque<RecordMeta>,
    quarantined: &[(u64, u64)],
    cursor: u64,
    trusted: bool,
) -> (u64, u64) {
    let clip = |(a, b): (u64, u64)| (a.max(cursor), b);
    let mut spans: Vec<(u64, u64)> = index
        .iter()
        .map(|r| clip((r.first_seq, r.end())))
        .filter(|(a, b)| a < b)
        .collect();
    let good: u64 = spans.iter().map(|(a, b)| b - a).sum();
    spans.extend(quarantined.iter().map(|&s| clip(s)).filter(|(a, b)| a < b));
    crate::sort::sort(&mut spans);
    let (mut covered, mut hi) = (0u64, cursor);
    let lo = spans.first().map_or(cursor, |s| s.0);
    let mut run: Option<(u64, u64)> = None;
    for (a, b) in spans {
        run = match run {
            Some((s, e)) if a <= e => Some((s, e.max(b))),
            Some((s, e)) => {
                covered += e - s;
                Some((a, b))
            }
            None => Some((a, b)),
        };
        hi = hi.max(b);
    }
    if let Some((s, e)) = run {
        covered += e - s;
    }
    let start = if trusted { cursor } else { lo };
    let lost = hi.saturating_sub(start).saturating_sub(covered);
    (lost, covered.saturating_sub(good))
}

/// State carried across segments while recovering at open.
struct Scan<'a> {
    dir: &'a Path,
    /// Sealed segments known from a predecessor (see [`IndexHint`]).
    hint: Option<&'a IndexHint>,
    /// Written moments ago by a live predecessor (a swap): checksums of
    /// records before the last segment are not compared at open.
    trusted: bool,
    /// The stored cursor, if a valid slot was found.
    cursor: Option<u64>,
    /// Whether the stored cursor is known to be the newest one written (see
    /// [`StoredCursor::trusted`]).
    cursor_trusted: bool,
    /// End sequence number of the last good record.
    prev_end: u64,
    index: VecDeque<RecordMeta>,
    segments: VecDeque<Segment>,
    /// Damage found since the last good record: reported only if that record
    /// lies after the cursor (damage among delivered points is not news).
    pending: Vec<(u64, String)>,
    good_records: u64,
    good_bytes: u64,
    good_points: u64,
    /// (first_seq, end) of the intact records of quarantined segments (in
    /// `quarantine/` already, or moved there now).
    quarantined: Vec<(u64, u64)>,
    /// Sequence numbers missing before a good record with no damage found in
    /// between: (from, to, segment, offset of that record).
    gaps: Vec<(u64, u64, PathBuf, u64)>,
    /// End of the last intact record seen (in a quarantined segment too).
    last_intact_end: Option<u64>,
    /// Bytes of damage found since the last intact record.
    tail_damage: u64,
    report: &'a mut RecoveryReport,
    data: Vec<u8>,
}

impl Scan<'_> {
    fn corrupt(&mut self, records: u64, bytes: u64, warning: String) {
        self.tail_damage += bytes;
        self.pending.push((records, warning));
    }

    fn flush_pending(&mut self) {
        for (n, w) in self.pending.drain(..) {
            self.report.corrupt_records += n;
            self.report.warnings.push(w);
        }
    }

    fn intact(&mut self, end: u64) {
        self.tail_damage = 0;
        self.last_intact_end = Some(self.last_intact_end.map_or(end, |e| e.max(end)));
    }

    /// Records estimated in `bytes`, at the average size of the good ones.
    fn estimate_records(&self, bytes: u64) -> u64 {
        let avg = self.good_bytes.checked_div(self.good_records).unwrap_or(0);
        (bytes + avg / 2).checked_div(avg).unwrap_or(1).max(1)
    }

    /// Cut `file` at `at`; returns the new size (the old one if it failed).
    fn cut(&mut self, file: &File, path: &Path, at: u64) -> u64 {
        match file.set_len(at) {
            Ok(()) => at,
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
        self.report.quarantined_segments += 1;
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

    /// A good record starts with `first_seq` at `off`: note points missing
    /// before it that no damage found explains (a segment file that
    /// disappeared, unless it is in quarantine).
    fn note_gap(&mut self, first_seq: u64, path: &Path, off: u64) {
        if self.tail_damage > 0 {
            return;
        }
        let from = match (self.last_intact_end, self.cursor) {
            (Some(e), c) => e.max(c.unwrap_or(0)),
            (None, Some(c)) if self.cursor_trusted => c,
            _ => return,
        };
        if first_seq > from {
            self.gaps.push((from, first_seq, path.to_path_buf(), off));
        }
    }

    /// Warn about the gaps that quarantine does not explain.
    fn report_gaps(&mut self) {
        for (from, to, path, off) in std::mem::take(&mut self.gaps) {
            let held: u64 = self
                .quarantined
                .iter()
                .map(|&(a, b)| b.min(to).saturating_sub(a.max(from)))
                .sum();
            let missing = (to - from).saturating_sub(held);
            if missing > 0 {
                self.report.warnings.push(format!(
                    "backlog: {missing} points (sequence numbers {from} to {}) are missing before \
                     the record at offset {off} of segment {}; the segment file that held them \
                     was deleted or cut",
                    to - 1,
                    path.display()
                ));
            }
        }
    }

    fn record(&mut self, id: u64, path: &Path, off: u64, len: u32, h: RecordHeader) {
        let bytes = FRAME_LEN + u64::from(len);
        if h.first_seq < self.prev_end {
            let w = format!(
                "backlog segment {}: skipped a corrupt record at offset {off} ({len} bytes): \
                 sequence number {} goes backwards (the previous record ended at {})",
                path.display(),
                h.first_seq,
                self.prev_end
            );
            self.corrupt(1, bytes, w);
            return;
        }
        self.note_gap(h.first_seq, path, off);
        if self.cursor.is_some_and(|c| h.first_seq <= c) {
            self.pending.clear();
        } else {
            self.flush_pending();
        }
        let end = h.first_seq + u64::from(h.count);
        self.prev_end = end;
        self.good_records += 1;
        self.good_bytes += bytes;
        self.good_points += u64::from(h.count);
        self.intact(end);
        if self.cursor.is_none_or(|c| end > c) {
            self.index.push_back(RecordMeta {
                seg: id,
                offset: off,
                len,
                first_seq: h.first_seq,
                count: h.count,
                stored_at: h.stored_at,
            });
        }
    }

    fn segment(&mut self, id: u64, last: bool) {
        let path = self.dir.join(segment_name(id));
        // A sealed segment the predecessor described, unchanged on disk.
        let hinted = self
            .hint
            .filter(|_| !last)
            .and_then(|h| h.segments.iter().find(|s| s.0 == id))
            .filter(|s| fs::metadata(&path).is_ok_and(|m| m.len() == s.1));
        if let Some((_, size, records)) = hinted {
            for &(offset, len, first_seq, count, stored_at) in records {
                let h = RecordHeader {
                    version: RECORD_VERSION,
                    first_seq,
                    count,
                    stored_at,
                };
                self.record(id, &path, offset, len, h);
            }
            self.segments.push_back(Segment { id, size: *size });
            return;
        }
        let read = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Err(e),
                // Not writable (permissions, a read-only file system, which
                // a WASI host may report as EIO): still readable; repairs
                // that need writing will warn.
                _ => File::open(&path).map_err(|_| e),
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
        // Checksums of all but the last segment may be left to the reads
        // (a trusted open: see `FileBacklog::open_trusted`).
        let parsed = parse_segment_checked(&self.data, last || !self.trusted);
        let bad_header = match parsed.header {
            SegmentHeader::Valid => None,
            SegmentHeader::Short { len, prefix } => {
                if last && prefix {
                    // A segment whose creation was interrupted: it holds no records.
                    match fs::remove_file(&path) {
                        Ok(()) => {
                            self.report.torn_bytes += len;
                            self.report.warnings.push(format!(
                                "backlog segment {}: removed it, its header was cut at {len} bytes \
                                 (creation interrupted by a crash)",
                                path.display()
                            ));
                        }
                        Err(e) => self.report.warnings.push(format!(
                            "could not remove incomplete backlog segment {}: {e}",
                            path.display()
                        )),
                    }
                    return;
                }
                Some(format!("only {len} bytes long"))
            }
            SegmentHeader::WrongMagic => Some("wrong magic".to_string()),
            SegmentHeader::UnknownVersion(v) => Some(format!("unknown format version {v}")),
        };
        if let Some(reason) = bad_header {
            drop(file);
            self.quarantine(&path, id, &reason);
            // Count what it holds: its intact records are set aside, not lost.
            let mut any = false;
            for item in &parsed.items {
                match *item {
                    SegmentItem::Record {
                        first_seq, count, ..
                    } => {
                        let end = first_seq + u64::from(count);
                        self.quarantined.push((first_seq, end));
                        self.intact(end);
                        any = true;
                    }
                    ref other => self.tail_damage += other.bytes(),
                }
            }
            if !any {
                self.tail_damage += (self.data.len() as u64).max(1);
            }
            return;
        }

        let mut size = self.data.len() as u64;
        for item in parsed.items {
            match item {
                SegmentItem::Record {
                    offset,
                    len,
                    first_seq,
                    count,
                    stored_at,
                } => {
                    let h = RecordHeader {
                        version: RECORD_VERSION,
                        first_seq,
                        count,
                        stored_at,
                    };
                    self.record(id, &path, offset, len, h);
                }
                SegmentItem::BadHeader { offset, len, why } => {
                    let w = format!(
                        "backlog segment {}: skipped a corrupt record at offset {offset} ({len} bytes): {why}",
                        path.display()
                    );
                    self.corrupt(1, FRAME_LEN + u64::from(len), w);
                }
                SegmentItem::Damaged {
                    offset,
                    bytes,
                    one_record,
                } => {
                    if one_record {
                        let w = format!(
                            "backlog segment {}: skipped a corrupt record at offset {offset} \
                             ({} bytes): checksum mismatch",
                            path.display(),
                            bytes - FRAME_LEN
                        );
                        self.corrupt(1, bytes, w);
                    } else {
                        let n = self.estimate_records(bytes);
                        let w = format!(
                            "backlog segment {}: the record at offset {offset} is damaged and its \
                             length is unreadable; skipped {bytes} bytes (about {n} records) up to \
                             the next intact record, at offset {}",
                            path.display(),
                            offset + bytes
                        );
                        self.corrupt(n, bytes, w);
                    }
                }
                SegmentItem::Tail {
                    offset,
                    bytes,
                    kind,
                } => match kind {
                    TailKind::Record => {
                        let w = format!(
                            "backlog segment {}: skipped a corrupt record at offset {offset} \
                             ({} bytes): checksum mismatch",
                            path.display(),
                            bytes - FRAME_LEN
                        );
                        self.corrupt(1, bytes, w);
                    }
                    TailKind::Torn if last => {
                        // An append interrupted by a crash (or zeros the
                        // filesystem put where the unwritten tail would have been).
                        size = self.cut(&file, &path, offset);
                        self.tail_damage += bytes;
                        self.report.torn_bytes += bytes;
                        self.report.warnings.push(format!(
                            "backlog segment {}: cut a torn tail of {bytes} bytes at offset {offset} \
                             (a write interrupted by a crash)",
                            path.display()
                        ));
                    }
                    TailKind::Torn | TailKind::Garbage => {
                        // The length field itself is garbage and no intact
                        // record follows: cut the rest, estimating how many
                        // records it held.
                        let lost = self.estimate_records(bytes);
                        size = self.cut(&file, &path, offset);
                        let w = format!(
                            "backlog segment {}: the record at offset {offset} is damaged and no \
                             intact record follows it; cut the remaining {bytes} bytes (about \
                             {lost} records)",
                            path.display()
                        );
                        self.corrupt(lost, bytes, w);
                    }
                },
            }
        }
        self.segments.push_back(Segment { id, size });
    }
}

/// (first_seq, end) of the intact records of the segments in `quarantine/`.
fn quarantined_records(dir: &Path) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir.join(QUARANTINE_DIR)) else {
        return out;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(data) = fs::read(entry.path()) else {
            continue;
        };
        for item in parse_segment_bytes(&data).items {
            if let SegmentItem::Record {
                first_seq, count, ..
            } = item
            {
                out.push((first_seq, first_seq + u64::from(count)));
            }
        }
    }
    out
}

/// The newest valid slot of the cursor file.
#[derive(Clone, Copy, Debug)]
struct StoredCursor {
    generation: u64,
    seq: u64,
    /// The other slot is valid too (older), or this is the first cursor
    /// ever written (generation 1; the other slot was never written): this
    /// is the newest cursor written. Otherwise the newest write may have
    /// been torn, and this one may lag behind points already deleted.
    trusted: bool,
}

/// Read the cursor file: the (generation, seq) of the newest valid slot.
fn read_cursor(
    path: &Path,
    have_segments: bool,
    report: &mut RecoveryReport,
) -> Option<(u64, u64)> {
    read_cursor_slots(path, have_segments, report).map(|s| (s.generation, s.seq))
}

/// Read the cursor file: its newest valid slot.
fn read_cursor_slots(
    path: &Path,
    have_segments: bool,
    report: &mut RecoveryReport,
) -> Option<StoredCursor> {
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
    let valid = |s: &[u8]| &s[..8] == CURSOR_MAGIC && crate::crc::crc32c(&s[..24]) == u32_at(s, 24);
    // A slot's content is its first 28 bytes (the rest is padding).
    let slots: Vec<&[u8]> = (0..2)
        .filter_map(|i| data.get(i * CURSOR_SLOT_LEN as usize..)?.get(..28))
        .collect();
    let best = slots
        .iter()
        .filter(|s| valid(s))
        .map(|s| (u64_at(s, 8), u64_at(s, 16)))
        .max_by_key(|&(generation, _)| generation);
    let Some((generation, seq)) = best else {
        report.warnings.push(format!(
            "backlog cursor {} has no valid slot; starting from the oldest record \
             (points already delivered may be sent again)",
            path.display()
        ));
        return None;
    };
    let trusted = slots.len() == 2
        && slots
            .iter()
            .all(|s| valid(s) || (generation == 1 && s.iter().all(|&b| b == 0)));
    Some(StoredCursor {
        generation,
        seq,
        trusted,
    })
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
        crate::sort::sort(&mut ids);

        let mut report = RecoveryReport::default();
        let stored = read_cursor_slots(&dir.join(CURSOR_FILE), !ids.is_empty(), &mut report);
        let mut scan = Scan {
            dir,
            hint,
            trusted,
            cursor: stored.map(|s| s.seq),
            cursor_trusted: stored.is_some_and(|s| s.trusted),
            prev_end: 0,
            index: VecDeque::new(),
            segments: VecDeque::new(),
            pending: Vec::new(),
            good_records: 0,
            good_bytes: 0,
            good_points: 0,
            quarantined: quarantined_records(dir),
            gaps: Vec::new(),
            last_intact_end: None,
            tail_damage: 0,
            report: &mut report,
            data: Vec::new(),
        };
        for (i, &id) in ids.iter().enumerate() {
            scan.segment(id, i + 1 == ids.len());
        }
        scan.flush_pending();
        scan.report_gaps();
        let tail_estimate = estimate_points(scan.tail_damage, scan.good_bytes, scan.good_points);
        let Scan {
            index,
            segments,
            prev_end,
            quarantined,
            ..
        } = scan;

        // Never reuse the sequence numbers of quarantined records, so that
        // putting a segment back cannot make newer records look out of order.
        let quarantined_end = quarantined.iter().map(|q| q.1).max().unwrap_or(0);
        let next_seq = prev_end.max(quarantined_end);
        let cursor = match stored {
            Some(s) => s.seq,
            // The oldest record known, intact or in quarantine.
            None => quarantined
                .iter()
                .map(|q| q.0)
                .chain(index.front().map(|r| r.first_seq))
                .min()
                .unwrap_or(next_seq),
        };
        let (lost, held) = account(
            &index,
            &quarantined,
            cursor,
            stored.is_some_and(|s| s.trusted),
        );
        report.lost_points = lost;
        report.quarantined_points = held;
        report.tail_points_estimate = tail_estimate;
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
        let crc = crate::crc::crc32c(&slot[..24]);
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
        if u32_at(&self.buf, 0) != r.len || crate::crc::crc32c(payload) != u32_at(&self.buf, 4) {
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

    /// After records were dropped at the head, move the cursor to the first
    /// one left (their points are gone), and let their segments go. Best
    /// effort: the error that dropped them is reported already.
    fn skip_to_head(&mut self) {
        let head = self.index.front().map_or(self.next_seq, |r| r.first_seq);
        let _ = self.commit_cursor(self.skip_limit(self.cursor, head));
    }

    /// How far the head may move from `cursor` towards `to` over sequence
    /// numbers that are not on disk: not past points in quarantine.
    fn skip_limit(&self, cursor: u64, to: u64) -> u64 {
        self.held
            .iter()
            .filter(|&&(_, end)| end > cursor)
            .map(|&(start, _)| start)
            .fold(to, u64::min)
            .max(cursor)
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
        let crc = crate::crc::crc32c(&frame[8..]);
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
                        let before = self.len();
                        self.drop_record(i);
                        self.skip_to_head();
                        self.read_losses += before.saturating_sub(self.len());
                        return Err(err(msg));
                    }
                    Err(LoadError::Missing(msg)) => {
                        let before = self.len();
                        self.forget_segment(r.seg);
                        self.skip_to_head();
                        self.read_losses += before.saturating_sub(self.len());
                        return Err(err(msg));
                    }
                },
            }
            i += 1;
        }
        Ok(out)
    }

    fn take_read_losses(&mut self) -> u64 {
        std::mem::take(&mut self.read_losses)
    }

    fn index_hint(&self) -> Option<IndexHint> {
        let last = self.segments.back().map(|s| s.id);
        let segments = self
            .segments
            .iter()
            .filter(|s| Some(s.id) != last)
            .map(|s| {
                let records = self
                    .index
                    .iter()
                    .filter(|r| r.seg == s.id)
                    .map(|r| (r.offset, r.len, r.first_seq, r.count, r.stored_at))
                    .collect();
                (s.id, s.size, records)
            })
            .collect();
        Some(IndexHint { segments })
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

/// Read-only access to a backlog directory, for inspection tools
/// (`influx-sink backlog stats|dump|verify`), next to [`parse_segment_bytes`].
/// Nothing here writes, creates or repairs.
pub mod inspect {
    use std::path::Path;

    use super::{decode_payload, parse_segment_name, read_cursor, CURSOR_FILE, QUARANTINE_DIR};
    use crate::backlog::RecoveryReport;
    use crate::point::Point;

    /// Bytes in front of a record's payload (u32 length, u32 CRC32C).
    pub const RECORD_FRAME_LEN: u64 = super::FRAME_LEN;
    /// Name of the cursor file in a backlog directory.
    pub const CURSOR: &str = CURSOR_FILE;
    /// Name of the quarantine subdirectory.
    pub const QUARANTINE: &str = QUARANTINE_DIR;

    /// The segment id of a file name `NNNNNNNNNNNNNNNN.seg`, if it is one.
    pub fn segment_id(file_name: &str) -> Option<u64> {
        parse_segment_name(file_name)
    }

    /// Decode a whole record payload (header and body): the points.
    pub fn decode_record(payload: &[u8]) -> Result<Vec<Point>, String> {
        decode_payload(payload).map(|(_, points)| points)
    }

    /// The stored cursor of the backlog in `dir` (sequence number of the
    /// oldest live point), read without repairing, plus the warnings
    /// [`super::FileBacklog::open`] would log about it.
    pub fn cursor(dir: &Path, have_segments: bool) -> (Option<u64>, Vec<String>) {
        let mut report = RecoveryReport::default();
        let c = read_cursor(&dir.join(CURSOR_FILE), have_segments, &mut report);
        (c.map(|(_, seq)| seq), report.warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backlog::memory::MemoryBacklog;
    use tempfile::TempDir;

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

    fn open(d: &TempDir) -> (FileBacklog, RecoveryReport) {
        FileBacklog::open(d.path(), SyncMode::Batch).unwrap()
    }

    fn open_clean(d: &TempDir) -> FileBacklog {
        let (b, r) = open(d);
        assert!(
            r.warnings.is_empty(),
            "unexpected warnings: {:?}",
            r.warnings
        );
        assert_eq!((r.torn_bytes, r.corrupt_records), (0, 0));
        b
    }

    fn seg_files(d: &TempDir) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    fn disk_bytes(d: &TempDir) -> u64 {
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

    fn copy_dir(from: &TempDir, to: &TempDir) {
        for e in fs::read_dir(from.path()).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
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
        let d = tempfile::tempdir().unwrap();
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

    /// Points 0..200 in forty 5-point records over several 1 KiB segments.
    fn forty_records_in_small_segments(d: &TempDir) -> FileBacklog {
        let mut b = open_clean(d);
        b.set_segment_bytes(1024);
        for i in 0..40 {
            b.append(&pts(i * 5, 5), i as i64).unwrap();
        }
        b
    }

    #[test]
    fn trusted_open_leaves_checksums_to_the_reads() {
        let d = tempfile::tempdir().unwrap();
        drop(forty_records_in_small_segments(&d));
        let segs = seg_files(&d);
        assert!(segs.len() > 2);
        let (off, _) = frames(&segs[0])[1];
        flip(&segs[0], off + 20, 0x10);
        // A trusted open does not look; the read finds it and skips it.
        let (mut b, r) = FileBacklog::open_trusted(d.path(), SyncMode::Batch, None).unwrap();
        assert_eq!((r.corrupt_records, r.points), (0, 200));
        let e = b.peek(1000).unwrap_err();
        assert!(e.to_string().contains("dropped its 5 points"), "{e}");
        assert_eq!(b.take_read_losses(), 5, "counted for the caller");
        assert_eq!(b.take_read_losses(), 0, "once");
        let got = drain(&mut b, 1000);
        assert!(
            !got.contains(&5) && got.contains(&4) && got.contains(&10),
            "{got:?}"
        );
        assert_eq!(got.len(), 195);
        // A plain open would have found it at once.
        let d2 = tempfile::tempdir().unwrap();
        drop(forty_records_in_small_segments(&d2));
        let segs = seg_files(&d2);
        let (off, _) = frames(&segs[0])[1];
        flip(&segs[0], off + 20, 0x10);
        let (_, r) = open(&d2);
        assert_eq!(r.corrupt_records, 1);
    }

    #[test]
    fn a_predecessors_index_hint_replaces_reading_sealed_segments() {
        let d = tempfile::tempdir().unwrap();
        let mut b = forty_records_in_small_segments(&d);
        b.consume(23).unwrap();
        let hint = b.index_hint().expect("a file backlog gives a hint");
        assert!(hint.segments.len() > 2);
        let want = stamps(&b.peek(1000).unwrap());
        let len = b.len();
        drop(b);
        // Damage a hinted segment without changing its size: with the hint
        // the open does not read it (no corruption found), the read does.
        let segs = seg_files(&d);
        let (off, _) = frames(&segs[1])[1];
        flip(&segs[1], off + 20, 0x10);
        let (mut b, r) = FileBacklog::open_trusted(d.path(), SyncMode::Batch, Some(&hint)).unwrap();
        assert_eq!((r.corrupt_records, b.len()), (0, len));
        let e = b.peek(1000).unwrap_err();
        assert!(e.to_string().contains("dropped its 5 points"), "{e}");
        assert_eq!(b.take_read_losses(), 5);
        drop(b);
        // A hint that no longer matches the files is ignored.
        let d2 = tempfile::tempdir().unwrap();
        let mut b = forty_records_in_small_segments(&d2);
        b.consume(23).unwrap();
        let mut stale = b.index_hint().unwrap();
        drop(b);
        for s in &mut stale.segments {
            s.1 += 1;
            s.2.clear();
        }
        let (mut b, r) =
            FileBacklog::open_trusted(d2.path(), SyncMode::Batch, Some(&stale)).unwrap();
        assert_eq!((r.corrupt_records, b.len()), (0, len));
        assert_eq!(stamps(&b.peek(1000).unwrap()), want);
    }

    #[test]
    fn peek_spans_records() {
        let d = tempfile::tempdir().unwrap();
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
        let d = tempfile::tempdir().unwrap();
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
        let d = tempfile::tempdir().unwrap();
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
        let template = tempfile::tempdir().unwrap();
        let mut b = open_clean(&template);
        b.append(&pts(0, 3), 1).unwrap();
        b.append(&pts(3, 5), 2).unwrap();
        b.append(&pts(8, 4), 3).unwrap();
        drop(b);
        let seg = seg_files(&template).pop().unwrap();
        let name = seg.file_name().unwrap().to_owned();
        let (start, len) = *frames(&seg).last().unwrap();
        for cut in start..start + len {
            let d = tempfile::tempdir().unwrap();
            copy_dir(&template, &d);
            let path = d.path().join(&name);
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
        let d = tempfile::tempdir().unwrap();
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
            let d = tempfile::tempdir().unwrap();
            let mut b = open_clean(&d);
            b.append(&pts(0, 3), 1).unwrap();
            drop(b);
            let path = d.path().join(segment_name(7));
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
            let d = tempfile::tempdir().unwrap();
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

    /// Twelve 4-point records, about four per segment; the frames of the
    /// first segment.
    fn three_segments(d: &TempDir) -> (Vec<PathBuf>, Vec<(usize, usize)>) {
        let mut b = open_clean(d);
        b.append(&pts(0, 4), 0).unwrap();
        // Room for about four records per segment.
        b.set_segment_bytes(SEG_HEADER_LEN + 4 * (b.bytes() - SEG_HEADER_LEN) + 10);
        for i in 1..12 {
            b.append(&pts(i * 4, 4), i as i64).unwrap();
        }
        drop(b);
        let segs = seg_files(d);
        assert!(segs.len() >= 3);
        let fr = frames(&segs[0]);
        assert!(fr.len() >= 3);
        (segs, fr)
    }

    #[test]
    fn garbage_length_skips_to_the_next_intact_record() {
        let d = tempfile::tempdir().unwrap();
        let (segs, fr) = three_segments(&d);
        let first = &segs[0];
        let size = fs::metadata(first).unwrap().len();
        flip(first, fr[1].0 + 2, 0x40); // length of record 1 becomes huge
        let (mut b, r) = open(&d);
        assert_eq!(r.torn_bytes, 0);
        assert_eq!(
            (r.corrupt_records, r.lost_points, r.tail_points_estimate),
            (1, 4, 0),
            "{:?}",
            r.warnings
        );
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains(&format!("offset {}", fr[1].0)),
            "{:?}",
            r.warnings
        );
        // Nothing intact is cut: the records after the damage are read.
        assert_eq!(fs::metadata(first).unwrap().len(), size);
        let expect: Vec<u64> = range(0, 4).into_iter().chain(range(8, 48)).collect();
        assert_eq!(drain(&mut b, 5), expect);
    }

    #[test]
    fn garbage_length_with_nothing_intact_after_it_cuts_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let (segs, fr) = three_segments(&d);
        let first = &segs[0];
        let (last_off, _) = *fr.last().unwrap();
        let first_points = 4 * fr.len() as u64;
        flip(first, last_off + 2, 0x40);
        let (mut b, r) = open(&d);
        assert_eq!(r.torn_bytes, 0);
        assert_eq!(
            (r.corrupt_records, r.lost_points, r.tail_points_estimate),
            (1, 4, 0),
            "{:?}",
            r.warnings
        );
        assert_eq!(fs::metadata(first).unwrap().len(), last_off as u64);
        let expect: Vec<u64> = range(0, first_points - 4)
            .into_iter()
            .chain(range(first_points, 48))
            .collect();
        assert_eq!(drain(&mut b, 5), expect);
    }

    #[test]
    fn zeroed_block_skips_to_the_next_intact_record() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open_clean(&d);
        for i in 0..6 {
            b.append(&pts(i * 4, 4), i as i64).unwrap();
        }
        drop(b);
        let seg = seg_files(&d).pop().unwrap();
        let fr = frames(&seg);
        // Zero from the middle of record 1 to the middle of record 3.
        let (from, to) = (fr[1].0 + 5, fr[3].0 + 9);
        let mut data = fs::read(&seg).unwrap();
        data[from..to].iter_mut().for_each(|b| *b = 0);
        fs::write(&seg, &data).unwrap();
        let (mut b, r) = open(&d);
        assert_eq!(r.torn_bytes, 0);
        assert_eq!((r.lost_points, r.tail_points_estimate), (12, 0));
        assert!(r.corrupt_records >= 1, "{:?}", r.warnings);
        let expect: Vec<u64> = range(0, 4).into_iter().chain(range(16, 24)).collect();
        assert_eq!(drain(&mut b, 5), expect);
    }

    #[test]
    fn deleted_segment_is_counted_from_sequence_numbers() {
        let d = tempfile::tempdir().unwrap();
        let (segs, fr) = three_segments(&d);
        let second = frames(&segs[1]).len() as u64 * 4;
        let first_points = 4 * fr.len() as u64;
        fs::remove_file(&segs[1]).unwrap();
        let (mut b, r) = open(&d);
        assert_eq!(
            (r.lost_points, r.corrupt_records, r.torn_bytes),
            (second, 0, 0)
        );
        assert_eq!(r.points, 48 - second);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("missing"), "{:?}", r.warnings);
        let expect: Vec<u64> = range(0, first_points)
            .into_iter()
            .chain(range(first_points + second, 48))
            .collect();
        assert_eq!(drain(&mut b, 5), expect);

        // The first live segment deleted: counted from the cursor, when the
        // cursor is the newest one written...
        let d = tempfile::tempdir().unwrap();
        let (segs, _) = three_segments(&d);
        let mut b = open_clean(&d);
        b.consume(2).unwrap();
        drop(b);
        fs::remove_file(&segs[0]).unwrap();
        let (_, r) = open(&d);
        assert_eq!(r.lost_points, first_points - 2);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        // ...but not from a cursor slot that may lag (the newest slot torn):
        // the points before the first record may have been delivered.
        let cur = d.path().join(CURSOR_FILE);
        let data = fs::read(&cur).unwrap();
        let newest = (0..2).max_by_key(|&i| u64_at(&data, i * 32 + 8)).unwrap();
        flip(&cur, newest * 32 + 20, 1);
        let (b, r) = open(&d);
        assert_eq!((r.lost_points, r.points), (0, 48 - first_points));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(b.len(), 48 - first_points);
    }

    #[test]
    fn tail_loss_is_estimated() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open_clean(&d);
        for i in 0..5 {
            b.append(&pts(i * 4, 4), i as i64).unwrap();
        }
        drop(b);
        let seg = seg_files(&d).pop().unwrap();
        let (off, len) = frames(&seg)[3];
        // Cut in the middle of record 3: records 3 and 4 are lost.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len((off + len / 2) as u64)
            .unwrap();
        let (mut b, r) = open(&d);
        assert_eq!((r.points, r.lost_points), (12, 0));
        assert!(r.torn_bytes > 0);
        assert!(
            (1..=4).contains(&r.tail_points_estimate),
            "{}",
            r.tail_points_estimate
        );
        assert_eq!(drain(&mut b, 5), range(0, 12));
    }

    /// Points 0..15 in three segments of one 5-point record each.
    fn three_one_record_segments(d: &TempDir) -> Vec<PathBuf> {
        let mut b = open_clean(d);
        b.set_segment_bytes(1);
        for i in 0..3 {
            b.append(&pts(i * 5, 5), i as i64).unwrap();
        }
        drop(b);
        seg_files(d)
    }

    #[test]
    fn bad_segment_header_is_quarantined() {
        let d = tempfile::tempdir().unwrap();
        let segs = three_one_record_segments(&d);
        flip(&segs[1], 2, 0xff);
        let (mut b, r) = open(&d);
        assert_eq!(r.points, 10);
        assert_eq!(
            (r.quarantined_segments, r.quarantined_points, r.lost_points),
            (1, 5, 0)
        );
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("quarantine"), "{:?}", r.warnings);
        let moved = d
            .path()
            .join(QUARANTINE_DIR)
            .join(segs[1].file_name().unwrap());
        assert!(moved.exists() && !segs[1].exists());
        assert_eq!(b.peek(100).unwrap().len(), 10);
        drop(b);
        let (_, r) = open(&d);
        // Still set aside, not lost.
        assert_eq!(
            (r.quarantined_segments, r.quarantined_points, r.lost_points),
            (0, 5, 0)
        );
        let mut b = open_clean(&d);
        let expect: Vec<u64> = range(0, 5).into_iter().chain(range(10, 15)).collect();
        assert_eq!(drain(&mut b, 100), expect);
        assert!(moved.exists());
    }

    #[test]
    fn quarantined_head_is_not_skipped() {
        let d = tempfile::tempdir().unwrap();
        let segs = three_one_record_segments(&d);
        flip(&segs[0], 2, 0xff);
        let (b, r) = open(&d);
        assert_eq!((r.points, r.quarantined_points, r.lost_points), (10, 5, 0));
        drop(b);
        // Repaired and put back: its points are delivered, first.
        let moved = d
            .path()
            .join(QUARANTINE_DIR)
            .join(segs[0].file_name().unwrap());
        fs::rename(&moved, &segs[0]).unwrap();
        flip(&segs[0], 2, 0xff);
        let mut b = open_clean(&d);
        assert_eq!(drain(&mut b, 4), range(0, 15));
    }

    #[test]
    fn cursor_slots() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open_clean(&d);
        for i in 0..3 {
            b.append(&pts(i * 10, 10), i as i64).unwrap();
        }
        b.consume(5).unwrap();
        b.consume(5).unwrap();
        drop(b);
        let path = d.path().join(CURSOR_FILE);
        let data = fs::read(&path).unwrap();
        let newest = (0..2).max_by_key(|&i| u64_at(&data, i * 32 + 8)).unwrap();

        // The newest slot torn: the older one (5) is used.
        let d1 = tempfile::tempdir().unwrap();
        copy_dir(&d, &d1);
        flip(&d1.path().join(CURSOR_FILE), newest * 32 + 17, 1);
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
        let d = tempfile::tempdir().unwrap();
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
        let d = tempfile::tempdir().unwrap();
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
        let d = tempfile::tempdir().unwrap();
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

    /// Found by the fuzzer: a record with a good checksum whose body does
    /// not decode (found by `peek`, as open no longer decodes bodies) is
    /// dropped once; once everything is consumed, the cursor is past it and
    /// the next open is clean.
    #[test]
    fn undecodable_body_is_dropped_once_and_forgotten() {
        let d = tempfile::tempdir().unwrap();
        let mut b = open_clean(&d);
        b.append(&pts(0, 2), 0).unwrap();
        drop(b);
        // Append a record whose header is sound but whose body is garbage.
        let seg = seg_files(&d).pop().unwrap();
        let header = RecordHeader {
            version: RECORD_VERSION,
            first_seq: 2,
            count: 2,
            stored_at: 0,
        };
        let mut payload = postcard::to_allocvec(&header).unwrap();
        payload.extend_from_slice(&[1, 0xff, 0xff, 0xff]);
        let mut data = fs::read(&seg).unwrap();
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&crate::crc::crc32c(&payload).to_le_bytes());
        data.extend_from_slice(&payload);
        fs::write(&seg, data).unwrap();

        let mut b = open_clean(&d);
        assert_eq!(b.len(), 4);
        assert!(b.peek(10).unwrap_err().0.contains("became unreadable"));
        assert_eq!(b.len(), 2);
        assert_eq!(drain(&mut b, 10), range(0, 2));
        b.append(&pts(4, 1), 1).unwrap();
        drop(b);
        let mut b = open_clean(&d);
        assert_eq!(drain(&mut b, 10), range(4, 5));

        // The same record at the head is skipped at once.
        let d = tempfile::tempdir().unwrap();
        let mut b = open_clean(&d);
        b.append(&pts(0, 2), 0).unwrap();
        b.consume(2).unwrap();
        drop(b);
        assert!(seg_files(&d).is_empty());
        let seg = d.path().join(segment_name(1));
        let mut data = segment_header().to_vec();
        data.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        data.extend_from_slice(&crate::crc::crc32c(&payload).to_le_bytes());
        data.extend_from_slice(&payload);
        fs::write(&seg, data).unwrap();
        let mut b = open_clean(&d);
        assert_eq!(b.len(), 2);
        assert!(b.peek(10).is_err());
        assert!(b.is_empty());
        drop(b);
        let b = open_clean(&d);
        assert!(b.is_empty());
        assert!(seg_files(&d).is_empty());
    }

    #[test]
    fn sync_modes_work() {
        for mode in [SyncMode::Always, SyncMode::Batch, SyncMode::Never] {
            let d = tempfile::tempdir().unwrap();
            let (mut b, _) = FileBacklog::open(d.path(), mode).unwrap();
            b.set_segment_bytes(300);
            for i in 0..10 {
                b.append(&pts(i * 3, 3), 0).unwrap();
                b.sync().unwrap();
            }
            b.consume(4).unwrap();
            drop(b);
            let (mut b, r) = FileBacklog::open(d.path(), mode).unwrap();
            assert!(r.warnings.is_empty());
            assert_eq!(drain(&mut b, 7), range(4, 30));
        }
    }

    /// Random operations against MemoryBacklog as the model, with reopens.
    #[test]
    fn matches_memory_backlog() {
        for seed in 1..=4u64 {
            let d = tempfile::tempdir().unwrap();
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
        let d = tempfile::tempdir().unwrap();
        let (mut b, _) = FileBacklog::open(d.path(), mode).unwrap();
        let t = Instant::now();
        for (i, chunk) in points.chunks(batch as usize).enumerate() {
            b.append(chunk, i as i64).unwrap();
            b.sync().unwrap();
        }
        let append = t.elapsed();
        let bytes = b.bytes();
        drop(b);
        let t = Instant::now();
        let (mut b, r) = FileBacklog::open(d.path(), mode).unwrap();
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
             open (recovery: checksums and headers) {:?} = {:.0} points/s; peek+consume {batch} {:?} = {:.0} points/s",
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
