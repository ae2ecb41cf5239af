//! Shared by the benchmarks: 20-field points from the host's generator, a
//! loopback HTTP server that answers every request `204 No Content`, and
//! small measuring helpers. Each bench includes this with `mod common;` and
//! uses only part of it.
#![allow(dead_code)]

pub mod poster;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use influx_sink_component::config::Settings;
use influx_sink_component::line_protocol::parse_lines;
use influx_sink_component::point::Point;
use influx_sink_host::config::OutputSpec;
use influx_sink_host::generator::{Generator, GeneratorSpec};
use influx_sink_host::runtime::SinkInstance;

/// Wall clock (ns) the generated points start at: a fixed, realistic time.
pub const START_NS: i64 = 1_700_000_000_000_000_000;

/// Output section `[name]` to 127.0.0.1:`port` with `keys`, as the host's
/// config would hand it over; a key the settings do not know fails.
pub fn output_spec(
    name: &str,
    port: u16,
    keys: &[(&str, &str)],
    backlog_dir: PathBuf,
) -> OutputSpec {
    let port = port.to_string();
    let pairs: Vec<(String, String)> = [
        ("transport", "influxdb_out"),
        ("host", "127.0.0.1"),
        ("port", port.as_str()),
    ]
    .iter()
    .chain(keys)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (settings, warnings) = Settings::from_pairs(name, &pairs).expect("settings");
    assert!(warnings.is_empty(), "{warnings:?}");
    OutputSpec {
        settings,
        pairs,
        backlog_dir,
        tls_ca_path: None,
    }
}

/// Turn the sink until everything it accepted is delivered, sleeping as it
/// asks but at most `max_sleep` between turns.
pub async fn drain(sink: &mut SinkInstance, max_sleep: Duration) {
    sink.flush().await.expect("flush");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let wait = Duration::from_nanos(sink.poll().await.expect("poll")).min(max_sleep);
        let st = sink.stats().await.expect("stats");
        if st.delivered == st.accepted {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "points do not flow to the server: {st:?}"
        );
        tokio::time::sleep(wait).await;
    }
}

/// A generator of `GeneratorSpec::default()` points (20 fields, 10 series).
/// The async runtime the benches drive the host runtime on: one worker.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn generator() -> Generator {
    Generator::new(GeneratorSpec::default(), START_NS)
}

/// `n` generated points as newline-terminated line protocol.
pub fn lines(n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 600);
    generator().fill(n, &mut out);
    out
}

/// `n` generated points, parsed.
pub fn points(n: u64) -> Vec<Point> {
    let (points, errors) = parse_lines(&lines(n), START_NS);
    assert!(errors.is_empty(), "generator made bad lines: {errors:?}");
    assert_eq!(points.len() as u64, n);
    points
}

/// Wall clock now, ns since the epoch.
pub fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Total size of the regular files under `path`.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// `ns` per element, human-readable.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

/// A rate (per second), human-readable, without the unit: `4.76 M`.
pub fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k", per_s / 1e3)
    } else {
        format!("{per_s:.1}")
    }
}

/// Accumulates what `iter_custom` timed, for the summaries (criterion's own
/// estimates are printed above them; these are means over every timed
/// iteration, warm-up included).
#[derive(Default)]
pub struct Tally {
    pub nanos: u128,
    pub elements: u64,
}

impl Tally {
    pub fn add(&mut self, d: Duration, elements: u64) {
        self.nanos += d.as_nanos();
        self.elements += elements;
    }

    /// Mean ns per element.
    pub fn ns_per(&self) -> f64 {
        if self.elements == 0 {
            return f64::NAN;
        }
        self.nanos as f64 / self.elements as f64
    }

    pub fn per_sec(&self) -> f64 {
        1e9 / self.ns_per()
    }
}

/// A loopback HTTP/1.1 server answering every request `204 No Content`.
///
/// wasmtime-wasi-http's client (`default_send_request`) opens one TCP
/// connection per request (hyper `conn::http1` handshake) and closes it when
/// the exchange is over; this server nevertheless serves keep-alive
/// connections properly (it reads requests in a loop, honouring
/// `Content-Length` and chunked bodies, until the client closes or sends
/// `Connection: close`). One thread per connection.
pub struct NoContentServer {
    pub port: u16,
    pub requests: Arc<AtomicU64>,
    /// Lines received in `/write` bodies.
    pub write_lines: Arc<AtomicU64>,
}

impl NoContentServer {
    pub fn start() -> NoContentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let requests = Arc::new(AtomicU64::new(0));
        let write_lines = Arc::new(AtomicU64::new(0));
        let (r, w) = (requests.clone(), write_lines.clone());
        std::thread::Builder::new()
            .name("204-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let (r, w) = (r.clone(), w.clone());
                    let _ = std::thread::Builder::new()
                        .name("204-conn".into())
                        .spawn(move || {
                            let _ = serve(conn, &r, &w);
                        });
                }
            })
            .expect("spawn accept thread");
        NoContentServer {
            port,
            requests,
            write_lines,
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn lines_received(&self) -> u64 {
        self.write_lines.load(Ordering::Relaxed)
    }
}

fn serve(conn: TcpStream, requests: &AtomicU64, lines: &AtomicU64) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut out = conn.try_clone()?;
    let mut rd = BufReader::with_capacity(256 * 1024, conn);
    let mut line = String::new();
    loop {
        // Request line; EOF here is the client closing the connection.
        line.clear();
        if rd.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let is_write = line
            .split(' ')
            .nth(1)
            .is_some_and(|p| p.starts_with("/write"));
        let mut content_length = 0u64;
        let mut chunked = false;
        let mut gzip = false;
        let mut close = false;
        loop {
            line.clear();
            if rd.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let h = line.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => content_length = v.parse().unwrap_or(0),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    "content-encoding" => gzip = v.eq_ignore_ascii_case("gzip"),
                    _ => {}
                }
            }
        }
        let newlines = if gzip && !chunked {
            // Counting lines means inflating, as a real server does.
            let mut body = vec![0u8; content_length as usize];
            rd.read_exact(&mut body)?;
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut text)?;
            text.iter().filter(|&&b| b == b'\n').count() as u64
        } else if chunked {
            read_chunked(&mut rd, &mut line)?
        } else {
            count_newlines(&mut rd, content_length)?
        };
        if is_write {
            lines.fetch_add(newlines, Ordering::Relaxed);
        }
        requests.fetch_add(1, Ordering::Relaxed);
        out.write_all(b"HTTP/1.1 204 No Content\r\nX-Influxdb-Version: bench\r\n\r\n")?;
        if close {
            return Ok(());
        }
    }
}

/// Read `n` body bytes, counting newlines.
fn count_newlines(rd: &mut BufReader<TcpStream>, mut n: u64) -> std::io::Result<u64> {
    let mut count = 0;
    while n > 0 {
        let buf = rd.fill_buf()?;
        if buf.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let take = buf.len().min(n as usize);
        count += buf[..take].iter().filter(|&&b| b == b'\n').count() as u64;
        rd.consume(take);
        n -= take as u64;
    }
    Ok(count)
}

fn read_chunked(rd: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<u64> {
    let mut count = 0;
    loop {
        line.clear();
        rd.read_line(line)?;
        let size = line.trim().split(';').next().unwrap_or("0");
        let size = u64::from_str_radix(size, 16).unwrap_or(0);
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                if rd.read_line(line)? == 0 || line.trim().is_empty() {
                    return Ok(count);
                }
            }
        }
        count += count_newlines(rd, size)?;
        let mut crlf = [0u8; 2];
        rd.read_exact(&mut crlf)?;
    }
}

/// `nproc` and the CPU's model name, printed with every figure.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                Some(
                    l.strip_prefix("model name")?
                        .split_once(':')?
                        .1
                        .trim()
                        .into(),
                )
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    format!("{cores} CPUs, {model}")
}

/// A whole-number knob from the environment; a malformed value stops the bench.
pub fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number")),
        Err(_) => default,
    }
}

/// The element whose `key` is the median (the upper one of an even count).
pub fn median_by<T>(mut xs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    xs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    xs.swap_remove(xs.len() / 2)
}
