//! The `influx-sink` command line: `validate` (effective settings, errors
//! that name file, line, section, key and value), `simulate` (the capacity
//! planner's reconnect schedule and limits), and what `run` logs and
//! refuses, against a real InfluxDB on 127.0.0.1.
//!
//! Needs the release binary and component (`bash tests/setup.sh`).
//! Run: `cargo test --release --test cli`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::cli::{
    assert_attempts, attempts, cli, number, parse_settings, same_time, simulate_json, validate,
    ReconnectRule,
};
use harness::{now_ns, output_section, points, write_config, Influxd, Sink, Stdin};

const MEASUREMENT: &str = "device_data";

/// The minimal output section of the gateway: every other key defaulted.
const MINIMAL: &str = "[influxdb_output]\ntransport = influxdb_out\n";

/// Write `text` as `<dir>/<name>` and return its path.
fn write_named(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

// ----- validate -----

#[derive(Debug)]
enum Want {
    Num(f64),
    Bool(bool),
    Text(&'static str),
}

#[test]
fn validate_minimal_section_prints_every_key_with_gateway_defaults() {
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), MINIMAL);
    let out = validate(&config);
    assert_eq!(out.code, Some(0), "validate failed\n{}", out.describe());

    let sections = parse_settings(&out.stdout);
    assert_eq!(
        sections.keys().collect::<Vec<_>>(),
        vec!["influxdb_output"],
        "validate should print exactly the one output section\n{}",
        out.describe()
    );
    let printed = &sections["influxdb_output"];

    let want: BTreeMap<&str, Want> = [
        ("host", Want::Text("localhost")),
        ("port", Want::Num(8086.0)),
        ("database", Want::Text("solar")),
        ("username", Want::Text("")),
        ("password", Want::Text("")),
        ("measurement", Want::Text("device_data")),
        ("batch_size", Want::Num(100.0)),
        ("max_requests_in_flight", Want::Num(4.0)),
        ("batch_timeout", Want::Num(10.0)),
        ("reconnect_attempts", Want::Num(5.0)),
        ("reconnect_delay", Want::Num(5.0)),
        ("use_exponential_backoff", Want::Bool(true)),
        ("max_reconnect_delay", Want::Num(300.0)),
        ("periodic_reconnect_interval", Want::Num(14400.0)),
        ("enable_persistent_storage", Want::Bool(true)),
        ("persistent_storage_path", Want::Text("influxdb_backlog")),
        ("max_backlog_size", Want::Num(10000.0)),
        ("max_backlog_age", Want::Num(86400.0)),
        ("connection_timeout", Want::Num(10.0)),
        ("reconnect_jitter", Want::Num(0.0)),
        ("backlog_sync", Want::Text("batch")),
        ("max_backlog_bytes", Want::Num(1073741824.0)),
        ("api", Want::Text("v1")),
        ("urls", Want::Text("http://localhost:8086")),
        ("org", Want::Text("")),
        ("bucket", Want::Text("")),
        ("token", Want::Text("")),
        ("retention_policy", Want::Text("")),
        ("precision", Want::Text("ns")),
        ("content_encoding", Want::Text("gzip")),
        ("auto_create_database", Want::Bool(true)),
        ("tls_ca_file", Want::Text("")),
        ("tls_insecure_skip_verify", Want::Bool(false)),
        ("max_rejected_bytes", Want::Num(10485760.0)),
    ]
    .into_iter()
    .collect();

    assert_eq!(
        printed.keys().map(String::as_str).collect::<Vec<_>>(),
        want.keys().copied().collect::<Vec<_>>(),
        "validate should print every key, and only the known ones\n{}",
        out.describe()
    );
    for (key, expected) in &want {
        let got = &printed[*key];
        let ok = match expected {
            Want::Num(n) => got.parse::<f64>().is_ok_and(|g| g == *n),
            Want::Bool(b) => got == &b.to_string(),
            Want::Text(t) => got == t,
        };
        assert!(
            ok,
            "`{key}` printed as `{got}`, expected {expected:?}\n{}",
            out.describe()
        );
    }

    // Where the backlog would live, resolved against the config's
    // directory; validating must not create it.
    let backlog = dir.path().join("influxdb_backlog").join("influxdb_output");
    assert!(
        out.stdout
            .contains(&format!("# backlog directory: {}", backlog.display())),
        "validate should name the backlog directory {}\n{}",
        backlog.display(),
        out.describe()
    );
    assert!(
        !dir.path().join("influxdb_backlog").exists(),
        "validate created the backlog directory"
    );
    assert!(
        out.stdout
            .contains("# source: line protocol on standard input"),
        "validate should name the input source\n{}",
        out.describe()
    );
}

#[test]
fn validate_errors_name_file_line_section_key_value_and_expectation() {
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");

    // Bad values: the bad line is line 5 of each file.
    let bad = [
        ("batch_size", "lots"),
        ("batch_size", "0"),
        ("port", "70000"),
        ("use_exponential_backoff", "maybe"),
        ("reconnect_delay", "-1"),
        ("max_backlog_size", "0"),
        ("connection_timeout", "0"),
        ("reconnect_jitter", "1.5"),
        ("host", "http://127.0.0.1"),
    ];
    for (i, (key, value)) in bad.iter().enumerate() {
        let name = format!("bad-value-{i}.ini");
        let config = write_named(
            dir.path(),
            &name,
            &format!("# gateway outputs\n[out]\ntransport = influxdb_out\n\n{key} = {value}\n"),
        );
        let out = validate(&config);
        assert_eq!(
            out.code,
            Some(2),
            "{key} = {value} must be refused with exit code 2\n{}",
            out.describe()
        );
        for part in [name.as_str(), "line 5", "[out]", key, value, "expected"] {
            assert!(
                out.stderr.contains(part),
                "error for `{key} = {value}` does not mention `{part}`\n{}",
                out.describe()
            );
        }
        assert!(
            out.stdout.trim().is_empty(),
            "an invalid config must print no settings\n{}",
            out.describe()
        );
    }

    // An unknown key is a warning naming it; the rest is still valid.
    let config = write_named(
        dir.path(),
        "unknown-key.ini",
        "[out]\ntransport = influxdb_out\nbatchsize = 500\n",
    );
    let out = validate(&config);
    assert_eq!(
        out.code,
        Some(0),
        "an unknown key only warns\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("batchsize") && out.stderr.contains("unknown-key.ini"),
        "the warning should name the unknown key and the file\n{}",
        out.describe()
    );
    assert_eq!(
        number(&parse_settings(&out.stdout)["out"], "batch_size"),
        100.0,
        "the misspelt key must not change batch_size\n{}",
        out.describe()
    );

    // A syntax error names its line.
    let config = write_named(
        dir.path(),
        "syntax.ini",
        "[out]\ntransport = influxdb_out\nport 8086\n",
    );
    let out = validate(&config);
    assert_eq!(out.code, Some(2), "syntax error\n{}", out.describe());
    for part in ["syntax.ini", "line 3", "port 8086"] {
        assert!(
            out.stderr.contains(part),
            "syntax error message lacks `{part}`\n{}",
            out.describe()
        );
    }

    // A missing file.
    let missing = dir.path().join("no-such-config.ini");
    let out = validate(&missing);
    assert_eq!(out.code, Some(2), "missing file\n{}", out.describe());
    assert!(
        out.stderr.contains("no-such-config.ini"),
        "the error should name the missing file\n{}",
        out.describe()
    );

    // No output section at all.
    let config = write_named(
        dir.path(),
        "no-output.ini",
        "[modbus]\ntransport = modbus_rtu\n",
    );
    let out = validate(&config);
    assert_eq!(out.code, Some(2), "no output section\n{}", out.describe());
    for part in ["no-output.ini", "no output section", "influxdb_out"] {
        assert!(
            out.stderr.contains(part),
            "the error should mention `{part}`\n{}",
            out.describe()
        );
    }
}

// ----- run: a bad config starts nothing -----

#[test]
fn run_with_an_invalid_second_output_starts_nothing() {
    const DB: &str = "half_configured";
    Sink::require_built();
    let influx = Influxd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "{}[second]\ntransport = influxdb_out\nhost = 127.0.0.1\nport = {}\n\
         persistent_storage_path = second_backlog\nbatch_size = plenty\n",
        output_section(
            "first",
            influx.port(),
            DB,
            &[("batch_size", "10"), ("batch_timeout", "0.1")]
        ),
        influx.port()
    );
    let config = write_config(dir.path(), &text);

    let mut sink = Sink::spawn_with(
        &config,
        Stdin::Bytes(points(MEASUREMENT, 100, now_ns()).into_bytes()),
        &["--drain-timeout", "5"],
    );
    let (code, stderr) = sink.wait();
    assert_eq!(
        code,
        Some(2),
        "a config with an invalid output must be refused with exit code 2\n{stderr}"
    );
    for part in ["[second]", "batch_size", "plenty", "expected", "line 14"] {
        assert!(
            stderr.contains(part),
            "the error should mention `{part}`\n{stderr}"
        );
    }
    for backlog in ["influxdb_backlog", "second_backlog"] {
        assert!(
            !dir.path().join(backlog).exists(),
            "a refused config created the backlog directory {backlog}"
        );
    }
    let v = influx.query("", "SHOW DATABASES");
    let dbs: Vec<&str> = v["results"][0]["series"][0]["values"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r[0].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !dbs.contains(&DB),
        "the valid first output reached InfluxDB (database {DB} exists: {dbs:?})"
    );
}

// ----- simulate -----

fn defaults_rule() -> ReconnectRule {
    ReconnectRule {
        reconnect_delay: 5.0,
        use_exponential_backoff: true,
        reconnect_attempts: 5,
        max_reconnect_delay: 300.0,
    }
}

fn recovered_at(report: &serde_json::Value) -> f64 {
    report["recovered_at_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("no recovered_at_s in {report}"))
}

#[test]
fn simulate_json_follows_the_gateway_schedule_with_defaults() {
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), MINIMAL);
    let rule = defaults_rule();

    let cases = [
        ("3", vec![(5.0, true)], 5.0),
        ("30", vec![(5.0, false), (15.0, false), (35.0, true)], 35.0),
        (
            "600",
            vec![
                (5.0, false),
                (15.0, false),
                (35.0, false),
                (75.0, false),
                (155.0, false),
                (455.0, false),
                (755.0, true),
            ],
            755.0,
        ),
    ];
    for (outage, want, recovered) in cases {
        // The rule model agrees with the documented numbers ...
        assert_attempts(
            &rule.schedule(outage.parse().unwrap(), None),
            &want,
            &format!("rule model, outage {outage}"),
        );
        // ... and so does the planner.
        let report = simulate_json(&config, &["--outage", outage]);
        assert_eq!(report["output"], "influxdb_output", "{report}");
        assert_attempts(
            &attempts(&report),
            &want,
            &format!("simulate --outage {outage}"),
        );
        assert!(
            same_time(recovered_at(&report), recovered),
            "outage {outage}: recovered_at_s {} != {recovered}\n{report}",
            report["recovered_at_s"]
        );
        assert_eq!(
            report["dropped"], 0,
            "outage {outage}: nothing should be dropped\n{report}"
        );
        // The planner flushes the last partial batch when its input ends,
        // as `run` does, so every accepted point is accounted for.
        assert_eq!(
            report["accepted"], report["delivered"],
            "outage {outage}: every accepted point must be delivered\n{report}"
        );
    }
}

#[test]
fn simulate_hang_waits_for_connection_timeout_before_each_retry() {
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        "[influxdb_output]\ntransport = influxdb_out\nconnection_timeout = 10\n",
    );
    let rule = defaults_rule();
    for outage in [30.0, 600.0] {
        let o = outage.to_string();
        let refused = attempts(&simulate_json(&config, &["--outage", &o]));
        let report = simulate_json(&config, &["--outage", &o, "--hang"]);
        let hung = attempts(&report);
        assert_attempts(
            &hung,
            &rule.schedule(outage, Some(10.0)),
            &format!("simulate --hang --outage {o}"),
        );
        assert!(
            hung[0].0 > refused[0].0 + 9.99,
            "a hanging server should delay the first attempt by connection_timeout: \
             hang {hung:?}, refused {refused:?}"
        );
        assert!(
            recovered_at(&report) >= refused.last().unwrap().0,
            "a hanging server cannot recover sooner than a refusing one: \
             hang {hung:?}, refused {refused:?}"
        );
    }
    // Pinned numbers for 600 s: 0 + 10 timeout + 5, then +10 +10, ...
    let report = simulate_json(&config, &["--outage", "600", "--hang"]);
    assert_attempts(
        &attempts(&report),
        &[
            (15.0, false),
            (35.0, false),
            (65.0, false),
            (115.0, false),
            (205.0, false),
            (515.0, false),
            (825.0, true),
        ],
        "simulate --hang --outage 600",
    );
}

#[test]
fn simulate_size_limit_drops_the_excess() {
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        "[influxdb_output]\ntransport = influxdb_out\nmax_backlog_size = 100\n",
    );
    let report = simulate_json(&config, &["--outage", "600", "--rate", "10"]);
    let get = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no `{k}` in {report}"))
    };
    assert!(
        get("dropped") > 0,
        "a 100-point backlog must drop\n{report}"
    );
    assert_eq!(
        get("backlog_peak"),
        100,
        "the backlog must peak at max_backlog_size\n{report}"
    );
    assert_eq!(
        get("accepted"),
        get("delivered") + get("dropped"),
        "every accepted point is delivered or dropped\n{report}"
    );
    // Without the limit nothing is dropped and the backlog grows past it.
    let unlimited = simulate_json(
        &write_named(dir.path(), "unlimited.ini", MINIMAL),
        &["--outage", "600", "--rate", "10"],
    );
    assert_eq!(unlimited["dropped"], 0, "{unlimited}");
    assert!(
        unlimited["backlog_peak"].as_u64().unwrap() > 100,
        "{unlimited}"
    );
}

#[test]
fn simulate_output_picks_the_section_and_bad_usage_is_refused() {
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        "[a]\ntransport = influxdb_out\n\n[b]\ntransport = influxdb_out\n\
         persistent_storage_path = other\nreconnect_delay = 1\nuse_exponential_backoff = false\n",
    );
    let first = simulate_json(&config, &["--outage", "30"]);
    assert_eq!(first["output"], "a", "{first}");
    let second = simulate_json(&config, &["--outage", "3.5", "--output", "b"]);
    assert_eq!(second["output"], "b", "{second}");
    let rule_b = ReconnectRule {
        reconnect_delay: 1.0,
        use_exponential_backoff: false,
        reconnect_attempts: 5,
        max_reconnect_delay: 300.0,
    };
    assert_attempts(
        &attempts(&second),
        &rule_b.schedule(3.5, None),
        "simulate --output b",
    );

    let cwd = dir.path();
    let c = path_str(&config);
    for (args, what) in [
        (vec!["simulate", c, "--json"], "no --outage"),
        (
            vec!["simulate", c, "--outage", "soon"],
            "--outage not a number",
        ),
        (
            vec!["simulate", c, "--outage", "5", "--output", "zz"],
            "unknown --output",
        ),
        (
            vec!["simulate", c, "--outage", "5", "--bogus"],
            "unknown option",
        ),
    ] {
        let out = cli(&args, cwd);
        assert_eq!(
            out.code,
            Some(2),
            "{what}: expected exit code 2\n{}",
            out.describe()
        );
    }
}

#[test]
fn simulate_text_lists_attempts_and_disk_needed() {
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), MINIMAL);
    let out = cli(
        &["simulate", path_str(&config), "--outage", "30"],
        dir.path(),
    );
    assert_eq!(out.code, Some(0), "simulate failed\n{}", out.describe());
    // `  attempt   1 at      5.000 s: failed`
    let lines: Vec<(u64, f64, bool)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("attempt ")?;
            let (n, rest) = rest.trim().split_once(" at ")?;
            let (at, outcome) = rest.trim().split_once(" s: ")?;
            Some((
                n.trim().parse().ok()?,
                at.trim().parse().ok()?,
                match outcome.trim() {
                    "connected" => true,
                    "failed" => false,
                    _ => return None,
                },
            ))
        })
        .collect();
    assert_eq!(
        lines.iter().map(|l| l.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "three numbered attempt lines expected\n{}",
        out.describe()
    );
    assert_attempts(
        &lines.iter().map(|l| (l.1, l.2)).collect::<Vec<_>>(),
        &[(5.0, false), (15.0, false), (35.0, true)],
        "simulate text",
    );
    for part in [
        "localhost:8086",
        "delivery resumed at 35.000 s",
        "backlog peak:",
        "dropped by size/age limits: 0",
        "disk needed",
    ] {
        assert!(
            out.stdout.contains(part),
            "simulate text lacks `{part}`\n{}",
            out.describe()
        );
    }
}

// ----- run: what the operator sees in the log -----

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn run_logs_outage_once_and_recovery_in_gateway_words() {
    const TOTAL: u64 = 5_000;
    const DB: &str = "cli_logs";
    Sink::require_built();
    // A server that exists (its port is known) but is down: refused.
    let mut influx = Influxd::start();
    influx.stop();

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
                ("reconnect_delay", "0.2"),
            ],
        ),
    );
    let input = points(MEASUREMENT, TOTAL, now_ns() - 60_000_000_000);
    let mut sink = Sink::spawn_with(
        &config,
        Stdin::Bytes(input.into_bytes()),
        &["--drain-timeout", "2"],
    );
    let (code, stderr) = sink.wait();
    assert_eq!(
        code,
        Some(3),
        "points left in the backlog: exit code 3\n{stderr}"
    );
    let summary = sink.summary();
    assert_eq!(summary.accepted, TOTAL, "{summary:?}");
    assert_eq!(summary.backlogged, TOTAL, "{summary:?}");
    assert_eq!(summary.dropped + summary.rejected, 0, "{summary:?}");
    assert_eq!(
        count_lines(
            &stderr,
            "Not connected to InfluxDB, storing data in backlog"
        ),
        1,
        "the outage should be announced exactly once\n{stderr}"
    );
    let lines = stderr.lines().count();
    assert!(
        lines < 50,
        "{lines} stderr lines for {TOTAL} points: the log must not grow per point\n{stderr}"
    );
    assert!(
        dir.path().join("influxdb_backlog").join("influx").is_dir(),
        "the backlog directory influxdb_backlog/influx is missing"
    );

    // The server is back: a run with no new input flushes the backlog.
    influx.start_again();
    let mut sink = Sink::spawn_with(&config, Stdin::Empty, &["--drain-timeout", "60"]);
    let (code, stderr) = sink.wait();
    assert_eq!(code, Some(0), "the backlog should drain\n{stderr}");
    assert!(
        stderr.contains("Connected to InfluxDB") || stderr.contains("Successfully reconnected"),
        "no connection line\n{stderr}"
    );
    for line in [
        "Found 5000 backlog points from an earlier run",
        "Flushing 5000 backlog points to InfluxDB",
        "Successfully wrote 5000 backlog points to InfluxDB",
    ] {
        assert_eq!(
            count_lines(&stderr, line),
            1,
            "expected `{line}` once\n{stderr}"
        );
    }
    let summary = sink.summary();
    assert_eq!(summary.delivered, TOTAL, "{summary:?}");
    assert_eq!(summary.backlogged, 0, "{summary:?}");
    assert_eq!(influx.count(DB, MEASUREMENT, "seq"), TOTAL);
}

#[test]
fn run_performs_periodic_reconnects_while_input_is_open() {
    const DB: &str = "cli_periodic";
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
                ("periodic_reconnect_interval", "1"),
                ("batch_size", "10"),
                ("batch_timeout", "0.2"),
            ],
        ),
    );
    let mut sink = Sink::spawn_with(&config, Stdin::Pipe, &["--drain-timeout", "30"]);
    sink.write_stdin(points(MEASUREMENT, 10, now_ns() - 60_000_000_000).as_bytes());

    // Two health checks in a row: the check repeats, it is not a one-off.
    let healthy = "Periodic reconnect: connection to InfluxDB is healthy";
    let seen = harness::wait_until(Duration::from_secs(30), || {
        count_lines(&sink.stderr_text(), healthy) >= 2
    });
    assert!(
        seen,
        "no two `{healthy}` lines within 30 s with periodic_reconnect_interval = 1\n{}",
        sink.stderr_tail(30)
    );
    sink.close_stdin();
    let (code, stderr) = sink.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        count_lines(&stderr, "Performing periodic reconnect to InfluxDB") >= 2,
        "{stderr}"
    );
    assert_eq!(
        count_lines(&stderr, "Not connected to InfluxDB"),
        0,
        "a healthy periodic check must not look like an outage\n{stderr}"
    );
    assert_eq!(influx.count(DB, MEASUREMENT, "seq"), 10);
}

// ----- compile and the compile cache -----

#[test]
fn compile_once_then_start_from_the_cache_or_a_cwasm() {
    Sink::require_built();
    let influx = Influxd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let component = harness::component_path();
    let cwasm = d.join("sink.cwasm");
    let out = cli(
        &["compile", path_str(&component), "-o", path_str(&cwasm)],
        d,
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.stdout.starts_with("compiled "), "{}", out.describe());
    assert!(cwasm.metadata().expect("the .cwasm").len() > 0);

    let config = write_config(
        d,
        &output_section(
            "influx",
            influx.port(),
            "cached",
            &[("persistent_storage_path", "backlog")],
        ),
    );
    let cache = d.join("cache");
    let run = |component: &Path, cache_args: &[&str]| {
        let mut args = vec![
            "run",
            path_str(&config),
            "--component",
            path_str(component),
            "--no-watch",
            "--drain-timeout",
            "10",
        ];
        args.extend_from_slice(cache_args);
        let out = cli(&args, d);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        out.stderr
    };
    let with_cache = ["--cache-dir", path_str(&cache)];
    let first = run(&component, &with_cache);
    assert!(first.contains("compiled, cached as"), "{first}");
    let second = run(&component, &with_cache);
    assert!(second.contains("from the compile cache"), "{second}");
    let third = run(&cwasm, &["--no-cache"]);
    assert!(third.contains("precompiled (.cwasm)"), "{third}");
    // A damaged cache entry is noticed, dropped and rebuilt.
    let entry = std::fs::read_dir(&cache)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("a cache entry");
    std::fs::write(&entry, b"not compiled code").expect("damage the entry");
    let fourth = run(&component, &with_cache);
    assert!(fourth.contains("compiled, cached as"), "{fourth}");
    // A file that is not a component: refused with its name.
    let junk = write_named(d, "junk.wasm", "junk");
    let out = cli(&["compile", path_str(&junk), "-o", path_str(&cwasm)], d);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stderr.contains("junk.wasm"), "{}", out.describe());
}
