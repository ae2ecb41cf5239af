//! Small helpers shared by the harness and the tests.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Anything that names a deadline: an [`Instant`], or a [`Duration`] from now.
pub trait Deadline {
    fn deadline(self) -> Instant;
}

impl Deadline for Instant {
    fn deadline(self) -> Instant {
        self
    }
}

impl Deadline for Duration {
    fn deadline(self) -> Instant {
        Instant::now() + self
    }
}

/// How often [`wait_until`] and [`wait_stable`] poll.
const POLL: Duration = Duration::from_millis(50);

/// Poll `cond` (every 50 ms) until it returns true or `deadline` passes.
/// Returns whether it became true; `cond` is always evaluated at least once
/// and once more after the deadline, so a slow last poll is not lost.
pub fn wait_until(deadline: impl Deadline, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = deadline.deadline();
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        std::thread::sleep(POLL);
    }
}

/// Poll `value` until it has returned the same number for `stable_for`, or
/// `deadline` passes. Returns whether it settled (and the last value seen).
pub fn wait_stable(
    deadline: impl Deadline,
    stable_for: Duration,
    mut value: impl FnMut() -> u64,
) -> (bool, u64) {
    let deadline = deadline.deadline();
    let mut last = value();
    let mut since = Instant::now();
    loop {
        if since.elapsed() >= stable_for {
            return (true, last);
        }
        if Instant::now() >= deadline {
            return (false, last);
        }
        std::thread::sleep(POLL);
        let v = value();
        if v != last {
            last = v;
            since = Instant::now();
        }
    }
}

/// Ports handed out by [`free_port`] in this process, never handed out twice
/// (parallel tests would otherwise race for the same just-released port).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0 to find a free port");
        let port = listener.local_addr().expect("local_addr").port();
        if handed.insert(port) {
            return port;
        }
    }
    panic!("free_port: could not find a port not handed out before");
}

/// Write `text` as `<dir>/influx-sink.ini` and return its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join("influx-sink.ini");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// Total size in bytes of the regular files under `path` (0 if it is missing).
pub fn dir_size(path: &Path) -> u64 {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return 0,
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries.flatten().map(|e| dir_size(&e.path())).sum()
}

/// The last `n` lines of `text` (for failure messages).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// A ureq agent with bounded timeouts, for talking to the test servers.
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout(timeout)
        .build()
}

/// Read a whole file as (lossy) UTF-8; empty if it does not exist.
pub(crate) fn read_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    }
}

/// Send `sig` to `pid`; returns whether the signal was delivered.
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Body of an HTTP response as text (for error reporting and JSON).
pub(crate) fn body_text(resp: ureq::Response) -> String {
    resp.into_string()
        .unwrap_or_else(|e| format!("<unreadable body: {e}>"))
}

/// Describe a ureq error including the response body when there is one.
pub(crate) fn describe_err(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, resp) => format!("HTTP {code}: {}", body_text(resp)),
        ureq::Error::Transport(t) => format!("transport error: {t}"),
    }
}

/// Builds share target directories: one at a time.
static WASM_BUILD: Mutex<()> = Mutex::new(());

/// Build a wasm32-wasip2 component: `cargo build --profile PROFILE` of
/// `package` in the workspace at `manifest` (relative to the repository)
/// with `features`, into `target/<target_subdir>`; the artifact is copied
/// to `copy_to`, which is returned.
pub fn build_wasm(
    manifest: &str,
    package: &str,
    profile: &str,
    features: &str,
    target_subdir: &str,
    copy_to: &Path,
) -> PathBuf {
    let _one_at_a_time = WASM_BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = crate::target_dir().join(target_subdir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "--profile",
            profile,
            "--locked",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
        ])
        .args(["--features", features])
        .arg("--manifest-path")
        .arg(root.join(manifest))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building {package} with features `{features}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let artifact = target
        .join("wasm32-wasip2")
        .join(profile)
        .join(format!("{}.wasm", package.replace('-', "_")));
    std::fs::copy(&artifact, copy_to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", artifact.display(), copy_to.display()));
    copy_to.to_path_buf()
}

/// Build the hostile test component (tests/hostile) with `feature` and copy
/// it to `<dir>/<feature>.wasm`.
pub fn build_hostile(feature: &str, dir: &Path) -> PathBuf {
    build_wasm(
        "tests/hostile/Cargo.toml",
        "influx-sink-hostile",
        "release",
        feature,
        "hostile",
        &dir.join(format!("{feature}.wasm")),
    )
}
