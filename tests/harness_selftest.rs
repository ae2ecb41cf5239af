//! Self-test of the test harness: real InfluxDB and VictoriaMetrics servers
//! on 127.0.0.1, and the `Sink` runner driven by a stand-in shell script
//! (so this passes before the real `influx-sink` binary exists).
//!
//! Run: `cargo test --release --test harness_selftest`

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{
    dir_size, free_port, http_agent, wait_stable, wait_until, write_config, Influxd, Sink, Stdin,
    Summary, VictoriaMetrics,
};

fn ping(url: &str) -> Result<u16, String> {
    http_agent(Duration::from_secs(1))
        .get(&format!("{url}/ping"))
        .call()
        .map(|r| r.status())
        .map_err(|e| e.to_string())
}

fn post_write(url: &str, db: Option<&str>, body: &str) -> u16 {
    let mut req = http_agent(Duration::from_secs(10)).post(&format!("{url}/write"));
    if let Some(db) = db {
        req = req.query("db", db);
    }
    match req.send_string(body) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, r)) => {
            panic!(
                "POST {url}/write: HTTP {code}: {}",
                r.into_string().unwrap_or_default()
            )
        }
        Err(e) => panic!("POST {url}/write: {e}"),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[test]
fn influxd_write_count_restart_pause() {
    let mut influx = Influxd::start();
    let url = influx.url();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "server must be on loopback: {url}"
    );
    assert_eq!(ping(&url), Ok(204), "/ping of a started server");

    influx.create_database("selftest");
    let t = now_ns();
    let body = format!(
        "device_data,device=dev0 seq=1i,f1=0.5 {}\n\
         device_data,device=dev1 seq=2i,f1=1.5 {}\n\
         device_data,device=dev0 seq=3i,f1=2.5 {}\n",
        t,
        t + 1,
        t + 2
    );
    assert_eq!(
        post_write(&url, Some("selftest"), &body),
        204,
        "write 3 points"
    );

    assert_eq!(
        influx.count("selftest", "device_data", "seq"),
        3,
        "count after write"
    );
    assert_eq!(
        influx.count_distinct("selftest", "device_data", "seq"),
        3,
        "distinct after write"
    );
    assert_eq!(
        influx.count("selftest", "device_data", "f1"),
        3,
        "count of another field"
    );
    assert_eq!(
        influx.count("selftest", "no_such_measurement", "seq"),
        0,
        "missing measurement"
    );
    assert_eq!(
        influx.count("no_such_db", "device_data", "seq"),
        0,
        "missing database"
    );

    // Same point again (same series and timestamp) overwrites: still 3.
    influx.write_lines(
        "selftest",
        &format!("device_data,device=dev0 seq=1i,f1=0.5 {t}\n"),
    );
    assert_eq!(
        influx.count("selftest", "device_data", "seq"),
        3,
        "rewrite of the same point"
    );
    // A repeated seq value in a new point: count grows, distinct does not.
    influx.write_lines(
        "selftest",
        &format!("device_data,device=dev1 seq=1i,f1=0.5 {}\n", t + 3),
    );
    assert_eq!(
        influx.count("selftest", "device_data", "seq"),
        4,
        "count counts points"
    );
    assert_eq!(
        influx.count_distinct("selftest", "device_data", "seq"),
        3,
        "distinct counts values"
    );

    let v = influx.query("selftest", "SHOW MEASUREMENTS");
    assert_eq!(
        v["results"][0]["series"][0]["values"][0][0], "device_data",
        "SHOW MEASUREMENTS: {v}"
    );

    // stop: nothing listens any more; start_again: same port, same data.
    let port = influx.port();
    influx.stop();
    assert!(!influx.is_running(), "influxd still running after stop()");
    assert!(ping(&url).is_err(), "/ping must fail while stopped");
    influx.start_again();
    assert_eq!(influx.port(), port, "start_again must reuse the port");
    assert_eq!(ping(&url), Ok(204), "/ping after start_again");
    assert_eq!(
        influx.count("selftest", "device_data", "seq"),
        4,
        "data kept over a restart"
    );

    // pause: connections are accepted but never answered; resume: back.
    influx.pause();
    assert!(influx.is_paused());
    let r = ping(&url);
    assert!(
        r.is_err(),
        "/ping must not be answered while paused, got {r:?}"
    );
    influx.resume();
    assert!(
        wait_until(Duration::from_secs(10), || ping(&url) == Ok(204)),
        "/ping after resume"
    );
    influx.write_lines(
        "selftest",
        &format!("device_data,device=dev2 seq=5i,f1=0.5 {}\n", t + 4),
    );
    assert_eq!(
        influx.count("selftest", "device_data", "seq"),
        5,
        "write after resume"
    );

    // stop() of a paused server works too (it is continued first).
    influx.pause();
    influx.stop();
    assert!(!influx.is_running(), "paused influxd not stopped");
}

#[test]
fn two_influxd_servers_are_independent() {
    let a = Influxd::start();
    let b = Influxd::start();
    assert_ne!(a.port(), b.port());
    a.create_database("x");
    a.write_lines("x", "m v=1i 1\n");
    assert_eq!(a.count("x", "m", "v"), 1);
    assert_eq!(
        b.count("x", "m", "v"),
        0,
        "second server must not see the first's data"
    );
}

#[test]
fn victoria_metrics_write_flush_count() {
    let vm = VictoriaMetrics::start();
    assert!(vm.url().starts_with("http://127.0.0.1:"));
    // VictoriaMetrics keeps millisecond timestamps: space the points 1 ms apart.
    let t = now_ns();
    let body = format!(
        "device_data,device=dev0 seq=1i,f1=0.5 {}\n\
         device_data,device=dev1 seq=2i,f1=1.5 {}\n\
         device_data,device=dev0 seq=3i,f1=2.5 {}\n",
        t,
        t + 1_000_000,
        t + 2_000_000
    );
    let status = post_write(&vm.url(), None, &body);
    assert!(
        (200..300).contains(&status),
        "VictoriaMetrics /write answered {status}"
    );
    vm.force_flush();
    let sel = r#"{__name__="device_data_seq"}"#;
    let seen = wait_until(Duration::from_secs(20), || {
        vm.force_flush();
        vm.count_samples(sel) == 3
    });
    assert!(
        seen,
        "expected 3 samples of {sel}, found {}",
        vm.count_samples(sel)
    );
    assert_eq!(vm.count_series(sel), 2, "two devices = two series");
    assert_eq!(vm.count_samples(r#"{__name__="device_data_f1"}"#), 3);
    assert_eq!(vm.count_samples(r#"{__name__="nothing_here"}"#), 0);
}

#[test]
fn helpers() {
    let a = free_port();
    let b = free_port();
    assert_ne!(a, b, "free_port must not hand out the same port twice");
    assert!(
        !wait_until(Duration::from_millis(100), || false),
        "wait_until false on timeout"
    );
    let mut n = 0;
    assert!(wait_until(Duration::from_secs(5), || {
        n += 1;
        n >= 3
    }));

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[x]\nk = v\n");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "[x]\nk = v\n");
    assert_eq!(dir_size(&dir.path().join("missing")), 0);
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::write(dir.path().join("a/b/f"), [0u8; 100]).unwrap();
    std::fs::write(dir.path().join("a/g"), [0u8; 20]).unwrap();
    assert_eq!(dir_size(&dir.path().join("a")), 120);
    let (stable, v) = wait_stable(Duration::from_secs(5), Duration::from_millis(200), || {
        dir_size(&dir.path().join("a"))
    });
    assert!(stable && v == 120);
}

#[test]
fn summary_parse() {
    let text = "log line\nsummary accepted=1 delivered=2 backlogged=3 dropped=4 rejected=5\n";
    assert_eq!(
        Summary::parse(text),
        Some(Summary {
            accepted: 1,
            delivered: 2,
            backlogged: 3,
            dropped: 4,
            rejected: 5
        })
    );
    // The last summary wins; a prefix (timestamp, level) is tolerated.
    let text = "summary accepted=1 delivered=1 backlogged=0 dropped=0 rejected=0\n\
                2024-01-01T00:00:00Z INFO summary accepted=7 delivered=6 backlogged=1 dropped=0 rejected=0";
    assert_eq!(Summary::parse(text).unwrap().accepted, 7);
    assert_eq!(Summary::parse("no summary here"), None);
    assert_eq!(
        Summary::parse("summary accepted=1 delivered=x"),
        None,
        "bad numbers"
    );
}

/// A stand-in for `influx-sink`: a shell script in a temp dir.
fn fake_sink(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join("fake-sink.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn sink_runner_with_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[generator]\ntransport = generator\n");
    let component = dir.path().join("component.wasm");
    std::fs::write(&component, b"").unwrap();

    // Bytes input bigger than a pipe buffer, args, exit code, summary.
    let bin = fake_sink(
        dir.path(),
        r#"[ "$1" = run ] && [ "$3" = --component ] && [ "$5" = --drain-timeout ] || { echo "bad args: $*" >&2; exit 9; }
n=$(wc -l)
echo "read $n lines" >&2
echo "summary accepted=$n delivered=4 backlogged=1 dropped=0 rejected=2" >&2
exit 3"#,
    );
    let input: String = (0..50_000).map(|i| format!("m v={i}i {i}\n")).collect();
    let mut sink = Sink::spawn_program(
        &bin,
        &component,
        &cfg,
        Stdin::Bytes(input.into_bytes()),
        &["--drain-timeout", "60"],
    );
    let (code, stderr) = sink.wait();
    assert_eq!(code, Some(3), "exit code; stderr:\n{stderr}");
    assert!(
        stderr.contains("read 50000 lines"),
        "all stdin delivered: {stderr}"
    );
    assert!(sink.stdin_written());
    assert_eq!(
        sink.summary(),
        Summary {
            accepted: 50000,
            delivered: 4,
            backlogged: 1,
            dropped: 0,
            rejected: 2
        }
    );

    // File input: the read offset is visible; kill -9 leaves no summary.
    let input_file = dir.path().join("input.lp");
    std::fs::write(&input_file, "0123456789abcdefghij\n").unwrap();
    let bin = fake_sink(
        dir.path(),
        "dd bs=1 count=10 of=/dev/null 2>/dev/null\necho 'read ten' >&2\nwhile :; do sleep 0.05; done",
    );
    let mut sink = Sink::spawn_program(&bin, &component, &cfg, Stdin::File(input_file), &[]);
    assert!(
        sink.wait_for_log("read ten", Duration::from_secs(10)),
        "{}",
        sink.stderr_text()
    );
    assert_eq!(sink.stdin_offset(), Some(10), "fdinfo offset of stdin");
    assert!(!sink.stdin_consumed());
    assert!(sink.is_running());
    sink.kill9();
    assert!(!sink.is_running());
    assert_eq!(sink.exit_signal(), Some(libc::SIGKILL));
    let (code, _) = sink.wait();
    assert_eq!(code, None, "killed by a signal: no exit code");
    assert_eq!(Summary::parse(&sink.stderr_text()), None);

    // SIGTERM handling and a pipe the test writes to.
    let bin = fake_sink(
        dir.path(),
        r#"trap 'echo "summary accepted=$(cat got | wc -l) delivered=0 backlogged=0 dropped=0 rejected=0" >&2; exit 3' TERM
: > got
echo ready >&2
while IFS= read -r line; do echo "$line" >> got; done
echo eof >&2
while :; do sleep 0.05; done"#,
    );
    let mut sink = Sink::spawn_program(&bin, &component, &cfg, Stdin::Pipe, &[]);
    assert!(sink.wait_for_log("ready", Duration::from_secs(10)));
    sink.write_stdin(b"a\nb\n");
    sink.close_stdin();
    assert!(
        sink.wait_for_log("eof", Duration::from_secs(10)),
        "{}",
        sink.stderr_text()
    );
    sink.sigterm();
    let (code, stderr) = sink.wait();
    assert_eq!(code, Some(3), "stderr: {stderr}");
    assert_eq!(sink.summary().accepted, 2);
}
