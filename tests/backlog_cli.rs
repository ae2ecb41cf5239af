//! `influx-sink backlog stats|dump|verify|import-pickle`, against real
//! backlogs: one written by `influx-sink run` while its server is down, one
//! imported from pickles that CPython wrote (protocols 0 to 5), delivered to
//! a real InfluxDB afterwards; damaged segments; malicious pickles.
//!
//! Needs the release binary and component (`bash tests/setup.sh`) and
//! `python3` (to write real pickle files).
//! Run: `cargo test --release --test backlog_cli`

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::cli::{cli, CliOutput};
use harness::{free_port, now_ns, output_section, points, write_config, Influxd, Sink, Stdin};
use serde_json::Value;

const SECTION: &str = "influx";

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// `influx-sink backlog ARGS` in `cwd`.
fn backlog(args: &[&str], cwd: &Path) -> CliOutput {
    let mut all = vec!["backlog"];
    all.extend_from_slice(args);
    cli(&all, cwd)
}

fn stats_json(dir: &Path) -> Value {
    let out = backlog(&["stats", path_str(dir), "--json"], dir);
    assert_eq!(out.code, Some(0), "stats --json\n{}", out.describe());
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("stats --json printed no JSON ({e})\n{}", out.describe()))
}

/// Every file and directory under `dir`, with the files' bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("list {}: {e}", d.display())) {
            let e = e.expect("dir entry");
            let p = e.path();
            if e.file_type().expect("file type").is_dir() {
                out.insert(p.clone(), None);
                todo.push(p);
            } else {
                let data = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                out.insert(p, Some(data));
            }
        }
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.expect("dir entry").path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// (offset, payload length) of each record of a segment, by the documented
/// format: a 16-byte header, then `u32 LE length, u32 CRC32C, payload`.
fn frames(seg: &Path) -> Vec<(usize, usize)> {
    let data = fs::read(seg).expect("read segment");
    let mut off = 16;
    let mut v = Vec::new();
    while off + 8 <= data.len() {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        v.push((off, len));
        off += 8 + len;
    }
    v
}

/// Run `python3 -c SCRIPT ARGS`; panics unless it succeeds.
fn python(script: &str, args: &[&str]) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed to write pickle files: {e}"));
    assert!(
        out.status.success(),
        "python3 failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A backlog written by `influx-sink run` with its server down: returns
/// (temp dir, backlog dir, the input lines).
fn backlog_from_a_run(n: u64) -> (tempfile::TempDir, PathBuf, String) {
    Sink::require_built();
    let dir = tempfile::tempdir().expect("temp dir");
    // Nothing listens on a port that was free a moment ago.
    let config = write_config(
        dir.path(),
        &output_section(
            SECTION,
            free_port(),
            "down",
            &[
                ("batch_size", "100"),
                ("batch_timeout", "0.2"),
                ("reconnect_delay", "0.2"),
                ("max_reconnect_delay", "1"),
                ("connection_timeout", "1"),
                ("persistent_storage_path", "backlog"),
                ("max_backlog_size", "1000000"),
            ],
        ),
    );
    let input = points("blcli", n, now_ns() - 3_600_000_000_000);
    let mut sink = Sink::spawn_with(
        &config,
        Stdin::Bytes(input.clone().into_bytes()),
        &["--drain-timeout", "1"],
    );
    let (code, stderr) = sink.wait();
    let summary = sink.summary();
    assert_eq!(
        (code, summary.backlogged),
        (Some(3), n),
        "the run should end with every point in the backlog\n{}",
        harness::tail(&stderr, 30)
    );
    let bl = dir.path().join("backlog").join(SECTION);
    (dir, bl, input)
}

#[test]
fn stats_dump_verify_read_a_real_backlog_and_find_damage_without_touching_it() {
    const N: u64 = 2500;
    let (_tmp, bl, input) = backlog_from_a_run(N);
    let cwd = bl.parent().unwrap();
    let before = snapshot(&bl);
    let segs = segments(&bl);
    assert!(!segs.is_empty(), "no segments in {}", bl.display());

    // stats
    let s = stats_json(&bl);
    assert_eq!(s["points"], N, "{s}");
    assert_eq!(s["segments"], segs.len(), "{s}");
    let base: i64 = input
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|t| t.parse().ok())
        .expect("input timestamp");
    assert_eq!(s["oldest_point_ns"], base, "{s}");
    assert_eq!(s["newest_point_ns"], base + (N as i64 - 1) * 1000, "{s}");
    assert_eq!(s["oldest_point"], rfc3339(base), "{s}");
    assert!(
        s["oldest_stored_at_ns"].as_i64().unwrap() <= s["newest_stored_at_ns"].as_i64().unwrap()
    );
    assert_eq!(s["recovery"]["corrupt_records"], 0, "{s}");
    assert_eq!(s["recovery"]["torn_bytes"], 0, "{s}");
    assert_eq!(s["recovery"]["warnings"], serde_json::json!([]), "{s}");
    assert_eq!(s["quarantine"], serde_json::json!([]), "{s}");
    assert_eq!(s["damage"], serde_json::json!([]), "{s}");
    let text = backlog(&["stats", path_str(&bl)], cwd);
    assert_eq!(text.code, Some(0), "{}", text.describe());
    assert!(
        text.stdout.contains(&format!("{N} undelivered")) && text.stdout.contains(&rfc3339(base)),
        "{}",
        text.describe()
    );

    // dump: the input, line for line, oldest first
    let dump = backlog(&["dump", path_str(&bl)], cwd);
    assert_eq!(dump.code, Some(0), "{}", dump.stderr);
    assert!(dump.stdout == input, "dump differs from the input");

    // verify
    let v = backlog(&["verify", path_str(&bl)], cwd);
    assert_eq!(v.code, Some(0), "{}", v.describe());
    assert!(v.stdout.contains("intact"), "{}", v.describe());
    assert_eq!(
        snapshot(&bl),
        before,
        "stats/dump/verify changed the backlog"
    );

    // A flipped byte in the payload of the third record of the first segment.
    let seg = &segs[0];
    let fr = frames(seg);
    assert!(fr.len() >= 3, "expected several records, got {fr:?}");
    let (off, len) = fr[2];
    let mut data = fs::read(seg).unwrap();
    data[off + 8 + len / 2] ^= 0x20;
    fs::write(seg, &data).unwrap();
    let before = snapshot(&bl);

    let v = backlog(&["verify", path_str(&bl)], cwd);
    assert_eq!(v.code, Some(1), "{}", v.describe());
    let place = format!("{}: offset {off}: checksum mismatch", seg.display());
    assert!(
        v.stdout.contains(&place),
        "want `{place}`\n{}",
        v.describe()
    );

    let s = stats_json(&bl);
    assert_eq!(s["recovery"]["corrupt_records"], 1, "{s}");
    assert_eq!(s["damage"][0]["offset"], off, "{s}");
    assert_eq!(s["damage"][0]["file"], seg.display().to_string(), "{s}");
    assert_eq!(s["damage"][0]["live"], true, "{s}");
    let left = s["points"].as_u64().unwrap();
    assert!((N - 1000..N).contains(&left), "{s}");
    let text = backlog(&["stats", path_str(&bl)], cwd);
    assert!(
        text.stdout.contains(&format!("offset {off}")),
        "{}",
        text.describe()
    );

    // dump prints what is left, in order, and says something is missing.
    let dump = backlog(&["dump", path_str(&bl)], cwd);
    assert_eq!(dump.code, Some(1), "{}", dump.describe());
    assert!(
        dump.stderr.contains(&format!("offset {off}")),
        "{}",
        dump.stderr
    );
    let got: Vec<&str> = dump.stdout.lines().collect();
    assert_eq!(got.len() as u64, left);
    let mut want = input.lines();
    for line in &got {
        assert!(
            want.any(|l| l == *line),
            "dumped line `{line}` is not in the input in order"
        );
    }
    assert_eq!(
        snapshot(&bl),
        before,
        "stats/dump/verify changed the damaged backlog"
    );

    // A torn tail: verify names it, stats counts the bytes open would cut.
    let last = segs.last().unwrap();
    let size = fs::metadata(last).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(size - 5)
        .unwrap();
    let last_frame = *frames(last).last().unwrap();
    let v = backlog(&["verify", path_str(&bl)], cwd);
    assert_eq!(v.code, Some(1), "{}", v.describe());
    assert!(
        v.stdout.contains(&format!(
            "{}: offset {}: torn tail",
            last.display(),
            last_frame.0
        )),
        "{}",
        v.describe()
    );
    let s = stats_json(&bl);
    assert_eq!(
        s["recovery"]["torn_bytes"].as_u64().unwrap(),
        size - 5 - last_frame.0 as u64,
        "{s}"
    );
}

fn rfc3339(ns: i64) -> String {
    influx_sink_component::timefmt::rfc3339_millis(ns)
}

/// Writes `p0.pkl` … `p5.pkl` (the same gateway-like list of 1,000 point
/// dicts, with every `time` form) and `expected.lp` (the line protocol each
/// point must become) into argv[1].
const GATEWAY_PICKLES: &str = r#"
import datetime, os, pickle, sys, time
out = sys.argv[1]
now = time.time()
base = int(now) - 7200
tags = [{"device": "inv%d" % d, "site": "roof"} for d in range(5)]
points, lines = [], []
for i in range(1000):
    t = base + i
    us = (i * 1234) % 1000000
    bt = now - 3600 + i * 0.5
    p = {"measurement": "device_data", "tags": tags[i % 5],
         "fields": {"power": 1000.5 + i, "status": "ok", "n": i, "on": i % 2 == 0},
         "_backlog_time": bt}
    form = i % 5
    if form == 0:
        d = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
        p["time"] = d.strftime("%Y-%m-%dT%H:%M:%S") + ".%06dZ" % us
        ns = t * 10**9 + us * 1000
    elif form == 1:
        tz = datetime.timezone(datetime.timedelta(hours=2))
        p["time"] = datetime.datetime.fromtimestamp(t, tz).isoformat()
        ns = t * 10**9
    elif form == 2:
        p["time"] = t * 10**9 + i
        ns = t * 10**9 + i
    elif form == 3:
        p["time"] = t + us / 1e6
        ns = round(p["time"] * 1e6) * 1000
    else:
        ns = round(bt * 1e6) * 1000
    points.append(p)
    on = "true" if i % 2 == 0 else "false"
    lines.append('device_data,device=inv%d,site=roof power=%r,status="ok",n=%di,on=%s %d\n'
                 % (i % 5, 1000.5 + i, i, on, ns))
for proto in range(6):
    with open(os.path.join(out, "p%d.pkl" % proto), "wb") as f:
        f.write(pickle.dumps(points, protocol=proto))
with open(os.path.join(out, "expected.lp"), "w") as f:
    f.write("".join(lines))
"#;

#[test]
fn import_pickle_of_every_protocol_then_deliver_to_influxdb() {
    Sink::require_built();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    python(GATEWAY_PICKLES, &[path_str(dir)]);
    let expected = fs::read_to_string(dir.join("expected.lp")).unwrap();
    assert_eq!(expected.lines().count(), 1000);

    for proto in 0..=5 {
        let into = dir.join(format!("imported-p{proto}"));
        let pkl = dir.join(format!("p{proto}.pkl"));
        let out = backlog(
            &["import-pickle", path_str(&pkl), "--into", path_str(&into)],
            dir,
        );
        assert_eq!(out.code, Some(0), "protocol {proto}\n{}", out.describe());
        assert_eq!(
            out.stdout.lines().last(),
            Some("imported 1000 points, skipped 0"),
            "protocol {proto}\n{}",
            out.describe()
        );
        assert_eq!(stats_json(&into)["points"], 1000, "protocol {proto}");
        let dump = backlog(&["dump", path_str(&into)], dir);
        assert_eq!(dump.code, Some(0), "{}", dump.describe());
        if dump.stdout != expected {
            let diff = dump
                .stdout
                .lines()
                .zip(expected.lines())
                .find(|(a, b)| a != b);
            panic!("protocol {proto}: dump differs from the expected lines; first difference (got, want): {diff:?}");
        }
        let v = backlog(&["verify", path_str(&into)], dir);
        assert_eq!(v.code, Some(0), "{}", v.describe());
    }

    // The imported backlog is delivered by a sink like its own.
    let influx = Influxd::start();
    let run_dir = dir.join("run");
    let config = write_config(
        &run_dir,
        &output_section(
            SECTION,
            influx.port(),
            "migrated",
            &[("persistent_storage_path", "backlog")],
        ),
    );
    let into = run_dir.join("backlog").join(SECTION);
    let out = backlog(
        &[
            "import-pickle",
            path_str(&dir.join("p5.pkl")),
            "--into",
            path_str(&into),
        ],
        dir,
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let mut sink = Sink::spawn_with(&config, Stdin::Empty, &["--drain-timeout", "60"]);
    let (code, stderr) = sink.wait();
    assert_eq!(code, Some(0), "{}", harness::tail(&stderr, 30));
    assert_eq!(sink.summary().delivered, 1000);
    assert_eq!(influx.count("migrated", "device_data", "n"), 1000);
    assert_eq!(stats_json(&into)["points"], 0);
}

#[test]
fn import_pickle_skips_and_counts_points_it_cannot_convert() {
    Sink::require_built();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    python(
        r#"
import pickle, sys
good = {"measurement": "m", "tags": {"d": "a"}, "fields": {"v": 1.5}, "time": 1700000000000000000}
points = [
    good,
    {"measurement": "m", "fields": {}, "time": 1},
    {"measurement": "m", "fields": {"v": 1}, "time": "yesterday"},
    "not a dict",
    dict(good, time="2023-11-14T22:13:21Z"),
    {"fields": {"v": 1}, "time": 1},
    {"measurement": "m", "fields": {"v": [1, 2]}, "time": 1},
]
open(sys.argv[1], "wb").write(pickle.dumps(points, protocol=4))
"#,
        &[path_str(&dir.join("mixed.pkl"))],
    );
    let into = dir.join("bl");
    let out = backlog(
        &["import-pickle", "mixed.pkl", "--into", path_str(&into)],
        dir,
    );
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(
        out.stdout.lines().last(),
        Some("imported 2 points, skipped 5"),
        "{}",
        out.describe()
    );
    for want in [
        "point 1 skipped: no fields",
        "point 2 skipped: `time` `yesterday` is not an ISO 8601 time",
        "point 3 skipped: not a dict but a str",
        "point 5 skipped: no `measurement`",
        "point 6 skipped: field `v` is a list",
    ] {
        assert!(
            out.stderr.contains(want),
            "want `{want}`\n{}",
            out.describe()
        );
    }
    let dump = backlog(&["dump", path_str(&into)], dir);
    assert_eq!(
        dump.stdout,
        "m,d=a v=1.5 1700000000000000000\nm,d=a v=1.5 1700000001000000000\n"
    );
}

#[test]
fn malicious_pickles_are_refused_and_nothing_runs() {
    Sink::require_built();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let marker = dir.join("PWNED");
    python(
        r#"
import os, pickle, subprocess, sys
out, marker = sys.argv[1], sys.argv[2]
class System:
    def __reduce__(self):
        return (os.system, ("touch " + marker,))
class Popen:
    def __reduce__(self):
        return (subprocess.Popen, (["touch", marker],))
good = {"measurement": "m", "fields": {"v": 1}, "time": 1}
for proto in range(6):
    with open(os.path.join(out, "system-p%d.pkl" % proto), "wb") as f:
        f.write(pickle.dumps([good, System()], protocol=proto))
with open(os.path.join(out, "popen.pkl"), "wb") as f:
    f.write(pickle.dumps([good, {"fields": Popen()}], protocol=2))
"#,
        &[path_str(dir), path_str(&marker)],
    );
    let mut names: Vec<String> = (0..6).map(|p| format!("system-p{p}.pkl")).collect();
    names.push("popen.pkl".into());
    for name in names {
        let into = dir.join(format!("bl-{name}"));
        let out = backlog(&["import-pickle", &name, "--into", path_str(&into)], dir);
        assert_eq!(out.code, Some(2), "{name}\n{}", out.describe());
        let opcode = if name.ends_with("p4.pkl") || name.ends_with("p5.pkl") {
            "STACK_GLOBAL"
        } else {
            "GLOBAL"
        };
        let want = format!(
            "opcode {opcode} would run code; only lists, dicts, strings and numbers are accepted"
        );
        assert!(
            out.stderr.contains(&format!("{name}: byte ")) && out.stderr.contains(&want),
            "{name}: want `{want}`\n{}",
            out.describe()
        );
        assert!(!out.stdout.contains("imported"), "{}", out.describe());
        assert!(segments(&into).is_empty(), "{name}: segments were written");
        assert!(!into.exists(), "{name}: {} was created", into.display());
    }
    assert!(!marker.exists(), "a pickle payload ran");
}

#[test]
fn usage_errors_and_unreadable_input_exit_2() {
    Sink::require_built();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    fs::write(dir.join("text.pkl"), "measurement,tag=1 v=1\n").unwrap();
    fs::write(dir.join("dict.pkl"), b"\x80\x04}\x94.").unwrap();
    let missing = dir.join("missing");
    for args in [
        vec![],
        vec!["stats"],
        vec!["frobnicate", "x"],
        vec!["dump", "a", "b"],
        vec!["stats", path_str(&missing)],
        vec!["dump", path_str(&missing)],
        vec!["verify", path_str(&missing)],
        vec!["import-pickle", "text.pkl"],
        vec!["import-pickle", "nope.pkl", "--into", "x"],
        vec!["import-pickle", "text.pkl", "--into", "x"],
        vec!["import-pickle", "dict.pkl", "--into", "x"],
    ] {
        let out = backlog(&args, dir);
        assert_eq!(out.code, Some(2), "{args:?}\n{}", out.describe());
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
    assert!(!dir.join("x").exists());
}
