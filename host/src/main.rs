//! The `influx-sink` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use influx_sink_host::config::{self, PipelineSpec};
use influx_sink_host::pipeline::{self, RunOptions};
use influx_sink_host::runtime::Runtime;
use influx_sink_host::{log, simulate};

const USAGE: &str = "usage:
  influx-sink run CONFIG [--component PATH] [--drain-timeout SECONDS]
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
        // target/release/influx-sink -> target/wasm32-wasip2/release/
        if let Some(target) = dir.parent() {
            let built = target.join("wasm32-wasip2").join("release").join(FILE);
            if built.exists() {
                return built;
            }
        }
    }
    PathBuf::from(FILE)
}

fn cmd_run(raw: &[String]) -> ExitCode {
    let args = match parse_args(raw, &["--component", "--drain-timeout"], &[]) {
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
        let runtimes = match Runtime::load_each(&spec, &component) {
            Ok(r) => r,
            Err(e) => {
                log::error("host", &format!("{e:#}"));
                return ExitCode::from(1);
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
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
        match pipeline::run(runtimes, spec, RunOptions { drain_timeout: drain }, stop_rx).await {
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
