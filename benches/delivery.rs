//! Delivered points/s through a real influxd against that influxd's own
//! ceiling, in one run on one machine (a plain binary, not criterion).
//!
//! Input: `DELIVERY_POINTS` (default 200000) 20-field points from the
//! host's generator (explicit, unique timestamps), written to a temp file.
//! For each case (`batch_size` 100 and 5000, `content_encoding` identity
//! and gzip):
//!
//! * Ceiling: the same batches, encoded before the clock starts (gzip by
//!   the component's own encoder), posted straight to `/write` over
//!   keep-alive HTTP/1.1 by 1, 2, 4 and 8 client threads, one request in
//!   flight each (the sink keeps up to `max_requests_in_flight`, 4, out),
//!   until every answer (204) is in. The sink is compared with the best.
//! * Sink: `influx-sink run` with the default config but `batch_size` and
//!   `content_encoding`, the file on stdin, timed from spawn to exit (so
//!   start-up and shutdown are in; the component is compiled into a
//!   dedicated cache once beforehand, and the start-up floor is printed).
//!   Its CPU time (user + system) comes from `wait4`.
//!
//! Every run gets a fresh influxd, so none overwrites another's points, and
//! every run asserts afterwards that InfluxDB holds exactly N points.
//!
//! Each run also reports how much of the machine stayed idle (from
//! /proc/stat) and influxd's own CPU per point (from /proc/PID/stat): on
//! two shared cores the sink's CPU comes out of influxd's, and idle time
//! is what waiting (latency, fsync) costs.
//!
//! `DELIVERY_CASES` restricts the cases (`100:identity,5000:gzip`);
//! `DELIVERY_REPEAT` (default 1) repeats each run and reports medians;
//! `DELIVERY_IN_FLIGHT` sets the sink's `max_requests_in_flight`.

mod common;

use common::poster::Poster;
use common::{env_number, machine};

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use harness::{output_section, tail, write_config, Influxd, Summary};

/// What the generator names its points and the field every point has.
const MEASUREMENT: &str = "device_data";
const FIELD: &str = "seq";
const DATABASE: &str = "bench";
/// Bounds the sink's final drain, so a stuck delivery ends the bench.
const DRAIN_TIMEOUT_S: &str = "120";

#[derive(Clone, Copy)]
struct Case {
    batch: usize,
    gzip: bool,
}

impl Case {
    fn encoding(&self) -> &'static str {
        if self.gzip {
            "gzip"
        } else {
            "identity"
        }
    }
}

/// Medians over the repeats of one case.
struct Row {
    case: Case,
    /// Medians, one per `CEILING_CLIENTS` entry.
    ceiling: Vec<f64>,
    /// Machine idle share during the best ceiling's runs.
    ceiling_idle: f64,
    sink: f64,
    cpu_us: f64,
    /// Machine idle share during the sink's runs.
    sink_idle: f64,
}

/// One measured run: points/s and the share of the machine's CPU time that
/// was idle meanwhile (a run that leaves the cores idle is bound by
/// latency, not by CPU).
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    idle: f64,
    /// influxd's CPU time (user + system) per point, µs.
    server_us: f64,
}

/// CPU time (user + system) of process `pid` so far, in clock ticks.
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the whole line.
    let after = &stat[stat.rfind(')').expect("comm in /proc/PID/stat") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Microseconds per clock tick of /proc's CPU times.
fn tick_us() -> f64 {
    // SAFETY: sysconf has no preconditions.
    1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Idle and total CPU time of the whole machine so far, in clock ticks
/// (the first line of /proc/stat: idle and iowait count as idle).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let cpu = stat.lines().next().expect("/proc/stat has a cpu line");
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().expect("/proc/stat tick count"))
        .collect();
    (ticks[3] + ticks[4], ticks.iter().sum())
}

/// The clock, the machine's ticks and influxd's CPU, read when a run
/// starts, for the `Run` at its end.
struct Meter {
    started: Instant,
    machine: (u64, u64),
    server_pid: u32,
    server: u64,
}

impl Meter {
    fn start(server: &Influxd) -> Meter {
        let server_pid = server.pid().expect("influxd runs");
        Meter {
            started: Instant::now(),
            machine: machine_ticks(),
            server_pid,
            server: process_ticks(server_pid),
        }
    }

    /// The run of `n` points that ends now.
    fn finish(&self, n: u64) -> Run {
        let elapsed = self.started.elapsed();
        let (idle0, total0) = self.machine;
        let (idle1, total1) = machine_ticks();
        let server = process_ticks(self.server_pid) - self.server;
        Run {
            rate: n as f64 / elapsed.as_secs_f64(),
            idle: (idle1 - idle0) as f64 / (total1 - total0).max(1) as f64,
            server_us: server as f64 * tick_us() / n as f64,
        }
    }
}

/// `DELIVERY_CASES=100:identity,5000:gzip`, else all four.
fn cases() -> Vec<Case> {
    let Ok(spec) = std::env::var("DELIVERY_CASES") else {
        return [100, 5000]
            .into_iter()
            .flat_map(|batch| [false, true].map(|gzip| Case { batch, gzip }))
            .collect();
    };
    spec.split(',')
        .map(|item| parse_case(item.trim()))
        .collect()
}

fn parse_case(item: &str) -> Case {
    let parsed = item.split_once(':').and_then(|(batch, encoding)| {
        Some(Case {
            batch: batch.parse().ok().filter(|&b| b > 0)?,
            gzip: match encoding {
                "gzip" => true,
                "identity" => false,
                _ => return None,
            },
        })
    });
    parsed.unwrap_or_else(|| panic!("DELIVERY_CASES item {item:?}: expected BATCH:identity|gzip"))
}

/// `lines` cut into bodies of `batch` lines, gzipped (level 1) if asked.
fn bodies(lines: &[u8], case: Case) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_body = 0;
    for (i, &b) in lines.iter().enumerate() {
        if b == b'\n' {
            in_body += 1;
            if in_body == case.batch || i + 1 == lines.len() {
                out.push(encode(&lines[start..=i], case.gzip));
                start = i + 1;
                in_body = 0;
            }
        }
    }
    out
}

fn encode(body: &[u8], gzip: bool) -> Vec<u8> {
    if !gzip {
        return body.to_vec();
    }
    influx_sink_component::policy::http::gzip::compress(body)
}

/// Points/s of a fresh influxd taking `bodies` from `clients` threads (each
/// takes every `clients`-th body), from the moment all are connected until
/// the last answer.
fn ceiling(bodies: &[Vec<u8>], gzip: bool, clients: usize, n: u64) -> Run {
    let influx = Influxd::start();
    influx.create_database(DATABASE);
    let port = influx.port();
    let ready = Barrier::new(clients + 1);
    let run = std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let ready = &ready;
                s.spawn(move || {
                    let mut w =
                        Poster::connect(port, &format!("/write?db={DATABASE}&precision=ns"), gzip);
                    ready.wait();
                    for body in bodies.iter().skip(c).step_by(clients) {
                        let answer = w.post(body);
                        assert_eq!(answer.status, 204, "influxd answered {answer:?}");
                    }
                })
            })
            .collect();
        ready.wait();
        let meter = Meter::start(&influx);
        for t in threads {
            t.join().expect("client thread");
        }
        meter.finish(n)
    });
    assert_eq!(influx.count(DATABASE, MEASUREMENT, FIELD), n, "ceiling");
    run
}

/// `influx-sink run` with `[influxdb_output]` for this case, its backlog
/// and stderr in `dir`.
fn spawn_sink(dir: &Path, port: u16, case: Case, input: &Path, cache: &Path) -> Child {
    let batch = case.batch.to_string();
    let backlog = dir.join("backlog");
    let backlog = backlog.to_string_lossy();
    let mut keys = vec![
        ("batch_size", batch.as_str()),
        ("content_encoding", case.encoding()),
        ("persistent_storage_path", &backlog),
    ];
    let in_flight = std::env::var("DELIVERY_IN_FLIGHT").unwrap_or_default();
    if !in_flight.is_empty() {
        keys.push(("max_requests_in_flight", &in_flight));
    }
    let config = write_config(
        dir,
        &output_section("influxdb_output", port, DATABASE, &keys),
    );
    sink_command(&config, cache)
        .args(["--drain-timeout", DRAIN_TIMEOUT_S])
        .current_dir(dir)
        .stdin(File::open(input).expect("open input"))
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("stderr")).expect("create stderr file"))
        .spawn()
        .expect("spawn influx-sink")
}

/// `influx-sink run CONFIG` with the built component and the bench's own
/// compile cache.
fn sink_command(config: &Path, cache: &Path) -> Command {
    let mut c = Command::new(harness::sink_binary());
    c.arg("run")
        .arg(config)
        .arg("--component")
        .arg(harness::component_path())
        .arg("--cache-dir")
        .arg(cache);
    c
}

/// Reap `child` with `wait4`: its exit status and CPU time (user + system).
fn wait_with_cpu(child: Child) -> (ExitStatus, Duration) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data, all zeroes is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unreaped child (std never waited for it) and
    // both pointers are valid for the call.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (
        ExitStatus::from_raw(status),
        time(usage.ru_utime) + time(usage.ru_stime),
    )
}

/// The run and CPU µs per point of `influx-sink run` delivering the `n`
/// points of `input` to a fresh influxd.
fn sink(input: &Path, case: Case, cache: &Path, n: u64) -> (Run, f64) {
    let influx = Influxd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let cached = cache_entries(cache);
    let meter = Meter::start(&influx);
    let child = spawn_sink(dir.path(), influx.port(), case, input, cache);
    let (status, cpu) = wait_with_cpu(child);
    let run = meter.finish(n);
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    let summary = Summary::parse(&log);
    assert!(
        status.success()
            && summary.is_some_and(|s| s.accepted == n && s.delivered == n && s.dropped == 0),
        "influx-sink ({} lines per batch, {}): {status}, {summary:?}, expected {n} delivered\n{}",
        case.batch,
        case.encoding(),
        tail(&log, 20)
    );
    assert_eq!(influx.count(DATABASE, MEASUREMENT, FIELD), n, "sink");
    assert_eq!(
        cache_entries(cache),
        cached,
        "the timed sink run compiled the component (rebuilt during the bench?): rerun"
    );
    (run, cpu.as_secs_f64() * 1e6 / n as f64)
}

/// Run the sink on empty input (server: a closed port) and return how long
/// it took: the first call fills the compile cache, later ones measure the
/// start-up and shutdown floor that every timed sink run includes.
fn empty_run(work: &Path, cache: &Path) -> Duration {
    let dir = tempfile::tempdir_in(work).expect("temp dir");
    let config = write_config(
        dir.path(),
        &output_section("influxdb_output", closed_port(), DATABASE, &[]),
    );
    let started = Instant::now();
    let status = sink_command(&config, cache)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run influx-sink");
    assert!(status.success(), "influx-sink on empty input: {status}");
    started.elapsed()
}

/// How many compiled components `cache` holds: a timed run that adds one
/// compiled instead of loading, and its time is not the delivery's.
fn cache_entries(cache: &Path) -> usize {
    std::fs::read_dir(cache).map_or(0, |d| d.count())
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

/// Client counts the ceiling is measured with; the sink is compared with
/// the best of them, whatever its own `max_requests_in_flight`.
const CEILING_CLIENTS: [usize; 4] = [1, 2, 4, 8];

/// The ceilings and the sink for one case, `repeat` times each.
fn run_case(case: Case, lines: &[u8], n: u64, input: &Path, cache: &Path, repeat: usize) -> Row {
    let bodies = bodies(lines, case);
    let mut ceilings: Vec<Vec<Run>> = vec![Vec::new(); CEILING_CLIENTS.len()];
    let (mut sinks, mut cpu) = (vec![], vec![]);
    for _ in 0..repeat {
        for (runs, clients) in ceilings.iter_mut().zip(CEILING_CLIENTS) {
            runs.push(ceiling(&bodies, case.gzip, clients, n));
        }
        let (r, c) = sink(input, case, cache, n);
        sinks.push(r);
        cpu.push(c);
        let last: Vec<String> = ceilings
            .iter()
            .zip(CEILING_CLIENTS)
            .map(|(runs, clients)| {
                let run = runs[runs.len() - 1];
                format!(
                    "{:.0} (C={clients}, {:.0}% idle, influxd {:.1} µs)",
                    run.rate,
                    100.0 * run.idle,
                    run.server_us
                )
            })
            .collect();
        eprintln!(
            "delivery: {:>4} lines/batch {:>8}: ceiling {}, sink {:>9.0} points/s \
             ({:.0}% idle, influxd {:.1} µs), {:.2} µs CPU/point",
            case.batch,
            case.encoding(),
            last.join(" "),
            r.rate,
            100.0 * r.idle,
            r.server_us,
            c
        );
    }
    let rates = |runs: &[Run]| median(runs.iter().map(|r| r.rate).collect());
    let idles = |runs: &[Run]| median(runs.iter().map(|r| r.idle).collect());
    let ceiling: Vec<f64> = ceilings.iter().map(|runs| rates(runs)).collect();
    let best = (0..ceiling.len())
        .max_by(|&a, &b| ceiling[a].total_cmp(&ceiling[b]))
        .expect("at least one ceiling");
    Row {
        case,
        ceiling_idle: idles(&ceilings[best]),
        ceiling,
        sink: rates(&sinks),
        cpu_us: median(cpu),
        sink_idle: idles(&sinks),
    }
}

fn print_table(rows: &[Row], n: u64, bytes: usize, repeat: usize, startup: Duration) {
    println!("\n=== delivery: influx-sink vs influxd's own ceiling ===");
    println!("machine: {}", machine());
    println!(
        "input: {n} points, 20 fields, {:.0} B/point; medians of {repeat} run(s); \
         sink timed spawn to exit (empty-input run: {:.0} ms)",
        bytes as f64 / n as f64,
        startup.as_secs_f64() * 1e3
    );
    let heads: Vec<String> = CEILING_CLIENTS
        .iter()
        .map(|c| format!("{:>12}", format!("ceiling C={c}")))
        .collect();
    println!(
        "{:>6} {:>8} | {} | {:>12} | {:>9} | {:>10} | {:>15}",
        "batch",
        "encoding",
        heads.join(" "),
        "sink",
        "sink/best",
        "CPU/point",
        "idle best/sink"
    );
    for r in rows {
        let best = r.ceiling.iter().copied().fold(0.0, f64::max);
        let cells: Vec<String> = r.ceiling.iter().map(|c| format!("{c:>10.0}/s")).collect();
        println!(
            "{:>6} {:>8} | {} | {:>10.0}/s | {:>8.0}% | {:>7.2} µs | {:>6.0}% / {:>3.0}%",
            r.case.batch,
            r.case.encoding(),
            cells.join(" "),
            r.sink,
            100.0 * r.sink / best,
            r.cpu_us,
            100.0 * r.ceiling_idle,
            100.0 * r.sink_idle
        );
    }
}

fn main() {
    harness::Sink::require_built();
    let n = env_number("DELIVERY_POINTS", 200_000) as u64;
    let repeat = env_number("DELIVERY_REPEAT", 1).max(1);
    let cases = cases();

    let work = tempfile::tempdir().expect("temp dir");
    let lines = common::lines(n);
    let input: PathBuf = work.path().join("input.lp");
    std::fs::write(&input, &lines).expect("write input");
    // A cache of our own, filled here, so no timed run compiles.
    let cache = work.path().join("cache");
    empty_run(work.path(), &cache);
    let startup = empty_run(work.path(), &cache);

    let rows: Vec<Row> = cases
        .iter()
        .map(|&case| run_case(case, &lines, n, &input, &cache, repeat))
        .collect();
    print_table(&rows, n, lines.len(), repeat, startup);
}
