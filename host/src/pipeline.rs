//! `influx-sink run`: one task per sink, fed by one source through bounded
//! queues (see `fanout`). Sink calls never block (the component does HTTP
//! without blocking), so a dead server never stalls the source or other
//! sinks.

use std::time::Duration;

use std::sync::atomic::Ordering;
use tokio::io::AsyncReadExt;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use wasmtime::Result;

use crate::config::{OutputSpec, PipelineSpec, SourceSpec};
use crate::fanout::{Chunk, Fanout, Inlet};
use crate::generator::{Generator, GeneratorSpec};
use crate::log;
use crate::runtime::{Runtime, SinkInstance};

/// Chunks in flight between the source and each sink.
const QUEUE_CHUNKS: usize = 16;
/// Longest the host sleeps between turns even if the sink asked for more.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Rejected input lines logged one by one before the rest are only counted.
const MAX_REJECTION_LOGS: u64 = 100;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub accepted: u64,
    pub delivered: u64,
    pub backlogged: u64,
    pub dropped: u64,
    pub rejected: u64,
}

impl Summary {
    fn add(&mut self, o: &Summary) {
        self.accepted += o.accepted;
        self.delivered += o.delivered;
        self.backlogged += o.backlogged;
        self.dropped += o.dropped;
        self.rejected += o.rejected;
    }

    pub fn line(&self) -> String {
        format!(
            "summary accepted={} delivered={} backlogged={} dropped={} rejected={}",
            self.accepted, self.delivered, self.backlogged, self.dropped, self.rejected
        )
    }
}

pub struct RunOptions {
    pub drain_timeout: Duration,
}

/// Run the pipeline until the input ends (then drain) or `stop` fires
/// (then shut down at once). Returns the summed counters and whether any
/// sink failed.
pub async fn run(
    runtime: Runtime,
    spec: PipelineSpec,
    opts: RunOptions,
    stop: watch::Receiver<bool>,
) -> Result<(Summary, bool)> {
    // Instantiate every sink before reading any input: a bad config or a
    // component that refuses its settings starts nothing.
    let mut sinks = Vec::new();
    for output in &spec.outputs {
        sinks.push((output.clone(), runtime.instantiate(output).await?));
    }
    let live = matches!(&spec.source, SourceSpec::Generator(g) if g.rate > 0.0);
    let mut fanout = Fanout::new(live);
    let mut tasks = Vec::new();
    for (output, instance) in sinks {
        let inlet = fanout.add(&output.settings.name, QUEUE_CHUNKS);
        tasks.push(tokio::spawn(sink_task(
            output,
            instance,
            inlet,
            opts.drain_timeout,
            stop.clone(),
        )));
    }
    let source = match spec.source {
        SourceSpec::Stdin => tokio::spawn(read_stdin(fanout, stop.clone())),
        SourceSpec::Generator(g) => tokio::spawn(generate(g, fanout, stop.clone())),
    };
    if let Err(e) = source.await {
        log::error("source", &format!("input stopped: {e}"));
    }
    let mut total = Summary::default();
    let mut failed = false;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => total.add(&s),
            Ok(Err((s, e))) => {
                total.add(&s);
                failed = true;
                log::error("host", &format!("{e:#}"));
            }
            Err(e) => {
                failed = true;
                log::error("host", &format!("a sink task ended abnormally: {e}"));
            }
        }
    }
    Ok((total, failed))
}

async fn read_stdin(mut fanout: Fanout, mut stop: watch::Receiver<bool>) {
    let mut stdin = tokio::io::stdin();
    let mut carry: Vec<u8> = Vec::new();
    let mut line_no = 1u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::select! {
            r = stdin.read(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    log::error("source", &format!("cannot read standard input: {e}"));
                    0
                }
            },
            _ = stop.changed() => break,
        };
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&buf[..n]);
        if let Some(end) = carry.iter().rposition(|b| *b == b'\n') {
            let rest = carry.split_off(end + 1);
            let chunk = std::mem::replace(&mut carry, rest);
            let lines = chunk.iter().filter(|b| **b == b'\n').count() as u64;
            fanout.send(chunk, line_no, lines).await;
            line_no += lines;
        }
    }
    if !carry.is_empty() && !*stop.borrow() {
        fanout.send(carry, line_no, 1).await;
    }
}

async fn generate(spec: GeneratorSpec, mut fanout: Fanout, mut stop: watch::Receiver<bool>) {
    let start_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let rate = spec.rate;
    let mut gen = Generator::new(spec, start_ns);
    let began = Instant::now();
    let mut line_no = 1u64;
    while !gen.finished() && !*stop.borrow() {
        let n = if rate > 0.0 {
            let due = (began.elapsed().as_secs_f64() * rate) as u64;
            if due <= gen.produced() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            (due - gen.produced()).min(5000)
        } else {
            1000
        };
        let mut out = Vec::with_capacity(n as usize * 600);
        let made = gen.fill(n, &mut out);
        fanout.send(out, line_no, made).await;
        line_no += made;
    }
}

type SinkResult = std::result::Result<Summary, (Summary, wasmtime::Error)>;

async fn sink_task(
    output: OutputSpec,
    mut sink: SinkInstance,
    inlet: Inlet,
    drain_timeout: Duration,
    stop: watch::Receiver<bool>,
) -> SinkResult {
    let name = output.settings.name.clone();
    let missed = inlet.missed.clone();
    let outcome = drive(&name, &mut sink, inlet.rx, drain_timeout, stop).await;
    // Whatever happened, undelivered points go to the backlog.
    let closing = async {
        sink.shutdown().await?;
        let st = sink.stats().await?;
        sink.close().await?;
        Ok::<_, wasmtime::Error>(st)
    }
    .await;
    let summary = match &closing {
        Ok(st) => Summary {
            accepted: st.accepted,
            delivered: st.delivered,
            backlogged: st.pending,
            dropped: st.dropped + missed.load(Ordering::Relaxed),
            rejected: st.rejected,
        },
        Err(_) => Summary::default(),
    };
    match (outcome, closing) {
        (Ok(()), Ok(_)) => Ok(summary),
        (Err(e), _) | (Ok(()), Err(e)) => {
            Err((summary, e.context(format!("sink [{name}] failed"))))
        }
    }
}

/// Feed the sink until the input ends, then drain until nothing is pending
/// or `drain_timeout` passes; `stop` cuts both short.
async fn drive(
    name: &str,
    sink: &mut SinkInstance,
    mut rx: mpsc::Receiver<Chunk>,
    drain_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut rejections_logged = 0u64;
    loop {
        let wait = Duration::from_nanos(sink.poll().await?).min(MAX_SLEEP);
        tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            chunk = rx.recv() => match chunk {
                Some(chunk) => {
                    let result = sink.write_lines(&chunk.bytes).await?;
                    for r in &result.rejected {
                        rejections_logged += 1;
                        if rejections_logged <= MAX_REJECTION_LOGS {
                            log::warn(name, &format!("input line {} rejected: {}", chunk.first_line + r.index as u64, r.reason));
                        } else if rejections_logged == MAX_REJECTION_LOGS + 1 {
                            log::warn(name, "further rejected lines are counted but not logged");
                        }
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep(wait) => {}
        }
    }
    sink.flush().await?;
    let deadline = Instant::now() + drain_timeout;
    loop {
        let wait = Duration::from_nanos(sink.poll().await?).min(MAX_SLEEP);
        if sink.stats().await?.pending == 0 {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            log::warn(name, &format!("drain timeout ({} s) reached with points undelivered; they stay in the backlog", drain_timeout.as_secs_f64()));
            return Ok(());
        }
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = tokio::time::sleep(wait.min(deadline - now)) => {}
        }
    }
}
