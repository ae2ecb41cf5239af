//! `influx-sink run`: one task per sink, fed by one source through bounded
//! queues (see `fanout`). Sink calls never block (the component does HTTP
//! without blocking), so a dead server never stalls the source or other
//! sinks.
//!
//! Each sink task also supervises its instance: a call that traps, runs
//! past its deadline or hits the memory cap tears the instance down; the
//! task logs why, waits (1 s doubling to 60 s), and instantiates the
//! component again, which reopens the backlog from disk. Meanwhile its
//! input stays in its queue (backpressure, or the live source's counted
//! drops, as for a slow sink), and the source and the other sinks go on.

use std::time::Duration;

use std::io::Read as _;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use wasmtime::error::Context;
use wasmtime::Result;

use crate::admin::SwapRequest;
use crate::bindings::Stats;
use crate::config::{OutputSpec, PipelineSpec, SourceSpec};
use crate::fanout::{Chunk, Fanout, Inlet};
use crate::generator::{Generator, GeneratorSpec};
use crate::listener;
use crate::log;
use crate::relay::{self, DurableJob, Routes};
use crate::runtime::{Runtime, SinkInstance};
use crate::sandbox::{Backoff, Fault, Limits};
use crate::swap::{self, ReconfigRequest, SinkHandle, SwapCmd, Swapped};

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
    /// Live-upgrade requests (admin endpoint, file watcher, SIGHUP), and
    /// the compile cache for the new components.
    pub swaps: Option<mpsc::Receiver<SwapRequest>>,
    /// Config reloads: new settings for a running sink.
    pub reconfigs: Option<mpsc::Receiver<ReconfigRequest>>,
    pub cache: Option<std::path::PathBuf>,
}

/// Run the pipeline until the input ends (then drain) or `stop` fires
/// (then shut down at once). `runtimes[i]` is the component of
/// `spec.outputs[i]` (see `Runtime::load_each`). Returns the summed
/// counters and whether any sink failed (its component crashed, or it
/// could not be shut down cleanly).
pub async fn run(
    runtimes: Vec<Runtime>,
    spec: PipelineSpec,
    opts: RunOptions,
    stop: watch::Receiver<bool>,
) -> Result<(Summary, bool)> {
    // Instantiate every sink before reading any input: a bad config or a
    // component that refuses its settings starts nothing.
    let live = matches!(&spec.source, SourceSpec::Generator(g) if g.rate > 0.0);
    // A listener binds before any sink starts: a port in use starts nothing.
    let bound = match &spec.source {
        SourceSpec::Listener(l) => Some(
            tokio::net::TcpListener::bind(l.listen)
                .await
                .with_context(|| format!("[{}] cannot listen on {}", l.name, l.listen))?,
        ),
        _ => None,
    };
    let routed = spec.source.routed(&spec.outputs);
    let (group_bytes, in_memory_ok) = match &spec.source {
        SourceSpec::Listener(l) => (l.max_body_size, l.acknowledge_from_memory),
        _ => (0, false),
    };
    let mut routes = Routes::new(in_memory_ok);
    let mut sinks = Vec::new();
    for ((output, sandbox), runtime) in spec.outputs.iter().zip(&spec.sandboxes).zip(runtimes) {
        let instance = runtime
            .instantiate_sandboxed(output, &sandbox.limits)
            .await
            .with_context(|| format!("sink [{}] could not be started", output.settings.name))?;
        let ctx = SinkCtx {
            name: output.settings.name.clone(),
            output: output.clone(),
            limits: sandbox.limits,
            runtime,
            drain_timeout: opts.drain_timeout,
            live,
            retired: Summary::default(),
            group_bytes,
            in_memory_ok,
        };
        let jobs = routed.contains(&sinks.len()).then(|| {
            let (tx, rx) = mpsc::channel(relay::JOB_QUEUE);
            routes.add(output, tx);
            rx
        });
        sinks.push((ctx, instance, jobs));
    }
    let mut fanout = Fanout::new(live);
    let mut tasks = Vec::new();
    let mut handles = Vec::new();
    let engine = sinks
        .first()
        .map(|(ctx, _, _)| ctx.runtime.engine().clone());
    // With a listener, the sinks stop once it has answered its last
    // request, so none is cut off between storing and answering.
    let (sinks_stop_tx, sinks_stop) = watch::channel(false);
    let sink_stop = if bound.is_some() {
        sinks_stop
    } else {
        stop.clone()
    };
    for (ctx, instance, jobs) in sinks {
        let inlet = fanout.add(&ctx.name, QUEUE_CHUNKS);
        let (tx, swaps) = mpsc::channel(1);
        handles.push(SinkHandle {
            name: ctx.name.clone(),
            output: ctx.output.clone(),
            limits: ctx.limits,
            path: ctx.runtime.path().to_path_buf(),
            tx,
        });
        tasks.push(tokio::spawn(sink_task(
            ctx,
            instance,
            inlet,
            jobs,
            swaps,
            sink_stop.clone(),
        )));
    }
    let dispatcher = match (opts.swaps, opts.reconfigs, engine) {
        (Some(requests), Some(reconfigs), Some(engine)) => Some(tokio::spawn(swap::dispatch(
            requests, reconfigs, handles, engine, opts.cache,
        ))),
        _ => None,
    };
    let source = match spec.source {
        SourceSpec::Stdin => tokio::spawn(read_stdin(fanout, stop.clone())),
        SourceSpec::Generator(g) => tokio::spawn(generate(g, fanout, stop.clone())),
        SourceSpec::Listener(l) => {
            let bound = bound.expect("bound above");
            let mut stop = stop.clone();
            tokio::spawn(async move {
                log::info(
                    &format!("listener {}", l.name),
                    &format!(
                        "listening on http://{} for InfluxDB writes (/write, /api/v2/write); {}",
                        l.listen,
                        routes.describe()
                    ),
                );
                listener::serve(bound, l, std::sync::Arc::new(routes), async move {
                    stopped(&mut stop).await
                })
                .await;
                drop(fanout);
                let _ = sinks_stop_tx.send(true);
            })
        }
    };
    if let Err(e) = source.await {
        log::error("source", &format!("input stopped: {e}"));
    }
    let mut total = Summary::default();
    let mut failed = false;
    let _dispatcher = dispatcher.map(AbortOnDrop);
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
    let mut carry: Vec<u8> = Vec::new();
    let mut line_no = 1u64;
    let mut spare = vec![0u8; 256 * 1024];
    loop {
        // A blocking read straight into our buffer (tokio's stdin would
        // read into one of its own and copy).
        let mut buf = std::mem::take(&mut spare);
        let read = tokio::task::spawn_blocking(move || loop {
            match std::io::stdin().lock().read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => return (r, buf),
            }
        });
        let n = tokio::select! {
            r = read => match r {
                Ok((Ok(n), b)) => {
                    spare = b;
                    n
                }
                Ok((Err(e), _)) => {
                    log::error("source", &format!("cannot read standard input: {e}"));
                    0
                }
                Err(e) => {
                    log::error("source", &format!("the standard input reader failed: {e}"));
                    0
                }
            },
            _ = stop.changed() => break,
        };
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&spare[..n]);
        if let Some(end) = memchr::memrchr(b'\n', &carry) {
            let rest = carry.split_off(end + 1);
            let chunk = std::mem::replace(&mut carry, rest);
            let lines = memchr::memchr_iter(b'\n', &chunk).count() as u64;
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

/// Stops a background task when the run ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a sink task needs to run, and to rebuild, its instance.
struct SinkCtx {
    name: String,
    output: OutputSpec,
    limits: Limits,
    runtime: Runtime,
    drain_timeout: Duration,
    /// The source cannot wait (a generator with a rate): the sink takes
    /// all it is given, spilling to its backlog, rather than hold it back.
    live: bool,
    /// Counters of instances closed by a config reload.
    retired: Summary,
    /// Most bytes of listener writes committed in one group.
    group_bytes: usize,
    /// `acknowledge_from_memory`: no persistent storage, answer anyway.
    in_memory_ok: bool,
}

/// A sink's input, which outlives its instances.
struct Feed {
    rx: mpsc::Receiver<Chunk>,
    /// The chunk an instance crashed on, written again to the next one.
    retry: Option<Chunk>,
    /// The part of a chunk the sink had no room for yet.
    rest: Option<Chunk>,
    /// The source has ended and the queue was read to its end.
    input_done: bool,
    /// When draining gives up: `drain_timeout` after the input ended.
    drain_deadline: Option<Instant>,
    rejections_logged: u64,
    /// Swaps for this sink (see `swap`); `None` once no more can come.
    swaps: Option<mpsc::Receiver<SwapCmd>>,
    /// Listener writes for this sink (see `relay`); `None` without.
    jobs: Option<mpsc::Receiver<DurableJob>>,
    /// A job taken from `jobs` that did not fit in the last group.
    next_job: Option<DurableJob>,
}

/// How an instance crashed, and the chunk it was writing if any (with
/// whether that chunk had already crashed an instance before).
struct Crash {
    fault: Fault,
    chunk: Option<(Chunk, bool)>,
}

/// What the live instance last told, for the accounting of a crash.
#[derive(Default)]
struct Seen {
    stats: Option<Stats>,
    /// Points it accepted since those stats.
    accepted_since: u64,
}

/// Counters carried over the instances of one sink.
#[derive(Default)]
struct Ledger {
    /// The counters of crashed instances, as of their last stats.
    gone: Summary,
    /// Points lost in crashes: accepted but only in a crashed instance's
    /// memory, input that crashed it twice, and input left in the queue of
    /// a sink that was down when the run ended.
    lost: u64,
    crashes: u32,
    /// Points a crashed instance had in its backlog on disk.
    on_disk: u64,
}

/// The number of lines (points) in a chunk.
fn lines_in(chunk: &Chunk) -> u64 {
    let b = chunk.data();
    let newlines = memchr::memchr_iter(b'\n', b).count() as u64;
    newlines + u64::from(b.last().is_some_and(|c| *c != b'\n'))
}

/// `lines 10-19` of the input, for log lines.
fn line_range(chunk: &Chunk) -> String {
    let n = lines_in(chunk).max(1);
    format!(
        "input lines {}-{}",
        chunk.first_line,
        chunk.first_line + n - 1
    )
}

/// Resolves once `stop` is set; never if the sender is gone without.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sink_task(
    mut ctx: SinkCtx,
    first: SinkInstance,
    inlet: Inlet,
    jobs: Option<mpsc::Receiver<DurableJob>>,
    swaps: mpsc::Receiver<SwapCmd>,
    mut stop: watch::Receiver<bool>,
) -> SinkResult {
    let name = ctx.name.clone();
    let name = name.as_str();
    let missed = inlet.missed.clone();
    let mut feed = Feed {
        rx: inlet.rx,
        retry: None,
        rest: None,
        input_done: false,
        drain_deadline: None,
        rejections_logged: 0,
        swaps: Some(swaps),
        jobs,
        next_job: None,
    };
    let mut ledger = Ledger::default();
    let mut backoff = Backoff::default();
    let mut instance = Some(first);
    let mut started = Instant::now();
    let mut seen = Seen::default();
    while let Some(sink) = instance.as_mut() {
        let crash = match drive(&mut ctx, sink, &mut feed, &mut seen, &mut stop).await {
            Ok(()) => break,
            Err(crash) => crash,
        };
        // Tear the instance down: dropping its Store frees all it holds.
        instance = None;
        let mut what = format!("sink component crashed: {}", crash.fault);
        let mut dead = Some((std::mem::take(&mut seen), crash.chunk));
        loop {
            let delay = backoff.next_delay(started.elapsed());
            let why = no_restart(&ctx, &mut feed, &stop, delay);
            match &why {
                Some(why) => log::error(name, &format!("{what}; not restarting it: {why}")),
                None => log::error(
                    name,
                    &format!(
                        "{what}; restarting it from its backlog in {} s (restart {})",
                        delay.as_secs(),
                        backoff.restarts()
                    ),
                ),
            }
            if let Some((seen, chunk)) = dead.take() {
                ledger.bury(&ctx, seen, chunk, &mut feed);
            }
            if why.is_some() {
                ledger.abandon(name, &mut feed);
                break;
            }
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => {
                    log::error(name, "not restarting the sink component: the run is stopping");
                    ledger.abandon(name, &mut feed);
                    break;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            started = Instant::now();
            match ctx
                .runtime
                .instantiate_sandboxed(&ctx.output, &ctx.limits)
                .await
            {
                Ok(fresh) => {
                    log::info(
                        name,
                        &format!(
                            "sink component restarted (restart {}); it reopened its backlog",
                            backoff.restarts()
                        ),
                    );
                    instance = Some(fresh);
                    break;
                }
                Err(e) => what = format!("sink component could not be restarted: {e:#}"),
            }
        }
    }
    // Whatever happened, undelivered points go to the backlog.
    let mut closing = None;
    if let Some(mut sink) = instance {
        let result = async {
            sink.shutdown().await?;
            let st = sink.stats().await?;
            Ok::<_, wasmtime::Error>(st)
        }
        .await;
        match result {
            Ok(st) => {
                closing = Some(st);
                if let Err(e) = sink.close().await {
                    log::warn(name, &format!("closing the sink component failed: {e}"));
                }
            }
            Err(e) => {
                let fault = sink.fault(&e);
                drop(sink);
                log::error(
                    name,
                    &format!(
                        "sink component crashed: {fault}; not restarting it: the run is ending"
                    ),
                );
                ledger.bury(&ctx, seen, None, &mut feed);
            }
        }
    }
    let mut summary = ledger.gone;
    summary.add(&ctx.retired);
    match &closing {
        Some(st) => summary.add(&Summary {
            accepted: st.accepted,
            delivered: st.delivered,
            backlogged: st.pending,
            dropped: st.dropped,
            rejected: st.rejected,
        }),
        None => summary.backlogged += ledger.on_disk,
    }
    summary.dropped += missed.load(Ordering::Relaxed) + ledger.lost;
    if ledger.crashes == 0 {
        return Ok(summary);
    }
    let e = wasmtime::format_err!(
        "sink [{name}] failed: its component crashed {} time{}; {} point{} lost in the crashes \
         (counted in dropped)",
        ledger.crashes,
        if ledger.crashes == 1 { "" } else { "s" },
        ledger.lost,
        if ledger.lost == 1 { " was" } else { "s were" },
    );
    Err((summary, e))
}

/// Why the crashed sink is not to be restarted after `delay`, if so: the
/// run is stopping, or its input has ended and the drain timeout ends
/// before then.
fn no_restart(
    ctx: &SinkCtx,
    feed: &mut Feed,
    stop: &watch::Receiver<bool>,
    delay: Duration,
) -> Option<String> {
    if *stop.borrow() {
        return Some("the run is stopping".into());
    }
    if feed.input_done || feed.rx.is_closed() {
        let now = Instant::now();
        let deadline = *feed.drain_deadline.get_or_insert(now + ctx.drain_timeout);
        if now + delay >= deadline {
            return Some(format!(
                "the input has ended and the drain timeout ({} s) ends before the restart",
                ctx.drain_timeout.as_secs_f64()
            ));
        }
    }
    None
}

impl Ledger {
    /// Account for a crashed instance: its counters as last seen, the
    /// points only in its memory (lost), and the chunk it was writing
    /// (written again once, dropped if it crashes an instance twice).
    fn bury(&mut self, ctx: &SinkCtx, seen: Seen, chunk: Option<(Chunk, bool)>, feed: &mut Feed) {
        let name = ctx.name.as_str();
        self.crashes += 1;
        let persistent = ctx.output.settings.enable_persistent_storage;
        let mut in_memory = seen.accepted_since;
        self.gone.accepted += seen.accepted_since;
        if let Some(st) = &seen.stats {
            self.gone.accepted += st.accepted;
            self.gone.delivered += st.delivered;
            self.gone.rejected += st.rejected;
            self.gone.dropped += st.dropped;
            // Its backlog file stays for the next instance; without
            // persistent storage the backlog was memory too.
            if persistent {
                in_memory += st.pending.saturating_sub(st.backlog_points);
                self.on_disk = st.backlog_points;
            } else {
                in_memory += st.pending;
            }
        }
        if in_memory > 0 {
            self.lost += in_memory;
            log::error(
                name,
                &format!(
                    "{in_memory} accepted points were only in the crashed instance's memory \
                     and are lost (counted in dropped)"
                ),
            );
        }
        match chunk {
            Some((chunk, true)) => {
                let n = lines_in(&chunk);
                self.lost += n;
                log::error(
                    name,
                    &format!(
                        "{} crashed the sink component twice; their {n} points are dropped \
                         (counted in dropped)",
                        line_range(&chunk)
                    ),
                );
            }
            Some((chunk, false)) => {
                log::info(
                    name,
                    &format!(
                        "{} were being written when it crashed; they will be written again \
                         to the restarted instance",
                        line_range(&chunk)
                    ),
                );
                feed.retry = Some(chunk);
            }
            None => {}
        }
    }

    /// The sink stays down: what is left of its input is lost.
    fn abandon(&mut self, name: &str, feed: &mut Feed) {
        let mut n = [feed.retry.take(), feed.rest.take()]
            .iter()
            .flatten()
            .map(lines_in)
            .sum::<u64>();
        while let Ok(chunk) = feed.rx.try_recv() {
            n += lines_in(&chunk);
        }
        feed.rx.close();
        feed.input_done = true;
        if n > 0 {
            self.lost += n;
            log::error(
                name,
                &format!(
                    "{n} input points queued for the sink were never written to it and are \
                     lost (counted in dropped)"
                ),
            );
        }
    }
}

/// Poll once and refresh the stats; returns how long the sink may sleep.
async fn turn(sink: &mut SinkInstance, seen: &mut Seen) -> std::result::Result<Duration, Crash> {
    let wait = sink.poll().await.map_err(|e| crash(sink, e))?;
    refresh(sink, seen).await?;
    Ok(Duration::from_nanos(wait).min(MAX_SLEEP))
}

async fn refresh(sink: &mut SinkInstance, seen: &mut Seen) -> std::result::Result<(), Crash> {
    let st = sink.stats().await.map_err(|e| crash(sink, e))?;
    seen.stats = Some(st);
    seen.accepted_since = 0;
    Ok(())
}

fn crash(sink: &SinkInstance, e: wasmtime::Error) -> Crash {
    Crash {
        fault: sink.fault(&e),
        chunk: None,
    }
}

/// Write one chunk; a crash hands the chunk back in the `Crash`.
async fn write(
    name: &str,
    sink: &mut SinkInstance,
    feed: &mut Feed,
    seen: &mut Seen,
    chunk: Chunk,
    retried: bool,
) -> std::result::Result<(), Crash> {
    let result = match sink.write_lines(chunk.data()).await {
        Ok(r) => r,
        Err(e) => {
            return Err(Crash {
                fault: sink.fault(&e),
                chunk: Some((chunk, retried)),
            })
        }
    };
    seen.accepted_since += u64::from(result.accepted);
    for r in &result.rejected {
        feed.rejections_logged += 1;
        if feed.rejections_logged <= MAX_REJECTION_LOGS {
            log::warn(
                name,
                &format!(
                    "input line {} rejected: {}",
                    chunk.first_line + r.index as u64,
                    r.reason
                ),
            );
        } else if feed.rejections_logged == MAX_REJECTION_LOGS + 1 {
            log::warn(name, "further rejected lines are counted but not logged");
        }
    }
    refresh(sink, seen).await
}

/// Write as much of `chunk` as the sink has room for; keep the rest.
async fn write_within(
    name: &str,
    sink: &mut SinkInstance,
    feed: &mut Feed,
    seen: &mut Seen,
    chunk: Chunk,
    room: u64,
) -> std::result::Result<(), Crash> {
    let (now, rest) = chunk.split_lines(room);
    feed.rest = rest;
    write(name, sink, feed, seen, now, false).await
}

/// Feed the sink until the input ends, then drain until nothing is pending
/// or `drain_timeout` passes; `stop` cuts both short. Ends with `Err` when
/// a call into the instance fails: the instance must then be discarded.
async fn drive(
    ctx: &mut SinkCtx,
    sink: &mut SinkInstance,
    feed: &mut Feed,
    seen: &mut Seen,
    stop: &mut watch::Receiver<bool>,
) -> std::result::Result<(), Crash> {
    let name = ctx.name.clone();
    let name = name.as_str();
    if let Some(chunk) = feed.retry.take() {
        write(name, sink, feed, seen, chunk, true).await?;
    }
    let wake = sink.wake();
    while !feed.input_done {
        let wait = turn(sink, seen).await?;
        // A sink with the server up takes what it can send soon; the rest
        // waits here, and a full queue holds the source back (or, for a
        // live source, makes it skip this sink: counted).
        let room = match &seen.stats {
            _ if ctx.live => u64::MAX,
            Some(st) => st.room,
            None => 0,
        };
        let room = room.min(
            std::env::var("XCALL")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX),
        );
        if room > 0 {
            if let Some(rest) = feed.rest.take() {
                write_within(name, sink, feed, seen, rest, room).await?;
                continue;
            }
        }
        tokio::select! {
            biased;
            _ = stopped(stop) => return Ok(()),
            cmd = next_swap(&mut feed.swaps) => swap_to(ctx, sink, seen, cmd).await?,
            job = next_job(&mut feed.next_job, &mut feed.jobs) => match job {
                Some(job) => commit(ctx, sink, feed, seen, job).await?,
                None => feed.jobs = None,
            },
            chunk = feed.rx.recv(), if room > 0 && feed.rest.is_none() => match chunk {
                Some(chunk) => write_within(name, sink, feed, seen, chunk, room).await?,
                None => feed.input_done = true,
            },
            _ = wake.rung() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let deadline = *feed
        .drain_deadline
        .get_or_insert_with(|| Instant::now() + ctx.drain_timeout);
    sink.flush().await.map_err(|e| crash(sink, e))?;
    loop {
        let wait = turn(sink, seen).await?;
        if seen.stats.as_ref().is_some_and(|st| st.pending == 0) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            log::warn(name, &format!("drain timeout ({} s) reached with points undelivered; they stay in the backlog", ctx.drain_timeout.as_secs_f64()));
            return Ok(());
        }
        tokio::select! {
            _ = stopped(stop) => return Ok(()),
            cmd = next_swap(&mut feed.swaps) => swap_to(ctx, sink, seen, cmd).await?,
            _ = wake.rung() => {}
            _ = tokio::time::sleep(wait.min(deadline - now)) => {}
        }
    }
}

/// The next listener write for this sink: the one left over from the last
/// group, else the queue's next; never, without a listener.
async fn next_job(
    carry: &mut Option<DurableJob>,
    jobs: &mut Option<mpsc::Receiver<DurableJob>>,
) -> Option<DurableJob> {
    if let Some(job) = carry.take() {
        return Some(job);
    }
    match jobs.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Commit `first` and the listener writes waiting behind it as one group.
async fn commit(
    ctx: &SinkCtx,
    sink: &mut SinkInstance,
    feed: &mut Feed,
    seen: &mut Seen,
    first: DurableJob,
) -> std::result::Result<(), Crash> {
    let group = match feed.jobs.as_mut() {
        Some(rx) => relay::gather(first, rx, &mut feed.next_job, ctx.group_bytes),
        None => vec![first],
    };
    let accepted = relay::commit(sink, group, ctx.in_memory_ok)
        .await
        .map_err(|e| crash(sink, e))?;
    seen.accepted_since += accepted;
    refresh(sink, seen).await
}

/// New settings: shut the old instance down (its memory goes to the
/// backlog) and open a new one with them; if that fails, open again with
/// the old settings.
async fn reopen(
    ctx: &mut SinkCtx,
    sink: &mut SinkInstance,
    seen: &mut Seen,
    output: OutputSpec,
    limits: Limits,
    reply: tokio::sync::oneshot::Sender<std::result::Result<String, String>>,
) -> std::result::Result<(), Crash> {
    sink.shutdown().await.map_err(|e| crash(sink, e))?;
    let st = sink.stats().await.map_err(|e| crash(sink, e))?;
    let (fresh, kept) = match ctx.runtime.instantiate_sandboxed(&output, &limits).await {
        Ok(fresh) => (fresh, None),
        Err(e) => {
            let why = format!("the new settings could not be opened: {e:#}");
            match ctx
                .runtime
                .instantiate_sandboxed(&ctx.output, &ctx.limits)
                .await
            {
                Ok(again) => (again, Some(why + "; the old settings go on")),
                Err(e2) => {
                    let _ = reply.send(Err(why.clone()));
                    return Err(Crash {
                        fault: Fault::Other {
                            call: crate::sandbox::Call::Open,
                            error: format!(
                                "{why}; reopening with the old settings failed too: {e2:#}"
                            ),
                        },
                        chunk: None,
                    });
                }
            }
        }
    };
    let old = std::mem::replace(sink, fresh);
    let _ = old.close().await;
    // The old instance's counters end here; its pending points are in the
    // backlog, which the new instance reports.
    ctx.retired.add(&Summary {
        accepted: st.accepted,
        delivered: st.delivered,
        backlogged: 0,
        dropped: st.dropped,
        rejected: st.rejected,
    });
    seen.stats = None;
    seen.accepted_since = 0;
    match kept {
        None => {
            let line = "reopened with the reloaded settings".to_string();
            log::info(&ctx.name, &line);
            ctx.output = output;
            ctx.limits = limits;
            let _ = reply.send(Ok(line));
        }
        Some(why) => {
            log::error(&ctx.name, &why);
            let _ = reply.send(Err(why));
        }
    }
    Ok(())
}

/// The next swap for this sink; pending forever once none can come.
async fn next_swap(swaps: &mut Option<mpsc::Receiver<SwapCmd>>) -> SwapCmd {
    if let Some(rx) = swaps.as_mut() {
        if let Some(cmd) = rx.recv().await {
            return cmd;
        }
        *swaps = None;
    }
    std::future::pending().await
}

/// Carry out a swap between two calls; the old instance failing while it
/// is snapshotted is its crash.
async fn swap_to(
    ctx: &mut SinkCtx,
    sink: &mut SinkInstance,
    seen: &mut Seen,
    cmd: SwapCmd,
) -> std::result::Result<(), Crash> {
    let (runtime, prepared, reply) = match cmd {
        SwapCmd::Component {
            runtime,
            prepared,
            reply,
        } => (runtime, prepared, reply),
        SwapCmd::Settings {
            output,
            limits,
            reply,
        } => return reopen(ctx, sink, seen, *output, limits, reply).await,
    };
    let outcome = swap::swap_instance(
        &ctx.name,
        &ctx.output,
        &ctx.limits,
        &ctx.runtime,
        sink,
        &runtime,
        *prepared,
    )
    .await;
    match outcome {
        Swapped::Done { line, stats } => {
            log::info(&ctx.name, &line);
            seen.stats = Some(stats);
            seen.accepted_since = 0;
            ctx.runtime = *runtime;
            let _ = reply.send(Ok(line));
            Ok(())
        }
        Swapped::Kept(why) => {
            let _ = reply.send(Err(why));
            Ok(())
        }
        Swapped::OldCrashed(e) => {
            let _ = reply.send(Err(format!(
                "the running instance failed while its state was taken: {e:#}"
            )));
            Err(crash(sink, e))
        }
    }
}
