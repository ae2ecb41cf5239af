//! The output's settings: the gateway's `[influxdb_output]` keys, with its
//! defaults, parsed and checked in one place for the host and the component.

use serde::{Deserialize, Serialize};

pub use crate::endpoint::{Api, Endpoint, Precision};

/// Nanoseconds per second, for converting the gateway's float seconds.
pub const NANOS: f64 = 1e9;

/// Effective settings of one output section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: String,
    pub measurement: String,
    pub batch_size: u32,
    /// Batches sent at once while the server is up (memory batches only:
    /// the backlog drains one batch at a time, oldest first).
    pub max_requests_in_flight: u32,
    pub batch_timeout: f64,
    pub reconnect_attempts: u32,
    pub reconnect_delay: f64,
    pub use_exponential_backoff: bool,
    pub max_reconnect_delay: f64,
    pub periodic_reconnect_interval: f64,
    pub enable_persistent_storage: bool,
    pub persistent_storage_path: String,
    pub max_backlog_size: u64,
    pub max_backlog_age: f64,
    pub connection_timeout: f64,
    pub reconnect_jitter: f64,
    pub backlog_sync: BacklogSync,
    /// Most bytes the backlog may take on disk (encoded size in memory).
    pub max_backlog_bytes: u64,
    pub api: Api,
    /// Servers in failover order: `urls`, else `url`, else `host`:`port`.
    pub endpoints: Vec<Endpoint>,
    /// v2 organisation; v2 bucket (empty: `database`).
    pub org: String,
    pub bucket: String,
    /// v2/v3 API token.
    pub token: String,
    /// v1 retention policy (empty: the database's default).
    pub retention_policy: String,
    pub precision: Precision,
    /// `content_encoding = gzip`: compress request bodies.
    pub gzip: bool,
    /// v1: create the database when the server says it does not exist.
    pub auto_create_database: bool,
    /// Host-side TLS settings (the host reads them; the component only
    /// carries them so `validate` can show them).
    pub tls_ca_file: String,
    pub tls_insecure_skip_verify: bool,
    /// Bound of the dead-letter file `rejected.lp` (one older generation
    /// `rejected.lp.1` is kept).
    pub max_rejected_bytes: u64,
}

/// When backlog writes are forced to stable storage (`backlog_sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BacklogSync {
    /// fsync after every record appended.
    Always,
    /// fsync once per group of records appended in one call, before the
    /// sink counts them as stored.
    Batch,
    /// fsync at most every N milliseconds.
    IntervalMs(u64),
    /// Never fsync: survives a killed process, not a power cut.
    Never,
}

impl BacklogSync {
    fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_lowercase().as_str() {
            "always" => Some(BacklogSync::Always),
            "batch" => Some(BacklogSync::Batch),
            "never" => Some(BacklogSync::Never),
            other => other
                .strip_prefix("interval_ms:")
                .and_then(|n| n.trim().parse().ok())
                .filter(|n| (1..=3_600_000).contains(n))
                .map(BacklogSync::IntervalMs),
        }
    }
}

impl std::fmt::Display for BacklogSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BacklogSync::Always => f.write_str("always"),
            BacklogSync::Batch => f.write_str("batch"),
            BacklogSync::IntervalMs(n) => write!(f, "interval_ms:{n}"),
            BacklogSync::Never => f.write_str("never"),
        }
    }
}

/// A byte count, optionally with a unit: `1048576`, `512MiB`, `2 GB`.
fn byte_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Settings {
    /// The gateway's defaults, for a section called `name`.
    pub fn defaults(name: &str) -> Self {
        Settings {
            name: name.to_string(),
            host: "localhost".into(),
            port: 8086,
            database: "solar".into(),
            username: String::new(),
            password: String::new(),
            measurement: "device_data".into(),
            batch_size: 100,
            max_requests_in_flight: 4,
            batch_timeout: 10.0,
            reconnect_attempts: 5,
            reconnect_delay: 5.0,
            use_exponential_backoff: true,
            max_reconnect_delay: 300.0,
            periodic_reconnect_interval: 14400.0,
            enable_persistent_storage: true,
            persistent_storage_path: "influxdb_backlog".into(),
            max_backlog_size: 10000,
            max_backlog_age: 86400.0,
            connection_timeout: 10.0,
            reconnect_jitter: 0.0,
            backlog_sync: BacklogSync::Batch,
            max_backlog_bytes: 1 << 30,
            api: Api::V1,
            endpoints: vec![Endpoint::plain("localhost", 8086)],
            org: String::new(),
            bucket: String::new(),
            token: String::new(),
            retention_policy: String::new(),
            precision: Precision::Ns,
            gzip: true,
            auto_create_database: true,
            tls_ca_file: String::new(),
            tls_insecure_skip_verify: false,
            max_rejected_bytes: 10 << 20,
        }
    }

    /// Parse a section's `(key, value)` pairs. Unknown keys are returned by
    /// name (the caller knows where they were written); the first invalid
    /// value is an error.
    pub fn from_pairs(
        name: &str,
        pairs: &[(String, String)],
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let mut s = Settings::defaults(name);
        let mut warnings = Vec::new();
        let mut url: Option<Vec<Endpoint>> = None;
        for (key, value) in pairs {
            let v = value.trim();
            let err = |expected: &str| ConfigError {
                section: name.to_string(),
                key: key.clone(),
                value: value.clone(),
                expected: expected.to_string(),
            };
            match key.as_str() {
                "transport" => {
                    if v != "influxdb_out" {
                        return Err(err("influxdb_out"));
                    }
                }
                "host" => {
                    if v.is_empty() || v.contains(['/', ' ', '@']) {
                        return Err(err("a host name or IP address, without scheme or path"));
                    }
                    s.host = v.to_string();
                }
                "port" => {
                    s.port = v
                        .parse()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| err("a TCP port from 1 to 65535"))?
                }
                "database" => {
                    if v.is_empty() {
                        return Err(err("a database name"));
                    }
                    s.database = v.to_string();
                }
                "username" => s.username = v.to_string(),
                "password" => s.password = v.to_string(),
                "measurement" => {
                    if v.is_empty() {
                        return Err(err("a measurement name"));
                    }
                    s.measurement = v.to_string();
                }
                "batch_size" => {
                    s.batch_size = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=100_000).contains(n))
                        .ok_or_else(|| err("a whole number of points from 1 to 100000"))?
                }
                "max_requests_in_flight" => {
                    s.max_requests_in_flight = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=16).contains(n))
                        .ok_or_else(|| err("a whole number of requests from 1 to 16"))?
                }
                "batch_timeout" => {
                    s.batch_timeout = seconds(v, 0.001, 86400.0)
                        .ok_or_else(|| err("seconds, from 0.001 to 86400"))?
                }
                "reconnect_attempts" => {
                    s.reconnect_attempts = v
                        .parse()
                        .ok()
                        .filter(|n| *n <= 64)
                        .ok_or_else(|| err("a whole number from 0 to 64"))?
                }
                "reconnect_delay" => {
                    s.reconnect_delay = seconds(v, 0.001, 86400.0)
                        .ok_or_else(|| err("seconds, from 0.001 to 86400"))?
                }
                "use_exponential_backoff" => {
                    s.use_exponential_backoff = boolean(v).ok_or_else(|| err("true or false"))?
                }
                "max_reconnect_delay" => {
                    s.max_reconnect_delay = seconds(v, 0.001, 86400.0 * 7.0)
                        .ok_or_else(|| err("seconds, from 0.001 to 604800"))?
                }
                "periodic_reconnect_interval" => {
                    s.periodic_reconnect_interval = seconds(v, 0.0, 86400.0 * 365.0)
                        .ok_or_else(|| err("seconds (0 disables), at most one year"))?
                }
                "enable_persistent_storage" => {
                    s.enable_persistent_storage = boolean(v).ok_or_else(|| err("true or false"))?
                }
                "persistent_storage_path" => {
                    if v.is_empty() {
                        return Err(err("a directory path"));
                    }
                    s.persistent_storage_path = v.to_string();
                }
                "max_backlog_size" => {
                    s.max_backlog_size = v
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| err("a whole number of points, at least 1"))?
                }
                "max_backlog_age" => {
                    s.max_backlog_age = seconds(v, 1.0, 86400.0 * 3650.0)
                        .ok_or_else(|| err("seconds, at least 1"))?
                }
                "connection_timeout" => {
                    s.connection_timeout = seconds(v, 0.001, 3600.0)
                        .ok_or_else(|| err("seconds, from 0.001 to 3600"))?
                }
                "reconnect_jitter" => {
                    s.reconnect_jitter = decimal(v)
                        .filter(|f| (0.0..1.0).contains(f))
                        .ok_or_else(|| err("a fraction from 0 (none) to below 1, e.g. 0.2"))?
                }
                "backlog_sync" => {
                    s.backlog_sync = BacklogSync::parse(v).ok_or_else(|| {
                        err("always, batch, interval_ms:N (1 to 3600000) or never")
                    })?
                }
                "max_backlog_bytes" => {
                    s.max_backlog_bytes =
                        byte_size(v).filter(|n| *n >= 64 * 1024).ok_or_else(|| {
                            err("a size of at least 64KiB, e.g. 1073741824, 512MiB or 2GB")
                        })?
                }
                "api" => s.api = Api::parse(v).ok_or_else(|| err("v1, v2 or v3"))?,
                "url" | "urls" => {
                    let list = v
                        .split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(Endpoint::parse)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|why| err(&format!("http[s]://host[:port][/path] ({why})")))?;
                    if list.is_empty() || (key == "url" && list.len() > 1) {
                        return Err(err(if key == "url" {
                            "one http[s]://host[:port] URL (use `urls` for several)"
                        } else {
                            "a comma-separated list of http[s]://host[:port] URLs"
                        }));
                    }
                    if url.is_some() {
                        return Err(err("only one of `url` and `urls`"));
                    }
                    url = Some(list);
                }
                "org" => s.org = v.to_string(),
                "bucket" => s.bucket = v.to_string(),
                "token" => s.token = v.to_string(),
                "retention_policy" => s.retention_policy = v.to_string(),
                "precision" => {
                    s.precision = Precision::parse(v).ok_or_else(|| err("ns, us, ms or s"))?
                }
                "content_encoding" => {
                    s.gzip = match v.to_ascii_lowercase().as_str() {
                        "gzip" => true,
                        "identity" | "none" | "" => false,
                        _ => return Err(err("gzip or identity")),
                    }
                }
                "auto_create_database" => {
                    s.auto_create_database = boolean(v).ok_or_else(|| err("true or false"))?
                }
                "tls_ca_file" => s.tls_ca_file = v.to_string(),
                "tls_insecure_skip_verify" => {
                    s.tls_insecure_skip_verify = boolean(v).ok_or_else(|| err("true or false"))?
                }
                "max_rejected_bytes" => {
                    s.max_rejected_bytes = byte_size(v)
                        .filter(|n| *n >= 4096)
                        .ok_or_else(|| err("a size of at least 4KiB, e.g. 10MiB"))?
                }
                other => warnings.push(other.to_string()),
            }
        }
        s.endpoints = match url {
            Some(list) => {
                if let Some((key, value)) = pairs.iter().find(|(k, _)| k == "host" || k == "port") {
                    return Err(ConfigError {
                        section: name.to_string(),
                        key: key.clone(),
                        value: value.clone(),
                        expected: "either url/urls or host/port, not both".into(),
                    });
                }
                list
            }
            None => vec![Endpoint::plain(&s.host, s.port)],
        };

        if s.max_reconnect_delay < s.reconnect_delay {
            // Blame the key the user wrote: max_reconnect_delay if set, else
            // reconnect_delay against the default cap.
            let wrote_max = pairs.iter().any(|(k, _)| k == "max_reconnect_delay");
            let (key, value, expected) = if wrote_max {
                let v = s.max_reconnect_delay;
                (
                    "max_reconnect_delay",
                    v,
                    format!("at least reconnect_delay ({})", s.reconnect_delay),
                )
            } else {
                let v = s.reconnect_delay;
                (
                    "reconnect_delay",
                    v,
                    format!("at most max_reconnect_delay ({})", s.max_reconnect_delay),
                )
            };
            let value = pairs
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map_or(value.to_string(), |(_, v)| v.clone());
            return Err(ConfigError {
                section: name.to_string(),
                key: key.into(),
                value,
                expected,
            });
        }
        Ok((s, warnings))
    }

    /// `host:port` of the first server, as the gateway's log lines print it.
    pub fn address(&self) -> String {
        self.endpoints[0].authority()
    }

    /// Every key and its effective value, in documentation order (password
    /// masked), for `influx-sink validate`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("host", self.host.clone()),
            ("port", self.port.to_string()),
            ("database", self.database.clone()),
            ("username", self.username.clone()),
            (
                "password",
                if self.password.is_empty() {
                    String::new()
                } else {
                    "********".into()
                },
            ),
            ("measurement", self.measurement.clone()),
            ("batch_size", self.batch_size.to_string()),
            (
                "max_requests_in_flight",
                self.max_requests_in_flight.to_string(),
            ),
            ("batch_timeout", self.batch_timeout.to_string()),
            ("reconnect_attempts", self.reconnect_attempts.to_string()),
            ("reconnect_delay", self.reconnect_delay.to_string()),
            (
                "use_exponential_backoff",
                self.use_exponential_backoff.to_string(),
            ),
            ("max_reconnect_delay", self.max_reconnect_delay.to_string()),
            (
                "periodic_reconnect_interval",
                self.periodic_reconnect_interval.to_string(),
            ),
            (
                "enable_persistent_storage",
                self.enable_persistent_storage.to_string(),
            ),
            (
                "persistent_storage_path",
                self.persistent_storage_path.clone(),
            ),
            ("max_backlog_size", self.max_backlog_size.to_string()),
            ("max_backlog_age", self.max_backlog_age.to_string()),
            ("connection_timeout", self.connection_timeout.to_string()),
            ("reconnect_jitter", self.reconnect_jitter.to_string()),
            ("backlog_sync", self.backlog_sync.to_string()),
            ("max_backlog_bytes", self.max_backlog_bytes.to_string()),
            ("api", self.api.name().into()),
            (
                "urls",
                self.endpoints
                    .iter()
                    .map(Endpoint::url)
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ("org", self.org.clone()),
            ("bucket", self.bucket.clone()),
            (
                "token",
                if self.token.is_empty() {
                    String::new()
                } else {
                    "********".into()
                },
            ),
            ("retention_policy", self.retention_policy.clone()),
            ("precision", self.precision.name().into()),
            (
                "content_encoding",
                if self.gzip { "gzip" } else { "identity" }.into(),
            ),
            (
                "auto_create_database",
                self.auto_create_database.to_string(),
            ),
            ("tls_ca_file", self.tls_ca_file.clone()),
            (
                "tls_insecure_skip_verify",
                self.tls_insecure_skip_verify.to_string(),
            ),
            ("max_rejected_bytes", self.max_rejected_bytes.to_string()),
        ]
    }
}

/// Seconds as the gateway writes them (`5`, `5.0`), within bounds.
fn seconds(v: &str, min: f64, max: f64) -> Option<f64> {
    decimal(v).filter(|f| *f >= min && *f <= max)
}

/// A decimal to nine places (no float parsing code in the component).
fn decimal(v: &str) -> Option<f64> {
    crate::timefmt::parse_decimal_nanos(v).map(|ns| ns as f64 / NANOS)
}

/// configparser's booleans.
fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// An invalid value: which section, key and value, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub section: String,
    pub key: String,
    pub value: String,
    pub expected: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {} = `{}`: expected {}",
            self.section, self.key, self.value, self.expected
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_section_gives_gateway_defaults() {
        let (s, w) =
            Settings::from_pairs("influxdb_output", &pairs(&[("transport", "influxdb_out")]))
                .unwrap();
        assert!(w.is_empty());
        assert_eq!(s, Settings::defaults("influxdb_output"));
        assert_eq!(s.address(), "localhost:8086");
    }

    #[test]
    fn values_are_parsed() {
        let (s, _) = Settings::from_pairs(
            "o",
            &pairs(&[
                ("batch_size", "500"),
                ("use_exponential_backoff", "false"),
                ("reconnect_delay", "2"),
                ("reconnect_jitter", "0.2"),
            ]),
        )
        .unwrap();
        assert_eq!(s.batch_size, 500);
        assert!(!s.use_exponential_backoff);
        assert_eq!(s.reconnect_delay, 2.0);
        assert_eq!(s.reconnect_jitter, 0.2);
    }

    #[test]
    fn bad_values_name_section_key_value_and_expectation() {
        for (k, v) in [
            ("batch_size", "abc"),
            ("batch_size", "0"),
            ("max_requests_in_flight", "0"),
            ("max_requests_in_flight", "17"),
            ("port", "70000"),
            ("use_exponential_backoff", "maybe"),
            ("reconnect_delay", "-1"),
            ("reconnect_jitter", "1.5"),
            ("transport", "mqtt"),
            ("host", "http://x"),
        ] {
            let e = Settings::from_pairs("out", &pairs(&[(k, v)])).unwrap_err();
            assert_eq!(
                (e.section.as_str(), e.key.as_str(), e.value.as_str()),
                ("out", k, v)
            );
            let text = e.to_string();
            assert!(
                text.contains("[out]")
                    && text.contains(k)
                    && text.contains(v)
                    && text.contains("expected"),
                "{text}"
            );
        }
    }

    #[test]
    fn backlog_sync_and_byte_sizes_parse() {
        for (v, want) in [
            ("always", BacklogSync::Always),
            ("Batch", BacklogSync::Batch),
            ("never", BacklogSync::Never),
            ("interval_ms:250", BacklogSync::IntervalMs(250)),
        ] {
            let (s, _) = Settings::from_pairs("o", &pairs(&[("backlog_sync", v)])).unwrap();
            assert_eq!(s.backlog_sync, want);
            assert_eq!(BacklogSync::parse(&want.to_string()), Some(want));
        }
        for bad in [
            "sometimes",
            "interval_ms:",
            "interval_ms:0",
            "interval_ms:x",
        ] {
            assert!(
                Settings::from_pairs("o", &pairs(&[("backlog_sync", bad)])).is_err(),
                "{bad}"
            );
        }
        for (v, want) in [
            ("1048576", 1u64 << 20),
            ("512MiB", 512 << 20),
            ("2 GB", 2_000_000_000),
            ("64k", 65536),
        ] {
            let (s, _) = Settings::from_pairs("o", &pairs(&[("max_backlog_bytes", v)])).unwrap();
            assert_eq!(s.max_backlog_bytes, want, "{v}");
        }
        for bad in ["lots", "10", "5 parsecs", "99999999999999999999"] {
            assert!(
                Settings::from_pairs("o", &pairs(&[("max_backlog_bytes", bad)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn max_delay_below_base_delay_is_refused() {
        let e = Settings::from_pairs(
            "o",
            &pairs(&[("reconnect_delay", "10"), ("max_reconnect_delay", "5")]),
        )
        .unwrap_err();
        assert_eq!(e.key, "max_reconnect_delay");
    }

    #[test]
    fn unknown_keys_warn_by_name() {
        let (_, w) = Settings::from_pairs("o", &pairs(&[("batchsize", "5")])).unwrap();
        assert_eq!(w, vec!["batchsize".to_string()]);
    }

    #[test]
    fn servers_apis_and_transport_keys() {
        let (s, _) = Settings::from_pairs(
            "o",
            &pairs(&[
                ("urls", "http://127.0.0.1:8086, https://b.example/influx"),
                ("api", "v2"),
                ("precision", "ms"),
                ("content_encoding", "identity"),
                ("token", "t"),
            ]),
        )
        .unwrap();
        assert_eq!(s.endpoints.len(), 2);
        assert!(s.endpoints[1].https);
        assert_eq!(s.address(), "127.0.0.1:8086");
        assert_eq!(
            (s.api, s.precision, s.gzip),
            (Api::V2, Precision::Ms, false)
        );
        assert!(s.describe().contains(&("token", "********".into())));
        for (list, key) in [
            (vec![("url", "http://a:1"), ("host", "b")], "host"),
            (vec![("url", "http://a:1"), ("urls", "http://b:1")], "urls"),
            (vec![("url", "http://a:1, http://b:2")], "url"),
            (vec![("urls", "a:1")], "urls"),
            (vec![("api", "v4")], "api"),
            (vec![("precision", "m")], "precision"),
            (vec![("content_encoding", "br")], "content_encoding"),
        ] {
            let e = Settings::from_pairs("o", &pairs(&list)).unwrap_err();
            assert_eq!(e.key, key, "{list:?}: {e}");
        }
    }
}
