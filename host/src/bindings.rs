//! Host-side bindings of the `influx-sink` world (wit/sink.wit).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "influx-sink",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi": wasmtime_wasi::p2::bindings,
    },
});

pub use exports::influx::sink::output::{
    DurableRefusal, DurableWrite, FieldValue, Point, Precision, Stats, WriteResult,
};
