//! A read-only walk over a backlog directory.
//!
//! It reads the segments and the cursor the way `FileBacklog::open` does,
//! with the same parser (`backlog::file::parse_segment_bytes`) and the
//! read-only helpers of `backlog::file::inspect`, but repairs nothing: where `open` would cut a torn tail, skip a corrupt record or
//! quarantine a segment, this only reports what it would do. Files are
//! opened for reading only.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use influx_sink_component::backlog::file::{
    inspect, parse_segment_bytes, SegmentHeader, SegmentItem, TailKind,
};
use influx_sink_component::point::Point;

/// One damaged place in the backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: PathBuf,
    /// Byte offset in the file, when the damage has one.
    pub offset: Option<u64>,
    pub what: String,
    /// Whether undelivered points are (or may be) affected; `false` when the
    /// damage lies among points already delivered.
    pub live: bool,
}

/// A file set aside in `quarantine/` by an earlier open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub name: String,
    pub bytes: u64,
}

/// What a scan found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub dir: PathBuf,
    /// Segment files (path, size), oldest first.
    pub segments: Vec<(PathBuf, u64)>,
    /// The stored cursor, if a valid one was found.
    pub cursor: Option<u64>,
    /// Sequence number of the oldest live point (the cursor, or where open
    /// would start without one).
    pub head: u64,
    /// Sequence number the next appended point would get.
    pub next_seq: u64,
    /// Records holding live points, and the live points.
    pub records: u64,
    pub points: u64,
    /// Intact records holding only points already delivered (their
    /// segments are deleted at the next open or cursor move).
    pub delivered_records: u64,
    pub oldest_ts: Option<i64>,
    pub newest_ts: Option<i64>,
    pub oldest_stored_at: Option<i64>,
    pub newest_stored_at: Option<i64>,
    pub quarantined: Vec<Quarantined>,
    /// What `FileBacklog::open` would find and repair: bytes of torn tails
    /// it would cut, corrupt records it would skip (live ones only),
    /// segments it would quarantine, and its warnings.
    pub torn_bytes: u64,
    pub corrupt_records: u64,
    pub bad_segments: u64,
    pub warnings: Vec<String>,
    /// Every damaged place, delivered or not.
    pub damage: Vec<Damage>,
}

impl Report {
    /// Total bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|(_, n)| n).sum()
    }

    /// Sequence numbers from the head to the next one that no intact
    /// record holds: points lost to damage, set aside in a bad segment, or
    /// in a segment file that is gone.
    pub fn missing_points(&self) -> u64 {
        (self.next_seq - self.head).saturating_sub(self.points)
    }
}

/// Which records to decode in full.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Live records only (what open checks; enough for stats and dump).
    Live,
    /// Every record, delivered ones too (verify).
    All,
}

/// Damage seen since the last good record: whether it affects live points
/// is known only once the next good record's sequence number is.
struct Pending {
    damage: Damage,
    records: u64,
    warning: String,
}

/// An intact record's place and header.
#[derive(Clone, Copy)]
struct Rec {
    offset: u64,
    len: u32,
    first_seq: u64,
    count: u32,
    stored_at: i64,
}

struct Walker<'a> {
    dir: &'a Path,
    depth: Depth,
    cursor: Option<u64>,
    prev_end: u64,
    first_live: Option<u64>,
    good_records: u64,
    good_bytes: u64,
    pending: Vec<Pending>,
    report: Report,
    visit: &'a mut dyn FnMut(&[Point]) -> io::Result<()>,
}

/// Why a scan stopped.
#[derive(Debug)]
pub enum ScanError {
    /// The directory is missing, not a directory, or cannot be listed.
    Dir(String),
    /// The visitor failed (e.g. writing to a closed pipe).
    Visit(io::Error),
}

/// Walk the backlog in `dir`, calling `visit` with the live points of each
/// record, oldest first. Fails if `dir` cannot be listed or `visit` fails.
pub fn scan(
    dir: &Path,
    depth: Depth,
    visit: &mut dyn FnMut(&[Point]) -> io::Result<()>,
) -> Result<Report, ScanError> {
    let dir_err = |e: io::Error| ScanError::Dir(format!("{}: {e}", dir.display()));
    let meta = fs::metadata(dir).map_err(dir_err)?;
    if !meta.is_dir() {
        return Err(ScanError::Dir(format!(
            "{}: not a directory",
            dir.display()
        )));
    }
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(dir_err)? {
        let entry = entry.map_err(dir_err)?;
        let Some(id) = entry.file_name().to_str().and_then(inspect::segment_id) else {
            continue;
        };
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            ids.push(id);
        }
    }
    ids.sort_unstable();

    let (cursor, cursor_warnings) = inspect::cursor(dir, !ids.is_empty());
    let mut report = Report {
        dir: dir.to_path_buf(),
        cursor,
        quarantined: quarantined(dir),
        ..Report::default()
    };
    for w in cursor_warnings {
        report.damage.push(Damage {
            file: dir.join(inspect::CURSOR),
            offset: None,
            what: w.clone(),
            live: true,
        });
        report.warnings.push(w);
    }
    let mut walker = Walker {
        dir,
        depth,
        cursor,
        prev_end: 0,
        first_live: None,
        good_records: 0,
        good_bytes: 0,
        pending: Vec::new(),
        report,
        visit,
    };
    for (i, &id) in ids.iter().enumerate() {
        walker.segment(id, i + 1 == ids.len())?;
    }
    walker.resolve(true);
    let mut report = walker.report;
    report.head = cursor.unwrap_or(walker.first_live.unwrap_or(walker.prev_end));
    report.next_seq = walker.prev_end.max(report.head);
    Ok(report)
}

/// The files in `quarantine/`, by name.
fn quarantined(dir: &Path) -> Vec<Quarantined> {
    let mut out: Vec<Quarantined> = fs::read_dir(dir.join(inspect::QUARANTINE))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| Quarantined {
                name: e.file_name().to_string_lossy().into_owned(),
                bytes: meta.len(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

impl Walker<'_> {
    fn damage(&mut self, path: &Path, offset: Option<u64>, what: String, live: bool) {
        self.report.damage.push(Damage {
            file: path.to_path_buf(),
            offset,
            what,
            live,
        });
    }

    fn pend(&mut self, path: &Path, offset: u64, what: String, records: u64, warning: String) {
        self.pending.push(Pending {
            damage: Damage {
                file: path.to_path_buf(),
                offset: Some(offset),
                what,
                live: true,
            },
            records,
            warning,
        });
    }

    /// Settle the pending damage: it affects live points unless the next
    /// good record starts at or before the cursor (as open decides).
    fn resolve(&mut self, live: bool) {
        for mut p in self.pending.drain(..) {
            p.damage.live = live;
            if live {
                self.report.corrupt_records += p.records;
                self.report.warnings.push(p.warning);
            }
            self.report.damage.push(p.damage);
        }
    }

    fn segment(&mut self, id: u64, last: bool) -> Result<(), ScanError> {
        let name = format!("{id:016x}.seg");
        let path = self.dir.join(&name);
        let shown = path.display().to_string();
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) => {
                let what = format!("could not read the file: {e}");
                self.report.warnings.push(format!(
                    "could not read backlog segment {shown}: {e}; left it in place, unread"
                ));
                self.damage(&path, None, what, true);
                return Ok(());
            }
        };
        self.report.segments.push((path.clone(), data.len() as u64));

        let parsed = parse_segment_bytes(&data);
        let bad_header = match parsed.header {
            SegmentHeader::Valid => None,
            SegmentHeader::Short { len, prefix: true } if last => {
                self.report.torn_bytes += len;
                self.report.warnings.push(format!(
                    "backlog segment {shown}: its header was cut at {len} bytes (creation \
                     interrupted by a crash); open would remove it"
                ));
                self.damage(
                    &path,
                    Some(0),
                    format!(
                        "header cut at {len} bytes (segment creation interrupted); it holds no records"
                    ),
                    false,
                );
                return Ok(());
            }
            SegmentHeader::Short { len, .. } => Some(format!("only {len} bytes long")),
            SegmentHeader::WrongMagic => Some("wrong magic".to_string()),
            SegmentHeader::UnknownVersion(v) => Some(format!("unknown format version {v}")),
        };
        if let Some(reason) = bad_header {
            self.report.bad_segments += 1;
            self.report.warnings.push(format!(
                "backlog segment {shown} has a bad header ({reason}); open would move it to {}",
                self.dir.join(inspect::QUARANTINE).join(&name).display()
            ));
            self.damage(
                &path,
                Some(0),
                format!("bad segment header ({reason}); its records are not read"),
                true,
            );
            return Ok(());
        }

        for item in parsed.items {
            match item {
                SegmentItem::Record {
                    offset,
                    len,
                    first_seq,
                    count,
                    stored_at,
                } => {
                    let start = (offset + inspect::RECORD_FRAME_LEN) as usize;
                    let payload = &data[start..start + len as usize];
                    let rec = Rec {
                        offset,
                        len,
                        first_seq,
                        count,
                        stored_at,
                    };
                    self.record(&path, rec, payload)?;
                }
                SegmentItem::BadHeader { offset, len, why } => {
                    let warning = format!(
                        "backlog segment {shown}: a corrupt record at offset {offset} ({len} bytes): \
                         {why}; open would skip it"
                    );
                    self.pend(&path, offset, why, 1, warning);
                }
                SegmentItem::Damaged {
                    offset,
                    bytes,
                    one_record: true,
                }
                | SegmentItem::Tail {
                    offset,
                    bytes,
                    kind: TailKind::Record,
                } => {
                    let len = bytes - inspect::RECORD_FRAME_LEN;
                    let warning = format!(
                        "backlog segment {shown}: a corrupt record at offset {offset} ({len} \
                         bytes): checksum mismatch; open would skip it"
                    );
                    let what = format!("checksum mismatch in a record of {len} bytes");
                    self.pend(&path, offset, what, 1, warning);
                }
                SegmentItem::Damaged { offset, bytes, .. } => {
                    let n = self.estimate_records(bytes);
                    let next = offset + bytes;
                    let warning = format!(
                        "backlog segment {shown}: the record at offset {offset} is damaged and its \
                         length is unreadable; open would skip {bytes} bytes (about {n} records) \
                         up to the next intact record, at offset {next}"
                    );
                    let what = format!(
                        "damaged record with an unreadable length: {bytes} bytes (about {n} \
                         records) up to the next intact record, at offset {next}"
                    );
                    self.pend(&path, offset, what, n, warning);
                }
                SegmentItem::Tail {
                    offset,
                    bytes,
                    kind: TailKind::Torn,
                } if last => {
                    self.report.torn_bytes += bytes;
                    self.report.warnings.push(format!(
                        "backlog segment {shown}: a torn tail of {bytes} bytes at offset {offset} \
                         (a write interrupted by a crash); open would cut it"
                    ));
                    self.damage(
                        &path,
                        Some(offset),
                        format!("torn tail of {bytes} bytes (a write interrupted by a crash)"),
                        true,
                    );
                }
                SegmentItem::Tail { offset, bytes, .. } => {
                    let n = self.estimate_records(bytes);
                    let warning = format!(
                        "backlog segment {shown}: the record at offset {offset} is damaged and no \
                         intact record follows it; open would cut the remaining {bytes} bytes \
                         (about {n} records)"
                    );
                    let what = format!(
                        "damaged record, and no intact record follows: the remaining {bytes} \
                         bytes (about {n} records) cannot be read"
                    );
                    self.pend(&path, offset, what, n, warning);
                }
            }
        }
        Ok(())
    }

    /// Records estimated in `bytes`, at the average size of the good ones.
    fn estimate_records(&self, bytes: u64) -> u64 {
        let avg = self.good_bytes.checked_div(self.good_records).unwrap_or(0);
        (bytes + avg / 2).checked_div(avg).unwrap_or(1).max(1)
    }

    fn record(&mut self, path: &Path, rec: Rec, payload: &[u8]) -> Result<(), ScanError> {
        let shown = path.display();
        let Rec {
            offset,
            len,
            first_seq,
            count,
            stored_at,
        } = rec;
        if first_seq < self.prev_end {
            let why = format!(
                "sequence number {first_seq} goes backwards (the previous record ended at {})",
                self.prev_end
            );
            let warning = format!(
                "backlog segment {shown}: a corrupt record at offset {offset} ({len} bytes): \
                 {why}; open would skip it"
            );
            self.pend(path, offset, why, 1, warning);
            return Ok(());
        }
        let end_seq = first_seq + u64::from(count);
        let live = self.cursor.is_none_or(|c| end_seq > c);
        let mut points = None;
        if live || self.depth == Depth::All {
            // Open vouches for a record by its checksum; decoding the body
            // too finds what only `peek` would (it drops such a record).
            match inspect::decode_record(payload) {
                Ok(p) => points = Some(p),
                Err(why) => self.damage(
                    path,
                    Some(offset),
                    format!("the body does not decode: {why}"),
                    live,
                ),
            }
        }
        // A good record: the damage before it lies among delivered points
        // if it starts at or before the cursor.
        let delivered_gap = self.cursor.is_some_and(|c| first_seq <= c);
        self.resolve(!delivered_gap);
        self.prev_end = end_seq;
        self.good_records += 1;
        self.good_bytes += u64::from(len) + inspect::RECORD_FRAME_LEN;
        if !live {
            self.report.delivered_records += 1;
            return Ok(());
        }
        self.first_live.get_or_insert(first_seq);
        let skip = self
            .cursor
            .map_or(0, |c| c.saturating_sub(first_seq) as usize);
        let r = &mut self.report;
        r.records += 1;
        r.oldest_stored_at = Some(r.oldest_stored_at.map_or(stored_at, |t| t.min(stored_at)));
        r.newest_stored_at = Some(r.newest_stored_at.map_or(stored_at, |t| t.max(stored_at)));
        let Some(points) = points else {
            // Undecodable: counted as the record's header says, not shown.
            r.points += u64::from(count) - skip as u64;
            return Ok(());
        };
        let points = &points[skip.min(points.len())..];
        r.points += points.len() as u64;
        for p in points {
            r.oldest_ts = Some(r.oldest_ts.map_or(p.timestamp, |t| t.min(p.timestamp)));
            r.newest_ts = Some(r.newest_ts.map_or(p.timestamp, |t| t.max(p.timestamp)));
        }
        (self.visit)(points).map_err(ScanError::Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use influx_sink_component::backlog::file::{FileBacklog, SyncMode};
    use influx_sink_component::backlog::Backlog;
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

    /// A backlog of 12 records of 5 points, 4 records per segment, the
    /// first `consumed` points delivered.
    fn build(d: &TempDir, consumed: u64) {
        let (mut b, _) = FileBacklog::open(d.path(), SyncMode::Never).unwrap();
        b.append(&pts(0, 5), 0).unwrap();
        let rec = b.bytes() - 16;
        b.set_segment_bytes(16 + 4 * rec);
        for i in 1..12 {
            b.append(&pts(i * 5, 5), i as i64).unwrap();
        }
        b.consume(consumed).unwrap();
    }

    fn segs(d: &TempDir) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        v.sort();
        v
    }

    fn frames(p: &Path) -> Vec<usize> {
        let data = fs::read(p).unwrap();
        let mut off = 16;
        let mut v = Vec::new();
        while off + 8 <= data.len() {
            v.push(off);
            off += 8 + u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        }
        v
    }

    fn edit(p: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut data = fs::read(p).unwrap();
        f(&mut data);
        fs::write(p, data).unwrap();
    }

    /// The scan predicts what open then finds, and lists the same points.
    fn agree(d: &TempDir, case: &str) -> Report {
        let mut seen = Vec::new();
        let r = scan(d.path(), Depth::All, &mut |p: &[Point]| {
            seen.extend_from_slice(p);
            Ok(())
        })
        .unwrap();
        let (mut b, open) = FileBacklog::open(d.path(), SyncMode::Never).unwrap();
        let ctx = format!("{case}: scan {r:?}\nopen {open:?}");
        assert_eq!(r.points, open.points, "{ctx}");
        assert_eq!(r.torn_bytes, open.torn_bytes, "{ctx}");
        assert_eq!(r.corrupt_records, open.corrupt_records, "{ctx}");
        assert_eq!(r.bad_segments, open.quarantined_segments, "{ctx}");
        assert_eq!(r.warnings.len(), open.warnings.len(), "{ctx}");
        assert_eq!(seen, b.peek(usize::MAX >> 1).unwrap(), "{ctx}");
        r
    }

    #[test]
    fn scan_predicts_what_open_repairs() {
        let d = tempfile::tempdir().unwrap();
        build(&d, 7);
        let r = agree(&d, "clean");
        assert!(r.damage.is_empty() && r.warnings.is_empty(), "{r:?}");
        assert_eq!((r.points, r.head, r.next_seq), (53, 7, 60));
        assert_eq!((r.oldest_ts, r.newest_ts), (Some(7), Some(59)));
        assert_eq!(
            (r.oldest_stored_at, r.newest_stored_at),
            (Some(1), Some(11))
        );

        let d = tempfile::tempdir().unwrap();
        build(&d, 0);
        let s = &segs(&d)[1];
        let off = frames(s)[2];
        edit(s, |v| v[off + 20] ^= 4);
        let r = agree(&d, "flip");
        assert_eq!(r.damage.len(), 1);
        assert_eq!(r.damage[0].offset, Some(off as u64));

        let d = tempfile::tempdir().unwrap();
        build(&d, 0);
        let s = &segs(&d)[0];
        let off = frames(s)[1];
        edit(s, |v| v[off + 2] ^= 0x40);
        agree(&d, "garbage length");

        let d = tempfile::tempdir().unwrap();
        build(&d, 0);
        let s = segs(&d).pop().unwrap();
        edit(&s, |v| v.truncate(v.len() - 7));
        let r = agree(&d, "torn");
        assert!(r.torn_bytes > 0);

        let d = tempfile::tempdir().unwrap();
        build(&d, 0);
        let s = segs(&d).pop().unwrap();
        edit(&s, |v| v.extend_from_slice(&[0; 40]));
        assert_eq!(agree(&d, "zeros").torn_bytes, 40);

        let d = tempfile::tempdir().unwrap();
        build(&d, 0);
        edit(&segs(&d)[1], |v| v[3] ^= 0xff);
        let r = agree(&d, "bad header");
        assert_eq!(r.bad_segments, 1);

        let d = tempfile::tempdir().unwrap();
        build(&d, 0);
        fs::write(d.path().join(format!("{:016x}.seg", 99)), b"INFXSE").unwrap();
        assert_eq!(agree(&d, "interrupted creation").torn_bytes, 6);

        let d = tempfile::tempdir().unwrap();
        build(&d, 12);
        let s = &segs(&d)[0];
        let off = frames(s)[1];
        edit(s, |v| v[off + 20] ^= 4);
        let r = agree(&d, "damage among delivered points");
        assert_eq!(r.corrupt_records, 0);
        assert_eq!(r.damage.len(), 1);
        assert!(!r.damage[0].live);

        let d = tempfile::tempdir().unwrap();
        build(&d, 10);
        fs::remove_file(d.path().join(inspect::CURSOR)).unwrap();
        let r = agree(&d, "no cursor");
        assert_eq!(r.points, 60);
    }

    #[test]
    fn scan_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        build(&d, 3);
        let s = segs(&d).pop().unwrap();
        edit(&s, |v| v.truncate(v.len() - 3));
        edit(&segs(&d)[0], |v| v[2] ^= 1);
        let before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), fs::read(&p).unwrap()))
            .collect();
        let r = scan(d.path(), Depth::All, &mut |_: &[Point]| Ok(())).unwrap();
        assert_eq!(r.bad_segments, 1);
        assert!(r.torn_bytes > 3, "the whole cut record is torn: {r:?}");
        let after: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), fs::read(&p).unwrap()))
            .collect();
        assert_eq!(before, after);
    }
}
