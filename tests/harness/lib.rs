//! Shared harness for the influx-sink end-to-end tests and benchmarks.
//!
//! Everything here starts *real* processes bound to 127.0.0.1 only, each in
//! its own temporary directory, and cleans them up on drop:
//!
//! * [`Influxd`]: an InfluxDB 1.x server (`/usr/bin/influxd`, Debian
//!   package `influxdb`), with stop / restart on the same port and data,
//!   SIGSTOP / SIGCONT, and count queries.
//! * [`VictoriaMetrics`]: a VictoriaMetrics single node
//!   (`/usr/bin/victoria-metrics`, Debian package `victoria-metrics`).
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
mod config;
mod influxd;
mod sink;
mod util;
mod victoria;

pub use config::{generator_section, now_ns, output_section, point_line, points};
pub use influxd::Influxd;
pub use sink::{component_path, sink_binary, target_dir, Sink, Stdin, Summary};
pub use util::{
    dir_size, free_port, http_agent, tail, wait_stable, wait_until, write_config, Deadline,
};
pub use victoria::VictoriaMetrics;
