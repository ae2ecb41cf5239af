//! Self-test of the influxd modes of the harness (`InfluxdOptions`): https
//! with a test CA, authentication, a small max body size; and a record of
//! the exact error answers InfluxDB 1.x gives (the sink's policy depends
//! on them).
//!
//! Run: `cargo test --release --test harness_influxd_modes -- --nocapture`
//! (the observed bodies are printed).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::{http_agent, https_agent, now_ns, points, Influxd, InfluxdOptions, TestCa};

const CURL: &str = "/usr/bin/curl";

/// `curl -sS <args>` printing only the status code; returns (exit code,
/// status code text, stderr).
fn curl_status(args: &[&str]) -> (i32, String, String) {
    assert!(Path::new(CURL).exists(), "{CURL} not found");
    let out = Command::new(CURL)
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {CURL}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// POST `body` to `url` with `agent` (and `Authorization: auth`):
/// (status, body, X-Influxdb-Error header).
fn post(
    agent: &ureq::Agent,
    url: &str,
    auth: Option<&str>,
    body: &[u8],
) -> (u16, String, Option<String>) {
    let mut req = agent.post(url);
    if let Some(a) = auth {
        req = req.set("Authorization", a);
    }
    let resp = match req.send_bytes(body) {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {url}: {e}"),
    };
    let status = resp.status();
    let err = resp.header("X-Influxdb-Error").map(str::to_string);
    (status, resp.into_string().unwrap_or_default(), err)
}

#[test]
fn https_influxd_is_verified_with_its_ca_and_not_another() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("ca"));
    let other = TestCa::new(&tmp.path().join("other"));
    assert!(ca.ca_path().exists());
    let mut influx = Influxd::start_with(InfluxdOptions::default().with_https(&ca));
    assert!(influx.is_https());
    let url = influx.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let ca_pem = ca.ca_path();
    let ca_arg = ca_pem.to_str().unwrap();

    let (code, status, err) = curl_status(&["--cacert", ca_arg, &format!("{url}/ping")]);
    assert_eq!(
        (code, status.as_str()),
        (0, "204"),
        "curl with the CA: {err}"
    );
    let localhost = format!("https://localhost:{}/ping", influx.port());
    let (code, status, err) = curl_status(&["--cacert", ca_arg, &localhost]);
    assert_eq!(
        (code, status.as_str()),
        (0, "204"),
        "curl via localhost: {err}"
    );

    let other_pem = other.ca_path();
    let (code, _, err) = curl_status(&[
        "--cacert",
        other_pem.to_str().unwrap(),
        &format!("{url}/ping"),
    ]);
    assert_eq!(
        code, 60,
        "curl must refuse the certificate with another CA: {err}"
    );
    eprintln!("curl with an unrelated CA: exit {code}: {}", err.trim());

    // Plain http to the https port is not served.
    let (code, status, err) = curl_status(&[&format!("http://127.0.0.1:{}/ping", influx.port())]);
    eprintln!(
        "plain http to the https port: exit {code}, status {status:?}, {}",
        err.trim()
    );
    assert_ne!(status, "204");

    // rustls (ureq) too: trusted with the CA, refused with the other one.
    let good = https_agent(&ca_pem, Duration::from_secs(10));
    assert_eq!(
        good.get(&format!("{url}/ping")).call().unwrap().status(),
        204
    );
    let bad = https_agent(&other_pem, Duration::from_secs(10));
    let e = bad
        .get(&format!("{url}/ping"))
        .call()
        .expect_err("rustls must refuse an unknown issuer");
    eprintln!("rustls with an unrelated CA: {e}");

    // The harness's own requests work over https, also after a restart.
    influx.create_database("tls");
    influx.write_lines("tls", &points("tls", 3, now_ns()));
    assert_eq!(influx.count("tls", "tls", "seq"), 3);
    influx.stop();
    influx.start_again();
    assert_eq!(influx.count("tls", "tls", "seq"), 3);
    assert_eq!(influx.ca_path().map(|p| p.exists()), Some(true));
}

#[test]
fn auth_influxd_needs_the_admin_credentials() {
    let mut influx = Influxd::start_with(InfluxdOptions::default().with_auth("admin", "s3cr'et"));
    assert_eq!(influx.credentials(), Some(("admin", "s3cr'et")));
    influx.create_database("authdb");
    let agent = http_agent(Duration::from_secs(10));
    let write_url = format!("{}/write?db=authdb", influx.url());
    let body = points("auth", 2, now_ns());

    let (status, text, _) = post(&agent, &write_url, None, body.as_bytes());
    eprintln!("401 without credentials: {text:?}");
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains("unable to parse authentication credentials"),
        "{text}"
    );

    let wrong = format!("Basic {}", "YWRtaW46bm9wZQ=="); // admin:nope
    let (status, text, _) = post(&agent, &write_url, Some(&wrong), body.as_bytes());
    eprintln!("401 with a wrong password: {text:?}");
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("authorization failed"), "{text}");

    let auth = influx.auth_header().expect("auth header");
    let (status, text, _) = post(&agent, &write_url, Some(&auth), body.as_bytes());
    assert_eq!(status, 204, "{text}");
    assert_eq!(influx.count("authdb", "auth", "seq"), 2);

    // The credentials survive a restart (the user is not created twice).
    influx.stop();
    influx.start_again();
    assert_eq!(influx.count("authdb", "auth", "seq"), 2);
    let (status, _, _) = post(&agent, &write_url, None, body.as_bytes());
    assert_eq!(status, 401);
}

#[test]
fn max_body_size_gives_413() {
    let influx = Influxd::start_with(InfluxdOptions::default().with_max_body_size(2000));
    influx.create_database("big");
    let agent = http_agent(Duration::from_secs(10));
    let url = format!("{}/write?db=big", influx.url());

    let small = points("big", 5, now_ns());
    assert!(small.len() < 2000);
    let (status, text, _) = post(&agent, &url, None, small.as_bytes());
    assert_eq!(status, 204, "{text}");

    let big = points("big", 200, now_ns() + 1_000_000_000);
    assert!(big.len() > 2000);
    let (status, text, err) = post(&agent, &url, None, big.as_bytes());
    eprintln!("413 body: {text:?}, X-Influxdb-Error: {err:?}");
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("Request Entity Too Large"), "{text}");
    assert_eq!(
        influx.count("big", "big", "seq"),
        5,
        "nothing of the big write"
    );
}

/// The exact answers influxd 1.x gives to failing writes (printed; the
/// asserts pin the parts the sink's policy relies on).
#[test]
fn influxd_error_answers() {
    let influx = Influxd::start();
    let agent = http_agent(Duration::from_secs(10));
    let write = |db: &str, body: &str| {
        let r = post(
            &agent,
            &format!("{}/write?db={db}", influx.url()),
            None,
            body.as_bytes(),
        );
        eprintln!("write to {db:?} of {body:?}:\n  -> {} {:?}", r.0, r.1);
        r
    };

    let (status, text, err) = write("nodb", "m v=1");
    assert_eq!(status, 404);
    assert_eq!(text, "{\"error\":\"database not found: \\\"nodb\\\"\"}\n");
    assert_eq!(err.as_deref(), Some("database not found: \"nodb\""));

    influx.create_database("e");
    // Type conflict across two requests.
    assert_eq!(write("e", "m v=1").0, 204);
    let (status, text, _) = write("e", "m v=\"s\"");
    assert_eq!(status, 400);
    assert!(
        text.contains("partial write: field type conflict: input field \\\"v\\\" on measurement \\\"m\\\" is type string, already exists as type float dropped=1"),
        "{text}"
    );
    // ... and within one request: the first point is stored.
    let (status, text, _) = write("e", "m2 v=1\nm2 v=\"s\"");
    assert_eq!(status, 400);
    assert!(text.contains("dropped=1"), "{text}");
    assert_eq!(influx.count("e", "m2", "v"), 1);
    // A batch mixing good lines and two conflicting ones: good ones stored.
    let (status, text, _) = write(
        "e",
        "m3,k=1 v=1\nm,k=2 v=\"s\"\nm3,k=3 v=2\nm,k=4 v=\"t\"\nm3,k=5 v=3",
    );
    assert_eq!(status, 400);
    assert!(
        text.contains("field type conflict") && text.contains("dropped=2"),
        "{text}"
    );
    assert_eq!(influx.count("e", "m3", "v"), 3);
    // A syntax error among good lines: good ones stored, dropped=0.
    let (status, text, _) = write(
        "e",
        "m4,k=1 v=1\nm4,k=2 v=\nm4,k=3 v=3\nbad line here\nm4,k=5 v=5",
    );
    assert_eq!(status, 400);
    assert!(
        text.contains("partial write: unable to parse 'm4,k=2 v=': missing field value")
            && text.contains("unable to parse 'bad line here': invalid field format dropped=0"),
        "{text}"
    );
    assert_eq!(influx.count("e", "m4", "v"), 3);
    // Field types are per shard: the same measurement in another shard
    // group (1970) takes another type without conflict.
    assert_eq!(write("e", "m v=\"old\" 1").0, 204);
}
