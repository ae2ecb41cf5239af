//! Real InfluxDB clients writing to the listener: `tests/clients/writer.py`
//! run with the Python `influxdb` 5.3.2 and `influxdb-client` 1.50
//! packages (installed by tests/setup.sh into `<target>/pyclients`), or
//! with curl.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::sink::target_dir;
use crate::util::{wait_until, Deadline};

/// The venv's Python. Panics with the set-up command if it is missing.
pub fn client_python() -> PathBuf {
    let py = target_dir().join("pyclients").join("bin").join("python");
    assert!(
        py.is_file(),
        "the Python InfluxDB clients are not installed ({} is missing); run tests/setup.sh",
        py.display()
    );
    py
}

/// What the writer writes: `count` points `seq=0..count-1` of one series,
/// `batch` per request, timestamps `base_ms + seq` ms, a pause of
/// `pause_ms` after each request.
#[derive(Debug, Clone)]
pub struct WriterSpec {
    /// `v1` (influxdb 5.3.2), `v2` (influxdb-client 1.50, batching), `curl`.
    pub mode: &'static str,
    pub port: u16,
    pub db: String,
    pub measurement: String,
    pub count: u64,
    pub batch: u64,
    pub base_ms: i64,
    pub pause_ms: u64,
}

/// A running writer; dropping it kills it.
pub struct Writer {
    child: Child,
    acks: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Writer {
    /// Start the writer; its acknowledgements and stderr go to `dir`.
    pub fn spawn(spec: &WriterSpec, dir: &Path) -> Writer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/writer.py");
        let acks = dir.join(format!("acks-{}.txt", spec.mode));
        let stderr = dir.join(format!("writer-{}.log", spec.mode));
        let child = Command::new(client_python())
            .arg(script)
            .args([
                spec.mode.to_string(),
                spec.port.to_string(),
                spec.db.clone(),
                spec.measurement.clone(),
                spec.count.to_string(),
                spec.batch.to_string(),
                spec.base_ms.to_string(),
                acks.display().to_string(),
                spec.pause_ms.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("writer log"))
            .spawn()
            .expect("start the Python writer");
        Writer {
            child,
            acks,
            stderr,
            status: None,
        }
    }

    /// The seqs acknowledged so far (only whole lines of the ack file).
    pub fn acked(&self) -> BTreeSet<u64> {
        let text = std::fs::read_to_string(&self.acks).unwrap_or_default();
        let whole = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        whole
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many acknowledgements so far (a seq acknowledged twice counts twice).
    pub fn acks(&self) -> usize {
        let text = std::fs::read_to_string(&self.acks).unwrap_or_default();
        text.matches('\n').count()
    }

    /// Wait for the writer to end; whether it ended with success.
    pub fn wait(&mut self, deadline: impl Deadline) -> bool {
        let child = &mut self.child;
        let status = &mut self.status;
        wait_until(deadline, || {
            if status.is_none() {
                *status = child.try_wait().ok().flatten();
            }
            status.is_some()
        });
        self.status.is_some_and(|s| s.success())
    }

    /// The writer's stderr (its retries and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A listener section on `127.0.0.1:port`, plus `extra` keys verbatim.
pub fn listener_section(port: u16, extra: &[(&str, &str)]) -> String {
    let mut s = format!("[listener]\ntransport = influxdb_listener\nlisten = 127.0.0.1:{port}\n");
    for (k, v) in extra {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s.push('\n');
    s
}
