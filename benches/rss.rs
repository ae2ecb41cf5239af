//! Host RSS while the component's on-disk backlog grows from 0 to 1,000,000
//! points (a plain binary, not criterion).
//!
//! The real component runs in the real host runtime with persistent storage
//! in a temporary directory and its server port pointing at a closed port,
//! so every point goes to the `FileBacklog` inside the component
//! (`max_backlog_size = 2000000`, other settings at their defaults, so
//! 100-point records). Points are written as 1000-line chunks of 20-field
//! line protocol, the sink turned after each call as the pipeline does.
//! RSS is `VmRSS` from /proc/self/status: the whole host process (wasmtime,
//! the compiled component, its linear memory, tokio).

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use influx_sink_host::runtime::Runtime;

const CHUNK: u64 = 1000;
const CHECKPOINTS: [u64; 5] = [0, 250_000, 500_000, 750_000, 1_000_000];

/// (VmRSS, VmHWM) in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

fn main() {
    let (start_rss, _) = rss_kib();
    let tokio = common::tokio_runtime();
    let runtime = Runtime::load(&harness::component_path()).expect("load the component");
    let (loaded_rss, _) = rss_kib();

    let base = harness::target_dir().join("bench-tmp");
    std::fs::create_dir_all(&base).expect("create bench-tmp");
    let tmp = tempfile::tempdir_in(base).expect("temp dir");
    let backlog_dir = tmp.path().join("rss");
    let port = closed_port();
    let spec = common::output_spec(
        "rss",
        port,
        &[
            ("enable_persistent_storage", "true"),
            ("max_backlog_size", "2000000"),
        ],
        backlog_dir.clone(),
    );
    let batch_size = spec.settings.batch_size;

    eprintln!(
        "rss: 20-field points, {CHUNK} per write_lines call, batch_size {batch_size}, \
         server 127.0.0.1:{port} (closed), backlog in {}",
        backlog_dir.display()
    );
    let mut gen = common::generator();
    let mut text = Vec::with_capacity(CHUNK as usize * 600);
    let mut rows = Vec::new();
    let began = Instant::now();
    tokio.block_on(async {
        let mut sink = runtime.instantiate(&spec).await.expect("instantiate");
        sink.poll().await.expect("poll");
        let mut written = 0u64;
        for &at in &CHECKPOINTS {
            while written < at {
                text.clear();
                gen.fill(CHUNK, &mut text);
                let r = sink.write_lines(&text).await.expect("write_lines");
                assert_eq!(r.accepted as u64, CHUNK);
                sink.poll().await.expect("poll");
                written += CHUNK;
            }
            let st = sink.stats().await.expect("stats");
            assert_eq!(
                st.backlog_points, at,
                "every point is in the backlog: {st:?}"
            );
            assert_eq!(st.dropped, 0);
            let (rss, hwm) = rss_kib();
            let disk = common::dir_size(&backlog_dir);
            eprintln!(
                "rss: {at:>9} points in backlog: VmRSS {:>7.1} MiB (peak {:>7.1} MiB), \
                 backlog {:>6.1} MB on disk, {:>5.1} s, state {}",
                mib(rss),
                mib(hwm),
                disk as f64 / 1e6,
                began.elapsed().as_secs_f64(),
                st.state,
            );
            rows.push((at, rss, hwm, disk, st.backlog_bytes, began.elapsed()));
        }
        sink.shutdown().await.expect("shutdown");
        sink.close().await.expect("close");
    });
    // Let the runtime's blocking threads idle out before the tempdir goes.
    drop(tokio);
    std::thread::sleep(Duration::from_millis(10));

    let (_, rss0, _, _, _, _) = rows[0];
    let &(n, rss1, hwm1, disk1, bytes1, took) = rows.last().expect("rows");
    eprintln!("\n=== rss summary (host process, FileBacklog inside the component) ===");
    eprintln!(
        "VmRSS: process start {:.1} MiB, after Runtime::load {:.1} MiB",
        mib(start_rss),
        mib(loaded_rss)
    );
    for (at, rss, _, _, _, _) in &rows {
        eprintln!(
            "  {at:>9} points: {:>7.1} MiB ({:+.1} MiB)",
            mib(*rss),
            mib(*rss) - mib(rss0)
        );
    }
    eprintln!(
        "growth 0 -> {n} points: {:+.1} MiB VmRSS ({:.1} B per point; peak VmHWM {:.1} MiB); \
         backlog on disk {:.1} MB ({:.1} B/point; stats backlog-bytes {:.1} B/point); \
         took {:.1} s ({:.0} points/s into the on-disk backlog through the component)",
        mib(rss1) - mib(rss0),
        (rss1 as f64 - rss0 as f64) * 1024.0 / n as f64,
        mib(hwm1),
        disk1 as f64 / 1e6,
        disk1 as f64 / n as f64,
        bytes1 as f64 / n as f64,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
    );
}
