//! Live upgrade costs: instantiating a sink from a cached precompiled
//! component (pooling allocator), and the swap pause (from the start of
//! `snapshot()` on the old instance to the end of `restore` on the new one,
//! the time the sink takes no calls) while points flow, with the server up
//! (backlog empty) and down (backlog growing on disk).
//!
//! Build the component first:
//!   cargo build --profile ship --target wasm32-wasip2 -p influx-sink-component
//! The swap goes between two builds when `target/next/.../influx_sink_component.wasm`
//! (the `next` feature, built by tests/live_upgrade.rs) exists, else between
//! two instances of the same build.

mod common;

use std::cell::RefCell;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use influx_sink_host::config::OutputSpec;
use influx_sink_host::precompile;
use influx_sink_host::runtime::{Runtime, SinkInstance};
use influx_sink_host::sandbox::{self, EngineOptions, Limits};

use common::NoContentServer;

const CHUNK: u64 = 1000;
const SWAPS: usize = 200;

#[derive(Default)]
struct Figures {
    instantiate: Vec<Duration>,
    open: Vec<Duration>,
    /// Per case: pauses, median state bytes, backlog points at the end.
    pauses: Vec<(&'static str, Vec<Duration>, usize, u64)>,
    next: bool,
}

thread_local! {
    static FIG: RefCell<Figures> = RefCell::new(Figures::default());
}

fn spec(port: u16, dir: &Path) -> OutputSpec {
    let storage = dir.display().to_string();
    common::output_spec(
        "bench",
        port,
        &[
            ("batch_size", "5000"),
            ("batch_timeout", "0.1"),
            ("reconnect_delay", "0.2"),
            ("max_reconnect_delay", "1"),
            ("persistent_storage_path", &storage),
            ("max_backlog_size", "100000000"),
            ("content_encoding", "identity"),
        ],
        dir.join("bench"),
    )
}

fn pct(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn bench_swap(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let engine = sandbox::engine(&EngineOptions::default()).expect("engine");
    let cache = tmp.path().join("cache");
    let v1_path = harness::component_path();
    let next_path =
        harness::target_dir().join("next/wasm32-wasip2/ship/influx_sink_component.wasm");
    let v2_path = if next_path.exists() {
        next_path
    } else {
        v1_path.clone()
    };
    // Fill the cache, then load from it as a restart would.
    for p in [&v1_path, &v2_path] {
        Runtime::load_cached(&engine, p, Some(&cache)).expect("compile");
    }
    let v1 = Runtime::load_cached(&engine, &v1_path, Some(&cache)).expect("load v1");
    let v2 = Runtime::load_cached(&engine, &v2_path, Some(&cache)).expect("load v2");
    assert!(matches!(
        precompile::load(&engine, &v1_path, Some(&cache))
            .unwrap()
            .origin,
        precompile::Origin::Cached(_)
    ));
    let tokio = common::tokio_runtime();
    let limits = Limits::default();
    let server = NoContentServer::start();
    let mut fig = Figures {
        next: v2_path != v1_path,
        ..Default::default()
    };

    let up = spec(server.port, &tmp.path().join("up"));
    let mut g = c.benchmark_group("swap");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.bench_function("instantiate_from_cache", |b| {
        b.iter_custom(|iters| {
            tokio.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let p = v1.prepare(&up, &limits).await.expect("prepare");
                    let d = t.elapsed();
                    total += d;
                    fig.instantiate.push(d);
                    drop(p);
                }
                total
            })
        })
    });
    g.finish();
    tokio.block_on(async {
        for _ in 0..50 {
            let t = Instant::now();
            let sink = v1.instantiate_sandboxed(&up, &limits).await.expect("open");
            fig.open.push(t.elapsed());
            sink.close().await.expect("close");
        }
    });

    // Swaps while points flow: server up, then a server that refuses.
    let text = common::lines(CHUNK);
    for (label, out, drain) in [
        ("server up", up.clone(), true),
        (
            "server down, backlog growing",
            spec(9, &tmp.path().join("down")),
            false,
        ),
    ] {
        let pauses = tokio.block_on(async {
            let mut sink = v1.instantiate_sandboxed(&out, &limits).await.expect("open");
            let mut pauses = Vec::new();
            let mut states = Vec::new();
            for i in 0..SWAPS {
                for _ in 0..5 {
                    sink.write_lines(&text).await.expect("write");
                    sink.poll().await.expect("poll");
                }
                if drain {
                    // A healthy sink keeps up: let the sends finish, so
                    // what is in memory is what a healthy flow holds.
                    let until = Instant::now() + Duration::from_secs(10);
                    while sink.stats().await.expect("stats").pending > 4 * CHUNK
                        && Instant::now() < until
                    {
                        let wait = sink.poll().await.expect("poll");
                        tokio::time::sleep(
                            Duration::from_nanos(wait).min(Duration::from_micros(200)),
                        )
                        .await;
                    }
                }
                let next = if i % 2 == 0 { &v2 } else { &v1 };
                let prepared = next.prepare(&out, &limits).await.expect("prepare");
                let t = Instant::now();
                let snap = match sink.snapshot().await {
                    Ok(s) => s,
                    Err(e) => panic!("{label}: swap {i}: {}", sink.fault(&e)),
                };
                let new: SinkInstance = prepared
                    .restore(&snap)
                    .await
                    .expect("restore call")
                    .expect("state accepted");
                pauses.push(t.elapsed());
                states.push(snap.len());
                let old = std::mem::replace(&mut sink, new);
                old.close().await.expect("close");
            }
            sink.shutdown().await.expect("shutdown");
            let backlog = sink.stats().await.expect("stats").backlog_points;
            states.sort_unstable();
            (pauses, states[states.len() / 2], backlog)
        });
        fig.pauses.push((label, pauses.0, pauses.1, pauses.2));
    }
    FIG.with(|f| *f.borrow_mut() = fig);
}

fn summary() {
    FIG.with(|f| {
        let f = f.borrow();
        let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
        let us = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
        eprintln!(
            "\n=== swap summary ({}; 1000-point writes, batch_size 5000) ===",
            if f.next {
                "v1 <-> next build"
            } else {
                "same build twice"
            }
        );
        eprintln!(
            "instantiate from the cached precompiled component (pooling): p50 {}, p99 {}",
            us(pct(&f.instantiate, 0.5)),
            us(pct(&f.instantiate, 0.99))
        );
        eprintln!(
            "instantiate + open (backlog recovery of an empty directory): p50 {}, p99 {}",
            ms(pct(&f.open, 0.5)),
            ms(pct(&f.open, 0.99))
        );
        for (label, p, state, backlog) in &f.pauses {
            eprintln!(
                "swap pause, {label}: {} swaps, p50 {}, p99 {}, max {} \
                 (median state {state} bytes; backlog at the end {backlog} points)",
                p.len(),
                ms(pct(p, 0.5)),
                ms(pct(p, 0.99)),
                ms(pct(p, 1.0))
            );
        }
    });
}

criterion_group!(benches, bench_swap);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
