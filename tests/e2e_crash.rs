//! End to end (b): the sink is killed with SIGKILL while the server is down
//! and every point it has read sits in its on-disk backlog; a second run
//! after the server is back must deliver all of them.
//!
//! Needs the release binary and component:
//!   cargo build --release -p influx-sink-host
//!   cargo build --profile ship -p influx-sink-component --target wasm32-wasip2
//! Run: `cargo test --release --test e2e_crash`

use std::time::Duration;

use harness::{
    dir_size, now_ns, output_section, points, wait_stable, wait_until, write_config, Influxd, Sink,
    Stdin,
};

#[test]
fn kill9_with_backlog_then_recover_every_point() {
    const TOTAL: u64 = 20_000;
    const DB: &str = "crash";
    const M: &str = "crash_data";
    const SECTION: &str = "influx";

    Sink::require_built();
    // A server that exists (its port is known) but is down.
    let mut influx = Influxd::start();
    influx.stop();

    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &output_section(
            SECTION,
            influx.port(),
            DB,
            &[
                ("batch_size", "500"),
                ("batch_timeout", "0.1"),
                ("reconnect_delay", "0.5"),
                ("max_reconnect_delay", "2"),
                ("connection_timeout", "2"),
                ("enable_persistent_storage", "true"),
                ("persistent_storage_path", "backlog"),
                ("max_backlog_size", "1000000"),
            ],
        ),
    );
    let backlog = dir.path().join("backlog").join(SECTION);

    // 20,000 points with explicit, unique timestamps (an hour ago, 1 µs
    // apart: recent, so no age limit applies however it is measured).
    let input = dir.path().join("input.lp");
    std::fs::write(&input, points(M, TOTAL, now_ns() - 3_600_000_000_000)).expect("write input");

    // A long drain timeout, so the run is certainly alive when it is killed.
    let mut sink = Sink::spawn_with(&config, Stdin::File(input), &["--drain-timeout", "600"]);

    assert!(
        sink.wait_for_log("storing data in backlog", Duration::from_secs(60)),
        "sink never logged `Not connected to InfluxDB, storing data in backlog` with the \
         server down\n--- stderr tail ---\n{}",
        sink.stderr_tail(30)
    );
    let consumed = wait_until(Duration::from_secs(60), || sink.stdin_consumed());
    assert!(
        consumed,
        "sink did not read its whole input within 60 s (read {:?} bytes; running: {})\n\
         --- stderr tail ---\n{}",
        sink.stdin_offset(),
        sink.is_running(),
        sink.stderr_tail(30)
    );
    // Input read; let the last batches reach the disk (batch_timeout 0.1):
    // wait until the backlog stops growing for 2 s.
    let (settled, size) = wait_stable(Duration::from_secs(60), Duration::from_secs(2), || {
        dir_size(&backlog)
    });
    assert!(
        settled,
        "backlog {} kept growing for 60 s (now {size} bytes)",
        backlog.display()
    );
    assert!(
        size > 0,
        "no backlog data under {} (persistent_storage_path/section)\n--- stderr tail ---\n{}",
        backlog.display(),
        sink.stderr_tail(30)
    );
    assert!(
        sink.is_running(),
        "sink exited before it could be killed\n--- stderr tail ---\n{}",
        sink.stderr_tail(30)
    );

    sink.kill9();
    assert_eq!(
        sink.exit_signal(),
        Some(libc::SIGKILL),
        "first run must die by SIGKILL"
    );

    // Server back; a second run with empty input drains the backlog.
    influx.start_again();
    let mut again = Sink::spawn_with(&config, Stdin::Empty, &["--drain-timeout", "60"]);
    let (code, stderr) = again.wait();
    let summary = again.summary();
    let count = influx.count(DB, M, "seq");
    let distinct = influx.count_distinct(DB, M, "seq");
    assert_eq!(
        code,
        Some(0),
        "second run exit code (0 = backlog fully delivered); summary {summary:?}; \
         {count} points in InfluxDB\n--- stderr tail ---\n{}",
        harness::tail(&stderr, 40)
    );
    assert_eq!(
        count, TOTAL,
        "points in InfluxDB after recovery (distinct seq = {distinct})"
    );
    assert_eq!(
        distinct, TOTAL,
        "distinct seq values in InfluxDB after recovery"
    );
    // Every point came from the backlog, in this run (nothing new accepted).
    assert_eq!(
        (
            summary.accepted,
            summary.delivered,
            summary.dropped,
            summary.rejected
        ),
        (0, TOTAL, 0, 0),
        "second run summary (accepted, delivered, dropped, rejected); full: {summary:?}"
    );
}
