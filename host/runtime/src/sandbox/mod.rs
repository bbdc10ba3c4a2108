//! One engine, one linker, and the per-call sandbox: a fresh `Store` with its limits for every
//! call, instantiated from a type-checked, pre-linked component ([`Prepared`]).
//!
//! `exports` prepares and calls a component of either contract version; `imports` is what a
//! component may call; `memory` caps one instance and charges all of them to one budget.

mod exports;
mod imports;
mod memory;

pub(crate) use exports::Prepared;
pub(crate) use imports::{CallContext, CallState};

use std::sync::Arc;
use std::time::Duration;

use switchyard_model::routing::{Decision, RouteRequest};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use self::exports::Failure;
use self::memory::{MemoryBudget, MemoryLimiter};
use crate::bindings::{v1, v2};
use crate::{LoadError, PluginError};

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
    /// Largest transformed payload a decision may carry (contract 0.2), in bytes.
    pub max_payload_bytes: usize,
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
            max_payload_bytes: 1 << 20,
            max_log_lines: 64,
        }
    }
}

/// Epoch tick: how often a running guest yields to the async runtime.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Instance slots kept beyond `max_concurrent_calls` for canaries and checks.
const SPARE_SLOTS: u32 = 8;

/// Linear memory of a finished instance's slot reset in place (only its resident pages, found
/// with `PAGEMAP_SCAN` where the kernel has it) rather than given back to the kernel. Giving it
/// back (`madvise`) after every call flushes the TLB of every CPU the process runs on, which was
/// a fifth of the gateway's CPU time at a few thousand calls per second. A routing call touches
/// less than this (stack, data, a small heap); what lies beyond is still given back. Each slot
/// that has served a call keeps up to this much resident for its next call.
const KEEP_RESIDENT_MEMORY: usize = 128 << 10;
/// The same for an instance's tables.
const KEEP_RESIDENT_TABLES: usize = 16 << 10;
/// Bytes of guest stderr kept to explain a trap (e.g. a Rust panic message).
const STDERR_CAPTURE: usize = 2048;

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

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Destinations one decision may name.
pub const MAX_DESTINATIONS: usize = 32;

/// Longest ordering key accepted, in bytes.
pub const MAX_ORDERING_KEY: usize = 256;

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
            .max_memory_size(usize::try_from(limits.memory_bytes)?.max(1 << 20))
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLES)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // The imports of both contract versions: a component of either links.
        v1::Router::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        v2::Router::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;

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
            budget: Arc::new(MemoryBudget::new(limits.memory_total_bytes)),
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
        Prepared::new(pre)
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
        let key = self
            .run(call, |mut store| async move {
                let key = exports::ordering_key(plugin, &mut store, request).await;
                (store, key)
            })
            .await?;
        match key {
            Some(k) if k.len() > MAX_ORDERING_KEY => Err(PluginError::InvalidDecision(format!(
                "ordering key of {} bytes; at most {MAX_ORDERING_KEY}",
                k.len()
            ))),
            k => Ok(k.filter(|k| !k.is_empty())),
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
        let answered = self
            .run(call, |mut store| async move {
                let answer = exports::route(plugin, &mut store, request).await;
                (store, answer)
            })
            .await?;
        answered.and_then(|d| validate(d, &self.limits))
    }

    /// Runs `calls` on a fresh store with this call's limits and maps every way it can fail to
    /// a [`PluginError`].
    async fn run<T, F, Fut>(&self, call: CallContext, calls: F) -> Result<T, PluginError>
    where
        F: FnOnce(Store<CallState>) -> Fut,
        Fut: std::future::Future<Output = (Store<CallState>, Result<T, Failure>)>,
    {
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
        // The store comes back with the outcome, so that its state explains a failure. On a
        // timeout it is dropped with the future: a timeout needs no further explanation.
        let (store, outcome) = match tokio::time::timeout(limits.call_timeout, calls(store)).await {
            Ok(done) => done,
            Err(_) => return Err(PluginError::Timeout(limits.call_timeout.as_millis() as u64)),
        };
        let data = store.data();
        match outcome {
            Err(_) if data.memory.exceeded => Err(PluginError::MemoryExceeded(limits.memory_bytes)),
            Err(_) if data.memory.pressure => {
                Err(PluginError::MemoryPressure(limits.memory_total_bytes))
            }
            Err(Failure::Instantiate(msg)) => Err(PluginError::Instantiate(msg)),
            Err(Failure::Guest(_)) if data.limit_error.is_some() => Err(
                PluginError::LimitExceeded(data.limit_error.clone().unwrap_or_default()),
            ),
            Err(Failure::Guest(_)) if data.context_error.is_some() => Err(
                PluginError::ContextUnavailable(data.context_error.clone().unwrap_or_default()),
            ),
            Err(Failure::Guest(e)) => Err(PluginError::Trap(describe_trap(&e, &stderr))),
            Ok(value) => Ok(value),
        }
    }
}

/// Permission to run one call beside live traffic (see [`Limits::side_calls`]).
pub(crate) struct SideSlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

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

/// The host's checks of a decision: destinations present and named, metadata keys every store
/// can hold, a transformed payload that is JSON, and the size limits.
fn validate(d: Decision, limits: &Limits) -> Result<Decision, PluginError> {
    let invalid = |m: String| Err(PluginError::InvalidDecision(m));
    if d.destinations().any(|dest| dest.trim().is_empty()) {
        return invalid("empty destination".into());
    }
    if d.also.len() >= MAX_DESTINATIONS {
        return invalid(format!("more than {MAX_DESTINATIONS} destinations"));
    }
    if let Some((k, _)) = d.metadata.iter().find(|(k, _)| !valid_key(k)) {
        return invalid(format!(
            "metadata key {:?} is empty, too long, starts with `$` or holds `.` or NUL",
            clip(k.clone())
        ));
    }
    let size = d.destinations().map(str::len).sum::<usize>()
        + d.reason.len()
        + d.metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > limits.max_decision_bytes {
        return invalid(format!(
            "decision of {size} bytes exceeds the limit of {}",
            limits.max_decision_bytes
        ));
    }
    if let Some(payload) = &d.payload {
        if payload.len() > limits.max_payload_bytes {
            return invalid(format!(
                "transformed payload of {} bytes exceeds the limit of {}",
                payload.len(),
                limits.max_payload_bytes
            ));
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(payload).is_err() {
            return invalid("the transformed payload is not JSON".into());
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(metadata: Vec<(&str, &str)>) -> Decision {
        Decision {
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Decision::to("d", "")
        }
    }

    #[test]
    fn metadata_keys_must_be_storable_values_may_be_anything() {
        let limits = Limits::default();
        let ok = validate(
            decision(vec![("json", "{not json"), ("emoji", "\u{1F4A5}\0")]),
            &limits,
        )
        .unwrap();
        assert_eq!(ok.metadata["json"], "{not json");
        for bad in ["", "$where", "a.b", "nul\0", &"k".repeat(300)] {
            let err = validate(decision(vec![(bad, "v")]), &limits).unwrap_err();
            assert!(
                matches!(err, PluginError::InvalidDecision(_)),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn destinations_must_be_named_and_payloads_json() {
        let limits = Limits::default();
        let fan_out = Decision {
            also: vec!["audit".into()],
            payload: Some(r#"{"reshaped":true}"#.into()),
            ..Decision::to("orders", "")
        };
        assert!(validate(fan_out.clone(), &limits).is_ok());
        for bad in [
            Decision {
                also: vec![" ".into()],
                ..fan_out.clone()
            },
            Decision {
                payload: Some("{nope".into()),
                ..fan_out.clone()
            },
            Decision {
                also: vec!["x".into(); MAX_DESTINATIONS],
                ..fan_out.clone()
            },
            Decision::to("", "no destination at all"),
        ] {
            assert!(
                matches!(
                    validate(bad.clone(), &limits),
                    Err(PluginError::InvalidDecision(_))
                ),
                "{bad:?}"
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
