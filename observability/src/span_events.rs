//! WARN and ERROR events outside any `tracing` span, as events of the attached OpenTelemetry
//! span. The queue's own spans (`send`, `process`) are OpenTelemetry spans, not `tracing` ones
//! (`simplebank_queue::trace`), so tracing-opentelemetry, which gives an event to the current
//! `tracing` span only, would drop a failure, a retry or a dead letter logged inside them.
//! Inside a `tracing` span, tracing-opentelemetry records the event as before: it is not
//! recorded twice.

use std::fmt;

use opentelemetry::{
    KeyValue,
    trace::{Status, TraceContextExt as _},
};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

/// The layer; give it WARN and ERROR events only (the rest stay log lines).
pub(crate) struct SpanEvents;

impl<S> Layer<S> for SpanEvents
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.parent().is_some() || ctx.lookup_current().is_some() {
            return;
        }
        let context = opentelemetry::Context::current();
        let span = context.span();
        if !span.is_recording() {
            return;
        }
        let mut fields = Fields {
            message: None,
            attributes: vec![KeyValue::new("level", event.metadata().level().as_str())],
        };
        event.record(&mut fields);
        let name = fields
            .message
            .unwrap_or_else(|| event.metadata().name().to_owned());
        // An ERROR marks the span failed, as tracing-opentelemetry does for an event in a
        // `tracing` span.
        if *event.metadata().level() == tracing::Level::ERROR {
            span.set_status(Status::error(name.clone()));
        }
        span.add_event(name, fields.attributes);
    }
}

/// An event's message (its name) and its other fields (its attributes).
struct Fields {
    message: Option<String>,
    attributes: Vec<KeyValue>,
}

impl Fields {
    fn add(&mut self, field: &Field, value: opentelemetry::Value) {
        // A `log` record's metadata (tracing-log): not the event's.
        if field.name().starts_with("log.") {
            return;
        }
        if field.name() == "message" {
            self.message = Some(value.as_str().into_owned());
        } else {
            self.attributes.push(KeyValue::new(field.name(), value));
        }
    }
}

impl Visit for Fields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.add(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(value) => self.add(field, value.into()),
            Err(_) => self.add(field, value.to_string().into()),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.add(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.add(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value.to_owned().into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.add(field, value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.add(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SpanData, SpanExporter},
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

    /// A warning inside an OpenTelemetry span made without `tracing` is one of its events,
    /// with its fields; inside a `tracing` span it is that span's event, once.
    #[test]
    fn a_warning_outside_tracing_spans_is_an_event_of_the_attached_span() {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("layer")))
            .with(SpanEvents);
        tracing::subscriber::with_default(subscriber, || {
            let tracer = provider.tracer("queue");
            let context = opentelemetry::Context::new().with_span(tracer.start("process"));
            {
                let _attached = context.clone().attach();
                tracing::warn!(task_id = "t1", attempt = 2_u64, "task failed; retrying");
                let cause = std::io::Error::other("refused");
                let cause: &(dyn std::error::Error + 'static) = &cause;
                tracing::error!(error = cause, "dead-lettered");
                tracing::info_span!("send email").in_scope(|| tracing::warn!("smtp refused"));
            }
            context.span().end();
        });
        let spans = kept.0.lock().expect("lock").clone();
        let process = spans.iter().find(|s| s.name == "process").expect("process");
        let names: Vec<&str> = process.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(names, ["task failed; retrying", "dead-lettered"]);
        assert_eq!(
            process.status,
            opentelemetry::trace::Status::error("dead-lettered")
        );
        assert!(
            process.events.events[1]
                .attributes
                .contains(&KeyValue::new("error", "refused")),
            "{:?}",
            process.events.events[1]
        );
        let attributes = &process.events.events[0].attributes;
        assert!(
            attributes.contains(&KeyValue::new("task_id", "t1")),
            "{attributes:?}"
        );
        assert!(
            attributes.contains(&KeyValue::new("attempt", 2_i64)),
            "{attributes:?}"
        );
        assert!(
            attributes.contains(&KeyValue::new("level", "WARN")),
            "{attributes:?}"
        );
        let mail = spans.iter().find(|s| s.name == "send email").expect("mail");
        let names: Vec<&str> = mail.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(names, ["smtp refused"]);
    }
}
