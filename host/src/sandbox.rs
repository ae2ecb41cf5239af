//! The sandbox around each sink instance: its memory cap, its per-call
//! deadline (epoch interruption), the engine's instance allocator, and the
//! restart backoff of a sink whose component crashed.
//!
//! What an instance may touch (its backlog directory, its own servers, no
//! environment, no stdin) is set up where its Store is built, in `runtime`.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Trap,
};

use crate::log;

/// `max_memory_mb`: the linear memory one instance may hold, in MiB.
pub const DEFAULT_MAX_MEMORY_MB: u32 = 64;
pub const MAX_MEMORY_MB_RANGE: RangeInclusive<u32> = 1..=4096;
/// `max_call_ms`: how long one call into an instance may run.
pub const DEFAULT_MAX_CALL_MS: u64 = 1000;
pub const MAX_CALL_MS_RANGE: RangeInclusive<u64> = 10..=600_000;
/// Instantiation and `open` (which recovers the backlog from disk) may run
/// at least this long, whatever `max_call_ms` says.
pub const MIN_OPEN_MS: u64 = 30_000;
/// How often the engine's epoch advances; deadlines are counted in these.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Time a call may spend waiting on the host (a blocked pollable, a slow
/// request) beyond `max_call_ms` before the host gives up on it; running
/// wasm is cut by the epoch deadline before this.
const HOST_WAIT_GRACE: Duration = Duration::from_millis(100);

const MIB: usize = 1 << 20;

/// One instance's limits (the `max_memory_mb` and `max_call_ms` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_memory_mb: u32,
    pub max_call_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_mb: DEFAULT_MAX_MEMORY_MB,
            max_call_ms: DEFAULT_MAX_CALL_MS,
        }
    }
}

impl Limits {
    pub fn memory_bytes(&self) -> usize {
        self.max_memory_mb as usize * MIB
    }

    /// The call deadline in epoch ticks: at least `ms`, at most one tick
    /// more (the first tick may come at once).
    pub fn deadline_ticks(ms: u64) -> u64 {
        ms.div_ceil(EPOCH_TICK.as_millis() as u64) + 1
    }

    /// The deadline of the call being made: `max_call_ms`, or for
    /// instantiation and `open` at least [`MIN_OPEN_MS`].
    pub fn call_ms(&self, call: Call) -> u64 {
        match call {
            Call::Open => self.max_call_ms.max(MIN_OPEN_MS),
            _ => self.max_call_ms,
        }
    }

    /// How long the host awaits one call before dropping it.
    pub fn host_wait(&self, call: Call) -> Duration {
        Duration::from_millis(self.call_ms(call)) + HOST_WAIT_GRACE
    }
}

/// The calls into a sink, named in log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Open,
    WriteLines,
    WritePoints,
    WriteDurable,
    Poll,
    Flush,
    Shutdown,
    Stats,
    Snapshot,
    Close,
}

impl Call {
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Open => "open",
            Call::WriteLines => "write_lines",
            Call::WritePoints => "write_points",
            Call::WriteDurable => "write_durable",
            Call::Poll => "poll",
            Call::Flush => "flush",
            Call::Shutdown => "shutdown",
            Call::Stats => "stats",
            Call::Snapshot => "snapshot",
            Call::Close => "close",
        }
    }
}

/// The error of a call the host stopped awaiting (see [`Limits::host_wait`]).
#[derive(Debug)]
pub struct HostWaitExceeded;

impl fmt::Display for HostWaitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the call did not return in time")
    }
}

impl std::error::Error for HostWaitExceeded {}

/// Caps the linear memory of one Store (all its memories together) and
/// remembers a refused growth, so the trap that follows (a Rust guest
/// aborts on an allocation failure) is reported as the memory cap.
/// Tables and instance counts go through `StoreLimits`.
pub struct MemoryCap {
    cap: usize,
    total: usize,
    last_growth: usize,
    refused: Option<usize>,
    others: wasmtime::StoreLimits,
}

impl MemoryCap {
    pub fn new(limits: &Limits) -> Self {
        MemoryCap {
            cap: limits.memory_bytes(),
            total: 0,
            last_growth: 0,
            refused: None,
            others: wasmtime::StoreLimitsBuilder::new()
                .table_elements(TABLE_ELEMENTS)
                .instances(INSTANCES_PER_STORE)
                .tables(TABLES_PER_STORE)
                .memories(MEMORIES_PER_STORE)
                .build(),
        }
    }

    /// Forget a refusal from an earlier call.
    pub fn begin_call(&mut self) {
        self.refused = None;
    }

    /// The total size (bytes) asked for by a growth refused during the
    /// current call.
    pub fn refused(&self) -> Option<usize> {
        self.refused
    }

    /// Bytes of linear memory the instance holds now.
    pub fn in_use(&self) -> usize {
        self.total
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let wanted = self.total.saturating_add(growth);
        if wanted > self.cap {
            self.refused = Some(wanted);
            return Ok(false);
        }
        if maximum.is_some_and(|m| desired > m) {
            return Ok(false);
        }
        self.total = wanted;
        self.last_growth = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.total = self.total.saturating_sub(self.last_growth);
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.others.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.others.instances()
    }

    fn tables(&self) -> usize {
        self.others.tables()
    }

    fn memories(&self) -> usize {
        self.others.memories()
    }
}

/// Why a call into an instance failed; the instance is then discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Still running wasm when the epoch deadline passed.
    Deadline { call: Call, ms: u64 },
    /// Waiting on the host (a blocked pollable) past the deadline.
    HostWait { call: Call, ms: u64 },
    /// A memory growth beyond `max_memory_mb` was refused, then it failed.
    MemoryCap {
        call: Call,
        cap_mb: u32,
        wanted: usize,
        then: String,
    },
    /// Any other wasm trap (`unreachable`, a panic, out of bounds, ...).
    Trap { call: Call, trap: String },
    /// A failure that is not a trap (a host error raised in the call).
    Other { call: Call, error: String },
}

impl Fault {
    /// Classify the error of `call`; `refused` is the memory cap's refusal
    /// during that call, if any.
    pub fn classify(
        call: Call,
        error: &wasmtime::Error,
        limits: &Limits,
        refused: Option<usize>,
    ) -> Fault {
        let trap = error.downcast_ref::<Trap>().copied();
        if let Some(wanted) = refused {
            return Fault::MemoryCap {
                call,
                cap_mb: limits.max_memory_mb,
                wanted,
                then: trap.map_or_else(|| first_line(error), |t| t.to_string()),
            };
        }
        if trap == Some(Trap::Interrupt) {
            return Fault::Deadline {
                call,
                ms: limits.call_ms(call),
            };
        }
        if error.is::<HostWaitExceeded>() {
            return Fault::HostWait {
                call,
                ms: limits.call_ms(call),
            };
        }
        match trap {
            Some(t) => Fault::Trap {
                call,
                trap: t.to_string(),
            },
            None => Fault::Other {
                call,
                error: first_line(error),
            },
        }
    }
}

/// The error and its causes on one line, without the wasm backtrace.
fn first_line(error: &wasmtime::Error) -> String {
    let text = format!("{error:#}");
    text.lines().next().unwrap_or("").trim().to_string()
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Deadline { call, ms } => write!(
                f,
                "{} ran past its deadline of {ms} ms (max_call_ms) and was interrupted",
                call.as_str()
            ),
            Fault::HostWait { call, ms } => write!(
                f,
                "{} did not return within its deadline of {ms} ms (max_call_ms) while \
                 waiting on the host and was abandoned",
                call.as_str()
            ),
            Fault::MemoryCap {
                call,
                cap_mb,
                wanted,
                then,
            } => write!(
                f,
                "{} hit the memory cap of {cap_mb} MiB (max_memory_mb; it asked for {:.1} MiB) \
                 and failed: {then}",
                call.as_str(),
                *wanted as f64 / MIB as f64
            ),
            Fault::Trap { call, trap } => write!(f, "{} trapped: {trap}", call.as_str()),
            Fault::Other { call, error } => write!(f, "{} failed: {error}", call.as_str()),
        }
    }
}

// ----- the engine -----

/// Store-wide counts (StoreLimits) and the pooling allocator's per-module
/// sizes; a Rust `wasm32-wasip2` component has a handful of core instances
/// (its module, the WASI adapter, shims) with one memory and table each.
const INSTANCES_PER_STORE: usize = 64;
const TABLES_PER_STORE: usize = 64;
const MEMORIES_PER_STORE: usize = 8;
const TABLE_ELEMENTS: usize = 50_000;
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 8;
/// Instances the pool holds at least (room for an instance and its
/// replacement per sink, e.g. during a live upgrade).
pub const MIN_POOLED_INSTANCES: u32 = 64;

/// What the engine is sized for: the largest memory cap of any sink, and
/// how many instances may live at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    pub max_memory_mb: u32,
    pub instances: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_memory_mb: DEFAULT_MAX_MEMORY_MB,
            instances: MIN_POOLED_INSTANCES,
        }
    }
}

impl EngineOptions {
    /// Sized for sinks with these limits: two instances per sink, at least
    /// [`MIN_POOLED_INSTANCES`].
    pub fn for_sinks<'a>(limits: impl IntoIterator<Item = &'a Limits>) -> Self {
        let mut o = EngineOptions::default();
        let mut sinks = 0u32;
        for l in limits {
            sinks += 1;
            o.max_memory_mb = o.max_memory_mb.max(l.max_memory_mb);
        }
        o.instances = o.instances.max(sinks.saturating_mul(2));
        o
    }

    fn pooling(&self) -> PoolingAllocationConfig {
        let n = self.instances;
        let mut p = PoolingAllocationConfig::new();
        p.total_component_instances(n)
            .total_core_instances(n * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(n * MEMORIES_PER_COMPONENT)
            .total_tables(n * TABLES_PER_COMPONENT)
            .total_stacks(n)
            .max_memory_size(self.max_memory_mb as usize * MIB)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .max_tables_per_module(TABLES_PER_COMPONENT)
            .table_elements(TABLE_ELEMENTS);
        p
    }
}

/// The engine all sinks run in: component model, epoch interruption (each
/// call gets a deadline; reaching it traps), and the pooling allocator so
/// instantiating is cheap, or on-demand allocation if the pool cannot be
/// set up (e.g. not enough address space). Starts the epoch ticker.
pub fn engine(opts: &EngineOptions) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // `INFLUX_SINK_PROFILE=perfmap`: name the compiled wasm functions for
    // `perf` (/tmp/perf-PID.map), for finding where the component's time goes.
    if std::env::var("INFLUX_SINK_PROFILE").is_ok_and(|v| v == "perfmap") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(opts.pooling()));
    let engine = match Engine::new(&config) {
        Ok(e) => e,
        Err(e) => {
            log::warn(
                "host",
                &format!(
                    "the pooling instance allocator could not be set up ({}); \
                     allocating instances on demand",
                    first_line(&e)
                ),
            );
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config)?
        }
    };
    start_epoch_ticker(&engine);
    Ok(engine)
}

/// Advance `engine`'s epoch every [`EPOCH_TICK`] until the engine is gone.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(EPOCH_TICK);
            match weak.upgrade() {
                Some(e) => e.increment_epoch(),
                None => return,
            }
        });
    if let Err(e) = spawned {
        // Without ticks no deadline is ever reached: calls are then only
        // bounded by the host's wait (Limits::host_wait) while they await.
        log::error("host", &format!("cannot start the epoch ticker: {e}"));
    }
}

// ----- restarts -----

/// First delay before restarting a crashed instance.
pub const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between restarts.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);
/// An instance that ran this long without crashing resets the backoff.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Restart delays: 1 s doubling to 60 s; back to 1 s once an instance has
/// run for 60 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    restarts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST_RESTART_DELAY,
            restarts: 0,
        }
    }
}

impl Backoff {
    /// The delay before the next restart, after an instance that ran for
    /// `ran_for`; counts the restart.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= HEALTHY_RUN {
            self.next = FIRST_RESTART_DELAY;
        }
        let d = self.next;
        self.next = (d * 2).min(MAX_RESTART_DELAY);
        self.restarts += 1;
        d
    }

    /// Restarts counted so far (the number of the one just planned).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_and_resets_after_a_healthy_run() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(5);
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay(quick).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.restarts(), 9);
        assert_eq!(b.next_delay(HEALTHY_RUN).as_secs(), 1);
        assert_eq!(b.next_delay(quick).as_secs(), 2);
    }

    #[test]
    fn deadline_ticks_cover_the_whole_deadline() {
        assert_eq!(Limits::deadline_ticks(1000), 101);
        assert_eq!(Limits::deadline_ticks(15), 3);
        let l = Limits {
            max_memory_mb: 1,
            max_call_ms: 10,
        };
        assert_eq!(l.call_ms(Call::Poll), 10);
        assert_eq!(l.call_ms(Call::Open), MIN_OPEN_MS);
    }

    #[test]
    fn memory_cap_counts_all_memories_and_remembers_a_refusal() {
        let limits = Limits {
            max_memory_mb: 2,
            max_call_ms: 1000,
        };
        let mut cap = MemoryCap::new(&limits);
        assert!(cap.memory_growing(0, MIB, None).unwrap());
        assert!(cap.memory_growing(0, MIB / 2, None).unwrap());
        assert_eq!(cap.refused(), None);
        // 1.5 MiB held; growing the first memory by 1 MiB exceeds 2 MiB.
        assert!(!cap.memory_growing(MIB, 2 * MIB, None).unwrap());
        assert_eq!(cap.refused(), Some(MIB * 5 / 2));
        assert_eq!(cap.in_use(), MIB * 3 / 2);
        cap.begin_call();
        assert_eq!(cap.refused(), None);
        // A growth allowed here but failed later is taken back.
        assert!(cap.memory_growing(MIB, MIB * 3 / 2, None).unwrap());
        cap.memory_grow_failed(wasmtime::format_err!("no")).unwrap();
        assert_eq!(cap.in_use(), MIB * 3 / 2);
    }

    #[test]
    fn faults_are_classified_and_named() {
        let limits = Limits {
            max_memory_mb: 16,
            max_call_ms: 200,
        };
        let interrupt = wasmtime::Error::new(Trap::Interrupt);
        let f = Fault::classify(Call::WriteLines, &interrupt, &limits, None);
        assert_eq!(
            f,
            Fault::Deadline {
                call: Call::WriteLines,
                ms: 200
            }
        );
        assert!(f.to_string().contains("deadline of 200 ms"), "{f}");

        let unreachable = wasmtime::Error::new(Trap::UnreachableCodeReached);
        let f = Fault::classify(Call::Poll, &unreachable, &limits, Some(17 * MIB));
        let text = f.to_string();
        assert!(
            text.contains("memory cap of 16 MiB") && text.contains("17.0 MiB"),
            "{text}"
        );
        let f = Fault::classify(Call::Poll, &unreachable, &limits, None);
        assert!(matches!(f, Fault::Trap { .. }), "{f:?}");
        assert!(f.to_string().contains("poll trapped"), "{f}");

        let waited = wasmtime::Error::new(HostWaitExceeded);
        let f = Fault::classify(Call::Open, &waited, &limits, None);
        assert_eq!(
            f,
            Fault::HostWait {
                call: Call::Open,
                ms: MIN_OPEN_MS
            }
        );

        let other = wasmtime::format_err!("table full");
        let f = Fault::classify(Call::Stats, &other, &limits, None);
        assert_eq!(f.to_string(), "stats failed: table full");
    }

    #[test]
    fn engine_options_fit_the_largest_cap_and_every_sink_twice() {
        let a = Limits::default();
        let b = Limits {
            max_memory_mb: 512,
            max_call_ms: 1000,
        };
        let o = EngineOptions::for_sinks([&a, &b]);
        assert_eq!(o.max_memory_mb, 512);
        assert_eq!(o.instances, MIN_POOLED_INSTANCES);
        let many = vec![a; 40];
        assert_eq!(EngineOptions::for_sinks(&many).instances, 80);
    }
}
