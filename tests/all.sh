#!/usr/bin/env bash
# Runs every check: formatting, lints, unit tests of the policy core, the
# host, and the integration tests against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo fmt --all -- --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
cargo clippy --release --locked --target wasm32-wasip2 -p influx-sink-component -- -D warnings
cargo test --release --locked --workspace
