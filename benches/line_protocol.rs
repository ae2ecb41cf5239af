//! Per-point cost of the text paths: parse/validate (`parse_lines`),
//! encode for an HTTP body (`Point::write_line_protocol`), and the backlog
//! codec (`encode_points` / `decode_points`), on 20-field points.

mod common;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use influx_sink_component::codec::{decode_points, encode_points};
use influx_sink_component::line_protocol::parse_lines;

use common::{fmt_ns, fmt_rate, Tally};

/// Points per parse / encode call (the host's generator sends 1000-line chunks).
const CHUNK: u64 = 1000;
/// Record sizes for the codec: the default batch_size, and a large one.
const RECORDS: [u64; 2] = [100, 5000];
/// Length and CRC in front of every backlog record.
const FRAME: u64 = 8;

#[derive(Default)]
struct Figures {
    parse: Tally,
    encode_lp: Tally,
    codec: Vec<(u64, Tally, Tally, usize)>,
    line_bytes: f64,
}

thread_local! {
    static FIG: RefCell<Figures> = RefCell::new(Figures::default());
}

fn timed(tally: &mut Tally, iters: u64, per_iter: u64, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let d = t.elapsed();
    tally.add(d, iters * per_iter);
    d
}

fn bench_text(c: &mut Criterion) {
    let text = common::lines(CHUNK);
    let points = common::points(CHUNK);
    FIG.with(|f| f.borrow_mut().line_bytes = text.len() as f64 / CHUNK as f64);

    let mut g = c.benchmark_group("line_protocol");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(CHUNK));

    let mut parse = Tally::default();
    g.bench_function(BenchmarkId::new("parse_lines", CHUNK), |b| {
        b.iter_custom(|iters| {
            timed(&mut parse, iters, CHUNK, || {
                let (p, e) = parse_lines(std::hint::black_box(&text), common::START_NS);
                assert!(e.is_empty() && p.len() == CHUNK as usize);
                std::hint::black_box(p);
            })
        })
    });

    let mut encode = Tally::default();
    let mut body = Vec::with_capacity(text.len() + 1024);
    g.bench_function(BenchmarkId::new("write_line_protocol", CHUNK), |b| {
        b.iter_custom(|iters| {
            timed(&mut encode, iters, CHUNK, || {
                body.clear();
                for p in std::hint::black_box(&points) {
                    p.write_line_protocol(&mut body);
                }
                std::hint::black_box(&body);
            })
        })
    });
    g.finish();
    assert_eq!(body, text, "encode reproduces the generated text");
    FIG.with(|f| {
        let mut f = f.borrow_mut();
        f.parse = parse;
        f.encode_lp = encode;
    });
}

fn bench_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in RECORDS {
        let points = common::points(n);
        let mut body = Vec::new();
        encode_points(&points, &mut body);
        assert_eq!(decode_points(&body).expect("decodes"), points);
        let body_len = body.len();
        g.throughput(Throughput::Elements(n));

        let mut enc = Tally::default();
        g.bench_function(BenchmarkId::new("encode_points", n), |b| {
            let mut out = Vec::with_capacity(body_len);
            b.iter_custom(|iters| {
                timed(&mut enc, iters, n, || {
                    out.clear();
                    encode_points(std::hint::black_box(&points), &mut out);
                    std::hint::black_box(&out);
                })
            })
        });
        let mut dec = Tally::default();
        g.bench_function(BenchmarkId::new("decode_points", n), |b| {
            b.iter_custom(|iters| {
                timed(&mut dec, iters, n, || {
                    let p = decode_points(std::hint::black_box(&body)).expect("decodes");
                    std::hint::black_box(p);
                })
            })
        });
        FIG.with(|f| f.borrow_mut().codec.push((n, enc, dec, body_len)));
    }
    g.finish();
}

fn summary() {
    FIG.with(|f| {
        let f = f.borrow();
        eprintln!("\n=== line protocol / codec summary (20-field points) ===");
        eprintln!("line protocol: {:.1} B per point", f.line_bytes);
        eprintln!(
            "parse_lines (parse + validate): {} per point ({} points/s, {:.0} MB/s)",
            fmt_ns(f.parse.ns_per()),
            fmt_rate(f.parse.per_sec()),
            f.line_bytes * f.parse.per_sec() / 1e6
        );
        eprintln!(
            "Point::write_line_protocol: {} per point ({} points/s)",
            fmt_ns(f.encode_lp.ns_per()),
            fmt_rate(f.encode_lp.per_sec())
        );
        for (n, enc, dec, body) in &f.codec {
            let body_pp = *body as f64 / *n as f64;
            let disk_pp = (*body as u64 + FRAME) as f64 / *n as f64;
            eprintln!(
                "codec, {n}-point record: encode {} per point ({} points/s), decode {} per point ({} points/s); \
                 body {body_pp:.1} B/point, on disk ~{disk_pp:.1} B/point with the {FRAME}-B frame \
                 (+ a ~15-B record header, see the backlog bench for the measured figure); \
                 {:.1}x smaller than line protocol",
                fmt_ns(enc.ns_per()),
                fmt_rate(enc.per_sec()),
                fmt_ns(dec.ns_per()),
                fmt_rate(dec.per_sec()),
                f.line_bytes / disk_pp,
            );
        }
    });
}

criterion_group!(benches, bench_text, bench_codec);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
