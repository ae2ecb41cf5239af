//! wasmtime embedding: one engine, the compiled component, and one
//! sandboxed instance (own Store) per output.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::{Component, Linker, ResourceAny, ResourceTable};
use wasmtime::error::Context;
use wasmtime::{Config, Engine, Result, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::bindings::{InfluxSink, InfluxSinkPre, Point, Stats, WriteResult};
use crate::config::OutputSpec;
use crate::tls::TlsClient;
use influx_sink_component::config::{Endpoint, Settings};

/// The compiled component, ready to instantiate many times.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    pre: InfluxSinkPre<SinkState>,
}

impl Runtime {
    /// Compile the component at `path` and link it against WASI.
    pub fn load(path: &Path) -> Result<Runtime> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config)?;
        let component = Component::from_file(&engine, path)
            .with_context(|| format!("cannot load the sink component {}", path.display()))?;
        let mut linker = Linker::<SinkState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        let pre = InfluxSinkPre::new(linker.instantiate_pre(&component)?)?;
        Ok(Runtime { engine, pre })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A new instance for `output`, with exactly its capabilities: its own
    /// backlog directory as `/backlog`, HTTP to its own server, clocks,
    /// stderr for its log lines.
    pub async fn instantiate(&self, output: &OutputSpec) -> Result<SinkInstance> {
        let s = &output.settings;
        let mut wasi = WasiCtxBuilder::new();
        wasi.inherit_stderr().allow_blocking_current_thread(true);
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
                tls,
            },
        };
        let mut store = Store::new(&self.engine, state);
        let bindings = self
            .pre
            .instantiate_async(&mut store)
            .await
            .context("cannot instantiate the sink component")?;
        let opened = bindings
            .influx_sink_output()
            .sink()
            .call_open(&mut store, &s.name, &output.pairs)
            .await?;
        let handle = opened.map_err(|e| {
            wasmtime::format_err!(
                "the sink component refused the settings of [{}]: {e}",
                s.name
            )
        })?;
        Ok(SinkInstance {
            store,
            bindings: Arc::new(bindings),
            handle,
        })
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
    tls: TlsClient,
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
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            let tls = self.tls.clone();
            return Box::new(async move { tls.send(request, options).await });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

/// One running sink: its Store, its bindings and its `sink` resource.
pub struct SinkInstance {
    store: Store<SinkState>,
    bindings: Arc<InfluxSink>,
    handle: ResourceAny,
}

impl SinkInstance {
    pub async fn write_lines(&mut self, lines: &[u8]) -> Result<WriteResult> {
        self.bindings
            .influx_sink_output()
            .sink()
            .call_write_lines(&mut self.store, self.handle, lines)
            .await
    }

    pub async fn write_points(&mut self, points: &[Point]) -> Result<WriteResult> {
        self.bindings
            .influx_sink_output()
            .sink()
            .call_write_points(&mut self.store, self.handle, points)
            .await
    }

    /// One turn; returns the nanoseconds until the sink wants the next.
    pub async fn poll(&mut self) -> Result<u64> {
        self.bindings
            .influx_sink_output()
            .sink()
            .call_poll(&mut self.store, self.handle)
            .await
    }

    pub async fn flush(&mut self) -> Result<()> {
        self.bindings
            .influx_sink_output()
            .sink()
            .call_flush(&mut self.store, self.handle)
            .await
    }

    pub async fn shutdown(&mut self) -> Result<()> {
        self.bindings
            .influx_sink_output()
            .sink()
            .call_shutdown(&mut self.store, self.handle)
            .await
    }

    pub async fn stats(&mut self) -> Result<Stats> {
        self.bindings
            .influx_sink_output()
            .sink()
            .call_stats(&mut self.store, self.handle)
            .await
    }

    pub async fn snapshot(&mut self) -> Result<Vec<u8>> {
        self.bindings
            .influx_sink_output()
            .sink()
            .call_snapshot(&mut self.store, self.handle)
            .await
    }

    /// Release the resource and the instance.
    pub async fn close(mut self) -> Result<()> {
        self.handle.resource_drop_async(&mut self.store).await
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
