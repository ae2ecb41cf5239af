//! The listener (relay) end to end, with clients nobody here wrote: the
//! Python `influxdb` 5.3.2 client (the gateway's), `influxdb-client` 1.50
//! (v2 API, its batching write API) and curl with gzip bodies. Each writes
//! one device's series, paced like a gateway, retrying what is not
//! acknowledged, through a real influxd outage and a `kill -9` of the host
//! (restarted on the same backlog). At the end every point that was
//! acknowledged is in InfluxDB exactly once, and nothing else is.
//!
//! Plus: untimestamped lines from concurrent writers at full speed (503s
//! retried, as clients do) all land as distinct points; a database no output writes to gets `404` and is written
//! nowhere; two outputs each get only their database's writes.
//!
//! Run: `cargo test --release --test e2e_listener`

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::chaos::field_values;
use harness::clients::{listener_section, Writer, WriterSpec};
use harness::{free_port, now_ns, output_section, wait_until, write_config, Influxd, Sink};

const DB: &str = "relay";
const COUNT: u64 = 12_000;
const BATCH: u64 = 100;
const PAUSE_MS: u64 = 10;

/// A listener on a free port in front of one output `out` writing to `DB` on
/// `influx_port`, its backlog under `dir`.
struct Relay {
    port: u16,
    cfg: PathBuf,
    sink: Sink,
}

impl Relay {
    fn start(
        dir: &Path,
        influx_port: u16,
        listener: &[(&str, &str)],
        output: &[(&str, &str)],
    ) -> Relay {
        let port = free_port();
        let backlog = dir.join("backlog");
        let mut keys = vec![("persistent_storage_path", backlog.to_str().unwrap())];
        keys.extend_from_slice(output);
        let text =
            listener_section(port, listener) + &output_section("out", influx_port, DB, &keys);
        let cfg = write_config(dir, &text);
        let sink = start_relay(&cfg);
        Relay { port, cfg, sink }
    }
}

fn start_relay(cfg: &Path) -> Sink {
    let sink = Sink::spawn(cfg, None);
    assert!(
        sink.wait_for_log("listening on http://", Duration::from_secs(60)),
        "the listener did not start:\n{}",
        sink.stderr_tail(30)
    );
    sink
}

/// Every `seq` InfluxDB holds for `measurement`, with repeats.
fn stored_seqs(influxd: &Influxd, measurement: &str, base_ms: i64) -> Vec<u64> {
    let from = base_ms * 1_000_000;
    let to = from + (COUNT as i64 + 1) * 1_000_000;
    let mut seqs: Vec<u64> = field_values(
        &influxd.url(),
        DB,
        measurement,
        "seq",
        from,
        to,
        3_600_000_000_000,
    )
    .into_iter()
    .map(|(_, v)| v)
    .collect();
    seqs.sort_unstable();
    seqs
}

/// A client writes through an outage and a `kill -9`; `extra` are keys
/// of the output section.
fn through_an_outage_and_a_kill9(mode: &'static str, extra: &[(&str, &str)]) {
    Sink::require_built();
    let dir = tempfile::tempdir().unwrap();
    let mut influxd = Influxd::start();
    let Relay {
        port,
        cfg,
        mut sink,
    } = Relay::start(dir.path(), influxd.port(), &[], extra);
    let measurement = format!("relay_{mode}");
    // A day back, so the points are not stamped "now" by anyone.
    let base_ms = now_ns() / 1_000_000 - 86_400_000;
    let spec = WriterSpec {
        mode,
        port,
        db: DB.into(),
        measurement: measurement.clone(),
        count: COUNT,
        batch: BATCH,
        base_ms,
        pause_ms: PAUSE_MS,
    };
    let mut writer = Writer::spawn(&spec, dir.path());
    let context = |sink: &Sink, writer: &Writer| {
        format!(
            "--- sink ---\n{}\n--- writer ---\n{}",
            sink.stderr_tail(30),
            harness::tail(&writer.log(), 20)
        )
    };
    assert!(
        wait_until(Duration::from_secs(120), || writer.acked().len() >= 3_000),
        "no progress before the outage\n{}",
        context(&sink, &writer)
    );
    influxd.stop();
    let at_outage = writer.acked().len();
    // Acknowledged from the backlog while InfluxDB is down.
    assert!(
        wait_until(Duration::from_secs(120), || writer.acked().len()
            >= at_outage + 1_500),
        "nothing acknowledged during the outage\n{}",
        context(&sink, &writer)
    );
    sink.kill9();
    let before_kill = writer.acked();
    let mut sink = start_relay(&cfg);
    influxd.start_again();
    assert!(
        writer.wait(Duration::from_secs(300)),
        "the writer did not finish\n{}",
        context(&sink, &writer)
    );
    let acked = writer.acked();
    assert_eq!(
        acked,
        (0..COUNT).collect::<BTreeSet<_>>(),
        "the writer retries until every point is acknowledged"
    );
    assert!(before_kill.is_subset(&acked));
    let delivered = wait_until(Duration::from_secs(120), || {
        influxd.count(DB, &measurement, "seq") >= COUNT
    });
    sink.sigterm();
    let (_, stderr) = sink.wait();
    let stored = stored_seqs(&influxd, &measurement, base_ms);
    let distinct: BTreeSet<u64> = stored.iter().copied().collect();
    assert!(
        delivered,
        "InfluxDB holds {} of {COUNT} acknowledged points\n{}",
        distinct.len(),
        harness::tail(&stderr, 30)
    );
    let missing: Vec<u64> = acked.difference(&distinct).copied().take(10).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in InfluxDB: {missing:?}"
    );
    assert_eq!(
        stored.len(),
        distinct.len(),
        "a point is in InfluxDB more than once"
    );
    assert_eq!(distinct, acked, "InfluxDB holds a point never written");
}

#[test]
fn the_gateways_influxdb_client_through_an_outage_and_a_kill9() {
    through_an_outage_and_a_kill9("v1", &[]);
}

#[test]
fn influxdb_client_v2_batching_through_an_outage_and_a_kill9() {
    through_an_outage_and_a_kill9("v2", &[]);
}

/// A small backlog: the outage fills it, the listener answers 503 with
/// Retry-After, curl's loop retries, nothing is dropped.
#[test]
fn curl_with_gzip_through_an_outage_a_full_backlog_and_a_kill9() {
    through_an_outage_and_a_kill9("curl", &[("max_backlog_size", "2000")]);
}

fn post(port: u16, query: &str, body: &str) -> (u16, String) {
    let agent = harness::http_agent(Duration::from_secs(30));
    match agent
        .post(&format!("http://127.0.0.1:{port}/write?{query}"))
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("POST /write?{query}: {e}"),
    }
}

#[test]
fn untimestamped_lines_from_concurrent_writers_all_land_as_distinct_points() {
    Sink::require_built();
    let dir = tempfile::tempdir().unwrap();
    let influxd = Influxd::start();
    let Relay { port, mut sink, .. } = Relay::start(dir.path(), influxd.port(), &[], &[]);
    let (writers, requests, lines) = (4u64, 25u64, 200u64);
    std::thread::scope(|s| {
        for w in 0..writers {
            s.spawn(move || {
                for r in 0..requests {
                    let body: String = (0..lines)
                        .map(|i| {
                            format!("nots,device=inv1 seq={}i\n", (w * requests + r) * lines + i)
                        })
                        .collect();
                    // As clients do: a 503 (the backlog full of points
                    // InfluxDB has yet to take) is retried after a pause.
                    loop {
                        let (code, answer) = post(port, &format!("db={DB}"), &body);
                        if code == 204 {
                            break;
                        }
                        assert_eq!(code, 503, "{answer}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            });
        }
    });
    let total = writers * requests * lines;
    let landed = wait_until(Duration::from_secs(60), || {
        influxd.count(DB, "nots", "seq") >= total
    });
    sink.sigterm();
    let (_, stderr) = sink.wait();
    assert!(landed, "{}", harness::tail(&stderr, 20));
    assert_eq!(influxd.count(DB, "nots", "seq"), total);
    assert_eq!(influxd.count_distinct(DB, "nots", "seq"), total);
}

#[test]
fn writes_reach_only_their_database() {
    Sink::require_built();
    let dir = tempfile::tempdir().unwrap();
    let influxd = Influxd::start();
    let port = free_port();
    let root = dir.path().join("backlog");
    let root = root.to_str().unwrap();
    let text = listener_section(port, &[])
        + &output_section(
            "a",
            influxd.port(),
            "site_a",
            &[("persistent_storage_path", root)],
        )
        + &output_section(
            "b",
            influxd.port(),
            "site_b",
            &[("persistent_storage_path", root)],
        );
    let cfg = write_config(dir.path(), &text);
    let mut sink = start_relay(&cfg);
    assert_eq!(post(port, "db=site_a", "m,device=a seq=1i 1").0, 204);
    assert_eq!(
        post(
            port,
            "db=site_b&precision=s",
            "m,device=b seq=2i 1\nm,device=b seq=3i 2"
        )
        .0,
        204
    );
    let (code, body) = post(port, "db=site_c", "m,device=c seq=4i 1");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("database not found"), "{body}");
    let (code, body) = post(port, "db=site_a&rp=week", "m,device=a seq=5i 1");
    assert_eq!(
        code, 404,
        "a retention policy the output does not write to: {body}"
    );
    let landed = wait_until(Duration::from_secs(60), || {
        influxd.count("site_a", "m", "seq") >= 1 && influxd.count("site_b", "m", "seq") >= 2
    });
    sink.sigterm();
    let (_, stderr) = sink.wait();
    assert!(landed, "{}", harness::tail(&stderr, 20));
    assert_eq!(influxd.count("site_a", "m", "seq"), 1);
    assert_eq!(influxd.count("site_b", "m", "seq"), 2);
    assert_eq!(influxd.count("site_c", "m", "seq"), 0);
    // Precision applied at acceptance: `s` timestamps land as seconds.
    let v = influxd.query("site_b", "SELECT seq FROM m WHERE time = 2s");
    assert!(
        v.to_string().contains("[2000000000,3]")
            || v.to_string().contains("\"1970-01-01T00:00:02Z\",3"),
        "{v}"
    );
}

/// POST until the answer is not 503 (and the connection not refused or
/// closed: the listener at `max_connections`), within a minute.
fn post_through(port: u16, query: &str, body: &[u8], gzip: bool) -> (u16, String) {
    let agent = harness::http_agent(Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut req = agent.post(&format!("http://127.0.0.1:{port}/write?{query}"));
        if gzip {
            req = req.set("Content-Encoding", "gzip");
        }
        let answer = match req.send_bytes(body) {
            Ok(r) => Some((r.status(), r.into_string().unwrap_or_default())),
            Err(ureq::Error::Status(503, _)) => None,
            Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().unwrap_or_default())),
            Err(_) => None,
        };
        if let Some(a) = answer {
            return a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listener stayed busy for a minute"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Slowloris connections over `max_connections`, a 100,000-field line,
/// invalid UTF-8 and a gzip bomb against the real pipeline: each gets its
/// answer, the host goes on, and a good writer's points all land.
#[test]
fn hostile_clients_get_answers_and_the_good_writer_gets_through() {
    use std::io::Write;
    Sink::require_built();
    let dir = tempfile::tempdir().unwrap();
    let influxd = Influxd::start();
    let timeouts = [("header_timeout", "1"), ("read_timeout", "2")];
    let Relay { port, mut sink, .. } = Relay::start(dir.path(), influxd.port(), &timeouts, &[]);
    // 600 connections that never send a request (the limit is 256).
    let idle: Vec<std::net::TcpStream> = (0..600)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(idle.len() >= 256, "only {} connections opened", idle.len());
    // One field per value, 100,000 of them, beside a good line.
    let wide: String = (0..100_000)
        .map(|i| format!("f{i}=1i"))
        .collect::<Vec<_>>()
        .join(",");
    let body = format!("wide,device=inv1 {wide} 1000\nhostile,device=inv1 seq=1i 1000\n");
    let (code, answer) = post_through(port, &format!("db={DB}"), body.as_bytes(), false);
    assert!(code == 204 || code == 400, "{code} {answer}");
    let mut bad = b"hostile,device=inv1 seq=2i 2000\nhostile,device=inv1 name=\"".to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(b"\" 3000\n");
    let (code, answer) = post_through(port, &format!("db={DB}"), &bad, false);
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer.contains("partial write") && answer.contains("UTF-8"),
        "{answer}"
    );
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![b'0'; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    };
    let (code, answer) = post_through(port, &format!("db={DB}"), &bomb, true);
    assert_eq!(code, 413, "{answer}");
    // The good writer: 20 requests of 100 lines.
    for r in 0..20u64 {
        let body: String = (0..100)
            .map(|i| {
                format!(
                    "good,device=inv1 seq={}i {}\n",
                    r * 100 + i,
                    r * 100 + i + 1
                )
            })
            .collect();
        let (code, answer) = post_through(port, &format!("db={DB}"), body.as_bytes(), false);
        assert_eq!(code, 204, "{answer}");
    }
    drop(idle);
    let landed = wait_until(Duration::from_secs(60), || {
        influxd.count(DB, "good", "seq") >= 2000 && influxd.count(DB, "hostile", "seq") >= 2
    });
    assert!(sink.is_running(), "{}", sink.stderr_tail(20));
    sink.sigterm();
    let (_, stderr) = sink.wait();
    assert!(landed, "{}", harness::tail(&stderr, 20));
    assert_eq!(influxd.count(DB, "good", "seq"), 2000);
    assert_eq!(
        influxd.count(DB, "hostile", "seq"),
        2,
        "the good lines beside the bad ones"
    );
    assert!(
        !stderr.contains("crashed"),
        "{}",
        harness::tail(&stderr, 20)
    );
}
