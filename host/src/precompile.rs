//! Compiled components: `influx-sink compile` ahead of time for small
//! devices, and a cache keyed by content hash, so a restart or a swap to a
//! version seen before skips Cranelift entirely.
//!
//! Deserializing compiled code trusts the file (it is machine code): only
//! files this program wrote (the cache, in a directory of the user's) or a
//! `.cwasm` the operator names explicitly are ever loaded that way.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::error::Context;
use wasmtime::{Engine, Result};

/// How a component was obtained, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A `.cwasm` made by `influx-sink compile`.
    Precompiled,
    /// Found in the cache.
    Cached(PathBuf),
    /// Compiled now (and written to the cache, if any).
    Compiled { cached_to: Option<PathBuf> },
}

/// A loaded component and what identifies its code.
pub struct Loaded {
    pub component: Component,
    pub origin: Origin,
    /// SHA-256 of the file's bytes, hex.
    pub hash: String,
}

/// `$XDG_CACHE_HOME/influx-sink`, else `$HOME/.cache/influx-sink`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("influx-sink"))
}

/// Load `path` (a component or a `.cwasm`) for `engine`, through `cache`.
pub fn load(engine: &Engine, path: &Path, cache: Option<&Path>) -> Result<Loaded> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the component {}", path.display()))?;
    let hash = hex(&Sha256::digest(&bytes));
    if Engine::detect_precompiled(&bytes).is_some() {
        // SAFETY: the operator named this file as precompiled code.
        let component = unsafe { Component::deserialize(engine, &bytes) }.with_context(|| {
            format!(
                "{} is precompiled for another build or machine; run `influx-sink compile` again",
                path.display()
            )
        })?;
        return Ok(Loaded {
            component,
            origin: Origin::Precompiled,
            hash,
        });
    }
    let cached = cache.map(|dir| dir.join(format!("{hash}-{}.cwasm", engine_key(engine))));
    if let Some(file) = cached.as_ref().filter(|f| f.is_file()) {
        // SAFETY: the cache holds only what `store` below wrote.
        match unsafe { Component::deserialize_file(engine, file) } {
            Ok(component) => {
                return Ok(Loaded {
                    component,
                    origin: Origin::Cached(file.clone()),
                    hash,
                })
            }
            Err(e) => {
                crate::log::warn(
                    "host",
                    &format!(
                        "ignoring the damaged compile cache entry {}: {e}",
                        file.display()
                    ),
                );
                let _ = std::fs::remove_file(file);
            }
        }
    }
    let compiled = engine
        .precompile_component(&bytes)
        .with_context(|| format!("{} is not a valid component", path.display()))?;
    let cached_to = cached.and_then(|file| match store(&file, &compiled) {
        Ok(()) => Some(file),
        Err(e) => {
            crate::log::warn(
                "host",
                &format!("cannot write the compile cache {}: {e}", file.display()),
            );
            None
        }
    });
    // SAFETY: just produced by this engine.
    let component = unsafe { Component::deserialize(engine, &compiled) }?;
    Ok(Loaded {
        component,
        origin: Origin::Compiled { cached_to },
        hash,
    })
}

/// `influx-sink compile`: write the compiled form of `input` to `output`.
pub fn compile_to_file(engine: &Engine, input: &Path, output: &Path) -> Result<usize> {
    let bytes = std::fs::read(input)
        .with_context(|| format!("cannot read the component {}", input.display()))?;
    let compiled = engine
        .precompile_component(&bytes)
        .with_context(|| format!("{} is not a valid component", input.display()))?;
    store(output, &compiled).with_context(|| format!("cannot write {}", output.display()))?;
    Ok(compiled.len())
}

/// Write whole or not at all (a crash leaves no half file to deserialize).
fn store(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

/// The engine's compatibility hash, so a cache survives only compatible
/// builds and settings.
fn engine_key(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
