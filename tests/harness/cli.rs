//! Running the `influx-sink` sub-commands that end on their own (`validate`,
//! `simulate`) and reading what they print; plus the gateway's reconnect
//! rule as a model, to check `simulate`'s schedules against.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::sink::sink_binary;
use crate::util::{read_lossy, tail, wait_until};

/// How long a `validate` or `simulate` may take before it is killed.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// What one finished `influx-sink` command did.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Both streams, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            tail(&self.stdout, 60),
            tail(&self.stderr, 60)
        )
    }
}

/// Run `influx-sink ARGS` in `cwd` with empty standard input and wait for
/// it (at most 60 s; then it is killed and this panics).
pub fn cli(args: &[&str], cwd: &Path) -> CliOutput {
    let out_dir = tempfile::Builder::new()
        .prefix("influx-sink-cli-")
        .tempdir()
        .expect("temp dir for command output");
    let out_path = out_dir.path().join("stdout");
    let err_path = out_dir.path().join("stderr");
    let mut child = Command::new(sink_binary())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn influx-sink {args:?}: {e}"));
    let exited = wait_until(CLI_TIMEOUT, || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    // Reaps it (or returns the status try_wait already collected).
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("wait for influx-sink {args:?}: {e}"));
    assert!(
        exited,
        "influx-sink {args:?} did not exit within {CLI_TIMEOUT:?}; killed it\n\
         --- stderr ---\n{}",
        tail(&read_lossy(&err_path), 40)
    );
    CliOutput {
        code: status.code(),
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    }
}

/// `influx-sink validate CONFIG`, run in the config's directory.
pub fn validate(config: &Path) -> CliOutput {
    let dir = config.parent().expect("config has a parent dir");
    cli(&["validate", path_str(config)], dir)
}

/// `influx-sink simulate CONFIG --json EXTRA...`, run in the config's
/// directory; panics unless it exits 0 and prints one JSON document.
pub fn simulate_json(config: &Path, extra: &[&str]) -> Value {
    let dir = config.parent().expect("config has a parent dir");
    let mut args = vec!["simulate", path_str(config), "--json"];
    args.extend_from_slice(extra);
    let out = cli(&args, dir);
    assert_eq!(
        out.code,
        Some(0),
        "influx-sink {args:?} failed\n{}",
        out.describe()
    );
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "influx-sink {args:?} printed no JSON ({e})\n{}",
            out.describe()
        )
    })
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The `[section]` blocks of `validate`'s output: section name → key →
/// value as printed (`key = value` lines; `#` lines skipped).
pub fn parse_settings(stdout: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in stdout.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_string());
            out.entry(name.to_string()).or_default();
            continue;
        }
        let (Some(section), Some((k, v))) = (current.as_ref(), line.split_once('=')) else {
            panic!("unexpected line in validate output: {line:?}\n--- output ---\n{stdout}");
        };
        out.get_mut(section)
            .expect("section entry exists")
            .insert(k.trim().to_string(), v.trim().to_string());
    }
    out
}

/// The number a printed setting holds; panics (naming it) if it is missing
/// or not a number.
pub fn number(settings: &BTreeMap<String, String>, key: &str) -> f64 {
    let v = settings
        .get(key)
        .unwrap_or_else(|| panic!("validate printed no `{key}` in {settings:?}"));
    v.parse()
        .unwrap_or_else(|_| panic!("validate printed `{key} = {v}`: not a number"))
}

/// The boolean a printed setting holds (`true` / `false`).
pub fn boolean(settings: &BTreeMap<String, String>, key: &str) -> bool {
    match settings.get(key).map(String::as_str) {
        Some("true") => true,
        Some("false") => false,
        other => panic!("validate printed `{key} = {other:?}`: expected true or false"),
    }
}

/// A reconnect attempt of `simulate --json`: (`at_s`, `ok`).
pub fn attempts(report: &Value) -> Vec<(f64, bool)> {
    report["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no `attempts` array in {report}"))
        .iter()
        .map(|a| {
            let at = a["at_s"]
                .as_f64()
                .unwrap_or_else(|| panic!("attempt without at_s: {a}"));
            let ok = a["ok"]
                .as_bool()
                .unwrap_or_else(|| panic!("attempt without ok: {a}"));
            (at, ok)
        })
        .collect()
}

/// Whether two simulated times agree to within 0.01 s (the simulated
/// server answers after 1 ms).
pub fn same_time(a: f64, b: f64) -> bool {
    (a - b).abs() <= 0.01
}

/// Assert that `got` attempts match `want` (times within 0.01 s, same
/// outcome, same count).
pub fn assert_attempts(got: &[(f64, bool)], want: &[(f64, bool)], context: &str) {
    let matches = got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| same_time(g.0, w.0) && g.1 == w.1);
    assert!(
        matches,
        "{context}: reconnect attempts differ\n  got:  {got:?}\n  want: {want:?}"
    );
}

/// The gateway's reconnect rule, as documented: the delay before attempt
/// `n` (1-based) is `reconnect_delay × 2^(n-1)` capped at
/// `max_reconnect_delay` with exponential backoff (else `reconnect_delay`);
/// after `reconnect_attempts` attempts the sink keeps trying every
/// `max_reconnect_delay`.
#[derive(Debug, Clone, Copy)]
pub struct ReconnectRule {
    pub reconnect_delay: f64,
    pub use_exponential_backoff: bool,
    pub reconnect_attempts: u32,
    pub max_reconnect_delay: f64,
}

impl ReconnectRule {
    /// The rule of `validate`'s printed settings of one output.
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Self {
        ReconnectRule {
            reconnect_delay: number(settings, "reconnect_delay"),
            use_exponential_backoff: boolean(settings, "use_exponential_backoff"),
            reconnect_attempts: number(settings, "reconnect_attempts") as u32,
            max_reconnect_delay: number(settings, "max_reconnect_delay"),
        }
    }

    /// Delay in seconds before attempt `n` (1-based).
    pub fn delay(&self, n: u32) -> f64 {
        if n > self.reconnect_attempts {
            self.max_reconnect_delay
        } else if self.use_exponential_backoff {
            (self.reconnect_delay * 2f64.powi(n as i32 - 1)).min(self.max_reconnect_delay)
        } else {
            self.reconnect_delay
        }
    }

    /// The attempts expected when the server is down for `outage` seconds
    /// from t = 0: the first check at 0 fails, attempt 1 follows after
    /// `delay(1)`, each next one `delay(n)` after the previous one failed;
    /// an attempt at or after `outage` succeeds and ends the list. With
    /// `hang_timeout` (the server accepts and never answers) every failed
    /// check takes that long to fail.
    pub fn schedule(&self, outage: f64, hang_timeout: Option<f64>) -> Vec<(f64, bool)> {
        let fail_after = hang_timeout.unwrap_or(0.0);
        let mut out = Vec::new();
        let mut failed_at = fail_after; // the initial check at t = 0
        for n in 1.. {
            let at = failed_at + self.delay(n);
            let ok = at >= outage;
            out.push((at, ok));
            if ok || n > 100_000 {
                break;
            }
            failed_at = at + fail_after;
        }
        out
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn listening_on_loopback(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}
