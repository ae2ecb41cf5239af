//! Self-test of the fault-injecting proxy (`harness::FaultProxy`) in front
//! of a real InfluxDB 1.x on 127.0.0.1: forwarding, every scripted fault,
//! keep-alive, chunked and gzip request bodies, and what gets recorded.
//!
//! Run: `cargo test --release --test harness_proxy`

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::{free_port, http_agent, now_ns, points, Fault, FaultProxy, Influxd, Match};

const DB: &str = "proxytest";

/// A complete answer the client got.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn reply(resp: ureq::Response) -> Reply {
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or("").to_string();
            (n, v)
        })
        .collect();
    let body = resp.into_string().expect("read answer body");
    Reply {
        status,
        headers,
        body,
    }
}

/// One request on a fresh agent (so no pooled connection is reused and
/// ureq never retries); `Err` for transport errors (reset, timeout, ...).
fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Reply, Box<ureq::Transport>> {
    let mut req = http_agent(timeout).request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    match resp {
        Ok(r) => Ok(reply(r)),
        Err(ureq::Error::Status(_, r)) => Ok(reply(r)),
        Err(ureq::Error::Transport(t)) => Err(Box::new(t)),
    }
}

fn ping(url: &str) -> Result<Reply, Box<ureq::Transport>> {
    send(
        "GET",
        &format!("{url}/ping"),
        &[],
        None,
        Duration::from_secs(10),
    )
}

fn write(url: &str, body: &str) -> Result<Reply, Box<ureq::Transport>> {
    send(
        "POST",
        &format!("{url}/write?db={DB}"),
        &[],
        Some(body.as_bytes()),
        Duration::from_secs(10),
    )
}

/// A connection reset or closed by the proxy (not a timeout). A reset
/// that arrives while ureq is still setting up the connection is reported
/// as `ConnectionFailed`, later ones as `Io`.
fn assert_reset(err: &ureq::Transport) {
    assert!(
        matches!(
            err.kind(),
            ureq::ErrorKind::Io | ureq::ErrorKind::ConnectionFailed
        ) && !err.to_string().contains("timed out"),
        "expected a connection reset: {err}"
    );
}

/// An influxd with database `DB` and a proxy in front of it.
fn setup() -> (Influxd, FaultProxy) {
    let influx = Influxd::start();
    influx.create_database(DB);
    let proxy = FaultProxy::start(influx.port());
    (influx, proxy)
}

/// Read one HTTP/1.1 answer (Content-Length framed, or none for 204/304)
/// from a raw connection (header names lowercased).
fn read_raw_response(r: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header line");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse().expect("content-length"))
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    })
}

#[test]
fn forwards_ping_and_writes_and_records_them() {
    let (influx, proxy) = setup();
    assert_eq!(proxy.upstream_port(), influx.port());
    assert!(
        proxy.url().starts_with("http://127.0.0.1:"),
        "{}",
        proxy.url()
    );
    assert_ne!(proxy.port(), influx.port());

    let p = ping(&proxy.url()).expect("/ping through the proxy");
    assert_eq!(p.status, 204, "{p:?}");
    assert!(
        p.header("X-Influxdb-Version").is_some(),
        "upstream headers must pass through: {p:?}"
    );

    let lines = points("fwd", 5, now_ns());
    let w = write(&proxy.url(), &lines).expect("write through the proxy");
    assert_eq!(w.status, 204, "{w:?}");
    assert_eq!(influx.count(DB, "fwd", "seq"), 5, "forwarded write landed");

    // A database that does not exist: influxd's own 404 comes back.
    let missing = send(
        "POST",
        &format!("{}/write?db=no_such_db", proxy.url()),
        &[],
        Some(b"m v=1"),
        Duration::from_secs(10),
    )
    .expect("write to a missing db");
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(missing.body.contains("database not found"), "{missing:?}");

    let seen = proxy.requests();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path(), "/ping");
    assert_eq!(seen[0].answered, Some(204));
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].target, format!("/write?db={DB}"));
    assert_eq!(seen[1].query("db").as_deref(), Some(DB));
    assert_eq!(seen[1].fault, Fault::Forward);
    assert_eq!(seen[1].upstream_status, Some(204));
    assert_eq!(seen[1].answered, Some(204));
    assert!(seen[1].complete);
    assert_eq!(seen[1].text(), lines);
    assert_eq!(seen[1].body, lines.as_bytes());
    assert_eq!(
        seen[1].header("Content-Length"),
        Some(lines.len().to_string().as_str())
    );
    assert_eq!(seen[2].upstream_status, Some(404));
    assert_eq!(seen[2].answered, Some(404));
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));

    proxy.clear_seen();
    assert!(proxy.requests().is_empty());
}

#[test]
fn scripted_answers_are_used_once_in_order_then_forwarding_resumes() {
    let (influx, proxy) = setup();
    proxy.script(
        Match::path("/write"),
        [
            Fault::answer(503, "down for maintenance").with_header("Retry-After", "7"),
            Fault::influx_error(500, "timeout"),
        ],
    );
    assert_eq!(proxy.pending(), 2);

    // A /ping does not use up /write rules.
    assert_eq!(ping(&proxy.url()).expect("ping").status, 204);
    assert_eq!(proxy.pending(), 2);

    let lines = points("scripted", 3, now_ns());
    let first = write(&proxy.url(), &lines).expect("first write");
    assert_eq!(first.status, 503, "{first:?}");
    assert_eq!(first.body, "down for maintenance");
    assert_eq!(first.header("Retry-After"), Some("7"));
    let second = write(&proxy.url(), &lines).expect("second write");
    assert_eq!(second.status, 500, "{second:?}");
    assert_eq!(second.body, "{\"error\":\"timeout\"}\n");
    assert_eq!(second.header("X-Influxdb-Error"), Some("timeout"));
    assert_eq!(second.header("Content-Type"), Some("application/json"));
    assert_eq!(
        influx.count(DB, "scripted", "seq"),
        0,
        "answered writes must not reach the server"
    );
    assert_eq!(proxy.pending(), 0);

    let third = write(&proxy.url(), &lines).expect("third write");
    assert_eq!(third.status, 204, "{third:?}");
    assert_eq!(influx.count(DB, "scripted", "seq"), 3);

    let writes = proxy.requests_to("/write");
    let faults: Vec<_> = writes.iter().map(|s| s.answered).collect();
    assert_eq!(faults, [Some(503), Some(500), Some(204)]);
    assert_eq!(writes[0].upstream_status, None, "not forwarded");
    assert_eq!(writes[2].upstream_status, Some(204));

    // `repeat` and an outage as the default, then healing.
    proxy.repeat(Match::Any, Fault::answer(429, ""), 2);
    assert_eq!(write(&proxy.url(), &lines).unwrap().status, 429);
    assert_eq!(ping(&proxy.url()).unwrap().status, 429);
    proxy.set_default(Fault::answer(503, ""));
    for _ in 0..3 {
        assert_eq!(write(&proxy.url(), &lines).unwrap().status, 503);
    }
    proxy.set_default(Fault::Forward);
    assert_eq!(ping(&proxy.url()).unwrap().status, 204);

    proxy.push(Match::path("/query"), Fault::answer(500, ""));
    proxy.clear_script();
    assert_eq!(proxy.pending(), 0);
}

#[test]
fn answer_after_forward_stores_the_data_but_reports_failure() {
    let (influx, proxy) = setup();
    proxy.push(
        Match::path("/write"),
        Fault::answer_after_forward(503, "lost"),
    );
    let lines = points("lost204", 4, now_ns());
    let w = write(&proxy.url(), &lines).expect("write");
    assert_eq!(w.status, 503, "{w:?}");
    assert_eq!(w.body, "lost");
    assert_eq!(
        influx.count(DB, "lost204", "seq"),
        4,
        "the server stored the data"
    );
    let seen = &proxy.requests()[0];
    assert_eq!(seen.upstream_status, Some(204));
    assert_eq!(seen.answered, Some(503));
}

#[test]
fn delay_forwards_after_waiting() {
    let (influx, proxy) = setup();
    proxy.push(
        Match::path("/write"),
        Fault::Delay(Duration::from_millis(300)),
    );
    let lines = points("slow", 2, now_ns());
    let w = write(&proxy.url(), &lines).expect("delayed write");
    assert_eq!(w.status, 204, "{w:?}");
    assert_eq!(influx.count(DB, "slow", "seq"), 2);
    let seen = &proxy.requests()[0];
    assert_eq!(seen.fault, Fault::Delay(Duration::from_millis(300)));
    assert_eq!(seen.answered, Some(204));
}

#[test]
fn hang_never_answers_until_the_proxy_is_dropped() {
    let (influx, proxy) = setup();
    proxy.push(Match::path("/write"), Fault::Hang);
    let lines = points("hung", 2, now_ns());
    let err = send(
        "POST",
        &format!("{}/write?db={DB}", proxy.url()),
        &[],
        Some(lines.as_bytes()),
        Duration::from_secs(1),
    )
    .expect_err("a hung request must not be answered");
    assert!(
        err.kind() == ureq::ErrorKind::Io && err.to_string().contains("timed out"),
        "expected a read timeout: {err}"
    );
    assert_eq!(influx.count(DB, "hung", "seq"), 0, "not forwarded");
    let seen = &proxy.requests()[0];
    assert_eq!(seen.fault, Fault::Hang);
    assert_eq!(seen.answered, None);
    assert_eq!(seen.text(), lines, "the request was read whole");

    // The next request is forwarded again.
    assert_eq!(write(&proxy.url(), &lines).unwrap().status, 204);

    // A hung raw connection: nothing arrives; dropping the proxy closes it.
    proxy.push(Match::Any, Fault::Hang);
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    conn.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    let early = conn.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
        "a hung connection must stay silent, got {early:?}"
    );
    drop(proxy);
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let after = conn.read(&mut buf);
    assert!(
        matches!(after, Ok(0))
            || matches!(&after, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "dropping the proxy must close the hung connection, got {after:?}"
    );
}

#[test]
fn reset_mid_body_and_refuse_give_client_errors() {
    let (influx, proxy) = setup();
    let lines = points("reset", 2000, now_ns()); // ~100 KB
    proxy.push(Match::path("/write"), Fault::ResetMidBody);
    let err = write(&proxy.url(), &lines).expect_err("reset mid body must fail");
    assert_reset(&err);
    let seen = &proxy.requests()[0];
    assert_eq!(seen.fault, Fault::ResetMidBody);
    assert!(!seen.complete);
    assert_eq!(seen.body.len(), lines.len().div_ceil(2), "half was read");
    assert_eq!(seen.answered, None);
    assert_eq!(influx.count(DB, "reset", "seq"), 0, "nothing forwarded");

    // Refuse as the first rule for any request: reset at accept.
    proxy.clear_seen();
    proxy.push(Match::Any, Fault::Refuse);
    let err = ping(&proxy.url()).expect_err("refused connection must fail");
    assert_reset(&err);
    assert_eq!(proxy.refused_connections(), 1);
    assert_eq!(proxy.pending(), 0);
    assert!(proxy.requests().is_empty(), "nothing was read");

    // Refuse for one path: the head is read (and recorded), then reset.
    proxy.push(Match::path("/write"), Fault::Refuse);
    let err = write(&proxy.url(), &lines).expect_err("refused write must fail");
    assert_reset(&err);
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].fault, Fault::Refuse);
    assert!(!seen[0].complete);

    // Refuse by default: a dead server until healed.
    proxy.set_default(Fault::Refuse);
    for _ in 0..2 {
        assert!(ping(&proxy.url()).is_err());
    }
    assert_eq!(proxy.refused_connections(), 3);
    // It is a real RST (not a FIN), even before the client sent anything.
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let got = conn.read(&mut [0u8; 16]);
    assert!(
        matches!(&got, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "a refused connection must be reset, got {got:?}"
    );
    proxy.set_default(Fault::Forward);
    assert_eq!(write(&proxy.url(), &lines).unwrap().status, 204);
    assert_eq!(influx.count(DB, "reset", "seq"), 2000);
}

#[test]
fn reset_mid_response_after_the_server_stored_the_data() {
    let (influx, proxy) = setup();
    proxy.push(Match::path("/write"), Fault::ResetMidResponse);
    let lines = points("halfanswer", 3, now_ns());
    let err = write(&proxy.url(), &lines).expect_err("half an answer must fail");
    assert_reset(&err);
    assert_eq!(influx.count(DB, "halfanswer", "seq"), 3, "stored anyway");
    let seen = &proxy.requests()[0];
    assert_eq!(seen.upstream_status, Some(204));
    assert_eq!(seen.answered, None);

    // On a raw connection: the answer stops short of its Content-Length.
    proxy.push(Match::path("/query"), Fault::ResetMidResponse);
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /query?q=SHOW+DATABASES HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let end = conn.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got).into_owned();
    let full = match text.split_once("\r\n\r\n") {
        Some((head, body)) => head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .is_some_and(|n| n.parse::<usize>().unwrap() == body.len()),
        None => false,
    };
    assert!(
        !full,
        "got a complete answer despite ResetMidResponse ({end:?}): {text:?}"
    );
}

#[test]
fn gzip_bodies_are_forwarded_and_recorded_decoded() {
    let (influx, proxy) = setup();
    let lines = points("gz", 50, now_ns());
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(lines.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let w = send(
        "POST",
        &format!("{}/write?db={DB}", proxy.url()),
        &[("Content-Encoding", "gzip")],
        Some(&gz),
        Duration::from_secs(10),
    )
    .expect("gzip write");
    assert_eq!(w.status, 204, "{w:?}");
    assert_eq!(influx.count(DB, "gz", "seq"), 50);
    let seen = &proxy.requests()[0];
    assert_eq!(seen.header("content-encoding"), Some("gzip"));
    assert_eq!(seen.body, gz, "body as received");
    assert_eq!(seen.text(), lines, "body_decoded is gunzipped");
    assert_eq!(seen.gzip_error, None);

    // Not actually gzip: recorded as is, with the reason.
    proxy.push(Match::path("/write"), Fault::answer(204, ""));
    let w = send(
        "POST",
        &format!("{}/write?db={DB}", proxy.url()),
        &[("Content-Encoding", "gzip")],
        Some(b"plain"),
        Duration::from_secs(10),
    )
    .expect("bogus gzip write");
    assert_eq!(w.status, 204);
    let seen = &proxy.requests()[1];
    assert_eq!(seen.body_decoded, b"plain");
    assert!(seen.gzip_error.is_some());
}

#[test]
fn keep_alive_and_chunked_bodies_on_one_raw_connection() {
    let (influx, proxy) = setup();
    let conn = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;

    w.write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let first = read_raw_response(&mut r).expect("first answer");
    assert_eq!(first.status, 204);
    assert_eq!(first.header("connection"), Some("keep-alive"), "{first:?}");

    let lines = points("ka", 3, now_ns());
    w.write_all(
        format!(
            "POST /write?db={DB} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{lines}",
            lines.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let second = read_raw_response(&mut r).expect("second answer");
    assert_eq!(second.status, 204, "{second:?}");

    // A chunked body, in two chunks, then a scripted answer with a body.
    let more = points("ka", 6, now_ns() + 1_000_000_000);
    let (a, b) = more.split_at(more.len() / 3);
    w.write_all(
        format!(
            "POST /write?db={DB} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let third = read_raw_response(&mut r).expect("third answer");
    assert_eq!(third.status, 204, "{third:?}");

    proxy.push(Match::path("/query"), Fault::answer(500, "boom"));
    w.write_all(b"GET /query?q=x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let fourth = read_raw_response(&mut r).expect("fourth answer");
    assert_eq!((fourth.status, fourth.body.as_str()), (500, "boom"));

    // Connection: close is honoured.
    w.write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let fifth = read_raw_response(&mut r).expect("fifth answer");
    assert_eq!(fifth.status, 204);
    assert_eq!(fifth.header("connection"), Some("close"), "{fifth:?}");
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap(), 0, "closed after close");

    assert_eq!(influx.count(DB, "ka", "seq"), 3 + 6);
    let seen = proxy.requests();
    assert_eq!(seen.len(), 5, "{seen:#?}");
    assert!(
        seen.iter().all(|s| s.connection == seen[0].connection),
        "all on one connection: {seen:#?}"
    );
    assert_eq!(proxy.connections(), 1);
    assert_eq!(seen[2].text(), more, "chunked body de-chunked");
    assert_eq!(seen[2].header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen[2].upstream_status, Some(204));
}

#[test]
fn unreachable_upstream_resets_the_client() {
    // Nothing listens on this port.
    let proxy = FaultProxy::start(free_port());
    let err = ping(&proxy.url()).expect_err("no upstream: the client must see an error");
    assert_reset(&err);
    let seen = &proxy.requests()[0];
    assert!(seen.upstream_error.is_some(), "{seen:?}");
    assert_eq!(seen.answered, None);
    // Scripted answers do not need the upstream.
    proxy.push(Match::Any, Fault::answer(204, ""));
    assert_eq!(ping(&proxy.url()).unwrap().status, 204);
}
