//! Who may write: the credentials a request presents, as InfluxDB reads
//! them, checked against the configured users and tokens.
//!
//! Accepted forms, as InfluxDB 1.x / 2.x (and 2.x's 1.x compatibility
//! API) take them:
//! - v1 (`/write`): `u`/`p` query parameters; `Authorization: Basic`;
//!   `Authorization: Token user:password`; and, as 2.x's compatibility API,
//!   a token as the password (`p=<token>`, Basic `any:<token>`) or
//!   `Authorization: Token <token>` / `Bearer <token>`.
//! - v2 (`/api/v2/write`): `Authorization: Token <token>` or `Bearer
//!   <token>`; as 1.8's v2 API, `Token user:password` too. Not Basic
//!   (2.x refuses it there).
//!
//! Secrets are compared as SHA-256 digests in constant time, against every
//! configured entry without stopping at a match, so neither timing nor
//! length tells how close a guess was. With no credentials configured,
//! only loopback clients may write unless `allow_remote_without_auth`.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use super::config::ListenerConfig;

/// What a request offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    Nothing,
    UserPassword(String, String),
    /// A token, or `user:password` given where a token goes.
    Token(String),
    /// An `Authorization` header this API does not take.
    Unreadable,
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Credentials are required and none were readable: `401`.
    Missing,
    /// Credentials were presented and are wrong: `401`.
    Denied,
    /// No credentials are configured and the client is not on loopback:
    /// `403`.
    RemoteForbidden,
}

type Digest32 = [u8; 32];

/// The configured credentials, as digests.
#[derive(Clone)]
pub struct Credentials {
    /// `sha256("name:password")`; a name holds no `:`.
    users: Vec<Digest32>,
    tokens: Vec<Digest32>,
    allow_remote_without_auth: bool,
}

impl Credentials {
    pub fn new(cfg: &ListenerConfig) -> Credentials {
        Credentials {
            users: cfg
                .users
                .iter()
                .map(|u| digest(&format!("{}:{}", u.name, u.password.0)))
                .collect(),
            tokens: cfg.tokens.iter().map(|t| digest(&t.0)).collect(),
            allow_remote_without_auth: cfg.allow_remote_without_auth,
        }
    }

    /// Check what a request from `peer` presented.
    pub fn check(&self, presented: &Presented, peer: IpAddr) -> Verdict {
        if self.users.is_empty() && self.tokens.is_empty() {
            // As InfluxDB with auth disabled, credentials are not looked at.
            return if self.allow_remote_without_auth || is_loopback(peer) {
                Verdict::Allowed
            } else {
                Verdict::RemoteForbidden
            };
        }
        let ok = match presented {
            Presented::Nothing | Presented::Unreadable => return Verdict::Missing,
            Presented::UserPassword(user, password) => {
                let pair = !user.contains(':') && any(&self.users, &format!("{user}:{password}"));
                let token = any(&self.tokens, password);
                pair | token
            }
            Presented::Token(t) => any(&self.tokens, t) | any(&self.users, t),
        };
        if ok {
            Verdict::Allowed
        } else {
            Verdict::Denied
        }
    }
}

/// Whether `candidate` is one of `set`, looking at every entry.
fn any(set: &[Digest32], candidate: &str) -> bool {
    let d = digest(candidate);
    set.iter().fold(false, |found, s| found | ct_eq(s, &d))
}

fn digest(s: &str) -> Digest32 {
    Sha256::digest(s.as_bytes()).into()
}

/// Constant-time equality of two digests.
fn ct_eq(a: &Digest32, b: &Digest32) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Loopback, including IPv4-mapped IPv6 (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// What a v1 request presents: `u`/`p` parameters first, then the
/// `Authorization` header.
pub fn presented_v1(u: Option<&str>, p: Option<&str>, authorization: Option<&[u8]>) -> Presented {
    let u = u.unwrap_or("");
    let p = p.unwrap_or("");
    if !p.is_empty() {
        return if u.is_empty() {
            Presented::Token(p.to_string())
        } else {
            Presented::UserPassword(u.to_string(), p.to_string())
        };
    }
    match authorization.map(scheme) {
        None => Presented::Nothing,
        Some(Some((s, v))) if s.eq_ignore_ascii_case("basic") => basic(v),
        Some(Some((s, v)))
            if s.eq_ignore_ascii_case("token") || s.eq_ignore_ascii_case("bearer") =>
        {
            Presented::Token(v.to_string())
        }
        Some(_) => Presented::Unreadable,
    }
}

/// What a v2 request presents: `Authorization: Token` or `Bearer`.
pub fn presented_v2(authorization: Option<&[u8]>) -> Presented {
    match authorization.map(scheme) {
        None => Presented::Nothing,
        Some(Some((s, v)))
            if s.eq_ignore_ascii_case("token") || s.eq_ignore_ascii_case("bearer") =>
        {
            Presented::Token(v.to_string())
        }
        Some(_) => Presented::Unreadable,
    }
}

/// `Scheme value` of an `Authorization` header; `None` if it is not UTF-8
/// or has no value.
fn scheme(header: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (s, v) = text.split_once(' ')?;
    let v = v.trim();
    (!v.is_empty()).then_some((s, v))
}

/// `Basic base64(user:password)`.
fn basic(value: &str) -> Presented {
    let Some(raw) = base64_decode(value) else {
        return Presented::Unreadable;
    };
    let Ok(text) = String::from_utf8(raw) else {
        return Presented::Unreadable;
    };
    match text.split_once(':') {
        Some(("", p)) => Presented::Token(p.to_string()),
        Some((u, p)) => Presented::UserPassword(u.to_string(), p.to_string()),
        None => Presented::Unreadable,
    }
}

/// Standard base64 (RFC 4648 alphabet), padding optional; `None` on any
/// other byte.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover sextet cannot end a valid encoding.
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::config::{Secret, User};

    fn creds(users: &[(&str, &str)], tokens: &[&str], remote: bool) -> Credentials {
        let mut c = ListenerConfig::defaults("t");
        c.users = users
            .iter()
            .map(|(n, p)| User {
                name: n.to_string(),
                password: Secret(p.to_string()),
            })
            .collect();
        c.tokens = tokens.iter().map(|t| Secret(t.to_string())).collect();
        c.allow_remote_without_auth = remote;
        Credentials::new(&c)
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));

    #[test]
    fn base64_decodes_standard_and_unpadded_and_refuses_garbage() {
        assert_eq!(base64_decode("YWxpY2U6c2VjcmV0").unwrap(), b"alice:secret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Y"), None);
        assert_eq!(base64_decode("YW*i"), None);
        assert_eq!(base64_decode("ü"), None);
    }

    #[test]
    fn v1_credentials_are_read_as_influxdb_reads_them() {
        let up = |u: &str, p: &str| Presented::UserPassword(u.into(), p.into());
        assert_eq!(presented_v1(Some("a"), Some("b"), None), up("a", "b"));
        // Parameters win over the header.
        assert_eq!(
            presented_v1(Some("a"), Some("b"), Some(b"Token x")),
            up("a", "b")
        );
        assert_eq!(
            presented_v1(None, Some("tok"), None),
            Presented::Token("tok".into())
        );
        assert_eq!(presented_v1(Some("a"), None, None), Presented::Nothing);
        assert_eq!(
            presented_v1(None, None, Some(b"Basic YWxpY2U6c2VjcmV0")),
            up("alice", "secret")
        );
        assert_eq!(
            presented_v1(None, None, Some(b"basic OnRvaw==")),
            Presented::Token("tok".into())
        );
        assert_eq!(
            presented_v1(None, None, Some(b"Token alice:secret")),
            Presented::Token("alice:secret".into())
        );
        assert_eq!(
            presented_v1(None, None, Some(b"Bearer abc")),
            Presented::Token("abc".into())
        );
        assert_eq!(
            presented_v1(None, None, Some(b"Basic !!")),
            Presented::Unreadable
        );
        assert_eq!(
            presented_v1(None, None, Some(b"Basic YWxpY2U=")),
            Presented::Unreadable
        );
        assert_eq!(
            presented_v1(None, None, Some(b"Digest x")),
            Presented::Unreadable
        );
        assert_eq!(
            presented_v1(None, None, Some(b"Token")),
            Presented::Unreadable
        );
        assert_eq!(
            presented_v1(None, None, Some(b"\xff\xfe")),
            Presented::Unreadable
        );
    }

    #[test]
    fn v2_takes_token_and_bearer_only() {
        assert_eq!(
            presented_v2(Some(b"Token t1")),
            Presented::Token("t1".into())
        );
        assert_eq!(
            presented_v2(Some(b"Bearer t1")),
            Presented::Token("t1".into())
        );
        assert_eq!(presented_v2(Some(b"Basic YTpi")), Presented::Unreadable);
        assert_eq!(presented_v2(None), Presented::Nothing);
    }

    #[test]
    fn users_and_tokens_are_checked() {
        let c = creds(&[("alice", "secret")], &["t1", "t2"], false);
        let up = |u: &str, p: &str| Presented::UserPassword(u.into(), p.into());
        let tok = |t: &str| Presented::Token(t.into());
        assert_eq!(c.check(&up("alice", "secret"), REMOTE), Verdict::Allowed);
        assert_eq!(c.check(&up("alice", "wrong"), REMOTE), Verdict::Denied);
        assert_eq!(c.check(&up("bob", "secret"), REMOTE), Verdict::Denied);
        // A token as the password, whatever the user name (2.x's v1 API).
        assert_eq!(c.check(&up("anyone", "t2"), REMOTE), Verdict::Allowed);
        assert_eq!(c.check(&tok("t1"), REMOTE), Verdict::Allowed);
        assert_eq!(c.check(&tok("alice:secret"), REMOTE), Verdict::Allowed);
        assert_eq!(c.check(&tok("t3"), REMOTE), Verdict::Denied);
        assert_eq!(c.check(&tok(""), REMOTE), Verdict::Denied);
        // "alice:" + "x:secret" must not pass as "alice:x" + "secret".
        assert_eq!(c.check(&up("alice:x", "secret"), REMOTE), Verdict::Denied);
        assert_eq!(c.check(&Presented::Nothing, LOCAL), Verdict::Missing);
        assert_eq!(c.check(&Presented::Unreadable, LOCAL), Verdict::Missing);
    }

    #[test]
    fn without_credentials_only_loopback_writes_unless_allowed() {
        let c = creds(&[], &[], false);
        assert_eq!(c.check(&Presented::Nothing, LOCAL), Verdict::Allowed);
        assert_eq!(
            c.check(&Presented::Nothing, "::1".parse().unwrap()),
            Verdict::Allowed
        );
        assert_eq!(
            c.check(&Presented::Nothing, "::ffff:127.0.0.9".parse().unwrap()),
            Verdict::Allowed
        );
        assert_eq!(
            c.check(&Presented::Nothing, REMOTE),
            Verdict::RemoteForbidden
        );
        assert_eq!(
            c.check(
                &Presented::Token("x".into()),
                "::ffff:10.0.0.1".parse().unwrap()
            ),
            Verdict::RemoteForbidden
        );
        let open = creds(&[], &[], true);
        assert_eq!(open.check(&Presented::Nothing, REMOTE), Verdict::Allowed);
    }
}
