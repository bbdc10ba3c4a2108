//! Trace context through the queue. A queue breaks a trace in two unless the job carries it: a
//! [`TraceContext`] is the W3C `traceparent` of the span a job continues (the ingest, or the
//! attempt before a retry) and when the job was queued. The worker that fetches the job records
//! the wait as a `queue` span under that parent and continues the trace under it.
//!
//! Everything here is a no-op until [`enable`] (the gateway calls it when it exports traces),
//! so that a gateway without tracing carries nothing and computes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace a queued job continues. Optional in a job: jobs queued by an older version or by a
/// gateway without tracing have none, and read as such.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceContext {
    /// `00-<trace id>-<parent span id>-<flags>`.
    pub traceparent: String,
    /// When the job was queued (ms since the Unix epoch): the start of its `queue` span.
    pub queued_at_ms: u64,
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns trace propagation on (with a W3C propagator and a tracer provider installed globally).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The W3C headers (`traceparent`, and `tracestate` when set) of `span`, to send with a request;
/// empty when tracing is off or the span is not part of a sampled trace.
pub fn headers(span: &tracing::Span) -> HashMap<String, String> {
    let mut headers = HashMap::new();
    if enabled() {
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
        }
    }
    headers.retain(|_, v| !v.is_empty());
    headers
}

/// What a job queued now (`now_ms`) from within `span` carries.
pub fn carry(span: &tracing::Span, now_ms: u64) -> Option<TraceContext> {
    headers(span)
        .remove("traceparent")
        .map(|traceparent| TraceContext {
            traceparent,
            queued_at_ms: now_ms,
        })
}

/// The remote parent named by W3C headers (`traceparent`, `tracestate`); an empty context when
/// they are absent or malformed.
pub fn extract(headers: &HashMap<String, String>) -> Context {
    global::get_text_map_propagator(|p| p.extract(headers))
}

/// Makes `span` (not entered yet) a child of `parent` (a remote context); a no-op when tracing
/// is off or `parent` names no span.
pub fn set_parent(span: &tracing::Span, parent: Context) {
    if enabled() && parent.span().span_context().is_valid() {
        // Fails only for a span that is disabled or already entered: then it has no parent to set.
        let _ = span.set_parent(parent);
    }
}

/// Continues a fetched job's trace in `span` (not entered yet): records the time the job waited
/// in `queue` (a lane name) as a `queue` span under the job's parent, and makes `span` its
/// child. A job without a trace context leaves `span` a root.
pub fn continue_job(span: &tracing::Span, trace: Option<&TraceContext>, queue: &'static str) {
    let Some(trace) = trace.filter(|_| enabled()) else {
        return;
    };
    let parent = extract(&HashMap::from([(
        "traceparent".to_string(),
        trace.traceparent.clone(),
    )]));
    if !parent.span().span_context().is_valid() {
        return;
    }
    let tracer = global::tracer("switchyard");
    let wait = tracer
        .span_builder("queue")
        .with_kind(SpanKind::Consumer)
        // Another gateway's clock may run ahead of this one's: the wait never ends before it starts.
        .with_start_time(
            UNIX_EPOCH + Duration::from_millis(trace.queued_at_ms.min(crate::clock::now_ms())),
        )
        .with_attributes([KeyValue::new("messaging.destination.name", queue)])
        .start_with_context(&tracer, &parent);
    // Ends now: the job has just been fetched.
    let cx = parent.with_span(wait);
    cx.span().end();
    set_parent(span, cx);
}

/// Names `span` for OpenTelemetry (`otel.name`, when given, and `otel.kind`) when traces are
/// exported; log lines without tracing do not carry these fields.
pub fn name(span: &tracing::Span, name: Option<&'static str>, kind: &'static str) {
    if enabled() {
        if let Some(name) = name {
            span.record("otel.name", name);
        }
        span.record("otel.kind", kind);
    }
}

/// Records the trace id of `span` in its `trace_id` field (for the log lines inside it), when
/// traces are exported.
pub fn record_trace_id(span: &tracing::Span) {
    if enabled() {
        let id = span.context().span().span_context().trace_id();
        if id != opentelemetry::trace::TraceId::INVALID {
            span.record("trace_id", tracing::field::display(id));
        }
    }
}
