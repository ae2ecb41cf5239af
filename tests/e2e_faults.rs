//! End to end: every class of server answer and network fault, injected by
//! a loopback proxy (tests/harness/proxy.rs) in front of a real InfluxDB,
//! or produced by a real InfluxDB set up for it (authentication, body size
//! limit, https with a test CA). For each: what was delivered, rejected,
//! dead-lettered and kept, and that no valid point was lost.
//!
//! Run: `cargo test --release --test e2e_faults`

use std::path::Path;
use std::time::Duration;

use harness::{
    now_ns, output_section, write_config, Fault, FaultProxy, Influxd, InfluxdOptions, Match, Sink,
    Stdin, TestCa,
};

const N: u64 = 1_000;

/// Quick retries so each case takes a second or two.
fn keys<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut k = vec![
        ("batch_size", "100"),
        ("batch_timeout", "0.2"),
        ("reconnect_delay", "0.2"),
        ("max_reconnect_delay", "1"),
        ("connection_timeout", "1"),
        ("persistent_storage_path", "backlog"),
    ];
    k.extend_from_slice(extra);
    k
}

fn input() -> Vec<u8> {
    harness::points("m", N, now_ns() - 120_000_000_000).into_bytes()
}

/// Run the sink to the end of its input; returns its stderr.
fn run(dir: &Path, section: &str) -> (Sink, String) {
    let config = write_config(dir, section);
    let mut sink = Sink::spawn_with(&config, Stdin::Bytes(input()), &["--drain-timeout", "60"]);
    let (code, stderr) = sink.wait();
    assert_eq!(
        code,
        Some(0),
        "exit code (0: all delivered)\n{}",
        harness::tail(&stderr, 30)
    );
    (sink, stderr)
}

#[test]
fn every_failure_class_keeps_every_point() {
    Sink::require_built();
    let influx = Influxd::start();
    let cases: Vec<(&str, Vec<Fault>, &str)> = vec![
        (
            "http500",
            vec![Fault::influx_error(500, "timeout")],
            "HTTP 500: timeout",
        ),
        (
            "retry_after",
            vec![Fault::answer(503, "busy").with_header("Retry-After", "1")],
            "server asked to retry after 1 s",
        ),
        ("http429", vec![Fault::answer(429, "slow down")], "HTTP 429"),
        (
            "hang",
            vec![Fault::Hang],
            "no answer within connection_timeout",
        ),
        (
            "reset_body",
            vec![Fault::ResetMidBody],
            "Connection to InfluxDB at",
        ),
        (
            "reset_answer",
            vec![Fault::ResetMidResponse],
            "Connection to InfluxDB at",
        ),
        (
            "lost_204",
            vec![Fault::answer_after_forward(503, "lost")],
            "HTTP 503",
        ),
        ("refuse", vec![Fault::Refuse], "Connection to InfluxDB at"),
        (
            "unauthorized",
            vec![Fault::influx_error(401, "authorization failed"); 3],
            "Authentication failed: InfluxDB at 127.0.0.1",
        ),
        (
            "too_large",
            vec![Fault::influx_error(413, "Request Entity Too Large")],
            "too large for InfluxDB",
        ),
        (
            "whole_batch_400",
            vec![Fault::influx_error(
                400,
                "unable to parse 'x': invalid field format",
            )],
            "resending them in halves",
        ),
        (
            "missing_db",
            vec![Fault::influx_error(
                404,
                "database not found: \"missing_db\"",
            )],
            "creating it (auto_create_database = true)",
        ),
    ];
    for (db, faults, log) in cases {
        let proxy = FaultProxy::start(influx.port());
        proxy.script(Match::path("/write"), faults);
        let dir = tempfile::tempdir().expect("temp dir");
        let (sink, stderr) = run(
            dir.path(),
            &output_section("faulty", proxy.port(), db, &keys(&[])),
        );
        let s = sink.summary();
        assert_eq!(
            (s.accepted, s.delivered, s.rejected, s.dropped),
            (N, N, 0, 0),
            "{db}: summary {s:?}\n{}",
            harness::tail(&stderr, 30)
        );
        // Re-sends after a lost answer overwrite the same points: count is exact.
        assert_eq!(influx.count(db, "m", "seq"), N, "{db}: points in InfluxDB");
        assert!(
            stderr.contains(log),
            "{db}: no `{log}` in\n{}",
            harness::tail(&stderr, 30)
        );
        assert_eq!(
            proxy.pending(),
            0,
            "{db}: the scripted faults were not all met"
        );
        // Nothing refused for good, nothing left behind.
        assert!(
            !dir.path().join("backlog/faulty/rejected.lp").exists(),
            "{db}: a valid point was dead-lettered"
        );
        assert_eq!(s.backlogged, 0, "{db}: points left in the backlog");
        if db == "unauthorized" {
            assert_eq!(
                stderr.matches("Authentication failed").count(),
                1,
                "{stderr}"
            );
        }
        if db == "missing_db" {
            let paths: Vec<String> = proxy
                .requests()
                .iter()
                .map(|r| r.path().to_string())
                .collect();
            let first_404 = paths.iter().position(|p| p == "/write").unwrap();
            assert!(
                paths[first_404..].iter().any(|p| p == "/query"),
                "no CREATE DATABASE after the 404: {paths:?}"
            );
        }
    }
}

#[test]
fn bodies_are_gzipped_line_protocol_by_default() {
    Sink::require_built();
    let influx = Influxd::start();
    let proxy = FaultProxy::start(influx.port());
    let dir = tempfile::tempdir().expect("temp dir");
    run(
        dir.path(),
        &output_section("gz", proxy.port(), "gz", &keys(&[])),
    );
    let writes = proxy.requests_to("/write");
    assert!(!writes.is_empty());
    let mut lines = 0;
    for w in &writes {
        assert_eq!(w.header("content-encoding"), Some("gzip"));
        assert!(w.gzip_error.is_none(), "{:?}", w.gzip_error);
        assert!(w.body.len() * 2 < w.body_decoded.len(), "not compressed");
        lines += w.text().lines().count() as u64;
    }
    assert_eq!(lines, N);
    assert_eq!(influx.count("gz", "m", "seq"), N);
}

#[test]
fn failover_across_urls_delivers_through_the_healthy_server() {
    Sink::require_built();
    let influx = Influxd::start();
    let dead = FaultProxy::start(influx.port());
    dead.set_default(Fault::Refuse);
    let dir = tempfile::tempdir().expect("temp dir");
    let urls = format!("{}, http://127.0.0.1:{}", dead.url(), influx.port());
    let section = format!(
        "[fo]\ntransport = influxdb_out\nurls = {urls}\ndatabase = fo\n{}\n",
        keys(&[])
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect::<String>()
    );
    let (sink, stderr) = run(dir.path(), &section);
    assert_eq!(sink.summary().delivered, N);
    assert_eq!(influx.count("fo", "m", "seq"), N);
    let from_to = format!(
        "Failing over from 127.0.0.1:{} to 127.0.0.1:{}",
        dead.port(),
        influx.port()
    );
    assert!(stderr.contains(&from_to), "{}", harness::tail(&stderr, 20));
}

#[test]
fn real_413_splits_batches_until_they_fit() {
    Sink::require_built();
    let influx = Influxd::start_with(InfluxdOptions::default().with_max_body_size(3_000));
    let dir = tempfile::tempdir().expect("temp dir");
    // 100 points of ~60 B: 6 KB bodies, over the server's 3 KB.
    let section = output_section(
        "big",
        influx.port(),
        "big",
        &keys(&[("content_encoding", "identity")]),
    );
    let (sink, stderr) = run(dir.path(), &section);
    assert_eq!((sink.summary().delivered, sink.summary().rejected), (N, 0));
    assert_eq!(influx.count("big", "m", "seq"), N);
    assert!(
        stderr.contains("HTTP 413"),
        "{}",
        harness::tail(&stderr, 20)
    );
}

#[test]
fn refused_credentials_keep_the_data_until_they_are_fixed() {
    Sink::require_built();
    let influx = Influxd::start_with(InfluxdOptions::default().with_auth("admin", "s3cret"));
    influx.create_database("auth");
    let dir = tempfile::tempdir().expect("temp dir");
    let wrong = output_section(
        "secured",
        influx.port(),
        "auth",
        &keys(&[("username", "admin"), ("password", "wrong")]),
    );
    let config = write_config(dir.path(), &wrong);
    let mut sink = Sink::spawn_with(&config, Stdin::Bytes(input()), &["--drain-timeout", "3"]);
    let (code, stderr) = sink.wait();
    assert_eq!(
        code,
        Some(3),
        "points remain in the backlog\n{}",
        harness::tail(&stderr, 20)
    );
    assert_eq!(sink.summary().delivered, 0);
    assert!(
        stderr.contains("Authentication failed") && stderr.contains("output [secured]"),
        "{}",
        harness::tail(&stderr, 20)
    );
    // Fixed credentials: the next run delivers the backlog.
    let right = output_section(
        "secured",
        influx.port(),
        "auth",
        &keys(&[("username", "admin"), ("password", "s3cret")]),
    );
    let config = write_config(dir.path(), &right);
    let mut sink = Sink::spawn_with(&config, Stdin::Empty, &["--drain-timeout", "30"]);
    let (code, stderr) = sink.wait();
    assert_eq!(code, Some(0), "{}", harness::tail(&stderr, 20));
    assert_eq!(influx.count("auth", "m", "seq"), N);
}

#[test]
fn https_with_a_private_ca() {
    Sink::require_built();
    let ca_dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(ca_dir.path());
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other = TestCa::new(other_dir.path());
    let influx = Influxd::start_with(InfluxdOptions::default().with_https(&ca));
    let section = |name: &str, db: &str, extra: &[(&str, &str)]| {
        let mut s = format!(
            "[{name}]\ntransport = influxdb_out\nurl = https://127.0.0.1:{}\ndatabase = {db}\n",
            influx.port()
        );
        for (k, v) in keys(extra) {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s
    };
    // Verified against the test CA.
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_path = ca.ca_path().display().to_string();
    let (sink, _) = run(
        dir.path(),
        &section("tls", "tls", &[("tls_ca_file", &ca_path)]),
    );
    assert_eq!(sink.summary().delivered, N);
    assert_eq!(influx.count("tls", "m", "seq"), N);

    // Another CA: the handshake fails, the data stays in the backlog.
    let dir = tempfile::tempdir().expect("temp dir");
    let other_path = other.ca_path().display().to_string();
    let config = write_config(
        dir.path(),
        &section("tls", "wrong", &[("tls_ca_file", &other_path)]),
    );
    let mut sink = Sink::spawn_with(&config, Stdin::Bytes(input()), &["--drain-timeout", "2"]);
    let (code, stderr) = sink.wait();
    assert_eq!(code, Some(3), "{}", harness::tail(&stderr, 20));
    assert!(
        stderr.contains("TLS handshake with 127.0.0.1") && stderr.contains("UnknownIssuer"),
        "{}",
        harness::tail(&stderr, 20)
    );
    assert_eq!(sink.summary().backlogged, N);

    // No verification at all: delivered, with a loud warning.
    let dir = tempfile::tempdir().expect("temp dir");
    let (sink, stderr) = run(
        dir.path(),
        &section("tls", "insecure", &[("tls_insecure_skip_verify", "true")]),
    );
    assert_eq!(sink.summary().delivered, N);
    assert!(
        stderr.contains("NOT checked"),
        "{}",
        harness::tail(&stderr, 20)
    );
}

#[test]
fn sighup_reloads_fixed_credentials_without_a_restart() {
    Sink::require_built();
    let influx = Influxd::start_with(InfluxdOptions::default().with_auth("admin", "s3cret"));
    influx.create_database("reload");
    let dir = tempfile::tempdir().expect("temp dir");
    let section = |password: &str| {
        output_section(
            "secured",
            influx.port(),
            "reload",
            &keys(&[("username", "admin"), ("password", password)]),
        )
    };
    let config = write_config(dir.path(), &section("wrong"));
    let mut sink = Sink::spawn_with(
        &config,
        Stdin::Pipe,
        &["--drain-timeout", "30", "--no-watch"],
    );
    sink.write_stdin(&input());
    assert!(
        sink.wait_for_log("Authentication failed", Duration::from_secs(30)),
        "{}",
        sink.stderr_tail(20)
    );
    write_config(dir.path(), &section("s3cret"));
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(sink.pid() as i32, libc::SIGHUP) }, 0);
    assert!(
        sink.wait_for_log(
            "reopened with the reloaded settings",
            Duration::from_secs(30)
        ),
        "{}",
        sink.stderr_tail(20)
    );
    assert!(
        harness::wait_until(Duration::from_secs(30), || influx
            .count("reload", "m", "seq")
            == N),
        "{} points in InfluxDB\n{}",
        influx.count("reload", "m", "seq"),
        sink.stderr_tail(20)
    );
    sink.close_stdin();
    let (code, stderr) = sink.wait();
    assert_eq!(code, Some(0), "{}", harness::tail(&stderr, 20));
    let s = sink.summary();
    assert_eq!((s.accepted, s.delivered, s.dropped), (N, N, 0), "{s:?}");
}
