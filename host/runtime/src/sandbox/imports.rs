//! What a plugin may call: WASI (nothing granted), and the host imports of the contract —
//! `context.lookup`, `config.get`, `log.write` — for each contract version the host accepts
//! (0.1 and 0.2 have the same imports, generated twice; both delegate to one implementation).

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::memory::MemoryLimiter;
use crate::SharedContext;
use crate::bindings::{v1, v2};
use crate::version::short_version as short;

/// Longest log line a plugin writes, in bytes.
const MAX_LOG_LINE: usize = 1024;

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

/// The state of one call's `Store`.
pub(crate) struct CallState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) memory: MemoryLimiter,
    pub(super) log_lines_left: u32,
    pub(super) lookups_left: u32,
    pub(super) context_error: Option<String>,
    /// Set when the call broke a per-call limit (other than time and memory).
    pub(super) limit_error: Option<String>,
    pub(super) call: CallContext,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A log line's severity, whichever contract version wrote it.
#[derive(Clone, Copy)]
enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl CallState {
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

    fn config(&mut self, key: String) -> Option<String> {
        self.call.config.get(&key).cloned()
    }

    fn log(&mut self, level: Level, mut message: String) {
        if self.log_lines_left == 0 {
            return;
        }
        self.log_lines_left -= 1;
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
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error => emit!(error),
        }
    }
}

/// The imports of one contract version, delegating to [`CallState`].
macro_rules! imports_of {
    ($v:ident) => {
        impl $v::switchyard::router::context::Host for CallState {
            async fn lookup(
                &mut self,
                kind: String,
                id: String,
            ) -> wasmtime::Result<Option<String>> {
                CallState::lookup(self, kind, id).await
            }
        }

        impl $v::switchyard::router::config::Host for CallState {
            fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
                Ok(self.config(key))
            }
        }

        impl $v::switchyard::router::log::Host for CallState {
            fn write(
                &mut self,
                level: $v::switchyard::router::log::Level,
                message: String,
            ) -> wasmtime::Result<()> {
                use $v::switchyard::router::log::Level as L;
                let level = match level {
                    L::Debug => Level::Debug,
                    L::Info => Level::Info,
                    L::Warn => Level::Warn,
                    L::Error => Level::Error,
                };
                self.log(level, message);
                Ok(())
            }
        }

        impl $v::switchyard::router::types::Host for CallState {}
    };
}

imports_of!(v1);
imports_of!(v2);
