//! End to end: what real servers answer, and what the sink makes of it.
//! InfluxDB 1.x and VictoriaMetrics are started by the tests on loopback.
//!
//! Needs the release binary and component (see tests/harness/sink.rs).
//! Run: `cargo test --release --test e2e_answers`

use harness::{now_ns, output_section, write_config, Influxd, Sink, VictoriaMetrics};

/// `n` points of measurement `m`, field `v` a float, except at `strings`
/// where it is a string: a type conflict once the float is stored.
fn conflicting_lines(n: u64, strings: &[u64], ts0: i64) -> String {
    (0..n)
        .map(|i| {
            let v = if strings.contains(&i) {
                format!("\"text {i}\"")
            } else {
                format!("{i}.5")
            };
            format!(
                "m,dev=d{} seq={i}i,v={v} {}\n",
                i % 3,
                ts0 + i as i64 * 1000
            )
        })
        .collect()
}

#[test]
fn type_conflict_is_dead_lettered_and_the_stream_continues() {
    const DB: &str = "conflict";
    let strings = [100, 101, 250, 377, 499];
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
                ("batch_size", "50"),
                ("batch_timeout", "0.2"),
                ("persistent_storage_path", "backlog"),
            ],
        ),
    );
    let input = conflicting_lines(500, &strings, now_ns() - 60_000_000_000);
    let mut sink = Sink::spawn(&config, Some(input.into_bytes()));
    let (code, stderr) = sink.wait();
    let summary = sink.summary();
    assert_eq!(
        (
            summary.accepted,
            summary.delivered,
            summary.rejected,
            summary.backlogged
        ),
        (500, 495, 5, 0),
        "summary {summary:?}\n{}",
        harness::tail(&stderr, 30)
    );
    assert_eq!(code, Some(0), "{}", harness::tail(&stderr, 30));
    assert_eq!(
        influx.count(DB, "m", "seq"),
        495,
        "valid points in InfluxDB"
    );
    // The conflicting points, and only they, are in the dead-letter file.
    let dead = std::fs::read_to_string(dir.path().join("backlog/influx/rejected.lp"))
        .expect("rejected.lp beside the backlog");
    let lines: Vec<&str> = dead.lines().filter(|l| !l.starts_with('#')).collect();
    let mut seqs: Vec<u64> = lines
        .iter()
        .map(|l| {
            let at = l.find("seq=").unwrap() + 4;
            l[at..].split('i').next().unwrap().parse().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, strings.to_vec(), "dead letters:\n{dead}");
    assert!(
        dead.lines()
            .any(|l| l.starts_with('#') && l.contains("field type conflict")),
        "the server's reason is kept:\n{dead}"
    );
    assert!(stderr.contains("field type conflict"), "{stderr}");
}

#[test]
fn write_precision_is_honoured() {
    const DB: &str = "precision";
    Sink::require_built();
    let influx = Influxd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &output_section(
            "influx",
            influx.port(),
            DB,
            &[("precision", "s"), ("persistent_storage_path", "backlog")],
        ),
    );
    let ts = 1_700_000_000_123_456_789i64;
    let input: String = (0..5)
        .map(|i| format!("p,dev=d{i} v={i} {}\n", ts + i))
        .collect();
    let mut sink = Sink::spawn(&config, Some(input.into_bytes()));
    let (code, stderr) = sink.wait();
    assert_eq!(code, Some(0), "{}", harness::tail(&stderr, 20));
    let r = influx.query(DB, "SELECT v FROM p");
    // The harness asks for epoch=ns times.
    let times: Vec<i64> = r["results"][0]["series"][0]["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|row| row[0].as_i64().expect("a numeric time"))
        .collect();
    assert_eq!(times, vec![1_700_000_000_000_000_000; 5], "{r}");
}

/// VictoriaMetrics through its InfluxDB endpoints: `/write` (api = v1)
/// and `/api/v2/write` (api = v2), gzip on (the default).
#[test]
fn victoria_metrics_takes_both_write_apis() {
    Sink::require_built();
    let vm = VictoriaMetrics::start();
    for (api, measurement) in [("v1", "via_v1"), ("v2", "via_v2")] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut extra = vec![
            ("api", api),
            ("batch_size", "500"),
            ("persistent_storage_path", "backlog"),
        ];
        if api == "v2" {
            extra.extend([("org", "edge"), ("bucket", "solar"), ("token", "unused")]);
        }
        let config = write_config(
            dir.path(),
            &output_section("vm", vm.port(), "solar", &extra),
        );
        let input = harness::points(measurement, 3_000, now_ns() - 600_000_000_000);
        let mut sink = Sink::spawn(&config, Some(input.into_bytes()));
        let (code, stderr) = sink.wait();
        assert_eq!(code, Some(0), "api {api}: {}", harness::tail(&stderr, 20));
        assert_eq!(sink.summary().delivered, 3_000, "api {api}");
        vm.force_flush();
        let selector = format!("{{__name__=\"{measurement}_seq\"}}");
        let stored = harness::wait_until(std::time::Duration::from_secs(20), || {
            vm.force_flush();
            vm.count_samples(&selector) >= 3_000
        });
        assert!(stored, "api {api}: {} samples", vm.count_samples(&selector));
        assert_eq!(vm.count_samples(&selector), 3_000, "api {api}: duplicates");
    }
}
