//! The on-disk backlog (`FileBacklog`, native): append per sync mode,
//! replay (peek + consume), open/recovery of a 1,000,000-point backlog, and
//! bytes on disk per point, on 20-field points in 100-point records (the
//! default batch_size: one record per batch).
//!
//! Everything runs in temporary directories on the target's filesystem; the
//! page cache is warm (replay and open read what was just written).

mod common;

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use influx_sink_component::backlog::file::{FileBacklog, SyncMode};
use influx_sink_component::backlog::Backlog;
use influx_sink_component::line_protocol::parse_lines;
use influx_sink_component::point::Point;

use common::{fmt_ns, fmt_rate, Tally};

/// Points per append (one record), as the policy appends one batch.
const BATCH: usize = 100;
/// Appends accumulate up to this many points before they are consumed
/// (untimed), to bound the disk the append benchmarks use.
const APPEND_CAP: u64 = 200_000;
/// Points in the backlog each replay drains.
const REPLAY_POINTS: u64 = 50_000;
/// Points in the backlog the open/recovery benchmark opens.
const OPEN_POINTS: u64 = 1_000_000;

#[derive(Default)]
struct Figures {
    append: Vec<(&'static str, Tally)>,
    replay: Tally,
    open: Tally,
    open_points: u64,
    disk_bytes: u64,
    segments: usize,
    build_1m: Duration,
}

thread_local! {
    static FIG: RefCell<Figures> = RefCell::new(Figures::default());
}

fn tempdir() -> tempfile::TempDir {
    // Under the target directory (a real disk), not a possible tmpfs /tmp.
    let base = harness::target_dir().join("bench-tmp");
    std::fs::create_dir_all(&base).expect("create bench-tmp");
    tempfile::tempdir_in(base).expect("temp dir")
}

fn open(dir: &Path, mode: SyncMode) -> FileBacklog {
    let (b, report) = FileBacklog::open(dir, mode).expect("open backlog");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    b
}

fn bench_append(c: &mut Criterion) {
    let batch = common::points(BATCH as u64);
    let mut g = c.benchmark_group("backlog/append");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(BATCH as u64));
    // backlog_sync = batch | always | interval_ms:100 | never. The policy
    // drives interval mode by calling sync() when the interval has passed.
    for (name, mode, interval) in [
        ("batch_sync_per_100", SyncMode::Batch, None),
        ("always", SyncMode::Always, None),
        (
            "interval_ms_100",
            SyncMode::Batch,
            Some(Duration::from_millis(100)),
        ),
        ("never", SyncMode::Never, None),
    ] {
        let dir = tempdir();
        let mut b = open(dir.path(), mode);
        let mut last_sync = Instant::now();
        let mut tally = Tally::default();
        let mut stored_at = common::START_NS;
        g.bench_function(BenchmarkId::new(name, BATCH), |bencher| {
            bencher.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    stored_at += 1;
                    let t = Instant::now();
                    b.append(&batch, stored_at).expect("append");
                    let due = interval.is_none_or(|every| last_sync.elapsed() >= every);
                    if mode == SyncMode::Batch && due {
                        b.sync().expect("sync");
                        last_sync = Instant::now();
                    }
                    total += t.elapsed();
                    if b.len() >= APPEND_CAP {
                        b.consume(b.len()).expect("consume");
                    }
                }
                tally.add(total, iters * BATCH as u64);
                total
            })
        });
        FIG.with(|f| f.borrow_mut().append.push((name, tally)));
    }
    g.finish();
}

/// Append `n` points in `BATCH`-point records, from `points` round-robin.
fn fill(b: &mut FileBacklog, points: &[Point], n: u64, stored_at: i64) {
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let k = (BATCH as u64).min(left) as usize;
        let start = i % (points.len() - BATCH + 1);
        b.append(&points[start..start + k], stored_at)
            .expect("append");
        i += k;
        left -= k as u64;
    }
    b.sync().expect("sync");
}

fn bench_replay(c: &mut Criterion) {
    let points = common::points(10_000);
    let dir = tempdir();
    let mut b = open(dir.path(), SyncMode::Batch);
    let mut g = c.benchmark_group("backlog/replay");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(REPLAY_POINTS));
    let mut tally = Tally::default();
    g.bench_function(
        BenchmarkId::new("peek100+consume100", REPLAY_POINTS),
        |bencher| {
            bencher.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    fill(&mut b, &points, REPLAY_POINTS, common::START_NS);
                    let t = Instant::now();
                    let mut drained = 0u64;
                    while !b.is_empty() {
                        let p = b.peek(BATCH).expect("peek");
                        drained += p.len() as u64;
                        b.consume(p.len() as u64).expect("consume");
                    }
                    total += t.elapsed();
                    assert_eq!(drained, REPLAY_POINTS);
                }
                tally.add(total, iters * REPLAY_POINTS);
                total
            })
        },
    );
    g.finish();
    FIG.with(|f| f.borrow_mut().replay = tally);
}

fn bench_open(c: &mut Criterion) {
    // Build the 1M-point backlog once, from generated text (distinct
    // points: the generator's seq and values vary), 100-point records.
    let dir = tempdir();
    let t = Instant::now();
    {
        let mut b = open(dir.path(), SyncMode::Batch);
        let mut gen = common::generator();
        let mut text = Vec::with_capacity(10_000 * 600);
        let mut stored_at = common::START_NS;
        while gen.produced() < OPEN_POINTS {
            text.clear();
            gen.fill(10_000.min(OPEN_POINTS - gen.produced()), &mut text);
            let (points, errors) = parse_lines(&text, stored_at);
            assert!(errors.is_empty());
            for chunk in points.chunks(BATCH) {
                b.append(chunk, stored_at).expect("append");
                stored_at += 1_000_000;
            }
            b.sync().expect("sync");
        }
        assert_eq!(b.len(), OPEN_POINTS);
    }
    let build = t.elapsed();
    let disk = common::dir_size(dir.path());
    let segments = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .count();

    let mut g = c.benchmark_group("backlog/open");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(OPEN_POINTS));
    let mut tally = Tally::default();
    let mut found = 0;
    g.bench_function(BenchmarkId::new("recovery", OPEN_POINTS), |bencher| {
        bencher.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let (b, report) = FileBacklog::open(dir.path(), SyncMode::Batch).expect("open");
                assert!(report.warnings.is_empty(), "{:?}", report.warnings);
                found = b.len();
                drop(b);
            }
            let d = t.elapsed();
            tally.add(d, iters * OPEN_POINTS);
            d
        })
    });
    g.finish();
    assert_eq!(found, OPEN_POINTS);
    FIG.with(|f| {
        let mut f = f.borrow_mut();
        f.open = tally;
        f.open_points = found;
        f.disk_bytes = disk;
        f.segments = segments;
        f.build_1m = build;
    });
}

fn summary() {
    FIG.with(|f| {
        let f = f.borrow();
        eprintln!("\n=== backlog summary (FileBacklog, native, 20-field points, {BATCH}-point records) ===");
        for (name, t) in &f.append {
            eprintln!(
                "append {name:<18}: {} per point ({} points/s), {} per {BATCH}-point append",
                fmt_ns(t.ns_per()),
                fmt_rate(t.per_sec()),
                fmt_ns(t.ns_per() * BATCH as f64),
            );
        }
        eprintln!(
            "replay peek({BATCH})+consume({BATCH}): {} per point ({} points/s)",
            fmt_ns(f.replay.ns_per()),
            fmt_rate(f.replay.per_sec())
        );
        eprintln!(
            "open/recovery of {} points ({:.1} MB in {} segments): {} per open ({} per point, {} points/s)",
            f.open_points,
            f.disk_bytes as f64 / 1e6,
            f.segments,
            fmt_ns(f.open.ns_per() * OPEN_POINTS as f64),
            fmt_ns(f.open.ns_per()),
            fmt_rate(f.open.per_sec()),
        );
        eprintln!(
            "bytes on disk: {:.1} B per point (segments + cursor, {} points); building it took {:.2} s",
            f.disk_bytes as f64 / f.open_points.max(1) as f64,
            f.open_points,
            f.build_1m.as_secs_f64(),
        );
    });
}

criterion_group!(benches, bench_append, bench_replay, bench_open);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
