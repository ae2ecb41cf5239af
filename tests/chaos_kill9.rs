//! Chaos: `kill -9` of the host at random moments, while it writes to and
//! drains its on-disk backlog against a real InfluxDB that is stopped and
//! started between runs: at least 60 kills, at least 10 of them during an
//! outage and 10 while a backlog drains, 5 of these cutting a drain in the
//! middle.
//!
//! Each step feeds the next slice of a rolling sequence of points (unique
//! integer field `seq`, explicit unique timestamps) on a pipe, in pieces,
//! sometimes only part of it, sometimes closing the input; the process is
//! killed at a random moment: a random delay after the start, after the
//! input was written, after the sink's first log line, or after it logged
//! the start of a drain (so kills land during start-up and recovery, while
//! reading, while backlogging, while draining, while flushing at the end of
//! input).
//!
//! What counts as stored: after each kill, the points in InfluxDB plus the
//! points in the backlog. The backlog is read with `influx-sink backlog dump
//! DIR` when the binary has that sub-command; otherwise (and always as a
//! cross-check) with the component's own backlog reader (`FileBacklog`,
//! what the next run loads) on a copy of the directory. Invariants:
//!
//! * after every step, every point that was stored after an earlier step is
//!   still stored (in InfluxDB or in the backlog): nothing stored vanishes;
//! * nothing appears that was never fed, and every point keeps its
//!   timestamp (so a re-send can only overwrite, never duplicate);
//! * at most one batch of the backlog is already in InfluxDB after a kill
//!   (README: a crash while draining re-sends at most the batch in flight);
//! * at the end, with the server up, a clean run with empty input exits 0,
//!   delivers exactly the backlog and leaves it empty; every point ever
//!   stored is in InfluxDB, and `count(seq) == count(distinct(seq))`.
//!
//! Points fed but not yet stored when the sink was killed (in the pipe, in
//! the host's queue, or accepted and still in memory) may be lost (README:
//! "What a crash can lose"); they are counted, not failed.
//!
//! `SEED=N` replays a run's decisions (the seed is printed): slice sizes,
//! pieces, the server's schedule, when to kill; the process timing still
//! varies. `CHAOS_KILLS=N` changes the number of kills (default 60). Sleeps
//! only place the kills; nothing asserts on elapsed time. The report is
//! printed to stderr: see it with `-- --nocapture`.
//!
//! Run: `cargo test --release --test chaos_kill9 -- --nocapture`

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use harness::chaos::{
    backlog_dump, backlog_dump_available, field_values, seed_from_env, seqs_in_text, ChaosRun,
    Piece, Rng,
};
use harness::{now_ns, output_section, point_line, tail, write_config, Influxd, Sink, Stdin};
use influx_sink_component::backlog::file::{FileBacklog, SyncMode};
use influx_sink_component::backlog::Backlog;

const DB: &str = "chaos";
const M: &str = "chaos_data";
const SECTION: &str = "influx";
const FIELD: &str = "seq";

const DEFAULT_KILLS: u32 = 60;
/// `batch_size` of the config.
const BATCH_SIZE: u64 = 200;
const MIN_PER_PHASE: u32 = 10;
/// Drain kills after which part of the old backlog was delivered and part
/// still waited (the kill cut a drain in the middle).
const MIN_DRAIN_CUT: u32 = 5;
const MAX_STEPS: u32 = 250;
const SLICE_MIN: u64 = 2_000;
const SLICE_MAX: u64 = 5_000;
/// Timestamps are 1 µs apart; queries go in windows of this many points.
const TS_STEP: i64 = 1_000;
const QUERY_WINDOW_POINTS: i64 = 50_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Server down during the whole run.
    Outage,
    /// Server up and a non-empty backlog at the start of the run.
    Drain,
    /// Server up, backlog empty at the start.
    Live,
}

/// Where the random delay before the kill starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillAt {
    /// The process start.
    Start,
    /// The writer having handed all of this step's input to the pipe.
    InputWritten,
    /// The sink's first log line (the component is running).
    FirstLog,
    /// The sink's `Flushing N backlog points to InfluxDB` log line.
    FlushLog,
}

/// The log line of a backlog drain beginning.
const FLUSH_LOG: &str = "] Flushing ";

/// How the backlog is read after a kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BacklogView {
    /// `influx-sink backlog dump DIR`, cross-checked with the reader.
    Dump,
    /// The component's `FileBacklog` on a copy of the directory.
    Reader,
}

/// The points in the backlog directory, per the component's own reader.
struct ReaderView {
    /// `(seq, timestamp)` of every point, oldest first.
    points: Vec<(u64, i64)>,
    /// Warnings of opening (torn tail, corrupt record, quarantine, cursor)
    /// and read errors.
    warnings: Vec<String>,
}

/// Copy the segment files and the cursor of `dir` into a fresh `scratch`,
/// open the copy with the component's `FileBacklog` and read every point.
fn read_backlog(dir: &Path, scratch: &Path) -> ReaderView {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).expect("create scratch dir");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                std::fs::copy(e.path(), scratch.join(e.file_name()))
                    .unwrap_or_else(|err| panic!("copy {}: {err}", e.path().display()));
            }
        }
    }
    let (mut b, report) = FileBacklog::open(scratch, SyncMode::Never)
        .unwrap_or_else(|e| panic!("open backlog copy of {}: {e}", dir.display()));
    let mut warnings = report.warnings.clone();
    let mut points = Vec::new();
    // A damaged record makes peek fail once and is then skipped, as in the sink.
    for _ in 0..1000 {
        match b.peek(b.len() as usize) {
            Ok(ps) => {
                points = ps;
                break;
            }
            Err(e) => warnings.push(format!("read error: {e}")),
        }
    }
    let points = points
        .iter()
        .map(|p| {
            let seq = seqs_in_text(&format!(" {}", p.fields()), FIELD)
                .first()
                .copied()
                .unwrap_or_else(|| panic!("backlog point without {FIELD}: {:?}", p.line));
            (seq, p.timestamp)
        })
        .collect();
    ReaderView { points, warnings }
}

/// Log lines of a run worth a second look after a `kill -9`.
fn notable_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| {
            let low = l.to_ascii_lowercase();
            l.contains(" ERROR ")
                || low.contains("torn")
                || low.contains("corrupt")
                || low.contains("quarantin")
                || low.contains("panic")
                || low.contains("cursor")
        })
        .map(str::to_string)
        .collect()
}

#[derive(Default)]
struct Totals {
    kills: u32,
    clean_exits: u32,
    outage: u32,
    drain: u32,
    live: u32,
    /// Drain kills after which part of the earlier backlog was delivered
    /// and part still waited: the kill cut a drain in the middle.
    drain_cut: u32,
    /// Outage kills after which the backlog held more than before.
    outage_grew: u32,
    fed: u64,
    /// Kills at least 250 ms after the input was written, and the most
    /// points of that step's input not stored at such a kill (informative:
    /// timing, not asserted).
    settled_kills: u32,
    settled_max_lost: u64,
    /// Most backlog points already in InfluxDB after a kill (re-sent later).
    max_overlap: u64,
    toggles: u32,
    toggle_time: Duration,
    dump_mismatches: u32,
    notable: Vec<String>,
}

#[test]
fn chaos_kill9_backlog_and_drain() {
    let started = Instant::now();
    let (seed, from_env) = seed_from_env();
    let kills_wanted: u32 = std::env::var("CHAOS_KILLS")
        .ok()
        .map(|v| v.trim().parse().expect("CHAOS_KILLS is a number"))
        .unwrap_or(DEFAULT_KILLS);
    eprintln!(
        "chaos_kill9: SEED={seed}{} kills wanted: {kills_wanted} \
         (reproduce: SEED={seed} cargo test --release --test chaos_kill9 -- --nocapture)",
        if from_env { " (from $SEED)" } else { "" }
    );
    let mut rng = Rng::new(seed);

    Sink::require_built();
    let mut influx = Influxd::start();
    let work = tempfile::Builder::new()
        .prefix("chaos-kill9-")
        .tempdir()
        .expect("temp dir");
    let config = write_config(
        work.path(),
        &output_section(
            SECTION,
            influx.port(),
            DB,
            &[
                ("batch_size", &BATCH_SIZE.to_string()),
                ("batch_timeout", "0.1"),
                ("reconnect_delay", "0.1"),
                ("max_reconnect_delay", "0.5"),
                ("connection_timeout", "1"),
                ("enable_persistent_storage", "true"),
                ("persistent_storage_path", "backlog"),
                ("max_backlog_size", "10000000"),
            ],
        ),
    );
    let config = config.canonicalize().expect("canonical config path");
    let backlog_dir = work.path().join("backlog").join(SECTION);
    let scratch = work.path().join("reader-copy");
    let logs = work.path().join("runs");
    std::fs::create_dir_all(&logs).expect("create runs dir");

    let probe = work.path().join("dump-probe");
    std::fs::create_dir_all(&probe).expect("create dump probe dir");
    let mut view = match backlog_dump_available(&probe) {
        Some(out) => {
            eprintln!(
                "chaos_kill9: `influx-sink backlog dump` is available (probe exit {:?}); \
                 the backlog is read with it, cross-checked with the component's reader",
                out.code
            );
            BacklogView::Dump
        }
        None => {
            eprintln!(
                "chaos_kill9: this influx-sink has no `backlog dump`; the backlog is read \
                 with the component's own reader (FileBacklog) on a copy of the directory"
            );
            BacklogView::Reader
        }
    };

    let base_ts = now_ns() - 2 * 3_600_000_000_000;
    let ts = |seq: u64| base_ts + seq as i64 * TS_STEP;

    // Per seq: fed at all; known to be in InfluxDB; the step after which it
    // was first seen stored (0 = never).
    let mut fed: Vec<bool> = Vec::new();
    let mut in_influx: Vec<bool> = Vec::new();
    let mut stored_since: Vec<u32> = Vec::new();
    // Stored, not yet seen in InfluxDB: must be in the backlog.
    let mut pending: BTreeSet<u64> = BTreeSet::new();
    let mut backlog_now: HashSet<u64> = HashSet::new();
    let mut next_seq: u64 = 0;

    let mut t = Totals::default();

    let mut server_up = rng.chance(0.5);
    let mut block_left = 0u64;
    let mut step: u32 = 0;
    // Go on until enough kills of each kind, and until a step ends with a
    // backlog, so that the final clean run has one to deliver.
    while t.kills < kills_wanted
        || t.outage < MIN_PER_PHASE
        || t.drain < MIN_PER_PHASE
        || t.drain_cut < MIN_DRAIN_CUT
        || backlog_now.is_empty()
    {
        step += 1;
        assert!(
            step <= MAX_STEPS,
            "SEED={seed}: {MAX_STEPS} steps without reaching {kills_wanted} kills with \
             {MIN_PER_PHASE} in each of outage and drain, {MIN_DRAIN_CUT} of them cutting a \
             drain (kills {}, outage {}, drain {}, cut {})",
            t.kills,
            t.outage,
            t.drain,
            t.drain_cut
        );

        // --- the server, in blocks of steps: up 1-3 steps, down 1-4 steps.
        if block_left == 0 {
            server_up = !server_up;
            block_left = if server_up {
                rng.range(1, 3)
            } else {
                rng.range(1, 4)
            };
        }
        block_left -= 1;
        if server_up != influx.is_running() {
            let t0 = Instant::now();
            if server_up {
                influx.start_again();
            } else {
                influx.stop();
            }
            t.toggles += 1;
            t.toggle_time += t0.elapsed();
        }
        let backlog_before: HashSet<u64> = backlog_now.clone();
        let phase = if !server_up {
            Phase::Outage
        } else if !backlog_before.is_empty() {
            Phase::Drain
        } else {
            Phase::Live
        };

        // --- this step's input: the next slice, in pieces.
        let slice_start = next_seq;
        let n = rng.range(SLICE_MIN, SLICE_MAX);
        next_seq += n;
        let k = rng.range(1, 10);
        let mut cuts: Vec<u64> = (1..k).map(|_| rng.range(1, n - 1)).collect();
        cuts.push(0);
        cuts.push(n);
        cuts.sort_unstable();
        cuts.dedup();
        let mut pieces: Vec<Piece> = cuts
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let bytes: String = (slice_start + w[0]..slice_start + w[1])
                    .map(|s| point_line(M, s, ts(s)))
                    .collect();
                Piece {
                    delay: Duration::from_millis(if i == 0 { 0 } else { rng.range(0, 40) }),
                    bytes: bytes.into_bytes(),
                    lines: w[1] - w[0],
                }
            })
            .collect();
        let partial = rng.chance(0.2);
        if partial {
            let keep = rng.range(0, pieces.len() as u64 - 1) as usize;
            pieces.truncate(keep);
        }
        let piece_lines: Vec<u64> = pieces.iter().map(|p| p.lines).collect();
        let close_input = rng.chance(0.2);
        // When to kill: a random delay after the start, after the input was
        // written, after the first log line (start-up done), or (half the
        // drains) after the drain began, so that kills also land inside
        // drains that last a few hundred milliseconds.
        let kill_at = if phase == Phase::Drain && rng.chance(0.5) {
            KillAt::FlushLog
        } else {
            match rng.range(0, 99) {
                0..=34 => KillAt::InputWritten,
                35..=69 => KillAt::FirstLog,
                _ => KillAt::Start,
            }
        };
        let sleep_ms = match kill_at {
            KillAt::FlushLog => rng.range(0, 120),
            KillAt::InputWritten | KillAt::FirstLog => rng.range(0, 400),
            KillAt::Start => rng.range(0, 700),
        };

        // --- run, then kill -9 at the chosen moment.
        let stderr_path = logs.join(format!("step-{step:03}.stderr"));
        let mut run = ChaosRun::spawn(
            &config,
            &["--drain-timeout", "600"],
            &stderr_path,
            pieces,
            close_input,
        );
        match kill_at {
            KillAt::InputWritten => {
                let taken = run.wait_writer(Duration::from_secs(60));
                assert!(
                    taken,
                    "SEED={seed} step {step}: influx-sink did not take its {n}-point input \
                     within 60 s (a source must never be blocked)\n--- stderr tail ---\n{}",
                    run.stderr_tail(30)
                );
            }
            KillAt::FlushLog | KillAt::FirstLog => {
                // Poll finely; if the line never comes, the kill simply
                // lands elsewhere.
                let needle = if kill_at == KillAt::FlushLog {
                    FLUSH_LOG
                } else {
                    "\n"
                };
                let until = Instant::now() + Duration::from_secs(10);
                while Instant::now() < until
                    && !run.stderr_text().contains(needle)
                    && run.try_status().is_none()
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            KillAt::Start => {}
        }
        std::thread::sleep(Duration::from_millis(sleep_ms));
        let killed = run.kill9();
        let started_pieces = run
            .progress()
            .started
            .load(std::sync::atomic::Ordering::SeqCst) as usize;
        let stderr = run.stderr_text();
        if !killed {
            let status = run.try_status();
            let code = status.and_then(|s| s.code());
            assert!(
                close_input && matches!(code, Some(0) | Some(3)),
                "SEED={seed} step {step}: influx-sink exited on its own before the kill \
                 ({status:?}; input closed: {close_input})\n--- stderr tail ---\n{}",
                tail(&stderr, 30)
            );
            t.clean_exits += 1;
        }
        drop(run);
        for l in notable_lines(&stderr) {
            t.notable.push(format!("step {step}: {l}"));
        }

        // Mark what may have reached the sink (every piece begun).
        let fed_lines: u64 = piece_lines.iter().take(started_pieces).sum();
        fed.resize(next_seq as usize, false);
        in_influx.resize(next_seq as usize, false);
        stored_since.resize(next_seq as usize, 0);
        for s in slice_start..slice_start + fed_lines {
            fed[s as usize] = true;
        }
        t.fed += fed_lines;

        // --- what is stored now: the backlog...
        let reader = read_backlog(&backlog_dir, &scratch);
        for w in &reader.warnings {
            t.notable.push(format!("step {step}: backlog reader: {w}"));
        }
        let reader_set: HashSet<u64> = reader.points.iter().map(|&(s, _)| s).collect();
        for &(s, p_ts) in &reader.points {
            assert!(
                (s as usize) < fed.len() && fed[s as usize],
                "SEED={seed} step {step}: the backlog holds seq {s}, which was never fed"
            );
            assert_eq!(
                p_ts,
                ts(s),
                "SEED={seed} step {step}: backlog point seq {s} has timestamp {p_ts}, fed \
                 with {}: a re-send would duplicate it",
                ts(s)
            );
        }
        backlog_now = if view == BacklogView::Dump && backlog_dir.exists() {
            let out = backlog_dump(&backlog_dir);
            // 1: it printed the points but found damage (reported below).
            assert!(
                matches!(out.code, Some(0) | Some(1)),
                "SEED={seed} step {step}: influx-sink backlog dump {} failed with exit \
                 {:?}\n--- stderr ---\n{}",
                backlog_dir.display(),
                out.code,
                tail(&out.stderr, 30)
            );
            if out.code != Some(0) {
                for l in out.stderr.lines() {
                    t.notable.push(format!("step {step}: backlog dump: {l}"));
                }
            }
            let mut dumped: HashSet<u64> = HashSet::new();
            for line in out.stdout.lines() {
                let Some(&s) = seqs_in_text(line, FIELD).first() else {
                    continue;
                };
                // Line protocol: the timestamp is the last token.
                if let Some(Ok(p_ts)) = line.split_whitespace().last().map(str::parse::<i64>) {
                    assert_eq!(
                        p_ts,
                        ts(s),
                        "SEED={seed} step {step}: `backlog dump` shows seq {s} with timestamp \
                         {p_ts}, fed with {}: {line}",
                        ts(s)
                    );
                }
                dumped.insert(s);
            }
            if dumped.is_empty() && !reader_set.is_empty() {
                eprintln!(
                    "chaos_kill9: step {step}: `backlog dump` printed no `{FIELD}` values \
                     for a backlog of {} points; its format is not understood, so the \
                     component's reader is used from now on. First lines:\n{}",
                    reader_set.len(),
                    out.stdout.lines().take(5).collect::<Vec<_>>().join("\n")
                );
                view = BacklogView::Reader;
                reader_set.clone()
            } else {
                if dumped != reader_set {
                    t.dump_mismatches += 1;
                    let only_dump = dumped.difference(&reader_set).count();
                    let only_reader = reader_set.difference(&dumped).count();
                    eprintln!(
                        "chaos_kill9: step {step}: WARNING `backlog dump` and the component's \
                         reader disagree: {} vs {} points ({only_dump} only in the dump, \
                         {only_reader} only in the reader)",
                        dumped.len(),
                        reader_set.len()
                    );
                }
                for &s in &dumped {
                    assert!(
                        (s as usize) < fed.len() && fed[s as usize],
                        "SEED={seed} step {step}: `backlog dump` shows seq {s}, which was \
                         never fed"
                    );
                }
                dumped
            }
        } else {
            reader_set
        };

        // ...and InfluxDB (unchanged if it was down for the whole step).
        let mut new_in_influx = 0u64;
        if server_up {
            // Only points stored but not yet seen there, or fed in this
            // step, can be new in InfluxDB (and late arrivals of earlier
            // killed requests, which the final full read finds).
            let lo = pending
                .first()
                .copied()
                .unwrap_or(slice_start)
                .min(slice_start);
            let rows = field_values(
                &influx.url(),
                DB,
                M,
                FIELD,
                ts(lo),
                ts(next_seq),
                QUERY_WINDOW_POINTS * TS_STEP,
            );
            new_in_influx = check_influx_rows(&rows, &fed, &mut in_influx, &ts, seed, step);
        }

        // --- the invariant: nothing stored earlier has vanished.
        let missing: Vec<u64> = pending
            .iter()
            .copied()
            .filter(|&s| !in_influx[s as usize] && !backlog_now.contains(&s))
            .collect();
        if !missing.is_empty() {
            let first: Vec<String> = missing
                .iter()
                .take(12)
                .map(|&s| format!("{s} (stored since step {})", stored_since[s as usize]))
                .collect();
            let in_backlog_dir: Vec<String> = std::fs::read_dir(&backlog_dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            panic!(
                "SEED={seed} step {step} ({phase:?}, server {}): {} point(s) that were stored \
                 (in InfluxDB or in the backlog) after an earlier step are now in neither: \
                 lost after kill -9. First: {}. Backlog now holds {} points ({:?} read with \
                 {view:?}); files {in_backlog_dir:?}\n--- last run's stderr tail ---\n{}\n\
                 Reproduce: SEED={seed} cargo test --release --test chaos_kill9 -- --nocapture",
                if server_up { "up" } else { "down" },
                missing.len(),
                first.join(", "),
                backlog_now.len(),
                backlog_dir,
                tail(&stderr, 30)
            );
        }

        // README: "A crash while draining re-sends at most the batch in
        // flight; the read position is persisted after every acknowledged
        // batch." So at most one batch of the backlog is already in InfluxDB.
        let overlap = backlog_now
            .iter()
            .filter(|&&s| in_influx[s as usize])
            .count() as u64;
        t.max_overlap = t.max_overlap.max(overlap);
        assert!(
            overlap <= BATCH_SIZE,
            "SEED={seed} step {step} ({phase:?}): {overlap} points in the backlog are already \
             in InfluxDB: the next run re-sends more than the one batch ({BATCH_SIZE} points) \
             that can be in flight at a kill\n--- last run's stderr tail ---\n{}",
            tail(&stderr, 30)
        );

        // --- bookkeeping and phase statistics.
        let before_delivered = backlog_before
            .iter()
            .filter(|&&s| in_influx[s as usize])
            .count();
        let before_waiting = backlog_before
            .iter()
            .filter(|&&s| backlog_now.contains(&s) && !in_influx[s as usize])
            .count();
        pending.retain(|&s| !in_influx[s as usize]);
        let mut newly_stored = 0u64;
        for &s in &backlog_now {
            if stored_since[s as usize] == 0 {
                stored_since[s as usize] = step;
                newly_stored += 1;
            }
            if !in_influx[s as usize] {
                pending.insert(s);
            }
        }
        if server_up {
            for s in 0..next_seq as usize {
                if in_influx[s] && stored_since[s] == 0 {
                    stored_since[s] = step;
                    newly_stored += 1;
                }
            }
        }
        let slice_stored = (slice_start..slice_start + fed_lines)
            .filter(|&s| stored_since[s as usize] > 0)
            .count() as u64;
        if killed && kill_at == KillAt::InputWritten && sleep_ms >= 250 {
            t.settled_kills += 1;
            t.settled_max_lost = t.settled_max_lost.max(fed_lines - slice_stored);
        }
        if killed {
            t.kills += 1;
            match phase {
                Phase::Outage => {
                    t.outage += 1;
                    if backlog_now.len() > backlog_before.len() {
                        t.outage_grew += 1;
                    }
                }
                Phase::Drain => {
                    t.drain += 1;
                    if before_delivered > 0 && before_waiting > 0 {
                        t.drain_cut += 1;
                    }
                }
                Phase::Live => t.live += 1,
            }
        }
        eprintln!(
            "step {step:3} {:<6} {} fed {fed_lines:4}/{n} {}{}{} kill@{sleep_ms:3}ms{} \
             backlog {:6} -> {:6} (drained {before_delivered}) +influx {new_in_influx:5} \
             +stored {newly_stored:5} pending {}",
            format!("{phase:?}"),
            if server_up { "up  " } else { "down" },
            if partial { "partial " } else { "" },
            if close_input { "eof " } else { "" },
            match kill_at {
                KillAt::Start => "",
                KillAt::InputWritten => "after-input ",
                KillAt::FirstLog => "after-first-log ",
                KillAt::FlushLog => "after-flush-log ",
            },
            if killed { "" } else { " (exited by itself)" },
            backlog_before.len(),
            backlog_now.len(),
            pending.len()
        );
    }

    // --- final: server up, a clean run with empty input drains everything.
    if !influx.is_running() {
        influx.start_again();
    }
    let before_final = read_backlog(&backlog_dir, &scratch);
    let mut last = Sink::spawn_with(&config, Stdin::Empty, &["--drain-timeout", "120"]);
    let (code, stderr) = last.wait();
    let summary = last.summary();
    for l in notable_lines(&stderr) {
        t.notable.push(format!("final run: {l}"));
    }
    assert_eq!(
        code,
        Some(0),
        "SEED={seed}: final run (server up, empty input) must deliver the whole backlog \
         and exit 0; summary {summary:?}\n--- stderr tail ---\n{}",
        tail(&stderr, 40)
    );
    assert_eq!(
        (
            summary.accepted,
            summary.delivered,
            summary.backlogged,
            summary.dropped,
            summary.rejected
        ),
        (0, before_final.points.len() as u64, 0, 0, 0),
        "SEED={seed}: final run summary (accepted, delivered, backlogged, dropped, rejected) \
         with {} points in the backlog before it; full: {summary:?}",
        before_final.points.len()
    );
    let after_final = read_backlog(&backlog_dir, &scratch);
    assert!(
        after_final.points.is_empty(),
        "SEED={seed}: the backlog still holds {} points after a final run that exited 0",
        after_final.points.len()
    );
    if view == BacklogView::Dump {
        let out = backlog_dump(&backlog_dir);
        let left = seqs_in_text(&out.stdout, FIELD);
        assert!(
            matches!(out.code, Some(0) | Some(1)) && left.is_empty(),
            "SEED={seed}: `backlog dump` after the final run: exit {:?}, {} points\n{}",
            out.code,
            left.len(),
            tail(&out.stdout, 10)
        );
    }

    // Everything, from the start: late arrivals included.
    in_influx.iter_mut().for_each(|b| *b = false);
    let rows = field_values(
        &influx.url(),
        DB,
        M,
        FIELD,
        ts(0),
        ts(next_seq),
        QUERY_WINDOW_POINTS * TS_STEP,
    );
    check_influx_rows(&rows, &fed, &mut in_influx, &ts, seed, step + 1);
    let ever_stored: Vec<u64> = (0..next_seq)
        .filter(|&s| stored_since[s as usize] > 0)
        .collect();
    let missing: Vec<u64> = ever_stored
        .iter()
        .copied()
        .filter(|&s| !in_influx[s as usize])
        .collect();
    assert!(
        missing.is_empty(),
        "SEED={seed}: after the final drain {} stored point(s) are not in InfluxDB; first: {:?}",
        missing.len(),
        missing
            .iter()
            .take(12)
            .map(|&s| (s, stored_since[s as usize]))
            .collect::<Vec<_>>()
    );
    let count = influx.count(DB, M, FIELD);
    let distinct = influx.count_distinct(DB, M, FIELD);
    let delivered = in_influx.iter().filter(|&&b| b).count() as u64;
    assert_eq!(
        (count, distinct),
        (delivered, delivered),
        "SEED={seed}: count(seq), count(distinct(seq)) in InfluxDB vs distinct seq rows \
         read back: duplicates must be identical overwrites"
    );

    let lost = t.fed - delivered;
    eprintln!(
        "chaos_kill9: SEED={seed}: {} steps, {} kills (outage {}, drain {} [{} cut mid-drain], \
         live {}), {} runs ended by themselves at end of input; outage kills with the backlog \
         growing: {}",
        step, t.kills, t.outage, t.drain, t.drain_cut, t.live, t.clean_exits, t.outage_grew
    );
    eprintln!(
        "chaos_kill9: points fed {}, stored (InfluxDB or backlog after some step) {}, in \
         InfluxDB at the end {} (count {count} = distinct {distinct}), fed but never stored \
         (in the pipe, host queue or memory at a kill) {lost}; final run delivered {} from \
         the backlog",
        t.fed,
        ever_stored.len(),
        delivered,
        summary.delivered
    );
    eprintln!(
        "chaos_kill9: kills >= 250 ms after the input was written: {}, most points of \
         their input not stored: {} (informative)",
        t.settled_kills, t.settled_max_lost
    );
    eprintln!(
        "chaos_kill9: most backlog points already in InfluxDB after a kill (to be re-sent, \
         overwriting): {} (limit: one batch, {BATCH_SIZE})",
        t.max_overlap
    );
    eprintln!(
        "chaos_kill9: backlog read with {view:?}; dump/reader disagreements: {}; server \
         toggles {} ({:.1} s); runtime {:.1} s",
        t.dump_mismatches,
        t.toggles,
        t.toggle_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if !t.notable.is_empty() {
        eprintln!(
            "chaos_kill9: {} notable log line(s) (errors, torn tails, corrupt records, \
             cursor warnings); first 20:\n{}",
            t.notable.len(),
            t.notable
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Check rows `(time, seq)` read from InfluxDB: every seq was fed, carries
/// the timestamp it was fed with, and appears once. Marks them in
/// `in_influx`; returns how many were not marked before.
fn check_influx_rows(
    rows: &[(i64, u64)],
    fed: &[bool],
    in_influx: &mut [bool],
    ts: &dyn Fn(u64) -> i64,
    seed: u64,
    step: u32,
) -> u64 {
    let mut seen = HashSet::with_capacity(rows.len());
    let mut new = 0;
    for &(time, s) in rows {
        assert!(
            (s as usize) < fed.len() && fed[s as usize],
            "SEED={seed} step {step}: InfluxDB holds seq {s}, which was never fed"
        );
        assert_eq!(
            time,
            ts(s),
            "SEED={seed} step {step}: InfluxDB holds seq {s} at time {time}, fed with {}",
            ts(s)
        );
        assert!(
            seen.insert(s),
            "SEED={seed} step {step}: InfluxDB holds seq {s} more than once"
        );
        if !in_influx[s as usize] {
            in_influx[s as usize] = true;
            new += 1;
        }
    }
    new
}
