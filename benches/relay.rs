//! Acknowledged points/s through the listener (the relay) against influxd
//! taking the same requests directly, in one run on one machine (a plain
//! binary, not criterion).
//!
//! Input: `RELAY_POINTS` (default 200000) 20-field points from the host's
//! generator (explicit, unique timestamps), cut into requests of 1000 and
//! of 5000 lines. For each case (2 and 4 concurrent clients, each a
//! keep-alive connection with one request in flight, taking every C-th
//! request):
//!
//! * influxd: a fresh server takes the requests on `/write`; points/s from
//!   the moment all clients are connected until the last 204.
//! * relay: `influx-sink run` with a listener and one output to a fresh
//!   influxd, default settings but `max_backlog_size` (below), so every
//!   write is fsynced before its 204. Acknowledged points/s over the same
//!   span; a 503 is retried after its `Retry-After` (counted). Then the
//!   time until InfluxDB holds every point gives the delivered rate.
//!
//! Both report the p99 latency of a request (send to answer). The relay's
//! output is set as the README's relay example: `max_backlog_size =
//! 1000000` (the relay's buffer; the default 10000, the gateway's, is two
//! 5000-line requests and would measure back-pressure instead) and
//! `batch_size = 5000` (the backlog drains one batch at a time), plus
//! `content_encoding = identity` as influxd is sent (gzip inside the
//! component costs more than loopback saves; see the delivery bench).
//!
//! `RELAY_CASES=2:1000,4:5000` restricts the cases; `RELAY_REPEAT`
//! (default 1) repeats each run and reports medians.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::poster::Poster;
use common::{env_number, machine, median_by};
use harness::clients::listener_section;
use harness::{free_port, output_section, tail, wait_until, write_config, Influxd, Summary};

const MEASUREMENT: &str = "device_data";
const FIELD: &str = "seq";
const DATABASE: &str = "bench";

#[derive(Clone, Copy)]
struct Case {
    clients: usize,
    lines: usize,
}

/// One run: points/s acknowledged, p99 latency, 503s retried.
struct Run {
    rate: f64,
    p99: Duration,
    retried: u64,
}

struct Row {
    case: Case,
    direct: Run,
    relay: Run,
    delivered: f64,
}

fn cases() -> Vec<Case> {
    let all = || {
        let mut v = Vec::new();
        for lines in [1000, 5000] {
            for clients in [2, 4] {
                v.push(Case { clients, lines });
            }
        }
        v
    };
    match std::env::var("RELAY_CASES") {
        Err(_) => all(),
        Ok(list) => {
            list.split(',')
                .map(|item| {
                    let (c, l) = item.trim().split_once(':').unwrap_or_else(|| {
                        panic!("RELAY_CASES item {item:?}: expected CLIENTS:LINES")
                    });
                    Case {
                        clients: c.parse().expect("clients"),
                        lines: l.parse().expect("lines"),
                    }
                })
                .collect()
        }
    }
}

/// `lines` cut into requests of `per` lines.
fn requests(lines: &[u8], per: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let (mut start, mut n) = (0, 0);
    for (i, &b) in lines.iter().enumerate() {
        if b == b'\n' {
            n += 1;
            if n == per || i + 1 == lines.len() {
                out.push(lines[start..=i].to_vec());
                start = i + 1;
                n = 0;
            }
        }
    }
    out
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    let i = ((latencies.len() as f64 * 0.99).ceil() as usize).clamp(1, latencies.len());
    latencies[i - 1]
}

/// Post every request from `clients` threads to 127.0.0.1:`port`; a 503
/// is retried after its Retry-After.
fn post_all(port: u16, path: &str, bodies: &[Vec<u8>], clients: usize, n: u64) -> Run {
    let ready = Barrier::new(clients + 1);
    let (elapsed, latencies, retried) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let ready = &ready;
                s.spawn(move || {
                    let mut w = Poster::connect(port, path, false);
                    let (mut lat, mut retried) = (Vec::new(), 0u64);
                    ready.wait();
                    for body in bodies.iter().skip(c).step_by(clients) {
                        loop {
                            let sent = Instant::now();
                            let a = w.post(body);
                            lat.push(sent.elapsed());
                            match a.status {
                                204 => break,
                                503 => {
                                    retried += 1;
                                    let wait = a.retry_after.unwrap_or(1);
                                    std::thread::sleep(Duration::from_secs(wait));
                                }
                                _ => panic!("answered {a:?}"),
                            }
                        }
                    }
                    (lat, retried)
                })
            })
            .collect();
        ready.wait();
        let started = Instant::now();
        let (mut all, mut retried) = (Vec::new(), 0);
        for t in threads {
            let (lat, r) = t.join().expect("client thread");
            all.extend(lat);
            retried += r;
        }
        (started.elapsed(), all, retried)
    });
    Run {
        rate: n as f64 / elapsed.as_secs_f64(),
        p99: p99(latencies),
        retried,
    }
}

fn direct(bodies: &[Vec<u8>], clients: usize, n: u64) -> Run {
    let influx = Influxd::start();
    influx.create_database(DATABASE);
    let run = post_all(
        influx.port(),
        &format!("/write?db={DATABASE}"),
        bodies,
        clients,
        n,
    );
    assert_eq!(influx.count(DATABASE, MEASUREMENT, FIELD), n, "influxd");
    run
}

fn spawn_relay(dir: &Path, listen: u16, influx: u16, cache: &Path) -> Child {
    let backlog = dir.join("backlog");
    let config = write_config(
        dir,
        &(listener_section(listen, &[])
            + &output_section(
                "influxdb_output",
                influx,
                DATABASE,
                &[
                    ("max_backlog_size", "1000000"),
                    ("batch_size", "5000"),
                    ("content_encoding", "identity"),
                    ("persistent_storage_path", &backlog.to_string_lossy()),
                ],
            )),
    );
    Command::new(harness::sink_binary())
        .arg("run")
        .arg(&config)
        .arg("--component")
        .arg(harness::component_path())
        .arg("--cache-dir")
        .arg(cache)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn influx-sink")
}

/// (acknowledged run, delivered points/s) through a fresh relay.
fn relay(bodies: &[Vec<u8>], clients: usize, n: u64, cache: &Path) -> (Run, f64) {
    let influx = Influxd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = free_port();
    let mut child = spawn_relay(dir.path(), listen, influx.port(), cache);
    let log = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(60), || log()
            .contains("listening on http://")),
        "the relay did not start:\n{}",
        tail(&log(), 20)
    );
    let started = Instant::now();
    let run = post_all(listen, &format!("/write?db={DATABASE}"), bodies, clients, n);
    let all_in = wait_until(Duration::from_secs(300), || {
        influx.count(DATABASE, MEASUREMENT, FIELD) >= n
    });
    let delivered = n as f64 / started.elapsed().as_secs_f64();
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().expect("wait for influx-sink");
    assert!(
        all_in,
        "not everything was delivered:\n{}",
        tail(&log(), 20)
    );
    assert_eq!(influx.count(DATABASE, MEASUREMENT, FIELD), n, "relay");
    // Exit 3 is the SIGTERM landing between InfluxDB storing the last batch
    // and the sink reading its 204: that batch stays in the backlog (to be
    // re-sent, overwriting itself). Anything else, or a loss, fails.
    let summary = Summary::parse(&log());
    assert!(
        matches!(status.code(), Some(0 | 3))
            && summary.is_some_and(|s| s.accepted == n
                && s.delivered + s.backlogged == n
                && s.dropped == 0
                && s.rejected == 0),
        "influx-sink: {status}\n{}",
        tail(&log(), 20)
    );
    (run, delivered)
}

fn main() {
    harness::Sink::require_built();
    let n = env_number("RELAY_POINTS", 200_000) as u64;
    let repeat = env_number("RELAY_REPEAT", 1).max(1);
    let work = tempfile::tempdir().expect("temp dir");
    let cache = work.path().join("cache");
    let lines = common::lines(n);
    let mut rows = Vec::new();
    for case in cases() {
        let bodies = requests(&lines, case.lines);
        let (mut directs, mut relays) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            let d = direct(&bodies, case.clients, n);
            let (r, delivered) = relay(&bodies, case.clients, n, &cache);
            eprintln!(
                "relay: {} clients x {} lines: influxd {:.0}/s (p99 {:.1} ms), relay acked {:.0}/s \
                 (p99 {:.1} ms, {} retried), delivered {:.0}/s",
                case.clients,
                case.lines,
                d.rate,
                d.p99.as_secs_f64() * 1e3,
                r.rate,
                r.p99.as_secs_f64() * 1e3,
                r.retried,
                delivered
            );
            directs.push(d);
            relays.push((r, delivered));
        }
        let direct = median_by(directs, |r| r.rate);
        let (relay, delivered) = median_by(relays, |(r, _)| r.rate);
        rows.push(Row {
            case,
            direct,
            relay,
            delivered,
        });
    }
    println!(
        "\n=== relay: acknowledged (durable) points/s vs influxd taking the same requests ==="
    );
    println!("machine: {}", machine());
    println!("input: {n} points, 20 fields; medians of {repeat} run(s)");
    println!(
        "{:>7} {:>6} | {:>11} {:>9} | {:>11} {:>9} {:>7} | {:>6} | {:>11}",
        "clients", "lines", "influxd", "p99", "relay ack", "p99", "503s", "ratio", "delivered"
    );
    for r in &rows {
        println!(
            "{:>7} {:>6} | {:>9.0}/s {:>6.1} ms | {:>9.0}/s {:>6.1} ms {:>7} | {:>5.0}% | {:>9.0}/s",
            r.case.clients,
            r.case.lines,
            r.direct.rate,
            r.direct.p99.as_secs_f64() * 1e3,
            r.relay.rate,
            r.relay.p99.as_secs_f64() * 1e3,
            r.relay.retried,
            100.0 * r.relay.rate / r.direct.rate,
            r.delivered
        );
    }
}
