#!/usr/bin/env bash
# The demo: sets up the machine, starts a local InfluxDB, streams generated
# points through influx-sink, stops and restarts the server mid-stream, and
# shows the backlog filling and draining, with the final counts from InfluxDB.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh

BIN=target/release/influx-sink
WORK=$(mktemp -d /tmp/influx-sink-demo.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RPC=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
POINTS=${DEMO_POINTS:-60000}
RATE=${DEMO_RATE:-4000}
INFLUX_PID=""
SINK_PID=""
cleanup() {
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
  [ -n "$INFLUX_PID" ] && kill "$INFLUX_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

cat > "$WORK/influxd.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$RPC"
[meta]
  dir = "$WORK/influxdb/meta"
[data]
  dir = "$WORK/influxdb/data"
  wal-dir = "$WORK/influxdb/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$PORT"
  log-enabled = false
[logging]
  level = "warn"
CONF

start_influxd() {
  influxd -config "$WORK/influxd.conf" >>"$WORK/influxd.log" 2>&1 &
  INFLUX_PID=$!
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$PORT/ping" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "demo: influxd did not start; see $WORK/influxd.log" >&2
  exit 1
}
count() {
  curl -s "http://127.0.0.1:$PORT/query?db=solar" --data-urlencode 'q=SELECT count(seq) FROM device_data' \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["results"][0]; print(r["series"][0]["values"][0][1] if "series" in r else 0)'
}
distinct() {
  curl -s "http://127.0.0.1:$PORT/query?db=solar" --data-urlencode 'q=SELECT count(distinct(seq)) FROM device_data' \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["results"][0]; print(r["series"][0]["values"][0][1] if "series" in r else 0)'
}

cat > "$WORK/gateway.ini" <<CONF
# The gateway's [influxdb_output] section, pointed at the demo's server.
[influxdb_output]
transport = influxdb_out
host = 127.0.0.1
port = $PORT
database = solar
batch_size = 500
batch_timeout = 0.5
reconnect_delay = 1.0          # seconds before the first reconnect attempt
max_reconnect_delay = 4.0
connection_timeout = 2
max_backlog_size = 100000

[generator]
transport = generator
rate = $RATE
count = $POINTS
fields = 20
CONF

echo "== demo: InfluxDB on 127.0.0.1:$PORT, $POINTS points at $RATE points/s (work dir $WORK)"
start_influxd
"$BIN" run "$WORK/gateway.ini" --drain-timeout 60 2>"$WORK/sink.log" &
SINK_PID=$!

wait_for() { # wait_for DESCRIPTION COMMAND...
  local what=$1; shift
  for _ in $(seq 1 600); do "$@" && return 0; sleep 0.1; done
  echo "demo: timed out waiting for $what" >&2; exit 1
}
above() { [ "$(count)" -ge "$1" ]; }
wait_for "first points" above $((POINTS / 5))
echo "== $(count) points in InfluxDB; stopping the server (outage begins)"
kill "$INFLUX_PID"; wait "$INFLUX_PID" 2>/dev/null || true; INFLUX_PID=""
for i in 1 2 3 4 5 6; do
  sleep 1
  echo "   outage +${i}s: $(grep -c . "$WORK/sink.log") sink log lines; backlog files: $(du -sh "$WORK/influxdb_backlog" 2>/dev/null | cut -f1)"
done
echo "== restarting the server"
start_influxd
set +e
wait "$SINK_PID"; CODE=$?
set -e
SINK_PID=""
echo "== sink log (backlog lines):"
grep -E "backlog|reconnect|Connected|Not connected" "$WORK/sink.log" | sed 's/^/   /'
echo "== $(tail -n 1 "$WORK/sink.log")"
echo "== InfluxDB now holds $(count) points ($(distinct) distinct) of $POINTS sent; influx-sink exit code $CODE"
[ "$(count)" = "$POINTS" ] && [ "$(distinct)" = "$POINTS" ] && [ "$CODE" = 0 ] && echo "== every point delivered exactly once"
