//! Policy decisions per second: the sans-IO `Policy` driven directly with a
//! `MemoryBacklog` (no wasm, no I/O): write a batch, tick, poll_transmit,
//! handle_outcome 204. Plus `sim::plan_outage` for a 1-hour outage at
//! 10 points/s, to show hours simulate in milliseconds.

mod common;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use influx_sink_component::backlog::memory::MemoryBacklog;
use influx_sink_component::codec::encode_points;
use influx_sink_component::config::Settings;
use influx_sink_component::point::Point;
use influx_sink_component::policy::{Outcome, Policy};
use influx_sink_component::sim::{plan_outage, DownMode, OutageReport};

use common::{fmt_ns, fmt_rate, Tally};

/// Decisions in one write cycle: write, tick, poll_transmit, handle_outcome.
const DECISIONS_PER_CYCLE: u64 = 4;

fn ok204() -> Outcome {
    Outcome::Answer {
        status: 204,
        retry_after: None,
        body: String::new(),
    }
}

/// A policy that has answered its ping and CREATE DATABASE: connected.
fn connected(batch_size: u32) -> Policy<MemoryBacklog> {
    let mut s = Settings::defaults("bench");
    s.batch_size = batch_size;
    let wall = common::START_NS;
    let mut p = Policy::new(s, MemoryBacklog::new(), 0, wall);
    for _ in 0..2 {
        p.tick(0, wall);
        let req = p.poll_transmit(0).expect("ping, then CREATE DATABASE");
        p.handle_outcome(req.id, ok204(), 0, wall);
    }
    while p.poll_log().is_some() {}
    assert_eq!(p.stats().state, "connected");
    p
}

/// One write cycle of `batch` points: returns the points sent.
#[inline]
fn cycle(p: &mut Policy<MemoryBacklog>, batch: Vec<Point>, now: u64) -> u32 {
    let wall = common::START_NS + now as i64;
    p.write(batch, now, wall);
    p.tick(now, wall);
    let req = p.poll_transmit(now).expect("a write is due");
    p.handle_outcome(req.id, ok204(), now, wall);
    req.points
}

struct Figures {
    cycle: Vec<(u32, Tally)>,
    idle: Tally,
    plan: Option<(Duration, OutageReport)>,
}

thread_local! {
    static FIG: RefCell<Figures> = const { RefCell::new(Figures { cycle: Vec::new(), idle: Tally { nanos: 0, elements: 0 }, plan: None }) };
}

fn bench_cycles(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy/write_cycle");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for batch_size in [1u32, 100, 5000] {
        let sample = common::points(batch_size as u64);
        g.throughput(Throughput::Elements(batch_size as u64));
        let mut tally = Tally::default();
        g.bench_function(BenchmarkId::new("points", batch_size), |b| {
            let mut p = connected(batch_size);
            let mut now = 1u64;
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // The clone is not the policy's work: the driver hands
                    // it freshly parsed points it owns.
                    let batch = sample.clone();
                    now += 1_000;
                    let t = Instant::now();
                    let sent = cycle(&mut p, batch, now);
                    total += t.elapsed();
                    debug_assert_eq!(sent, batch_size);
                }
                tally.add(total, iters * batch_size as u64);
                total
            });
            assert_eq!(p.counters().delivered, p.counters().accepted);
        });
        FIG.with(|f| f.borrow_mut().cycle.push((batch_size, tally)));
    }
    g.finish();

    // An idle turn: tick, poll_transmit (nothing due), poll_timeout.
    let mut g = c.benchmark_group("policy/idle_turn");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    let mut tally = Tally::default();
    g.bench_function("tick+poll_transmit+poll_timeout", |b| {
        let mut p = connected(100);
        let mut now = 1u64;
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                now += 1_000;
                let wall = common::START_NS + now as i64;
                p.tick(now, wall);
                assert!(p.poll_transmit(now).is_none());
                std::hint::black_box(p.poll_timeout());
            }
            let d = t.elapsed();
            tally.add(d, iters);
            d
        });
    });
    FIG.with(|f| f.borrow_mut().idle = tally);
    g.finish();
}

fn bench_plan(c: &mut Criterion) {
    let sample = common::points(100);
    let mut body = Vec::new();
    encode_points(&sample, &mut body);
    // Codec body per point plus the 8-byte record frame, amortised over a
    // 100-point record (the default batch_size).
    let bytes_per_point = (body.len() as u64 + 8).div_ceil(100);
    let one = sample[0].clone();
    // Room for the whole hour (36,000 points), so nothing is dropped.
    let mut settings = Settings::defaults("bench");
    settings.max_backlog_size = 1_000_000;
    let mut g = c.benchmark_group("policy/plan_outage");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut last = None;
    g.bench_function("1h_outage_10pps", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let r = plan_outage(
                    settings.clone(),
                    3600.0,
                    10.0,
                    one.clone(),
                    bytes_per_point,
                    DownMode::Refuse,
                );
                let d = t.elapsed();
                total += d;
                last = Some((d, r));
            }
            total
        });
    });
    g.finish();
    FIG.with(|f| f.borrow_mut().plan = last);
}

fn summary() {
    FIG.with(|f| {
        let f = f.borrow();
        eprintln!("\n=== policy summary (native, MemoryBacklog, 20-field points) ===");
        for (batch, t) in &f.cycle {
            let per_cycle = t.ns_per() * *batch as f64;
            let decisions = DECISIONS_PER_CYCLE as f64 * 1e9 / per_cycle;
            eprintln!(
                "write cycle, batch {batch:>5}: {} per point ({} points/s), {} per cycle, {} decisions/s ({} ns per decision)",
                fmt_ns(t.ns_per()),
                fmt_rate(t.per_sec()),
                fmt_ns(per_cycle),
                fmt_rate(decisions),
                format_args!("{:.0}", per_cycle / DECISIONS_PER_CYCLE as f64),
            );
        }
        eprintln!(
            "idle turn (tick+poll_transmit+poll_timeout): {} per turn ({} turns/s)",
            fmt_ns(f.idle.ns_per()),
            fmt_rate(f.idle.per_sec())
        );
        if let Some((d, r)) = &f.plan {
            let outage = 3600.0;
            let drained = r.drained_at.map(|t| t as f64 / 1e9);
            eprintln!(
                "plan_outage 1 h at 10 points/s: simulated in {:.1} ms ({:.0}x real time up to drain); \
                 accepted {} delivered {} dropped {} backlog peak {} points ({:.1} MB at {} B/point), \
                 {} reconnect attempts, recovered at {:.0} s, drained at {}",
                d.as_secs_f64() * 1e3,
                drained.unwrap_or(outage) / d.as_secs_f64(),
                r.accepted,
                r.delivered,
                r.dropped,
                r.backlog_peak,
                r.disk_peak_bytes as f64 / 1e6,
                r.bytes_per_point,
                r.attempts.len(),
                r.recovered_at.map_or(f64::NAN, |t| t as f64 / 1e9),
                drained.map_or("never".into(), |s| format!("{s:.0} s")),
            );
        }
    });
}

criterion_group!(benches, bench_cycles, bench_plan);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
