//! One engine, one linker, and the per-call sandbox: a fresh `Store` with its limits for every
//! call, instantiated from a type-checked [`RouterPre`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::keyed::KeyedRouterPre;
use crate::bindings::switchyard::router::{
    config as wit_config, context as wit_context, log as wit_log,
};
use crate::bindings::{Router, RouterPre, switchyard::router::types as wit};
use crate::version::short_version as short;
use crate::{LoadError, PluginError, SharedContext};
use switchyard_model::routing::{Decision, RouteRequest};

/// Per-call limits and pool size.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock limit of one call (instantiation included).
    pub call_timeout: Duration,
    /// Linear memory cap of one instance, in bytes.
    pub memory_bytes: u64,
    /// Linear memory of all instances together, in bytes: a growth past it is refused and the
    /// call fails with [`PluginError::MemoryPressure`] (the host's state, not the plugin's fault).
    pub memory_total_bytes: u64,
    /// `context.lookup` calls one call may make; the next one fails the call.
    pub context_lookups: u32,
    /// How many calls may run at once; sizes the instance pool. Further calls wait for a slot.
    pub max_concurrent_calls: u32,
    /// Calls beside live traffic (shadow comparisons, dry runs, what-if replays) that may run at
    /// once, in instance slots of their own: they never take a slot from a live route.
    pub side_calls: u32,
    /// Largest decision accepted (destination + reason + metadata), in bytes.
    pub max_decision_bytes: usize,
    /// Log lines a plugin may write per call; more are dropped.
    pub max_log_lines: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_secs(10),
            memory_bytes: 64 << 20,
            memory_total_bytes: 4096 << 20,
            context_lookups: 16,
            max_concurrent_calls: 1024,
            side_calls: 64,
            max_decision_bytes: 64 << 10,
            max_log_lines: 64,
        }
    }
}

/// Epoch tick: how often a running guest yields to the async runtime.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Instance slots kept beyond `max_concurrent_calls` for canaries and checks.
const SPARE_SLOTS: u32 = 8;
/// Bytes of guest stderr kept to explain a trap (e.g. a Rust panic message).
const STDERR_CAPTURE: usize = 2048;
const MAX_LOG_LINE: usize = 1024;

/// The engine, the linker and the call slots shared by every plugin of a host.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    linker: Arc<Linker<CallState>>,
    slots: Arc<Semaphore>,
    side_slots: Arc<Semaphore>,
    limits: Arc<Limits>,
    budget: Arc<MemoryBudget>,
}

/// Linear memory charged by every live instance, against [`Limits::memory_total_bytes`]. Calls
/// beside live traffic (shadow comparisons, dry runs) may hold at most a quarter of it, so that
/// they never push live routing into memory pressure.
#[derive(Debug)]
struct MemoryBudget {
    total: u64,
    used: std::sync::atomic::AtomicU64,
    side_used: std::sync::atomic::AtomicU64,
}

impl MemoryBudget {
    fn side_total(&self) -> u64 {
        self.total / 4
    }

    /// Charges `bytes` if they fit under the total (and, for a side call, under its share).
    fn charge(&self, bytes: u64, side: bool) -> bool {
        use std::sync::atomic::Ordering;
        let fits = |counter: &std::sync::atomic::AtomicU64, limit: u64| {
            counter
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add(bytes).filter(|n| *n <= limit)
                })
                .is_ok()
        };
        if side && !fits(&self.side_used, self.side_total()) {
            return false;
        }
        if fits(&self.used, self.total) {
            return true;
        }
        if side {
            self.side_used.fetch_sub(bytes, Ordering::AcqRel);
        }
        false
    }

    fn refund(&self, bytes: u64, side: bool) {
        use std::sync::atomic::Ordering;
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if side {
            self.side_used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A compiled, type-checked plugin, ready to be instantiated per call.
#[derive(Clone)]
pub(crate) struct Prepared {
    pre: RouterPre<CallState>,
    /// Set when the component targets `keyed-router` (it exports `ordering-key`).
    keyed: Option<KeyedRouterPre<CallState>>,
}

impl Prepared {
    /// True when the plugin chooses ordering keys.
    pub(crate) fn is_keyed(&self) -> bool {
        self.keyed.is_some()
    }
}

/// Longest ordering key accepted, in bytes.
pub const MAX_ORDERING_KEY: usize = 256;

/// Which export a call runs.
#[derive(Clone, Copy)]
enum Export {
    Route,
    OrderingKey,
}

/// What an export answered.
enum Reply {
    Route(Result<wit::Decision, wit::RouteError>),
    Key(Option<String>),
}

impl Sandbox {
    /// Builds the engine (pooling allocator sized from `limits`), the linker with WASI and the
    /// host imports, and starts the epoch ticker (it stops when the engine is dropped).
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let slots = limits.max_concurrent_calls.max(1) + limits.side_calls + SPARE_SLOTS;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 4)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .total_stacks(slots)
            .max_memory_size(usize::try_from(limits.memory_bytes)?.max(1 << 20));
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Router::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;

        Ok(Sandbox {
            engine,
            linker: Arc::new(linker),
            slots: Arc::new(Semaphore::new(limits.max_concurrent_calls.max(1) as usize)),
            side_slots: Arc::new(Semaphore::new(limits.side_calls as usize)),
            budget: Arc::new(MemoryBudget {
                total: limits.memory_total_bytes,
                used: Default::default(),
                side_used: Default::default(),
            }),
            limits: Arc::new(limits),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Linear memory held by plugin instances right now, in bytes.
    pub fn memory_in_use(&self) -> u64 {
        self.budget.used.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `bytes` and checks them against the `router` world. Blocking (compilation):
    /// call it off the async runtime.
    pub(crate) fn prepare(&self, bytes: &[u8]) -> Result<Prepared, LoadError> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::NotAComponent(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::UnknownImports(format!("{e:#}")))?;
        let keyed = KeyedRouterPre::new(pre.clone()).ok();
        let pre = RouterPre::new(pre).map_err(|e| LoadError::WrongInterface(format!("{e:#}")))?;
        Ok(Prepared { pre, keyed })
    }

    /// The imports and exports of a component, as names (for `plugin check`).
    pub fn describe(&self, bytes: &[u8]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let component = Component::new(&self.engine, bytes)?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        Ok((imports, exports))
    }

    /// Runs one live `route` call in a fresh sandbox (waiting for a live slot).
    pub(crate) async fn call(
        &self,
        plugin: &Prepared,
        call: CallContext,
        request: &RouteRequest,
    ) -> Result<Decision, PluginError> {
        let _slot = self.live_slot().await?;
        self.route(plugin, call, request).await
    }

    async fn live_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, PluginError> {
        self.slots
            .acquire()
            .await
            .map_err(|_| PluginError::Instantiate("sandbox closed".into()))
    }

    /// Asks a `keyed-router` plugin for the event's ordering key, in a fresh sandbox on a live
    /// slot; `None` for a plain `router` plugin or an empty key.
    pub(crate) async fn ordering_key(
        &self,
        plugin: &Prepared,
        call: CallContext,
        request: &RouteRequest,
    ) -> Result<Option<String>, PluginError> {
        if !plugin.is_keyed() {
            return Ok(None);
        }
        let _slot = self.live_slot().await?;
        self.key(plugin, call, request).await
    }

    /// Like [`Self::ordering_key`], beside live traffic in the side slot `_slot`.
    pub(crate) async fn ordering_key_side(
        &self,
        _slot: &SideSlot,
        plugin: &Prepared,
        call: CallContext,
        request: &RouteRequest,
    ) -> Result<Option<String>, PluginError> {
        if !plugin.is_keyed() {
            return Ok(None);
        }
        self.key(plugin, CallContext { side: true, ..call }, request)
            .await
    }

    async fn key(
        &self,
        plugin: &Prepared,
        call: CallContext,
        request: &RouteRequest,
    ) -> Result<Option<String>, PluginError> {
        match self.run(plugin, call, request, Export::OrderingKey).await? {
            Reply::Key(Some(k)) if k.len() > MAX_ORDERING_KEY => {
                Err(PluginError::InvalidDecision(format!(
                    "ordering key of {} bytes; at most {MAX_ORDERING_KEY}",
                    k.len()
                )))
            }
            Reply::Key(k) => Ok(k.filter(|k| !k.is_empty())),
            Reply::Route(_) => unreachable!("asked for the ordering key"),
        }
    }

    /// A side slot if one is free now (shadow calls are skipped rather than queued).
    pub(crate) fn try_side_slot(&self) -> Option<SideSlot> {
        self.side_slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(SideSlot)
    }

    /// A side slot, waiting for one (dry runs and what-if replays) up to the call timeout.
    pub(crate) async fn side_slot(&self) -> Result<SideSlot, PluginError> {
        let wait = self.limits.call_timeout;
        match tokio::time::timeout(wait, self.side_slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(SideSlot(permit)),
            Ok(Err(_)) => Err(PluginError::Instantiate("sandbox closed".into())),
            Err(_) => Err(PluginError::Instantiate(format!(
                "no side slot free within {} ms (SIDE_CALLS_MAX)",
                wait.as_millis()
            ))),
        }
    }

    /// Runs one `route` call beside live traffic, in the side slot `_slot`.
    pub(crate) async fn call_side(
        &self,
        _slot: &SideSlot,
        plugin: &Prepared,
        call: CallContext,
        request: &RouteRequest,
    ) -> Result<Decision, PluginError> {
        self.route(plugin, CallContext { side: true, ..call }, request)
            .await
    }

    async fn route(
        &self,
        plugin: &Prepared,
        call: CallContext,
        request: &RouteRequest,
    ) -> Result<Decision, PluginError> {
        let limits = &*self.limits;
        match self.run(plugin, call, request, Export::Route).await? {
            Reply::Route(Err(wit::RouteError::Transient(m))) => {
                Err(PluginError::Transient(clip(m)))
            }
            Reply::Route(Err(wit::RouteError::Permanent(m))) => {
                Err(PluginError::Permanent(clip(m)))
            }
            Reply::Route(Ok(d)) => validate(d, limits.max_decision_bytes),
            Reply::Key(_) => unreachable!("asked for a decision"),
        }
    }

    async fn run(
        &self,
        plugin: &Prepared,
        call: CallContext,
        request: &RouteRequest,
        export: Export,
    ) -> Result<Reply, PluginError> {
        let limits = &*self.limits;
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryLimiter {
                cap: limits.memory_bytes,
                exceeded: false,
                side: call.side,
                budget: self.budget.clone(),
                charged: 0,
                last_charge: 0,
                pressure: false,
            },
            log_lines_left: limits.max_log_lines,
            lookups_left: limits.context_lookups,
            context_error: None,
            limit_error: None,
            call,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_async_yield_and_update(1);
        let event = wit::Event {
            event_id: request.event_id.clone(),
            event_type: request.event_type.clone(),
            correlation_id: request.correlation_id.clone(),
            payload: request.payload.clone(),
            received_at_ms: request.received_at_ms,
            attempt: request.attempt,
        };

        let instantiate = |e: wasmtime::Error| Failure::Instantiate(format!("{e:#}"));
        let run = async {
            match (export, &plugin.keyed) {
                (Export::OrderingKey, Some(keyed)) => {
                    let router = keyed
                        .instantiate_async(&mut store)
                        .await
                        .map_err(instantiate)?;
                    router
                        .call_ordering_key(&mut store, &event)
                        .await
                        .map(Reply::Key)
                        .map_err(Failure::Guest)
                }
                (Export::OrderingKey, None) => Ok(Reply::Key(None)),
                (Export::Route, _) => {
                    let router = plugin
                        .pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(instantiate)?;
                    router
                        .call_route(&mut store, &event)
                        .await
                        .map(Reply::Route)
                        .map_err(Failure::Guest)
                }
            }
        };
        let outcome = tokio::time::timeout(limits.call_timeout, run).await;
        let data = store.data();
        match outcome {
            Err(_) => Err(PluginError::Timeout(limits.call_timeout.as_millis() as u64)),
            Ok(Err(_)) if data.memory.exceeded => {
                Err(PluginError::MemoryExceeded(limits.memory_bytes))
            }
            Ok(Err(_)) if data.memory.pressure => {
                Err(PluginError::MemoryPressure(limits.memory_total_bytes))
            }
            Ok(Err(Failure::Instantiate(msg))) => Err(PluginError::Instantiate(msg)),
            Ok(Err(Failure::Guest(_))) if data.limit_error.is_some() => Err(
                PluginError::LimitExceeded(data.limit_error.clone().unwrap_or_default()),
            ),
            Ok(Err(Failure::Guest(_))) if data.context_error.is_some() => Err(
                PluginError::ContextUnavailable(data.context_error.clone().unwrap_or_default()),
            ),
            Ok(Err(Failure::Guest(e))) => Err(PluginError::Trap(describe_trap(&e, &stderr))),
            Ok(Ok(reply)) => Ok(reply),
        }
    }
}

/// Permission to run one call beside live traffic (see [`Limits::side_calls`]).
pub(crate) struct SideSlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

enum Failure {
    Instantiate(String),
    Guest(wasmtime::Error),
}

fn describe_trap(e: &wasmtime::Error, stderr: &MemoryOutputPipe) -> String {
    let what = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{e:#}"),
    };
    let said = String::from_utf8_lossy(&stderr.contents())
        .trim()
        .to_string();
    if said.is_empty() {
        what
    } else {
        format!("{what}; guest stderr: {said}")
    }
}

/// Longest error message kept from a plugin (it goes into the event's history and the DLQ).
const MAX_ERROR_MESSAGE: usize = 2048;

/// `message` cut to [`MAX_ERROR_MESSAGE`] bytes on a character boundary.
fn clip(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" [truncated]");
    }
    message
}

/// A metadata key every state store can hold as a field name.
fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 256 && !k.starts_with('$') && !k.contains(['.', '\0'])
}

fn validate(d: wit::Decision, max_bytes: usize) -> Result<Decision, PluginError> {
    let size = d.destination.len()
        + d.reason.len()
        + d.metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if d.destination.trim().is_empty() {
        return Err(PluginError::InvalidDecision("empty destination".into()));
    }
    if let Some((k, _)) = d.metadata.iter().find(|(k, _)| !valid_key(k)) {
        return Err(PluginError::InvalidDecision(format!(
            "metadata key {:?} is empty, too long, starts with `$` or holds `.` or NUL",
            clip(k.clone())
        )));
    }
    if size > max_bytes {
        return Err(PluginError::InvalidDecision(format!(
            "decision of {size} bytes exceeds the limit of {max_bytes}"
        )));
    }
    Ok(Decision {
        destination: d.destination,
        reason: d.reason,
        metadata: d.metadata.into_iter().collect(),
    })
}

/// What a call may see: its plugin's identity and config, the event's ids and the live context.
#[derive(Clone)]
pub(crate) struct CallContext {
    pub plugin: Arc<str>,
    pub version: Arc<str>,
    pub correlation_id: String,
    pub event_id: String,
    pub config: Arc<BTreeMap<String, String>>,
    pub context: SharedContext,
    /// Beside live traffic (a shadow comparison, a dry run): set by the side-slot calls.
    pub side: bool,
}

pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryLimiter,
    log_lines_left: u32,
    lookups_left: u32,
    context_error: Option<String>,
    /// Set when the call broke a per-call limit (other than time and memory).
    limit_error: Option<String>,
    call: CallContext,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit_context::Host for CallState {
    async fn lookup(&mut self, kind: String, id: String) -> wasmtime::Result<Option<String>> {
        if self.lookups_left == 0 {
            let e = "more context lookups than CONTEXT_LOOKUPS_MAX allows in one call".to_string();
            self.limit_error = Some(e.clone());
            return Err(wasmtime::Error::msg(e));
        }
        self.lookups_left -= 1;
        match self.call.context.lookup(&kind, &id).await {
            Ok(doc) => Ok(doc),
            Err(e) => {
                // Stop the call: a decision on missing live state would be wrong.
                self.context_error = Some(e.clone());
                Err(wasmtime::Error::msg(format!("context lookup failed: {e}")))
            }
        }
    }
}

impl wit_config::Host for CallState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.call.config.get(&key).cloned())
    }
}

impl wit_log::Host for CallState {
    fn write(&mut self, level: wit_log::Level, message: String) -> wasmtime::Result<()> {
        if self.log_lines_left == 0 {
            return Ok(());
        }
        self.log_lines_left -= 1;
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let c = &self.call;
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(
                    target: "switchyard::plugin::guest",
                    plugin = %c.plugin, version = %short(&c.version),
                    correlation_id = %c.correlation_id, event_id = %c.event_id,
                    "{message}"
                )
            };
        }
        match level {
            wit_log::Level::Debug => emit!(debug),
            wit_log::Level::Info => emit!(info),
            wit_log::Level::Warn => emit!(warn),
            wit_log::Level::Error => emit!(error),
        }
        Ok(())
    }
}

impl crate::bindings::switchyard::router::types::Host for CallState {}

/// Caps one instance's linear memory and charges its actual growth (creation included) to the
/// shared budget; remembers which limit refused a growth, so that the resulting failure is
/// reported as [`PluginError::MemoryExceeded`] (the plugin's) or
/// [`PluginError::MemoryPressure`] (the host's) rather than as a generic trap. Nothing waits:
/// a refused growth fails the call at once. The charge is refunded when the store is dropped.
struct MemoryLimiter {
    cap: u64,
    exceeded: bool,
    /// A call beside live traffic: charged to the side share too.
    side: bool,
    budget: Arc<MemoryBudget>,
    charged: u64,
    /// The last growth charged, refunded if the growth then fails.
    last_charge: u64,
    pressure: bool,
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.budget.refund(self.charged, self.side);
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap {
            self.exceeded = true;
            return Ok(false);
        }
        let growth = desired.saturating_sub(current) as u64;
        if !self.budget.charge(growth, self.side) {
            self.pressure = true;
            return Ok(false);
        }
        self.charged += growth;
        self.last_charge = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.budget.refund(self.last_charge, self.side);
        self.charged -= self.last_charge;
        self.last_charge = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(metadata: Vec<(&str, &str)>) -> wit::Decision {
        wit::Decision {
            destination: "d".into(),
            reason: String::new(),
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn metadata_keys_must_be_storable_values_may_be_anything() {
        let ok = validate(
            decision(vec![("json", "{not json"), ("emoji", "\u{1F4A5}\0")]),
            1 << 16,
        )
        .unwrap();
        assert_eq!(ok.metadata["json"], "{not json");
        for bad in ["", "$where", "a.b", "nul\0", &"k".repeat(300)] {
            let err = validate(decision(vec![(bad, "v")]), 1 << 16).unwrap_err();
            assert!(
                matches!(err, PluginError::InvalidDecision(_)),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn long_error_messages_are_clipped() {
        let m = clip("é".repeat(5000));
        assert!(m.len() <= MAX_ERROR_MESSAGE + 12 && m.ends_with("[truncated]"));
        assert_eq!(clip("short".into()), "short");
    }
}

#[cfg(test)]
mod budget_tests {
    use super::MemoryBudget;

    #[test]
    fn side_calls_hold_at_most_a_quarter_and_refunds_balance() {
        let b = MemoryBudget {
            total: 100,
            used: Default::default(),
            side_used: Default::default(),
        };
        assert!(b.charge(25, true));
        assert!(!b.charge(1, true), "the side share is full");
        assert!(b.charge(75, false), "live calls get the rest");
        assert!(!b.charge(1, false), "the whole budget is in use");
        b.refund(25, true);
        assert!(
            !b.charge(30, true),
            "a side growth past its share is refused"
        );
        assert!(b.charge(25, true));
        b.refund(25, true);
        b.refund(75, false);
        let used = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((used(&b.used), used(&b.side_used)), (0, 0));
    }
}
