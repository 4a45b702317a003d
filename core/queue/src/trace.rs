//! W3C trace context (`traceparent`, `tracestate`) across process boundaries: from a request
//! into a span, from the current span into a task, from a task into the consumer's span.
//! Uses the OpenTelemetry API only: the embedding program installs the propagator and the
//! exporter (with neither, these do nothing).

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
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

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
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
    let Some(traceparent) = &trace.traceparent else {
        return;
    };
    let mut map = HashMap::from([("traceparent".to_owned(), traceparent.clone())]);
    if let Some(tracestate) = &trace.tracestate {
        map.insert("tracestate".to_owned(), tracestate.clone());
    }
    let carrier = Carrier(map);
    let parent: Context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    let _ = span.set_parent(parent);
}

/// Marks `span` as failed (status ERROR) with `message`, per the OpenTelemetry conventions.
pub fn record_error(span: &tracing::Span, message: &str) {
    span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
}
