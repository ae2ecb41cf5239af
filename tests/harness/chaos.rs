//! Helpers for the chaos tests (`tests/chaos_kill9.rs`): a seeded PRNG, a
//! run of `influx-sink run` whose stdin is fed in pieces by a writer thread
//! while the test kills the process at a moment of its choosing, the
//! `backlog dump` sub-command when the binary has it, and reading the `seq`
//! values (with their timestamps) that InfluxDB holds.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::sink::{component_path, sink_binary};
use crate::util::{body_text, http_agent, read_lossy, signal, tail, wait_until, Deadline};

/// SplitMix64: a tiny, well-mixed, seedable PRNG (no extra dependency), so a
/// chaos run is reproduced exactly from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "Rng::range({lo}, {hi})");
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
}

/// The seed from `$SEED` (decimal or `0x` hex), else one from the clock.
/// Returns (seed, whether it came from the environment).
pub fn seed_from_env() -> (u64, bool) {
    if let Ok(s) = std::env::var("SEED") {
        let s = s.trim();
        let parsed = match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        let seed = parsed.unwrap_or_else(|_| panic!("SEED={s:?} is not a u64"));
        return (seed, true);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    // Keep it short enough to type.
    (nanos % 1_000_000_000, false)
}

/// One piece of standard input and how long the writer waits before it.
#[derive(Debug, Clone)]
pub struct Piece {
    pub delay: Duration,
    pub bytes: Vec<u8>,
    /// Lines (points) in `bytes`.
    pub lines: u64,
}

/// What the writer thread got done.
#[derive(Debug, Default)]
pub struct WriterProgress {
    /// Pieces the writer began to write (their lines may have reached the
    /// sink, wholly or in part).
    pub started: AtomicU64,
    /// Pieces wholly handed to the pipe.
    pub written: AtomicU64,
    /// Set once the writer is done (all pieces written, or a write failed).
    pub done: AtomicBool,
    /// Set by the test when the process is gone: a writer keeping stdin
    /// open may close it and return.
    release: AtomicBool,
}

/// One `influx-sink run CONFIG --component PATH [args]` whose standard input
/// is a pipe fed by a writer thread, piece by piece; stderr goes to a file.
/// Dropping it SIGKILLs a still-running process.
pub struct ChaosRun {
    child: Child,
    status: Option<ExitStatus>,
    stderr_path: PathBuf,
    progress: Arc<WriterProgress>,
    writer: Option<JoinHandle<()>>,
}

impl ChaosRun {
    /// Start the run in the config's directory, and a writer thread that
    /// writes `pieces` (each after its delay) and then closes stdin if
    /// `close_after` (end of input: the sink flushes and drains), else keeps
    /// it open until the process dies. A failed write (the process was
    /// killed) ends the writer quietly.
    pub fn spawn(
        config: &Path,
        extra_args: &[&str],
        stderr_path: &Path,
        pieces: Vec<Piece>,
        close_after: bool,
    ) -> ChaosRun {
        let dir = config.parent().expect("config has a parent dir");
        let err = File::create(stderr_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", stderr_path.display()));
        let mut child = Command::new(sink_binary())
            .arg("run")
            .arg(config)
            .arg("--component")
            .arg(component_path())
            .args(extra_args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn influx-sink: {e}"));
        let mut pipe = child.stdin.take().expect("piped stdin");
        let progress = Arc::new(WriterProgress::default());
        let p = Arc::clone(&progress);
        let writer = std::thread::spawn(move || {
            for piece in &pieces {
                if !piece.delay.is_zero() {
                    std::thread::sleep(piece.delay);
                }
                p.started.fetch_add(1, Ordering::SeqCst);
                if pipe.write_all(&piece.bytes).is_err() {
                    p.done.store(true, Ordering::SeqCst);
                    return;
                }
                p.written.fetch_add(1, Ordering::SeqCst);
            }
            let _ = pipe.flush();
            if close_after {
                drop(pipe);
                p.done.store(true, Ordering::SeqCst);
            } else {
                p.done.store(true, Ordering::SeqCst);
                // Keep stdin open (no end of input) until the process dies.
                while !p.release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                drop(pipe);
            }
        });
        ChaosRun {
            child,
            status: None,
            stderr_path: stderr_path.to_path_buf(),
            progress,
            writer: Some(writer),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn progress(&self) -> &WriterProgress {
        &self.progress
    }

    /// Whether the writer thread has written every piece (or given up).
    pub fn writer_done(&self) -> bool {
        self.progress.done.load(Ordering::SeqCst)
    }

    /// Wait until the writer is done or the deadline passes.
    pub fn wait_writer(&self, deadline: impl Deadline) -> bool {
        wait_until(deadline, || self.writer_done())
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// SIGKILL and reap. Returns false if the process had already exited on
    /// its own (then nothing is sent).
    pub fn kill9(&mut self) -> bool {
        let killed = if self.try_status().is_none() {
            signal(self.child.id(), libc::SIGKILL);
            self.status = self.child.wait().ok();
            true
        } else {
            false
        };
        self.finish_writer();
        killed
    }

    fn finish_writer(&mut self) {
        // Tell a writer that keeps stdin open that it may close it now.
        self.progress.release.store(true, Ordering::SeqCst);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }

    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        tail(&self.stderr_text(), n)
    }
}

impl Drop for ChaosRun {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            signal(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
        self.finish_writer();
    }
}

/// What `influx-sink backlog dump DIR` printed.
#[derive(Debug, Clone)]
pub struct DumpOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run `influx-sink backlog dump DIR` (at most 60 s).
pub fn backlog_dump(dir: &Path) -> DumpOutput {
    let out = tempfile::Builder::new()
        .prefix("influx-sink-dump-")
        .tempdir()
        .expect("temp dir for dump output");
    let out_path = out.path().join("stdout");
    let err_path = out.path().join("stderr");
    let mut child = Command::new(sink_binary())
        .arg("backlog")
        .arg("dump")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create dump stdout"))
        .stderr(File::create(&err_path).expect("create dump stderr"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn influx-sink backlog dump: {e}"));
    let exited = wait_until(Duration::from_secs(60), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for influx-sink backlog dump");
    assert!(
        exited,
        "influx-sink backlog dump {} did not exit within 60 s",
        dir.display()
    );
    DumpOutput {
        code: status.code(),
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    }
}

/// Whether this `influx-sink` has the `backlog dump` sub-command: asked of
/// an empty directory. `None`: absent (the binary answers with its usage,
/// which does not mention it). Panics if the usage mentions `backlog dump`
/// but the call was refused (the interface differs from `backlog dump DIR`).
pub fn backlog_dump_available(empty_dir: &Path) -> Option<DumpOutput> {
    let out = backlog_dump(empty_dir);
    let usage_refusal = out.code == Some(2)
        && (out.stderr.contains("usage:") || out.stderr.contains("expected a command"));
    if !usage_refusal {
        return Some(out);
    }
    assert!(
        !out.stderr.contains("backlog dump"),
        "`influx-sink backlog dump {}` was refused although the usage lists `backlog dump`; \
         the chaos test expects `influx-sink backlog dump DIR`\n--- stderr ---\n{}",
        empty_dir.display(),
        out.stderr
    );
    None
}

/// The integer values of field `field` in `text`, one per line at most:
/// line protocol (`…,field=123i…` or ` field=123i`) or JSON
/// (`"field":123`). Lines without one are skipped (headers, summaries).
pub fn seqs_in_text(text: &str, field: &str) -> Vec<u64> {
    let lp = format!("{field}=");
    let json = format!("\"{field}\":");
    text.lines()
        .filter_map(|line| {
            find_int_after(line, &lp, true).or_else(|| find_int_after(line, &json, false))
        })
        .collect()
}

/// The first unsigned integer right after `key` in `line`, where `key` starts
/// the line or follows a space, comma or `{`; with `lp_int` it must end in
/// line protocol's `i` suffix.
fn find_int_after(line: &str, key: &str, lp_int: bool) -> Option<u64> {
    let mut from = 0;
    while let Some(pos) = line[from..].find(key) {
        let at = from + pos;
        let boundary = at == 0 || matches!(line.as_bytes()[at - 1], b' ' | b',' | b'{' | b'\t');
        let rest = line[at + key.len()..].trim_start_matches(' ');
        let digits: &str = &rest[..rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len())];
        let suffix_ok = !lp_int || rest[digits.len()..].starts_with('i');
        if boundary && !digits.is_empty() && suffix_ok {
            if let Ok(v) = digits.parse() {
                return Some(v);
            }
        }
        from = at + key.len();
    }
    None
}

/// `(time_ns, value)` of every point of `measurement` in `db` whose field
/// `field` is set and whose time is in `from_ns..to_ns`, queried in windows
/// of `window_ns` so no answer grows large. Empty if the database does not
/// exist yet.
pub fn field_values(
    url: &str,
    db: &str,
    measurement: &str,
    field: &str,
    from_ns: i64,
    to_ns: i64,
    window_ns: i64,
) -> Vec<(i64, u64)> {
    let agent = http_agent(Duration::from_secs(60));
    let mut out = Vec::new();
    let mut lo = from_ns;
    while lo < to_ns {
        let hi = (lo + window_ns).min(to_ns);
        let q =
            format!("SELECT \"{field}\" FROM \"{measurement}\" WHERE time >= {lo} AND time < {hi}");
        let body = match agent
            .get(&format!("{url}/query"))
            .query("db", db)
            .query("q", &q)
            .query("epoch", "ns")
            .call()
        {
            Ok(r) => body_text(r),
            Err(ureq::Error::Status(code, r)) => {
                panic!("influxd query {q:?}: HTTP {code} {}", body_text(r))
            }
            Err(e) => panic!("influxd query {q:?} failed: {e}"),
        };
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("influxd query {q:?}: bad JSON ({e}): {body}"));
        let res = &v["results"][0];
        if let Some(err) = res["error"].as_str().or(v["error"].as_str()) {
            if err.starts_with("database not found") {
                return Vec::new();
            }
            panic!("influxd query {q:?}: {err}");
        }
        assert!(
            res["partial"].as_bool() != Some(true),
            "influxd query {q:?} answered a partial result (max-row-limit?)"
        );
        for s in res["series"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            for row in s["values"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let t = row[0]
                    .as_i64()
                    .unwrap_or_else(|| panic!("query {q:?}: bad time in {row}"));
                let val = row[1]
                    .as_u64()
                    .or_else(|| row[1].as_f64().map(|f| f as u64))
                    .unwrap_or_else(|| panic!("query {q:?}: bad {field} in {row}"));
                out.push((t, val));
            }
        }
        lo = hi;
    }
    out
}
