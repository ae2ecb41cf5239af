//! End to end (c): the server is hung (SIGSTOP: the kernel accepts TCP
//! connections, nothing ever answers). The source must not stall behind
//! it: every generated point is read and kept in the backlog, and a later
//! run delivers them all once the server answers again.
//!
//! Needs the release binary and component:
//!   cargo build --release -p influx-sink-host
//!   cargo build --profile ship -p influx-sink-component --target wasm32-wasip2
//! Run: `cargo test --release --test e2e_hung`

use std::time::Duration;

use harness::{generator_section, output_section, write_config, Influxd, Sink, Stdin};

const TOTAL: u64 = 50_000;
const DB: &str = "hung";
const M: &str = "device_data";

fn hung_output(port: u16) -> String {
    output_section(
        "influx",
        port,
        DB,
        &[
            ("batch_size", "500"),
            ("batch_timeout", "0.2"),
            ("reconnect_delay", "0.5"),
            ("max_reconnect_delay", "2"),
            ("connection_timeout", "1"),
            ("enable_persistent_storage", "true"),
            ("persistent_storage_path", "backlog"),
            ("max_backlog_size", "1000000"),
        ],
    )
}

#[test]
fn hung_server_does_not_stall_the_source() {
    Sink::require_built();
    let mut influx = Influxd::start();
    influx.pause();

    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &format!(
            "{}{}",
            generator_section(TOTAL, 0, &[("measurement", M)]),
            hung_output(influx.port())
        ),
    );
    let mut sink = Sink::spawn_with(&config, Stdin::Empty, &["--drain-timeout", "3"]);

    // With the input finite and a 3 s drain timeout it must end by itself.
    // If it does not, SIGTERM it to get its summary and report both.
    let exited = sink.wait_timeout(Duration::from_secs(120));
    let ended_by_itself = exited.is_some();
    let (code, stderr) = match exited {
        Some(r) => r,
        None => {
            sink.sigterm();
            sink.wait_timeout(Duration::from_secs(30))
                .unwrap_or_else(|| {
                    sink.kill9();
                    panic!(
                        "sink ignored its 3 s drain timeout and then SIGTERM with the server \
                     hung\n--- stderr tail ---\n{}",
                        sink.stderr_tail(30)
                    )
                })
        }
    };
    let summary = sink.summary();
    assert_eq!(
        summary.accepted,
        TOTAL,
        "the source stalled behind the hung server: only {} of {TOTAL} points read; \
         summary {summary:?}\n--- stderr tail ---\n{}",
        summary.accepted,
        harness::tail(&stderr, 30)
    );
    assert!(
        ended_by_itself,
        "sink did not exit within 120 s despite --drain-timeout 3 (needed SIGTERM)"
    );
    assert_eq!(
        code,
        Some(3),
        "exit code with undelivered points in the backlog; summary {summary:?}\n{}",
        harness::tail(&stderr, 30)
    );
    // `backlogged` is either what remains in the backlog at exit or the
    // cumulative count of points written to it; with nothing delivered
    // both must cover every point.
    assert!(
        summary.backlogged >= TOTAL,
        "every point must have reached the backlog by exit; summary {summary:?}"
    );
    assert_eq!(
        (summary.delivered, summary.dropped, summary.rejected),
        (0, 0, 0),
        "(delivered, dropped, rejected) with a server that never answers; full: {summary:?}"
    );

    // The server answers again; a run with no source delivers the backlog.
    influx.resume();
    let config2 = write_config(dir.path(), &hung_output(influx.port()));
    let mut again = Sink::spawn_with(&config2, Stdin::Empty, &["--drain-timeout", "120"]);
    let (code2, stderr2) = again.wait();
    let summary2 = again.summary();
    let count = influx.count(DB, M, "seq");
    let distinct = influx.count_distinct(DB, M, "seq");
    assert_eq!(
        code2,
        Some(0),
        "second run exit code; summary {summary2:?}; {distinct} distinct points in InfluxDB\n{}",
        harness::tail(&stderr2, 30)
    );
    assert_eq!(
        distinct, TOTAL,
        "distinct seq values in InfluxDB after the server resumed"
    );
    assert_eq!(count, TOTAL, "points in InfluxDB after the server resumed");
    assert_eq!(
        summary2.dropped, 0,
        "second run dropped points: {summary2:?}"
    );
}
