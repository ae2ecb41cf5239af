//! The listener's section of the config file (`transport =
//! influxdb_listener`), parsed and checked into a [`ListenerConfig`].
//!
//! Errors name the section, key and value and say what was expected, in
//! the component's [`ConfigError`] shape, so the config loader can add the
//! file and line. Unknown keys are returned by name, for a warning.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `transport` | (required) | `influxdb_listener` |
//! | `listen` | `127.0.0.1:8186` | IP address and TCP port to listen on (`[::]:8186`, `0.0.0.0:8186` for all interfaces) |
//! | `max_body_size` | `10000000` | bytes, 1 to 1073741824; the largest request body, both as sent and after gzip inflation (InfluxDB's `max-body-size`); over it: `413`. Every routed output's `max_memory_mb` must hold four times it (a body is parsed and stored inside the sink's sandbox) |
//! | `max_connections` | `256` | open connections, 1 to 100000; one more is answered `503` and closed |
//! | `header_timeout` | `10` | seconds (decimal, 0.001 to 3600) to receive a request's head; also how long an idle keep-alive connection stays open |
//! | `read_timeout` | `30` | seconds (decimal, 0.001 to 3600) to receive a request's whole body; over it: `408` |
//! | `max_header_size` | `32768` | bytes, 1024 to 262144, of a request's start line and headers; over it: `431` |
//! | `users` | (none) | v1 credentials, `name:password, name:password`; a name holds no `:`, no secret holds `,` |
//! | `tokens` | (none) | v2 tokens (also taken as a v1 password), `t1, t2` |
//! | `allow_remote_without_auth` | `false` | with no `users` and no `tokens`: whether clients other than loopback may write (otherwise `403`) |
//! | `outputs` | (all) | output sections to route to, `a, b`; empty means all |
//! | `version` | `1.8.10` | the InfluxDB version reported in `X-Influxdb-Version` and `/health` |
//! | `acknowledge_from_memory` | `false` | let outputs with `enable_persistent_storage = false` answer `204` once the points are in their memory (lost in a crash); without it such an output cannot be routed to |
//! | `shutdown_timeout` | `10` | seconds (decimal, 0.001 to 3600) that requests in flight get to finish at shutdown |

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use influx_sink_component::config::ConfigError;

/// The `transport` value of a listener section.
pub const TRANSPORT: &str = "influxdb_listener";

/// A credential that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// A v1 user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: Secret,
}

/// One listener section, checked. See the module doc for keys and
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The section's name.
    pub name: String,
    pub listen: SocketAddr,
    pub max_body_size: usize,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub read_timeout: Duration,
    pub max_header_size: usize,
    pub users: Vec<User>,
    pub tokens: Vec<Secret>,
    pub allow_remote_without_auth: bool,
    /// Output section names; empty: all outputs. (That they exist is for
    /// the caller to check; it knows the other sections.)
    pub outputs: Vec<String>,
    pub version: String,
    pub shutdown_timeout: Duration,
    pub acknowledge_from_memory: bool,
}

impl ListenerConfig {
    /// A section with every key at its default.
    pub fn defaults(name: &str) -> ListenerConfig {
        ListenerConfig {
            name: name.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8186)),
            max_body_size: 10_000_000,
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_header_size: 32 * 1024,
            users: Vec::new(),
            tokens: Vec::new(),
            allow_remote_without_auth: false,
            outputs: Vec::new(),
            version: "1.8.10".to_string(),
            shutdown_timeout: Duration::from_secs(10),
            acknowledge_from_memory: false,
        }
    }

    /// Parse a section's `(key, value)` pairs. Unknown keys are returned
    /// by name; the first invalid value is an error.
    pub fn from_pairs(
        name: &str,
        pairs: &[(String, String)],
    ) -> Result<(ListenerConfig, Vec<String>), ConfigError> {
        let mut c = ListenerConfig::defaults(name);
        let mut unknown = Vec::new();
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
                    if v != TRANSPORT {
                        return Err(err(TRANSPORT));
                    }
                }
                "listen" => {
                    c.listen = v.parse().map_err(|_| {
                        err("an IP address and TCP port, like 127.0.0.1:8186 or [::]:8186")
                    })?
                }
                "max_body_size" => {
                    c.max_body_size = whole(v, 1, 1 << 30)
                        .ok_or_else(|| err("a whole number of bytes from 1 to 1073741824"))?
                }
                "max_connections" => {
                    c.max_connections = whole(v, 1, 100_000)
                        .ok_or_else(|| err("a whole number of connections from 1 to 100000"))?
                }
                "max_header_size" => {
                    c.max_header_size = whole(v, 1024, 256 * 1024)
                        .ok_or_else(|| err("a whole number of bytes from 1024 to 262144"))?
                }
                "header_timeout" => c.header_timeout = seconds(v).ok_or_else(|| err(SECONDS))?,
                "read_timeout" => c.read_timeout = seconds(v).ok_or_else(|| err(SECONDS))?,
                "shutdown_timeout" => {
                    c.shutdown_timeout = seconds(v).ok_or_else(|| err(SECONDS))?
                }
                "users" => {
                    c.users.clear();
                    for item in list(v) {
                        let (user, password) = item
                            .split_once(':')
                            .filter(|(u, p)| !u.trim().is_empty() && !p.is_empty())
                            .ok_or_else(|| err("a list of name:password, separated by commas"))?;
                        let user = user.trim();
                        if c.users.iter().any(|u| u.name == user) {
                            return Err(err(&format!("each user once (`{user}` is listed twice)")));
                        }
                        c.users.push(User {
                            name: user.to_string(),
                            password: Secret(password.to_string()),
                        });
                    }
                }
                "tokens" => {
                    c.tokens = list(v).map(|t| Secret(t.to_string())).collect();
                    if c.tokens.iter().any(|t| t.0.contains(char::is_whitespace)) {
                        return Err(err("a list of tokens without spaces, separated by commas"));
                    }
                }
                "acknowledge_from_memory" => {
                    c.acknowledge_from_memory = boolean(v).ok_or_else(|| err("true or false"))?
                }
                "allow_remote_without_auth" => {
                    c.allow_remote_without_auth = boolean(v).ok_or_else(|| err("true or false"))?
                }
                "outputs" => {
                    c.outputs.clear();
                    for o in list(v) {
                        if o.contains(char::is_whitespace) || o.contains(['[', ']']) {
                            return Err(err("a list of output section names, separated by commas"));
                        }
                        if !c.outputs.iter().any(|x| x == o) {
                            c.outputs.push(o.to_string());
                        }
                    }
                }
                "version" => {
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(err("a version string without spaces, like 1.8.10"));
                    }
                    c.version = v.to_string();
                }
                _ => unknown.push(key.clone()),
            }
        }
        Ok((c, unknown))
    }

    /// Whether any credentials are configured (then every write must
    /// present one).
    pub fn has_credentials(&self) -> bool {
        !self.users.is_empty() || !self.tokens.is_empty()
    }
}

const SECONDS: &str = "a number of seconds from 0.001 to 3600";

/// Comma-separated items, trimmed, empty ones skipped.
fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn whole(v: &str, min: usize, max: usize) -> Option<usize> {
    v.parse::<usize>().ok().filter(|n| (min..=max).contains(n))
}

fn seconds(v: &str) -> Option<Duration> {
    let s: f64 = v.parse().ok()?;
    (s.is_finite() && (0.001..=3600.0).contains(&s)).then(|| Duration::from_secs_f64(s))
}

/// configparser's booleans, as the output sections read them.
fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
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

    fn parse(list: &[(&str, &str)]) -> Result<ListenerConfig, ConfigError> {
        ListenerConfig::from_pairs("relay", &pairs(list)).map(|(c, _)| c)
    }

    fn error(key: &str, value: &str) -> String {
        parse(&[(key, value)]).unwrap_err().to_string()
    }

    #[test]
    fn empty_section_gives_the_documented_defaults() {
        let (c, unknown) =
            ListenerConfig::from_pairs("relay", &pairs(&[("transport", TRANSPORT)])).unwrap();
        assert!(unknown.is_empty());
        assert_eq!(c, ListenerConfig::defaults("relay"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:8186");
        assert_eq!(c.max_body_size, 10_000_000);
        assert_eq!(c.max_connections, 256);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.read_timeout, Duration::from_secs(30));
        assert_eq!(c.max_header_size, 32768);
        assert!(c.users.is_empty() && c.tokens.is_empty() && c.outputs.is_empty());
        assert!(!c.allow_remote_without_auth);
        assert_eq!(c.version, "1.8.10");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert!(!c.has_credentials());
    }

    #[test]
    fn every_key_is_parsed() {
        let c = parse(&[
            ("transport", " influxdb_listener "),
            ("listen", "[::]:9999"),
            ("max_body_size", "1000"),
            ("max_connections", "3"),
            ("header_timeout", "0.5"),
            ("read_timeout", "2.25"),
            ("max_header_size", "4096"),
            ("users", "alice:s3:cret, bob:pw"),
            ("tokens", "t1 ,t2,"),
            ("allow_remote_without_auth", "yes"),
            ("outputs", "a, b, a"),
            ("version", "2.7.11"),
            ("shutdown_timeout", "1"),
        ])
        .unwrap();
        assert_eq!(c.listen.to_string(), "[::]:9999");
        assert_eq!(c.max_body_size, 1000);
        assert_eq!(c.max_connections, 3);
        assert_eq!(c.header_timeout, Duration::from_millis(500));
        assert_eq!(c.read_timeout, Duration::from_millis(2250));
        assert_eq!(c.max_header_size, 4096);
        assert_eq!(
            c.users,
            vec![
                User {
                    name: "alice".into(),
                    password: Secret("s3:cret".into())
                },
                User {
                    name: "bob".into(),
                    password: Secret("pw".into())
                }
            ]
        );
        assert_eq!(c.tokens, vec![Secret("t1".into()), Secret("t2".into())]);
        assert!(c.allow_remote_without_auth);
        assert_eq!(c.outputs, vec!["a", "b"]);
        assert_eq!(c.version, "2.7.11");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(1));
        assert!(c.has_credentials());
    }

    #[test]
    fn errors_name_section_key_value_and_what_is_expected() {
        assert_eq!(
            error("listen", "localhost:8186"),
            "[relay] listen = `localhost:8186`: expected an IP address and TCP port, \
             like 127.0.0.1:8186 or [::]:8186"
        );
        assert_eq!(
            error("max_body_size", "25MB"),
            "[relay] max_body_size = `25MB`: expected a whole number of bytes from 1 to 1073741824"
        );
        assert_eq!(
            error("transport", "influxdb_out"),
            "[relay] transport = `influxdb_out`: expected influxdb_listener"
        );
        assert!(error("max_body_size", "0").contains("from 1 to"));
        assert!(error("max_connections", "0").contains("max_connections = `0`"));
        assert!(error("max_header_size", "100").contains("from 1024 to 262144"));
        assert!(error("header_timeout", "0").contains("seconds from 0.001 to 3600"));
        assert!(error("read_timeout", "NaN").contains("read_timeout = `NaN`"));
        assert!(error("read_timeout", "inf").contains("seconds"));
        assert!(error("shutdown_timeout", "-1").contains("seconds"));
        assert!(error("users", "alice").contains("name:password"));
        assert!(error("users", "alice:").contains("name:password"));
        assert!(error("users", ":pw").contains("name:password"));
        assert!(error("users", "a:1, a:2").contains("`a` is listed twice"));
        assert!(error("tokens", "a b").contains("without spaces"));
        assert!(error("allow_remote_without_auth", "maybe").contains("true or false"));
        assert!(error("outputs", "a b").contains("output section names"));
        assert!(error("version", "").contains("version string"));
    }

    #[test]
    fn unknown_keys_are_returned_by_name() {
        let (_, unknown) = ListenerConfig::from_pairs(
            "relay",
            &pairs(&[
                ("transport", TRANSPORT),
                ("max_body", "1"),
                ("colour", "red"),
            ]),
        )
        .unwrap();
        assert_eq!(unknown, vec!["max_body", "colour"]);
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = parse(&[("users", "alice:hunter2"), ("tokens", "tok-xyz")]).unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("alice"));
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok-xyz"),
            "{shown}"
        );
    }
}
