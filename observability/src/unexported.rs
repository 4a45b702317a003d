//! The global tracer provider when no traces endpoint is set: its spans have ids, and the
//! sampler's decision in their flags, but record nothing. The SDK's provider records every
//! sampled span even with no processor to hand it to (its name, attributes, start and end
//! times, built and freed): a fifth of the queue's instructions per task in the end-to-end
//! scenario with no traces endpoint (callgrind; BENCHMARKS.md, scenario 9). A span made here carries the same
//! context as the SDK's would: log lines get its ids, a task or a request it sends carries its
//! `traceparent` with the sampled flag the configured sampler (`OTEL_TRACES_SAMPLER`) chose,
//! so that a service downstream that exports keeps the trace.

use std::sync::Arc;

use opentelemetry::{
    Context, InstrumentationScope, KeyValue,
    trace::{Link, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags},
};
use opentelemetry_sdk::trace::{Config, IdGenerator, SamplingDecision, ShouldSample};

/// Makes [`Tracer`]s that share the environment's sampler and a random id generator.
#[derive(Clone, Debug)]
pub(crate) struct Provider(Arc<Ids>);

#[derive(Debug)]
struct Ids {
    sampler: Box<dyn ShouldSample>,
    generator: Box<dyn IdGenerator>,
}

impl Provider {
    /// The sampler and id generator the SDK's provider takes from the environment.
    pub(crate) fn from_env() -> Self {
        let Config {
            sampler,
            id_generator,
            ..
        } = Config::default();
        Self(Arc::new(Ids {
            sampler,
            generator: id_generator,
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
        let flags = parent_context.map_or(TraceFlags::default(), SpanContext::trace_flags);
        let flags = flags.with_sampled(decision.decision == SamplingDecision::RecordAndSample);
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
    use opentelemetry_sdk::trace::Sampler;

    use super::*;

    fn provider(sampler: Sampler) -> Provider {
        let Config { id_generator, .. } = Config::default();
        Provider(Arc::new(Ids {
            sampler: Box::new(sampler),
            generator: id_generator,
        }))
    }

    fn remote_parent(sampled: bool) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
            SpanId::from(0xb7ad6b7169203331),
            TraceFlags::default().with_sampled(sampled),
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        ))
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
        // A context that holds no valid span is no parent.
        let orphan = tracer.start_with_context(
            "orphan",
            &Context::new().with_remote_span_context(SpanContext::empty_context()),
        );
        assert!(orphan.span_context().is_valid());
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
