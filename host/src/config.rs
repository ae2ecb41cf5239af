//! The pipeline's configuration file: output sections (`transport =
//! influxdb_out`) and an optional generator source, checked as a whole
//! before anything starts.

use std::path::{Path, PathBuf};

use influx_sink_component::config::Settings;
use influx_sink_component::ini;

use crate::generator::GeneratorSpec;
use crate::listener::{self, ListenerConfig};
use crate::sandbox::{Limits, MAX_CALL_MS_RANGE, MAX_MEMORY_MB_RANGE};

/// The host's own keys of an output section. They set up the sandbox the
/// section's instance runs in, so the host reads them and they are not
/// passed to the component.
pub const HOST_KEYS: [&str; 3] = ["max_memory_mb", "max_call_ms", "component"];

/// One output section, checked, with where its backlog lives on the host.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub settings: Settings,
    /// The section's `key = value` pairs as written; the component parses
    /// them itself, so it can run in any host.
    pub pairs: Vec<(String, String)>,
    /// `<persistent_storage_path>/<section>`, relative paths resolved
    /// against the config file's directory.
    pub backlog_dir: PathBuf,
    /// `tls_ca_file`, a relative path resolved against the config file's
    /// directory; `None` when not set.
    pub tls_ca_path: Option<PathBuf>,
}

/// The host keys of one output section: its instance's limits and which
/// component it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxSpec {
    /// `max_memory_mb` (1..=4096, default 64) and `max_call_ms`
    /// (10..=600000, default 1000).
    pub limits: Limits,
    /// `component`: this output's component file, a relative path resolved
    /// against the config file's directory; `None`: the `--component` of
    /// the command line.
    pub component: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum SourceSpec {
    Stdin,
    Generator(GeneratorSpec),
    /// `transport = influxdb_listener`: InfluxDB clients write over HTTP.
    Listener(ListenerConfig),
}

impl SourceSpec {
    /// The outputs a listener routes to (`outputs`, else all), by index.
    pub fn routed(&self, outputs: &[OutputSpec]) -> Vec<usize> {
        match self {
            SourceSpec::Listener(l) if !l.outputs.is_empty() => (0..outputs.len())
                .filter(|&i| l.outputs.contains(&outputs[i].settings.name))
                .collect(),
            SourceSpec::Listener(_) => (0..outputs.len()).collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub outputs: Vec<OutputSpec>,
    /// The host keys of each output: `sandboxes[i]` belongs to `outputs[i]`.
    /// (Kept beside `OutputSpec` rather than in it so code that builds an
    /// `OutputSpec` by hand, the benches, keeps compiling.)
    pub sandboxes: Vec<SandboxSpec>,
    pub source: SourceSpec,
    pub warnings: Vec<String>,
}

/// A config problem, naming the file and (where known) line, section and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileError(pub String);

impl std::fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigFileError {}

pub fn load(path: &Path) -> Result<PipelineSpec, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigFileError(format!(
            "{}: cannot read the config file: {e}",
            path.display()
        ))
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &path.display().to_string(), &base)
}

/// Parse config `text` (named `file` in errors); relative backlog paths are
/// resolved against `base`.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<PipelineSpec, ConfigFileError> {
    let sections = ini::parse(text).map_err(|e| ConfigFileError(format!("{file}: {e}")))?;
    let mut outputs = Vec::new();
    let mut sandboxes = Vec::new();
    let mut source = SourceSpec::Stdin;
    let mut warnings = Vec::new();
    for section in &sections {
        let transport = section.get("transport").map(|e| e.value.as_str());
        let at_key = |key: &str| {
            section
                .get(key)
                .map(|e| format!(" (line {})", e.line))
                .unwrap_or_default()
        };
        match transport {
            Some("influxdb_out") => {
                let sandbox = sandbox_keys(section, file, base)?;
                let mut pairs = section.pairs();
                // The host's keys are not the component's business.
                pairs.retain(|(k, _)| !HOST_KEYS.contains(&k.as_str()));
                let (settings, w) = Settings::from_pairs(&section.name, &pairs)
                    .map_err(|e| ConfigFileError(format!("{file}{}: {e}", at_key(&e.key))))?;
                warnings.extend(w.iter().map(|key| {
                    format!(
                        "{file}{}: [{}] unknown key `{key}` is ignored",
                        at_key(key),
                        section.name
                    )
                }));
                // Warned here with its line; the component need not repeat it.
                pairs.retain(|(k, _)| !w.contains(k));
                let root = Path::new(&settings.persistent_storage_path);
                let root = if root.is_absolute() {
                    root.to_path_buf()
                } else {
                    base.join(root)
                };
                let backlog_dir = root.join(&section.name);
                let tls_ca_path =
                    (!settings.tls_ca_file.is_empty()).then(|| base.join(&settings.tls_ca_file));
                outputs.push(OutputSpec {
                    settings,
                    pairs,
                    backlog_dir,
                    tls_ca_path,
                });
                sandboxes.push(sandbox);
            }
            Some(listener::TRANSPORT) => {
                if !matches!(source, SourceSpec::Stdin) {
                    return Err(second_source(file, &section.name));
                }
                let (cfg, w) = ListenerConfig::from_pairs(&section.name, &section.pairs())
                    .map_err(|e| ConfigFileError(format!("{file}{}: {e}", at_key(&e.key))))?;
                warnings.extend(w.iter().map(|key| {
                    format!(
                        "{file}{}: [{}] unknown key `{key}` is ignored",
                        at_key(key),
                        section.name
                    )
                }));
                source = SourceSpec::Listener(cfg);
            }
            Some("generator") => {
                if !matches!(source, SourceSpec::Stdin) {
                    return Err(second_source(file, &section.name));
                }
                let spec = GeneratorSpec::from_section(section)
                    .map_err(|e| ConfigFileError(format!("{file}: {e}")))?;
                source = SourceSpec::Generator(spec);
            }
            Some(other) => warnings.push(format!(
                "{file}: [{}] transport `{other}` is not handled by influx-sink; section ignored",
                section.name
            )),
            None => warnings.push(format!(
                "{file}: [{}] has no `transport` key; section ignored",
                section.name
            )),
        }
    }
    if outputs.is_empty() {
        return Err(ConfigFileError(format!(
            "{file}: no output section: add a section with `transport = influxdb_out`"
        )));
    }
    let mut dirs: Vec<&PathBuf> = outputs
        .iter()
        .filter(|o| o.settings.enable_persistent_storage)
        .map(|o| &o.backlog_dir)
        .collect();
    dirs.sort();
    if let Some(w) = dirs.windows(2).find(|w| w[0] == w[1]) {
        return Err(ConfigFileError(format!(
            "{file}: two outputs share the backlog directory {}",
            w[0].display()
        )));
    }
    if let SourceSpec::Listener(l) = &source {
        check_listener(l, &outputs, &sandboxes, file)?;
    }
    Ok(PipelineSpec {
        outputs,
        sandboxes,
        source,
        warnings,
    })
}

fn second_source(file: &str, section: &str) -> ConfigFileError {
    ConfigFileError(format!(
        "{file}: [{section}] is a second source (a generator or a listener); only one is supported"
    ))
}

/// A listener's outputs exist, can acknowledge durably (or the operator
/// opted out), and have the memory for its largest body.
fn check_listener(
    l: &ListenerConfig,
    outputs: &[OutputSpec],
    sandboxes: &[SandboxSpec],
    file: &str,
) -> Result<(), ConfigFileError> {
    let name = &l.name;
    if let Some(missing) = l
        .outputs
        .iter()
        .find(|o| !outputs.iter().any(|out| out.settings.name == **o))
    {
        return Err(ConfigFileError(format!(
            "{file}: [{name}] outputs names [{missing}], which is not an output section"
        )));
    }
    for i in SourceSpec::Listener(l.clone()).routed(outputs) {
        let (out, limits) = (&outputs[i].settings, &sandboxes[i].limits);
        if !out.enable_persistent_storage && !l.acknowledge_from_memory {
            return Err(ConfigFileError(format!(
                "{file}: [{name}] routes to [{}], which has enable_persistent_storage = false: \
                 the listener answers 204 only once points are on disk. Enable persistent \
                 storage there, leave it out of `outputs`, or set acknowledge_from_memory = true \
                 (points acknowledged from memory are lost in a crash)",
                out.name
            )));
        }
        let need = (l.max_body_size as u64 * BODY_MEMORY_FACTOR).div_ceil(1 << 20);
        if u64::from(limits.max_memory_mb) < need {
            return Err(ConfigFileError(format!(
                "{file}: [{name}] max_body_size = {} needs max_memory_mb of at least {need} in [{}] \
                 (it has {}): a request body is parsed and stored inside the output's sandbox. \
                 Lower max_body_size or raise max_memory_mb",
                l.max_body_size, out.name, limits.max_memory_mb
            )));
        }
    }
    Ok(())
}

/// Sandbox memory one body of the listener takes at most, per byte: the
/// bytes, the parsed points and their encoded backlog record.
pub const BODY_MEMORY_FACTOR: u64 = 4;

/// Read the host keys of an output section; errors name the file, line,
/// section, key, value and what is expected.
fn sandbox_keys(
    section: &ini::Section,
    file: &str,
    base: &Path,
) -> Result<SandboxSpec, ConfigFileError> {
    let bad = |entry: &ini::Entry, expected: &str| {
        ConfigFileError(format!(
            "{file} (line {}): [{}] {} = `{}`: expected {expected}",
            entry.line, section.name, entry.key, entry.value
        ))
    };
    let mut spec = SandboxSpec::default();
    if let Some(e) = section.get("max_memory_mb") {
        spec.limits.max_memory_mb = e
            .value
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|v| MAX_MEMORY_MB_RANGE.contains(v))
            .ok_or_else(|| {
                bad(
                    e,
                    &format!(
                        "a whole number of MiB from {} to {}",
                        MAX_MEMORY_MB_RANGE.start(),
                        MAX_MEMORY_MB_RANGE.end()
                    ),
                )
            })?;
    }
    if let Some(e) = section.get("max_call_ms") {
        spec.limits.max_call_ms = e
            .value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|v| MAX_CALL_MS_RANGE.contains(v))
            .ok_or_else(|| {
                bad(
                    e,
                    &format!(
                        "a whole number of milliseconds from {} to {}",
                        MAX_CALL_MS_RANGE.start(),
                        MAX_CALL_MS_RANGE.end()
                    ),
                )
            })?;
    }
    if let Some(e) = section.get("component") {
        let path = e.value.trim();
        if path.is_empty() {
            return Err(bad(e, "the path of a component file (.wasm)"));
        }
        spec.component = Some(base.join(path));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_file_line_section_key_value() {
        let text = "[out]\ntransport = influxdb_out\nbatch_size = lots\n";
        let e = parse(text, "gw.ini", Path::new("/etc"))
            .unwrap_err()
            .to_string();
        for part in [
            "gw.ini",
            "line 3",
            "[out]",
            "batch_size",
            "lots",
            "expected",
        ] {
            assert!(e.contains(part), "{part} missing in: {e}");
        }
    }

    #[test]
    fn relative_backlog_path_is_per_section_under_config_dir() {
        let text = "[a]\ntransport = influxdb_out\n[b]\ntransport = influxdb_out\npersistent_storage_path = /var/lib/x\n";
        let p = parse(text, "f", Path::new("/etc/gw")).unwrap();
        assert_eq!(
            p.outputs[0].backlog_dir,
            PathBuf::from("/etc/gw/influxdb_backlog/a")
        );
        assert_eq!(p.outputs[1].backlog_dir, PathBuf::from("/var/lib/x/b"));
        assert!(matches!(p.source, SourceSpec::Stdin));
    }

    #[test]
    fn tls_ca_file_is_resolved_against_config_dir() {
        let text = "[a]\ntransport = influxdb_out\ntls_ca_file = certs/ca.pem\n\
                    [b]\ntransport = influxdb_out\ntls_ca_file = /etc/ssl/ca.pem\n\
                    [c]\ntransport = influxdb_out\n";
        let p = parse(text, "f", Path::new("/etc/gw")).unwrap();
        assert_eq!(
            p.outputs[0].tls_ca_path,
            Some(PathBuf::from("/etc/gw/certs/ca.pem"))
        );
        assert_eq!(
            p.outputs[1].tls_ca_path,
            Some(PathBuf::from("/etc/ssl/ca.pem"))
        );
        assert_eq!(p.outputs[2].tls_ca_path, None);
    }

    #[test]
    fn no_output_is_an_error_and_unknown_transport_warns() {
        assert!(parse("[x]\ntransport = mqtt\n", "f", Path::new(".")).is_err());
        let p = parse(
            "[x]\ntransport = mqtt\n[o]\ntransport = influxdb_out\nfoo = 1\n",
            "f",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p.warnings[1].contains("foo"));
    }

    #[test]
    fn host_keys_are_read_and_not_passed_to_the_component() {
        let text = "[a]\ntransport = influxdb_out\nmax_memory_mb = 16\nmax_call_ms = 250\n\
                    component = hostile/spin.wasm\nbatch_size = 5\n\
                    [b]\ntransport = influxdb_out\ncomponent = /opt/sink.wasm\n\
                    [c]\ntransport = influxdb_out\n";
        let p = parse(text, "f", Path::new("/etc/gw")).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(p.sandboxes.len(), 3);
        assert_eq!(
            p.sandboxes[0],
            SandboxSpec {
                limits: Limits {
                    max_memory_mb: 16,
                    max_call_ms: 250
                },
                component: Some(PathBuf::from("/etc/gw/hostile/spin.wasm")),
            }
        );
        assert_eq!(
            p.outputs[0].pairs,
            [
                ("transport".to_string(), "influxdb_out".to_string()),
                ("batch_size".to_string(), "5".to_string())
            ]
        );
        assert_eq!(
            p.sandboxes[1].component,
            Some(PathBuf::from("/opt/sink.wasm"))
        );
        assert_eq!(p.sandboxes[1].limits, Limits::default());
        assert_eq!(p.sandboxes[2], SandboxSpec::default());
        assert_eq!(
            (
                Limits::default().max_memory_mb,
                Limits::default().max_call_ms
            ),
            (64, 1000)
        );
    }

    #[test]
    fn host_key_ranges_are_checked_with_file_line_section_key_value() {
        let cases = [
            ("max_memory_mb", "0", "from 1 to 4096"),
            ("max_memory_mb", "4097", "from 1 to 4096"),
            ("max_memory_mb", "1.5", "whole number of MiB"),
            ("max_memory_mb", "lots", "whole number of MiB"),
            ("max_call_ms", "9", "from 10 to 600000"),
            ("max_call_ms", "600001", "from 10 to 600000"),
            ("max_call_ms", "-1", "milliseconds"),
            ("component", "", "path of a component file"),
        ];
        for (key, value, expected) in cases {
            let text = format!("[out]\ntransport = influxdb_out\n\n{key} = {value}\n");
            let e = parse(&text, "gw.ini", Path::new("/etc"))
                .unwrap_err()
                .to_string();
            for part in [
                "gw.ini",
                "line 4",
                "[out]",
                key,
                &format!("`{value}`"),
                "expected",
                expected,
            ] {
                assert!(e.contains(part), "{part} missing in: {e}");
            }
        }
        for (key, value) in [
            ("max_memory_mb", "1"),
            ("max_memory_mb", "4096"),
            ("max_call_ms", "10"),
            ("max_call_ms", "600000"),
        ] {
            let text = format!("[out]\ntransport = influxdb_out\n{key} = {value}\n");
            assert!(parse(&text, "f", Path::new(".")).is_ok(), "{key} = {value}");
        }
    }

    #[test]
    fn a_listener_section_is_the_source_and_its_outputs_are_checked() {
        let ok = "[in]\ntransport = influxdb_listener\nlisten = 127.0.0.1:9999\noutputs = b\n\
                  [a]\ntransport = influxdb_out\n[b]\ntransport = influxdb_out\n";
        let p = parse(ok, "f", Path::new(".")).unwrap();
        assert!(matches!(&p.source, SourceSpec::Listener(l) if l.listen.port() == 9999));
        assert_eq!(p.source.routed(&p.outputs), [1]);
        let cases = [
            (
                "[in]\ntransport = influxdb_listener\noutputs = c\n[a]\ntransport = influxdb_out\n",
                "[c], which is not an output section",
            ),
            (
                "[in]\ntransport = influxdb_listener\n[a]\ntransport = influxdb_out\nenable_persistent_storage = false\n",
                "acknowledge_from_memory",
            ),
            (
                "[in]\ntransport = influxdb_listener\nmax_body_size = 20000000\n[a]\ntransport = influxdb_out\n",
                "needs max_memory_mb of at least 77 in [a]",
            ),
            (
                "[g]\ntransport = generator\n[in]\ntransport = influxdb_listener\n[a]\ntransport = influxdb_out\n",
                "second source",
            ),
            (
                "[in]\ntransport = influxdb_listener\nlisten = 8186\n[a]\ntransport = influxdb_out\n",
                "line 3",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(text, "gw.ini", Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{expected} missing in: {e}");
            assert!(e.contains("gw.ini"), "{e}");
        }
        // The operator's opt-in, and enough memory, make both acceptable.
        let opted = "[in]\ntransport = influxdb_listener\nacknowledge_from_memory = true\n\
                     max_body_size = 20000000\n\
                     [a]\ntransport = influxdb_out\nenable_persistent_storage = false\nmax_memory_mb = 80\n";
        assert!(parse(opted, "f", Path::new(".")).is_ok());
    }
}
