//! Recovery at open: every segment read once (or taken from a
//! predecessor's [`IndexHint`]), torn tails cut, damaged records skipped,
//! segments with a bad header moved to `quarantine/`, and the points lost
//! counted from sequence numbers, all into one [`RecoveryReport`].

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::cursor::StoredCursor;
use super::record::{RecordHeader, RecordMeta, FRAME_LEN, RECORD_VERSION};
use super::segment::{
    parse_segment_bytes, parse_segment_checked, segment_name, Segment, SegmentHeader, SegmentItem,
    TailKind,
};
use super::FileBacklog;
use crate::backlog::RecoveryReport;

pub(super) const QUARANTINE_DIR: &str = "quarantine";

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

/// What recovery found, for [`FileBacklog::open`] to build on.
pub(super) struct Recovered {
    /// Records holding at least one point at or after the cursor.
    pub(super) index: VecDeque<RecordMeta>,
    /// The segment files kept, oldest first.
    pub(super) segments: VecDeque<Segment>,
    /// (first_seq, end) of the intact records in quarantine.
    pub(super) quarantined: Vec<(u64, u64)>,
    /// Past every sequence number used, in a live segment or in quarantine.
    pub(super) next_seq: u64,
    /// The head: the stored cursor, else the oldest record known.
    pub(super) cursor: u64,
}

/// Read the segments `ids` of `dir` (sorted, oldest first), repairing what
/// can be repaired, and count what was found and lost into `report`.
pub(super) fn recover(
    dir: &Path,
    ids: &[u64],
    stored: Option<StoredCursor>,
    trusted: bool,
    hint: Option<&IndexHint>,
    report: &mut RecoveryReport,
) -> Recovered {
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
        report: &mut *report,
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
    Recovered {
        index,
        segments,
        quarantined,
        next_seq,
        cursor,
    }
}

impl FileBacklog {
    /// What this instance knows of its sealed segments, for a successor.
    pub(super) fn hint(&self) -> IndexHint {
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
        IndexHint { segments }
    }
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
