//! Running the `influx-sink` binary under test.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::util::{read_lossy, signal, tail, wait_until, Deadline};

/// How long [`Sink::wait`] waits before it kills the run and panics.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// The cargo target directory: `$CARGO_TARGET_DIR` (at run time, else at
/// build time; relative to the workspace root) or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let configured = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_DIR").map(PathBuf::from));
    match configured {
        Some(p) if p.is_absolute() => p,
        Some(p) => workspace.join(p),
        None => workspace.join("target"),
    }
}

const BUILD_HINT: &str = "build it first:\n  \
     cargo build --release -p influx-sink-host\n  \
     cargo build --profile ship -p influx-sink-component --target wasm32-wasip2";

/// `<target>/release/influx-sink` (or `$INFLUX_SINK_BIN`). Panics with
/// build instructions if it is missing.
pub fn sink_binary() -> PathBuf {
    let path = std::env::var_os("INFLUX_SINK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release").join("influx-sink"));
    assert!(
        path.is_file(),
        "influx-sink binary not built: {} is missing; {BUILD_HINT}",
        path.display()
    );
    path
}

/// `<target>/wasm32-wasip2/ship/influx_sink_component.wasm` (or
/// `$INFLUX_SINK_COMPONENT`). Panics with build instructions if missing.
pub fn component_path() -> PathBuf {
    let path = std::env::var_os("INFLUX_SINK_COMPONENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            target_dir()
                .join("wasm32-wasip2")
                .join("ship")
                .join("influx_sink_component.wasm")
        });
    assert!(
        path.is_file(),
        "influx-sink component not built: {} is missing; {BUILD_HINT}",
        path.display()
    );
    path
}

/// What the run reads on its standard input.
pub enum Stdin {
    /// `/dev/null`: end of input at once.
    Empty,
    /// These bytes, written by a helper thread, then end of input.
    Bytes(Vec<u8>),
    /// This file; [`Sink::stdin_offset`] then tells how far it was read.
    File(PathBuf),
    /// A pipe left open: [`Sink::write_stdin`], then [`Sink::close_stdin`].
    Pipe,
}

/// The counters of the run's last stderr line,
/// `summary accepted=N delivered=N backlogged=N dropped=N rejected=N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub accepted: u64,
    pub delivered: u64,
    pub backlogged: u64,
    pub dropped: u64,
    pub rejected: u64,
}

impl Summary {
    /// Parse the last line of `stderr` that contains `summary accepted=`.
    /// `None` if there is none or a counter is missing or not a number.
    pub fn parse(stderr: &str) -> Option<Summary> {
        let line = stderr
            .lines()
            .rev()
            .find(|l| l.contains("summary accepted="))?;
        let rest = &line[line.find("summary accepted=")? + "summary ".len()..];
        let get = |key: &str| -> Option<u64> {
            rest.split_whitespace()
                .find_map(|tok| tok.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        Some(Summary {
            accepted: get("accepted")?,
            delivered: get("delivered")?,
            backlogged: get("backlogged")?,
            dropped: get("dropped")?,
            rejected: get("rejected")?,
        })
    }
}

/// Numbers the stderr files of the runs of this process.
static RUN_ID: AtomicU64 = AtomicU64::new(0);

/// One run of `influx-sink run CONFIG --component PATH [args]`. Its stderr
/// (and stdout) go to files next to the config, readable at any time.
/// Dropping a still-running `Sink` kills it (SIGKILL).
pub struct Sink {
    child: Child,
    status: Option<ExitStatus>,
    config: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    stdin: Option<ChildStdin>,
    stdin_len: Option<u64>,
    writer: Option<JoinHandle<std::io::Result<()>>>,
}

impl Sink {
    /// Panic with build instructions unless the binary and the component
    /// exist; call first in a test so no server is started in vain.
    pub fn require_built() {
        sink_binary();
        component_path();
    }

    /// Run with `stdin` as input (`None`: empty input) and no extra args.
    pub fn spawn(config: &Path, stdin: Option<Vec<u8>>) -> Sink {
        let stdin = match stdin {
            None => Stdin::Empty,
            Some(bytes) => Stdin::Bytes(bytes),
        };
        Sink::spawn_with(config, stdin, &[])
    }

    /// Run with the given input and extra arguments after
    /// `run CONFIG --component PATH` (e.g. `["--drain-timeout", "60"]`).
    /// The working directory is the config's directory.
    pub fn spawn_with(config: &Path, stdin: Stdin, extra_args: &[&str]) -> Sink {
        Sink::spawn_program(&sink_binary(), &component_path(), config, stdin, extra_args)
    }

    /// Like [`Sink::spawn_with`] but with an explicit program and component
    /// (the harness self-test runs a stand-in script through it).
    pub fn spawn_program(
        bin: &Path,
        component: &Path,
        config: &Path,
        stdin: Stdin,
        extra_args: &[&str],
    ) -> Sink {
        let config = config
            .canonicalize()
            .unwrap_or_else(|e| panic!("config {}: {e}", config.display()));
        let dir = config
            .parent()
            .expect("config has a parent dir")
            .to_path_buf();
        let n = RUN_ID.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let stderr_path = dir.join(format!("influx-sink-{pid}-{n}.stderr"));
        let stdout_path = dir.join(format!("influx-sink-{pid}-{n}.stdout"));
        let err = File::create(&stderr_path).expect("create stderr file");
        let out = File::create(&stdout_path).expect("create stdout file");

        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg(&config)
            .arg("--component")
            .arg(component)
            .args(extra_args)
            .current_dir(&dir)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let mut stdin_len = None;
        let mut bytes = None;
        match stdin {
            Stdin::Empty => {
                cmd.stdin(Stdio::null());
            }
            Stdin::Bytes(b) => {
                cmd.stdin(Stdio::piped());
                bytes = Some(b);
            }
            Stdin::File(path) => {
                let f = File::open(&path)
                    .unwrap_or_else(|e| panic!("open stdin file {}: {e}", path.display()));
                stdin_len = Some(f.metadata().expect("stat stdin file").len());
                cmd.stdin(Stdio::from(f));
            }
            Stdin::Pipe => {
                cmd.stdin(Stdio::piped());
            }
        }
        // ETXTBSY: a just-written script can still be open in a child that
        // another test thread forked; retry briefly.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("spawn {}: {e}", bin.display()),
            }
        };
        let mut stdin = child.stdin.take();
        let mut writer = None;
        if let Some(b) = bytes {
            let mut pipe = stdin.take().expect("piped stdin");
            writer = Some(std::thread::spawn(move || {
                pipe.write_all(&b)?;
                pipe.flush()
                // dropping `pipe` closes it: end of input
            }));
        }
        Sink {
            child,
            status: None,
            config,
            stderr_path,
            stdout_path,
            stdin,
            stdin_len,
            writer,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The (canonical) config path this run uses.
    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Write to a [`Stdin::Pipe`] input. Panics if the pipe is closed.
    pub fn write_stdin(&mut self, data: &[u8]) {
        let pipe = self
            .stdin
            .as_mut()
            .expect("write_stdin: stdin is not an open pipe");
        pipe.write_all(data).expect("write to influx-sink stdin");
    }

    /// Close a [`Stdin::Pipe`] input (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// For [`Stdin::Bytes`]: whether the helper thread has handed every byte
    /// to the pipe and closed it (up to a pipe buffer may still be unread).
    pub fn stdin_written(&self) -> bool {
        self.writer.as_ref().is_none_or(|w| w.is_finished())
    }

    /// For [`Stdin::File`]: how many bytes the process has read from its
    /// standard input so far (`/proc/PID/fdinfo/0`), or `None` if unknown
    /// (not a file input, or the process is gone).
    pub fn stdin_offset(&self) -> Option<u64> {
        self.stdin_len?;
        let info = std::fs::read_to_string(format!("/proc/{}/fdinfo/0", self.pid())).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("pos:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// For [`Stdin::File`]: whether the whole file has been read.
    pub fn stdin_consumed(&self) -> bool {
        match (self.stdin_len, self.stdin_offset()) {
            (Some(len), Some(pos)) => pos >= len,
            _ => false,
        }
    }

    /// Everything the run wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    pub fn stdout_text(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr_text().contains(needle)
    }

    /// Poll stderr until it contains `needle` or the deadline passes.
    pub fn wait_for_log(&self, needle: &str, deadline: impl Deadline) -> bool {
        wait_until(deadline, || self.stderr_contains(needle))
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.poll_status().is_none()
    }

    fn poll_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// SIGKILL the run (no summary, no clean-up) and reap it.
    pub fn kill9(&mut self) {
        if self.poll_status().is_none() {
            signal(self.child.id(), libc::SIGKILL);
            self.status = self.child.wait().ok();
        }
        self.stdin = None;
    }

    /// SIGTERM the run (it should stop without draining and print its
    /// summary); does not wait.
    pub fn sigterm(&mut self) {
        if self.poll_status().is_none() {
            signal(self.child.id(), libc::SIGTERM);
        }
    }

    /// Wait up to `deadline` for the run to exit; `None` if still running.
    /// On exit: (exit code, or `None` if killed by a signal; stderr text).
    pub fn wait_timeout(&mut self, deadline: impl Deadline) -> Option<(Option<i32>, String)> {
        if !wait_until(deadline, || self.poll_status().is_some()) {
            return None;
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let status = self.status.expect("exited");
        Some((status.code(), self.stderr_text()))
    }

    /// Wait for the run to exit (at most 300 s; then SIGKILL and panic with
    /// the stderr tail). Returns (exit code, `None` if killed by a signal;
    /// the stderr text).
    pub fn wait(&mut self) -> (Option<i32>, String) {
        match self.wait_timeout(DEFAULT_WAIT) {
            Some(r) => r,
            None => {
                self.kill9();
                panic!(
                    "influx-sink (pid {}) did not exit within {DEFAULT_WAIT:?}; killed it.\n\
                     --- stderr tail ---\n{}",
                    self.pid(),
                    tail(&self.stderr_text(), 40)
                );
            }
        }
    }

    /// The signal that ended the run, if it exited by one.
    pub fn exit_signal(&mut self) -> Option<i32> {
        self.poll_status().and_then(|s| s.signal())
    }

    /// The parsed summary line. Panics (with the stderr tail) if there is
    /// none; call after the run exited.
    pub fn summary(&self) -> Summary {
        let text = self.stderr_text();
        Summary::parse(&text).unwrap_or_else(|| {
            panic!(
                "no `summary accepted=N delivered=N backlogged=N dropped=N rejected=N` line \
                 in influx-sink's stderr ({}).\n--- stderr tail ---\n{}",
                self.stderr_path.display(),
                tail(&text, 40)
            )
        })
    }

    /// The last `n` stderr lines (for assertion messages).
    pub fn stderr_tail(&self, n: usize) -> String {
        tail(&self.stderr_text(), n)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let running = self.poll_status().is_none();
        if std::thread::panicking() {
            eprintln!(
                "--- influx-sink (pid {}, {}) stderr tail: {} ---\n{}",
                self.child.id(),
                if running {
                    "still running, killing it"
                } else {
                    "exited"
                },
                self.stderr_path.display(),
                tail(&self.stderr_text(), 30)
            );
        }
        if running {
            self.kill9();
        }
        self.stdin = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
