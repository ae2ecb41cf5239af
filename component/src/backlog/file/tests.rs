//! The file backlog through its public face, against damage made by hand:
//! torn tails, flipped bits, garbage lengths, deleted and quarantined
//! segments, torn cursor slots; and against `MemoryBacklog` as a model.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::cursor::CURSOR_FILE;
use super::record::{RecordHeader, RECORD_VERSION};
use super::recovery::QUARANTINE_DIR;
use super::segment::{segment_header, segment_name, SEG_HEADER_LEN};
use super::{u32_at, u64_at, FileBacklog, SyncMode};
use crate::backlog::memory::MemoryBacklog;
use crate::backlog::{Backlog, RecoveryReport};
use crate::point::Point;

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
    let (mut b, r) = FileBacklog::open_trusted(d2.path(), SyncMode::Batch, Some(&stale)).unwrap();
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
                w.contains(&path.display().to_string()) && w.contains(&format!("offset {start}")),
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
