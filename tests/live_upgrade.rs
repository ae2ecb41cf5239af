//! Live upgrade under load: two genuinely different builds of the component
//! (the `next` feature: another version string, one more field in its
//! state) are swapped v1 → v2 → v1 … every few hundred milliseconds through
//! the admin endpoint while the generator sends 50,000 points/s through a
//! real InfluxDB, which is stopped for part of the run. Afterwards every
//! point is in InfluxDB exactly once, and the swap pauses are reported.
//!
//! Run: `cargo test --release --test live_upgrade -- --nocapture`

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{generator_section, output_section, write_config, Influxd, Sink, Stdin};

const RATE: u64 = 50_000;
const TOTAL: u64 = 400_000;
const DB: &str = "upgrade";
const MEASUREMENT: &str = "upgrade";

/// Build the component with `--features next` in its own target directory.
fn build_next(dir: &Path) -> PathBuf {
    harness::build_wasm(
        "Cargo.toml",
        "influx-sink-component",
        "ship",
        "next",
        "next",
        &dir.join("v2.wasm"),
    )
}

/// `POST /swap` to the admin endpoint; the status and the answer.
fn swap(port: u16, component: &Path) -> (u16, String) {
    let path = component.display().to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin endpoint");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /swap HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{path}",
        path.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

/// The pauses of the `swapped ... in X ms` log lines, sorted.
/// The sink running `component` with an admin endpoint on `admin` and its
/// compiled-component cache under `dir`.
fn spawn_swappable(
    config: &Path,
    component: &Path,
    admin: u16,
    dir: &Path,
    extra: &[&str],
) -> Sink {
    let component = component.display().to_string();
    let admin = admin.to_string();
    let cache = dir.join("cache").display().to_string();
    let mut args = vec![
        "--component",
        &component,
        "--admin",
        &admin,
        "--cache-dir",
        &cache,
    ];
    args.extend_from_slice(extra);
    Sink::spawn_with(config, Stdin::Empty, &args)
}

fn pauses(stderr: &str) -> Vec<f64> {
    let mut v: Vec<f64> = stderr
        .lines()
        .filter(|l| l.contains("swapped the sink component"))
        .filter_map(|l| {
            let at = l.find(") in ")? + 5;
            l[at..].split(' ').next()?.parse().ok()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

#[test]
fn swapping_back_and_forth_under_load_and_an_outage_loses_nothing() {
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    let v1 = dir.path().join("v1.wasm");
    std::fs::copy(harness::component_path(), &v1).expect("copy the component");
    let v2 = build_next(dir.path());
    let mut influx = Influxd::start();
    influx.create_database(DB);
    let admin = harness::free_port();
    let config = write_config(
        dir.path(),
        &format!(
            "{}{}",
            generator_section(
                TOTAL,
                RATE,
                &[("measurement", MEASUREMENT), ("fields", "4")]
            ),
            output_section(
                "influx",
                influx.port(),
                DB,
                &[
                    ("batch_size", "5000"),
                    ("batch_timeout", "0.1"),
                    ("reconnect_delay", "0.2"),
                    ("max_reconnect_delay", "0.5"),
                    ("connection_timeout", "2"),
                    ("persistent_storage_path", "backlog"),
                    ("max_backlog_size", "10000000"),
                ],
            )
        ),
    );
    let mut sink = spawn_swappable(&config, &v1, admin, dir.path(), &["--drain-timeout", "60"]);
    assert!(
        sink.wait_for_log("admin endpoint on", Duration::from_secs(30)),
        "{}",
        sink.stderr_tail(20)
    );
    // Swap every 300 ms for the whole run; stop the server from the 2nd to
    // the 4th second.
    let began = Instant::now();
    let mut swaps = 0;
    let mut stopped = false;
    let mut restarted = false;
    // The generator runs TOTAL / RATE = 8 s; swap through it and the drain.
    let run_for = Duration::from_secs(TOTAL / RATE + 2);
    while sink.is_running() && began.elapsed() < run_for {
        let next = if swaps % 2 == 0 { &v2 } else { &v1 };
        let (status, answer) = swap(admin, next);
        if !sink.is_running() {
            break;
        }
        assert_eq!(
            status,
            200,
            "swap {swaps} failed: {answer}\n{}",
            sink.stderr_tail(20)
        );
        swaps += 1;
        let t = began.elapsed();
        if !stopped && t >= Duration::from_secs(2) {
            influx.stop();
            stopped = true;
        }
        if stopped && !restarted && t >= Duration::from_secs(4) {
            influx.start_again();
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        stopped && restarted,
        "the run ended before the outage was over"
    );
    let (code, stderr) = sink.wait();
    let summary = sink.summary();
    assert_eq!(code, Some(0), "{}", harness::tail(&stderr, 30));
    assert_eq!(
        (
            summary.accepted,
            summary.delivered,
            summary.dropped,
            summary.rejected
        ),
        (TOTAL, TOTAL, 0, 0),
        "summary {summary:?}\n{}",
        harness::tail(&stderr, 30)
    );
    assert_eq!(
        influx.count(DB, MEASUREMENT, "seq"),
        TOTAL,
        "points in InfluxDB"
    );
    let p = pauses(&stderr);
    assert!(
        swaps >= 10 && p.len() >= 10,
        "{swaps} swaps, {} logged",
        p.len()
    );
    assert!(stderr.contains("0.1.0 → 0.1.0-next") && stderr.contains("0.1.0-next → 0.1.0"));
    let pct = |q: f64| p[((p.len() - 1) as f64 * q).round() as usize];
    // The slowest swaps, with their snapshot time and state size.
    let worst = p[p.len() - 1];
    for l in stderr
        .lines()
        .filter(|l| l.contains("swapped the sink component"))
    {
        if pauses(l).first().is_some_and(|v| *v >= worst * 0.5) {
            eprintln!("slow swap: {l}");
        }
    }
    eprintln!(
        "live upgrade: {} swaps at {RATE} points/s with a 2 s outage; pause p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p.len(),
        pct(0.5),
        pct(0.99),
        p[p.len() - 1]
    );
}

#[test]
fn a_bad_component_is_refused_and_the_running_version_stays() {
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    // Built first: the sink runs while the swaps are tried.
    let hostile = |feature: &str| harness::build_hostile(feature, dir.path());
    // Cannot read the running one's state (its restore refuses).
    let alien = hostile("trap3");
    // Takes the state, then traps on its first call.
    let broken = hostile("fail_after_restore");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm junk").unwrap();
    let influx = Influxd::start();
    let admin = harness::free_port();
    let config = write_config(
        dir.path(),
        &output_section(
            "influx",
            influx.port(),
            "refuse",
            &[
                ("persistent_storage_path", "backlog"),
                ("batch_size", "1000"),
                ("batch_timeout", "0.1"),
                ("max_backlog_size", "1000000"),
            ],
        ),
    );
    let admin_arg = admin.to_string();
    let mut sink = Sink::spawn_with(
        &config,
        Stdin::Pipe,
        &["--admin", &admin_arg, "--no-cache", "--drain-timeout", "30"],
    );
    assert!(sink.wait_for_log("admin endpoint on", Duration::from_secs(30)));
    let ts0 = harness::now_ns() - 60_000_000_000;
    let batch = |from: u64| -> Vec<u8> {
        (from..from + 5_000)
            .map(|i| harness::point_line(MEASUREMENT, i, ts0 + i as i64 * 1000))
            .collect::<String>()
            .into_bytes()
    };
    let mut sent = 0;
    let mut expect_refusal = |path: &Path, needles: &[&str]| {
        sink.write_stdin(&batch(sent));
        sent += 5_000;
        let (status, answer) = swap(admin, path);
        assert_eq!(status, 409, "{answer}");
        for n in needles {
            assert!(answer.contains(n), "no `{n}` in {answer}");
        }
    };
    expect_refusal(&junk, &["every sink keeps its version"]);
    expect_refusal(Path::new("/nonexistent/v9.wasm"), &["No such file"]);
    expect_refusal(&alien, &["refused the state", "keeps running"]);
    expect_refusal(
        &broken,
        &[
            "failed on its first calls",
            "restored from the same snapshot",
        ],
    );
    sink.write_stdin(&batch(sent));
    sent += 5_000;
    sink.close_stdin();
    let (code, stderr) = sink.wait();
    assert_eq!(code, Some(0), "{}", harness::tail(&stderr, 20));
    let s = sink.summary();
    assert_eq!(
        (s.accepted, s.delivered, s.dropped),
        (sent, sent, 0),
        "{s:?}"
    );
    assert_eq!(influx.count("refuse", MEASUREMENT, "seq"), sent);
}

/// Swaps v1 ↔ v2 (and so a rollback each time) while the gateway's own
/// client writes through the listener: every write acknowledged before,
/// during and after the swaps is in InfluxDB exactly once.
#[test]
fn swapping_with_a_listener_running_keeps_every_acknowledged_point() {
    use harness::clients::{listener_section, Writer, WriterSpec};
    const COUNT: u64 = 20_000;
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    let v1 = dir.path().join("v1.wasm");
    std::fs::copy(harness::component_path(), &v1).expect("copy the component");
    let v2 = build_next(dir.path());
    let influx = Influxd::start();
    let admin = harness::free_port();
    let listen = harness::free_port();
    let config = write_config(
        dir.path(),
        &(listener_section(listen, &[])
            + &output_section(
                "influx",
                influx.port(),
                DB,
                &[("persistent_storage_path", "backlog")],
            )),
    );
    let mut sink = spawn_swappable(&config, &v1, admin, dir.path(), &[]);
    assert!(
        sink.wait_for_log("listening on http://", Duration::from_secs(30)),
        "{}",
        sink.stderr_tail(20)
    );
    let base_ms = harness::now_ns() / 1_000_000 - 86_400_000;
    let mut writer = Writer::spawn(
        &WriterSpec {
            mode: "v1",
            port: listen,
            db: DB.into(),
            measurement: "relay_swap".into(),
            count: COUNT,
            batch: 100,
            base_ms,
            pause_ms: 20,
        },
        dir.path(),
    );
    let mut swaps = 0;
    while writer.acks() < COUNT as usize && swaps < 40 {
        let next = if swaps % 2 == 0 { &v2 } else { &v1 };
        let (status, answer) = swap(admin, next);
        assert_eq!(
            status,
            200,
            "swap {swaps}: {answer}\n{}",
            sink.stderr_tail(20)
        );
        swaps += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        writer.wait(Duration::from_secs(120)),
        "the writer did not finish: {}",
        harness::tail(&writer.log(), 20)
    );
    assert_eq!(writer.acked().len() as u64, COUNT);
    let landed = harness::wait_until(Duration::from_secs(60), || {
        influx.count(DB, "relay_swap", "seq") >= COUNT
    });
    sink.sigterm();
    let (_, stderr) = sink.wait();
    assert!(landed, "{}", harness::tail(&stderr, 30));
    assert!(
        swaps >= 4,
        "only {swaps} swaps happened while the writer ran"
    );
    assert_eq!(influx.count(DB, "relay_swap", "seq"), COUNT);
    assert_eq!(influx.count_distinct(DB, "relay_swap", "seq"), COUNT);
}
