//! W3C trace context (`traceparent`, `tracestate`) across process boundaries: from a request
//! into a span, from the current span into a task, from a task into the consumer's span.
//! Uses the OpenTelemetry API only: the embedding program installs the propagator and the
//! exporter (with neither, these do nothing).

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

/// What a propagator writes: the two W3C headers a task carries (no map of copied keys for
/// each publish: BENCHMARKS.md, scenario 9); anything else is not carried.
#[derive(Default)]
struct Carrier(TraceContext);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.0.traceparent = Some(value),
            "tracestate" => self.0.tracestate = Some(value),
            _ => {}
        }
    }
}

/// The context of `span`, to write into a task or a request.
pub fn context_of(span: &tracing::Span) -> TraceContext {
    // A disabled span has no context (tracing-opentelemetry gives an empty one): skip the
    // propagator, which every publish would otherwise go through.
    if span.is_disabled() {
        return TraceContext::default();
    }
    let mut carrier = Carrier::default();
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    let Carrier(trace) = carrier;
    TraceContext {
        traceparent: trace.traceparent.filter(|v| !v.is_empty()),
        tracestate: trace.tracestate.filter(|v| !v.is_empty()),
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
    // Read in place: no map or copies of the two headers for each task (unless the state
    // needs cutting).
    let tracestate = trace.tracestate.as_deref().map(capped_tracestate);
    let carrier = Headers {
        traceparent,
        tracestate: tracestate.as_deref(),
    };
    let parent: Context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    let _ = span.set_parent(parent);
}

/// The most of a `tracestate` carried on: what W3C Trace Context asks every vendor to pass on
/// whole. A client could otherwise attach some 15 KB (HTTP/2's header limit) to every task,
/// its retries, its dead letter and every span of its trace.
const TRACESTATE_MAX: usize = 512;

/// `tracestate` cut to [`TRACESTATE_MAX`] as W3C Trace Context says to cut it: members over
/// 128 characters go first, then members from the end. Borrowed when short enough.
fn capped_tracestate(tracestate: &str) -> std::borrow::Cow<'_, str> {
    if tracestate.len() <= TRACESTATE_MAX {
        return tracestate.into();
    }
    let mut kept = String::new();
    let members = tracestate
        .split(',')
        .map(str::trim)
        .filter(|member| !member.is_empty() && member.len() <= 128);
    for member in members {
        let separator = usize::from(!kept.is_empty());
        if kept.len() + separator + member.len() > TRACESTATE_MAX {
            break;
        }
        if separator == 1 {
            kept.push(',');
        }
        kept.push_str(member);
    }
    kept.into()
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::{
        KeyValue,
        trace::{SpanKind, TracerProvider as _},
    };
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter},
    };
    use tracing_subscriber::prelude::*;

    use super::*;

    /// Keeps every exported span.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("lock").extend(batch);
            Ok(())
        }
    }

    /// A consumer span as the dispatcher makes it, under `sampler`, continuing `parent`;
    /// returns whether `describe` ran and the spans exported.
    fn process_span(sampler: Sampler, parent: &TraceContext) -> (bool, Vec<SpanData>) {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_simple_exporter(kept.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let mut described = false;
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("process", otel.kind = "consumer");
            set_parent(&span, parent);
            describe(&span, || {
                described = true;
                (
                    "process q".to_owned(),
                    vec![KeyValue::new("messaging.system", "redis")],
                )
            });
        });
        let spans = kept.0.lock().expect("lock").clone();
        (described, spans)
    }

    fn parent(flags: &str) -> TraceContext {
        TraceContext {
            traceparent: Some(format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"
            )),
            tracestate: None,
        }
    }

    /// A kept span gets its name and attributes, under its remote parent.
    #[test]
    fn a_sampled_process_span_is_named_and_described_under_its_parent() {
        let (described, spans) = process_span(
            Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            &parent("01"),
        );
        assert!(described);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.name, "process q");
        assert_eq!(span.span_kind, SpanKind::Consumer);
        assert_eq!(
            span.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(span.parent_span_is_remote);
        assert!(
            span.attributes
                .contains(&KeyValue::new("messaging.system", "redis")),
            "{:?}",
            span.attributes
        );
    }

    /// A span the sampler drops (here: its remote parent was not sampled) builds no
    /// attributes, and nothing is exported.
    #[test]
    fn a_dropped_process_span_builds_no_attributes() {
        let (described, spans) = process_span(
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            &parent("00"),
        );
        assert!(!described);
        assert!(spans.is_empty());
        let (described, spans) = process_span(Sampler::AlwaysOff, &TraceContext::default());
        assert!(!described);
        assert!(spans.is_empty());
    }

    /// A span's context, as a task carries it: its own ids under the parent's trace, and the
    /// parent's `tracestate`; a disabled span gives none.
    #[test]
    fn a_spans_context_is_written_as_the_w3c_headers() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let parent = TraceContext {
            tracestate: Some("vendor=value".to_owned()),
            ..parent("01")
        };
        let (context, span_id) = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("publish", otel.kind = "producer");
            set_parent(&span, &parent);
            let context = context_of(&span);
            let span_id = span.context().span().span_context().span_id().to_string();
            (context, span_id)
        });
        assert_eq!(
            context.traceparent.as_deref(),
            Some(format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{span_id}-01").as_str())
        );
        assert_ne!(span_id, "00f067aa0ba902b7");
        assert_eq!(context.tracestate.as_deref(), Some("vendor=value"));

        // No tracestate to carry: none, not an empty one.
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let context = tracing::subscriber::with_default(subscriber, || {
            context_of(&tracing::info_span!("publish"))
        });
        assert!(context.traceparent.is_some());
        assert_eq!(context.tracestate, None);

        let disabled = context_of(&tracing::Span::none());
        assert_eq!(disabled, TraceContext::default());
    }

    /// A `tracestate` past 512 characters is cut as W3C Trace Context says (members over 128
    /// characters first, then from the end) before it reaches the span and the tasks.
    #[test]
    fn a_long_tracestate_is_cut_to_512_characters() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let long = format!("big={}", "v".repeat(200));
        let mut members = vec!["first=1".to_owned(), long.clone()];
        members.extend((0..29).map(|i| format!("k{i:02}={}", "x".repeat(60))));
        let tracestate = members.join(",");
        assert!(tracestate.len() > 2_000);
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let carried = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("process");
            set_parent(
                &span,
                &TraceContext {
                    tracestate: Some(tracestate.clone()),
                    ..parent("01")
                },
            );
            context_of(&span).tracestate.expect("a tracestate")
        });
        assert!(carried.len() <= 512, "{} characters", carried.len());
        assert!(carried.starts_with("first=1,k00="), "{carried}");
        assert!(!carried.contains(&long));
        // Whole members only: 7 of the 64-character ones fit after `first=1`.
        assert_eq!(carried.split(',').count(), 8, "{carried}");

        // Short enough: untouched, and not copied.
        assert!(matches!(
            capped_tracestate("a=1,b=2"),
            std::borrow::Cow::Borrowed("a=1,b=2")
        ));
    }
}
