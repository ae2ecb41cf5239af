//! The HTTP requests the policy asks for and the answers it gets back,
//! independent of any HTTP library.

use crate::config::Settings;

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
    pub method: &'static str,
    /// Path and query, e.g. `/write?db=solar&precision=ns`.
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

impl Request {
    pub(crate) fn ping(id: u64, s: &Settings) -> Self {
        Request {
            id,
            purpose: Purpose::Ping,
            method: "GET",
            path: "/ping".into(),
            headers: auth(s),
            body: Vec::new(),
            points: 0,
        }
    }

    pub(crate) fn create_database(id: u64, s: &Settings) -> Self {
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
            method: "POST",
            path: "/query".into(),
            headers,
            body: format!("q={}", percent_encode(&q)).into_bytes(),
            points: 0,
        }
    }

    pub(crate) fn write(id: u64, s: &Settings, body: Vec<u8>, points: u32) -> Self {
        let mut headers = auth(s);
        headers.push(("content-type".into(), "text/plain; charset=utf-8".into()));
        Request {
            id,
            purpose: Purpose::Write,
            method: "POST",
            path: format!("/write?db={}&precision=ns", percent_encode(&s.database)),
            headers,
            body,
            points,
        }
    }
}

fn auth(s: &Settings) -> Vec<(String, String)> {
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
        let r = Request::write(1, &s, b"m f=1 1\n".to_vec(), 1);
        assert_eq!(r.path, "/write?db=my%20db&precision=ns");
        assert!(r
            .headers
            .contains(&("authorization".into(), "Basic dTpw".into())));
        let c = Request::create_database(2, &s);
        assert_eq!(
            String::from_utf8(c.body).unwrap(),
            "q=CREATE%20DATABASE%20%22my%20db%22"
        );
    }

    #[test]
    fn partial_write_answers_are_read() {
        let body = r#"{"error":"partial write: field type conflict: input field \"v\" on measurement \"m\" is type string, already exists as type float dropped=2"}"#;
        assert_eq!(partial_write_dropped(body), Some(2));
        assert_eq!(partial_write_dropped("{}"), None);
        assert!(server_reason(body).starts_with("partial write: field type conflict"));
    }
}
