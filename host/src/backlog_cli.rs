//! `influx-sink backlog ...`: look into a backlog directory without
//! touching it (`stats`, `dump`, `verify`), and migrate the Python
//! gateway's pickle backlog into one (`import-pickle`).
//!
//! `stats`, `dump` and `verify` only read: where `FileBacklog::open` would
//! repair (cut a torn tail, skip a corrupt record, quarantine a segment),
//! they report what it would do. `import-pickle` reads the pickle as data
//! only (see [`pickle`]) and appends to the backlog like a sink does.

pub mod gateway;
pub mod pickle;
pub mod scan;

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use influx_sink_component::backlog::file::{FileBacklog, SyncMode};
use influx_sink_component::backlog::Backlog;
use influx_sink_component::point::Point;
use influx_sink_component::timefmt::rfc3339_millis;
use serde_json::{json, Value as Json};

use scan::{Depth, Report, ScanError};

/// The usage lines of the `backlog` commands (also in the main usage).
pub const USAGE: &str = "  influx-sink backlog stats DIR [--json]
  influx-sink backlog dump DIR
  influx-sink backlog verify DIR
  influx-sink backlog import-pickle FILE.pkl --into DIR";

/// Points per record `import-pickle` writes (a sink writes `batch_size`).
const IMPORT_RECORD_POINTS: usize = 1000;
/// A record's points entered the gateway's backlog within this span (ns),
/// the default `batch_timeout`: the record is stored as of its oldest point,
/// so `max_backlog_age` may drop a point up to this much early, never late.
const IMPORT_RECORD_SPAN_NS: i64 = 10_000_000_000;
/// Skipped points listed one by one; the rest are counted.
const MAX_SKIP_MESSAGES: u64 = 100;
/// The default `max_backlog_age`, for the import's warning.
const DEFAULT_MAX_AGE_NS: i64 = 86_400 * 1_000_000_000;

/// Run `influx-sink backlog ARGS`; returns the exit code.
pub fn main(args: &[String]) -> ExitCode {
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => return usage("expected stats, dump, verify or import-pickle"),
    };
    match cmd {
        "stats" => {
            let json = rest.iter().any(|a| a == "--json");
            let other: Vec<&String> = rest.iter().filter(|a| *a != "--json").collect();
            match other.as_slice() {
                [dir] if !dir.starts_with("--") => stats(Path::new(dir), json),
                _ => usage("stats expects DIR [--json]"),
            }
        }
        "dump" => match rest {
            [dir] if !dir.starts_with("--") => dump(Path::new(dir)),
            _ => usage("dump expects DIR"),
        },
        "verify" => match rest {
            [dir] if !dir.starts_with("--") => verify(Path::new(dir)),
            _ => usage("verify expects DIR"),
        },
        "import-pickle" => {
            let mut file = None;
            let mut into = None;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--into" => match it.next() {
                        Some(d) => into = Some(PathBuf::from(d)),
                        None => return usage("--into needs a directory"),
                    },
                    s if s.starts_with("--") => return usage(&format!("unknown option {s}")),
                    s if file.is_none() => file = Some(PathBuf::from(s)),
                    _ => return usage("import-pickle expects one FILE.pkl"),
                }
            }
            match (file, into) {
                (Some(f), Some(d)) => import_pickle(&f, &d),
                _ => usage("import-pickle expects FILE.pkl --into DIR"),
            }
        }
        other => usage(&format!("unknown backlog command `{other}`")),
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("influx-sink backlog: {msg}\nusage:\n{USAGE}");
    ExitCode::from(2)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("influx-sink backlog: {msg}");
    ExitCode::from(2)
}

fn no_visit(_: &[Point]) -> io::Result<()> {
    Ok(())
}

fn scan_or_fail(dir: &Path, depth: Depth) -> Result<Report, ExitCode> {
    scan::scan(dir, depth, &mut no_visit).map_err(|e| match e {
        ScanError::Dir(msg) => fail(&format!("cannot read the backlog directory {msg}")),
        ScanError::Visit(e) => fail(&e.to_string()),
    })
}

fn time_pair(ns: Option<i64>) -> (Json, Json) {
    match ns {
        Some(ns) => (json!(rfc3339_millis(ns)), json!(ns)),
        None => (Json::Null, Json::Null),
    }
}

fn damage_place(d: &scan::Damage) -> String {
    match d.offset {
        Some(o) => format!("{}: offset {o}", d.file.display()),
        None => d.file.display().to_string(),
    }
}

/// The `stats --json` document.
pub fn stats_json(r: &Report) -> Json {
    let (oldest, oldest_ns) = time_pair(r.oldest_ts);
    let (newest, newest_ns) = time_pair(r.newest_ts);
    let (oldest_sa, oldest_sa_ns) = time_pair(r.oldest_stored_at);
    let (newest_sa, newest_sa_ns) = time_pair(r.newest_stored_at);
    json!({
        "dir": r.dir.display().to_string(),
        "points": r.points,
        "records": r.records,
        "missing_points": r.missing_points(),
        "bytes": r.bytes(),
        "segments": r.segments.len(),
        "cursor": r.cursor,
        "head_seq": r.head,
        "next_seq": r.next_seq,
        "delivered_records": r.delivered_records,
        "oldest_point": oldest,
        "oldest_point_ns": oldest_ns,
        "newest_point": newest,
        "newest_point_ns": newest_ns,
        "oldest_stored_at": oldest_sa,
        "oldest_stored_at_ns": oldest_sa_ns,
        "newest_stored_at": newest_sa,
        "newest_stored_at_ns": newest_sa_ns,
        "quarantine": r.quarantined.iter().map(|q| json!({"name": q.name, "bytes": q.bytes})).collect::<Vec<_>>(),
        "recovery": {
            "torn_bytes": r.torn_bytes,
            "corrupt_records": r.corrupt_records,
            "bad_segments": r.bad_segments,
            "warnings": r.warnings,
        },
        "damage": r.damage.iter().map(|d| json!({
            "file": d.file.display().to_string(),
            "offset": d.offset,
            "what": d.what,
            "live": d.live,
        })).collect::<Vec<_>>(),
    })
}

/// The text `stats` prints.
pub fn stats_text(r: &Report) -> String {
    let t = |ns: Option<i64>| ns.map_or_else(|| "-".to_string(), rfc3339_millis);
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<18}{v}\n"));
    line("backlog", r.dir.display().to_string());
    let range = if r.next_seq > r.head {
        format!(" (sequence numbers {} to {})", r.head, r.next_seq - 1)
    } else {
        String::new()
    };
    line(
        "points",
        format!("{} undelivered in {} records{range}", r.points, r.records),
    );
    if r.missing_points() > 0 {
        line(
            "missing",
            format!(
                "{} points in that range are in no intact record (damaged, in a bad segment, \
                 or in a segment file that is gone)",
                r.missing_points()
            ),
        );
    }
    line(
        "segments",
        format!("{} files, {} bytes", r.segments.len(), r.bytes()),
    );
    line("oldest point", t(r.oldest_ts));
    line("newest point", t(r.newest_ts));
    line("oldest stored at", t(r.oldest_stored_at));
    line("newest stored at", t(r.newest_stored_at));
    if r.quarantined.is_empty() {
        line("quarantine", "none".into());
    } else {
        let total: u64 = r.quarantined.iter().map(|q| q.bytes).sum();
        line(
            "quarantine",
            format!(
                "{} files, {total} bytes (set aside by an earlier open)",
                r.quarantined.len()
            ),
        );
        for q in &r.quarantined {
            s.push_str(&format!("  {}  {} bytes\n", q.name, q.bytes));
        }
    }
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<18}{v}\n"));
    if r.warnings.is_empty() {
        line("next open", "nothing to repair".into());
    } else {
        line(
            "next open",
            format!(
                "would cut {} torn bytes, skip {} corrupt records, quarantine {} segments",
                r.torn_bytes, r.corrupt_records, r.bad_segments
            ),
        );
        for w in &r.warnings {
            s.push_str(&format!("  {w}\n"));
        }
    }
    let old: Vec<_> = r.damage.iter().filter(|d| !d.live).collect();
    if !old.is_empty() {
        s.push_str(&format!(
            "{:<18}{} damaged places among points already delivered\n",
            "delivered",
            old.len()
        ));
        for d in old {
            s.push_str(&format!("  {}: {}\n", damage_place(d), d.what));
        }
    }
    s
}

fn stats(dir: &Path, json: bool) -> ExitCode {
    let r = match scan_or_fail(dir, Depth::Live) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if json {
        println!("{}", stats_json(&r));
    } else {
        print!("{}", stats_text(&r));
    }
    ExitCode::SUCCESS
}

/// Exit 0 when every live point was printed, 1 when damage may have hidden
/// some (listed on stderr), 2 when the directory cannot be read.
fn dump(dir: &Path) -> ExitCode {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut buf = Vec::with_capacity(1 << 16);
    let mut write = |points: &[Point]| -> io::Result<()> {
        buf.clear();
        for p in points {
            p.write_line_protocol(&mut buf);
        }
        out.write_all(&buf)
    };
    let result = scan::scan(dir, Depth::Live, &mut write);
    let flushed = out.flush();
    let r = match (result, flushed) {
        (Err(ScanError::Dir(msg)), _) => {
            return fail(&format!("cannot read the backlog directory {msg}"))
        }
        (Err(ScanError::Visit(e)), _) | (Ok(_), Err(e)) => {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("influx-sink backlog: could not write the points: {e}");
            return ExitCode::from(1);
        }
        (Ok(r), Ok(())) => r,
    };
    let live: Vec<_> = r.damage.iter().filter(|d| d.live).collect();
    for d in &live {
        eprintln!("influx-sink backlog: {}: {}", damage_place(d), d.what);
    }
    if live.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "influx-sink backlog: printed {} points; the damage above may hide others",
            r.points
        );
        ExitCode::from(1)
    }
}

/// The lines `verify` prints and whether the backlog is intact.
pub fn verify_text(r: &Report) -> (String, bool) {
    let mut s = String::new();
    for d in &r.damage {
        let note = if d.live {
            ""
        } else {
            " (among points already delivered)"
        };
        s.push_str(&format!("{}: {}{note}\n", damage_place(d), d.what));
    }
    if !r.quarantined.is_empty() {
        s.push_str(&format!(
            "note: {} holds {} files set aside by an earlier open\n",
            r.dir.join("quarantine").display(),
            r.quarantined.len()
        ));
    }
    let records = r.records + r.delivered_records;
    let summary = format!(
        "{} segments, {records} intact records, {} undelivered points",
        r.segments.len(),
        r.points
    );
    let intact = r.damage.is_empty();
    if intact {
        s.push_str(&format!(
            "backlog {}: intact ({summary})\n",
            r.dir.display()
        ));
    } else {
        s.push_str(&format!(
            "backlog {}: {} damaged places ({summary})\n",
            r.dir.display(),
            r.damage.len()
        ));
    }
    (s, intact)
}

fn verify(dir: &Path) -> ExitCode {
    let r = match scan_or_fail(dir, Depth::All) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let (text, intact) = verify_text(&r);
    print!("{text}");
    if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The batch being gathered into one record.
struct Pending {
    points: Vec<Point>,
    first_stored_at: i64,
    stored_at: i64,
}

fn import_pickle(file: &Path, dir: &Path) -> ExitCode {
    let shown = file.display();
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) => return fail(&format!("{shown}: {e}")),
    };
    let pickle = match pickle::parse(&data) {
        Ok(p) => p,
        Err(e) => return fail(&format!("{shown}: {e}")),
    };
    drop(data);
    let Some(items) = pickle.items(pickle.root()) else {
        return fail(&format!(
            "{shown}: holds a {}, not a list of points",
            pickle::type_name(pickle.root())
        ));
    };

    let now = wall_ns();
    let mut backlog: Option<FileBacklog> = None;
    let mut pending = Pending {
        points: Vec::new(),
        first_stored_at: 0,
        stored_at: 0,
    };
    let (mut imported, mut skipped) = (0u64, 0u64);
    let mut oldest_stored = i64::MAX;
    for (i, item) in items.iter().enumerate() {
        match gateway::convert(&pickle, item, now) {
            Ok((point, stored_at)) => {
                let fits = !pending.points.is_empty()
                    && pending.points.len() < IMPORT_RECORD_POINTS
                    && (stored_at - pending.first_stored_at).abs() <= IMPORT_RECORD_SPAN_NS;
                if !fits {
                    match store(dir, &mut pending, &mut backlog) {
                        Ok(n) => imported += n,
                        Err(e) => return import_failed(&e, imported, skipped),
                    }
                    pending.first_stored_at = stored_at;
                    pending.stored_at = stored_at;
                }
                pending.stored_at = pending.stored_at.min(stored_at);
                oldest_stored = oldest_stored.min(stored_at);
                pending.points.push(point);
            }
            Err(why) => {
                skipped += 1;
                if skipped <= MAX_SKIP_MESSAGES {
                    eprintln!("influx-sink backlog: {shown}: point {i} skipped: {why}");
                } else if skipped == MAX_SKIP_MESSAGES + 1 {
                    eprintln!(
                        "influx-sink backlog: further skipped points are counted but not listed"
                    );
                }
            }
        }
    }
    match store(dir, &mut pending, &mut backlog) {
        Ok(n) => imported += n,
        Err(e) => return import_failed(&e, imported, skipped),
    }
    if let Some(b) = backlog.as_mut() {
        if let Err(e) = b.sync() {
            return import_failed(&e.0, imported, skipped);
        }
    }
    if imported > 0 && oldest_stored < now - DEFAULT_MAX_AGE_NS {
        eprintln!(
            "influx-sink backlog: note: some points entered the gateway's backlog before {}; \
             a sink drops points older than its max_backlog_age (default 86400 s) at start",
            rfc3339_millis(now - DEFAULT_MAX_AGE_NS)
        );
    }
    println!("imported {imported} points, skipped {skipped}");
    if skipped > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Append the gathered points as one record, opening (creating) the
/// backlog on first use; returns how many were stored.
fn store(
    dir: &Path,
    pending: &mut Pending,
    backlog: &mut Option<FileBacklog>,
) -> Result<u64, String> {
    if pending.points.is_empty() {
        return Ok(0);
    }
    let b = match backlog {
        Some(b) => b,
        None => {
            let (b, report) = FileBacklog::open(dir, SyncMode::Batch).map_err(|e| e.0)?;
            for w in &report.warnings {
                eprintln!("influx-sink backlog: {w}");
            }
            if !b.is_empty() {
                eprintln!(
                    "influx-sink backlog: {} already holds {} points; the imported ones go after them",
                    dir.display(),
                    b.len()
                );
            }
            backlog.insert(b)
        }
    };
    b.append(&pending.points, pending.stored_at)
        .map_err(|e| e.0)?;
    let n = pending.points.len() as u64;
    pending.points.clear();
    Ok(n)
}

fn import_failed(why: &str, imported: u64, skipped: u64) -> ExitCode {
    eprintln!("influx-sink backlog: could not store the points: {why}");
    println!("imported {imported} points, skipped {skipped}");
    ExitCode::from(1)
}
