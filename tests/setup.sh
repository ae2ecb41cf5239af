#!/usr/bin/env bash
# Sets up a fresh Debian machine for influx-sink and builds it:
# the wasm32-wasip2 target, InfluxDB 1.x and VictoriaMetrics for the tests,
# the host (release) and the component (wasm32-wasip2, profile `ship`),
# the Python InfluxDB clients the listener is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  as_root apt-get update -qq
  # The packages' services are not started here; the tests start their own.
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2
fi

# The InfluxDB clients the listener's tests write with (tests/clients/):
# the gateway's own and the v2 one, pinned, in a venv under target/.
clients=target/pyclients
if ! "$clients/bin/python" -c 'import influxdb, influxdb_client' >/dev/null 2>&1; then
  echo "setup: installing the Python InfluxDB clients into $clients"
  command -v curl >/dev/null 2>&1 || { as_root apt-get update -qq; DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq curl >/dev/null; }
  python3 -m venv "$clients"
  "$clients/bin/pip" install -q --disable-pip-version-check influxdb==5.3.2 influxdb-client==1.50.0
fi

echo "setup: building the component (wasm32-wasip2) and the host"
cargo build --profile ship --locked --target wasm32-wasip2 -p influx-sink-component
cargo build --release --locked -p influx-sink-host
