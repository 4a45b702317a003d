//! The queue's spans with a tracer given to the publisher and the worker (`with_tracer`), not
//! the global provider's: a publish is a `send` span, its attempt a `process` span under it,
//! and a task built inside the handler joins that trace.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use simplebank_queue::{
    Handlers, Task, TaskContext, Worker,
    testing::{TestRedis, eventually},
};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Job, Mode, job, publisher, settings};

/// Keeps every exported span.
#[derive(Debug, Clone, Default)]
struct Kept(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Kept {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

#[tokio::test]
async fn a_given_tracer_makes_the_send_and_process_spans_of_one_trace() {
    let redis = TestRedis::new();
    let kept = Kept::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(kept.clone())
        .build();
    let queue = simplebank_queue::QueueName::parse("default").unwrap();
    // What the handler would publish next: a task carrying the attached context.
    let followed = Arc::new(Mutex::new(None::<Task>));
    let handlers = {
        let followed = followed.clone();
        Handlers::new().on(move |_: Job, _: TaskContext| {
            let followed = followed.clone();
            async move {
                let next = Task::new(&Job {
                    n: 2,
                    mode: Mode::Succeed,
                })
                .unwrap()
                .with_current_trace();
                *followed.lock().unwrap() = Some(next);
                Ok(())
            }
        })
    };
    let worker = Worker::new(
        &redis.address,
        redis.namespace.clone(),
        settings("traced", &[(&queue, 1)]),
        handlers,
    )
    .unwrap()
    .with_tracer(provider.tracer("worker"));
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let running = tokio::spawn(async move { worker.run(token).await.unwrap() });

    publisher(&redis)
        .with_tracer(provider.tracer("publisher"))
        .publish(&job(&queue, 1, Mode::Succeed))
        .await
        .unwrap();
    eventually("the task ran", Duration::from_secs(10), || {
        let ran = followed.lock().unwrap().is_some();
        async move { ran }
    })
    .await;
    shutdown.cancel();
    running.await.unwrap();

    let spans = kept.0.lock().unwrap().clone();
    let of_kind = |kind: SpanKind| {
        let found: Vec<&SpanData> = spans.iter().filter(|s| s.span_kind == kind).collect();
        assert_eq!(found.len(), 1, "one {kind:?} span: {spans:?}");
        found[0]
    };
    let (send, process) = (of_kind(SpanKind::Producer), of_kind(SpanKind::Consumer));
    let stream = redis.keys().stream(&queue);
    assert_eq!(send.name, format!("send {stream}"));
    assert_eq!(process.name, format!("process {stream}"));
    assert_eq!(process.parent_span_id, send.span_context.span_id());
    assert_eq!(
        process.span_context.trace_id(),
        send.span_context.trace_id()
    );
    assert!(process.parent_span_is_remote);
    let next = followed.lock().unwrap().take().unwrap();
    assert_eq!(
        next.trace().traceparent,
        Some(format!(
            "00-{}-{}-01",
            process.span_context.trace_id(),
            process.span_context.span_id()
        )),
        "a task built in the handler continues its process span"
    );
}
