//! End to end: the backlog's file system fills up, then turns read-only,
//! then recovers. The sink must keep running, hold points in memory, warn
//! once per episode, and write to the backlog again by itself; every point
//! is delivered or counted as dropped.
//!
//! The backlog lives on a small tmpfs the test mounts (needs root, as CI
//! and the development machines run; elsewhere the test says so and fails).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{now_ns, output_section, points, write_config, Influxd, Sink, Stdin};

/// A tmpfs mounted for the test, unmounted on drop.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it and needs root: mount said {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs {
            dir: dir.to_path_buf(),
        }
    }

    fn remount(&self, opts: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "remount {opts} failed");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

const DB: &str = "diskfull";
const M: &str = "disk_data";

fn config(dir: &Path, port: u16, storage: &Path) -> PathBuf {
    write_config(
        dir,
        &output_section(
            "influx",
            port,
            DB,
            &[
                ("batch_size", "100"),
                ("batch_timeout", "0.1"),
                ("reconnect_delay", "0.2"),
                ("max_reconnect_delay", "0.5"),
                ("connection_timeout", "2"),
                ("persistent_storage_path", storage.to_str().unwrap()),
                ("max_backlog_size", "1000000"),
            ],
        ),
    )
}

#[test]
fn full_then_read_only_disk_is_ridden_out_without_losing_count() {
    Sink::require_built();
    let mut influx = Influxd::start();
    influx.stop();
    let dir = tempfile::tempdir().expect("temp dir");
    let fs = SmallFs::mount(&dir.path().join("small"), "1m");
    // Leave ~48 KiB: room for about 2,000 of these small points.
    let filler = fs.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 976 * 1024]).expect("fill the small fs");
    let config = config(dir.path(), influx.port(), &fs.dir);
    let base = now_ns() - 3_600_000_000_000;
    let lines = points(M, 8_000, base);
    let lines: Vec<&str> = lines.lines().collect();

    let mut sink = Sink::spawn_with(&config, Stdin::Pipe, &["--drain-timeout", "60"]);
    let feed = |sink: &mut Sink, from: usize, to: usize| {
        let mut chunk = lines[from..to].join("\n");
        chunk.push('\n');
        sink.write_stdin(chunk.as_bytes());
    };

    // 1. Disk fills: the sink holds points in memory and warns once.
    feed(&mut sink, 0, 5_000);
    assert!(
        sink.wait_for_log("Could not write to the backlog", Duration::from_secs(30)),
        "no warning when the disk filled (backlog {} bytes)\n{}",
        harness::dir_size(&fs.dir.join("influx")),
        sink.stderr_tail(20)
    );
    assert!(sink.is_running(), "the sink stopped on a full disk");

    // 2. Space returns: held points go to the backlog by themselves.
    std::fs::remove_file(&filler).expect("free space");
    assert!(
        sink.wait_for_log("Backlog writable again", Duration::from_secs(30)),
        "the sink did not resume writing when space returned\n{}",
        sink.stderr_tail(20)
    );

    // 3. A read-only file system at start (a card the kernel remounted
    // read-only): the sink starts anyway, holds, and resumes when it can.
    sink.sigterm(); // stop now: the server is down, nothing would drain
    let (code, stderr) = sink.wait();
    let first = sink.summary();
    assert_eq!(
        code,
        Some(3),
        "first run: points stay in the backlog\n{}",
        harness::tail(&stderr, 20)
    );
    assert_eq!(first.backlogged, 5_000, "{first:?}");
    fs.remount("ro");
    let mut sink = Sink::spawn_with(&config, Stdin::Pipe, &["--drain-timeout", "60"]);
    feed(&mut sink, 5_000, 6_000);
    let warned = sink.wait_for_log("Could not write to the backlog", Duration::from_secs(30));
    fs.remount("rw");
    assert!(
        warned,
        "no warning for a read-only backlog\n{}",
        sink.stderr_tail(20)
    );
    assert!(
        sink.wait_for_log("Backlog writable again", Duration::from_secs(30)),
        "the sink did not resume after the read-only episode\n{}",
        sink.stderr_tail(20)
    );

    // 4. The server comes back: everything not dropped is delivered.
    feed(&mut sink, 6_000, 8_000);
    influx.start_again();
    sink.close_stdin();
    let (code, stderr) = sink.wait();
    let s = sink.summary();
    assert_eq!(s.accepted, 3_000, "{s:?}");
    assert_eq!(
        s.delivered + s.dropped,
        8_000,
        "points unaccounted for: {s:?}"
    );
    assert_eq!(code, Some(0), "{s:?}\n{}", harness::tail(&stderr, 30));
    let count = influx.count(DB, M, "seq");
    assert_eq!(
        count, s.delivered,
        "InfluxDB holds {count}, the sink says {s:?}"
    );
    assert_eq!(
        influx.count_distinct(DB, M, "seq"),
        count,
        "duplicates in InfluxDB"
    );
    let warnings = stderr.matches("Could not write to the backlog").count();
    assert_eq!(
        warnings, 1,
        "one warning per episode expected, saw {warnings}"
    );
}
