//! The three example configurations of the gateway's InfluxDB output
//! documentation ("Configuration Examples"), copied verbatim: each is
//! accepted by `influx-sink validate` with the values it sets; the two that
//! name a local server run as they are (against a closed 127.0.0.1:8086,
//! keeping every point across restarts); the remote one is only simulated.
//!
//! Needs the release binary and component (`bash tests/setup.sh`).
//! Run: `cargo test --release --test examples`

use std::collections::BTreeMap;
use std::path::Path;

use harness::cli::{
    assert_attempts, attempts, boolean, listening_on_loopback, number, parse_settings,
    simulate_json, validate, ReconnectRule,
};
use harness::{dir_size, now_ns, points, write_config, Sink, Stdin};

/// "For Stable Networks (Local InfluxDB)".
const STABLE: &str = r"[influxdb_output]
transport = influxdb_out
host = localhost
port = 8086
database = solar

# Standard reconnection
reconnect_attempts = 3
reconnect_delay = 2.0
use_exponential_backoff = false

# Periodic reconnection
periodic_reconnect_interval = 1800.0  # 30 minutes

# Minimal persistent storage
enable_persistent_storage = true
max_backlog_size = 1000
max_backlog_age = 3600  # 1 hour
";

/// "For Unstable Networks (Remote InfluxDB)". Never run: it names an
/// outside server.
const UNSTABLE: &str = r"[influxdb_output]
transport = influxdb_out
host = remote.influxdb.com
port = 8086
database = solar

# Aggressive reconnection with exponential backoff
reconnect_attempts = 10
reconnect_delay = 5.0
use_exponential_backoff = true
max_reconnect_delay = 600.0  # 10 minutes

# Frequent periodic reconnection
periodic_reconnect_interval = 900.0  # 15 minutes

# Large persistent storage for extended outages
enable_persistent_storage = true
max_backlog_size = 50000
max_backlog_age = 604800  # 1 week
";

/// "For High-Volume Data".
const HIGH_VOLUME: &str = r"[influxdb_output]
transport = influxdb_out
host = localhost
port = 8086
database = solar

# Fast reconnection for high availability
reconnect_attempts = 5
reconnect_delay = 1.0
use_exponential_backoff = true
max_reconnect_delay = 60.0

# Less frequent periodic reconnection (data keeps connection alive)
periodic_reconnect_interval = 14400.0  # 4 hours (default)

# Large backlog for high data rates
enable_persistent_storage = true
max_backlog_size = 100000
max_backlog_age = 86400  # 24 hours

# Optimized batching
batch_size = 500
batch_timeout = 5.0
";

/// The gateway documentation the examples come from, where it is present.
const REFERENCE: &str = "/work/shared/reference/gateway-influxdb-output.md";

/// The examples' section name, and the backlog directory it gets.
const SECTION: &str = "influxdb_output";
/// Points fed to each run.
const POINTS: u64 = 200;

/// Fail if the documentation is at hand and no longer holds `example`
/// verbatim as an `ini` block (the constants here went stale).
fn check_verbatim(example: &str, title: &str) {
    let Ok(doc) = std::fs::read_to_string(REFERENCE) else {
        eprintln!("{REFERENCE} not found: not re-checking that `{title}` is verbatim");
        return;
    };
    assert!(
        doc.contains(&format!("```ini\n{example}```")),
        "the example `{title}` is not (any more) verbatim in {REFERENCE}"
    );
}

/// `validate` the example: exit 0, no warnings about unknown keys, and
/// the effective settings of its one output.
fn validated(example: &str, title: &str, dir: &Path) -> BTreeMap<String, String> {
    check_verbatim(example, title);
    let config = write_config(dir, example);
    let out = validate(&config);
    assert_eq!(
        out.code,
        Some(0),
        "`{title}` must validate\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("unknown key"),
        "`{title}` uses keys influx-sink does not know\n{}",
        out.describe()
    );
    let mut sections = parse_settings(&out.stdout);
    assert_eq!(
        sections.keys().collect::<Vec<_>>(),
        vec![SECTION],
        "`{title}`: one output expected\n{}",
        out.describe()
    );
    sections.remove(SECTION).expect("section present")
}

fn assert_settings(
    settings: &BTreeMap<String, String>,
    title: &str,
    numbers: &[(&str, f64)],
    texts: &[(&str, &str)],
) {
    for (key, want) in numbers {
        assert_eq!(
            number(settings, key),
            *want,
            "`{title}`: effective {key}\n{settings:?}"
        );
    }
    for (key, want) in texts {
        assert_eq!(
            settings.get(*key).map(String::as_str),
            Some(*want),
            "`{title}`: effective {key}\n{settings:?}"
        );
    }
}

/// Run the example as it is (localhost:8086, nothing listening) with
/// `POINTS` points, then again with no input: both keep every point in the
/// backlog beside the config file.
fn run_as_is(example: &str, title: &str) {
    if listening_on_loopback(8086) {
        eprintln!(
            "SKIPPED the run of `{title}`: something listens on 127.0.0.1:8086, \
             and this test needs that port closed"
        );
        return;
    }
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), example);
    let input = points("device_data", POINTS, now_ns() - 60_000_000_000);
    let mut sink = Sink::spawn_with(
        &config,
        Stdin::Bytes(input.into_bytes()),
        &["--drain-timeout", "1"],
    );
    let (code, stderr) = sink.wait();
    assert_eq!(
        code,
        Some(3),
        "`{title}` with no server: points stay in the backlog, exit code 3\n{stderr}"
    );
    let summary = sink.summary();
    assert_eq!(summary.accepted, POINTS, "`{title}`: {summary:?}");
    assert_eq!(summary.backlogged, POINTS, "`{title}`: {summary:?}");
    assert_eq!(
        summary.dropped + summary.rejected,
        0,
        "`{title}`: {summary:?}"
    );
    let backlog = dir.path().join("influxdb_backlog").join(SECTION);
    assert!(
        backlog.is_dir() && dir_size(&backlog) > 0,
        "`{title}`: no backlog in {} next to the config",
        backlog.display()
    );

    // A restart with no new input: the same points are still pending.
    let mut sink = Sink::spawn_with(&config, Stdin::Empty, &["--drain-timeout", "1"]);
    let (code, stderr) = sink.wait();
    assert_eq!(
        code,
        Some(3),
        "`{title}` second run: the backlog is still pending\n{stderr}"
    );
    let summary = sink.summary();
    assert_eq!(
        summary.backlogged, POINTS,
        "`{title}` second run: points were lost across the restart: {summary:?}\n{stderr}"
    );
    assert_eq!(summary.dropped, 0, "`{title}` second run: {summary:?}");
    assert!(
        stderr.contains(&format!(
            "Found {POINTS} backlog points from an earlier run"
        )),
        "`{title}` second run should report the backlog it found\n{stderr}"
    );
}

#[test]
fn stable_network_example_validates_and_runs_as_is() {
    let title = "For Stable Networks";
    let dir = tempfile::tempdir().expect("temp dir");
    Sink::require_built();
    let s = validated(STABLE, title, dir.path());
    assert_settings(
        &s,
        title,
        &[
            ("port", 8086.0),
            ("reconnect_attempts", 3.0),
            ("reconnect_delay", 2.0),
            ("periodic_reconnect_interval", 1800.0),
            ("max_backlog_size", 1000.0),
            ("max_backlog_age", 3600.0),
            // not set: the gateway's defaults
            ("batch_size", 100.0),
            ("max_reconnect_delay", 300.0),
        ],
        &[("host", "localhost"), ("database", "solar")],
    );
    assert!(!boolean(&s, "use_exponential_backoff"), "{s:?}");
    assert!(boolean(&s, "enable_persistent_storage"), "{s:?}");
    run_as_is(STABLE, title);
}

#[test]
fn high_volume_example_validates_and_runs_as_is() {
    let title = "For High-Volume Data";
    let dir = tempfile::tempdir().expect("temp dir");
    Sink::require_built();
    let s = validated(HIGH_VOLUME, title, dir.path());
    assert_settings(
        &s,
        title,
        &[
            ("port", 8086.0),
            ("reconnect_attempts", 5.0),
            ("reconnect_delay", 1.0),
            ("max_reconnect_delay", 60.0),
            ("periodic_reconnect_interval", 14400.0),
            ("max_backlog_size", 100000.0),
            ("max_backlog_age", 86400.0),
            ("batch_size", 500.0),
            ("batch_timeout", 5.0),
        ],
        &[("host", "localhost"), ("database", "solar")],
    );
    assert!(boolean(&s, "use_exponential_backoff"), "{s:?}");
    run_as_is(HIGH_VOLUME, title);
}

#[test]
fn unstable_network_example_validates_and_its_schedule_simulates() {
    const OUTAGE: f64 = 3600.0;
    let title = "For Unstable Networks";
    let dir = tempfile::tempdir().expect("temp dir");
    Sink::require_built();
    let s = validated(UNSTABLE, title, dir.path());
    assert_settings(
        &s,
        title,
        &[
            ("port", 8086.0),
            ("reconnect_attempts", 10.0),
            ("reconnect_delay", 5.0),
            ("max_reconnect_delay", 600.0),
            ("periodic_reconnect_interval", 900.0),
            ("max_backlog_size", 50000.0),
            ("max_backlog_age", 604800.0),
        ],
        &[("host", "remote.influxdb.com"), ("database", "solar")],
    );
    assert!(boolean(&s, "use_exponential_backoff"), "{s:?}");

    // The schedule, from the rule and the validated settings: the delay
    // doubles from 5 s up to the 600 s cap for 10 attempts, then the sink
    // keeps trying every max_reconnect_delay.
    let rule = ReconnectRule::from_settings(&s);
    let want = rule.schedule(OUTAGE, None);
    let delays: Vec<f64> = (1..=10).map(|n| rule.delay(n)).collect();
    assert_eq!(
        delays,
        vec![5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0, 600.0],
        "rule model"
    );
    let first_ten: Vec<f64> = want.iter().take(10).map(|a| a.0).collect();
    assert_eq!(
        first_ten,
        vec![5.0, 15.0, 35.0, 75.0, 155.0, 315.0, 635.0, 1235.0, 1835.0, 2435.0],
        "rule model"
    );
    assert!(
        want[10..]
            .windows(2)
            .all(|w| (w[1].0 - w[0].0 - 600.0).abs() < 1e-9),
        "rule model: every 600 s after the 10th attempt: {want:?}"
    );

    // Never run (it would contact remote.influxdb.com): simulate it.
    let config = dir.path().join("influx-sink.ini");
    let report = simulate_json(&config, &["--outage", "3600"]);
    let got = attempts(&report);
    assert_attempts(
        &got,
        &want,
        "simulate --outage 3600 of the unstable example",
    );
    assert!(
        got[..got.len() - 1].iter().all(|a| !a.1 && a.0 < OUTAGE),
        "every attempt during the outage fails: {got:?}"
    );
    let recovered = report["recovered_at_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("not recovered: {report}"));
    assert!(
        (OUTAGE..OUTAGE + 600.0).contains(&recovered),
        "delivery should resume within one max_reconnect_delay after the outage: {report}"
    );
    assert_eq!(
        report["dropped"], 0,
        "a 1-hour outage at 10 points/s fits the 50000-point backlog: {report}"
    );
}
