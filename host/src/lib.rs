//! influx-sink host: loads the sink component into wasmtime, one instance
//! per output section, and runs sources into them.

pub mod backlog_cli;
pub mod bindings;
pub mod config;
pub mod fanout;
pub mod generator;
pub mod log;
pub mod pipeline;
pub mod runtime;
pub mod sandbox;
pub mod simulate;
pub mod tls;
