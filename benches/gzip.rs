//! What `content_encoding = gzip` costs and saves: compression time and
//! ratio of a batch of 20-field points (ours, and for comparison
//! miniz_oxide at level 1 through flate2, which the sink used before its
//! line-aware encoder), and end to end through host +
//! component to a loopback server (which inflates gzip bodies to count
//! their lines, as a real server must), gzip against identity.
//!
//! Build the component first:
//!   cargo build --profile ship --target wasm32-wasip2 -p influx-sink-component

mod common;

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use influx_sink_component::policy::http::{body, gzip};
use influx_sink_host::config::OutputSpec;
use influx_sink_host::runtime::{Runtime, SinkInstance};

use common::{fmt_ns, fmt_rate, NoContentServer, Tally};

const BATCH: u64 = 5000;
const CHUNK: u64 = 1000;
const E2E_POINTS: u64 = 100_000;

#[derive(Default)]
struct Figures {
    raw_bytes: usize,
    gz_bytes: usize,
    compress: Tally,
    miniz_bytes: usize,
    miniz: Tally,
    crc: Tally,
    e2e: Vec<(&'static str, Tally)>,
}

thread_local! {
    static FIG: RefCell<Figures> = RefCell::new(Figures::default());
}

fn spec(port: u16, encoding: &str) -> OutputSpec {
    let batch = BATCH.to_string();
    common::output_spec(
        "bench",
        port,
        &[
            ("batch_size", &batch),
            ("enable_persistent_storage", "false"),
            ("max_backlog_size", "10000000"),
            ("content_encoding", encoding),
        ],
        PathBuf::from("/nonexistent-backlog-unused"),
    )
}

/// Turn the sink until everything it accepted is delivered.
async fn drain(sink: &mut SinkInstance) {
    common::drain(sink, Duration::from_millis(1)).await
}

fn bench_gzip(c: &mut Criterion) {
    let points = common::points(BATCH);
    let raw = body(&points, 1);
    let gz = gzip::compress(&raw);
    let mut g = c.benchmark_group("gzip");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(BATCH));
    let mut compress = Tally::default();
    g.bench_function(BenchmarkId::new("compress_batch", BATCH), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(gzip::compress(std::hint::black_box(&raw)));
            }
            let d = t.elapsed();
            compress.add(d, iters * BATCH);
            d
        })
    });
    let mut miniz = Tally::default();
    let miniz_bytes = miniz_level1(&raw).len();
    g.bench_function(BenchmarkId::new("miniz_level1_batch", BATCH), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(miniz_level1(std::hint::black_box(&raw)));
            }
            let d = t.elapsed();
            miniz.add(d, iters * BATCH);
            d
        })
    });
    // The gzip trailer's CRC-32 alone (part of compress_batch).
    let mut crc = Tally::default();
    g.bench_function(BenchmarkId::new("crc32_batch", BATCH), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                std::hint::black_box(influx_sink_component::crc::crc32(std::hint::black_box(
                    &raw,
                )));
            }
            let d = t.elapsed();
            crc.add(d, iters * BATCH);
            d
        })
    });
    g.finish();

    let server = NoContentServer::start();
    let tokio = common::tokio_runtime();
    let runtime = Runtime::load(&harness::component_path()).expect("load the component");
    let text = common::lines(CHUNK);
    let mut e2e = Vec::new();
    let mut g = c.benchmark_group("end_to_end_encoding");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(E2E_POINTS));
    for encoding in ["identity", "gzip"] {
        let mut sink = tokio
            .block_on(runtime.instantiate(&spec(server.port, encoding)))
            .expect("instantiate");
        let mut tally = Tally::default();
        g.bench_function(BenchmarkId::new(encoding, E2E_POINTS), |b| {
            b.iter_custom(|iters| {
                tokio.block_on(async {
                    let before = server.lines_received();
                    let t = Instant::now();
                    for _ in 0..iters {
                        for _ in 0..E2E_POINTS / CHUNK {
                            sink.poll().await.expect("poll");
                            sink.write_lines(&text).await.expect("write_lines");
                        }
                        drain(&mut sink).await;
                    }
                    let d = t.elapsed();
                    let got = server.lines_received() - before;
                    assert!(got >= iters * E2E_POINTS, "server got {got} lines");
                    tally.add(d, iters * E2E_POINTS);
                    d
                })
            })
        });
        e2e.push((encoding, tally));
        tokio.block_on(async {
            sink.shutdown().await.expect("shutdown");
            sink.close().await.expect("close");
        });
    }
    g.finish();
    FIG.with(|f| {
        *f.borrow_mut() = Figures {
            raw_bytes: raw.len(),
            gz_bytes: gz.len(),
            compress,
            miniz_bytes,
            miniz,
            crc,
            e2e,
        }
    });
}

fn summary() {
    FIG.with(|f| {
        let f = f.borrow();
        let ratio = f.raw_bytes as f64 / f.gz_bytes as f64;
        eprintln!("\n=== gzip summary ({BATCH} 20-field points per batch) ===");
        eprintln!(
            "batch body {} B raw, {} B gzip (ratio {ratio:.1}x, {:.1} B/point on the wire)",
            f.raw_bytes,
            f.gz_bytes,
            f.gz_bytes as f64 / BATCH as f64
        );
        eprintln!(
            "compress (native, ours): {} per point, {} points/s, {:.0} MB/s of line protocol",
            fmt_ns(f.compress.ns_per()),
            fmt_rate(f.compress.per_sec()),
            f.compress.per_sec() * f.raw_bytes as f64 / BATCH as f64 / 1e6
        );
        eprintln!(
            "miniz_oxide level 1 (native, through flate2): {} per point, {:.0} MB/s, {} B: ours is {:.1}x as fast, {:.2}x the size",
            fmt_ns(f.miniz.ns_per()),
            f.miniz.per_sec() * f.raw_bytes as f64 / BATCH as f64 / 1e6,
            f.miniz_bytes,
            f.miniz.ns_per() / f.compress.ns_per(),
            f.gz_bytes as f64 / f.miniz_bytes as f64
        );
        eprintln!(
            "of which the CRC-32: {} per point, {:.0} MB/s",
            fmt_ns(f.crc.ns_per()),
            f.crc.per_sec() * f.raw_bytes as f64 / BATCH as f64 / 1e6
        );
        for (name, t) in &f.e2e {
            eprintln!(
                "end to end, {name}: {} per point, {} points/s",
                fmt_ns(t.ns_per()),
                fmt_rate(t.per_sec())
            );
        }
        for mbit in [1.0f64, 10.0] {
            let bytes_s = mbit * 1e6 / 8.0;
            eprintln!(
                "on a {mbit} Mbit/s link the body alone allows: identity {} points/s, gzip {} points/s",
                fmt_rate(bytes_s / (f.raw_bytes as f64 / BATCH as f64)),
                fmt_rate(bytes_s / (f.gz_bytes as f64 / BATCH as f64)),
            );
        }
    });
}

/// `data` gzipped by miniz_oxide at its fastest level.
fn miniz_level1(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

criterion_group!(benches, bench_gzip);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
