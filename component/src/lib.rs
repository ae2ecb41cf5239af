//! influx-sink: the InfluxDB delivery policy as a sans-IO core, plus the
//! wit-bindgen glue that runs it as a WASI 0.2 component.

pub mod backlog;
pub mod codec;
pub mod config;
pub mod crc;
pub mod deadletter;
pub mod endpoint;
pub mod ini;
pub mod line_protocol;
pub mod point;
pub mod policy;
pub mod pool;
pub mod sim;
mod simd;
pub mod snapshot;
pub mod sort;
pub mod stamp;
mod swar;
pub mod timefmt;

#[cfg(target_arch = "wasm32")]
mod glue;

/// Small blocks (each point's line) recycled through free lists.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: pool::Pooled<std::alloc::System> = pool::Pooled::new(std::alloc::System);
