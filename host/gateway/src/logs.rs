//! Logging set-up: JSON lines for machines, a readable format on a terminal.
//!
//! Lines are formatted where they are logged and written to stderr by a thread of their own,
//! buffered, and flushed whenever no line is waiting: a busy gateway writes its lines in a few
//! large writes instead of one system call per line, and a slow stderr never stalls a request.
//! Nothing is dropped (a full buffer makes the logging caller wait). Keep the returned guard
//! alive: dropping it flushes what is left.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Flushes the log lines still buffered when dropped.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

/// Installs the global subscriber. Level from `RUST_LOG` (default `info`); `format` is `json` or
/// `pretty`, or chosen by whether stderr is a terminal.
pub fn init(format: Option<&str>) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(f) => f == "json",
        None => !std::io::stderr().is_terminal(),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("switchyard-logs")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            // The innermost span's fields (the correlation id among them) once per line; the
            // whole list repeated them and cost a fifth of the CPU time at a few thousand
            // events/s (the formatter re-parses each span's fields for every line).
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
    LogGuard(guard)
}
