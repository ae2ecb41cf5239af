//! Shared harness for the influx-sink end-to-end tests and benchmarks.
//!
//! Everything here starts *real* processes bound to 127.0.0.1 only, each in
//! its own temporary directory, and cleans them up on drop:
//!
//! * [`Influxd`]: an InfluxDB 1.x server (`/usr/bin/influxd`, Debian
//!   package `influxdb`), with stop / restart on the same port and data,
//!   SIGSTOP / SIGCONT, and count queries; optionally with https,
//!   authentication or a small max body size ([`InfluxdOptions`]).
//! * [`VictoriaMetrics`]: a VictoriaMetrics single node
//!   (`/usr/bin/victoria-metrics`, Debian package `victoria-metrics`).
//! * [`FaultProxy`]: an HTTP/1.1 proxy in front of one of those servers
//!   that forwards, or injects faults from a script ([`Match`], [`Fault`])
//!   and records every request ([`Seen`]).
//! * [`TestCa`]: a CA made at test time that issues server certificates
//!   for 127.0.0.1 / localhost; [`https_agent`] trusts only such a CA.
//! * [`Sink`]: one run of the `influx-sink` binary (built by
//!   `cargo build --release -p influx-sink-host` plus the component for
//!   `wasm32-wasip2`), with its stderr captured to a file that tests search.
//!
//! Helpers: [`free_port`], [`wait_until`], [`write_config`], [`dir_size`],
//! [`wait_stable`]; config and input builders: [`output_section`],
//! [`generator_section`], [`points`].
//!
//! Timing rule for users of this crate: sleeping is only ever used to *poll*
//! for a condition under a deadline; nothing here asserts on elapsed time.

pub mod chaos;
pub mod cli;
pub mod clients;
mod config;
mod influxd;
mod proxy;
mod sink;
mod tls;
mod util;
mod victoria;

pub use config::{generator_section, now_ns, output_section, point_line, points};
pub use influxd::{Influxd, InfluxdOptions};
pub use proxy::{Fault, FaultProxy, Match, Seen};
pub use sink::{component_path, sink_binary, target_dir, Sink, Stdin, Summary};
pub use tls::{client_config, https_agent, TestCa, SERVER_NAMES};
pub use util::{
    build_hostile, build_wasm, dir_size, free_port, http_agent, tail, wait_stable, wait_until,
    write_config, Deadline,
};
pub use victoria::VictoriaMetrics;
