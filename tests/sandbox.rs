//! The sandbox around each sink instance, proven with hostile components
//! (tests/hostile, built here for wasm32-wasip2, one cargo feature per
//! misbehaviour): an endless loop, a memory bomb, an endless wait on the
//! host, an attempt to leave its directory, HTTP to a server not in its
//! section, and a trap on every third write. Each runs as `[bad]` (via the host key `component`) beside
//! `[good]`, the real component writing to a real InfluxDB: the misdeed is
//! contained and logged with `[bad]`, a crashing `[bad]` is restarted with
//! growing delays, `[good]` delivers every point, and the run ends with its
//! summary.
//!
//! Needs the release binary and component:
//!   cargo build --release -p influx-sink-host
//!   cargo build --profile ship -p influx-sink-component --target wasm32-wasip2
//! and the `wasm32-wasip2` target for the hostile builds.
//! Run: `cargo test --release --test sandbox`

use std::net::TcpListener;
use std::time::Duration;

use harness::{generator_section, output_section, tail, write_config, Influxd, Sink, Stdin};

/// Points of the generator: at full speed it hands them out in chunks of
/// 1000, so all ten chunks fit in a sink's queue (16 chunks) at once.
const TOTAL: u64 = 10_000;
const CHUNK: u64 = 1000;
const MEASUREMENT: &str = "sandbox";
const DB: &str = "sandbox";

/// One run: `[bad]` runs the hostile `feature` (16 MiB, 200 ms per call),
/// `[good]` the real component against `influx`; the generator feeds both
/// TOTAL points. `bad_port` is `[bad]`'s (unused) server port.
struct Run {
    sink: Sink,
    dir: tempfile::TempDir,
}

fn start(feature: &str, influx: &Influxd, bad_port: u16, drain_timeout: &str) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let component = harness::build_hostile(feature, dir.path());
    let component = component.to_str().expect("utf-8 path");
    let config = write_config(
        dir.path(),
        &format!(
            "{}{}{}",
            generator_section(TOTAL, 0, &[("measurement", MEASUREMENT), ("fields", "2")]),
            output_section(
                "bad",
                bad_port,
                "nowhere",
                &[
                    ("component", component),
                    ("max_memory_mb", "16"),
                    ("max_call_ms", "200"),
                    ("persistent_storage_path", "backlog"),
                ],
            ),
            output_section(
                "good",
                influx.port(),
                DB,
                &[
                    ("batch_size", "1000"),
                    ("batch_timeout", "0.2"),
                    ("persistent_storage_path", "backlog"),
                    ("max_backlog_size", "1000000"),
                ],
            ),
        ),
    );
    let sink = Sink::spawn_with(&config, Stdin::Empty, &["--drain-timeout", drain_timeout]);
    Run { sink, dir }
}

/// The log lines of one scope, e.g. `[bad]`.
fn lines_of<'a>(stderr: &'a str, scope: &str) -> Vec<&'a str> {
    stderr.lines().filter(|l| l.contains(scope)).collect()
}

/// The restart delays `[bad]` logged, in seconds, in order.
fn restart_delays(stderr: &str) -> Vec<u64> {
    lines_of(stderr, "[bad] sink component crashed")
        .into_iter()
        .filter_map(|l| {
            let rest = l.split("restarting it from its backlog in ").nth(1)?;
            rest.split(" s (restart ").next()?.parse().ok()
        })
        .collect()
}

/// The sum of the `[bad]` points the log reports lost.
fn logged_losses(stderr: &str) -> u64 {
    let number_before = |l: &str, marker: &str| -> Option<u64> {
        let head = &l[..l.find(marker)?];
        head.split_whitespace().last()?.parse().ok()
    };
    lines_of(stderr, "[bad]")
        .into_iter()
        .filter_map(|l| {
            number_before(
                l,
                " accepted points were only in the crashed instance's memory",
            )
            .or_else(|| number_before(l, " points are dropped (counted in dropped)"))
            .or_else(|| number_before(l, " input points queued for the sink were never"))
        })
        .sum()
}

/// `[good]` wrote every point to InfluxDB and logged no crash.
fn assert_good_delivered_all(influx: &Influxd, stderr: &str) {
    let count = influx.count(DB, MEASUREMENT, "seq");
    assert_eq!(
        count,
        TOTAL,
        "[good] points in InfluxDB\n--- stderr tail ---\n{}",
        tail(stderr, 40)
    );
    let crashes = lines_of(stderr, "[good] sink component");
    assert!(
        crashes.is_empty(),
        "the healthy sink was disturbed: {crashes:#?}"
    );
}

/// A refused attempt harmed nothing: `[bad]` did not crash, both sinks
/// delivered all their points, and the run ended clean.
fn assert_both_delivered_all(influx: &Influxd, run: &Run, code: Option<i32>, stderr: &str) {
    assert_good_delivered_all(influx, stderr);
    let summary = run.sink.summary();
    assert_eq!(
        (summary.accepted, summary.delivered, summary.dropped),
        (2 * TOTAL, 2 * TOTAL, 0),
        "summary {summary:?}"
    );
    assert_eq!(code, Some(0), "exit code\n{}", tail(stderr, 20));
}

/// The crash log lines of `[bad]`, each naming what happened.
fn assert_crashes_logged(stderr: &str, what: &str) -> Vec<u64> {
    let crashed = lines_of(stderr, "ERROR [bad] sink component crashed: ");
    assert!(
        !crashed.is_empty(),
        "no `ERROR [bad] sink component crashed:` line\n{}",
        tail(stderr, 40)
    );
    for l in &crashed {
        assert!(l.contains(what), "crash line does not say `{what}`: {l}");
    }
    let delays = restart_delays(stderr);
    assert!(
        delays.len() >= 2,
        "expected at least two restarts of [bad], got delays {delays:?}\n{}",
        tail(stderr, 40)
    );
    assert_eq!(delays[0], 1, "first restart delay (s): {delays:?}");
    for w in delays.windows(2) {
        assert_eq!(
            w[1],
            (w[0] * 2).min(60),
            "restart delays must double (backoff), not spin: {delays:?}"
        );
    }
    delays
}

/// A crashing `[bad]` whose every write crashes it (spin, bomb, block): each
/// chunk is written twice then dropped, until the drain timeout leaves no
/// room for a restart and the rest of its input is counted lost.
fn every_write_crashes(feature: &str, what: &str) {
    Sink::require_built();
    let influx = Influxd::start();
    let mut run = start(feature, &influx, harness::free_port(), "5");
    let (code, stderr) = run.sink.wait();
    let summary = run.sink.summary();

    assert_good_delivered_all(&influx, &stderr);
    assert_crashes_logged(&stderr, what);
    assert!(
        stderr.contains("[bad] input lines 1-1000 crashed the sink component twice"),
        "the first chunk should be written once more, then dropped\n{}",
        tail(&stderr, 40)
    );
    assert!(
        lines_of(&stderr, "[bad] sink component crashed")
            .iter()
            .any(|l| l.contains("not restarting it: the input has ended and the drain timeout")),
        "no restart given up at the drain timeout\n{}",
        tail(&stderr, 40)
    );
    // Nothing of [bad] was ever accepted; all of its input is lost, and
    // the log says so point for point.
    assert_eq!(logged_losses(&stderr), TOTAL, "{}", tail(&stderr, 40));
    assert_eq!(
        (
            summary.accepted,
            summary.delivered,
            summary.backlogged,
            summary.dropped,
            summary.rejected
        ),
        (TOTAL, TOTAL, 0, TOTAL, 0),
        "summary (accepted, delivered, backlogged, dropped, rejected): [good] everything, \
         [bad] all dropped"
    );
    assert!(
        stderr.contains("ERROR [host] sink [bad] failed: its component crashed"),
        "{}",
        tail(&stderr, 20)
    );
    assert_eq!(
        code,
        Some(1),
        "exit code (a sink crashed)\n{}",
        tail(&stderr, 20)
    );
    drop(run.dir);
}

#[test]
fn endless_loop_is_cut_at_its_deadline() {
    every_write_crashes(
        "spin",
        "write_lines ran past its deadline of 200 ms (max_call_ms) and was interrupted",
    );
}

#[test]
fn memory_bomb_hits_the_memory_cap() {
    every_write_crashes(
        "bomb",
        "write_lines hit the memory cap of 16 MiB (max_memory_mb",
    );
}

#[test]
fn blocking_on_the_host_is_abandoned_at_its_deadline() {
    every_write_crashes(
        "block",
        "write_lines did not return within its deadline of 200 ms (max_call_ms) while \
         waiting on the host and was abandoned",
    );
}

#[test]
fn trap_every_third_write_restarts_with_growing_delays() {
    Sink::require_built();
    let influx = Influxd::start();
    let mut run = start("trap3", &influx, harness::free_port(), "60");

    // [good] delivers everything while [bad] is still crashing and being
    // restarted (its restarts take 1 + 2 + 4 + 8 s).
    let mut running = true;
    let delivered = harness::wait_until(Duration::from_secs(120), || {
        running = run.sink.is_running();
        !running || influx.count(DB, MEASUREMENT, "seq") >= TOTAL
    });
    assert!(
        delivered && running,
        "[good] should deliver all {TOTAL} points while [bad] is being restarted \
         (delivered: {}, running: {running})\n{}",
        influx.count(DB, MEASUREMENT, "seq"),
        run.sink.stderr_tail(40)
    );

    let (code, stderr) = run.sink.wait();
    let summary = run.sink.summary();
    assert_good_delivered_all(&influx, &stderr);
    let delays = assert_crashes_logged(
        &stderr,
        "write_lines trapped: wasm trap: wasm `unreachable` instruction executed",
    );
    // Ten chunks, two written per instance before its third write traps:
    // crashes on chunks 3, 5, 7 and 9, each chunk written again once.
    assert_eq!(delays, [1, 2, 4, 8], "restart delays (s)");
    assert_eq!(
        lines_of(&stderr, "[bad] sink component restarted (restart ").len(),
        4,
        "{}",
        tail(&stderr, 40)
    );
    let in_memory = lines_of(
        &stderr,
        "[bad] 2000 accepted points were only in the crashed instance's memory and are lost",
    );
    assert_eq!(in_memory.len(), 4, "{}", tail(&stderr, 40));
    assert!(
        !stderr.contains("crashed the sink component twice"),
        "a chunk written again must not trap (the count restarts with the instance)"
    );
    assert_eq!(logged_losses(&stderr), 4 * 2 * CHUNK);
    // [good]: TOTAL accepted and delivered. [bad]: TOTAL accepted; the two
    // chunks in memory at each crash lost; the last two "delivered".
    assert_eq!(
        (
            summary.accepted,
            summary.delivered,
            summary.backlogged,
            summary.dropped,
            summary.rejected
        ),
        (2 * TOTAL, TOTAL + 2 * CHUNK, 0, 4 * 2 * CHUNK, 0),
        "summary (accepted, delivered, backlogged, dropped, rejected)"
    );
    assert_eq!(
        code,
        Some(1),
        "exit code (a sink crashed)\n{}",
        tail(&stderr, 20)
    );
}

#[test]
fn escape_from_the_backlog_directory_fails() {
    Sink::require_built();
    assert!(
        std::env::vars().count() > 0,
        "the test needs environment variables to show they are not passed on"
    );
    let influx = Influxd::start();
    let mut run = start("escape", &influx, harness::free_port(), "30");
    let (code, stderr) = run.sink.wait();

    assert!(
        !stderr.contains("ESCAPED"),
        "the component got out of its sandbox:\n{}",
        lines_of(&stderr, "ESCAPED").join("\n")
    );
    for attempt in [
        "read /etc/passwd refused: ",
        "read /backlog/../../etc/passwd refused: ",
        "read /backlog/../escaped.txt refused: ",
        "read ../etc/passwd refused: ",
        "create /backlog/../escaped.txt refused: ",
        "list / refused: ",
    ] {
        let needle = format!("[bad] escape: {attempt}");
        assert!(
            stderr.contains(&needle),
            "no `{needle}` in the log\n{}",
            tail(&stderr, 40)
        );
    }
    assert!(
        stderr.contains("[bad] escape: environment variables=0 arguments=0 stdin=closed"),
        "the component saw environment variables, arguments or stdin\n{}",
        tail(&stderr, 40)
    );
    // Its own directory works, the one above it was not touched.
    let backlog = run.dir.path().join("backlog");
    assert!(
        stderr.contains("[bad] escape: create /backlog/inside.txt allowed")
            && backlog.join("bad").join("inside.txt").is_file(),
        "the component could not write in its own backlog directory\n{}",
        tail(&stderr, 40)
    );
    assert!(
        !backlog.join("escaped.txt").exists(),
        "escaped.txt was written"
    );

    assert_both_delivered_all(&influx, &run, code, &stderr);
}

#[test]
fn http_to_a_server_not_in_the_section_is_refused() {
    Sink::require_built();
    let influx = Influxd::start();
    // The stranger asks for 127.0.0.1:<its port + 1>: listen there, so a
    // request that got through would be seen.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a listener");
    listener.set_nonblocking(true).expect("non-blocking");
    let stranger = listener.local_addr().expect("local addr").port();
    let mut run = start("stranger", &influx, stranger - 1, "30");
    let (code, stderr) = run.sink.wait();

    let refused = format!(
        "ERROR [bad] refused a request to 127.0.0.1:{stranger}: this sink may only reach \
         127.0.0.1:{}",
        stranger - 1
    );
    assert!(
        stderr.contains(&refused),
        "no `{refused}` in the log\n{}",
        tail(&stderr, 40)
    );
    let told = format!(
        "[bad] stranger: request to http://127.0.0.1:{stranger}/steal refused: \
         ErrorCode::HttpRequestDenied"
    );
    assert!(
        stderr.contains(&told),
        "the component was not told its request was denied (`{told}`)\n{}",
        tail(&stderr, 40)
    );
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, from)) => panic!("the refused request reached the listener (from {from})"),
        Err(e) => panic!("accept: {e}"),
    }

    assert_both_delivered_all(&influx, &run, code, &stderr);
}
