//! InfluxDB's answers: status codes, headers and JSON bodies in the 1.x
//! dialect (`{"error":"..."}`, `X-Influxdb-Error`, `WWW-Authenticate` on
//! 401) or the 2.x one (`{"code":"...","message":"..."}`,
//! `X-Platform-Error-Code`), and the version headers every answer carries.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

/// A response as the listener sends it.
pub type Reply = Response<Full<Bytes>>;

/// Which InfluxDB API's dialect an answer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    V2,
}

/// The build type InfluxDB OSS reports.
pub const BUILD: &str = "OSS";

/// What 1.x puts in `X-Influxdb-Error` is cut to this many bytes.
const ERROR_HEADER_MAX: usize = 1024;

/// A reply with `status`, `body` and `content_type`.
pub fn plain(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `204 No Content`.
pub fn no_content() -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Add the headers every InfluxDB answer has.
pub fn stamp(reply: &mut Reply, version: &str) {
    let h = reply.headers_mut();
    if let Ok(v) = HeaderValue::from_str(version) {
        h.insert("x-influxdb-version", v);
    }
    h.insert("x-influxdb-build", HeaderValue::from_static(BUILD));
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub message: String,
    pub retry_after_s: Option<u64>,
    /// Close the connection after answering (the body was not read).
    pub close: bool,
    /// For `405`: the methods the path takes.
    pub allow: Option<&'static str>,
}

impl Problem {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Problem {
        Problem {
            status,
            message: message.into(),
            retry_after_s: None,
            close: false,
            allow: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn close(mut self) -> Problem {
        self.close = true;
        self
    }

    pub fn allow(mut self, methods: &'static str) -> Problem {
        self.allow = Some(methods);
        self
    }

    /// The answer in `api`'s dialect.
    pub fn render(self, api: Api) -> Reply {
        let mut r = match api {
            Api::V1 => {
                let body = serde_json::json!({ "error": self.message }).to_string();
                let mut r = plain(self.status, "application/json", body);
                if self.status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"InfluxDB\""),
                    );
                } else if let Ok(v) = HeaderValue::from_str(&header_text(&self.message)) {
                    r.headers_mut().insert("x-influxdb-error", v);
                }
                r
            }
            Api::V2 => {
                let code = v2_code(self.status);
                let body = serde_json::json!({ "code": code, "message": self.message }).to_string();
                let mut r = plain(self.status, "application/json; charset=utf-8", body);
                r.headers_mut()
                    .insert("x-platform-error-code", HeaderValue::from_static(code));
                r
            }
        };
        let h = r.headers_mut();
        if let Some(s) = self.retry_after_s {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(methods) = self.allow {
            h.insert(ALLOW, HeaderValue::from_static(methods));
        }
        if self.close {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

/// 2.x's error code for a status (`kit/platform/errors`).
pub fn v2_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not found",
        405 => "method not allowed",
        408 => "request timeout",
        413 => "request too large",
        415 => "unsupported media type",
        422 => "unprocessable entity",
        429 => "too many requests",
        501 => "not implemented",
        503 => "unavailable",
        _ => "internal error",
    }
}

/// `message` as a header value: printable ASCII, at most 1 KiB.
fn header_text(message: &str) -> String {
    message
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .take(ERROR_HEADER_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Reply) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn v1_errors_are_influxdb_1x_shaped() {
        let r = Problem::new(StatusCode::BAD_REQUEST, "database is required").render(Api::V1);
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["x-influxdb-error"], "database is required");
        assert_eq!(body(r).await, r#"{"error":"database is required"}"#);

        let r = Problem::new(StatusCode::UNAUTHORIZED, "authorization failed").render(Api::V1);
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"InfluxDB\"");
        assert!(r.headers().get("x-influxdb-error").is_none());
    }

    #[tokio::test]
    async fn v2_errors_are_influxdb_2x_shaped() {
        let r = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "full")
            .retry_after(7)
            .close()
            .render(Api::V2);
        assert_eq!(r.status(), 503);
        assert_eq!(
            r.headers()["content-type"],
            "application/json; charset=utf-8"
        );
        assert_eq!(r.headers()["x-platform-error-code"], "unavailable");
        assert_eq!(r.headers()["retry-after"], "7");
        assert_eq!(r.headers()["connection"], "close");
        assert_eq!(body(r).await, r#"{"code":"unavailable","message":"full"}"#);
    }

    #[test]
    fn error_header_is_printable_and_bounded() {
        assert_eq!(header_text("a\nb\u{e9}\"c"), "a?b?\"c");
        assert_eq!(header_text(&"x".repeat(5000)).len(), ERROR_HEADER_MAX);
    }
}
