//! The endpoints, as InfluxDB answers them: `/ping`, `/health`, `/write`
//! (1.x) and `/api/v2/write` (2.x). A write is authenticated, checked
//! (database/bucket, precision, encoding), its body read within the
//! limits and inflated, and handed to the [`Acceptor`]; its answer becomes
//! InfluxDB's status code and body.
//!
//! Generic over the request body so tests can call [`handle`] directly,
//! with any peer address.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH};
use http::{Method, Request, StatusCode};
use http_body::Body;

use super::acceptor::{Accepted, Acceptor, Precision, Rejected, Target, Write};
use super::auth::{self, Credentials, Verdict};
use super::body::{self, BodyError};
use super::config::ListenerConfig;
use super::query::Query;
use super::reply::{self, Api, Problem, Reply};

/// At most this many refused lines are named in a `400`.
const MAX_LINES_SHOWN: usize = 20;
/// A refused line is quoted up to this many bytes.
const MAX_LINE_SHOWN: usize = 1024;

/// What every request needs: the config, the credentials and the acceptor.
pub struct Shared<A> {
    pub cfg: ListenerConfig,
    pub credentials: Credentials,
    pub acceptor: Arc<A>,
}

impl<A: Acceptor> Shared<A> {
    pub fn new(cfg: ListenerConfig, acceptor: Arc<A>) -> Shared<A> {
        Shared {
            credentials: Credentials::new(&cfg),
            cfg,
            acceptor,
        }
    }
}

/// Answer one request from `peer`.
pub async fn handle<A, B>(shared: &Shared<A>, req: Request<B>, peer: SocketAddr) -> Reply
where
    A: Acceptor,
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let method = req.method().clone();
    let mut reply = match req.uri().path() {
        "/ping" => match method {
            Method::GET | Method::HEAD => ping(shared, &req),
            _ => not_allowed(Api::V1, "GET, HEAD"),
        },
        "/health" => match method {
            Method::GET | Method::HEAD => health(shared),
            _ => not_allowed(Api::V2, "GET, HEAD"),
        },
        "/write" => match method {
            Method::POST => write(shared, req, peer, Api::V1).await,
            // CORS preflight, as 1.x answers it.
            Method::OPTIONS => reply::no_content(),
            _ => not_allowed(Api::V1, "POST, OPTIONS"),
        },
        "/api/v2/write" => match method {
            Method::POST => write(shared, req, peer, Api::V2).await,
            _ => not_allowed(Api::V2, "POST"),
        },
        p if p.starts_with("/api/v2/") => {
            Problem::new(StatusCode::NOT_FOUND, "path not found").render(Api::V2)
        }
        _ => reply::plain(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n",
        ),
    };
    reply::stamp(&mut reply, &shared.cfg.version);
    reply
}

fn not_allowed(api: Api, allow: &'static str) -> Reply {
    let message = match api {
        Api::V1 => "Method Not Allowed".to_string(),
        Api::V2 => format!("allow: {allow}"),
    };
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, message)
        .allow(allow)
        .render(api)
}

/// `204`; `?verbose=true`: `200 {"version":"..."}` (1.x).
fn ping<A, B>(shared: &Shared<A>, req: &Request<B>) -> Reply {
    let query = Query::parse(req.uri().query());
    match query.get("verbose") {
        Some(v) if !v.is_empty() && v != "0" && v != "false" => {
            let body = serde_json::json!({ "version": shared.cfg.version }).to_string();
            reply::plain(StatusCode::OK, "application/json", body)
        }
        _ => reply::no_content(),
    }
}

/// 2.x's `/health`.
fn health<A>(shared: &Shared<A>) -> Reply {
    let version = serde_json::Value::from(shared.cfg.version.as_str());
    let body = format!(
        "{{\"name\":\"influxdb\",\"message\":\"ready for queries and writes\",\
         \"status\":\"pass\",\"checks\":[],\"version\":{version}}}\n"
    );
    reply::plain(StatusCode::OK, "application/json; charset=utf-8", body)
}

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
}

async fn write<A, B>(shared: &Shared<A>, req: Request<B>, peer: SocketAddr, api: Api) -> Reply
where
    A: Acceptor,
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    match prepare(shared, req, peer, api).await {
        Ok(write) => answer(shared, write, api).await,
        Err(problem) => problem.render(api),
    }
}

/// Everything before the acceptor: the checks, in InfluxDB's order
/// (authentication, then parameters, then the body).
async fn prepare<A, B>(
    shared: &Shared<A>,
    req: Request<B>,
    peer: SocketAddr,
    api: Api,
) -> Result<Write, Problem>
where
    B: Body<Data = Bytes>,
    B::Error: Display,
{
    let cfg = &shared.cfg;
    let query = Query::parse(req.uri().query());
    let authorization = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    let presented = match api {
        Api::V1 => auth::presented_v1(query.get("u"), query.get("p"), authorization),
        Api::V2 => auth::presented_v2(authorization),
    };
    // Until the body is read, every refusal closes the connection: the
    // unread body must not be taken for the next request.
    let unauthorized = |message: &str| Problem::new(StatusCode::UNAUTHORIZED, message).close();
    match (shared.credentials.check(&presented, peer.ip()), api) {
        (Verdict::Allowed, _) => {}
        (Verdict::Missing, Api::V1) => {
            return Err(unauthorized("unable to parse authentication credentials"))
        }
        (Verdict::Denied, Api::V1) => return Err(unauthorized("authorization failed")),
        (Verdict::Missing | Verdict::Denied, Api::V2) => {
            return Err(unauthorized("unauthorized access"))
        }
        (Verdict::RemoteForbidden, _) => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "writes from {} are not allowed: listener [{}] has no users or tokens \
                     configured, so it only takes writes from loopback; configure users or \
                     tokens, or set allow_remote_without_auth = true",
                    peer.ip(),
                    cfg.name
                ),
            )
            .close())
        }
    }

    let precision_param = query.get("precision").unwrap_or("");
    let (target, precision) = match api {
        Api::V1 => {
            let db = query.non_empty("db").ok_or_else(|| {
                Problem::new(StatusCode::BAD_REQUEST, "database is required").close()
            })?;
            let precision = Precision::from_v1(precision_param).ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "invalid precision {precision_param:?}; valid precision units are \
                         n, ns, u, us, ms, s, m and h"
                    ),
                )
                .close()
            })?;
            let rp = query.non_empty("rp").map(str::to_string);
            (
                Target::V1 {
                    db: db.to_string(),
                    rp,
                },
                precision,
            )
        }
        Api::V2 => {
            let precision = Precision::from_v2(precision_param).ok_or_else(|| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid precision; valid precision units are ns, us, ms, and s",
                )
                .close()
            })?;
            let bucket = query
                .non_empty("bucket")
                .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "bucket not found").close())?;
            let org = query
                .non_empty("org")
                .or_else(|| query.non_empty("orgID"))
                .map(str::to_string);
            (
                Target::V2 {
                    org,
                    bucket: bucket.to_string(),
                },
                precision,
            )
        }
    };

    let encoding = match req.headers().get(CONTENT_ENCODING) {
        None => Encoding::Identity,
        Some(v) => {
            let text = String::from_utf8_lossy(v.as_bytes())
                .trim()
                .to_ascii_lowercase();
            match text.as_str() {
                "" | "identity" => Encoding::Identity,
                "gzip" | "x-gzip" => Encoding::Gzip,
                _ => {
                    return Err(Problem::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        format!("unsupported Content-Encoding {text:?}; use gzip or identity"),
                    )
                    .close())
                }
            }
        }
    };

    let limit = cfg.max_body_size;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(api));
    }
    let raw = body::read_limited(req.into_body(), limit, cfg.read_timeout)
        .await
        .map_err(|e| body_problem(e, api))?;
    let lines = match encoding {
        Encoding::Identity => raw,
        Encoding::Gzip => tokio::task::spawn_blocking(move || body::gunzip_limited(&raw, limit))
            .await
            .unwrap_or_else(|e| Err(BodyError::Broken(e.to_string())))
            .map_err(|e| body_problem(e, api))?,
    };
    Ok(Write {
        target,
        precision,
        lines,
        peer,
    })
}

fn too_large(api: Api) -> Problem {
    let message = match api {
        Api::V1 => "Request Entity Too Large",
        Api::V2 => "unable to read data: points batch is too large",
    };
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, message).close()
}

fn body_problem(e: BodyError, api: Api) -> Problem {
    match e {
        BodyError::TooLarge => too_large(api),
        BodyError::Timeout => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "timed out reading the request body",
        )
        .close(),
        BodyError::Broken(why) => {
            let message = match api {
                Api::V1 => why,
                Api::V2 => format!("unable to read data: {why}"),
            };
            Problem::new(StatusCode::BAD_REQUEST, message).close()
        }
    }
}

/// Hand the write on and turn the acceptor's answer into InfluxDB's.
async fn answer<A: Acceptor>(shared: &Shared<A>, write: Write, api: Api) -> Reply {
    if write.lines.is_empty() {
        // 1.x writes nothing and says 204; 2.x refuses.
        return match api {
            Api::V1 => reply::no_content(),
            Api::V2 => Problem::new(StatusCode::BAD_REQUEST, "writing requires points").render(api),
        };
    }
    let lines = write.lines.clone();
    let target = write.target.clone();
    match shared.acceptor.accept(write).await {
        Accepted::Durable { rejected, .. } if rejected.is_empty() => reply::no_content(),
        Accepted::Durable { accepted, rejected } => {
            let why = describe_rejected(&lines, &rejected);
            let message = if accepted == 0 {
                why
            } else {
                format!("partial write: {why} dropped={}", rejected.len())
            };
            Problem::new(StatusCode::BAD_REQUEST, message).render(api)
        }
        Accepted::Unroutable => {
            let message = match &target {
                Target::V1 { db, .. } => format!("database not found: {db:?}"),
                Target::V2 { bucket, .. } => format!("bucket {bucket:?} not found"),
            };
            Problem::new(StatusCode::NOT_FOUND, message).render(api)
        }
        Accepted::Busy { retry_after_s, why } => Problem::new(StatusCode::SERVICE_UNAVAILABLE, why)
            .retry_after(retry_after_s)
            .render(api),
        Accepted::TooLarge(why) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, why).render(api),
        Accepted::TooMany { retry_after_s } => Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests; retry later",
        )
        .retry_after(retry_after_s)
        .render(api),
        Accepted::Failed(why) => {
            let message = match api {
                Api::V1 => why,
                Api::V2 => format!("unexpected error writing points to database: {why}"),
            };
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, message).render(api)
        }
    }
}

/// `unable to parse '<line>': <reason>` for each refused line (1.x's
/// words), one per line, the first [`MAX_LINES_SHOWN`] of them.
pub fn describe_rejected(lines: &[u8], rejected: &[Rejected]) -> String {
    let shown = &rejected[..rejected.len().min(MAX_LINES_SHOWN)];
    let mut wanted: Vec<usize> = shown.iter().map(|r| r.line).collect();
    wanted.sort_unstable();
    wanted.dedup();
    // One pass over the body for the lines wanted.
    let mut found: Vec<(usize, &[u8])> = Vec::with_capacity(wanted.len());
    let mut want = wanted.iter().peekable();
    for (index, line) in lines.split(|b| *b == b'\n').enumerate() {
        let Some(&&w) = want.peek() else { break };
        if index == w {
            found.push((index, line.strip_suffix(b"\r").unwrap_or(line)));
            want.next();
        }
    }
    let mut out: Vec<String> = shown
        .iter()
        .map(|r| match found.binary_search_by_key(&r.line, |(i, _)| *i) {
            Ok(k) => format!("unable to parse '{}': {}", quote(found[k].1), r.reason),
            Err(_) => format!("unable to parse line {}: {}", r.line + 1, r.reason),
        })
        .collect();
    if rejected.len() > shown.len() {
        out.push(format!(
            "and {} more lines refused",
            rejected.len() - shown.len()
        ));
    }
    out.join("\n")
}

/// A line as text, cut to [`MAX_LINE_SHOWN`] bytes.
fn quote(line: &[u8]) -> String {
    let cut = &line[..line.len().min(MAX_LINE_SHOWN)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < line.len() {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rej(line: usize, reason: &str) -> Rejected {
        Rejected {
            line,
            reason: reason.into(),
        }
    }

    #[test]
    fn rejected_lines_are_quoted_in_the_order_given() {
        let body = b"ok v=1\r\nbad\n\nworse x=\nok v=2";
        assert_eq!(
            describe_rejected(
                body,
                &[rej(3, "missing field value"), rej(1, "missing fields")]
            ),
            "unable to parse 'worse x=': missing field value\n\
             unable to parse 'bad': missing fields"
        );
        assert_eq!(
            describe_rejected(body, &[rej(0, "why")]),
            "unable to parse 'ok v=1': why"
        );
        // An index past the end is named, not a panic.
        assert_eq!(
            describe_rejected(body, &[rej(99, "x")]),
            "unable to parse line 100: x"
        );
    }

    #[test]
    fn long_lines_and_long_lists_are_cut() {
        let long = vec![b'a'; 5000];
        let text = describe_rejected(&long, &[rej(0, "r")]);
        assert_eq!(
            text.len(),
            "unable to parse '".len() + 1024 + "...': r".len()
        );
        let body = b"x\n".repeat(50);
        let many: Vec<Rejected> = (0..50).map(|i| rej(i, "r")).collect();
        let text = describe_rejected(&body, &many);
        assert_eq!(text.lines().count(), MAX_LINES_SHOWN + 1);
        assert!(text.ends_with("and 30 more lines refused"));
        let invalid = describe_rejected(b"\xff\xfe v=1", &[rej(0, "r")]);
        assert_eq!(invalid, "unable to parse '\u{fffd}\u{fffd} v=1': r");
    }
}
