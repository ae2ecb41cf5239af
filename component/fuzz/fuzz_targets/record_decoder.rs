//! `cargo +nightly fuzz run record_decoder` (from `component/`; see
//! `../README.md`): arbitrary bytes into the backlog codec, the
//! segment/record parser, and `FileBacklog::open` + peek/consume. The checks
//! are in `../check.rs`.
#![no_main]

#[path = "../check.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::record_decoder(data));
