"""A writer as real InfluxDB clients write, for tests/e2e_listener.rs.

Writes points seq=0..COUNT-1 of one device's series, BATCH per request,
each with its own timestamp (BASE_MS + seq, in ms), to the listener on
127.0.0.1:PORT, retrying a request until it succeeds (as the gateway does
through an outage). After each acknowledged request its seqs are appended
to ACKS (one per line, flushed), so the test knows what was acknowledged
even while the writer runs.

  python writer.py MODE PORT DB MEASUREMENT COUNT BATCH BASE_MS ACKS [PAUSE_MS]

PAUSE_MS (default 0) paces the writer: a pause after each request (v2:
after each BATCH points handed to its write API), as a gateway that
writes as readings come.

MODE:
  v1    the `influxdb` 5.3.2 client (the gateway's): write_points, ms
  v2    `influxdb-client` 1.50: its batching write API (background
        batches, its own retries); acks come from its success callback
  curl  curl with a gzip body to /write?precision=ms
"""

import gzip
import subprocess
import sys
import tempfile
import time

RETRY_PAUSE_S = 0.1


def line(measurement, seq, base_ms):
    return f"{measurement},device=inv1 seq={seq}i,v={seq}.5 {base_ms + seq}"


def record(acks, seqs):
    acks.write("".join(f"{s}\n" for s in seqs))
    acks.flush()


def v1(port, db, measurement, count, batch, base_ms, acks, pause):
    from influxdb import InfluxDBClient

    client = InfluxDBClient(host="127.0.0.1", port=port, database=db, timeout=10, retries=1)
    for start in range(0, count, batch):
        seqs = list(range(start, min(start + batch, count)))
        points = [
            {
                "measurement": measurement,
                "tags": {"device": "inv1"},
                "time": base_ms + s,
                "fields": {"seq": s, "v": s + 0.5},
            }
            for s in seqs
        ]
        while True:
            try:
                if client.write_points(points, time_precision="ms"):
                    break
            except Exception as e:  # refused, reset, 503: the writer keeps its data
                print(f"v1: retrying after {type(e).__name__}: {e}"[:300], file=sys.stderr)
            time.sleep(RETRY_PAUSE_S)
        record(acks, seqs)
        time.sleep(pause)


def v2(port, db, measurement, count, batch, base_ms, acks, pause):
    from influxdb_client import InfluxDBClient, WriteOptions, WritePrecision
    from influxdb_client.client.write_api import WriteType

    failed = []

    def success(conf, data):
        text = data.decode() if isinstance(data, bytes) else str(data)
        seqs = [int(l.split("seq=")[1].split("i")[0]) for l in text.splitlines() if "seq=" in l]
        record(acks, seqs)

    def error(conf, data, exc):
        failed.append(str(exc))
        print(f"v2: batch given up: {exc}"[:300], file=sys.stderr)

    def retry(conf, data, exc):
        print(f"v2: retrying: {exc}"[:300], file=sys.stderr)

    client = InfluxDBClient(url=f"http://127.0.0.1:{port}", token="t", org="o", timeout=10_000)
    options = WriteOptions(
        write_type=WriteType.batching,
        batch_size=batch,
        flush_interval=200,
        retry_interval=200,
        max_retries=1000,
        max_retry_delay=1_000,
        max_retry_time=600_000,
        exponential_base=2,
    )
    with client.write_api(
        write_options=options, success_callback=success, error_callback=error, retry_callback=retry
    ) as api:
        for s in range(count):
            api.write(
                bucket=db,
                record=line(measurement, s, base_ms),
                write_precision=WritePrecision.MS,
            )
            if (s + 1) % batch == 0:
                time.sleep(pause)
    client.close()
    if failed:
        sys.exit(f"v2: {len(failed)} batches were given up")


def curl(port, db, measurement, count, batch, base_ms, acks, pause):
    url = f"http://127.0.0.1:{port}/write?db={db}&precision=ms"
    with tempfile.NamedTemporaryFile(suffix=".gz") as body:
        for start in range(0, count, batch):
            seqs = list(range(start, min(start + batch, count)))
            text = "\n".join(line(measurement, s, base_ms) for s in seqs) + "\n"
            body.seek(0)
            body.truncate()
            body.write(gzip.compress(text.encode()))
            body.flush()
            while True:
                r = subprocess.run(
                    ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                     "-H", "Content-Encoding: gzip", "--data-binary", f"@{body.name}", url],
                    capture_output=True, text=True,
                )
                if r.stdout == "204":
                    break
                print(f"curl: retrying after status {r.stdout or r.returncode}", file=sys.stderr)
                time.sleep(RETRY_PAUSE_S)
            record(acks, seqs)
            time.sleep(pause)


def main():
    mode, port, db, measurement, count, batch, base_ms, acks_path = sys.argv[1:9]
    pause = int(sys.argv[9]) / 1000 if len(sys.argv) > 9 else 0
    args = (int(port), db, measurement, int(count), int(batch), int(base_ms))
    with open(acks_path, "a") as acks:
        {"v1": v1, "v2": v2, "curl": curl}[mode](*args, acks, pause)


if __name__ == "__main__":
    main()
