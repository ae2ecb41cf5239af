//! End to end: a writer faster than InfluxDB, feeding stdin with lines as a
//! device sends them (no timestamps, one series) through the default
//! config, with the server up the whole time. Nothing may be merged,
//! dropped or miscounted.
//!
//! Run: `cargo test --release --test e2e_fast_writer`

use harness::{output_section, write_config, Influxd, Sink, Stdin};

/// `n` lines of one device, without timestamps: `M,device=inv1 v=<i>.5,seq=<i>i`.
fn untimestamped(measurement: &str, n: u64) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{measurement},device=inv1 v={i}.5,seq={i}i\n"))
        .collect::<String>()
        .into_bytes()
}

/// Run `input` through an output with only the server and database set
/// (plus `extra`), and check that InfluxDB holds every line as its own
/// point and that the summary says exactly that.
fn delivers_every_line(db: &str, measurement: &str, n: u64, extra: &[(&str, &str)]) {
    Sink::require_built();
    let influx = Influxd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &output_section("influxdb_output", influx.port(), db, extra),
    );
    let mut sink = Sink::spawn_with(
        &config,
        Stdin::Bytes(untimestamped(measurement, n)),
        &["--drain-timeout", "120"],
    );
    let (code, stderr) = sink.wait();
    let summary = sink.summary();
    assert_eq!(
        code,
        Some(0),
        "exit code; summary {summary:?}\n{}",
        harness::tail(&stderr, 30)
    );
    assert!(
        !stderr.contains("Backlog full"),
        "the size limit dropped points while the server was up:\n{}",
        harness::tail(&stderr, 30)
    );
    let count = influx.count(db, measurement, "seq");
    let distinct = influx.count_distinct(db, measurement, "seq");
    assert_eq!(
        (summary.accepted, summary.delivered, summary.dropped),
        (n, n, 0),
        "summary (accepted, delivered, dropped); InfluxDB holds {count} points"
    );
    assert_eq!(
        (count, distinct),
        (n, n),
        "InfluxDB's count(seq) and count(distinct(seq)) against {n} lines sent; \
         summary {summary:?}"
    );
}

#[test]
fn untimestamped_lines_of_one_series_all_land_as_distinct_points() {
    delivers_every_line("nots", "nots", 20_000, &[]);
}

#[test]
fn untimestamped_lines_stay_distinct_at_a_coarse_precision() {
    // Millisecond precision: stamps one unit apart, or the rounding on the
    // wire would merge them.
    delivers_every_line("nots_ms", "nots_ms", 3_000, &[("precision", "ms")]);
}

#[test]
fn two_hundred_thousand_lines_through_the_default_config_drop_nothing() {
    // The default max_backlog_size (10000) is far below the input: a
    // server slower than stdin must slow stdin, not fill the backlog.
    delivers_every_line("fast", "fast", 200_000, &[]);
}
