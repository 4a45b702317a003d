//! Leases: a task running longer than the visibility timeout keeps renewing its lease, so the
//! other worker of the group does not take it over; a renewal waiting on a hung Redis does not
//! hold up the handler.

use std::{
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use simplebank_core::testing::{RedisServer, TestRedis, eventually};
use simplebank_queue::{Handler, HandlerError, Handlers, TaskContext};

use crate::helpers::{
    Noop, Recorder, RunningWorker, publish_noops, settings, wait_for_runs, wait_until_drained,
};

#[tokio::test]
async fn a_long_task_renews_its_lease_and_is_not_taken_over() {
    let redis = TestRedis::new();
    let recorder = Recorder::new().with_delay(Duration::from_millis(1500));
    let workers: Vec<RunningWorker> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let mut worker_settings = settings(name);
            worker_settings.visibility_timeout = Duration::from_millis(300);
            RunningWorker::start(
                &redis,
                worker_settings,
                Handlers::new().on::<Noop>(recorder.for_consumer(name)),
            )
        })
        .collect();
    let ids = publish_noops(&redis, 1).await;

    wait_for_runs(&recorder, 1, false).await;
    // Acknowledged and deleted: nothing is left to take over. Stopping the workers waits for
    // any run a takeover already started, so a second run would be counted below.
    wait_until_drained(&redis, "default").await;
    for worker in workers {
        worker.stop().await;
    }
    let runs = recorder.runs.lock().expect("lock")[&ids[0]].clone();
    assert_eq!(runs.len(), 1, "ran once, by {runs:?}");
}

/// What the test asks of [`Answerer`].
enum Ask {
    Answer,
    Finish,
}

/// A handler that answers the test's asks one by one, never touching Redis.
struct Answerer {
    started: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    asks: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Ask>>,
}

impl Handler<Noop> for Answerer {
    async fn handle(&self, _payload: Noop, _task: TaskContext) -> Result<(), HandlerError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let mut asks = self.asks.lock().await;
        while let Some(Ask::Answer) = asks.recv().await {
            self.answered.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Counts the worker's "lease renewal failed" warnings. Installed as this thread's default:
/// the test's single-threaded runtime runs the worker, so it sees that worker's events only.
struct RenewalFailures(Arc<AtomicUsize>);

impl tracing::Subscriber for RenewalFailures {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(bool);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn Debug) {
                if field.name() == "message" {
                    self.0 |= format!("{value:?}") == "lease renewal failed";
                }
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// On a hung Redis each renewal waits for its response timeout, then fails. The handler must
/// answer beside such a renewal: a handler polled only between renewals (the old loop) answers
/// each ask only once the renewal in flight has failed, so no ask is answered without a
/// failure in between. Orders events; measures no duration.
#[tokio::test]
async fn a_hung_redis_does_not_stop_a_running_handler_while_its_lease_is_renewed() {
    let failures = Arc::new(AtomicUsize::new(0));
    let _capture = tracing::subscriber::set_default(RenewalFailures(Arc::clone(&failures)));
    let server = RedisServer::start().await;
    let redis = TestRedis::at(server.address());
    let (started, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (ask, asks) = tokio::sync::mpsc::unbounded_channel();
    let mut worker_settings = settings("a");
    // Renewals every 100 ms, each hanging on the stopped Redis until it times out.
    worker_settings.visibility_timeout = Duration::from_millis(300);
    let worker = RunningWorker::start(
        &redis,
        worker_settings,
        Handlers::new().on::<Noop>(Answerer {
            started: Arc::clone(&started),
            answered: Arc::clone(&answered),
            asks: tokio::sync::Mutex::new(asks),
        }),
    );
    publish_noops(&redis, 1).await;
    eventually("the handler started", Duration::from_secs(30), || {
        let started = started.load(Ordering::SeqCst) > 0;
        async move { started }
    })
    .await;
    server.pause();
    let failed = |n: usize| {
        let failures = Arc::clone(&failures);
        move || {
            let done = failures.load(Ordering::SeqCst) >= n;
            async move { done }
        }
    };
    eventually(
        "a renewal failed on the stopped Redis",
        Duration::from_secs(60),
        failed(1),
    )
    .await;

    // Ask and wait for each answer, until two more renewals have hung and failed meanwhile.
    let until = failures.load(Ordering::SeqCst) + 2;
    let (mut asked, mut beside_a_renewal) = (0, 0);
    while failures.load(Ordering::SeqCst) < until {
        let before = failures.load(Ordering::SeqCst);
        ask.send(Ask::Answer).expect("the handler runs");
        asked += 1;
        eventually("the handler answered", Duration::from_secs(60), || {
            let done = answered.load(Ordering::SeqCst) == asked;
            async move { done }
        })
        .await;
        if failures.load(Ordering::SeqCst) == before {
            beside_a_renewal += 1;
        }
    }
    ask.send(Ask::Finish).expect("the handler runs");
    server.resume();
    assert!(
        beside_a_renewal > 0,
        "each of {asked} asks was answered only after a hung renewal failed"
    );
    wait_until_drained(&redis, "default").await;
    worker.stop().await;
}
