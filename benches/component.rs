//! Inside the component vs native, typed records vs line-protocol bytes, and
//! end to end through host + component into a loopback server answering
//! `204 No Content`, on 20-field points.
//!
//! The real component (target/wasm32-wasip2/ship/influx_sink_component.wasm)
//! runs in the real host runtime (`Runtime::load` + `instantiate`), with
//! `enable_persistent_storage = false` and `batch_size = 5000`; its HTTP goes
//! to the loopback server, so points really flow. The native side does the
//! same work the component's `write-lines` / `write-points` do: parse (or
//! build from parts) and `Policy::write` with a `MemoryBacklog`.

mod common;

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use influx_sink_component::backlog::memory::MemoryBacklog;
use influx_sink_component::backlog::Backlog;
use influx_sink_component::line_protocol::{self, parse_lines};
use influx_sink_component::policy::{Outcome, Policy};
use influx_sink_host::bindings::{FieldValue, Point as WitPoint};
use influx_sink_host::config::OutputSpec;
use influx_sink_host::runtime::{Runtime, SinkInstance};

use common::{fmt_ns, fmt_rate, NoContentServer, Tally};

/// Points per write call (the host's generator sends 1000-line chunks).
const CHUNK: u64 = 1000;
const BATCH_SIZE: u64 = 5000;
/// Points per end-to-end run.
const E2E_POINTS: u64 = 100_000;
/// Longest the end-to-end driver sleeps between turns (as the pipeline).
const MAX_SLEEP: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Figures {
    wasm_lines: Tally,
    wasm_points: Tally,
    native_lines: Tally,
    native_points: Tally,
    e2e: Tally,
    /// Per run: duration, failed requests (reconnect attempts), points that
    /// went through the in-memory backlog.
    e2e_runs: Vec<(Duration, u64, u64)>,
    e2e_requests: u64,
    /// Lines the server received beyond the points written (re-sends).
    e2e_resent: u64,
    /// The sink's counters at the end of the whole bench.
    accepted: u64,
    reconnects: u64,
    server_lines: u64,
    server_requests: u64,
    load: Duration,
    instantiate: Duration,
}

thread_local! {
    static FIG: RefCell<Figures> = RefCell::new(Figures::default());
}

fn output_spec(port: u16) -> OutputSpec {
    let batch_size = BATCH_SIZE.to_string();
    common::output_spec(
        "bench",
        port,
        &[
            ("batch_size", &batch_size),
            ("enable_persistent_storage", "false"),
            // Figures comparable across versions; gzip has its own bench.
            ("content_encoding", "identity"),
            // Points the sink cannot send at once wait in its in-memory
            // backlog; make room so none are dropped.
            ("max_backlog_size", "10000000"),
        ],
        PathBuf::from("/nonexistent-backlog-unused"),
    )
}

/// The generated points as typed WIT records (the same values as the text).
fn wit_points(points: &[influx_sink_component::point::Point]) -> Vec<WitPoint> {
    points
        .iter()
        .map(|p| {
            let (measurement, tags) = p.series().split_once(',').expect("one tag");
            let (tk, tv) = tags.split_once('=').expect("tag");
            let fields = p
                .fields()
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("field");
                    let v = match v.strip_suffix('i') {
                        Some(i) => FieldValue::Integer(i.parse().expect("int")),
                        None => FieldValue::Float(v.parse().expect("float")),
                    };
                    (k.to_string(), v)
                })
                .collect::<Vec<_>>();
            assert_eq!(fields.len(), 20);
            WitPoint {
                measurement: measurement.to_string(),
                tags: vec![(tk.to_string(), tv.to_string())],
                fields,
                timestamp: Some(p.timestamp),
            }
        })
        .collect()
}

fn to_native(v: &FieldValue) -> line_protocol::FieldValue {
    match v {
        FieldValue::Float(f) => line_protocol::FieldValue::Float(*f),
        FieldValue::Integer(i) => line_protocol::FieldValue::Integer(*i),
        FieldValue::Unsigned(u) => line_protocol::FieldValue::Unsigned(*u),
        FieldValue::Text(s) => line_protocol::FieldValue::Text(s.clone()),
        FieldValue::Boolean(b) => line_protocol::FieldValue::Boolean(*b),
    }
}

/// Turn the sink until everything it accepted is delivered (untimed
/// housekeeping between timed writes, and the tail of the end-to-end run).
async fn drain(sink: &mut SinkInstance) {
    common::drain(sink, MAX_SLEEP).await
}

/// A native policy connected to a (pretend) server: what the component
/// holds, without wasm.
fn native_policy() -> Policy<Box<dyn Backlog>> {
    let s = output_spec(1).settings;
    let wall = common::wall_ns();
    let mut p: Policy<Box<dyn Backlog>> = Policy::new(s, Box::new(MemoryBacklog::new()), 0, wall);
    for _ in 0..2 {
        p.tick(0, wall);
        let req = p.poll_transmit(0).expect("ping, then CREATE DATABASE");
        p.handle_outcome(req.id, ok204(), 0, wall);
    }
    while p.poll_log().is_some() {}
    p
}

fn ok204() -> Outcome {
    Outcome::Answer {
        status: 204,
        retry_after: None,
        body: String::new(),
    }
}

/// Native counterpart of `drain`: answer every write 204.
fn drain_native(p: &mut Policy<Box<dyn Backlog>>, now: u64) {
    let wall = common::wall_ns();
    p.flush(now, wall);
    loop {
        p.tick(now, wall);
        let Some(req) = p.poll_transmit(now) else {
            break;
        };
        p.handle_outcome(req.id, ok204(), now, wall);
    }
    assert_eq!(p.counters().delivered, p.counters().accepted);
}

fn mono_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

fn bench_component(c: &mut Criterion) {
    let server = NoContentServer::start();
    let tokio = common::tokio_runtime();
    let path = harness::component_path();
    let t = Instant::now();
    let runtime = Runtime::load(&path).expect("load the component");
    let load = t.elapsed();
    let spec = output_spec(server.port);
    let t = Instant::now();
    let mut sink = tokio
        .block_on(runtime.instantiate(&spec))
        .expect("instantiate");
    let instantiate = t.elapsed();
    // Connect (ping, CREATE DATABASE) and check points reach the server.
    let text = common::lines(CHUNK);
    let points = common::points(CHUNK);
    let typed = wit_points(&points);
    tokio.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.stats().await.expect("stats").state != "connected" {
            assert!(Instant::now() < deadline, "the sink does not connect");
            let wait = sink.poll().await.expect("poll");
            tokio::time::sleep(Duration::from_nanos(wait).min(Duration::from_millis(1))).await;
        }
        let r = sink.write_lines(&text).await.expect("write_lines");
        assert_eq!(r.accepted as u64, CHUNK, "{:?}", r.rejected.first());
        let r = sink.write_points(&typed).await.expect("write_points");
        assert_eq!(r.accepted as u64, CHUNK, "{:?}", r.rejected.first());
        drain(&mut sink).await;
    });
    assert_eq!(server.lines_received(), 2 * CHUNK);

    let mut g = c.benchmark_group("write");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(CHUNK));

    // Timed: the call alone. Untimed: once a batch is sealed, turn the sink
    // until the server has it, so the next writes find the same state.
    let mut wasm_lines = Tally::default();
    g.bench_function(BenchmarkId::new("wasm_write_lines", CHUNK), |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let t = Instant::now();
                    let r = sink.write_lines(&text).await.expect("write_lines");
                    total += t.elapsed();
                    debug_assert_eq!(r.accepted as u64, CHUNK);
                    if (i + 1) % (BATCH_SIZE / CHUNK) == 0 {
                        drain(&mut sink).await;
                    }
                }
                drain(&mut sink).await;
                wasm_lines.add(total, iters * CHUNK);
                total
            })
        })
    });
    let mut wasm_points = Tally::default();
    g.bench_function(BenchmarkId::new("wasm_write_points", CHUNK), |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let t = Instant::now();
                    let r = sink.write_points(&typed).await.expect("write_points");
                    total += t.elapsed();
                    debug_assert_eq!(r.accepted as u64, CHUNK);
                    if (i + 1) % (BATCH_SIZE / CHUNK) == 0 {
                        drain(&mut sink).await;
                    }
                }
                drain(&mut sink).await;
                wasm_points.add(total, iters * CHUNK);
                total
            })
        })
    });

    let origin = Instant::now();
    let mut native_lines = Tally::default();
    g.bench_function(BenchmarkId::new("native_parse+write", CHUNK), |b| {
        let mut p = native_policy();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let t = Instant::now();
                // As the component's write-lines: wall clock, parse, count, write.
                let w = common::wall_ns();
                let (pts, errors) = parse_lines(std::hint::black_box(&text), w);
                p.count_rejected(errors.len() as u64);
                p.write(pts, mono_ns(origin), w);
                total += t.elapsed();
                if (i + 1) % (BATCH_SIZE / CHUNK) == 0 {
                    drain_native(&mut p, mono_ns(origin));
                }
            }
            drain_native(&mut p, mono_ns(origin));
            native_lines.add(total, iters * CHUNK);
            total
        })
    });
    let mut native_points = Tally::default();
    g.bench_function(BenchmarkId::new("native_from_parts+write", CHUNK), |b| {
        let mut p = native_policy();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let t = Instant::now();
                // As the component's write-points: the guest owns lifted
                // copies of the records, converts the fields, builds points.
                let w = common::wall_ns();
                let mut ok = Vec::with_capacity(typed.len());
                for tp in std::hint::black_box(&typed) {
                    let fields: Vec<(String, line_protocol::FieldValue)> = tp
                        .fields
                        .iter()
                        .map(|(k, v)| (k.clone(), to_native(v)))
                        .collect();
                    let tags = tp.tags.clone();
                    let m = tp.measurement.clone();
                    let pt = line_protocol::point_from_parts(&m, &tags, &fields, tp.timestamp, w)
                        .expect("valid point");
                    ok.push(pt);
                }
                p.write(ok, mono_ns(origin), w);
                total += t.elapsed();
                if (i + 1) % (BATCH_SIZE / CHUNK) == 0 {
                    drain_native(&mut p, mono_ns(origin));
                }
            }
            drain_native(&mut p, mono_ns(origin));
            native_points.add(total, iters * CHUNK);
            total
        })
    });
    g.finish();

    // End to end: write E2E_POINTS in CHUNK-line calls, turning the sink
    // between calls as the pipeline does when input is always ready, then
    // flush and turn it (sleeping as it asks) until all are delivered.
    let mut g = c.benchmark_group("end_to_end");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(E2E_POINTS));
    let mut e2e = Tally::default();
    let mut runs = Vec::new();
    let lines_before = server.lines_received();
    let requests_before = server.requests();
    g.bench_function(BenchmarkId::new("host+wasm+204", E2E_POINTS), |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let before = sink.stats().await.expect("stats");
                    let t = Instant::now();
                    for _ in 0..E2E_POINTS / CHUNK {
                        sink.poll().await.expect("poll");
                        sink.write_lines(&text).await.expect("write_lines");
                    }
                    drain(&mut sink).await;
                    let d = t.elapsed();
                    total += d;
                    let after = sink.stats().await.expect("stats");
                    assert_eq!(after.delivered - before.delivered, E2E_POINTS);
                    runs.push((
                        d,
                        after.reconnect_attempts - before.reconnect_attempts,
                        after.backlogged - before.backlogged,
                    ));
                }
                e2e.add(total, iters * E2E_POINTS);
                total
            })
        })
    });
    g.finish();
    let server_lines = server.lines_received() - lines_before;
    let written = runs.len() as u64 * E2E_POINTS;
    // At least once: a request the sink took for failed is sent again.
    assert!(server_lines >= written, "the server got every point");
    let final_stats = tokio.block_on(async {
        let st = sink.stats().await.expect("stats");
        sink.shutdown().await.expect("shutdown");
        sink.close().await.expect("close");
        st
    });

    FIG.with(|f| {
        *f.borrow_mut() = Figures {
            wasm_lines,
            wasm_points,
            native_lines,
            native_points,
            e2e,
            e2e_runs: runs,
            e2e_requests: server.requests() - requests_before,
            e2e_resent: server_lines - written,
            accepted: final_stats.accepted,
            reconnects: final_stats.reconnect_attempts,
            server_lines,
            server_requests: server.requests(),
            load,
            instantiate,
        }
    });
}

fn summary() {
    FIG.with(|f| {
        let f = f.borrow();
        eprintln!("\n=== component summary (20-field points, {CHUNK} per call, batch_size {BATCH_SIZE}) ===");
        eprintln!(
            "Runtime::load (compile): {:.2} s; instantiate + open: {:.1} ms",
            f.load.as_secs_f64(),
            f.instantiate.as_secs_f64() * 1e3
        );
        let row = |name: &str, t: &Tally| {
            eprintln!(
                "{name:<40} {} per point ({} points/s)",
                fmt_ns(t.ns_per()),
                fmt_rate(t.per_sec())
            )
        };
        row("wasm write_lines (line protocol bytes):", &f.wasm_lines);
        row("wasm write_points (typed records):", &f.wasm_points);
        row("native parse_lines + Policy::write:", &f.native_lines);
        row("native point_from_parts + Policy::write:", &f.native_points);
        eprintln!(
            "wasm/native ratio: line protocol {:.2}x, typed records {:.2}x",
            f.wasm_lines.ns_per() / f.native_lines.ns_per(),
            f.wasm_points.ns_per() / f.native_points.ns_per()
        );
        eprintln!(
            "typed/lines ratio: wasm {:.2}x, native {:.2}x",
            f.wasm_points.ns_per() / f.wasm_lines.ns_per(),
            f.native_points.ns_per() / f.native_lines.ns_per()
        );
        let runs = &f.e2e_runs;
        let mut clean: Vec<Duration> = runs
            .iter()
            .filter(|r| r.1 == 0)
            .map(|r| r.0)
            .collect();
        clean.sort();
        let disturbed: Vec<&(Duration, u64, u64)> = runs.iter().filter(|r| r.1 > 0).collect();
        let rate = |d: Duration| fmt_rate(E2E_POINTS as f64 / d.as_secs_f64());
        eprintln!(
            "end to end (host + component + HTTP to loopback 204 server), {} runs of {E2E_POINTS} points:",
            runs.len()
        );
        if !clean.is_empty() {
            let mean = clean.iter().sum::<Duration>() / clean.len() as u32;
            eprintln!(
                "  {} runs without a failed request: median {} points/s ({:.1} ms per run, {} per point), \
                 mean {} points/s, best {} points/s",
                clean.len(),
                rate(clean[clean.len() / 2]),
                clean[clean.len() / 2].as_secs_f64() * 1e3,
                fmt_ns(clean[clean.len() / 2].as_nanos() as f64 / E2E_POINTS as f64),
                rate(mean),
                rate(clean[0]),
            );
        }
        eprintln!(
            "  {} runs where the sink took a request for failed (reconnect after reconnect_delay): \
             {:?}; mean over all runs {} points/s",
            disturbed.len(),
            disturbed
                .iter()
                .map(|r| format!("{:.2} s, {} points via backlog", r.0.as_secs_f64(), r.2))
                .collect::<Vec<_>>(),
            fmt_rate(f.e2e.per_sec()),
        );
        eprintln!(
            "  points via the in-memory backlog: {} in all; {} HTTP requests; the 204 server counted \
             {} written lines ({} re-sent), {} requests since start",
            runs.iter().map(|r| r.2).sum::<u64>(),
            f.e2e_requests,
            f.server_lines,
            f.e2e_resent,
            f.server_requests,
        );
        eprintln!(
            "the sink over the whole bench: {} points accepted, {} reconnect attempts \
             (each one a request the sink took for failed against a server that always answers 204)",
            f.accepted, f.reconnects
        );
    });
}

criterion_group!(benches, bench_component);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
