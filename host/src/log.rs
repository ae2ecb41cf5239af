//! The host's own log lines, in the same shape as the component's.

use influx_sink_component::timefmt::rfc3339_millis;
use std::io::Write;

fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Write one line to stderr in a single call, so lines of concurrent sinks
/// never interleave.
pub fn line(level: &str, scope: &str, message: &str) {
    let text = format!(
        "{} {level:<5} [{scope}] {message}\n",
        rfc3339_millis(wall_ns())
    );
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

pub fn info(scope: &str, message: &str) {
    line("INFO", scope, message)
}

pub fn warn(scope: &str, message: &str) {
    line("WARN", scope, message)
}

pub fn error(scope: &str, message: &str) {
    line("ERROR", scope, message)
}
