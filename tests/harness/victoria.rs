//! A real VictoriaMetrics single node on 127.0.0.1, in a temp dir.
//!
//! It accepts InfluxDB line protocol on `/write` and names each field's
//! metric `<measurement>_<field>` (tags become labels). Samples become
//! visible to queries only after a flush, and even then with a short lag:
//! call [`VictoriaMetrics::force_flush`] and poll
//! [`VictoriaMetrics::count_samples`] with [`crate::wait_until`].

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::util::{body_text, describe_err, free_port, http_agent, read_lossy, tail, wait_until};

const VICTORIA: &str = "/usr/bin/victoria-metrics";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `victoria-metrics`. Dropping it kills it and removes its data.
pub struct VictoriaMetrics {
    dir: TempDir,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
    agent: ureq::Agent,
}

impl VictoriaMetrics {
    /// Start on a free 127.0.0.1 port with its storage in a fresh temp dir,
    /// and wait until `/health` answers. Retention is 100 years, so points
    /// with old timestamps are kept.
    pub fn start() -> VictoriaMetrics {
        assert!(
            Path::new(VICTORIA).exists(),
            "{VICTORIA} not found: install it with `apt-get install victoria-metrics`"
        );
        let dir = tempfile::Builder::new()
            .prefix("victoria-")
            .tempdir()
            .expect("create temp dir for victoria-metrics");
        let log = dir.path().join("victoria-metrics.log");
        let mut vm = VictoriaMetrics {
            dir,
            port: 0,
            log,
            child: None,
            agent: http_agent(Duration::from_secs(30)),
        };
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            vm.port = free_port();
            vm.spawn();
            match vm.wait_ready() {
                Ok(()) => return vm,
                Err(why) => {
                    last_failure = why;
                    vm.kill_now();
                }
            }
        }
        panic!(
            "victoria-metrics did not start: {last_failure}\n--- log tail ---\n{}",
            tail(&read_lossy(&vm.log), 40)
        );
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open victoria-metrics log");
        let log2 = log.try_clone().expect("clone log handle");
        let child = Command::new(VICTORIA)
            .arg(format!("-httpListenAddr=127.0.0.1:{}", self.port))
            .arg(format!(
                "-storageDataPath={}",
                self.dir.path().join("data").display()
            ))
            .arg("-retentionPeriod=100y")
            .arg("-search.disableCache")
            .arg("-loggerLevel=ERROR")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {VICTORIA}: {e}"));
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let agent = http_agent(Duration::from_secs(2));
        let url = format!("{}/health", self.url());
        let mut exited = None;
        let ready = wait_until(READY_TIMEOUT, || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    return true;
                }
            }
            matches!(agent.get(&url).call(), Ok(r) if r.status() == 200)
        });
        if let Some(status) = exited {
            self.child = None;
            return Err(format!(
                "victoria-metrics exited during start-up with {status}"
            ));
        }
        if !ready {
            return Err(format!("{url} did not answer within {READY_TIMEOUT:?}"));
        }
        Ok(())
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// POST InfluxDB line protocol to `/write`; panics unless 2xx.
    pub fn write_lines(&self, body: &str) {
        let url = format!("{}/write", self.url());
        match self.agent.post(&url).send_string(body) {
            Ok(r) if (200..300).contains(&r.status()) => {}
            Ok(r) => panic!(
                "victoria-metrics write: HTTP {} {}",
                r.status(),
                body_text(r)
            ),
            Err(e) => panic!("victoria-metrics write failed: {}", describe_err(e)),
        }
    }

    /// `GET /internal/force_flush`: make buffered samples searchable.
    pub fn force_flush(&self) {
        let url = format!("{}/internal/force_flush", self.url());
        if let Err(e) = self.agent.get(&url).call() {
            panic!("victoria-metrics force_flush failed: {}", describe_err(e));
        }
    }

    /// Samples stored for the series matching `selector` (a PromQL series
    /// selector such as `{__name__="device_data_seq"}`), over all time, via
    /// `/api/v1/export`. Duplicates (same series and millisecond) count
    /// separately: VictoriaMetrics does not deduplicate by default.
    pub fn count_samples(&self, selector: &str) -> u64 {
        self.export(selector)
            .iter()
            .map(|line| line["timestamps"].as_array().map_or(0, |a| a.len() as u64))
            .sum()
    }

    /// Number of series matching `selector`.
    pub fn count_series(&self, selector: &str) -> u64 {
        self.export(selector).len() as u64
    }

    /// The parsed lines of `/api/v1/export?match[]=<selector>`.
    pub fn export(&self, selector: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/export", self.url());
        let body = match self.agent.get(&url).query("match[]", selector).call() {
            Ok(r) => body_text(r),
            Err(e) => panic!(
                "victoria-metrics export {selector:?} failed: {}",
                describe_err(e)
            ),
        };
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("victoria-metrics export: bad JSON line ({e}): {l}"))
            })
            .collect()
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let log = read_lossy(&self.log);
        if std::thread::panicking() && !log.trim().is_empty() {
            eprintln!(
                "--- victoria-metrics on port {} log tail ---\n{}",
                self.port,
                tail(&log, 20)
            );
        }
        self.kill_now();
    }
}
