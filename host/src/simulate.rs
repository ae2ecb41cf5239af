//! `influx-sink simulate`: the operator's capacity planner. Plays an outage
//! through the real policy core on a simulated clock.

use influx_sink_component::codec;
use influx_sink_component::config::Settings;
use influx_sink_component::line_protocol;
use influx_sink_component::sim::{plan_outage, DownMode, OutageReport};

use crate::generator::{Generator, GeneratorSpec};

/// Bytes a point takes in the backlog, measured by encoding a batch of
/// generated points like the demo's (20 fields).
pub fn bytes_per_point(batch: u32) -> (influx_sink_component::point::Point, u64) {
    let n = batch.clamp(10, 5000) as u64;
    let mut text = Vec::new();
    Generator::new(GeneratorSpec::default(), 1_700_000_000_000_000_000).fill(n, &mut text);
    let (points, _) = line_protocol::parse_lines(&text, 0);
    let mut body = Vec::new();
    codec::encode_points(&points, &mut body);
    // + record framing (length, checksum, header) shared by the batch
    let per_point = (body.len() as u64 + 32).div_ceil(n);
    (points[0].clone(), per_point)
}

pub fn run(settings: &Settings, outage: f64, rate: f64, hang: bool) -> OutageReport {
    let (sample, bpp) = bytes_per_point(settings.batch_size);
    let bpp = if settings.enable_persistent_storage {
        bpp
    } else {
        0
    };
    let mode = if hang {
        DownMode::Hang
    } else {
        DownMode::Refuse
    };
    plan_outage(settings.clone(), outage, rate, sample, bpp, mode)
}

fn s(ns: u64) -> f64 {
    (ns as f64 / 1e9 * 1000.0).round() / 1000.0
}

pub fn to_json(name: &str, outage: f64, rate: f64, r: &OutageReport) -> String {
    let attempts: Vec<serde_json::Value> = r
        .attempts
        .iter()
        .map(|a| serde_json::json!({"n": a.n, "at_s": s(a.at), "ok": a.ok}))
        .collect();
    serde_json::json!({
        "output": name,
        "outage_s": outage,
        "rate": rate,
        "attempts": attempts,
        "recovered_at_s": r.recovered_at.map(s),
        "drained_at_s": r.drained_at.map(s),
        "accepted": r.accepted,
        "delivered": r.delivered,
        "backlog_peak": r.backlog_peak,
        "dropped": r.dropped,
        "bytes_per_point": r.bytes_per_point,
        "disk_bytes": r.disk_peak_bytes,
    })
    .to_string()
}

pub fn to_text(settings: &Settings, outage: f64, rate: f64, r: &OutageReport) -> String {
    let mut out = format!(
        "[{}] server {} down from 0 s for {outage} s, input {rate} points/s\n",
        settings.name,
        settings.address()
    );
    for a in &r.attempts {
        out.push_str(&format!(
            "  attempt {:>3} at {:>10.3} s: {}\n",
            a.n,
            s(a.at),
            if a.ok { "connected" } else { "failed" }
        ));
    }
    match r.recovered_at {
        Some(t) => out.push_str(&format!("delivery resumed at {:.3} s", s(t))),
        None => out.push_str("delivery did not resume within a simulated day"),
    }
    if let Some(t) = r.drained_at {
        out.push_str(&format!("; backlog drained at {:.3} s", s(t)));
    }
    out.push('\n');
    out.push_str(&format!(
        "backlog peak: {} points (max_backlog_size {})\n",
        r.backlog_peak, settings.max_backlog_size
    ));
    out.push_str(&format!(
        "dropped by size/age limits: {} of {} points\n",
        r.dropped, r.accepted
    ));
    if settings.enable_persistent_storage {
        out.push_str(&format!(
            "disk needed at peak: {:.1} MiB (about {} bytes per 20-field point)\n",
            r.disk_peak_bytes as f64 / 1048576.0,
            r.bytes_per_point
        ));
    } else {
        out.push_str("persistent storage is disabled: the backlog is in memory and lost at exit\n");
    }
    out
}
