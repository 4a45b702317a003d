//! The global tracer provider when no traces endpoint is set: its spans have ids, and the
//! sampler's decision in their flags, but record nothing. The SDK's provider records every
//! sampled span even with no processor to hand it to (its name, attributes, start and end
//! times, built and freed): about a sixth of the worker's instructions per task and a fifth
//! of the producer's in the end-to-end scenario with no traces endpoint (callgrind;
//! BENCHMARKS.md, "Scenarios 9 and 10 with the project's telemetry on"). A span made here
//! carries the context the SDK's tracer would give it (a test compares them): log lines get
//! its ids, and a task or a request it sends carries its `traceparent` with the sampled flag
//! the configured sampler (`OTEL_TRACES_SAMPLER`) chose, so that a service downstream that
//! exports keeps the trace. Unlike the SDK's, this provider has no shutdown: after the
//! program's `Guard` is dropped its spans still get ids.

use std::sync::Arc;

use opentelemetry::{
    Context, InstrumentationScope, KeyValue,
    trace::{Link, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags},
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SamplingDecision, ShouldSample};

/// Makes [`Tracer`]s that share the environment's sampler and a random id generator.
#[derive(Clone, Debug)]
pub(crate) struct Provider(Arc<Ids>);

#[derive(Debug)]
struct Ids {
    sampler: Box<dyn ShouldSample>,
    generator: Box<dyn IdGenerator>,
}

impl Provider {
    /// Spans sampled by `sampler` (the one the SDK's provider is given), with the SDK's
    /// default random ids.
    pub(crate) fn new(sampler: impl Into<Box<dyn ShouldSample>>) -> Self {
        Self(Arc::new(Ids {
            sampler: sampler.into(),
            generator: Box::new(RandomIdGenerator::default()),
        }))
    }
}

impl opentelemetry::trace::TracerProvider for Provider {
    type Tracer = Tracer;

    fn tracer_with_scope(&self, _scope: InstrumentationScope) -> Tracer {
        Tracer(Arc::clone(&self.0))
    }
}

/// Starts [`Unrecorded`] spans.
#[derive(Clone, Debug)]
pub(crate) struct Tracer(Arc<Ids>);

impl opentelemetry::trace::Tracer for Tracer {
    type Span = Unrecorded;

    /// As the SDK's tracer decides a span's context: the parent's trace id when the parent
    /// context holds a valid span, else a new one; a new span id; the sampled flag and trace
    /// state from the sampler.
    fn build_with_context(&self, builder: SpanBuilder, parent: &Context) -> Unrecorded {
        if parent.is_telemetry_suppressed() {
            return Unrecorded(SpanContext::empty_context());
        }
        let parent_span = parent.span();
        let parent_context = Some(parent_span.span_context()).filter(|sc| sc.is_valid());
        let trace_id = match parent_context {
            Some(sc) => sc.trace_id(),
            None => self.0.generator.new_trace_id(),
        };
        let decision = self.0.sampler.should_sample(
            Some(parent),
            trace_id,
            &builder.name,
            builder.span_kind.as_ref().unwrap_or(&SpanKind::Internal),
            builder.attributes.as_deref().unwrap_or(&[]),
            builder.links.as_deref().unwrap_or(&[] as &[Link]),
        );
        let parent_flags = parent_context.map_or(TraceFlags::default(), SpanContext::trace_flags);
        // As the SDK's: the parent's flags with the sampled bit set or cleared, none when
        // the span is dropped.
        let flags = match decision.decision {
            SamplingDecision::RecordAndSample => parent_flags.with_sampled(true),
            SamplingDecision::RecordOnly => parent_flags.with_sampled(false),
            SamplingDecision::Drop => TraceFlags::default(),
        };
        Unrecorded(SpanContext::new(
            trace_id,
            self.0.generator.new_span_id(),
            flags,
            false,
            decision.trace_state,
        ))
    }
}

/// A span that holds its context and nothing else: every recording call is a no-op.
#[derive(Debug)]
pub(crate) struct Unrecorded(SpanContext);

impl opentelemetry::trace::Span for Unrecorded {
    fn add_event_with_timestamp<T>(
        &mut self,
        _name: T,
        _timestamp: std::time::SystemTime,
        _attributes: Vec<KeyValue>,
    ) where
        T: Into<std::borrow::Cow<'static, str>>,
    {
    }

    fn span_context(&self) -> &SpanContext {
        &self.0
    }

    fn is_recording(&self) -> bool {
        false
    }

    fn set_attribute(&mut self, _attribute: KeyValue) {}

    fn set_status(&mut self, _status: Status) {}

    fn update_name<T>(&mut self, _new_name: T)
    where
        T: Into<std::borrow::Cow<'static, str>>,
    {
    }

    fn add_link(&mut self, _span_context: SpanContext, _attributes: Vec<KeyValue>) {}

    fn end_with_timestamp(&mut self, _timestamp: std::time::SystemTime) {}
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        Span as _, SpanId, TraceContextExt as _, TraceId, TraceState, Tracer as _,
        TracerProvider as _,
    };
    use opentelemetry_sdk::trace::{Sampler, SamplingResult, SdkTracerProvider};

    use super::*;

    fn provider(sampler: impl Into<Box<dyn ShouldSample>>) -> Provider {
        Provider::new(sampler)
    }

    fn remote_parent(sampled: bool) -> Context {
        remote_with_flags(TraceFlags::default().with_sampled(sampled))
    }

    fn remote_with_flags(flags: TraceFlags) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
            SpanId::from(0xb7ad6b7169203331),
            flags,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        ))
    }

    /// A sampler that records and does not sample, which none of the environment's does.
    #[derive(Clone, Debug)]
    struct RecordOnly;

    impl ShouldSample for RecordOnly {
        fn should_sample(
            &self,
            parent: Option<&Context>,
            _: opentelemetry::trace::TraceId,
            _: &str,
            _: &SpanKind,
            _: &[KeyValue],
            _: &[Link],
        ) -> SamplingResult {
            SamplingResult {
                decision: SamplingDecision::RecordOnly,
                attributes: Vec::new(),
                trace_state: parent
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            }
        }
    }

    /// What the span context says, the ids aside: whether it is valid, continues the parent's
    /// trace, its flags, trace state and remoteness.
    fn shape(span: &SpanContext, parent: &Context) -> (bool, bool, u8, String, bool) {
        (
            span.is_valid(),
            span.trace_id() == parent.span().span_context().trace_id(),
            span.trace_flags().to_u8(),
            span.trace_state().header(),
            span.is_remote(),
        )
    }

    /// The same parents and samplers give the SDK's tracer and this one the same span
    /// context: every decision (sampled, recorded only, dropped), parents sampled or not
    /// with other flag bits set, none, an invalid one, and a context that suppresses
    /// telemetry.
    #[test]
    fn the_context_is_the_one_the_sdk_would_give() {
        let samplers: Vec<Box<dyn ShouldSample>> = vec![
            Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
            Box::new(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))),
            Box::new(Sampler::AlwaysOn),
            Box::new(Sampler::AlwaysOff),
            Box::new(Sampler::ParentBased(Box::new(RecordOnly))),
            Box::new(RecordOnly),
        ];
        let parents = [
            Context::new(),
            remote_parent(true),
            remote_parent(false),
            remote_with_flags(TraceFlags::new(0x03)),
            remote_with_flags(TraceFlags::new(0x02)),
            Context::new().with_remote_span_context(SpanContext::empty_context()),
            remote_parent(true).with_telemetry_suppressed(),
        ];
        for sampler in samplers {
            let sdk = SdkTracerProvider::builder()
                .with_sampler(sampler.clone())
                .build()
                .tracer("t");
            let ours = provider(sampler.clone()).tracer("t");
            for parent in &parents {
                let (theirs, mine) = (
                    sdk.start_with_context("span", parent),
                    ours.start_with_context("span", parent),
                );
                assert_eq!(
                    shape(mine.span_context(), parent),
                    shape(theirs.span_context(), parent),
                    "{sampler:?} under {:?}",
                    parent.span().span_context()
                );
                assert!(!mine.is_recording());
            }
        }
    }

    #[test]
    fn a_root_span_has_new_ids_and_the_samplers_flag_and_records_nothing() {
        let tracer = provider(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))).tracer("t");
        let (a, b) = (tracer.start("a"), tracer.start("b"));
        for span in [&a, &b] {
            assert!(span.span_context().is_valid());
            assert!(span.span_context().is_sampled());
            assert!(!span.span_context().is_remote());
            assert!(!span.is_recording());
        }
        assert_ne!(a.span_context().trace_id(), b.span_context().trace_id());
        assert_ne!(a.span_context().span_id(), b.span_context().span_id());

        let never = provider(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))).tracer("t");
        let span = never.start("c");
        assert!(span.span_context().is_valid());
        assert!(!span.span_context().is_sampled());
    }

    #[test]
    fn a_child_continues_its_parents_trace_and_follows_its_sampled_flag() {
        let tracer = provider(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))).tracer("t");
        for sampled in [true, false] {
            let parent = remote_parent(sampled);
            let child = tracer.start_with_context("child", &parent);
            let (ours, theirs) = (child.span_context(), parent.span().span_context().clone());
            assert_eq!(ours.trace_id(), theirs.trace_id());
            assert_ne!(ours.span_id(), theirs.span_id());
            assert_eq!(ours.is_sampled(), sampled);
            assert_eq!(ours.trace_state().header(), "vendor=value");
            // A child of this span, in the same process, continues it in turn.
            let grandchild = tracer.start_with_context("grandchild", &parent.with_span(child));
            assert_eq!(grandchild.span_context().trace_id(), theirs.trace_id());
            assert_eq!(grandchild.span_context().is_sampled(), sampled);
        }
        // A context whose span is not valid gives no trace id: the span starts a trace of its
        // own (the parent-based sampler takes the invalid parent as not sampled, as the SDK's
        // tracer does; see the comparison above).
        let invalid = Context::new().with_remote_span_context(SpanContext::empty_context());
        let orphan = tracer.start_with_context("orphan", &invalid);
        assert!(orphan.span_context().is_valid());
        assert!(!orphan.span_context().is_sampled());
    }

    #[test]
    fn the_ratio_sampler_decides_a_root_by_its_trace_id() {
        let tracer = provider(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            0.5,
        ))))
        .tracer("t");
        let sampled = (0..2_000)
            .filter(|_| tracer.start("root").span_context().is_sampled())
            .count();
        // 1,000 expected; a binomial spread of 22: 10 of them either way is out of reach.
        assert!((780..=1_220).contains(&sampled), "{sampled} of 2000");
    }
}
