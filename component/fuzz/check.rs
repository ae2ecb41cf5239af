//! The checks of the `record_decoder` fuzz target, shared with the stable
//! test `fuzz_record_decoder_checks_on_random_inputs` in
//! `component/tests/backlog_corruption.rs` (which includes this file by
//! path), so CI exercises them without nightly.
//!
//! The first input byte picks what the rest is fed to:
//!
//! * 0: `codec::decode_points`; what decodes must re-encode and decode to
//!   the same points.
//! * 1: `parse_segment_bytes` (the recovery parser); its items must tile the
//!   bytes, its records must check out, and parsing a prefix that ends after
//!   a record must give the same items up to it.
//! * 2: the same, behind a valid segment header.
//! * 3: the rest split into record payloads (a u16 LE length before each),
//!   framed with correct lengths and CRC32Cs into a segment, so that record
//!   headers and bodies are reached; then as 4.
//! * 4: the rest written as a segment file of a backlog directory:
//!   `FileBacklog::open` must succeed, the backlog must drain with
//!   peek/consume (each damaged record failing a peek at most once), and
//!   appending and reopening must work.

use std::fs;
use std::path::PathBuf;

use influx_sink_component::backlog::file::{
    parse_segment_bytes, FileBacklog, ParsedSegment, SegmentHeader, SegmentItem, SyncMode, TailKind,
};
use influx_sink_component::backlog::Backlog;
use influx_sink_component::codec::{decode_points, encode_points};
use influx_sink_component::point::Point;

/// Magic, format version 1 (u16 LE), zero padding.
const HEADER: [u8; 16] = *b"INFXSEG\0\x01\0\0\0\0\0\0\0";

/// Modes whose input is a whole segment file.
#[allow(dead_code)]
pub const MODES: [u8; 2] = [1, 4];

pub fn record_decoder(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => codec(rest),
        1 => segment(rest),
        2 => {
            let mut v = HEADER.to_vec();
            v.extend_from_slice(rest);
            segment(&v);
        }
        3 => {
            let mut v = HEADER.to_vec();
            let mut r = rest;
            while r.len() >= 2 {
                let n = (u16::from_le_bytes([r[0], r[1]]) as usize).min(r.len() - 2);
                let payload = &r[2..2 + n];
                r = &r[2 + n..];
                v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                v.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
                v.extend_from_slice(payload);
            }
            segment(&v);
            backlog(&v);
        }
        _ => {
            segment(rest);
            backlog(rest);
        }
    }
}

fn codec(bytes: &[u8]) {
    if let Ok(points) = decode_points(bytes) {
        let mut again = Vec::new();
        encode_points(&points, &mut again);
        let back = decode_points(&again).expect("re-encoded points decode");
        assert_eq!(back, points, "decode(encode(points)) != points");
    }
}

fn check_items(data: &[u8], p: &ParsedSegment) {
    if let SegmentHeader::Short { len, prefix } = p.header {
        assert!(data.len() < HEADER.len() && len == data.len() as u64);
        assert_eq!(prefix, HEADER.starts_with(data));
        assert!(p.items.is_empty());
        return;
    }
    let mut at = HEADER.len() as u64;
    let n = p.items.len();
    for (i, item) in p.items.iter().enumerate() {
        assert_eq!(item.offset(), at, "items must tile the segment: {item:?}");
        assert!(item.bytes() > 0, "empty item {item:?}");
        at += item.bytes();
        match *item {
            SegmentItem::Record { offset, len, .. }
            | SegmentItem::BadHeader { offset, len, .. } => {
                let o = offset as usize;
                let end = o + 8 + len as usize;
                assert!(len > 0 && end <= data.len());
                assert_eq!(u32::from_le_bytes(data[o..o + 4].try_into().unwrap()), len);
                let crc = u32::from_le_bytes(data[o + 4..o + 8].try_into().unwrap());
                assert_eq!(
                    crc32c::crc32c(&data[o + 8..end]),
                    crc,
                    "record with a bad CRC"
                );
                if let SegmentItem::Record { count, .. } = *item {
                    assert!(count > 0);
                }
            }
            SegmentItem::Damaged { .. } => {
                // Reading resumes at a record.
                assert!(
                    matches!(p.items.get(i + 1), Some(SegmentItem::Record { .. })),
                    "damage not followed by a record"
                );
            }
            SegmentItem::Tail { bytes, kind, .. } => {
                assert_eq!(i + 1, n, "a tail must be last");
                if kind == TailKind::Record {
                    assert!(bytes > 8);
                }
            }
        }
    }
    assert_eq!(
        at,
        data.len().max(HEADER.len()) as u64,
        "items must reach the end"
    );
}

fn segment(data: &[u8]) {
    let p = parse_segment_bytes(data);
    check_items(data, &p);
    // Parsing only up to the end of the last record finds the same items up
    // to it: nothing depends on bytes after a record.
    if let Some(i) = p
        .items
        .iter()
        .rposition(|x| matches!(x, SegmentItem::Record { .. }))
    {
        let end = (p.items[i].offset() + p.items[i].bytes()) as usize;
        let q = parse_segment_bytes(&data[..end]);
        assert_eq!(q.items[..], p.items[..=i], "prefix parse differs");
    }
}

/// A scratch backlog directory for this process and thread.
fn scratch_dir() -> PathBuf {
    let t = format!("{:?}", std::thread::current().id());
    let t: String = t.chars().filter(char::is_ascii_digit).collect();
    std::env::temp_dir().join(format!("influx-sink-fuzz-{}-{t}", std::process::id()))
}

fn backlog(segment: &[u8]) {
    let dir = scratch_dir();
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    fs::write(dir.join("0000000000000003.seg"), segment).expect("write segment");
    let (mut b, r) = FileBacklog::open(&dir, SyncMode::Never).expect("open never fails");
    assert_eq!(r.points, b.len());
    let records = parse_segment_bytes(segment).items.len() as u64;
    let mut errors = 0;
    let mut drained = 0u64;
    let start = b.len();
    loop {
        match b.peek(7) {
            Ok(p) if p.is_empty() => break,
            Ok(p) => {
                drained += p.len() as u64;
                b.consume(p.len() as u64).expect("consume");
            }
            Err(_) => {
                errors += 1;
                assert!(errors <= records, "peek keeps failing");
            }
        }
    }
    assert!(b.is_empty() && drained <= start);
    let p = Point {
        line: "m f=1i".to_string(),
        series_len: 1,
        timestamp: 5,
    };
    b.append(std::slice::from_ref(&p), 1).expect("append");
    drop(b);
    let (mut b, r) = FileBacklog::open(&dir, SyncMode::Never).expect("reopen");
    // Drained: what was damaged is behind the head and not reported again,
    // unless points in quarantine hold the head back (it never skips them).
    assert!(
        r.warnings.is_empty() || r.quarantined_points > 0,
        "{:?}",
        r.warnings
    );
    assert_eq!(b.peek(10).expect("peek"), vec![p]);
    drop(b);
    let _ = fs::remove_dir_all(&dir);
}
