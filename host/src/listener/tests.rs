//! The listener driven over real HTTP on loopback: a test [`Acceptor`]
//! records what it got and answers as told; requests are written by hand
//! on a `TcpStream` (and once by `curl`), so every status, header and body
//! byte is checked as a client sees it.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::endpoints::{handle, Shared};
use super::*;

/// Records every write; answers `answer` after `delay`.
struct TestAcceptor {
    got: Mutex<Vec<Write>>,
    answer: Mutex<Accepted>,
    delay: Mutex<Duration>,
}

impl TestAcceptor {
    fn new() -> Arc<TestAcceptor> {
        Arc::new(TestAcceptor {
            got: Mutex::new(Vec::new()),
            answer: Mutex::new(ok()),
            delay: Mutex::new(Duration::ZERO),
        })
    }

    fn answer(&self, a: Accepted) {
        *self.answer.lock().unwrap() = a;
    }

    fn got(&self) -> Vec<Write> {
        self.got.lock().unwrap().clone()
    }
}

impl Acceptor for TestAcceptor {
    fn accept(&self, write: Write) -> impl Future<Output = Accepted> + Send {
        self.got.lock().unwrap().push(write);
        let answer = self.answer.lock().unwrap().clone();
        let delay = *self.delay.lock().unwrap();
        async move {
            tokio::time::sleep(delay).await;
            answer
        }
    }
}

fn ok() -> Accepted {
    Accepted::Durable {
        accepted: 1,
        rejected: vec![],
    }
}

struct Relay {
    addr: SocketAddr,
    acceptor: Arc<TestAcceptor>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

fn config(pairs: &[(&str, &str)]) -> ListenerConfig {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (cfg, unknown) = ListenerConfig::from_pairs("relay", &pairs).unwrap();
    assert!(unknown.is_empty(), "{unknown:?}");
    cfg
}

async fn start(pairs: &[(&str, &str)]) -> Relay {
    let cfg = config(pairs);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TestAcceptor::new();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, cfg, acceptor.clone(), async {
        let _ = rx.await;
    }));
    Relay {
        addr,
        acceptor,
        stop: Some(tx),
        task,
    }
}

/// A response as read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&raw[end + 4..]).into_owned(),
    }
}

/// Send `raw` on a new connection and read until the server closes it.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("server did not close the connection")
        .unwrap();
    parse_response(&out)
}

/// A request closing its connection, with a `Content-Length` body.
fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {target} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

async fn post(relay: &Relay, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    exchange(relay.addr, &request("POST", target, headers, body)).await
}

async fn get(relay: &Relay, target: &str) -> Resp {
    exchange(relay.addr, &request("GET", target, &[], b"")).await
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn basic(user_password: &str) -> String {
    // Test-only encoder; the listener only decodes.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = user_password.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

fn v1_target(db: &str, rp: Option<&str>) -> Target {
    Target::V1 {
        db: db.into(),
        rp: rp.map(Into::into),
    }
}

// ---------------------------------------------------------------- ping, health, routing

#[tokio::test]
async fn ping_answers_204_with_version_and_build_headers() {
    let relay = start(&[("version", "1.8.10")]).await;
    let r = get(&relay, "/ping").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-influxdb-version"), Some("1.8.10"));
    assert_eq!(r.header("x-influxdb-build"), Some("OSS"));
    assert_eq!(r.body, "");
    let r = exchange(relay.addr, &request("HEAD", "/ping", &[], b"")).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-influxdb-version"), Some("1.8.10"));
    let r = get(&relay, "/ping?verbose=true").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"version":"1.8.10"}"#);
    assert_eq!(get(&relay, "/ping?verbose=false").await.status, 204);
}

#[tokio::test]
async fn health_answers_like_2x() {
    let relay = start(&[("version", "2.7.11")]).await;
    let r = get(&relay, "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.body,
        "{\"name\":\"influxdb\",\"message\":\"ready for queries and writes\",\
         \"status\":\"pass\",\"checks\":[],\"version\":\"2.7.11\"}\n"
    );
    assert_eq!(r.header("x-influxdb-version"), Some("2.7.11"));
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let relay = start(&[]).await;
    let r = get(&relay, "/query?q=show+databases").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "404 page not found\n");
    assert_eq!(r.header("x-influxdb-version"), Some("1.8.10"));
    let r = post(&relay, "/api/v2/query", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, r#"{"code":"not found","message":"path not found"}"#);
    assert_eq!(post(&relay, "/write/", &[], b"").await.status, 404);

    let r = get(&relay, "/write?db=x").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    assert_eq!(r.body, r#"{"error":"Method Not Allowed"}"#);
    let r = exchange(
        relay.addr,
        &request("PUT", "/api/v2/write?bucket=b", &[], b""),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(
        r.body,
        r#"{"code":"method not allowed","message":"allow: POST"}"#
    );
    assert_eq!(post(&relay, "/ping", &[], b"").await.status, 405);
    assert_eq!(post(&relay, "/health", &[], b"").await.status, 405);
    let r = exchange(relay.addr, &request("OPTIONS", "/write", &[], b"")).await;
    assert_eq!(r.status, 204);
    assert!(relay.acceptor.got().is_empty());
}

// ---------------------------------------------------------------- v1 writes

#[tokio::test]
async fn v1_write_hands_target_precision_and_lines_to_the_acceptor() {
    let relay = start(&[]).await;
    let body = b"cpu,host=a usage=1 1700000000\nmem used=2 1700000000\n";
    let r = post(
        &relay,
        "/write?db=tele%20graf&rp=short&precision=s",
        &[],
        body,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(r.body, "");
    assert_eq!(r.header("x-influxdb-version"), Some("1.8.10"));
    assert_eq!(r.header("x-influxdb-build"), Some("OSS"));
    let got = relay.acceptor.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, v1_target("tele graf", Some("short")));
    assert_eq!(got[0].precision, Precision::Seconds);
    assert_eq!(got[0].lines, &body[..]);
    assert!(got[0].peer.ip().is_loopback());
}

#[tokio::test]
async fn v1_write_without_db_is_400() {
    let relay = start(&[]).await;
    for target in ["/write", "/write?db=", "/write?rp=x"] {
        let r = post(&relay, target, &[], b"cpu v=1").await;
        assert_eq!(r.status, 400);
        assert_eq!(r.body, r#"{"error":"database is required"}"#);
        assert_eq!(r.header("x-influxdb-error"), Some("database is required"));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert!(relay.acceptor.got().is_empty());
}

#[tokio::test]
async fn v1_precisions_are_parsed_and_unknown_ones_refused() {
    let relay = start(&[]).await;
    let cases = [
        ("", Precision::Nanoseconds),
        ("&precision=n", Precision::Nanoseconds),
        ("&precision=ns", Precision::Nanoseconds),
        ("&precision=u", Precision::Microseconds),
        ("&precision=us", Precision::Microseconds),
        ("&precision=ms", Precision::Milliseconds),
        ("&precision=s", Precision::Seconds),
        ("&precision=m", Precision::Minutes),
        ("&precision=h", Precision::Hours),
    ];
    for (param, _) in &cases {
        let r = post(&relay, &format!("/write?db=d{param}"), &[], b"cpu v=1 1").await;
        assert_eq!(r.status, 204, "{param}");
    }
    let got: Vec<Precision> = relay.acceptor.got().iter().map(|w| w.precision).collect();
    assert_eq!(got, cases.iter().map(|c| c.1).collect::<Vec<_>>());
    let r = post(&relay, "/write?db=d&precision=rfc3339", &[], b"cpu v=1").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        r#"{"error":"invalid precision \"rfc3339\"; valid precision units are n, ns, u, us, ms, s, m and h"}"#
    );
    assert_eq!(relay.acceptor.got().len(), cases.len());
}

#[tokio::test]
async fn v1_partial_write_names_the_refused_lines_and_keeps_the_rest() {
    let relay = start(&[]).await;
    relay.acceptor.answer(Accepted::Durable {
        accepted: 2,
        rejected: vec![Rejected {
            line: 1,
            reason: "missing field value".into(),
        }],
    });
    let r = post(&relay, "/write?db=d", &[], b"cpu v=1\ncpu v=\ncpu v=3\n").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        r#"{"error":"partial write: unable to parse 'cpu v=': missing field value dropped=1"}"#
    );
    assert_eq!(
        r.header("x-influxdb-error"),
        Some("partial write: unable to parse 'cpu v=': missing field value dropped=1")
    );
    // Every line refused: 1.x's plain parse error.
    relay.acceptor.answer(Accepted::Durable {
        accepted: 0,
        rejected: vec![
            Rejected {
                line: 0,
                reason: "missing fields".into(),
            },
            Rejected {
                line: 1,
                reason: "invalid boolean".into(),
            },
        ],
    });
    let r = post(&relay, "/write?db=d", &[], b"cpu\ncpu v=tru").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        r#"{"error":"unable to parse 'cpu': missing fields\nunable to parse 'cpu v=tru': invalid boolean"}"#
    );
}

#[tokio::test]
async fn v1_empty_body_is_204_without_calling_the_acceptor() {
    let relay = start(&[]).await;
    let r = post(&relay, "/write?db=d", &[], b"").await;
    assert_eq!(r.status, 204);
    assert!(relay.acceptor.got().is_empty());
}

#[tokio::test]
async fn invalid_utf8_is_passed_through_untouched() {
    let relay = start(&[]).await;
    let body = b"c\xff\xfe v=1\n\x00\x01";
    assert_eq!(post(&relay, "/write?db=d", &[], body).await.status, 204);
    assert_eq!(relay.acceptor.got()[0].lines, &body[..]);
}

// ---------------------------------------------------------------- v2 writes

#[tokio::test]
async fn v2_write_hands_org_bucket_and_precision_to_the_acceptor() {
    let relay = start(&[("version", "2.7.11")]).await;
    let r = post(
        &relay,
        "/api/v2/write?org=acme&bucket=metrics&precision=ms",
        &[],
        b"cpu v=1 1",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(r.header("x-influxdb-version"), Some("2.7.11"));
    assert_eq!(r.header("x-influxdb-build"), Some("OSS"));
    let r = post(
        &relay,
        "/api/v2/write?orgID=0123456789abcdef&bucket=b",
        &[],
        b"cpu v=1",
    )
    .await;
    assert_eq!(r.status, 204);
    let r = post(
        &relay,
        "/api/v2/write?bucket=b&precision=us",
        &[],
        b"cpu v=1",
    )
    .await;
    assert_eq!(r.status, 204);
    let got = relay.acceptor.got();
    assert_eq!(
        got.iter().map(|w| w.target.clone()).collect::<Vec<_>>(),
        vec![
            Target::V2 {
                org: Some("acme".into()),
                bucket: "metrics".into()
            },
            Target::V2 {
                org: Some("0123456789abcdef".into()),
                bucket: "b".into()
            },
            Target::V2 {
                org: None,
                bucket: "b".into()
            },
        ]
    );
    assert_eq!(
        got.iter().map(|w| w.precision).collect::<Vec<_>>(),
        vec![
            Precision::Milliseconds,
            Precision::Nanoseconds,
            Precision::Microseconds
        ]
    );
}

#[tokio::test]
async fn v2_write_refuses_missing_bucket_bad_precision_and_empty_body() {
    let relay = start(&[]).await;
    let r = post(&relay, "/api/v2/write?org=o", &[], b"cpu v=1").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        r#"{"code":"not found","message":"bucket not found"}"#
    );
    assert_eq!(r.header("x-platform-error-code"), Some("not found"));
    for p in ["h", "m", "n", "u", "seconds"] {
        let r = post(
            &relay,
            &format!("/api/v2/write?bucket=b&precision={p}"),
            &[],
            b"cpu v=1",
        )
        .await;
        assert_eq!(r.status, 400, "{p}");
        assert_eq!(
            r.body,
            r#"{"code":"invalid","message":"invalid precision; valid precision units are ns, us, ms, and s"}"#
        );
    }
    let r = post(&relay, "/api/v2/write?bucket=b", &[], b"").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        r#"{"code":"invalid","message":"writing requires points"}"#
    );
    assert!(relay.acceptor.got().is_empty());
}

#[tokio::test]
async fn v2_partial_write_is_400_invalid() {
    let relay = start(&[]).await;
    relay.acceptor.answer(Accepted::Durable {
        accepted: 1,
        rejected: vec![Rejected {
            line: 0,
            reason: "invalid field format".into(),
        }],
    });
    let r = post(&relay, "/api/v2/write?bucket=b", &[], b"cpu v=x\ncpu v=1").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.body,
        r#"{"code":"invalid","message":"partial write: unable to parse 'cpu v=x': invalid field format dropped=1"}"#
    );
}

// ---------------------------------------------------------------- acceptor answers

#[tokio::test]
async fn unroutable_is_404_in_each_dialect() {
    let relay = start(&[]).await;
    relay.acceptor.answer(Accepted::Unroutable);
    let r = post(&relay, "/write?db=nope", &[], b"cpu v=1").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, r#"{"error":"database not found: \"nope\""}"#);
    let r = post(&relay, "/api/v2/write?bucket=nope", &[], b"cpu v=1").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        r#"{"code":"not found","message":"bucket \"nope\" not found"}"#
    );
}

#[tokio::test]
async fn busy_too_many_and_failed_are_503_429_and_500() {
    let relay = start(&[]).await;
    relay.acceptor.answer(Accepted::Busy {
        retry_after_s: 30,
        why: "backlog full".into(),
    });
    let r = post(&relay, "/write?db=d", &[], b"cpu v=1").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.body, r#"{"error":"backlog full"}"#);
    let r = post(&relay, "/api/v2/write?bucket=b", &[], b"cpu v=1").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.body, r#"{"code":"unavailable","message":"backlog full"}"#);

    relay
        .acceptor
        .answer(Accepted::TooMany { retry_after_s: 2 });
    let r = post(&relay, "/write?db=d", &[], b"cpu v=1").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.body, r#"{"error":"too many requests; retry later"}"#);
    let r = post(&relay, "/api/v2/write?bucket=b", &[], b"cpu v=1").await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.body,
        r#"{"code":"too many requests","message":"too many requests; retry later"}"#
    );

    relay
        .acceptor
        .answer(Accepted::Failed("disk on fire".into()));
    let r = post(&relay, "/write?db=d", &[], b"cpu v=1").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.body, r#"{"error":"disk on fire"}"#);
    assert_eq!(r.header("retry-after"), None);
    let r = post(&relay, "/api/v2/write?bucket=b", &[], b"cpu v=1").await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.body,
        r#"{"code":"internal error","message":"unexpected error writing points to database: disk on fire"}"#
    );
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn v1_auth_takes_every_form_influxdb_takes() {
    let relay = start(&[("users", "alice:s3cret"), ("tokens", "tok1")]).await;
    let good: [(&str, Vec<(&str, String)>); 8] = [
        ("/write?db=d&u=alice&p=s3cret", vec![]),
        ("/write?db=d&p=tok1", vec![]),
        ("/write?db=d&u=whoever&p=tok1", vec![]),
        (
            "/write?db=d",
            vec![("Authorization", basic("alice:s3cret"))],
        ),
        ("/write?db=d", vec![("Authorization", basic("x:tok1"))]),
        (
            "/write?db=d",
            vec![("Authorization", "Token alice:s3cret".into())],
        ),
        ("/write?db=d", vec![("Authorization", "Token tok1".into())]),
        ("/write?db=d", vec![("Authorization", "Bearer tok1".into())]),
    ];
    for (target, headers) in &good {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = post(&relay, target, &h, b"cpu v=1").await;
        assert_eq!(r.status, 204, "{target} {headers:?}: {}", r.body);
    }
    assert_eq!(relay.acceptor.got().len(), good.len());

    let r = post(&relay, "/write?db=d", &[], b"cpu v=1").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body,
        r#"{"error":"unable to parse authentication credentials"}"#
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"InfluxDB\"")
    );
    let wrong: [(&str, Vec<(&str, String)>); 4] = [
        ("/write?db=d&u=alice&p=wrong", vec![]),
        ("/write?db=d", vec![("Authorization", basic("alice:wrong"))]),
        ("/write?db=d", vec![("Authorization", "Token tok2".into())]),
        ("/write?db=d&p=s3cret", vec![]),
    ];
    for (target, headers) in &wrong {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = post(&relay, target, &h, b"cpu v=1").await;
        assert_eq!(r.status, 401, "{target} {headers:?}");
        assert_eq!(r.body, r#"{"error":"authorization failed"}"#);
    }
    // Authentication comes before the parameters, as in 1.x.
    let r = post(&relay, "/write", &[], b"cpu v=1").await;
    assert_eq!(r.status, 401);
    assert_eq!(relay.acceptor.got().len(), good.len());
    // /ping and /health need no credentials.
    assert_eq!(get(&relay, "/ping").await.status, 204);
    assert_eq!(get(&relay, "/health").await.status, 200);
}

#[tokio::test]
async fn v2_auth_takes_token_and_bearer_and_refuses_the_rest() {
    let relay = start(&[("users", "alice:s3cret"), ("tokens", "tok1, tok2")]).await;
    for auth in [
        "Token tok1",
        "Bearer tok2",
        "Token alice:s3cret",
        "token tok1",
    ] {
        let r = post(
            &relay,
            "/api/v2/write?bucket=b",
            &[("Authorization", auth)],
            b"cpu v=1",
        )
        .await;
        assert_eq!(r.status, 204, "{auth}: {}", r.body);
    }
    let alice = basic("alice:s3cret");
    for auth in ["Token nope", "Bearer", alice.as_str(), "Digest x"] {
        let r = post(
            &relay,
            "/api/v2/write?bucket=b",
            &[("Authorization", auth)],
            b"cpu v=1",
        )
        .await;
        assert_eq!(r.status, 401, "{auth}");
        assert_eq!(
            r.body,
            r#"{"code":"unauthorized","message":"unauthorized access"}"#
        );
        assert_eq!(r.header("x-platform-error-code"), Some("unauthorized"));
    }
    let r = post(
        &relay,
        "/api/v2/write?bucket=b&u=alice&p=s3cret",
        &[],
        b"cpu v=1",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(relay.acceptor.got().len(), 4);
}

/// Called directly, to be a client that is not on loopback.
#[tokio::test]
async fn without_credentials_only_loopback_may_write() {
    let remote: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let req = |uri: &str| {
        http::Request::post(uri)
            .body(Full::new(Bytes::from_static(b"cpu v=1")))
            .unwrap()
    };
    let acceptor = TestAcceptor::new();
    let shared = Shared::new(config(&[]), acceptor.clone());
    let r = handle(&shared, req("/write?db=d"), local).await;
    assert_eq!(r.status(), 204);
    let r = handle(&shared, req("/write?db=d"), remote).await;
    assert_eq!(r.status(), 403);
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        "{\"error\":\"writes from 203.0.113.9 are not allowed: listener [relay] has no users \
         or tokens configured, so it only takes writes from loopback; configure users or \
         tokens, or set allow_remote_without_auth = true\"}"
    );
    let r = handle(&shared, req("/api/v2/write?bucket=b"), remote).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-platform-error-code"], "forbidden");
    assert_eq!(acceptor.got().len(), 1);

    let open = Shared::new(
        config(&[("allow_remote_without_auth", "true")]),
        acceptor.clone(),
    );
    assert_eq!(
        handle(&open, req("/write?db=d"), remote).await.status(),
        204
    );
    let locked = Shared::new(config(&[("tokens", "t")]), acceptor.clone());
    assert_eq!(
        handle(&locked, req("/write?db=d&p=t"), remote)
            .await
            .status(),
        204
    );
    assert_eq!(
        handle(&locked, req("/write?db=d"), local).await.status(),
        401
    );
}

// ---------------------------------------------------------------- bodies

#[tokio::test]
async fn gzip_body_sent_by_curl_is_inflated() {
    let relay = start(&[]).await;
    let lines = b"cpu,host=a usage=1 1700000000\n".repeat(1000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.gz");
    std::fs::write(&file, gzip(&lines)).unwrap();
    let url = format!("http://{}/write?db=telegraf&precision=s", relay.addr);
    let out = dir.path().join("out");
    let (file2, out2) = (file.clone(), out.clone());
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "-o"])
            .arg(&out2)
            .args(["-w", "%{http_code}", "--data-binary"])
            .arg(format!("@{}", file2.display()))
            .args([
                "-H",
                "Content-Encoding: gzip",
                "-H",
                "Content-Type: text/plain",
            ])
            .arg(&url)
            .output()
            .expect("curl")
    })
    .await
    .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&status.stdout), "204");
    assert_eq!(std::fs::read(&out).unwrap(), b"");
    let got = relay.acceptor.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].lines, &lines[..]);
    assert_eq!(got[0].precision, Precision::Seconds);
    assert_eq!(got[0].target, v1_target("telegraf", None));

    // x-gzip and v2 too.
    let r = post(
        &relay,
        "/api/v2/write?bucket=b",
        &[("Content-Encoding", "x-gzip")],
        &gzip(b"m v=1"),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(relay.acceptor.got()[1].lines, &b"m v=1"[..]);
}

/// Peak resident memory of this process, from /proc.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn gzip_bomb_is_stopped_at_the_limit() {
    // 1 GiB of zeros, compressed as it is made: ~1 MB on the wire.
    let bomb = tokio::task::spawn_blocking(|| {
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    })
    .await
    .unwrap();
    assert!(bomb.len() < 25_000_000, "{}", bomb.len());
    let relay = start(&[]).await;
    let started = Instant::now();
    let r = post(
        &relay,
        "/write?db=d",
        &[("Content-Encoding", "gzip")],
        &bomb,
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body, r#"{"error":"Request Entity Too Large"}"#);
    let r = post(
        &relay,
        "/api/v2/write?bucket=b",
        &[("Content-Encoding", "gzip")],
        &bomb,
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(
        r.body,
        r#"{"code":"request too large","message":"unable to read data: points batch is too large"}"#
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(relay.acceptor.got().is_empty());
    // Inflating it all would have taken 1 GiB.
    assert!(
        peak_rss_bytes() < 700 << 20,
        "peak RSS {} MiB",
        peak_rss_bytes() >> 20
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let relay = start(&[("max_body_size", "1000")]).await;
    assert_eq!(
        post(&relay, "/write?db=d", &[], &[b'x'; 1000]).await.status,
        204
    );
    // Declared too large: refused before reading it.
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"POST /write?db=d HTTP/1.1\r\nHost: r\r\nContent-Length: 1001\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let r = parse_response(&out);
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body, r#"{"error":"Request Entity Too Large"}"#);
    // Chunked, so only counting tells.
    let mut raw =
        b"POST /api/v2/write?bucket=b HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(b"190\r\n");
        raw.extend_from_slice(&[b'y'; 400]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = exchange(relay.addr, &raw).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        r.body,
        r#"{"code":"request too large","message":"unable to read data: points batch is too large"}"#
    );
    // Small when sent, too large inflated.
    let r = post(
        &relay,
        "/write?db=d",
        &[("Content-Encoding", "gzip")],
        &gzip(&[b'z'; 1001]),
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(relay.acceptor.got().len(), 1);
}

#[tokio::test]
async fn corrupt_gzip_is_400_and_unknown_encodings_415() {
    let relay = start(&[]).await;
    let r = post(
        &relay,
        "/write?db=d",
        &[("Content-Encoding", "gzip")],
        b"cpu v=1",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.starts_with(r#"{"error":"gzip: "#), "{}", r.body);
    let r = post(
        &relay,
        "/api/v2/write?bucket=b",
        &[("Content-Encoding", "gzip")],
        b"cpu v=1",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body
            .starts_with(r#"{"code":"invalid","message":"unable to read data: gzip: "#),
        "{}",
        r.body
    );
    let z = gzip(b"cpu v=1\n");
    let r = post(
        &relay,
        "/write?db=d",
        &[("Content-Encoding", "gzip")],
        &z[..z.len() - 3],
    )
    .await;
    assert_eq!(r.status, 400);
    let r = post(
        &relay,
        "/write?db=d",
        &[("Content-Encoding", "br")],
        b"cpu v=1",
    )
    .await;
    assert_eq!(r.status, 415);
    assert_eq!(
        r.body,
        r#"{"error":"unsupported Content-Encoding \"br\"; use gzip or identity"}"#
    );
    let r = post(
        &relay,
        "/api/v2/write?bucket=b",
        &[("Content-Encoding", "deflate")],
        b"x",
    )
    .await;
    assert_eq!(r.status, 415);
    assert_eq!(
        r.header("x-platform-error-code"),
        Some("unsupported media type")
    );
    let r = post(
        &relay,
        "/write?db=d",
        &[("Content-Encoding", "identity")],
        b"cpu v=1",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(relay.acceptor.got().len(), 1);
}

// ---------------------------------------------------------------- hostile clients

#[tokio::test]
async fn slowloris_headers_are_cut_at_the_header_timeout() {
    let relay = start(&[("header_timeout", "0.5")]).await;
    let s = TcpStream::connect(relay.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST /write?db=d HTTP/1.1\r\nHost: relay\r\nX-Pad: {}\r\n",
        "a".repeat(40)
    );
    let started = Instant::now();
    let mut closed_at = None;
    let mut buf = [0u8; 1024];
    for b in head.bytes() {
        if wr.write_all(&[b]).await.is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), rd.read(&mut buf)).await {
            Err(_) => continue,             // still open, nothing said
            Ok(Ok(n)) if n > 0 => continue, // an answer; the close follows
            Ok(_) => {
                closed_at = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_at = closed_at.expect("a client sending a byte every 100 ms was never cut");
    assert!(closed_at >= Duration::from_millis(400), "{closed_at:?}");
    assert!(closed_at < Duration::from_secs(2), "{closed_at:?}");
    assert!(relay.acceptor.got().is_empty());
    // The server is fine.
    assert_eq!(get(&relay, "/ping").await.status, 204);
}

#[tokio::test]
async fn slow_bodies_are_408_at_the_read_timeout() {
    let relay = start(&[("read_timeout", "0.5")]).await;
    let s = TcpStream::connect(relay.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(b"POST /write?db=d HTTP/1.1\r\nHost: r\r\nContent-Length: 100\r\n\r\ncpu")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if wr.write_all(b"x").await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
    let r = parse_response(&out);
    assert_eq!(r.status, 408);
    assert_eq!(r.body, r#"{"error":"timed out reading the request body"}"#);
    assert!(started.elapsed() < Duration::from_secs(2));
    writer.abort();
    assert!(relay.acceptor.got().is_empty());
}

#[tokio::test]
async fn connections_over_the_limit_are_answered_503_and_closed() {
    let relay = start(&[("max_connections", "2"), ("header_timeout", "5")]).await;
    let mut idle1 = TcpStream::connect(relay.addr).await.unwrap();
    let idle2 = TcpStream::connect(relay.addr).await.unwrap();
    idle1.write_all(b"GET /pi").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = get(&relay, "/ping").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("x-influxdb-version"), Some("1.8.10"));
    assert_eq!(
        r.body,
        r#"{"error":"too many open connections; retry later"}"#
    );
    // A slot frees when a connection closes.
    drop(idle1);
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = get(&relay, "/ping").await.status;
        if status == 204 {
            break;
        }
    }
    assert_eq!(status, 204);
    drop(idle2);
}

#[tokio::test]
async fn oversized_request_heads_are_431() {
    let relay = start(&[("max_header_size", "2048")]).await;
    let big = "b".repeat(4000);
    let r = post(&relay, "/write?db=d", &[("X-Big", &big)], b"cpu v=1").await;
    assert_eq!(r.status, 431);
    assert!(relay.acceptor.got().is_empty());
    let fits = "b".repeat(1000);
    assert_eq!(
        post(&relay, "/write?db=d", &[("X-Big", &fits)], b"cpu v=1")
            .await
            .status,
        204
    );
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let relay = start(&[]).await;
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let mut raw = Vec::new();
    for i in 0..3 {
        raw.extend_from_slice(
            format!("POST /write?db=d{i} HTTP/1.1\r\nHost: r\r\nContent-Length: 7\r\n\r\ncpu v=1")
                .as_bytes(),
        );
    }
    raw.extend_from_slice(&request("GET", "/ping", &[], b""));
    s.write_all(&raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 204 No Content").count(), 4, "{text}");
    let dbs: Vec<Target> = relay.acceptor.got().into_iter().map(|w| w.target).collect();
    assert_eq!(
        dbs,
        vec![
            v1_target("d0", None),
            v1_target("d1", None),
            v1_target("d2", None)
        ]
    );
}

#[tokio::test]
async fn garbage_never_breaks_the_server() {
    let relay = start(&[("tokens", "t")]).await;
    let garbage: [&[u8]; 10] = [
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /write?db=%ff%fe&precision=%zz&u=%&p=%% HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST /write?db=d HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /write?db=d HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST /write?db=d HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        b"POST /write?db=d&p=t HTTP/1.1\r\nContent-Encoding: \xff\xfe\r\nContent-Length: 1\r\n\r\nx",
        b"POST /write?db=d HTTP/1.1\r\nAuthorization: Basic \xc3\x28\r\nContent-Length: 1\r\n\r\nx",
        b"POST /api/v2/write?bucket=b HTTP/1.1\r\nAuthorization: Token \xff\r\nContent-Length: 1\r\n\r\nx",
        b"POST /write?db=d&p=t HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ];
    for g in garbage {
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        let _ = s.write_all(g).await;
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        if !out.is_empty() {
            let status = parse_response(&out).status;
            assert!(
                (400..500).contains(&status),
                "{:?}: {status}",
                String::from_utf8_lossy(g)
            );
        }
    }
    // Random bytes into the parameter and header parsers, directly.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"%+&=;:aZ9\xff\xc3 \t";
    for _ in 0..2000 {
        let len = (next() % 24) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let q = super::query::Query::parse(Some(&text));
        let _ = Precision::from_v1(q.get("precision").unwrap_or(""));
        let _ = super::auth::presented_v1(q.get("u"), q.get("p"), Some(&bytes));
        let _ = super::auth::presented_v2(Some(&bytes));
    }
    assert_eq!(get(&relay, "/ping").await.status, 204);
    assert!(relay.acceptor.got().is_empty());
}

// ---------------------------------------------------------------- shutdown

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_then_returns() {
    let mut relay = start(&[]).await;
    *relay.acceptor.delay.lock().unwrap() = Duration::from_millis(300);
    let addr = relay.addr;
    let in_flight = tokio::spawn(async move {
        exchange(addr, &request("POST", "/write?db=d", &[], b"cpu v=1")).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    relay.stop.take().unwrap().send(()).unwrap();
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 204);
    tokio::time::timeout(Duration::from_secs(5), &mut relay.task)
        .await
        .expect("serve did not return")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_gives_up_on_stuck_ones() {
    let mut relay = start(&[("shutdown_timeout", "0.3"), ("header_timeout", "30")]).await;
    *relay.acceptor.delay.lock().unwrap() = Duration::from_secs(60);
    let _idle = TcpStream::connect(relay.addr).await.unwrap();
    let mut stuck = TcpStream::connect(relay.addr).await.unwrap();
    stuck
        .write_all(&request("POST", "/write?db=d", &[], b"cpu v=1"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    relay.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut relay.task)
        .await
        .expect("serve did not return")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
