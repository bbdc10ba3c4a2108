//! Logging set-up: JSON lines for machines, a readable format on a terminal; and, when traces
//! are exported (`telemetry`), the layer that turns spans into OpenTelemetry spans.
//!
//! Lines are formatted where they are logged and written to stderr by a thread of their own,
//! buffered, and flushed whenever no line is waiting: a busy gateway writes its lines in a few
//! large writes instead of one system call per line, and a slow stderr never stalls a request.
//! Nothing is dropped (a full buffer makes the logging caller wait). Keep the returned guard
//! alive: dropping it flushes what is left (lines and spans).

use std::io::IsTerminal;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::telemetry::{self, Otlp};

/// Flushes the log lines and spans still buffered when dropped.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _lines: WorkerGuard,
    spans: Option<SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.spans.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: spans not exported at shutdown: {e}");
        }
    }
}

/// Installs the global subscriber. Level from `RUST_LOG` (default `info`); `format` is `json` or
/// `pretty`, or chosen by whether stderr is a terminal. With `otlp`, spans are exported too
/// (call it on the gateway's runtime then).
pub fn init(format: Option<&str>, otlp: Option<&Otlp>) -> anyhow::Result<LogGuard> {
    install(format, otlp, "info")
}

/// For a command whose output is its report (`plugin test`): compact lines on stderr, warnings
/// and errors only unless `RUST_LOG` says otherwise.
pub fn init_quiet() -> anyhow::Result<LogGuard> {
    install(Some("pretty"), None, "warn")
}

fn install(format: Option<&str>, otlp: Option<&Otlp>, level: &str) -> anyhow::Result<LogGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = match format {
        Some(f) => f == "json",
        None => !std::io::stderr().is_terminal(),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("switchyard-logs")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let spans = match otlp {
        None => {
            let _ = tracing_subscriber::registry()
                .with(filter)
                .with(lines(json, writer))
                .try_init();
            None
        }
        Some(otlp) => {
            let (provider, tracer) = telemetry::start(otlp)?;
            // Spans carry their attributes, and the warnings and errors logged inside them (as
            // span events; the info lines stay in the log, which has the trace id). The source
            // location, thread and busy/idle times of every span would double the bytes
            // exported per event for little use. Spans have their own level: `RUST_LOG` (say
            // `warn`, to quiet the lines) leaves them whole.
            let spans = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(filter_fn(|m| {
                    let most = if m.is_span() {
                        Level::INFO
                    } else {
                        Level::WARN
                    };
                    *m.level() <= most
                }));
            let _ = tracing_subscriber::registry()
                .with(spans)
                .with(lines(json, writer).with_filter(filter))
                .try_init();
            Some(provider)
        }
    };
    Ok(LogGuard {
        _lines: guard,
        spans,
    })
}

/// The log lines' layer: JSON or compact. JSON carries the innermost span's fields (the
/// correlation id among them) once per line; the whole list repeated them and cost a fifth of the
/// CPU time at a few thousand events/s (the formatter re-parses each span's fields for every
/// line).
fn lines<S>(json: bool, writer: NonBlocking) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let json_lines = json.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer.clone())
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
    });
    let compact_lines = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .compact()
    });
    // One of the two is `None`, a layer that does nothing.
    Layer::and_then(json_lines, compact_lines)
}
