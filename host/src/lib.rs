//! influx-sink host: loads the sink component into wasmtime, one instance
//! per output section, and runs sources into them.

pub mod admin;
pub mod backlog_cli;
pub mod bindings;
pub mod config;
pub mod connections;
pub mod fanout;
pub mod generator;
pub mod listener;
pub mod log;
pub mod pipeline;
pub mod precompile;
pub mod relay;
pub mod runtime;
pub mod sandbox;
pub mod simulate;
pub mod swap;
#[cfg(test)]
mod test_http;
pub mod tls;
pub mod wake;
