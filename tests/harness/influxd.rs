//! A real InfluxDB 1.x server (`influxd`) on 127.0.0.1, in a temp dir,
//! optionally with https, authentication or a small max body size
//! ([`InfluxdOptions`]).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::tls::{https_agent, TestCa};
use crate::util::{
    body_text, describe_err, free_port, http_agent, read_lossy, signal, tail, wait_until,
};

/// Where the Debian package `influxdb` installs the server.
const INFLUXD: &str = "/usr/bin/influxd";
/// How long a (re)start may take before /ping must answer 204.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM'd server may take to exit before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// How [`Influxd::start_with`] configures the server. The default is what
/// [`Influxd::start`] runs: plain http, no authentication, influxd's
/// default max body size (25 MB).
#[derive(Clone, Debug, Default)]
pub struct InfluxdOptions {
    /// Serve https only, with this `(certificate PEM, private key PEM)`
    /// (`[http] https-enabled`). The files are copied into the server's
    /// dir, so they may be temporary.
    pub https: Option<(PathBuf, PathBuf)>,
    /// The CA certificate (PEM) that issued the `https` certificate: the
    /// harness's own requests (readiness, query, write_lines) verify the
    /// server against it. Required with `https`.
    pub https_ca: Option<PathBuf>,
    /// `(admin user, password)`: `[http] auth-enabled = true`, and this
    /// admin user is created (`WITH ALL PRIVILEGES`) once the server is up.
    /// The harness's own requests then send these credentials.
    pub auth: Option<(String, String)>,
    /// `[http] max-body-size` in bytes: a bigger write gets HTTP 413.
    pub max_body_size: Option<u64>,
}

impl InfluxdOptions {
    /// https with a fresh server certificate from `ca` (for 127.0.0.1 and
    /// localhost), trusted by the harness through `ca`.
    pub fn with_https(mut self, ca: &TestCa) -> Self {
        self.https = Some(ca.issue_server_cert());
        self.https_ca = Some(ca.ca_path());
        self
    }

    /// Authentication with this admin user.
    pub fn with_auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }

    /// `[http] max-body-size = bytes`.
    pub fn with_max_body_size(mut self, bytes: u64) -> Self {
        self.max_body_size = Some(bytes);
        self
    }
}

/// A running (or stopped, or paused) `influxd`. Dropping it kills it and
/// removes its data.
pub struct Influxd {
    dir: TempDir,
    http_port: u16,
    rpc_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    agent: ureq::Agent,
    /// `(cert, key, ca)` copies in `dir` when serving https.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    auth: Option<(String, String)>,
    /// Whether the admin user of `auth` exists (it survives restarts).
    admin_created: bool,
    max_body_size: Option<u64>,
}

impl Influxd {
    /// Write a config in a fresh temp dir, start `influxd -config FILE` and
    /// wait until `/ping` answers 204. Panics (with the server log) if it
    /// does not come up. Same as `start_with(InfluxdOptions::default())`.
    pub fn start() -> Influxd {
        Influxd::start_with(InfluxdOptions::default())
    }

    /// [`Influxd::start`] with https, authentication or a max body size.
    /// With `auth`, the admin user is created before this returns.
    pub fn start_with(opts: InfluxdOptions) -> Influxd {
        assert!(
            Path::new(INFLUXD).exists(),
            "{INFLUXD} not found: install InfluxDB 1.x with `apt-get install influxdb`"
        );
        let dir = tempfile::Builder::new()
            .prefix("influxd-")
            .tempdir()
            .expect("create temp dir for influxd");
        let log = dir.path().join("influxd.log");
        let config = dir.path().join("influxdb.conf");
        let tls = opts.https.as_ref().map(|(cert, key)| {
            let ca = opts.https_ca.as_ref().expect(
                "InfluxdOptions: https needs https_ca (the CA that issued the certificate)",
            );
            let copy = |from: &Path, name: &str| {
                let to = dir.path().join(name);
                std::fs::copy(from, &to)
                    .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
                to
            };
            (
                copy(cert, "server-cert.pem"),
                copy(key, "server-key.pem"),
                copy(ca, "ca.pem"),
            )
        });
        let agent = match &tls {
            Some((_, _, ca)) => https_agent(ca, Duration::from_secs(30)),
            None => http_agent(Duration::from_secs(30)),
        };
        let mut server = Influxd {
            dir,
            http_port: 0,
            rpc_port: 0,
            config,
            log,
            child: None,
            paused: false,
            agent,
            tls,
            auth: opts.auth,
            admin_created: false,
            max_body_size: opts.max_body_size,
        };
        // A just-freed port can be taken by someone else before influxd binds
        // it; then influxd exits at once and we try other ports.
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            server.http_port = free_port();
            server.rpc_port = free_port();
            server.write_config();
            server.spawn();
            match server.wait_ready() {
                Ok(()) => return server,
                Err(why) => {
                    last_failure = why;
                    server.kill_now();
                }
            }
        }
        panic!(
            "influxd did not start: {last_failure}\n--- {} (tail) ---\n{}",
            server.log.display(),
            tail(&read_lossy(&server.log), 40)
        );
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let mut http_extra = String::new();
        match &self.tls {
            Some((cert, key, _)) => http_extra.push_str(&format!(
                "  https-enabled = true\n  https-certificate = \"{}\"\n  https-private-key = \"{}\"\n",
                cert.display(),
                key.display()
            )),
            None => http_extra.push_str("  https-enabled = false\n"),
        }
        http_extra.push_str(&format!("  auth-enabled = {}\n", self.auth.is_some()));
        if let Some(n) = self.max_body_size {
            http_extra.push_str(&format!("  max-body-size = {n}\n"));
        }
        let text = format!(
            r#"# written by the influx-sink test harness
reporting-disabled = true
reporting-enabled = false
bind-address = "127.0.0.1:{rpc}"

[meta]
  dir = "{meta}"
  retention-autocreate = true
  logging-enabled = false

[data]
  dir = "{data}"
  wal-dir = "{wal}"
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  log-queries-after = "0s"

[retention]
  enabled = true

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http}"
  log-enabled = false
  suppress-write-log = true
  pprof-enabled = false
  unix-socket-enabled = false
{http_extra}
[ifql]
  enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[admin]
  enabled = false

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false

[continuous_queries]
  enabled = false
"#,
            rpc = self.rpc_port,
            http = self.http_port,
            meta = d.join("meta").display(),
            data = d.join("data").display(),
            wal = d.join("wal").display(),
        );
        std::fs::write(&self.config, text).expect("write influxd config");
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open influxd log");
        let log2 = log.try_clone().expect("clone log handle");
        let child = Command::new(INFLUXD)
            .arg("-config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {INFLUXD}: {e}"));
        self.child = Some(child);
        self.paused = false;
    }

    /// Poll /ping until 204, the process exits, or the timeout passes;
    /// then create the admin user if authentication is on.
    fn wait_ready(&mut self) -> Result<(), String> {
        let agent = self.client(Duration::from_secs(2));
        let url = format!("{}/ping", self.url());
        let mut exited = None;
        let ready = wait_until(READY_TIMEOUT, || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return true;
                }
            }
            matches!(agent.get(&url).call(), Ok(r) if r.status() == 204)
        });
        if let Some(status) = exited {
            self.child = None;
            return Err(format!("influxd exited during start-up with {status}"));
        }
        if !ready {
            return Err(format!("{url} did not answer 204 within {READY_TIMEOUT:?}"));
        }
        if let (Some((user, password)), false) = (&self.auth, self.admin_created) {
            // With auth on and no user yet, InfluxDB 1.x accepts exactly
            // this statement without credentials.
            let q = format!(
                "CREATE USER {} WITH PASSWORD '{}' WITH ALL PRIVILEGES",
                quote_ident(user),
                password.replace('\\', "\\\\").replace('\'', "\\'")
            );
            let resp = self
                .agent
                .post(&format!("{}/query", self.url()))
                .query("q", &q)
                .send_string("");
            let body = match resp {
                Ok(r) => body_text(r),
                Err(e) => return Err(format!("create admin user {user:?}: {}", describe_err(e))),
            };
            let v: Value = serde_json::from_str(&body)
                .map_err(|e| format!("create admin user {user:?}: bad JSON ({e}): {body}"))?;
            if let Some(err) = statement_error(&v) {
                return Err(format!("create admin user {user:?}: {err}"));
            }
            self.admin_created = true;
        }
        Ok(())
    }

    /// The process id of the running influxd, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The HTTP port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.http_port
    }

    /// `http://127.0.0.1:<port>`, or `https://...` when serving https.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.http_port)
    }

    /// `"https"` when serving https, else `"http"`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Whether it serves https (only).
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// The CA certificate (PEM) that verifies the server, when https.
    pub fn ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|(_, _, ca)| ca.as_path())
    }

    /// The admin `(user, password)` when authentication is on.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// `Basic <base64(user:password)>` for an `Authorization` header, when
    /// authentication is on.
    pub fn auth_header(&self) -> Option<String> {
        self.auth
            .as_ref()
            .map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())))
    }

    /// A ureq agent for this server: like [`crate::http_agent`], and when
    /// https, verifying the server against its CA only. (Credentials are
    /// not added: see [`Influxd::auth_header`].)
    pub fn client(&self, timeout: Duration) -> ureq::Agent {
        match &self.tls {
            Some((_, _, ca)) => https_agent(ca, timeout),
            None => http_agent(timeout),
        }
    }

    /// `req` with the admin credentials when authentication is on.
    fn authed(&self, req: ureq::Request) -> ureq::Request {
        match self.auth_header() {
            Some(h) => req.set("Authorization", &h),
            None => req,
        }
    }

    /// The server's temp dir (config, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the server logged so far (all runs).
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// Whether the process is alive (running or paused).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether it is SIGSTOPped.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// SIGTERM and wait for it to exit (SIGKILL after 40 s). Data is kept;
    /// [`Influxd::start_again`] brings it back on the same port.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.paused {
            signal(child.id(), libc::SIGCONT);
            self.paused = false;
        }
        if matches!(child.try_wait(), Ok(None)) {
            signal(child.id(), libc::SIGTERM);
            let exited = wait_until(STOP_TIMEOUT, || !matches!(child.try_wait(), Ok(None)));
            if !exited {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }

    /// SIGKILL (no clean shutdown) and reap. Data written so far is kept
    /// (influxd fsyncs its WAL on every write).
    pub fn kill(&mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Start the stopped server again with the same config: same port, same
    /// data. Panics if it does not come up (e.g. someone took the port).
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again: influxd is still running; stop() it first"
        );
        self.spawn();
        if let Err(why) = self.wait_ready() {
            self.kill_now();
            panic!(
                "influxd did not start again on port {}: {why}\n--- log tail ---\n{}",
                self.http_port,
                tail(&self.log_text(), 40)
            );
        }
    }

    /// SIGSTOP: the kernel still accepts TCP connections on its port, but
    /// nothing is ever answered until [`Influxd::resume`].
    pub fn pause(&mut self) {
        let child = self.child.as_ref().expect("pause: influxd is not running");
        let pid = child.id();
        assert!(signal(pid, libc::SIGSTOP), "SIGSTOP influxd failed");
        self.paused = true;
        // kill(2) returns before the stop takes effect: wait until every
        // thread is stopped, so no request sneaks through afterwards.
        assert!(
            wait_until(Duration::from_secs(10), || all_threads_stopped(pid)),
            "influxd (pid {pid}) did not stop after SIGSTOP"
        );
    }

    /// SIGCONT after [`Influxd::pause`].
    pub fn resume(&mut self) {
        let child = self.child.as_ref().expect("resume: influxd is not running");
        assert!(signal(child.id(), libc::SIGCONT), "SIGCONT influxd failed");
        self.paused = false;
    }

    fn check_up(&self, what: &str) {
        assert!(self.child.is_some(), "{what}: influxd is stopped");
        assert!(
            !self.paused,
            "{what}: influxd is paused (it would never answer)"
        );
    }

    /// Run InfluxQL `q` against database `db` (may be empty) via /query and
    /// return the parsed JSON. SELECT and SHOW go as GET, anything else
    /// (CREATE, DROP, ...) as POST, as InfluxDB 1.x requires. Panics on an
    /// HTTP-level error; statement errors are in the returned JSON.
    pub fn query(&self, db: &str, q: &str) -> Value {
        self.check_up("query");
        let url = format!("{}/query", self.url());
        let head = q.trim_start().to_ascii_uppercase();
        let read_only = head.starts_with("SELECT") || head.starts_with("SHOW");
        let mut req = self.authed(if read_only {
            self.agent.get(&url)
        } else {
            self.agent.post(&url)
        });
        if !db.is_empty() {
            req = req.query("db", db);
        }
        req = req.query("q", q).query("epoch", "ns");
        let resp = if read_only {
            req.call()
        } else {
            req.send_string("")
        };
        let body = match resp {
            Ok(r) => body_text(r),
            Err(e) => panic!(
                "influxd query {q:?} on db {db:?} failed: {}",
                describe_err(e)
            ),
        };
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("influxd query {q:?}: bad JSON ({e}): {body}"))
    }

    /// `CREATE DATABASE "<name>"` (idempotent in InfluxDB).
    pub fn create_database(&self, name: &str) {
        let v = self.query("", &format!("CREATE DATABASE {}", quote_ident(name)));
        if let Some(err) = statement_error(&v) {
            panic!("CREATE DATABASE {name}: {err}");
        }
    }

    /// POST line protocol to /write?db=<db> (nanosecond precision); panics
    /// unless the server answers 204.
    pub fn write_lines(&self, db: &str, body: &str) {
        self.check_up("write_lines");
        let url = format!("{}/write", self.url());
        match self
            .authed(self.agent.post(&url))
            .query("db", db)
            .send_string(body)
        {
            Ok(r) if r.status() == 204 => {}
            Ok(r) => panic!(
                "influxd write to {db}: HTTP {} {}",
                r.status(),
                body_text(r)
            ),
            Err(e) => panic!("influxd write to {db} failed: {}", describe_err(e)),
        }
    }

    /// `SELECT count("<field>") FROM "<measurement>"` over all time and all
    /// series; 0 when the database, measurement or series does not exist.
    pub fn count(&self, db: &str, measurement: &str, field: &str) -> u64 {
        self.scalar_count(
            db,
            &format!(
                "SELECT count({}) FROM {}",
                quote_ident(field),
                quote_ident(measurement)
            ),
        )
    }

    /// `SELECT count(distinct("<field>")) FROM "<measurement>"`: how many
    /// distinct values the field has; 0 when there is no such series.
    pub fn count_distinct(&self, db: &str, measurement: &str, field: &str) -> u64 {
        self.scalar_count(
            db,
            &format!(
                "SELECT count(distinct({})) FROM {}",
                quote_ident(field),
                quote_ident(measurement)
            ),
        )
    }

    fn scalar_count(&self, db: &str, q: &str) -> u64 {
        let v = self.query(db, q);
        if let Some(err) = statement_error(&v) {
            if err.starts_with("database not found") {
                return 0;
            }
            panic!("query {q:?} on {db}: {err}");
        }
        let Some(series) = v["results"][0]["series"].as_array() else {
            return 0; // no such measurement / no points
        };
        let mut total = 0;
        for s in series {
            let n = &s["values"][0][1];
            total += n
                .as_u64()
                .or_else(|| n.as_f64().map(|f| f as u64))
                .unwrap_or_else(|| panic!("query {q:?}: unexpected result {v}"));
        }
        total
    }
}

/// Whether every thread of `pid` is in state T (stopped), per /proc.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // thread exited meanwhile
        };
        // "tid (comm) S ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        match state {
            Some('T') | Some('t') => any = true,
            _ => return false,
        }
    }
    any
}

/// The first statement's `error`, if any.
fn statement_error(v: &Value) -> Option<String> {
    if let Some(e) = v["error"].as_str() {
        return Some(e.to_string());
    }
    v["results"][0]["error"].as_str().map(str::to_string)
}

/// Standard base64 with padding (RFC 4648), for Basic credentials.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Double-quote an InfluxQL identifier.
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Drop for Influxd {
    fn drop(&mut self) {
        let log = read_lossy(&self.log);
        if std::thread::panicking() && !log.trim().is_empty() {
            eprintln!(
                "--- influxd on port {} log tail ({}) ---\n{}",
                self.http_port,
                self.log.display(),
                tail(&log, 20)
            );
        }
        self.kill_now();
    }
}
