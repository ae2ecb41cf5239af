//! The HTTP requests the policy asks for and the answers it gets back,
//! independent of any HTTP library.

use crate::config::{Api, Settings};
use crate::point::Point;

pub mod deflate;
pub mod gzip;

/// What a request is for; the policy reads its answer accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `/ping`: is the server there.
    Ping,
    /// `CREATE DATABASE` after a (re)connect, as the gateway did.
    CreateDatabase,
    /// `/write` of a batch.
    Write,
}

/// A request for the driver to send. The driver sends at most one at a time
/// and reports its fate with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    pub purpose: Purpose,
    /// Index of the server in `Settings::endpoints`.
    pub server: usize,
    pub method: &'static str,
    /// Path and query, with the server's path prefix, e.g.
    /// `/write?db=solar&precision=ns`.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Points in the body (0 for ping and create).
    pub points: u32,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered.
    Answer {
        status: u16,
        retry_after: Option<String>,
        body: String,
    },
    /// No answer: refused, reset, DNS, TLS... The reason is for the log.
    Failed { reason: String },
}

impl Outcome {
    /// An answer without `Retry-After` (tests, simulations).
    pub fn answer(status: u16, body: &str) -> Self {
        Outcome::Answer {
            status,
            retry_after: None,
            body: body.to_string(),
        }
    }
}

impl Request {
    pub(crate) fn ping(id: u64, s: &Settings, server: usize) -> Self {
        Request {
            id,
            purpose: Purpose::Ping,
            server,
            method: "GET",
            path: format!("{}/ping", s.endpoints[server].base_path),
            headers: auth(s),
            body: Vec::new(),
            points: 0,
        }
    }

    pub(crate) fn create_database(id: u64, s: &Settings, server: usize) -> Self {
        let q = format!(
            "CREATE DATABASE \"{}\"",
            s.database.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let mut headers = auth(s);
        headers.push((
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
        Request {
            id,
            purpose: Purpose::CreateDatabase,
            server,
            method: "POST",
            path: format!("{}/query", s.endpoints[server].base_path),
            headers,
            body: format!("q={}", percent_encode(&q)).into_bytes(),
            points: 0,
        }
    }

    /// A write of `points` in the API, precision and encoding of `s`.
    pub(crate) fn write(id: u64, s: &Settings, server: usize, points: &[Point]) -> Self {
        let mut headers = auth(s);
        headers.push(("content-type".into(), "text/plain; charset=utf-8".into()));
        let mut body = body(points, s.precision.nanos());
        if s.gzip {
            body = gzip::compress(&body);
            headers.push(("content-encoding".into(), "gzip".into()));
        }
        Request {
            id,
            purpose: Purpose::Write,
            server,
            method: "POST",
            path: format!("{}{}", s.endpoints[server].base_path, write_path(s)),
            headers,
            body,
            points: points.len() as u32,
        }
    }
}

/// The write path and query of each API.
fn write_path(s: &Settings) -> String {
    let precision = s.precision.query_value(s.api);
    match s.api {
        Api::V1 => {
            let mut p = format!("/write?db={}", percent_encode(&s.database));
            if !s.retention_policy.is_empty() {
                p.push_str(&format!("&rp={}", percent_encode(&s.retention_policy)));
            }
            p + "&precision=" + precision
        }
        Api::V2 => {
            let bucket = if s.bucket.is_empty() {
                &s.database
            } else {
                &s.bucket
            };
            let mut p = String::from("/api/v2/write?");
            if !s.org.is_empty() {
                p.push_str(&format!("org={}&", percent_encode(&s.org)));
            }
            format!("{p}bucket={}&precision={precision}", percent_encode(bucket))
        }
        Api::V3 => format!(
            "/api/v3/write_lp?db={}&precision={precision}&accept_partial=true",
            percent_encode(&s.database)
        ),
    }
}

/// Line protocol for some of a batch's points (dead letters).
pub fn body_of(points: &[&Point], unit_ns: i64) -> Vec<u8> {
    let mut out = Vec::new();
    for p in points {
        p.write_line_protocol_in(&mut out, unit_ns);
    }
    out
}

/// Line protocol for `points`, timestamps in units of `unit_ns`.
pub fn body(points: &[Point], unit_ns: i64) -> Vec<u8> {
    // ` timestamp\n` is at most 21 bytes, but each number is written into
    // NUM_BUF reserved ones first: room for that, or the last point
    // reallocates.
    let lines: usize = points.iter().map(|p| p.line.len() + 21).sum();
    let mut out = Vec::with_capacity(lines + crate::codec::NUM_BUF);
    for p in points {
        p.write_line_protocol_in(&mut out, unit_ns);
    }
    out
}

fn auth(s: &Settings) -> Vec<(String, String)> {
    if !s.token.is_empty() {
        let scheme = if s.api == Api::V3 { "Bearer" } else { "Token" };
        return vec![("authorization".into(), format!("{scheme} {}", s.token))];
    }
    if s.username.is_empty() {
        return Vec::new();
    }
    let cred = format!("{}:{}", s.username, s.password);
    vec![(
        "authorization".into(),
        format!("Basic {}", base64(cred.as_bytes())),
    )]
}

/// Percent-encode everything but unreserved characters (RFC 3986).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a write's answer means for its points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// The server stored some points and refused the others for good.
    /// `lines`: the refused lines (0-based) when the server named them
    /// (v3); `dropped`: how many it refused, when it said.
    Partial {
        lines: Option<Vec<usize>>,
        dropped: Option<u64>,
        reason: String,
    },
    /// The batch was refused as a whole for its content (a syntax or type
    /// error): find the bad lines by bisection.
    BadData {
        reason: String,
    },
    /// Larger than the server takes: send it in halves.
    TooLarge {
        reason: String,
    },
    /// Credentials refused (401/403).
    Auth {
        status: u16,
        reason: String,
    },
    /// v1: the database does not exist.
    NoDatabase {
        reason: String,
    },
    /// Not now: 429/503 (with the server's `Retry-After` in ns, capped),
    /// other 5xx and anything unexpected.
    Retry {
        after: Option<u64>,
        reason: String,
    },
}

/// Read a write's answer. `wall` turns an HTTP-date `Retry-After` into a
/// delay; `cap_ns` bounds it (`max_reconnect_delay`).
pub fn classify(
    api: Api,
    status: u16,
    retry_after: Option<&str>,
    body: &str,
    wall: i64,
    cap_ns: u64,
) -> Verdict {
    let reason = || format!("HTTP {status}: {}", server_reason(body));
    match status {
        200..=299 => Verdict::Delivered,
        400 if api == Api::V3 && body.contains("\"line_number\"") => Verdict::Partial {
            lines: Some(v3_failed_lines(body)),
            dropped: None,
            reason: reason(),
        },
        400 if body.contains("partial write") => Verdict::Partial {
            lines: None,
            dropped: partial_write_dropped(body),
            reason: reason(),
        },
        // Not about the data: a request the server cannot route.
        400 if body.contains("database is required") || body.contains("bucket") => Verdict::Retry {
            after: None,
            reason: reason(),
        },
        400 => Verdict::BadData { reason: reason() },
        422 => Verdict::Partial {
            lines: None,
            dropped: partial_write_dropped(body),
            reason: reason(),
        },
        401 | 403 => Verdict::Auth {
            status,
            reason: reason(),
        },
        404 if api == Api::V1 && body.contains("database not found") => {
            Verdict::NoDatabase { reason: reason() }
        }
        413 => Verdict::TooLarge { reason: reason() },
        429 | 503 => Verdict::Retry {
            after: retry_after.and_then(|v| retry_after_ns(v, wall).map(|d| d.min(cap_ns))),
            reason: reason(),
        },
        404 => Verdict::Retry {
            after: None,
            reason: format!(
                "{} (is `api = {}` right for this server?)",
                reason(),
                api.name()
            ),
        },
        _ => Verdict::Retry {
            after: None,
            reason: reason(),
        },
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, in ns from `wall`.
pub fn retry_after_ns(v: &str, wall: i64) -> Option<u64> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs.saturating_mul(1_000_000_000));
    }
    let at = crate::timefmt::parse_http_date(v)?;
    Some(at.saturating_sub(wall).max(0) as u64)
}

/// The 1-based `line_number`s of an InfluxDB 3 partial-write answer, as
/// 0-based indices.
fn v3_failed_lines(body: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("\"line_number\"") {
        rest = rest[i + 13..].trim_start_matches([':', ' ']);
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Some(n) = digits.parse::<usize>().ok().filter(|n| *n > 0) {
            out.push(n - 1);
        }
    }
    crate::sort::sort(&mut out);
    out.dedup();
    out
}

/// The number in InfluxDB 1.x's `partial write: ... dropped=N` answer.
pub fn partial_write_dropped(body: &str) -> Option<u64> {
    let at = body.find("dropped=")? + "dropped=".len();
    let digits: String = body[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The server's message out of a JSON error body (`{"error":"..."}`), or the
/// body itself, shortened for a log line.
pub fn server_reason(body: &str) -> String {
    let text = body
        .find("\"error\":\"")
        .map(|i| &body[i + 9..])
        .and_then(|rest| rest.find('"').map(|j| &rest[..j]))
        .unwrap_or(body)
        .trim();
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn write_request_targets_the_database() {
        let mut s = Settings::defaults("o");
        s.database = "my db".into();
        s.username = "u".into();
        s.password = "p".into();
        s.gzip = false;
        let p = [Point {
            line: "m f=1".into(),
            series_len: 1,
            timestamp: 1,
        }];
        let r = Request::write(1, &s, 0, &p);
        assert_eq!(r.body, b"m f=1 1\n");
        assert_eq!(r.path, "/write?db=my%20db&precision=ns");
        assert!(r
            .headers
            .contains(&("authorization".into(), "Basic dTpw".into())));
        let c = Request::create_database(2, &s, 0);
        assert_eq!(
            String::from_utf8(c.body).unwrap(),
            "q=CREATE%20DATABASE%20%22my%20db%22"
        );
    }

    fn classify_v(api: Api, status: u16, retry: Option<&str>, body: &str) -> Verdict {
        classify(
            api,
            status,
            retry,
            body,
            784_111_777_000_000_000,
            300_000_000_000,
        )
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify_v(Api::V1, 204, None, ""), Verdict::Delivered);
        assert!(matches!(
            classify_v(
                Api::V1,
                400,
                None,
                r#"{"error":"partial write: field type conflict dropped=2"}"#
            ),
            Verdict::Partial {
                dropped: Some(2),
                lines: None,
                ..
            }
        ));
        assert!(matches!(
            classify_v(
                Api::V1,
                400,
                None,
                r#"{"error":"unable to parse 'm f=': missing field value"}"#
            ),
            Verdict::BadData { .. }
        ));
        assert!(matches!(
            classify_v(Api::V1, 400, None, r#"{"error":"database is required"}"#),
            Verdict::Retry { after: None, .. }
        ));
        assert!(matches!(
            classify_v(
                Api::V2,
                422,
                None,
                r#"{"code":"unprocessable entity","message":"partial write: points beyond retention policy dropped=1"}"#
            ),
            Verdict::Partial {
                dropped: Some(1),
                ..
            }
        ));
        let v3 = r#"{"error":"partial write of line protocol occurred","data":[{"original_line":"m f=x","line_number":3,"error_message":"bad"},{"original_line":"m g=y","line_number": 1,"error_message":"bad"}]}"#;
        assert!(matches!(
            classify_v(Api::V3, 400, None, v3),
            Verdict::Partial { lines: Some(l), .. } if l == vec![0, 2]
        ));
        assert!(matches!(
            classify_v(Api::V2, 401, None, "{}"),
            Verdict::Auth { status: 401, .. }
        ));
        assert!(matches!(
            classify_v(Api::V1, 403, None, "{}"),
            Verdict::Auth { status: 403, .. }
        ));
        assert!(matches!(
            classify_v(
                Api::V1,
                404,
                None,
                r#"{"error":"database not found: \"x\""}"#
            ),
            Verdict::NoDatabase { .. }
        ));
        match classify_v(Api::V2, 404, None, r#"{"message":"not found"}"#) {
            Verdict::Retry { reason, .. } => assert!(reason.contains("api = v2"), "{reason}"),
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            classify_v(Api::V1, 413, None, ""),
            Verdict::TooLarge { .. }
        ));
        assert_eq!(
            classify_v(Api::V1, 429, Some("7"), ""),
            Verdict::Retry {
                after: Some(7_000_000_000),
                reason: "HTTP 429: ".into()
            }
        );
        // An HTTP date 30 s after `wall`; and a cap of 300 s.
        assert!(matches!(
            classify_v(Api::V1, 503, Some("Sun, 06 Nov 1994 08:50:07 GMT"), ""),
            Verdict::Retry {
                after: Some(30_000_000_000),
                ..
            }
        ));
        assert!(matches!(
            classify_v(Api::V1, 503, Some("86400"), ""),
            Verdict::Retry {
                after: Some(300_000_000_000),
                ..
            }
        ));
        assert!(matches!(
            classify_v(Api::V1, 503, Some("soon"), ""),
            Verdict::Retry { after: None, .. }
        ));
        assert!(matches!(
            classify_v(Api::V1, 500, None, ""),
            Verdict::Retry { after: None, .. }
        ));
    }

    #[test]
    fn write_paths_and_auth_per_api() {
        let mut s = Settings::defaults("o");
        s.endpoints = vec![crate::endpoint::Endpoint::parse("http://h:1/pre").unwrap()];
        s.retention_policy = "week".into();
        s.precision = crate::endpoint::Precision::S;
        s.gzip = false;
        let p = [Point {
            line: "m f=1".into(),
            series_len: 1,
            timestamp: 1_700_000_000_999_999_999,
        }];
        let r = Request::write(1, &s, 0, &p);
        assert_eq!(r.path, "/pre/write?db=solar&rp=week&precision=s");
        assert_eq!(r.body, b"m f=1 1700000000\n");
        s.api = Api::V2;
        s.org = "acme".into();
        s.token = "tok".into();
        let r = Request::write(1, &s, 0, &p);
        assert_eq!(
            r.path,
            "/pre/api/v2/write?org=acme&bucket=solar&precision=s"
        );
        assert!(r
            .headers
            .contains(&("authorization".into(), "Token tok".into())));
        s.api = Api::V3;
        s.gzip = true;
        let r = Request::write(1, &s, 0, &p);
        assert_eq!(
            r.path,
            "/pre/api/v3/write_lp?db=solar&precision=second&accept_partial=true"
        );
        assert!(r
            .headers
            .contains(&("authorization".into(), "Bearer tok".into())));
        assert!(r
            .headers
            .contains(&("content-encoding".into(), "gzip".into())));
        assert_eq!(&r.body[..2], &[0x1f, 0x8b]);
        assert_eq!(Request::ping(2, &s, 0).path, "/pre/ping");
    }

    #[test]
    fn partial_write_answers_are_read() {
        let body = r#"{"error":"partial write: field type conflict: input field \"v\" on measurement \"m\" is type string, already exists as type float dropped=2"}"#;
        assert_eq!(partial_write_dropped(body), Some(2));
        assert_eq!(partial_write_dropped("{}"), None);
        assert!(server_reason(body).starts_with("partial write: field type conflict"));
    }
}
