//! End to end (a): a real InfluxDB goes away in the middle of a stream and
//! comes back; no point may be lost. Plus stdin input with malformed lines.
//!
//! Needs the release binary and component:
//!   cargo build --release -p influx-sink-host
//!   cargo build --profile ship -p influx-sink-component --target wasm32-wasip2
//! Run: `cargo test --release --test e2e_outage`

use std::time::Duration;

use harness::{
    generator_section, now_ns, output_section, point_line, write_config, Influxd, Sink, Stdin,
};

const MEASUREMENT: &str = "device_data";

/// Output settings shared by the runs of the outage test: small, fast
/// batches and quick reconnects, and a backlog big enough for the whole
/// stream (the default max_backlog_size = 10000 would drop points).
fn outage_output(port: u16, db: &str) -> String {
    output_section(
        "influx",
        port,
        db,
        &[
            ("batch_size", "500"),
            ("batch_timeout", "0.2"),
            ("reconnect_delay", "0.5"),
            ("max_reconnect_delay", "2"),
            ("connection_timeout", "2"),
            ("enable_persistent_storage", "true"),
            ("persistent_storage_path", "backlog"),
            ("max_backlog_size", "1000000"),
        ],
    )
}

#[test]
fn outage_mid_stream_loses_no_point() {
    const TOTAL: u64 = 100_000;
    const DB: &str = "outage";
    Sink::require_built();
    let mut influx = Influxd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &format!(
            "{}{}",
            generator_section(TOTAL, 20_000, &[("measurement", MEASUREMENT)]),
            outage_output(influx.port(), DB)
        ),
    );
    let mut sink = Sink::spawn_with(&config, Stdin::Empty, &["--drain-timeout", "60"]);

    // Let ~20% through, then take the server away.
    let mut running = true;
    let reached = harness::wait_until(Duration::from_secs(60), || {
        running = sink.is_running();
        !running || influx.count(DB, MEASUREMENT, "seq") >= TOTAL / 5
    });
    let delivered_before = influx.count(DB, MEASUREMENT, "seq");
    assert!(
        reached && running,
        "expected >= {} points in InfluxDB while the sink runs; found {delivered_before}, \
         sink running: {running}\n--- sink stderr tail ---\n{}",
        TOTAL / 5,
        sink.stderr_tail(30)
    );
    assert!(
        delivered_before < TOTAL,
        "all {TOTAL} points were delivered before the outage could start; \
         the test did not exercise an outage (lower the rate?)"
    );
    influx.stop();

    // Down until the sink has noticed and is backlogging and reconnecting.
    assert!(
        sink.wait_for_log("storing data in backlog", Duration::from_secs(30)),
        "sink never logged `Not connected to InfluxDB, storing data in backlog` during the \
         outage\n--- stderr tail ---\n{}",
        sink.stderr_tail(30)
    );
    let reconnecting = format!(
        "Attempting to reconnect to InfluxDB at 127.0.0.1:{}",
        influx.port()
    );
    assert!(
        sink.wait_for_log(&reconnecting, Duration::from_secs(30)),
        "sink never logged `{reconnecting}` during the outage\n--- stderr tail ---\n{}",
        sink.stderr_tail(30)
    );
    influx.start_again();

    let (code, stderr) = sink.wait();
    let summary = sink.summary();
    assert_eq!(
        code,
        Some(0),
        "exit code after the outage (0 = everything delivered); summary {summary:?}\n\
         --- stderr tail ---\n{}",
        harness::tail(&stderr, 40)
    );
    assert_eq!(
        (
            summary.accepted,
            summary.delivered,
            summary.dropped,
            summary.rejected
        ),
        (TOTAL, TOTAL, 0, 0),
        "summary (accepted, delivered, dropped, rejected); full: {summary:?}"
    );
    assert!(
        stderr.contains("Successfully reconnected to InfluxDB"),
        "no `Successfully reconnected to InfluxDB` in stderr\n{}",
        harness::tail(&stderr, 40)
    );
    // The outage must have sent points through the backlog and back.
    for needle in ["Flushing ", "Successfully wrote "] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(needle) && l.contains("backlog points to InfluxDB")),
            "no `{needle}N backlog points to InfluxDB` in stderr\n{}",
            harness::tail(&stderr, 40)
        );
    }

    let count = influx.count(DB, MEASUREMENT, "seq");
    let distinct = influx.count_distinct(DB, MEASUREMENT, "seq");
    assert_eq!(
        count, TOTAL,
        "points in InfluxDB (count(seq)); distinct seq = {distinct}"
    );
    assert_eq!(distinct, TOTAL, "distinct seq values in InfluxDB");

    // Nothing left behind: a second run over the same backlog, without a
    // source and with empty stdin, has nothing to deliver.
    let config2 = write_config(dir.path(), &outage_output(influx.port(), DB));
    let mut again = Sink::spawn_with(&config2, Stdin::Empty, &["--drain-timeout", "30"]);
    let (code2, stderr2) = again.wait();
    let summary2 = again.summary();
    assert_eq!(
        code2,
        Some(0),
        "second run exit code\n{}",
        harness::tail(&stderr2, 30)
    );
    assert_eq!(
        (
            summary2.accepted,
            summary2.delivered,
            summary2.dropped,
            summary2.rejected
        ),
        (0, 0, 0, 0),
        "second run over the same backlog must find nothing undelivered: \
         (accepted, delivered, dropped, rejected); full: {summary2:?}"
    );
    assert_eq!(
        influx.count(DB, MEASUREMENT, "seq"),
        TOTAL,
        "count after the second run"
    );
}

/// Whether some stderr line mentions "line" and `n` as a whole number.
fn names_line_number(stderr: &str, n: usize) -> bool {
    let want = n.to_string();
    stderr.lines().any(|l| {
        l.to_ascii_lowercase().contains("line")
            && l.split(|c: char| !c.is_ascii_digit())
                .any(|tok| tok == want)
    })
}

#[test]
fn stdin_with_malformed_lines() {
    const DB: &str = "stdin_input";
    const M: &str = "stdin_data";
    Sink::require_built();
    let influx = Influxd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &output_section(
            "influx",
            influx.port(),
            DB,
            &[
                ("batch_size", "100"),
                ("batch_timeout", "0.2"),
                ("reconnect_delay", "0.5"),
                ("max_reconnect_delay", "2"),
                ("persistent_storage_path", "backlog"),
            ],
        ),
    );

    // 1,000 lines; lines 7, 500 and 999 (1-based) are malformed.
    let malformed = [
        (7usize, "this is not line protocol\n".to_string()),
        (500, format!("{M},device=dev1 seq=\n")),
        (999, format!("{M},device=dev2\n")),
    ];
    let base = now_ns() - 3_600_000_000_000; // an hour ago, 1 µs apart
    let mut input = String::new();
    let mut seq = 0u64;
    for line_no in 1..=1000usize {
        match malformed.iter().find(|(n, _)| *n == line_no) {
            Some((_, bad)) => input.push_str(bad),
            None => {
                input.push_str(&point_line(M, seq, base + seq as i64 * 1000));
                seq += 1;
            }
        }
    }
    assert_eq!(seq, 997);
    assert_eq!(input.lines().count(), 1000);

    let mut sink = Sink::spawn_with(
        &config,
        Stdin::Bytes(input.into_bytes()),
        &["--drain-timeout", "30"],
    );
    let (code, stderr) = sink.wait();
    let summary = sink.summary();
    assert_eq!(
        code,
        Some(0),
        "exit code; summary {summary:?}\n{}",
        harness::tail(&stderr, 30)
    );
    assert_eq!(
        (
            summary.accepted,
            summary.delivered,
            summary.dropped,
            summary.rejected
        ),
        (997, 997, 0, 3),
        "summary (accepted, delivered, dropped, rejected) for 997 good and 3 malformed \
         lines with the server up; full: {summary:?}"
    );
    for (n, bad) in &malformed {
        assert!(
            names_line_number(&stderr, *n),
            "stderr does not name malformed line {n} ({:?})\n--- stderr ---\n{}",
            bad.trim_end(),
            harness::tail(&stderr, 40)
        );
    }
    assert_eq!(influx.count(DB, M, "seq"), 997, "points in InfluxDB");
    assert_eq!(
        influx.count_distinct(DB, M, "seq"),
        997,
        "distinct seq in InfluxDB"
    );
}
