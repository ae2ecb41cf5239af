//! A hostile influx-sink component. Apart from its misbehaviour (one cargo
//! feature) it is a minimal sink: it counts the lines it is given, holds
//! them "in memory" until `flush` or `shutdown` (which claim delivery), and
//! reports those counts in `stats`.

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../../wit",
    world: "influx-sink",
    generate_all,
});

use exports::influx::sink::output::{self as wit, Guest, GuestSink};

struct Component;

impl Guest for Component {
    type Sink = Sink;
}

struct Counts {
    #[cfg_attr(
        not(any(feature = "spin", feature = "bomb", feature = "trap3")),
        allow(dead_code)
    )]
    name: String,
    accepted: u64,
    pending: u64,
    delivered: u64,
    writes: u64,
}

pub struct Sink {
    counts: RefCell<Counts>,
}

/// One log line on stderr, in the sink's shape (`[name] message`).
fn say(name: &str, message: &str) {
    use std::io::Write;
    let line = format!("hostile [{name}] {message}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Try to get out of the sandbox; every attempt is reported, as
/// `escape: ... refused: ...` when it fails and `ESCAPED: ...` if not.
#[cfg(feature = "escape")]
fn escape(name: &str) {
    use std::io::Read;
    let report = |what: &str, r: Result<String, String>| match r {
        Ok(got) => say(name, &format!("ESCAPED: {what}: {got}")),
        Err(e) => say(name, &format!("escape: {what} refused: {e}")),
    };
    for path in [
        "/etc/passwd",
        "/backlog/../../etc/passwd",
        "/backlog/../escaped.txt",
        "../etc/passwd",
    ] {
        report(
            &format!("read {path}"),
            std::fs::read_to_string(path)
                .map(|t| format!("{} bytes", t.len()))
                .map_err(|e| e.to_string()),
        );
    }
    report(
        "create /backlog/../escaped.txt",
        std::fs::write("/backlog/../escaped.txt", b"out\n")
            .map(|()| "written".to_string())
            .map_err(|e| e.to_string()),
    );
    report(
        "list /",
        std::fs::read_dir("/")
            .map(|d| format!("{} entries", d.count()))
            .map_err(|e| e.to_string()),
    );
    // Inside its own directory it may write.
    match std::fs::write("/backlog/inside.txt", b"in\n") {
        Ok(()) => say(name, "escape: create /backlog/inside.txt allowed"),
        Err(e) => say(
            name,
            &format!("escape: create /backlog/inside.txt failed: {e}"),
        ),
    }
    let vars = std::env::vars().count();
    let args = std::env::args().count();
    let mut buf = [0u8; 64];
    let stdin = match std::io::stdin().read(&mut buf) {
        Ok(0) => "closed".to_string(),
        Ok(n) => format!("READ {n} bytes"),
        Err(e) => format!("error {e}"),
    };
    say(
        name,
        &format!("escape: environment variables={vars} arguments={args} stdin={stdin}"),
    );
}

/// Ask for a server that is not in the section: `127.0.0.1:<port + 1>`.
#[cfg(feature = "stranger")]
fn stranger(name: &str, settings: &[(String, String)]) {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingRequest, Scheme};
    let port: u16 = setting(settings, "port")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(8086);
    let authority = format!("127.0.0.1:{}", port.wrapping_add(1));
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(&authority));
    let _ = request.set_path_with_query(Some("/steal"));
    let outcome = match outgoing_handler::handle(request, None) {
        Err(e) => format!("refused at once: {e:?}"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("REACHED: status {}", response.status()),
                Some(Ok(Err(e))) => format!("refused: {e:?}"),
                other => format!("no answer: {other:?}"),
            }
        }
    };
    say(
        name,
        &format!("stranger: request to http://{authority}/steal {outcome}"),
    );
}

impl Sink {
    /// A write of `lines`, misbehaving as the build's feature says.
    fn take(&self, lines: &[u8]) -> wit::WriteResult {
        let _ = lines;
        let mut c = self.counts.borrow_mut();
        c.writes += 1;
        #[cfg(feature = "spin")]
        {
            say(&c.name, "spin: looping forever in write_lines");
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        #[cfg(feature = "bomb")]
        {
            say(&c.name, "bomb: allocating until the memory runs out");
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
        }
        #[cfg(feature = "block")]
        {
            say(&c.name, "block: waiting an hour in write_lines");
            wasi::clocks::monotonic_clock::subscribe_duration(3_600_000_000_000).block();
        }
        #[cfg(feature = "trap3")]
        if c.writes.is_multiple_of(3) {
            panic!(
                "trap3: [{}] write_lines call {} traps on purpose",
                c.name, c.writes
            );
        }
        #[allow(unreachable_code)]
        {
            let n = lines
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count() as u32;
            c.accepted += u64::from(n);
            c.pending += u64::from(n);
            wit::WriteResult {
                accepted: n,
                rejected: Vec::new(),
            }
        }
    }
}

impl GuestSink for Sink {
    fn open(name: String, settings: Vec<(String, String)>) -> Result<wit::Sink, String> {
        let _ = setting(&settings, "port");
        #[cfg(feature = "escape")]
        escape(&name);
        #[cfg(feature = "stranger")]
        stranger(&name, &settings);
        say(&name, "opened");
        Ok(wit::Sink::new(Sink {
            counts: RefCell::new(Counts {
                name,
                accepted: 0,
                pending: 0,
                delivered: 0,
                writes: 0,
            }),
        }))
    }

    fn version() -> String {
        "0.0.0-hostile".into()
    }

    fn restore(_snapshot: Vec<u8>) -> Result<wit::Sink, String> {
        #[cfg(feature = "fail_after_restore")]
        return Self::open("restored".into(), Vec::new());
        #[allow(unreachable_code)]
        Err("a hostile sink cannot restore".into())
    }

    fn write_lines(&self, lines: Vec<u8>) -> wit::WriteResult {
        self.take(&lines)
    }

    /// The listener's writes misbehave as `write_lines` does.
    fn write_durable(
        &self,
        writes: Vec<wit::DurableWrite>,
        _in_memory_ok: bool,
    ) -> Vec<Result<wit::WriteResult, wit::DurableRefusal>> {
        writes.iter().map(|w| Ok(self.take(&w.lines))).collect()
    }

    fn write_points(&self, points: Vec<wit::Point>) -> wit::WriteResult {
        let mut c = self.counts.borrow_mut();
        let n = points.len() as u32;
        c.accepted += u64::from(n);
        c.pending += u64::from(n);
        wit::WriteResult {
            accepted: n,
            rejected: Vec::new(),
        }
    }

    fn poll(&self) -> u64 {
        #[cfg(feature = "fail_after_restore")]
        panic!("fail_after_restore: poll traps on purpose");
        #[allow(unreachable_code)]
        100_000_000
    }

    fn flush(&self) {
        let mut c = self.counts.borrow_mut();
        c.delivered += c.pending;
        c.pending = 0;
    }

    fn shutdown(&self) {
        self.flush();
    }

    fn stats(&self) -> wit::Stats {
        let c = self.counts.borrow();
        wit::Stats {
            accepted: c.accepted,
            delivered: c.delivered,
            backlogged: 0,
            dropped: 0,
            dropped_by: wit::Drops {
                size: 0,
                bytes: 0,
                age: 0,
                storage: 0,
                corrupt: 0,
            },
            rejected: 0,
            backlog_points: 0,
            backlog_bytes: 0,
            pending: c.pending,
            held_points: 0,
            reconnect_attempts: 0,
            state: "connected".into(),
            room: u64::MAX,
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
}

export!(Component);
