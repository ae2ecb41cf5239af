//! The `influx-sink` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use influx_sink_host::config::{self, PipelineSpec};
use influx_sink_host::pipeline::{self, RunOptions};
use influx_sink_host::runtime::Runtime;
use influx_sink_host::swap::ReconfigRequest;
use influx_sink_host::{admin, log, precompile, sandbox, simulate};

const USAGE: &str = "usage:
  influx-sink run CONFIG [--component PATH] [--drain-timeout SECONDS] [--admin [IP:]PORT]
                  [--cache-dir DIR | --no-cache] [--no-watch]
  influx-sink swap --admin [IP:]PORT COMPONENT
  influx-sink compile COMPONENT -o FILE.cwasm
  influx-sink validate CONFIG
  influx-sink simulate CONFIG --outage SECONDS [--rate POINTS_PER_SECOND] [--output SECTION] [--hang] [--json]
  influx-sink backlog stats DIR [--json]
  influx-sink backlog dump DIR
  influx-sink backlog verify DIR
  influx-sink backlog import-pickle FILE.pkl --into DIR";

/// Exit codes: 0 all delivered, 1 failure, 2 bad usage or config,
/// 3 points remain in the backlog.
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => cmd_run(&args[1..]),
        Some("validate") => cmd_validate(&args[1..]),
        Some("simulate") => cmd_simulate(&args[1..]),
        Some("compile") => cmd_compile(&args[1..]),
        Some("swap") => cmd_swap(&args[1..]),
        Some("backlog") => influx_sink_host::backlog_cli::main(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => usage_error("expected a command"),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("influx-sink: {msg}\n{USAGE}");
    ExitCode::from(2)
}

/// Split `args` into positionals and `--flag [value]` options.
struct Args {
    positional: Vec<String>,
    options: Vec<(String, Option<String>)>,
}

fn parse_args(
    args: &[String],
    flags_with_value: &[&str],
    switches: &[&str],
) -> Result<Args, String> {
    let mut out = Args {
        positional: Vec::new(),
        options: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if flags_with_value.contains(&a.as_str()) {
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            out.options.push((a.clone(), Some(v.clone())));
        } else if switches.contains(&a.as_str()) {
            out.options.push((a.clone(), None));
        } else if a.starts_with("--") {
            return Err(format!("unknown option {a}"));
        } else {
            out.positional.push(a.clone());
        }
    }
    Ok(out)
}

impl Args {
    fn value(&self, flag: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .and_then(|(_, v)| v.as_deref())
    }
    fn has(&self, flag: &str) -> bool {
        self.options.iter().any(|(f, _)| f == flag)
    }
    fn number(&self, flag: &str) -> Result<Option<f64>, String> {
        self.value(flag)
            .map(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .ok_or_else(|| format!("{flag} expects a number of 0 or more, got `{v}`"))
            })
            .transpose()
    }
}

fn load_config(args: &Args) -> Result<PipelineSpec, ExitCode> {
    let [path] = args.positional.as_slice() else {
        return Err(usage_error("expected exactly one CONFIG file"));
    };
    match config::load(std::path::Path::new(path)) {
        Ok(spec) => {
            for w in &spec.warnings {
                log::warn("config", w);
            }
            Ok(spec)
        }
        Err(e) => {
            eprintln!("influx-sink: invalid configuration: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn cmd_validate(raw: &[String]) -> ExitCode {
    let args = match parse_args(raw, &[], &[]) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let spec = match load_config(&args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    for (o, sandbox) in spec.outputs.iter().zip(&spec.sandboxes) {
        println!("[{}]", o.settings.name);
        for (k, v) in o.settings.describe() {
            println!("{k} = {v}");
        }
        println!("# backlog directory: {}", o.backlog_dir.display());
        // Host keys, as comments: the settings above are the component's.
        println!(
            "# sandbox: max_memory_mb = {}, max_call_ms = {}, component = {}",
            sandbox.limits.max_memory_mb,
            sandbox.limits.max_call_ms,
            sandbox
                .component
                .as_ref()
                .map_or("(--component)".to_string(), |p| p.display().to_string())
        );
        println!();
    }
    match &spec.source {
        config::SourceSpec::Stdin => println!("# source: line protocol on standard input"),
        config::SourceSpec::Generator(g) => println!(
            "# source: generator rate={} count={} fields={} series={} measurement={}",
            g.rate, g.count, g.fields, g.series, g.measurement
        ),
        config::SourceSpec::Listener(l) => {
            let routed: Vec<String> = spec
                .source
                .routed(&spec.outputs)
                .into_iter()
                .map(|i| format!("[{}]", spec.outputs[i].settings.name))
                .collect();
            println!(
                "# source: InfluxDB listener [{}] on {} (max_body_size = {}, auth: {}) -> {}",
                l.name,
                l.listen,
                l.max_body_size,
                if l.has_credentials() {
                    "required"
                } else if l.allow_remote_without_auth {
                    "none, any address"
                } else {
                    "none, loopback only"
                },
                routed.join(" ")
            )
        }
    }
    ExitCode::SUCCESS
}

fn cmd_simulate(raw: &[String]) -> ExitCode {
    let args = match parse_args(
        raw,
        &["--outage", "--rate", "--output"],
        &["--json", "--hang"],
    ) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let spec = match load_config(&args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (outage, rate) = match (args.number("--outage"), args.number("--rate")) {
        (Ok(Some(o)), Ok(r)) => (o, r.unwrap_or(10.0)),
        (Ok(None), _) => return usage_error("simulate needs --outage SECONDS"),
        (Err(e), _) | (_, Err(e)) => return usage_error(&e),
    };
    let chosen: Vec<_> = match args.value("--output") {
        Some(name) => spec
            .outputs
            .iter()
            .filter(|o| o.settings.name == name)
            .collect(),
        None => spec.outputs.iter().take(1).collect(),
    };
    let Some(output) = chosen.first() else {
        return usage_error("no output section by that name");
    };
    let report = simulate::run(&output.settings, outage, rate, args.has("--hang"));
    if args.has("--json") {
        println!(
            "{}",
            simulate::to_json(&output.settings.name, outage, rate, &report)
        );
    } else {
        print!(
            "{}",
            simulate::to_text(&output.settings, outage, rate, &report)
        );
    }
    ExitCode::SUCCESS
}

/// Where to find the component when `--component` is not given: beside the
/// executable, then in this workspace's build output.
fn default_component() -> PathBuf {
    const FILE: &str = "influx_sink_component.wasm";
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
    {
        let beside = dir.join(FILE);
        if beside.exists() {
            return beside;
        }
        // target/release/influx-sink -> target/wasm32-wasip2/ship/
        if let Some(target) = dir.parent() {
            let built = target.join("wasm32-wasip2").join("ship").join(FILE);
            if built.exists() {
                return built;
            }
        }
    }
    PathBuf::from(FILE)
}

/// `influx-sink compile COMPONENT -o FILE.cwasm`: compile ahead of time
/// for this build and machine, so a small device skips Cranelift.
fn cmd_compile(raw: &[String]) -> ExitCode {
    let args = match parse_args(raw, &["-o"], &[]) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let ([input], Some(output)) = (args.positional.as_slice(), args.value("-o")) else {
        return usage_error("compile expects COMPONENT -o FILE.cwasm");
    };
    let engine = match sandbox::engine(&sandbox::EngineOptions::default()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("influx-sink: {e:#}");
            return ExitCode::from(1);
        }
    };
    let t = std::time::Instant::now();
    match precompile::compile_to_file(&engine, Path::new(input), Path::new(output)) {
        Ok(bytes) => {
            println!(
                "compiled {input} -> {output} ({bytes} bytes) in {:.2} s",
                t.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("influx-sink: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `influx-sink swap --admin ADDR COMPONENT`: ask a running host to swap
/// its sinks to COMPONENT.
fn cmd_swap(raw: &[String]) -> ExitCode {
    let args = match parse_args(raw, &["--admin"], &[]) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let ([path], Some(addr)) = (args.positional.as_slice(), args.value("--admin")) else {
        return usage_error("swap expects --admin [IP:]PORT COMPONENT");
    };
    match admin::client_swap(addr, Path::new(path)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("influx-sink: swap failed:\n{why}");
            ExitCode::from(1)
        }
    }
}

/// SIGHUP: read the config again; each running output whose settings
/// changed reopens with the new ones. Outputs added or removed need a
/// restart; an invalid file changes nothing.
async fn reload_config(
    path: &Path,
    running: &mut [(config::OutputSpec, sandbox::Limits)],
    tx: &tokio::sync::mpsc::Sender<ReconfigRequest>,
) {
    let spec = match config::load(path) {
        Ok(s) => s,
        Err(e) => {
            log::error("host", &format!("SIGHUP: {e}; the running settings stay"));
            return;
        }
    };
    for (output, sandbox) in spec.outputs.iter().zip(&spec.sandboxes) {
        let name = &output.settings.name;
        let Some(slot) = running.iter_mut().find(|(o, _)| &o.settings.name == name) else {
            log::warn(
                "host",
                &format!("SIGHUP: [{name}] is new; adding an output needs a restart"),
            );
            continue;
        };
        if slot.0.pairs == output.pairs && slot.1 == sandbox.limits {
            continue;
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let req = ReconfigRequest {
            output: output.clone(),
            limits: sandbox.limits,
            reply,
        };
        if tx.send(req).await.is_err() {
            return;
        }
        match answer.await {
            Ok(Ok(_)) => *slot = (output.clone(), sandbox.limits),
            Ok(Err(why)) => log::error(name, &format!("SIGHUP: {why}")),
            Err(_) => {}
        }
    }
    for (o, _) in running.iter() {
        if !spec
            .outputs
            .iter()
            .any(|n| n.settings.name == o.settings.name)
        {
            log::warn(
                "host",
                &format!(
                    "SIGHUP: [{}] is gone from the config; removing an output needs a restart",
                    o.settings.name
                ),
            );
        }
    }
}

fn cmd_run(raw: &[String]) -> ExitCode {
    let args = match parse_args(
        raw,
        &["--component", "--drain-timeout", "--admin", "--cache-dir"],
        &["--no-cache", "--no-watch"],
    ) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let cache = if args.has("--no-cache") {
        None
    } else {
        args.value("--cache-dir")
            .map(PathBuf::from)
            .or_else(precompile::default_cache_dir)
    };
    let admin_addr = match args.value("--admin").map(admin::parse_addr).transpose() {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    let spec = match load_config(&args) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let drain = match args.number("--drain-timeout") {
        Ok(v) => Duration::from_secs_f64(v.unwrap_or(30.0)),
        Err(e) => return usage_error(&e),
    };
    let component = args
        .value("--component")
        .map(PathBuf::from)
        .unwrap_or_else(default_component);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(
            spec.outputs.len()
                + usize::from(matches!(spec.source, config::SourceSpec::Listener(_))),
        ))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("influx-sink: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(async move {
        let runtimes = match Runtime::load_each(&spec, &component, cache.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                log::error("host", &format!("{e:#}"));
                return ExitCode::from(1);
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (swap_tx, swap_rx) = tokio::sync::mpsc::channel(4);
        if let Some(addr) = admin_addr {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    if !addr.ip().is_loopback() {
                        log::warn("host", &format!("the admin endpoint listens on {addr}, beyond loopback: anyone who reaches it can swap the sink component"));
                    }
                    log::info("host", &format!("admin endpoint on http://{addr} (POST /swap)"));
                    tokio::spawn(admin::serve(listener, swap_tx.clone(), stop_rx.clone()));
                }
                Err(e) => {
                    log::error("host", &format!("cannot listen on --admin {addr}: {e}"));
                    return ExitCode::from(1);
                }
            }
        }
        let mut files: Vec<PathBuf> = runtimes.iter().map(|r| r.path().to_path_buf()).collect();
        files.dedup();
        if !args.has("--no-watch") {
            tokio::spawn(admin::watch_files(files.clone(), swap_tx.clone(), stop_rx.clone()));
        }
        // SIGHUP: reload the config (sinks whose settings changed reopen
        // with them) and every component file (swapped in).
        let hup_tx = swap_tx.clone();
        let (reconfig_tx, reconfig_rx) = tokio::sync::mpsc::channel(4);
        let config_path = PathBuf::from(&args.positional[0]);
        let running: Vec<(config::OutputSpec, sandbox::Limits)> = spec
            .outputs
            .iter()
            .cloned()
            .zip(spec.sandboxes.iter().map(|s| s.limits))
            .collect();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            let mut running = running;
            while hup.recv().await.is_some() {
                log::info("host", "SIGHUP: reloading the config and the sink component(s)");
                reload_config(&config_path, &mut running, &reconfig_tx).await;
                for f in &files {
                    let report = admin::request_swap(&hup_tx, f.clone(), Some(f.clone()), "SIGHUP").await;
                    for line in report.lines {
                        log::info("host", &line);
                    }
                }
            }
        });
        drop(swap_tx);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => log::info("host", "SIGTERM: stopping; undelivered points stay in the backlog"),
                _ = int.recv() => log::info("host", "SIGINT: stopping; undelivered points stay in the backlog"),
            }
            let _ = stop_tx.send(true);
            // keep the sender alive so receivers see one change only
            std::future::pending::<()>().await;
        });
        let opts = RunOptions {
            drain_timeout: drain,
            swaps: Some(swap_rx),
            reconfigs: Some(reconfig_rx),
            cache,
        };
        match pipeline::run(runtimes, spec, opts, stop_rx).await {
            Ok((summary, failed)) => {
                eprintln!("{}", summary.line());
                if failed {
                    ExitCode::from(1)
                } else if summary.backlogged > 0 {
                    ExitCode::from(3)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                log::error("host", &format!("{e:#}"));
                ExitCode::from(1)
            }
        }
    });
    // A blocked read of stdin (a pipe still open after SIGTERM) would hold
    // an orderly runtime shutdown forever: everything is stored by now.
    rt.shutdown_background();
    code
}

/// One runtime thread per output, up to the CPUs: a sink's task, its
/// connections and its HTTP exchanges then mostly share a thread, and
/// every wake-up handed to another thread (a futex and a context switch)
/// is saved; measured with one output on two cores, 15% less CPU per point.
/// `TOKIO_WORKER_THREADS` overrides.
fn worker_threads(outputs: usize) -> usize {
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    outputs.clamp(1, cores)
}
