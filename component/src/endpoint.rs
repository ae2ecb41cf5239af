//! Where an output sends: `url`, `urls` or the gateway's `host` + `port`,
//! and the API flavour, precision and encoding of its writes.

use serde::{Deserialize, Serialize};

/// One server: scheme, host, port and an optional path prefix (a server
/// behind a reverse proxy at `https://gw.example/influx`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub https: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/`, empty for none.
    pub base_path: String,
}

impl Endpoint {
    pub fn plain(host: &str, port: u16) -> Self {
        Endpoint {
            https: false,
            host: host.to_string(),
            port,
            base_path: String::new(),
        }
    }

    /// Parse `http[s]://host[:port][/path]`; the error says what is wrong.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("it must start with http:// or https://".into());
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err("credentials belong in username/password or token, not in the URL".into());
        }
        if path.contains(['?', '#']) {
            return Err("a query or fragment is not allowed; use the settings keys".into());
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or("an IPv6 address needs its closing `]`")?;
            let port = match after {
                "" => default_port,
                p => port_of(p.strip_prefix(':').ok_or("junk after `]`")?)?,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), port_of(p)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() || host.contains([' ', '/']) {
            return Err("the host is missing or malformed".into());
        }
        Ok(Endpoint {
            https,
            host,
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port` as the HTTP authority (IPv6 bracketed) and for log lines.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The whole base URL, for log lines.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority(), self.base_path)
    }
}

fn port_of(p: &str) -> Result<u16, String> {
    p.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port `{p}` is not a TCP port from 1 to 65535"))
}

/// Which write API the server speaks (`api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Api {
    /// InfluxDB 1.x `/write?db=&rp=&precision=`, basic auth.
    V1,
    /// InfluxDB 2.x `/api/v2/write?org=&bucket=&precision=`, token auth.
    V2,
    /// InfluxDB 3 `/api/v3/write_lp?db=&precision=&accept_partial=true`.
    V3,
}

impl Api {
    pub fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_lowercase().as_str() {
            "v1" | "1" => Some(Api::V1),
            "v2" | "2" => Some(Api::V2),
            "v3" | "3" => Some(Api::V3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::V1 => "v1",
            Api::V2 => "v2",
            Api::V3 => "v3",
        }
    }
}

/// Timestamp precision of writes (`precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    Ns,
    Us,
    Ms,
    S,
}

impl Precision {
    pub fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_lowercase().as_str() {
            "ns" | "n" | "nanosecond" => Some(Precision::Ns),
            "us" | "u" | "µs" | "microsecond" => Some(Precision::Us),
            "ms" | "millisecond" => Some(Precision::Ms),
            "s" | "second" => Some(Precision::S),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Ns => "ns",
            Precision::Us => "us",
            Precision::Ms => "ms",
            Precision::S => "s",
        }
    }

    /// Nanoseconds per unit.
    pub fn nanos(self) -> i64 {
        match self {
            Precision::Ns => 1,
            Precision::Us => 1_000,
            Precision::Ms => 1_000_000,
            Precision::S => 1_000_000_000,
        }
    }

    /// The `precision=` value each API expects.
    pub fn query_value(self, api: Api) -> &'static str {
        match (api, self) {
            (Api::V1, Precision::Ns) => "ns",
            (Api::V1, Precision::Us) => "u",
            (Api::V3, Precision::Ns) => "nanosecond",
            (Api::V3, Precision::Us) => "microsecond",
            (Api::V3, Precision::Ms) => "millisecond",
            (Api::V3, Precision::S) => "second",
            (_, p) => p.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_prefixes() {
        let e = Endpoint::parse("https://db.example:8443/influx/").unwrap();
        assert_eq!(
            e,
            Endpoint {
                https: true,
                host: "db.example".into(),
                port: 8443,
                base_path: "/influx".into()
            }
        );
        assert_eq!(e.url(), "https://db.example:8443/influx");
        assert_eq!(Endpoint::parse("http://127.0.0.1").unwrap().port, 80);
        assert_eq!(Endpoint::parse("https://h").unwrap().port, 443);
        let v6 = Endpoint::parse("http://[::1]:8086").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8086));
        assert_eq!(v6.authority(), "[::1]:8086");
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("127.0.0.1:8086", "http://"),
            ("ftp://h", "http://"),
            ("http://u:p@h", "credentials"),
            ("http://h:0", "TCP port"),
            ("http://h:99999", "TCP port"),
            ("http://:80", "host"),
            ("http://h/write?db=x", "query"),
            ("http://[::1", "`]`"),
        ] {
            let e = Endpoint::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn precision_query_values_per_api() {
        assert_eq!(Precision::Us.query_value(Api::V1), "u");
        assert_eq!(Precision::Us.query_value(Api::V2), "us");
        assert_eq!(Precision::Ms.query_value(Api::V3), "millisecond");
        assert_eq!(Precision::parse("S"), Some(Precision::S));
        assert_eq!(Precision::parse("minutes"), None);
    }
}
