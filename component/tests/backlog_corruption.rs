//! Random damage to backlog directories written by `FileBacklog` (several
//! 64 KiB segments, records of 1 to ~250 points, some larger than a page or
//! a whole segment): bit flips, truncations, zeroed 4 KiB pages, deleted
//! segment files, damaged cursor slots, garbage appended, and combinations
//! of these. After each damage:
//!
//! * `FileBacklog::open` succeeds;
//! * every record whose bytes were not touched comes back intact and in
//!   order (those in a segment whose header was hit are quarantined instead,
//!   and counted in `quarantined_points`);
//! * the report accounts for the rest: recovered + `lost_points` +
//!   `quarantined_points` + what was lost after the last intact record
//!   (`tail_points_estimate` is non-zero whenever bytes of it remain) is
//!   every undelivered point;
//! * the backlog drains with peek/consume, then appending and reopening
//!   work and the next open is clean.
//!
//! The oracle knows the byte range of every record (it walks the frames of
//! the undamaged files) and which records each append wrote, and compares
//! bytes before and after the damage to decide what was touched.
//!
//! Deterministic: xorshift, one seed per iteration derived from a base seed.
//! A failure names the seed, the iteration and the damages; replay it alone
//! with `BACKLOG_CORRUPTION_SEED=<seed> BACKLOG_CORRUPTION_ONLY=<iteration>
//! cargo test --release -p influx-sink-component --test backlog_corruption
//! -- --nocapture`. `BACKLOG_CORRUPTION_ITERS` sets the number of iterations
//! (default 1200).
//!
//! The second test runs the fuzz target's checks (`fuzz/check.rs`, also run
//! by `cargo fuzz run record_decoder`) over a few thousand inputs, on stable.

use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use influx_sink_component::backlog::file::{FileBacklog, SyncMode};
use influx_sink_component::backlog::{Backlog, RecoveryReport};
use influx_sink_component::point::Point;

#[path = "../fuzz/check.rs"]
mod fuzz_check;

const SEGMENT_BYTES: u64 = 64 << 10;
/// Magic, format version 1 (u16 LE), zero padding.
const HEADER: [u8; 16] = *b"INFXSEG\0\x01\0\0\0\0\0\0\0";
const CURSOR: &str = "cursor";
const DEFAULT_SEED: u64 = 0x1bad_5eed_0ba5_e11e;
const DEFAULT_ITERS: u64 = 1200;

/// xorshift64*, seeded through splitmix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn alnum(&mut self, len: u64) -> String {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_";
        (0..len)
            .map(|_| A[self.below(A.len() as u64) as usize] as char)
            .collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// A point like the ones the sink stores, with varied field types and sizes.
fn make_point(rng: &mut Rng, seq: u64, big: bool) -> Point {
    let series = format!(
        "m{},host=h{:03},site=s{}",
        rng.below(4),
        rng.below(60),
        rng.below(3)
    );
    let most = if rng.one_in(4) { 30 } else { 8 };
    let nf = 1 + rng.below(most);
    let mut fields = Vec::new();
    for k in 0..nf {
        let v = match rng.below(6) {
            0 => format!("{}i", (rng.next() >> 1) as i64 % 2_000_000 - 1_000_000),
            1 => format!(
                "{}.{:03}",
                rng.below(100_000) as i64 - 50_000,
                rng.below(1000)
            ),
            2 => ["true", "F", "t", "false"][rng.below(4) as usize].to_string(),
            3 => {
                let n = rng.below(30);
                format!("\"{}\"", rng.alnum(n))
            }
            4 => format!("{}u", rng.below(1 << 40)),
            _ => format!("{}", rng.next() as f64 / 3.0),
        };
        fields.push(format!("f{k}={v}"));
    }
    if big {
        let n = rng.between(2_000, 20_000);
        fields.push(format!("blob=\"{}\"", rng.alnum(n)));
    }
    Point {
        series_len: series.len() as u32,
        line: format!("{series} {}", fields.join(",")),
        timestamp: 1_700_000_000_000_000_000 + seq as i64 * 1_000 + rng.below(1_000) as i64,
    }
}

fn make_batch(rng: &mut Rng, first_seq: u64, n: u64, big_one_in: u64) -> Vec<Point> {
    (0..n)
        .map(|i| {
            let big = big_one_in > 0 && rng.one_in(big_one_in);
            make_point(rng, first_seq + i, big)
        })
        .collect()
}

struct Batch {
    first_seq: u64,
    stored_at: i64,
    points: Vec<Point>,
}

/// One record on disk: where its frame is, and which append wrote it.
#[derive(Clone)]
struct Rec {
    file: String,
    offset: usize,
    /// Frame length (8 + payload).
    len: usize,
    first_seq: u64,
    end: u64,
    batch: usize,
}

/// An undamaged backlog directory and what the oracle knows about it.
struct Template {
    name: &'static str,
    _dir: tempfile::TempDir,
    batches: Vec<Batch>,
    segs: BTreeMap<String, Vec<u8>>,
    cursor: Vec<u8>,
    records: Vec<Rec>,
    next_stored_at: i64,
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("backlog-corruption-")
        .tempdir()
        .expect("temp dir")
}

fn read_dir_state(dir: &Path) -> (BTreeMap<String, Vec<u8>>, Option<Vec<u8>>) {
    let mut segs = BTreeMap::new();
    for e in fs::read_dir(dir).expect("list") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".seg") {
            segs.insert(name, fs::read(e.path()).expect("read segment"));
        }
    }
    let cursor = fs::read(dir.join(CURSOR)).ok();
    (segs, cursor)
}

/// `kind` 0: nothing delivered yet. 1: partly delivered in several steps
/// (both cursor slots in use, delivered records in the first segment).
/// 2: big points (records above 4 KiB, one above the segment size) and a
/// size limit applied.
fn build_template(seed: u64, kind: u32) -> Template {
    let mut rng = Rng::new(seed ^ u64::from(kind).wrapping_mul(0x1234_5678_9abc_def1));
    let dir = tempdir();
    let (mut b, r) = FileBacklog::open(dir.path(), SyncMode::Never).expect("open template");
    assert!(r.warnings.is_empty());
    b.set_segment_bytes(SEGMENT_BYTES);
    let mut batches = Vec::new();
    let (mut seq, mut stored_at) = (0u64, 1_000i64);
    let target = if kind == 2 { 700 << 10 } else { 420 << 10 };
    while b.bytes() < target {
        let n = match rng.below(10) {
            0..=2 => 1 + rng.below(5),
            3..=6 => rng.between(5, 60),
            _ => rng.between(60, 250),
        };
        let mut points = make_batch(&mut rng, seq, n, if kind == 2 { 60 } else { 0 });
        if kind == 2 && batches.len() == 20 {
            // One record larger than a whole segment.
            points = (0..12)
                .map(|i| make_point(&mut rng, seq + i, true))
                .collect();
            points.push(Point {
                series_len: 3,
                line: format!("big blob=\"{}\"", rng.alnum(80_000)),
                timestamp: seq as i64,
            });
        }
        stored_at += rng.below(3) as i64;
        b.append(&points, stored_at).expect("append");
        let count = points.len() as u64;
        batches.push(Batch {
            first_seq: seq,
            stored_at,
            points,
        });
        seq += count;
    }
    let total = seq;
    match kind {
        1 => {
            for _ in 0..3 {
                let n = rng.between(total / 20, total / 8);
                b.consume(n).expect("consume");
            }
        }
        2 => {
            b.enforce_size(total - total / 5).expect("enforce_size");
            b.consume(rng.between(1, 40)).expect("consume");
        }
        _ => {}
    }
    let live = b.len();
    drop(b);
    let (b, r) = FileBacklog::open(dir.path(), SyncMode::Never).expect("reopen template");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.points, live);
    drop(b);

    let (segs, cursor) = read_dir_state(dir.path());
    assert!(segs.len() >= 5, "template {kind}: {} segments", segs.len());
    let mut frames = Vec::new();
    for (name, data) in &segs {
        assert_eq!(data[..16], HEADER);
        let mut off = 16;
        while off < data.len() {
            let len = 8 + u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
            frames.push((name.clone(), off, len));
            off += len;
        }
        assert_eq!(off, data.len());
    }
    // The records on disk are the last appends, in order.
    let skip = batches.len() - frames.len();
    let records: Vec<Rec> = frames
        .into_iter()
        .enumerate()
        .map(|(i, (file, offset, len))| {
            let bt = &batches[skip + i];
            Rec {
                file,
                offset,
                len,
                first_seq: bt.first_seq,
                end: bt.first_seq + bt.points.len() as u64,
                batch: skip + i,
            }
        })
        .collect();
    let (c, _) = parse_cursor(cursor.as_deref());
    let c = c.expect("template cursor").1;
    let on_disk_live: u64 = records
        .iter()
        .map(|r| r.end.saturating_sub(c.max(r.first_seq)))
        .sum();
    assert_eq!(on_disk_live, live);
    Template {
        name: ["fresh", "partly-delivered", "big-records"][kind as usize],
        _dir: dir,
        batches,
        segs,
        cursor: cursor.expect("cursor file"),
        records,
        next_stored_at: stored_at + 1,
    }
}

/// (generation, seq) of the newest valid cursor slot, and whether the
/// other slot is valid or never written (generation 1): the newest one is
/// then known to be the last written.
fn parse_cursor(data: Option<&[u8]>) -> (Option<(u64, u64)>, bool) {
    let Some(data) = data else {
        return (None, false);
    };
    let u64_at = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap());
    let valid = |s: &[u8]| {
        &s[..8] == b"INFXCUR\0"
            && crc32c::crc32c(&s[..24]) == u32::from_le_bytes(s[24..28].try_into().unwrap())
    };
    let slots: Vec<&[u8]> = (0..2)
        .filter_map(|i| data.get(i * 32..)?.get(..28))
        .collect();
    let best = slots
        .iter()
        .filter(|s| valid(s))
        .map(|s| (u64_at(s, 8), u64_at(s, 16)))
        .max_by_key(|s| s.0);
    let first = best.is_some_and(|b| b.0 == 1);
    let trusted = slots.len() == 2
        && slots
            .iter()
            .all(|s| valid(s) || (first && s.iter().all(|&b| b == 0)));
    (best, best.is_some() && trusted)
}

/// The directory's files after damage; `None`: deleted.
#[derive(Clone, PartialEq)]
struct State {
    segs: BTreeMap<String, Option<Vec<u8>>>,
    cursor: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    BitFlip,
    Truncate,
    ZeroPage,
    DeleteSegment,
    Cursor,
    Garbage,
}

const KINDS: [Kind; 6] = [
    Kind::BitFlip,
    Kind::Truncate,
    Kind::ZeroPage,
    Kind::DeleteSegment,
    Kind::Cursor,
    Kind::Garbage,
];

/// A segment that still exists: the last one with probability `last_bias`
/// (1 in n), else any.
fn pick_segment(st: &State, rng: &mut Rng, last_one_in: u64) -> Option<String> {
    let names: Vec<&String> = st
        .segs
        .iter()
        .filter(|(_, d)| d.is_some())
        .map(|(n, _)| n)
        .collect();
    if names.is_empty() {
        return None;
    }
    if last_one_in > 0 && rng.one_in(last_one_in) {
        return Some(names[names.len() - 1].clone());
    }
    Some(names[rng.below(names.len() as u64) as usize].clone())
}

fn damage_cursor(st: &mut State, rng: &mut Rng) -> String {
    let Some(data) = st.cursor.as_mut() else {
        st.cursor = Some(vec![0xA5; rng.below(80) as usize]);
        return "cursor: recreated as garbage".to_string();
    };
    let newest = {
        let gen = |i: usize| {
            data.get(i * 32 + 8..i * 32 + 16)
                .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap()))
        };
        usize::from(gen(1) > gen(0))
    };
    match rng.below(7) {
        0 | 1 => {
            let slot = if rng.below(2) == 0 {
                newest
            } else {
                1 - newest
            };
            let at = slot * 32 + rng.below(32) as usize;
            if at < data.len() {
                data[at] ^= 1 << rng.below(8);
            }
            format!("cursor: bit flip at {at} (slot {slot}, newest {newest})")
        }
        2 => {
            for slot in 0..2 {
                let at = slot * 32 + rng.below(28) as usize;
                if at < data.len() {
                    data[at] ^= 1 << rng.below(8);
                }
            }
            "cursor: bit flips in both slots".to_string()
        }
        3 => {
            let slot = rng.below(2) as usize;
            let end = (slot * 32 + 32).min(data.len());
            if slot * 32 < end {
                data[slot * 32..end].fill(0);
            }
            format!("cursor: zeroed slot {slot}")
        }
        4 => {
            let len = rng.below(64) as usize;
            data.truncate(len);
            format!("cursor: truncated to {len} bytes")
        }
        5 => {
            st.cursor = None;
            "cursor: deleted".to_string()
        }
        _ => {
            let slot = rng.below(2) as usize;
            let end = (slot * 32 + 32).min(data.len());
            for b in data.iter_mut().take(end).skip(slot * 32) {
                *b = rng.next() as u8;
            }
            format!("cursor: garbage over slot {slot}")
        }
    }
}

/// Apply one damage; returns its description.
fn damage(kind: Kind, st: &mut State, tpl: &Template, rng: &mut Rng) -> String {
    if kind == Kind::Cursor {
        return damage_cursor(st, rng);
    }
    let last_bias = match kind {
        Kind::Truncate | Kind::Garbage => 2,
        _ => 0,
    };
    let Some(name) = pick_segment(st, rng, last_bias) else {
        return damage_cursor(st, rng) + " (no segment left)";
    };
    let data = st.segs.get_mut(&name).unwrap().as_mut().unwrap();
    let len = data.len() as u64;
    // Frame offsets of this file, before damage.
    let frames: Vec<&Rec> = tpl.records.iter().filter(|r| r.file == name).collect();
    match kind {
        Kind::BitFlip => {
            if len == 0 {
                return format!("{name}: bit flip skipped (empty file)");
            }
            let at = match rng.below(8) {
                0 => rng.below(16.min(len)),
                1 if !frames.is_empty() => {
                    let r = frames[rng.below(frames.len() as u64) as usize];
                    (r.offset as u64 + rng.below(4)).min(len - 1)
                }
                _ => rng.below(len),
            } as usize;
            let bit = rng.below(8);
            data[at] ^= 1 << bit;
            format!("{name}: bit {bit} flipped at {at}")
        }
        Kind::Truncate => {
            let at = match rng.below(8) {
                0 => rng.below(17.min(len + 1)),
                1 if !frames.is_empty() => {
                    let r = frames[rng.below(frames.len() as u64) as usize];
                    (r.offset as u64).min(len)
                }
                _ => rng.below(len + 1),
            };
            data.truncate(at as usize);
            format!("{name}: truncated at {at} (was {len})")
        }
        Kind::ZeroPage => {
            let pages = len.div_ceil(4096).max(1);
            let p = rng.below(pages) * 4096;
            let end = (p + 4096).min(len);
            if p < end {
                data[p as usize..end as usize].fill(0);
            }
            format!("{name}: zeroed page at {p}..{end}")
        }
        Kind::DeleteSegment => {
            st.segs.insert(name.clone(), None);
            format!("{name}: deleted")
        }
        Kind::Garbage => {
            let n = rng.between(1, 5000) as usize;
            let what = match rng.below(4) {
                0 => {
                    data.resize(data.len() + n, 0);
                    "zeros"
                }
                1 => {
                    // Something that looks like the start of a frame.
                    let plen = rng.below(2 * n as u64) as u32;
                    data.extend_from_slice(&plen.to_le_bytes());
                    data.extend((0..n).map(|_| rng.next() as u8));
                    "a frame-like header and random bytes"
                }
                _ => {
                    data.extend((0..n).map(|_| rng.next() as u8));
                    "random bytes"
                }
            };
            format!("{name}: {n} bytes of {what} appended")
        }
        Kind::Cursor => unreachable!(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Regular,
    Quarantined,
    Removed,
}

fn write_state(dir: &Path, st: &State) {
    for (name, data) in &st.segs {
        if let Some(d) = data {
            fs::write(dir.join(name), d).expect("write segment");
        }
    }
    if let Some(c) = &st.cursor {
        fs::write(dir.join(CURSOR), c).expect("write cursor");
    }
}

fn seg_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .count()
}

/// Peek and consume everything in random steps; damaged records may fail a
/// peek once each.
fn drain(b: &mut FileBacklog, rng: &mut Rng, max_errors: usize) -> Vec<Point> {
    let mut out = Vec::new();
    let mut errors = 0;
    for _ in 0..1_000_000 {
        let step = 1 + rng.below(300) as usize;
        match b.peek(step) {
            Ok(p) if p.is_empty() => {
                assert!(b.is_empty(), "peek found nothing but len is {}", b.len());
                return out;
            }
            Ok(p) => {
                b.consume(p.len() as u64).expect("consume");
                out.extend(p);
            }
            Err(e) => {
                errors += 1;
                assert!(errors <= max_errors, "peek keeps failing: {e}");
            }
        }
    }
    panic!("drain did not finish");
}

/// Check one damaged directory against the oracle.
fn check(tpl: &Template, st: &State, rng: &mut Rng) {
    // What recovery should make of each segment file.
    let existing: Vec<&String> = st
        .segs
        .iter()
        .filter(|(_, d)| d.is_some())
        .map(|(n, _)| n)
        .collect();
    let mut status = BTreeMap::new();
    for (i, name) in existing.iter().enumerate() {
        let d = st.segs[*name].as_ref().unwrap();
        let s = if d.len() < 16 {
            if i + 1 == existing.len() && HEADER.starts_with(d) {
                Status::Removed
            } else {
                Status::Quarantined
            }
        } else if d[..10] != HEADER[..10] {
            Status::Quarantined
        } else {
            Status::Regular
        };
        status.insert((*name).clone(), s);
    }
    let intact = |r: &Rec| {
        st.segs[&r.file].as_ref().is_some_and(|d| {
            d.get(r.offset..r.offset + r.len)
                == Some(&tpl.segs[&r.file][r.offset..r.offset + r.len])
        })
    };
    let in_status = |r: &Rec, s: Status| status.get(&r.file) == Some(&s);
    let good: Vec<&Rec> = tpl
        .records
        .iter()
        .filter(|r| intact(r) && in_status(r, Status::Regular))
        .collect();
    let (stored, trusted) = parse_cursor(st.cursor.as_deref());
    // Without a cursor: the oldest intact record, regular or quarantined.
    let c = match stored {
        Some((_, seq)) => seq,
        None => tpl
            .records
            .iter()
            .filter(|r| intact(r) && !in_status(r, Status::Removed))
            .map(|r| r.first_seq)
            .min()
            .unwrap_or(0),
    };
    let clip = |a: u64, b: u64, lo: u64, hi: u64| b.min(hi).saturating_sub(a.max(lo));
    let mut expect: Vec<Point> = Vec::new();
    let mut first_stored_at = None;
    for r in good.iter().filter(|r| r.end > c) {
        let bt = &tpl.batches[r.batch];
        first_stored_at.get_or_insert(bt.stored_at);
        let skip = c.saturating_sub(r.first_seq) as usize;
        expect.extend_from_slice(&bt.points[skip..]);
    }
    // Accounting, by records.
    let held: Vec<&Rec> = tpl
        .records
        .iter()
        .filter(|r| intact(r) && in_status(r, Status::Quarantined) && r.end > c)
        .collect();
    let covered: Vec<&Rec> = good
        .iter()
        .copied()
        .filter(|r| r.end > c)
        .chain(held.iter().copied())
        .collect();
    let hi = covered.iter().map(|r| r.end).max().unwrap_or(c).max(c);
    let lo = if trusted {
        c
    } else {
        covered
            .iter()
            .map(|r| r.first_seq.max(c))
            .min()
            .unwrap_or(c)
    };
    let is_covered = |r: &Rec| covered.iter().any(|x| x.first_seq == r.first_seq);
    let want_lost: u64 = tpl
        .records
        .iter()
        .filter(|r| !is_covered(r))
        .map(|r| clip(r.first_seq, r.end, lo, hi))
        .sum();
    let want_held: u64 = held
        .iter()
        .map(|r| clip(r.first_seq, r.end, c, u64::MAX))
        .sum();
    let tail: u64 = tpl
        .records
        .iter()
        .map(|r| clip(r.first_seq, r.end, hi.max(lo), u64::MAX))
        .sum();
    let total: u64 = tpl
        .records
        .iter()
        .map(|r| clip(r.first_seq, r.end, lo, u64::MAX))
        .sum();
    let tail_evidence = tpl.records.iter().any(|r| {
        r.end > hi
            && in_status(r, Status::Regular)
            && st.segs[&r.file]
                .as_ref()
                .is_some_and(|d| d.len() > r.offset)
    });
    let quarantined = status
        .values()
        .filter(|&&s| s == Status::Quarantined)
        .count() as u64;
    let untouched = st
        .segs
        .iter()
        .all(|(n, d)| d.as_ref() == Some(&tpl.segs[n]))
        && st.cursor.as_ref() == Some(&tpl.cursor);

    let dir = tempdir();
    write_state(dir.path(), st);

    // Open 1: what was recovered, and the report.
    let (mut b, r) = FileBacklog::open(dir.path(), SyncMode::Batch).expect("open after damage");
    b.set_segment_bytes(SEGMENT_BYTES);
    let summary = format!(
        "report: points {} lost {} tail~{} quarantined {} ({} segs) corrupt {} torn {} warnings {:#?}",
        r.points,
        r.lost_points,
        r.tail_points_estimate,
        r.quarantined_points,
        r.quarantined_segments,
        r.corrupt_records,
        r.torn_bytes,
        r.warnings
    );
    assert_eq!(r.points, expect.len() as u64, "recovered points; {summary}");
    assert_eq!(b.len(), expect.len() as u64);
    assert_eq!(b.oldest_stored_at(), first_stored_at, "oldest_stored_at");
    let all = b.peek(usize::MAX).expect("peek after open");
    assert!(all == expect, "recovered points differ; {summary}");
    assert_eq!(r.quarantined_segments, quarantined, "{summary}");
    assert_eq!(
        r.quarantined_points, want_held,
        "quarantined points; {summary}"
    );
    assert_eq!(
        r.lost_points, want_lost,
        "lost points (head {lo}, cursor {c}, trusted {trusted}, last intact end {hi}); {summary}"
    );
    assert_eq!(
        r.points + r.lost_points + r.quarantined_points + tail,
        total,
        "accounting; {summary}"
    );
    if tail > 0 && tail_evidence {
        assert!(
            r.tail_points_estimate > 0,
            "{tail} points lost at the end, not estimated; {summary}"
        );
    }
    if r.lost_points > 0 || r.corrupt_records > 0 || r.quarantined_segments > 0 {
        assert!(
            !r.warnings.is_empty(),
            "damage without a warning; {summary}"
        );
    }
    if untouched {
        let clean = RecoveryReport {
            points: r.points,
            ..RecoveryReport::default()
        };
        assert_eq!(r, clean, "no damage, yet {summary}");
    }

    // Append, reopen: the same points plus the new ones.
    let mut stored_at = tpl.next_stored_at;
    let n = 1 + rng.below(120);
    let fresh = make_batch(rng, 0, n, 0);
    b.append(&fresh, stored_at).expect("append after recovery");
    drop(b);
    let (mut b, r2) = FileBacklog::open(dir.path(), SyncMode::Batch).expect("second open");
    assert_eq!(
        r2.points,
        (expect.len() + fresh.len()) as u64,
        "second open"
    );
    let max_errors = tpl.records.len() + 1;
    let drained = drain(&mut b, rng, max_errors);
    expect.extend(fresh);
    assert!(drained == expect, "drained points differ after reopen");
    assert_eq!((b.len(), b.bytes()), (0, 0));
    assert_eq!(seg_files(dir.path()), 0, "segments left after draining");

    // Once drained, the damage is gone: the next open is clean.
    stored_at += 1;
    let n = 1 + rng.below(50);
    let last = make_batch(rng, 0, n, 0);
    b.append(&last, stored_at).expect("append after drain");
    drop(b);
    let (mut b, r3) = FileBacklog::open(dir.path(), SyncMode::Batch).expect("third open");
    let clean = RecoveryReport {
        points: last.len() as u64,
        ..RecoveryReport::default()
    };
    assert_eq!(r3, clean, "open after drain");
    assert!(b.peek(usize::MAX).unwrap() == last);
}

#[test]
fn random_damage_is_recovered_and_accounted_for() {
    let seed = env_u64("BACKLOG_CORRUPTION_SEED").unwrap_or(DEFAULT_SEED);
    let iters = env_u64("BACKLOG_CORRUPTION_ITERS").unwrap_or(DEFAULT_ITERS);
    let only = env_u64("BACKLOG_CORRUPTION_ONLY");
    let t0 = Instant::now();
    let templates: Vec<Template> = (0..3).map(|k| build_template(seed, k)).collect();
    let built = t0.elapsed();
    let mut counts: BTreeMap<Kind, u64> = BTreeMap::new();
    let (mut combined, mut runs) = (0u64, 0u64);
    for i in 0..iters {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let mut rng = Rng::new(seed ^ i.wrapping_mul(0xd1b5_4a32_d192_ed03));
        let tpl = &templates[(i % templates.len() as u64) as usize];
        let mut st = State {
            segs: tpl
                .segs
                .iter()
                .map(|(n, d)| (n.clone(), Some(d.clone())))
                .collect(),
            cursor: Some(tpl.cursor.clone()),
        };
        let n = if rng.one_in(5) { 2 + rng.below(3) } else { 1 };
        let mut done = Vec::new();
        for _ in 0..n {
            let kind = KINDS[rng.below(KINDS.len() as u64) as usize];
            *counts.entry(kind).or_default() += 1;
            done.push(damage(kind, &mut st, tpl, &mut rng));
        }
        combined += u64::from(n > 1);
        runs += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| check(tpl, &st, &mut rng)));
        if let Err(e) = outcome {
            eprintln!(
                "\nbacklog corruption test FAILED: seed {seed:#x}, iteration {i}, template {}, \
                 damages:\n  {}\nreplay: BACKLOG_CORRUPTION_SEED={seed:#x} BACKLOG_CORRUPTION_ONLY={i} \
                 cargo test --release -p influx-sink-component --test backlog_corruption -- --nocapture\n",
                tpl.name,
                done.join("\n  ")
            );
            resume_unwind(e);
        }
    }
    let damages: u64 = counts.values().sum();
    eprintln!(
        "backlog corruption: {runs} damaged directories ({combined} with combined damages), \
         {damages} damages: {counts:?}; templates built in {built:?}, total {:?}",
        t0.elapsed()
    );
    if only.is_none() && iters >= DEFAULT_ITERS {
        assert!(damages >= 1000);
    }
}

/// The fuzz target's checks on stable: random bytes, and mutations of real
/// segments and record bodies (random bytes rarely pass a CRC32C).
#[test]
fn fuzz_record_decoder_checks_on_random_inputs() {
    let seed = env_u64("BACKLOG_CORRUPTION_SEED").unwrap_or(DEFAULT_SEED);
    let mut rng = Rng::new(seed ^ 0xf022);
    // Seeds: small real segments of varied records.
    let dir = tempdir();
    let (mut b, _) = FileBacklog::open(dir.path(), SyncMode::Never).expect("open");
    b.set_segment_bytes(3000);
    let mut seq = 0;
    for _ in 0..40 {
        let n = 1 + rng.below(12);
        let pts = make_batch(&mut rng, seq, n, 0);
        b.append(&pts, seq as i64).expect("append");
        seq += n;
    }
    drop(b);
    let (segs, _) = read_dir_state(dir.path());
    let seeds: Vec<Vec<u8>> = segs.into_values().collect();
    let mut inputs = 0;
    for i in 0..4000u64 {
        let input: Vec<u8> = match i % 4 {
            // Raw random bytes, every mode.
            0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            // A real segment, mutated, in each of the segment modes.
            _ => {
                let s = &seeds[rng.below(seeds.len() as u64) as usize];
                let mut v = s.clone();
                for _ in 0..1 + rng.below(4) {
                    match rng.below(4) {
                        0 if !v.is_empty() => {
                            let at = rng.below(v.len() as u64) as usize;
                            v[at] ^= 1 << rng.below(8);
                        }
                        1 => v.truncate(rng.below(v.len() as u64 + 1) as usize),
                        2 if !v.is_empty() => {
                            let at = rng.below(v.len() as u64) as usize;
                            let end = (at + rng.below(64) as usize).min(v.len());
                            v[at..end].fill(0);
                        }
                        _ => v.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                    }
                }
                let mode = fuzz_check::MODES[rng.below(fuzz_check::MODES.len() as u64) as usize];
                let mut input = vec![mode];
                input.extend(v);
                input
            }
        };
        if let Err(e) = catch_unwind(|| fuzz_check::record_decoder(&input)) {
            let path = std::env::temp_dir().join(format!("record_decoder-failure-{i}"));
            let _ = fs::write(&path, &input);
            eprintln!(
                "fuzz check FAILED on input {i} (seed {seed:#x}), saved to {}; replay with \
                 `cargo +nightly fuzz run record_decoder {}` from component/, or copy it \
                 to component/fuzz/regressions/",
                path.display(),
                path.display()
            );
            resume_unwind(e);
        }
        inputs += 1;
    }
    // The seed inputs and the inputs the fuzzer failed on (committed), and
    // the corpus it left behind, if any (not committed).
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for sub in ["seeds", "regressions", "corpus/record_decoder"] {
        let Ok(entries) = fs::read_dir(fuzz.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(data) = fs::read(e.path()) {
                if let Err(err) = catch_unwind(|| fuzz_check::record_decoder(&data)) {
                    eprintln!("fuzz check FAILED on {}", e.path().display());
                    resume_unwind(err);
                }
                inputs += 1;
            }
        }
    }
    eprintln!("fuzz checks: {inputs} inputs");
}
