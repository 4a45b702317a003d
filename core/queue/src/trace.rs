//! W3C trace context (`traceparent`, `tracestate`) across process boundaries: from a request
//! into a span, from the current span into a task, from a task into the consumer's span.
//! Uses the OpenTelemetry API only: the embedding program installs the propagator and the
//! exporter (with neither, these do nothing).

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TraceContextExt as _,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace context of a span, as carried by a task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// The `traceparent` header value.
    pub traceparent: Option<String>,
    /// The `tracestate` header value.
    pub tracestate: Option<String>,
}

struct Carrier(HashMap<String, String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// The context of `span`, to write into a task or a request.
pub fn context_of(span: &tracing::Span) -> TraceContext {
    let mut carrier = Carrier(HashMap::new());
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    TraceContext {
        traceparent: carrier.0.remove("traceparent").filter(|v| !v.is_empty()),
        tracestate: carrier.0.remove("tracestate").filter(|v| !v.is_empty()),
    }
}

/// Makes `span` a child of the remote context `trace` (if it holds a valid `traceparent`).
pub fn set_parent(span: &tracing::Span, trace: &TraceContext) {
    // A disabled span (no subscriber, or filtered out) has no parent to set: skip the parsing.
    if span.is_disabled() {
        return;
    }
    let Some(traceparent) = trace.traceparent.as_deref() else {
        return;
    };
    // Read in place: no map or copies of the two headers for each task.
    let carrier = Headers {
        traceparent,
        tracestate: trace.tracestate.as_deref(),
    };
    let parent: Context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    let _ = span.set_parent(parent);
}

/// The two W3C headers of a task, borrowed.
struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = vec!["traceparent"];
        keys.extend(self.tracestate.map(|_| "tracestate"));
        keys
    }
}

/// Names `span` and sets its attributes (`describe` returns both) if, and only if, the sampler
/// keeps it. Given as fields of the `tracing` span, they would be formatted for every span,
/// kept or not: tracing-opentelemetry builds a span's attributes before the sampler runs.
/// Call it after [`set_parent`]: it starts the OpenTelemetry span, which fixes its parent.
/// A sampler sees the span's `tracing` name and no attributes (the environment's samplers
/// look at the trace id and the parent only).
pub(crate) fn describe(
    span: &tracing::Span,
    describe: impl FnOnce() -> (String, Vec<opentelemetry::KeyValue>),
) {
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    let otel = context.span();
    if otel.is_recording() {
        let (name, attributes) = describe();
        otel.update_name(name);
        otel.set_attributes(attributes);
    }
}

/// Marks `span` as failed (status ERROR) with `message`, per the OpenTelemetry conventions.
pub fn record_error(span: &tracing::Span, message: &str) {
    span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
}
