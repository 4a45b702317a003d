//! W3C trace context (`traceparent`, `tracestate`) across process boundaries: from a request
//! into a span, from the current span into a task, from a task into the consumer's span.
//! Uses the OpenTelemetry API only: the embedding program installs the tracer provider and
//! the exporter (with neither, spans are the API's no-ops and a task keeps the context it came
//! with). The two headers are W3C Trace Context's, written and read here by its grammar
//! (version `00`, lowercase hex, no all-zero ids), whatever propagator the program installs:
//! they are what a task carries, and the SDK's propagator spent some 3k instructions on each
//! (BENCHMARKS.md, scenario 9) and accepted forms the grammar does not (an upper-case or
//! signed version, for one).

use std::{
    borrow::Cow,
    collections::HashSet,
    str::FromStr as _,
    sync::{Arc, LazyLock, Mutex},
};

use opentelemetry::{
    Context, InstrumentationScope, KeyValue,
    global::BoxedTracer,
    trace::{
        Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _,
        TraceFlags, TraceId, TraceState, Tracer as _,
    },
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

/// The two W3C headers, borrowed (from a task).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Remote<'a> {
    pub(crate) traceparent: Option<&'a str>,
    pub(crate) tracestate: Option<&'a str>,
}

impl TraceContext {
    /// The headers, borrowed.
    pub(crate) fn remote(&self) -> Remote<'_> {
        Remote {
            traceparent: self.traceparent.as_deref(),
            tracestate: self.tracestate.as_deref(),
        }
    }
}

/// The OpenTelemetry context of `span` (a `tracing` span). Attached to work spawned from it
/// (`opentelemetry::context::FutureExt::with_context`), it makes the `tracing` spans made
/// there children of `span` without a `tracing` parent, which would keep `span` open (and its
/// duration running) until the spawned work ends. A disabled span gives an empty context.
pub fn otel_context(span: &tracing::Span) -> Context {
    span.context()
}

/// The context of `span`, to write into a task or a request. Inside a handler, where the
/// task's `process` span is not a `tracing` span, use [`current_context`] (or
/// `Task::with_current_trace`): `tracing::Span::current()` is none there unless the handler
/// entered a span of its own.
pub fn context_of(span: &tracing::Span) -> TraceContext {
    // A disabled span has no context (tracing-opentelemetry gives an empty one).
    if span.is_disabled() {
        return TraceContext::default();
    }
    written(&span.context())
}

/// The context of the current span, to write into a task or a request: the innermost of the
/// current `tracing` span (tracing-opentelemetry attaches its context when it is entered) and
/// a span of the queue's own (a handler runs inside its `process` span).
pub fn current_context() -> TraceContext {
    written(&Context::current())
}

/// The W3C headers of `context`'s span: none when it has no valid span context.
fn written(context: &Context) -> TraceContext {
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return TraceContext::default();
    }
    let tracestate = span_context.trace_state().header();
    TraceContext {
        traceparent: Some(traceparent(span_context)),
        tracestate: (!tracestate.is_empty()).then_some(tracestate),
    }
}

/// A version `00` `traceparent`'s length.
const TRACEPARENT_LEN: usize = 55;

/// `00-<trace id>-<span id>-<flags>`, the sampled flag only.
fn traceparent(span_context: &SpanContext) -> String {
    fn hex(out: &mut [u8], bytes: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
    }
    let mut out: [u8; TRACEPARENT_LEN] =
        *b"00-________________________________-________________-__";
    hex(&mut out[3..35], &span_context.trace_id().to_bytes());
    hex(&mut out[36..52], &span_context.span_id().to_bytes());
    hex(
        &mut out[53..],
        &[(span_context.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    // Checked once, not pushed character by character (or through `from_utf8_lossy`), which
    // cost a publish more; it cannot fail: the template and the digits are ASCII.
    String::from_utf8(out.to_vec()).expect("hex digits and dashes are ASCII")
}

/// The span context a `traceparent` holds, read by W3C Trace Context's grammar: version `00`
/// (exactly 55 characters) or a later one (which may add fields after the flags; `ff` is
/// invalid), lowercase hex, neither id all zeros; of the flags only `sampled` is kept. Spaces
/// and tabs around it are allowed (HTTP's optional white space, which W3C's test suite
/// expects a vendor to accept). `None` for anything else.
fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let bytes = value.trim_matches([' ', '\t']).as_bytes();
    let fields_end = bytes.len() == TRACEPARENT_LEN
        || (bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] == b'-');
    if !fields_end || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let [version] = lower_hex::<1>(&bytes[..2])?;
    if version == 0xff || (version == 0 && bytes.len() != TRACEPARENT_LEN) {
        return None;
    }
    let trace_id = lower_hex::<16>(&bytes[3..35])?;
    let span_id = lower_hex::<8>(&bytes[36..52])?;
    let [flags] = lower_hex::<1>(&bytes[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

/// The `N` bytes `digits` (`2N` lowercase hex digits) spell, read through a table without a
/// branch per digit (the parse was the worker's hottest function of its own with telemetry on).
fn lower_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    /// Each byte's value as a lowercase hex digit, 0xff for the rest.
    const NIBBLES: [u8; 256] = {
        let mut table = [0xff; 256];
        let mut digit = 0;
        while digit < 16 {
            table[b"0123456789abcdef"[digit] as usize] = digit as u8;
            digit += 1;
        }
        table
    };
    let mut out = [0; N];
    let mut invalid = 0;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        invalid |= high | low;
        *byte = high << 4 | low;
    }
    (digits.len() == 2 * N && invalid & 0xf0 == 0).then_some(out)
}

/// What a task read from Redis carries on (to its retries, its dead letter, the admin views):
/// its `traceparent` unless longer than any the queue writes could grow to (512 characters:
/// a later version may add fields, none that long), and its `tracestate` cut to 512
/// characters. Checked by length only: each task's context is read by the grammar once, when
/// its span starts (reading it here too cost the worker 0.5k instructions a task).
pub(crate) fn carried(
    traceparent: Option<String>,
    tracestate: Option<String>,
) -> (Option<String>, Option<String>) {
    let Some(traceparent) = traceparent.filter(|value| value.len() <= TRACEPARENT_MAX) else {
        return (None, None);
    };
    let tracestate = tracestate
        .map(|state| {
            if state.len() <= TRACESTATE_MAX {
                state
            } else {
                capped_tracestate(&state).into_owned()
            }
        })
        .filter(|state| !state.is_empty());
    (Some(traceparent), tracestate)
}

/// The longest `traceparent` a task carries on.
const TRACEPARENT_MAX: usize = 512;

/// The trace id (32 lowercase hex digits) of `traceparent`, if it is one the queue continues.
pub(crate) fn trace_id(traceparent: &str) -> Option<String> {
    parse_traceparent(traceparent).map(|(trace_id, _, _)| trace_id.to_string())
}

/// Makes `span` a child of the remote context `trace` (if it holds a valid `traceparent`).
pub fn set_parent(span: &tracing::Span, trace: &TraceContext) {
    // A disabled span (no subscriber, or filtered out) has no parent to set: skip the parsing.
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = remote(trace.remote()) {
        let _ = span.set_parent(parent);
    }
}

/// The remote context `trace` holds, if it has a valid `traceparent`: the current context
/// with that span context in it. A `tracestate` that is not one (TraceState's parser) is
/// dropped, as the SDK's propagator drops it.
fn remote(trace: Remote<'_>) -> Option<Context> {
    let (trace_id, span_id, flags) = parse_traceparent(trace.traceparent?)?;
    let state = trace
        .tracestate
        .map(|state| TraceState::from_str(&capped_tracestate(state)).unwrap_or_default())
        .unwrap_or_default();
    let span_context = SpanContext::new(trace_id, span_id, flags, true, state);
    Some(Context::current().with_remote_span_context(span_context))
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

/// `name`, kept for the life of the process: one copy of each distinct name, however often
/// it is asked for. For what a worker names once per queue (its queues are fixed when it
/// starts) and would otherwise format for every span.
pub(crate) fn interned(name: String) -> &'static str {
    static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Mutex::default);
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&kept) = names.get(name.as_str()) {
        return kept;
    }
    let kept: &'static str = Box::leak(name.into_boxed_str());
    names.insert(kept);
    kept
}

/// The tracer of the queue's own spans: the global provider's when the publisher is built or
/// the worker starts, as for its metrics ([`crate::metrics`]), unless one is given
/// (`with_tracer`).
#[derive(Clone, Debug)]
pub(crate) struct Tracer(Arc<BoxedTracer>);

impl Tracer {
    /// The global tracer provider's tracer, as installed now.
    pub(crate) fn global() -> Self {
        let scope = InstrumentationScope::builder(crate::metrics::SCOPE)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Self(Arc::new(opentelemetry::global::tracer_with_scope(scope)))
    }

    /// `tracer`'s spans instead of the global provider's.
    pub(crate) fn of(
        tracer: impl opentelemetry::trace::Tracer<Span: Send + Sync + 'static> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(BoxedTracer::new(Box::new(tracer))))
    }
}

/// One of the queue's own spans (`send`, `process`), made through the OpenTelemetry API, not
/// as a `tracing` span: each task paid some 20k instructions in the `tracing` layers for one
/// (its creation, every poll's enter and exit, its close; BENCHMARKS.md, scenario 9). Run the
/// work inside it with [`TaskSpan::context`] attached (`FutureExt::with_context`): `tracing`
/// spans made there are its children (tracing-opentelemetry parents a span on the attached
/// context), and log lines carry its ids.
#[derive(Debug)]
pub(crate) struct TaskSpan(Context);

impl TaskSpan {
    /// Starts a span of `kind` under the remote parent `trace` when it holds one, else under
    /// the current context (the caller's span). Its name and attributes come from `describe`,
    /// called if, and only if, the sampler keeps the span: a span it drops costs no
    /// formatting. A sampler sees the name `name` and no attributes (the environment's
    /// samplers look at the trace id and the parent only). `attributes`: how many the span
    /// will hold in all.
    pub(crate) fn start<A: IntoIterator<Item = KeyValue>>(
        tracer: &Tracer,
        name: &'static str,
        kind: SpanKind,
        trace: Remote<'_>,
        attributes: usize,
        describe: impl FnOnce() -> (Cow<'static, str>, A),
    ) -> Self {
        let parent = remote(trace).unwrap_or_else(Context::current);
        // The span's list of attributes sized once for all it will hold, not grown one by one.
        let builder = SpanBuilder::from_name(name)
            .with_kind(kind)
            .with_attributes(Vec::with_capacity(attributes));
        let mut span = tracer.0.build_with_context(builder, &parent);
        if span.is_recording() {
            let (name, attributes) = describe();
            span.update_name(name);
            span.set_attributes(attributes);
        }
        Self(parent.with_span(span))
    }

    /// The context holding the span, to attach while its work runs.
    pub(crate) fn context(&self) -> Context {
        self.0.clone()
    }

    /// The span's W3C headers, for the task it sends.
    pub(crate) fn headers(&self) -> TraceContext {
        written(&self.0)
    }

    /// Sets `attribute` if the span is recorded; `attribute` is made only then.
    pub(crate) fn set_attribute(&self, attribute: impl FnOnce() -> KeyValue) {
        let span = self.0.span();
        if span.is_recording() {
            span.set_attribute(attribute());
        }
    }

    /// Marks the span as failed (status ERROR) with `message`.
    pub(crate) fn record_error(&self, message: &str) {
        let span = self.0.span();
        if span.is_recording() {
            span.set_status(Status::error(message.to_owned()));
        }
    }

    /// Ends the span now (dropping the last copy of its context would end it too, later).
    pub(crate) fn end(self) {
        self.0.span().end();
    }
}

/// Marks `span` as failed (status ERROR) with `message`, per the OpenTelemetry conventions.
/// For a `tracing` span (an RPC's); the queue marks its own spans itself.
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

    /// A provider exporting into `kept`, and a subscriber with tracing-opentelemetry's layer
    /// on its tracer `layer`.
    fn layered(kept: &Kept) -> (SdkTracerProvider, impl tracing::Subscriber + Send + Sync) {
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("layer"));
        (provider, tracing_subscriber::registry().with(layer))
    }

    /// A consumer span as the dispatcher makes it, under `sampler`, continuing `parent`;
    /// returns whether `describe` ran and the spans exported.
    fn process_span(sampler: Sampler, parent: &TraceContext) -> (bool, Vec<SpanData>) {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_simple_exporter(kept.clone())
            .build();
        let mut described = false;
        let span = TaskSpan::start(
            &Tracer::of(provider.tracer("test")),
            "process",
            SpanKind::Consumer,
            parent.remote(),
            1,
            || {
                described = true;
                (
                    "process q".into(),
                    [KeyValue::new("messaging.system", "redis")],
                )
            },
        );
        span.end();
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

    /// One copy of each name, however often it is interned.
    #[test]
    fn an_interned_name_is_kept_once() {
        let first = interned("process {interned-test:q}:stream".to_owned());
        let again = interned("process {interned-test:q}:stream".to_owned());
        let other = interned("process {interned-test:r}:stream".to_owned());
        assert_eq!(first, "process {interned-test:q}:stream");
        assert!(std::ptr::eq(first, again));
        assert_eq!(other, "process {interned-test:r}:stream");
        assert!(!std::ptr::eq(first, other));
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

    /// Work spawned from a span with its context attached makes children of it, and the span
    /// still ends when it closes, not when that work ends.
    #[test]
    fn spawned_work_under_a_spans_context_is_its_child_without_holding_it_open() {
        let kept = Kept::default();
        let (_provider, subscriber) = layered(&kept);
        tracing::subscriber::with_default(subscriber, || {
            let call = tracing::info_span!("rpc");
            let context = otel_context(&call);
            drop(call);
            // The call has ended (and been exported) before the work it spawned runs.
            assert_eq!(kept.0.lock().expect("lock").len(), 1);
            std::thread::sleep(std::time::Duration::from_millis(5));
            let _attached = context.attach();
            tracing::info_span!("DELETE").in_scope(|| {});
        });
        let spans = kept.0.lock().expect("lock").clone();
        let (rpc, delete) = (&spans[0], &spans[1]);
        assert_eq!((rpc.name.as_ref(), delete.name.as_ref()), ("rpc", "DELETE"));
        assert_eq!(delete.parent_span_id, rpc.span_context.span_id());
        assert_eq!(delete.span_context.trace_id(), rpc.span_context.trace_id());
        assert!(rpc.end_time < delete.start_time, "{rpc:?} {delete:?}");

        // A disabled span gives an empty context: the work starts traces of its own.
        assert!(!otel_context(&tracing::Span::none()).has_active_span());
    }

    /// Without a task's parent, the queue's span continues the current `tracing` span (whose
    /// context tracing-opentelemetry attaches while it is entered); inside the queue's span,
    /// `tracing` spans are its children and `current_context` gives its headers.
    #[test]
    fn the_queues_spans_nest_with_tracing_spans_both_ways() {
        let kept = Kept::default();
        let (provider, subscriber) = layered(&kept);
        let tracer = Tracer::of(provider.tracer("queue"));
        let carried = tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("rpc");
            let _entered = outer.enter();
            let span = TaskSpan::start(
                &tracer,
                "process",
                SpanKind::Consumer,
                Remote::default(),
                0,
                || ("process q".into(), []),
            );
            let carried = {
                let _attached = span.context().attach();
                tracing::info_span!("send email").in_scope(|| {});
                current_context()
            };
            assert_eq!(carried, span.headers());
            span.end();
            carried
        });
        let spans = kept.0.lock().expect("lock").clone();
        let named = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
        };
        let (rpc, process, mail) = (named("rpc"), named("process q"), named("send email"));
        assert_eq!(process.parent_span_id, rpc.span_context.span_id());
        assert_eq!(process.span_context.trace_id(), rpc.span_context.trace_id());
        assert_eq!(mail.parent_span_id, process.span_context.span_id());
        assert_eq!(
            carried.traceparent.as_deref(),
            Some(
                format!(
                    "00-{}-{}-01",
                    process.span_context.trace_id(),
                    process.span_context.span_id()
                )
                .as_str()
            )
        );
    }

    /// A span's context, as a task carries it: its own ids under the parent's trace, and the
    /// parent's `tracestate`; a disabled span gives none.
    #[test]
    fn a_spans_context_is_written_as_the_w3c_headers() {
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

    /// A span context's `traceparent` carries its ids in lowercase hex and of its flags only
    /// `sampled`.
    #[test]
    fn traceparent_writes_the_ids_and_the_sampled_flag_only() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        for (flags, written) in [(0x01, "01"), (0xff, "01"), (0x02, "00"), (0x00, "00")] {
            let context = SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::new(flags),
                true,
                TraceState::NONE,
            );
            assert_eq!(
                traceparent(&context),
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{written}")
            );
        }
    }

    /// `traceparent` is read by the grammar of W3C Trace Context and nothing looser; what is
    /// written reads back the same.
    #[test]
    fn traceparent_is_read_by_the_w3c_grammar() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace_id, span_id, flags) = parse_traceparent(valid).expect("valid");
        assert_eq!(trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(flags, TraceFlags::SAMPLED);
        // Unknown flags are cleared; a later version may add fields after the flags.
        let (_, _, flags) = parse_traceparent(&valid.replace("-01", "-ff")).expect("flags");
        assert_eq!(flags, TraceFlags::SAMPLED);
        let (_, _, flags) = parse_traceparent(&valid.replace("-01", "-02")).expect("flags");
        assert_eq!(flags, TraceFlags::NOT_SAMPLED);
        for padded in [format!(" {valid}"), format!("\t{valid} \t")] {
            assert!(parse_traceparent(&padded).is_some(), "{padded:?}");
        }
        let later = format!("cc{}-what-comes-next", &valid[2..]);
        assert!(parse_traceparent(&later).is_some());
        assert!(parse_traceparent(&format!("cc{}", &valid[2..])).is_some());

        let refused = [
            String::new(),
            valid.to_uppercase(),
            valid.replace("4bf9", "4BF9"),
            valid.replace("00f0", "00F0"),
            valid.replacen("00", "0A", 1),
            format!("ff{}", &valid[2..]),
            format!("{valid}-extra"),
            format!("cc{}extra", &valid[2..]),
            format!("\n{valid}"),
            format!("{valid}\r\n"),
            format!("{valid}\0"),
            valid[..54].to_owned(),
            valid.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            valid.replace("00f067aa0ba902b7", &"0".repeat(16)),
            valid.replacen('-', "_", 1),
            valid.replace("-01", ".01"),
            valid.replace("4bf9", "4bf\u{0}"),
            valid.replace("4b", "\u{e9}"),
            valid.replace("-00f067aa0ba902b7-", "-00f067aa0ba902b-7"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1".to_owned(),
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        ];
        for value in &refused {
            assert_eq!(parse_traceparent(value), None, "{value:?}");
        }

        let span_context = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        assert_eq!(traceparent(&span_context), valid);
        let unsampled = SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::NOT_SAMPLED,
            false,
            TraceState::default(),
        );
        assert_eq!(traceparent(&unsampled), valid.replace("-01", "-00"));
    }

    /// A `tracestate` past 512 characters is cut as W3C Trace Context says (members over 128
    /// characters first, then from the end) before it reaches the span and the tasks.
    #[test]
    fn a_long_tracestate_is_cut_to_512_characters() {
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
