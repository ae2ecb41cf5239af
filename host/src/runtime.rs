//! wasmtime embedding: one engine, the compiled component(s), and one
//! sandboxed instance (own Store) per output.
//!
//! The sandbox of an instance (see also `sandbox`): its linear memory is
//! capped (`max_memory_mb`), every call into it has a deadline
//! (`max_call_ms`, epoch interruption), its only directory is its own
//! backlog directory (as `/backlog`), its only network access is HTTP to
//! the servers of its own section (anything else is refused and logged),
//! and it sees no environment variables, no arguments and no stdin.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::wake::{Ringing, Wake};
use wasmtime::component::{Linker, ResourceAny, ResourceTable};
use wasmtime::error::Context;
use wasmtime::{Engine, Result, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::bindings::{
    DurableRefusal, DurableWrite, InfluxSink, InfluxSinkPre, Point, Stats, WriteResult,
};
use crate::config::{OutputSpec, PipelineSpec};
use crate::connections::{Connections, IoFuture};
use crate::precompile;
use crate::sandbox::{self, Call, EngineOptions, Fault, HostWaitExceeded, Limits, MemoryCap};
use crate::tls::TlsClient;
use influx_sink_component::config::{Endpoint, Settings};

/// A compiled component, ready to instantiate many times.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    pre: InfluxSinkPre<SinkState>,
    path: PathBuf,
    /// SHA-256 of the component file, hex: what identifies its code.
    hash: String,
}

impl Runtime {
    /// Compile the component at `path` in a new engine sized for default
    /// limits (see [`sandbox::engine`]) and link it against WASI.
    pub fn load(path: &Path) -> Result<Runtime> {
        let engine = sandbox::engine(&EngineOptions::default())?;
        Runtime::load_cached(&engine, path, None)
    }

    /// Compile the component at `path` in `engine` (made by
    /// [`sandbox::engine`]: epoch interruption on, the ticker running),
    /// through the compile cache in `cache` if any (see `precompile`);
    /// `path` may also be a `.cwasm`.
    pub fn load_cached(engine: &Engine, path: &Path, cache: Option<&Path>) -> Result<Runtime> {
        let began = std::time::Instant::now();
        let loaded = precompile::load(engine, path, cache)
            .with_context(|| format!("cannot load the sink component {}", path.display()))?;
        let ms = began.elapsed().as_secs_f64() * 1e3;
        let how = match &loaded.origin {
            precompile::Origin::Precompiled => "precompiled (.cwasm)".to_string(),
            precompile::Origin::Cached(f) => format!("from the compile cache {}", f.display()),
            precompile::Origin::Compiled { cached_to: Some(f) } => {
                format!("compiled, cached as {}", f.display())
            }
            precompile::Origin::Compiled { cached_to: None } => "compiled".to_string(),
        };
        crate::log::info(
            "host",
            &format!(
                "loaded the sink component {} (sha256 {}…) {how} in {ms:.1} ms",
                path.display(),
                &loaded.hash[..12]
            ),
        );
        let component = loaded.component;
        let mut linker = Linker::<SinkState>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        let pre = InfluxSinkPre::new(linker.instantiate_pre(&component)?)
            .with_context(|| format!("{} is not an influx-sink component", path.display()))?;
        Ok(Runtime {
            engine: engine.clone(),
            pre,
            path: path.to_path_buf(),
            hash: loaded.hash,
        })
    }

    /// SHA-256 of the component file (hex).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The component of every output of `spec`, compiled once per file in
    /// one engine sized for their limits: an output's own `component`, or
    /// `default` (the `--component` of the command line; only loaded if
    /// some output uses it). `result[i]` belongs to `spec.outputs[i]`.
    pub fn load_each(
        spec: &PipelineSpec,
        default: &Path,
        cache: Option<&Path>,
    ) -> Result<Vec<Runtime>> {
        let engine = sandbox::engine(&EngineOptions::for_sinks(
            spec.sandboxes.iter().map(|s| &s.limits),
        ))?;
        let mut loaded: Vec<Runtime> = Vec::new();
        let mut out = Vec::new();
        for (output, sandbox) in spec.outputs.iter().zip(&spec.sandboxes) {
            let path = sandbox.component.as_deref().unwrap_or(default);
            let runtime = match loaded.iter().find(|r| r.path == path) {
                Some(r) => r.clone(),
                None => {
                    let r =
                        Runtime::load_cached(&engine, path, cache).with_context(
                            || match &sandbox.component {
                                Some(_) => {
                                    format!(
                                        "[{}] component = {}",
                                        output.settings.name,
                                        path.display()
                                    )
                                }
                                None => format!(
                                    "[{}] (the --component of the command line)",
                                    output.settings.name
                                ),
                            },
                        )?;
                    loaded.push(r.clone());
                    r
                }
            };
            out.push(runtime);
        }
        Ok(out)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The component file this runtime was compiled from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`Runtime::instantiate_sandboxed`] with the default limits.
    pub async fn instantiate(&self, output: &OutputSpec) -> Result<SinkInstance> {
        self.instantiate_sandboxed(output, &Limits::default()).await
    }

    /// A new instance for `output`, with exactly its capabilities: its own
    /// backlog directory as `/backlog`, HTTP to its own server, clocks,
    /// stderr for its log lines; and `limits`.
    pub async fn instantiate_sandboxed(
        &self,
        output: &OutputSpec,
        limits: &Limits,
    ) -> Result<SinkInstance> {
        self.prepare(output, limits).await?.open(output).await
    }

    /// An instance for `output` with its capabilities and `limits`, made
    /// but not opened: the slow part of a swap, done off the hot path.
    pub async fn prepare(&self, output: &OutputSpec, limits: &Limits) -> Result<Prepared> {
        let s = &output.settings;
        // WasiCtxBuilder::new() in wasmtime-wasi 48 starts closed: stdin
        // closed (reads see the end of the stream), stdout and stderr
        // discarded, no environment variables, no arguments, no preopened
        // directories, every socket address denied, no name lookups. We add
        // only stderr (the sink's log lines) and the backlog directory, and
        // turn TCP, UDP and name lookups off explicitly: the component's
        // HTTP goes through wasi:http, i.e. through `OnlyOwnServer` below.
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stderr()
            .allow_blocking_current_thread(true)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if s.enable_persistent_storage {
            std::fs::create_dir_all(&output.backlog_dir).with_context(|| {
                format!(
                    "[{}] cannot create the backlog directory {}",
                    s.name,
                    output.backlog_dir.display()
                )
            })?;
            wasi.preopened_dir(&output.backlog_dir, "/backlog", FsPerms::ReadWrite)
                .with_context(|| {
                    format!(
                        "[{}] cannot open the backlog directory {}",
                        s.name,
                        output.backlog_dir.display()
                    )
                })?;
        }
        let tls = TlsClient::for_output(output).map_err(|e| wasmtime::format_err!("{e}"))?;
        let state = SinkState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OnlyOwnServer {
                name: s.name.clone(),
                allowed: allowed_authorities(s),
                connections: Connections::new(tls),
                wake: Wake::default(),
            },
            memory: MemoryCap::new(limits),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_trap();
        arm(&mut store, limits, Call::Open);
        let made = guarded(limits, Call::Open, async {
            self.pre
                .instantiate_async(&mut store)
                .await
                .context("cannot instantiate the sink component")
        })
        .await;
        let bindings = made.map_err(|e| classified(&store, Call::Open, limits, e))?;
        Ok(Prepared {
            store,
            bindings,
            limits: *limits,
        })
    }
}

/// A call's error, named by its fault when it is one (deadline, memory).
fn classified(
    store: &Store<SinkState>,
    call: Call,
    limits: &Limits,
    e: wasmtime::Error,
) -> wasmtime::Error {
    match Fault::classify(call, &e, limits, store.data().memory.refused()) {
        Fault::Other { .. } => e,
        fault => wasmtime::format_err!("{fault}"),
    }
}

/// An instantiated component whose sink is not open yet (see
/// [`Runtime::prepare`]).
pub struct Prepared {
    store: Store<SinkState>,
    bindings: InfluxSink,
    limits: Limits,
}

impl Prepared {
    /// The build's version string.
    pub async fn version(&mut self) -> Result<String> {
        arm(&mut self.store, &self.limits, Call::Open);
        let sink = self.bindings.influx_sink_output().sink();
        guarded(&self.limits, Call::Open, sink.call_version(&mut self.store)).await
    }

    /// Open the sink from its section's settings.
    pub async fn open(mut self, output: &OutputSpec) -> Result<SinkInstance> {
        let s = &output.settings;
        arm(&mut self.store, &self.limits, Call::Open);
        let sink = self.bindings.influx_sink_output().sink();
        let opened = guarded(
            &self.limits,
            Call::Open,
            sink.call_open(&mut self.store, &s.name, &output.pairs),
        )
        .await
        .map_err(|e| classified(&self.store, Call::Open, &self.limits, e))?;
        let handle = opened.map_err(|e| {
            wasmtime::format_err!(
                "the sink component refused the settings of [{}]: {e}",
                s.name
            )
        })?;
        Ok(self.into_instance(handle))
    }

    /// Rebuild the sink from a predecessor's `snapshot`. The outer error is
    /// a failed call (trap, deadline); the inner one the component's
    /// refusal of the state (a version it cannot read, damage).
    pub async fn restore(
        mut self,
        snapshot: &[u8],
    ) -> Result<std::result::Result<SinkInstance, String>> {
        arm(&mut self.store, &self.limits, Call::Open);
        let sink = self.bindings.influx_sink_output().sink();
        let restored = guarded(
            &self.limits,
            Call::Open,
            sink.call_restore(&mut self.store, snapshot),
        )
        .await
        .map_err(|e| classified(&self.store, Call::Open, &self.limits, e))?;
        Ok(restored.map(|handle| self.into_instance(handle)))
    }

    fn into_instance(self, handle: ResourceAny) -> SinkInstance {
        SinkInstance {
            store: self.store,
            bindings: Arc::new(self.bindings),
            handle,
            limits: self.limits,
            call: Call::Open,
        }
    }
}

/// Give the next call its deadline and forget old memory refusals.
fn arm(store: &mut Store<SinkState>, limits: &Limits, call: Call) {
    store.set_epoch_deadline(Limits::deadline_ticks(limits.call_ms(call)));
    store.data_mut().memory.begin_call();
}

/// Await `call` at most its deadline plus a grace: running wasm is cut by
/// the epoch deadline; this bounds waits on the host (a pollable that never
/// becomes ready). Dropping the call's future cancels it; the instance is
/// then discarded.
async fn guarded<T>(limits: &Limits, call: Call, f: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limits.host_wait(call), f).await {
        Ok(r) => r,
        Err(_) => Err(wasmtime::Error::new(HostWaitExceeded)),
    }
}

fn resolve_alias(host: &str) -> &str {
    if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    }
}

/// Every `host:port` the sink may reach: each of its servers, also in the
/// `localhost` → `127.0.0.1` form.
fn allowed_authorities(s: &Settings) -> Vec<String> {
    let mut allowed: Vec<String> = Vec::new();
    for e in &s.endpoints {
        let alias = Endpoint {
            host: resolve_alias(&e.host).to_string(),
            ..e.clone()
        };
        for authority in [e.authority(), alias.authority()] {
            if !allowed.contains(&authority) {
                allowed.push(authority);
            }
        }
    }
    allowed
}

/// What one instance's Store holds.
pub struct SinkState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OnlyOwnServer,
    memory: MemoryCap,
}

impl WasiView for SinkState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for SinkState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outgoing HTTP only to the output's configured servers; `https` through
/// the sink's own TLS client.
struct OnlyOwnServer {
    name: String,
    allowed: Vec<String>,
    /// Keep-alive connections to those servers (https through the
    /// sink's own TLS client).
    connections: Connections,
    /// Rung as the sink's exchanges move on (see `wake`).
    wake: Wake,
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OnlyOwnServer {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        if !self.allowed.contains(&authority) {
            crate::log::error(
                &self.name,
                &format!(
                    "refused a request to {authority}: this sink may only reach {}",
                    self.allowed.join(", ")
                ),
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let _ = fut;
        use http_body_util::BodyExt;
        let wake = self.wake.clone();
        let length = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let request = request.map(|b| Ringing::request(b, wake.clone(), length).boxed_unsync());
        let connections = self.connections.clone();
        let send: SendFuture = Box::new(async move { connections.send(request, options).await });
        Box::new(async move {
            let (res, io) = match Box::into_pin(send).await {
                Ok(answer) => answer,
                Err(e) => {
                    // Seen once this task ends: the guest's timer is the
                    // backstop if this ring comes too early.
                    wake.ring();
                    return Err(e);
                }
            };
            // `io` runs on a task of its own, spawned as the answer is
            // handed to the guest: ring from there until the guest has it.
            let seen = Arc::new(AtomicBool::new(false));
            let res = res.map(|b| Ringing::answer(b, wake.clone(), seen.clone()).boxed_unsync());
            let io: IoFuture = Box::new(async move {
                wake.until_seen(seen).await;
                Box::into_pin(io).await
            });
            Ok((res, io))
        })
    }
}

/// One running sink: its Store, its bindings and its `sink` resource.
///
/// A call that fails (a trap, its deadline, the memory cap) leaves the
/// instance unusable: [`SinkInstance::fault`] says why; then drop it.
pub struct SinkInstance {
    store: Store<SinkState>,
    bindings: Arc<InfluxSink>,
    handle: ResourceAny,
    limits: Limits,
    /// The last call made (the one that failed, after a failure).
    call: Call,
}

/// One guarded call into the sink resource: `$method` on the bindings.
macro_rules! sink_call {
    ($self:ident, $call:expr, $method:ident $(, $arg:expr)*) => {{
        $self.call = $call;
        arm(&mut $self.store, &$self.limits, $call);
        let sink = $self.bindings.influx_sink_output().sink();
        guarded(
            &$self.limits,
            $call,
            sink.$method(&mut $self.store, $self.handle $(, $arg)*),
        )
        .await
    }};
}

impl SinkInstance {
    /// Rung when this instance's HTTP exchanges move on: poll it then.
    pub fn wake(&self) -> Wake {
        self.store.data().hooks.wake.clone()
    }

    pub async fn write_lines(&mut self, lines: &[u8]) -> Result<WriteResult> {
        sink_call!(self, Call::WriteLines, call_write_lines, lines)
    }

    pub async fn write_points(&mut self, points: &[Point]) -> Result<WriteResult> {
        sink_call!(self, Call::WritePoints, call_write_points, points)
    }

    /// A group commit of listener writes (see `write-durable` in the WIT):
    /// one result per write, `Ok` once its points are durable.
    pub async fn write_durable(
        &mut self,
        writes: &[DurableWrite],
        in_memory_ok: bool,
    ) -> Result<Vec<std::result::Result<WriteResult, DurableRefusal>>> {
        sink_call!(
            self,
            Call::WriteDurable,
            call_write_durable,
            writes,
            in_memory_ok
        )
    }

    /// One turn; returns the nanoseconds until the sink wants the next.
    pub async fn poll(&mut self) -> Result<u64> {
        sink_call!(self, Call::Poll, call_poll)
    }

    pub async fn flush(&mut self) -> Result<()> {
        sink_call!(self, Call::Flush, call_flush)
    }

    pub async fn shutdown(&mut self) -> Result<()> {
        sink_call!(self, Call::Shutdown, call_shutdown)
    }

    pub async fn stats(&mut self) -> Result<Stats> {
        sink_call!(self, Call::Stats, call_stats)
    }

    pub async fn snapshot(&mut self) -> Result<Vec<u8>> {
        sink_call!(self, Call::Snapshot, call_snapshot)
    }

    /// The build's version string (a static function of the component).
    pub async fn version(&mut self) -> Result<String> {
        self.call = Call::Stats;
        arm(&mut self.store, &self.limits, Call::Stats);
        let sink = self.bindings.influx_sink_output().sink();
        guarded(
            &self.limits,
            Call::Stats,
            sink.call_version(&mut self.store),
        )
        .await
    }

    /// Why the last call failed with `error`: its deadline, the memory cap,
    /// a trap, or another error.
    pub fn fault(&self, error: &wasmtime::Error) -> Fault {
        Fault::classify(
            self.call,
            error,
            &self.limits,
            self.store.data().memory.refused(),
        )
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes of linear memory the instance holds.
    pub fn memory_in_use(&self) -> usize {
        self.store.data().memory.in_use()
    }

    /// Release the resource and the instance. An error says why (see
    /// [`SinkInstance::fault`]).
    pub async fn close(mut self) -> Result<()> {
        self.call = Call::Close;
        arm(&mut self.store, &self.limits, Call::Close);
        let limits = self.limits;
        let closed = guarded(
            &limits,
            Call::Close,
            self.handle.resource_drop_async(&mut self.store),
        )
        .await;
        closed.map_err(|e| wasmtime::format_err!("{}", self.fault(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_is_allowed_with_the_localhost_alias() {
        let pairs: Vec<(String, String)> = vec![(
            "urls".into(),
            "http://localhost:8086, https://db.example:8443/influx, https://[::1]:9000".into(),
        )];
        let (s, _) = Settings::from_pairs("out", &pairs).unwrap();
        assert_eq!(
            allowed_authorities(&s),
            [
                "localhost:8086",
                "127.0.0.1:8086",
                "db.example:8443",
                "[::1]:9000"
            ]
        );
        let (s, _) = Settings::from_pairs("out", &[]).unwrap();
        assert_eq!(
            allowed_authorities(&s),
            ["localhost:8086", "127.0.0.1:8086"]
        );
    }
}
