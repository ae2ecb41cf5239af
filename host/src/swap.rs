//! Live upgrade of a running sink: a new component version takes over the
//! old one's state between two calls.
//!
//! The dispatcher compiles the new component (through the cache) and makes
//! an instance for each sink off the hot path; the sink's task then, between
//! two calls, takes `snapshot()` from the old instance, `restore`s the new
//! one from it, checks it with a first `poll`, and switches. Points that
//! arrive meanwhile wait in the sink's queue. If the new version refuses
//! the state or fails on its first calls, the old version goes on (rebuilt
//! from the same snapshot if the new one may have touched the backlog).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::admin::{SwapReport, SwapRequest};
use crate::bindings::Stats;
use crate::config::OutputSpec;
use crate::log;
use crate::runtime::{Prepared, Runtime, SinkInstance};
use crate::sandbox::Limits;

/// What a sink's task is asked to change, between two calls.
pub enum SwapCmd {
    /// Another component: its runtime and a prepared instance.
    Component {
        runtime: Box<Runtime>,
        prepared: Box<Prepared>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Other settings for the same component (a config reload): the old
    /// instance shuts down (its memory goes to the backlog) and a new one
    /// opens with these.
    Settings {
        output: Box<OutputSpec>,
        limits: Limits,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// New settings for the sink called `name` (SIGHUP config reload).
#[derive(Debug)]
pub struct ReconfigRequest {
    pub output: OutputSpec,
    pub limits: Limits,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// How a swap went, for the sink task.
pub enum Swapped {
    /// The new version runs; its first stats.
    Done { line: String, stats: Stats },
    /// The old version goes on; why.
    Kept(String),
    /// The old instance failed while being snapshotted: a crash of it.
    OldCrashed(wasmtime::Error),
}

/// Swap `sink` (running `current`) to `cmd`'s version. On `Done` the caller
/// must adopt `cmd.runtime` as its runtime; the reply is sent here.
pub async fn swap_instance(
    name: &str,
    output: &OutputSpec,
    limits: &Limits,
    current: &Runtime,
    sink: &mut SinkInstance,
    runtime: &Runtime,
    mut prepared: Prepared,
) -> Swapped {
    let to = match prepared.version().await {
        Ok(v) => v,
        Err(e) => return Swapped::Kept(format!("the new component failed at once: {e:#}")),
    };
    let from = sink.version().await.unwrap_or_else(|_| "?".into());
    let t0 = Instant::now();
    let snapshot = match sink.snapshot().await {
        Ok(s) => s,
        Err(e) => return Swapped::OldCrashed(e),
    };
    let taken = t0.elapsed();
    let mut new = match prepared.restore(&snapshot).await {
        Ok(Ok(new)) => new,
        Ok(Err(refused)) => {
            return Swapped::Kept(format!(
                "{to} refused the state of {from}: {refused}; {from} keeps running"
            ))
        }
        Err(e) => {
            return Swapped::Kept(format!(
                "{to} failed to restore the state: {e:#}; {from} keeps running"
            ))
        }
    };
    let pause = t0.elapsed();
    // First calls on the new instance; a failure sends us back.
    let check = async {
        new.poll().await?;
        new.stats().await
    }
    .await;
    match check {
        Ok(stats) => {
            let old = std::mem::replace(sink, new);
            if let Err(e) = old.close().await {
                log::warn(name, &format!("closing the old instance failed: {e}"));
            }
            let line = format!(
                "swapped the sink component {from} → {to} (code {}…) in {} (snapshot {}, {} bytes of state)",
                &runtime.hash()[..12],
                fmt_ms(pause),
                fmt_ms(taken),
                snapshot.len()
            );
            Swapped::Done { line, stats }
        }
        Err(e) => {
            let fault = new.fault(&e);
            drop(new);
            // It may have sent or consumed backlog points: rebuild the old
            // version from the same snapshot over the backlog as it is now.
            let rebuilt = match current.prepare(output, limits).await {
                Ok(p) => p.restore(&snapshot).await.ok().and_then(Result::ok),
                Err(_) => None,
            };
            let how = match rebuilt {
                Some(old) => {
                    let stale = std::mem::replace(sink, old);
                    drop(stale);
                    "restored from the same snapshot"
                }
                None => "kept as it was",
            };
            Swapped::Kept(format!(
                "{to} failed on its first calls ({fault}); {from} {how}"
            ))
        }
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// One sink as the dispatcher knows it.
pub struct SinkHandle {
    pub name: String,
    pub output: OutputSpec,
    pub limits: Limits,
    /// The component file it runs now.
    pub path: PathBuf,
    pub tx: mpsc::Sender<SwapCmd>,
}

/// Turn swap requests into per-sink swaps, one request at a time.
pub async fn dispatch(
    mut requests: mpsc::Receiver<SwapRequest>,
    mut reconfigs: mpsc::Receiver<ReconfigRequest>,
    mut sinks: Vec<SinkHandle>,
    engine: wasmtime::Engine,
    cache: Option<PathBuf>,
) {
    loop {
        let req = tokio::select! {
            r = requests.recv() => match r {
                Some(r) => r,
                None => return,
            },
            Some(r) = reconfigs.recv() => {
                let name = r.output.settings.name.clone();
                let result = match sinks.iter_mut().find(|s| s.name == name) {
                    None => Err(format!("no running sink [{name}]; adding outputs needs a restart")),
                    Some(s) => {
                        let (reply, answer) = oneshot::channel();
                        let cmd = SwapCmd::Settings {
                            output: Box::new(r.output.clone()),
                            limits: r.limits,
                            reply,
                        };
                        if s.tx.send(cmd).await.is_err() {
                            Err("the sink has stopped".into())
                        } else {
                            let result = answer.await.unwrap_or_else(|_| Err("the sink stopped".into()));
                            if result.is_ok() {
                                s.output = r.output;
                                s.limits = r.limits;
                            }
                            result
                        }
                    }
                };
                let _ = r.reply.send(result);
                continue;
            }
        };
        let mut report = SwapReport {
            ok: true,
            lines: Vec::new(),
        };
        let chosen: Vec<usize> = (0..sinks.len())
            .filter(|&i| {
                req.from
                    .as_ref()
                    .is_none_or(|f| same_file(f, &sinks[i].path))
            })
            .collect();
        if chosen.is_empty() {
            report.ok = false;
            report.lines.push(format!(
                "no sink runs {}",
                req.from.as_deref().unwrap_or(Path::new("?")).display()
            ));
        }
        let runtime = if chosen.is_empty() {
            None
        } else {
            let (engine, path, cache) = (engine.clone(), req.path.clone(), cache.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                Runtime::load_cached(&engine, &path, cache.as_deref())
            })
            .await;
            match loaded {
                Ok(Ok(r)) => Some(r),
                Ok(Err(e)) => {
                    report.ok = false;
                    report.lines.push(format!(
                        "cannot use {}: {e:#}; every sink keeps its version",
                        req.path.display()
                    ));
                    None
                }
                Err(e) => {
                    report.ok = false;
                    report.lines.push(format!("compiling failed: {e}"));
                    None
                }
            }
        };
        if let Some(runtime) = runtime {
            for i in chosen {
                let s = &mut sinks[i];
                let result = match runtime.prepare(&s.output, &s.limits).await {
                    Err(e) => Err(format!("cannot instantiate the new component: {e:#}")),
                    Ok(prepared) => {
                        let (reply, answer) = oneshot::channel();
                        let cmd = SwapCmd::Component {
                            runtime: Box::new(runtime.clone()),
                            prepared: Box::new(prepared),
                            reply,
                        };
                        if s.tx.send(cmd).await.is_err() {
                            Err("the sink has stopped".into())
                        } else {
                            answer
                                .await
                                .unwrap_or_else(|_| Err("the sink stopped during the swap".into()))
                        }
                    }
                };
                match result {
                    Ok(line) => {
                        s.path = req.path.clone();
                        report.lines.push(format!("[{}] {line}", s.name));
                    }
                    Err(why) => {
                        report.ok = false;
                        log::error(&s.name, &format!("swap ({}) failed: {why}", req.trigger));
                        report
                            .lines
                            .push(format!("[{}] swap failed: {why}", s.name));
                    }
                }
            }
        }
        let _ = req.reply.send(report);
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
