//! Running one entry and settling it. The handler runs inside the runner running its entry (see
//! the `runners` module; a panic is a failed attempt, not a dead worker), under the task's
//! timeout or deadline, while its lease is renewed every third of the visibility timeout. Then
//! exactly one of:
//!
//! | outcome | action (one script each, see the `scripts` module) |
//! |---|---|
//! | success | FINISH: ack, delete, release the uniqueness lock (batched, see the `ack` module) |
//! | failure, attempts left | RETRY: ack, delete, schedule attempt + 1 at now + backoff |
//! | "not a failure" | RETRY with the same attempt number |
//! | failure, no attempts left; "skip retry"; deadline passed | KILL: to the dead letters |
//! | undecodable entry or payload, unknown type, delivered too often (crash loop) | KILL at once |
//! | shutdown timeout passed | nothing: the entry stays pending for another worker |
//!
//! If Redis fails while settling, the entry stays pending and is taken over later: the task
//! may run again (at least once), it is never lost.
//!
//! Every delivery is counted once in the metrics (see the `metrics` module) with how it ended;
//! an attempt that reached its process span also records its duration.

use std::{
    borrow::Cow,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use opentelemetry::{KeyValue, context::FutureExt as _, trace::SpanKind};
use redis::Value;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    ack::{Ack, Acker},
    backoff::Backoff,
    handler::{BoxFuture, Erased, FailureKind, HandlerError, Handlers, TaskContext},
    runners::{Runners, Slot},
};
use crate::{
    connection::Connection,
    dead::{dead_fields, poison_fields},
    fields::{self, Delivered, Entry},
    keys::{GROUP, Keys, QueueName},
    metrics::{ConsumerMetrics, ErrorType, Outcome},
    report, retention,
    scripts::{self, Finished, FinishedLock, Retention},
    task::{Envelope, Task, now_ms},
    trace::{TaskSpan, Tracer, interned},
};

/// Runs entries; shared by the fetch loop and the reclaim loop.
#[derive(Debug)]
pub(crate) struct Dispatcher {
    pub conn: Connection,
    pub keys: Keys,
    pub handlers: Handlers,
    /// Settles successful tasks in batches.
    pub acker: Acker,
    /// Handed to handlers ([`TaskContext::shutting_down`]).
    pub shutdown: Arc<CancellationToken>,
    pub consumer: String,
    /// How often a running task's lease is renewed (a third of the visibility timeout).
    pub renew_every: Duration,
    pub backoff: Backoff,
    /// The bounds of the dead streams, applied by each kill.
    pub retention: Retention,
    /// The tasks entries run in, busy or idle.
    pub runners: Runners<Job>,
    /// Every runner; shutdown waits on it.
    pub tracker: TaskTracker,
    /// Cancelled when the shutdown timeout passes: unfinished handlers are aborted and their
    /// entries stay pending.
    pub abandon: CancellationToken,
    pub metrics: ConsumerMetrics,
    /// The `process` spans' tracer.
    pub tracer: Tracer,
    /// Their names and stream attributes, per queue.
    pub span_names: SpanNames,
}

/// Each queue's `process` span name (`process <stream key>`), made when the worker starts
/// rather than formatted for every span (BENCHMARKS.md, scenario 7); the stream attribute is
/// its tail.
#[derive(Debug)]
pub(crate) struct SpanNames(Vec<(QueueName, &'static str)>);

/// What a `process` span's name puts before its stream key.
const PROCESS: &str = "process ";

impl SpanNames {
    /// For the worker's `queues`, kept for the life of the process ([`interned`]).
    pub fn new(keys: &Keys, queues: &[QueueName]) -> Self {
        let named = queues.iter().map(|queue| {
            (
                queue.clone(),
                interned(format!("{PROCESS}{}", keys.stream(queue))),
            )
        });
        Self(named.collect())
    }

    /// `queue`'s span name and stream key; made anew for a queue not given at start.
    fn of(&self, keys: &Keys, queue: &QueueName) -> (Cow<'static, str>, Cow<'static, str>) {
        match self.0.iter().find(|(known, _)| known == queue) {
            Some(&(_, name)) => (name.into(), name[PROCESS.len()..].into()),
            None => {
                let stream = keys.stream(queue);
                (format!("{PROCESS}{stream}").into(), stream.into())
            }
        }
    }
}

/// An entry handed to a runner, with what [`Dispatcher::spawn`] was given for it.
#[derive(Debug)]
pub(crate) struct Job {
    queue: QueueName,
    entry: Delivered,
    deliveries: Option<u64>,
    permit: OwnedSemaphorePermit,
}

/// An entry ready to run: its task, handler and process span.
struct Prepared {
    entry_id: String,
    /// Boxed: it is kept in the future of every entry until the entry is settled.
    task: Box<Envelope>,
    /// The registered type's name.
    task_type: &'static str,
    handler: Arc<dyn Erased>,
    timeout: Duration,
    span: TaskSpan,
}

/// An entry that cannot run, with why: it goes to the dead letters at once.
enum Early {
    /// Not a task at all: dead-lettered with its raw fields.
    Poison { entry: Entry, reason: String },
    Kill {
        entry_id: String,
        task: Box<Envelope>,
        reason: String,
        /// Whether this delivery counts as an attempt.
        attempted: bool,
    },
}

/// How an attempt ended, when it did not succeed.
struct Failure {
    kind: FailureKind,
    message: String,
}

impl Failure {
    fn retry(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Retry,
            message: message.into(),
        }
    }
}

impl Dispatcher {
    /// Runs `entry` in the background, holding `permit` (a concurrency slot) while its handler
    /// runs. The slot is free once the handler returned, while the entry is being settled:
    /// reading the next entries overlaps with acknowledging the last ones.
    /// `deliveries` is Redis' delivery count when known (reclaimed entries).
    /// An idle runner takes it, or a new one is started (see the `runners` module).
    pub(crate) fn spawn(
        self: &Arc<Self>,
        queue: QueueName,
        entry: Delivered,
        deliveries: Option<u64>,
        permit: OwnedSemaphorePermit,
    ) {
        let job = Job {
            queue,
            entry,
            deliveries,
            permit,
        };
        if let Err(job) = self.runners.hand(job) {
            self.tracker.spawn(Arc::clone(self).runner(job));
        }
    }

    /// A runner: runs `job`, then each job it is handed next, until the pool has no use for it.
    async fn runner(self: Arc<Self>, mut job: Job) {
        let slot = Arc::new(Slot::default());
        loop {
            self.process(job).await;
            match self.runners.next(&slot).await {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    // This future is made and moved into its runner once per entry, so it is kept small: the
    // rare paths are awaited through a `Box` (BENCHMARKS.md, steps 9 and 10).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn keeps a second copy of each argument in its future"
    )]
    fn process(&self, job: Job) -> impl Future<Output = ()> + Send + '_ {
        async move {
            let Job {
                queue,
                entry,
                deliveries,
                permit,
            } = job;
            // Not awaited inside the `match`: its scrutinee (the `Result`) would be kept across
            // that await beside the run's future.
            let run = match self.prepare(&queue, entry, deliveries) {
                Ok(prepared) => self.run(prepared, permit),
                Err(early) => {
                    let killed = Box::pin(self.kill_early(&queue, early));
                    killed.await;
                    return;
                }
            };
            run.await;
        }
    }

    /// Decodes `entry` and finds its handler; or says why it cannot run (see the module
    /// header), counted in the metrics.
    fn prepare(
        &self,
        queue: &QueueName,
        entry: Delivered,
        deliveries: Option<u64>,
    ) -> Result<Prepared, Early> {
        let (entry_id, task) = match entry {
            Delivered::Task { id, task } => (id, task),
            Delivered::Fields(entry) => match fields::decode_entry(queue.clone(), &entry) {
                Ok(envelope) => (entry.id, Box::new(envelope)),
                Err(err) => {
                    self.metrics
                        .dead_on_arrival(queue, None, ErrorType::EntryUndecodable);
                    return Err(Early::Poison {
                        reason: format!("undecodable entry: {err}"),
                        entry,
                    });
                }
            },
        };
        let dead = |task, reason, attempted| Early::Kill {
            entry_id: entry_id.clone(),
            task,
            reason,
            attempted,
        };
        let Some((task_type, handler)) = self.handlers.get(&task.task.kind) else {
            // A delivery no handler can run is a failed attempt (attempts and the queue's
            // `processed`/`failed` counters include it), as a handler refusing the task is.
            let reason = format!(
                "no handler for task type {:?}",
                report::excerpt(&task.task.kind)
            );
            self.metrics
                .dead_on_arrival(queue, None, ErrorType::UnknownType);
            return Err(dead(task, reason, true));
        };
        if let Some(deliveries) = deliveries
            && deliveries > u64::from(task.task.max_retry) + 1
        {
            let reason = format!(
                "delivered {deliveries} times without finishing: its worker crashed or hung each time"
            );
            self.metrics
                .dead_on_arrival(queue, Some(task_type), ErrorType::DeliveredTooOften);
            return Err(dead(task, reason, true));
        }
        let mut timeout = task.task.timeout();
        if let Some(deadline) = task.task.deadline {
            let left = deadline.saturating_sub(now_ms());
            if left <= 0 {
                self.metrics
                    .dead_on_arrival(queue, Some(task_type), ErrorType::DeadlineExceeded);
                return Err(dead(task, "deadline exceeded".to_owned(), false));
            }
            timeout = timeout.min(Duration::from_millis(u64::try_from(left).unwrap_or(0)));
        }

        // Its name and attributes are set once the sampler has kept it: a span the sampler
        // drops costs no formatting (BENCHMARKS.md, scenario 7).
        let span = TaskSpan::start(
            &self.tracer,
            "process",
            SpanKind::Consumer,
            task.task.remote_trace(),
            8,
            || {
                let (name, stream) = self.span_names.of(&self.keys, queue);
                let attributes = [
                    KeyValue::new("messaging.system", "redis"),
                    KeyValue::new("messaging.destination.name", stream),
                    KeyValue::new("messaging.operation.type", "process"),
                    KeyValue::new("messaging.consumer.group.name", GROUP),
                    KeyValue::new("messaging.message.id", entry_id.clone()),
                    KeyValue::new("simplebank.task.id", task.task.id.clone()),
                    KeyValue::new("simplebank.task.type", task_type),
                    KeyValue::new("simplebank.task.attempt", i64::from(task.attempt)),
                ];
                (name, attributes)
            },
        );
        Ok(Prepared {
            entry_id,
            task,
            task_type,
            handler,
            timeout,
            span,
        })
    }

    /// Dead-letters an entry that cannot run.
    async fn kill_early(&self, queue: &QueueName, early: Early) {
        match early {
            Early::Poison { entry, reason } => {
                self.kill_poison(queue, &entry.id, &entry.fields, &reason)
                    .await;
            }
            Early::Kill {
                entry_id,
                task,
                reason,
                attempted,
            } => self.kill(&entry_id, *task, &reason, attempted).await,
        }
    }

    /// Runs one attempt inside its process span and settles the entry. An `async` block, not
    /// an `async fn`, for the reason `process` gives.
    fn run(
        &self,
        prepared: Prepared,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + '_ {
        let Prepared {
            entry_id,
            task,
            task_type,
            handler,
            timeout,
            span,
        } = prepared;
        let context = span.context();
        async move {
            // One clock read: the attempt's duration, its deadline and its lease all count
            // from it.
            let begun = tokio::time::Instant::now();
            let queue = task.task.queue.clone();
            let deadline = begun + timeout;
            let context = TaskContext {
                id: task.task.id.clone(),
                queue: task.task.queue.clone(),
                attempt: task.attempt,
                max_retry: task.task.max_retry,
                deadline,
                shutdown: Arc::clone(&self.shutdown),
            };
            // The payload is decoded once, here; one that does not decode as its type cannot
            // succeed on a retry. A handler that panics before it returns its future (one
            // written without `async`) has failed its attempt, as one panicking later has.
            let start = || handler.start(&task.task.payload, context);
            let attempt = match std::panic::catch_unwind(AssertUnwindSafe(start)) {
                Ok(Ok(attempt)) => Some(CatchUnwind(attempt)),
                Err(_panic) => None,
                Ok(Err(err)) => {
                    drop(permit);
                    let failure = Failure {
                        kind: FailureKind::SkipRetry,
                        message: format!(
                            "the payload does not decode as {}: {}",
                            task.task.kind,
                            undecodable(&err, task.task.sensitive)
                        ),
                    };
                    span.record_error(&failure.message);
                    let outcome = Box::pin(self.fail(&entry_id, *task, failure)).await;
                    self.metrics.attempt(
                        &queue,
                        task_type,
                        outcome,
                        Some(ErrorType::PayloadUndecodable),
                        begun.elapsed(),
                    );
                    span.end();
                    return;
                }
            };
            let ended = match attempt {
                Some(attempt) => {
                    self.run_attempt(attempt, (begun, deadline), &entry_id, &task.task)
                        .await
                }
                None => Ended::Panicked,
            };
            // The handler's future (cut off or finished) and any renewal are dropped by now.
            drop(permit);
            let elapsed = begun.elapsed();
            let error = error_type(&ended);
            let outcome = match ended {
                Ended::Returned(Ok(())) => Ok(()),
                Ended::Returned(Err(err)) => Err(Failure {
                    kind: err.kind(),
                    message: report::chain(&err),
                }),
                Ended::Panicked => Err(Failure::retry("handler panicked")),
                Ended::TimedOut => Err(Failure::retry(format!(
                    "timed out after {} ms",
                    timeout.as_millis()
                ))),
                Ended::Abandoned => {
                    tracing::warn!(
                        task_id = %task.task.id, task_type = %task.task.kind,
                        "shutdown timeout passed; task left pending for another worker"
                    );
                    self.metrics
                        .attempt(&queue, task_type, Outcome::Abandoned, error, elapsed);
                    span.end();
                    return;
                }
            };
            let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
            match outcome {
                Ok(()) => {
                    self.finish(entry_id, &task, duration_ms).await;
                    self.metrics
                        .attempt(&queue, task_type, Outcome::Success, None, elapsed);
                }
                Err(failure) => {
                    span.record_error(&failure.message);
                    let outcome = Box::pin(self.fail(&entry_id, *task, failure)).await;
                    self.metrics
                        .attempt(&queue, task_type, outcome, error, elapsed);
                }
            }
            span.end();
        }
        .with_context(context)
    }

    /// Runs the attempt to its end (see [`run_attempt`]), renewing its lease on `task`'s
    /// stream while it runs.
    fn run_attempt<'a>(
        &'a self,
        attempt: CatchUnwind<BoxFuture<'a, Result<(), HandlerError>>>,
        times: (tokio::time::Instant, tokio::time::Instant),
        entry_id: &'a str,
        task: &'a Task,
    ) -> impl Future<Output = Ended> + Send + 'a {
        let renewals = move || {
            let stream = self.keys.stream(&task.queue);
            move || -> Renewal<'a> {
                let stream = stream.clone();
                Box::pin(async move { self.renew(&stream, entry_id, &task.id).await })
            }
        };
        run_attempt(attempt, times, self.renew_every, &self.abandon, renewals)
    }

    async fn finish(&self, entry_id: String, envelope: &Envelope, duration_ms: u64) {
        let task = &envelope.task;
        let ack = Ack {
            queue: task.queue.clone(),
            entry: Finished {
                entry_id,
                lock: FinishedLock::of(&self.keys, task),
            },
        };
        match self.acker.ack(ack).await {
            Ok(()) => tracing::info!(
                task_id = %task.id, task_type = %task.kind, queue = %task.queue,
                attempt = envelope.attempt, duration_ms, "processed task"
            ),
            Err(err) => tracing::warn!(
                task_id = %task.id, error = %report::chain(&err),
                "task done but not acknowledged; it may run again"
            ),
        }
    }

    /// Retries the task, or dead-letters it when retrying cannot help; returns which.
    async fn fail(&self, entry_id: &str, envelope: Envelope, failure: Failure) -> Outcome {
        let out_of_attempts =
            failure.kind == FailureKind::Retry && envelope.attempt > envelope.task.max_retry;
        if failure.kind == FailureKind::SkipRetry || out_of_attempts {
            self.kill(entry_id, envelope, &failure.message, true).await;
            return Outcome::Dead;
        }
        let task = &envelope.task;
        let delay = self.backoff.delay(&task.id, envelope.attempt);
        let mut next = envelope.clone();
        next.first_failed_at.get_or_insert_with(now_ms);
        next.last_error = Some(failure.message.clone());
        if failure.kind == FailureKind::Retry {
            // An entry can carry any attempt number (one written by hand): never past the last.
            next.attempt = next.attempt.saturating_add(1);
        }
        let failed = failure.kind == FailureKind::Retry;
        let scheduled = scripts::retry(
            &mut self.conn.clone(),
            &self.keys,
            entry_id,
            delay,
            &next,
            failed,
        )
        .await;
        match scheduled {
            Ok(true) => tracing::warn!(
                task_id = %task.id, task_type = %task.kind, queue = %task.queue,
                attempt = envelope.attempt, max_retry = task.max_retry, retry_in_ms = delay.as_millis(),
                counted = failure.kind == FailureKind::Retry, error = %failure.message,
                "task failed; retry scheduled"
            ),
            Ok(false) => tracing::warn!(
                task_id = %task.id, error = %failure.message,
                "task failed, but its entry is no longer pending here (taken over); not rescheduled"
            ),
            Err(err) => tracing::warn!(
                task_id = %task.id, error = %report::chain(&err),
                "task failed and could not be rescheduled; it stays pending and will be taken over"
            ),
        }
        Outcome::Retry
    }

    /// Moves the task to the dead letters. `attempted`: whether this delivery ran the handler.
    async fn kill(&self, entry_id: &str, mut envelope: Envelope, reason: &str, attempted: bool) {
        let now = now_ms();
        let attempts = if attempted {
            envelope.attempt
        } else {
            envelope.attempt.saturating_sub(1)
        };
        if attempted {
            envelope.first_failed_at.get_or_insert(now);
        }
        let killed = scripts::kill(
            &mut self.conn.clone(),
            &self.keys,
            &envelope.task.queue,
            entry_id,
            Some(&envelope.task),
            attempted,
            self.retention,
            dead_fields(&envelope, reason, attempts, now),
        )
        .await;
        let task = &envelope.task;
        match killed {
            Ok(killed) if killed.killed => {
                tracing::error!(
                    task_id = %report::excerpt(&task.id), task_type = %report::excerpt(&task.kind),
                    queue = %task.queue, attempts, reason, "task moved to the dead letters"
                );
                retention::report(&task.queue, killed.trimmed, &self.metrics);
            }
            Ok(_) => tracing::warn!(
                task_id = %report::excerpt(&task.id), reason,
                "task not dead-lettered: its entry is no longer pending here (taken over)"
            ),
            Err(err) => tracing::warn!(
                task_id = %task.id, error = %report::chain(&err),
                "could not dead-letter the task; it stays pending"
            ),
        }
    }

    async fn kill_poison(
        &self,
        queue: &QueueName,
        entry_id: &str,
        raw: &[(String, Value)],
        reason: &str,
    ) {
        let killed = scripts::kill(
            &mut self.conn.clone(),
            &self.keys,
            queue,
            entry_id,
            None,
            false,
            self.retention,
            poison_fields(queue, raw, reason),
        )
        .await;
        match killed {
            Ok(killed) if killed.killed => {
                tracing::error!(queue = %queue, entry_id, reason, "poison entry moved to the dead letters");
                retention::report(queue, killed.trimmed, &self.metrics);
            }
            Ok(_) => tracing::warn!(
                queue = %queue, entry_id,
                "poison entry not dead-lettered: no longer pending here (taken over)"
            ),
            Err(err) => tracing::warn!(
                entry_id, error = %report::chain(&err),
                "could not dead-letter a poison entry; it stays pending"
            ),
        }
    }

    /// Keeps a long-running task from being taken over while this worker is alive.
    async fn renew(&self, stream: &str, entry_id: &str, task_id: &str) {
        let renewed =
            scripts::renew(&mut self.conn.clone(), stream, &self.consumer, entry_id).await;
        match renewed {
            Ok(true) => tracing::debug!(task_id, "lease renewed"),
            Ok(false) => tracing::warn!(
                task_id,
                "lease lost: another worker took the task over; it may run twice"
            ),
            Err(err) => {
                tracing::warn!(task_id, error = %report::chain(&err), "lease renewal failed");
            }
        }
    }
}

/// A lease renewal in flight.
type Renewal<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The metrics' `error.type` of an attempt that did not succeed.
fn error_type(ended: &Ended) -> Option<ErrorType> {
    match ended {
        Ended::Returned(Ok(())) => None,
        Ended::Returned(Err(err)) => Some(match err.kind() {
            FailureKind::Retry => ErrorType::HandlerError,
            FailureKind::SkipRetry => ErrorType::SkipRetry,
            FailureKind::NotAFailure => ErrorType::NotAFailure,
        }),
        Ended::Panicked => Some(ErrorType::Panic),
        Ended::TimedOut => Some(ErrorType::Timeout),
        Ended::Abandoned => Some(ErrorType::ShutdownTimeout),
    }
}

/// How one attempt ended.
#[derive(Debug)]
enum Ended {
    Returned(Result<(), HandlerError>),
    Panicked,
    TimedOut,
    /// The shutdown timeout passed: the entry is left pending.
    Abandoned,
}

/// What a handler panicked with.
type Panic = Box<dyn std::any::Any + Send>;

impl Ended {
    /// An attempt that returned or panicked.
    fn joined(joined: Result<Result<(), HandlerError>, Panic>) -> Self {
        match joined {
            Ok(returned) => Self::Returned(returned),
            Err(_panic) => Self::Panicked,
        }
    }
}

/// Runs `attempt` to its end. One done at its first poll (a quick handler) is done without a
/// timer or a lease renewal (`renewals` makes the renewing function only when needed); any
/// other is supervised (see [`supervise`]) in a future of its own, so the future spawned per
/// entry stays small. `times`: when the attempt began and its deadline, both read before the
/// payload was decoded and the handler first polled, so a first poll that blocks its thread
/// uses up its time and leaves its lease due for renewal (the deadline is the one the handler
/// sees in its [`TaskContext`]).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of each argument in its future"
)]
fn run_attempt<'a, F, R>(
    mut attempt: CatchUnwind<F>,
    (begun, deadline): (tokio::time::Instant, tokio::time::Instant),
    renew_every: Duration,
    abandon: &CancellationToken,
    renewals: impl FnOnce() -> R,
) -> impl Future<Output = Ended>
where
    F: Future<Output = Result<(), HandlerError>> + Unpin,
    R: FnMut() -> Renewal<'a>,
{
    async move {
        let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut attempt).poll(cx))).await;
        if let Poll::Ready(joined) = first {
            return Ended::joined(joined);
        }
        let attempt = Polled {
            future: attempt,
            fresh: true,
        };
        Box::pin(supervise(
            attempt,
            deadline,
            (begun + renew_every, renew_every),
            abandon,
            renewals(),
        ))
        .await
    }
}

/// A future just polled (Pending) by its caller: its next poll, made by `supervise` in the
/// same poll of the task, is skipped, so the handler is not polled twice in a row. Skipping
/// loses no wake-up because nothing is awaited between the two: the waker it registered is
/// the one in use (an `.await` put in between would break that). A renewal due at once makes
/// `supervise` go round again and poll it unwoken, which is harmless.
struct Polled<F> {
    future: F,
    fresh: bool,
}

impl<F: Future + Unpin> Future for Polled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if std::mem::take(&mut self.fresh) {
            return Poll::Pending;
        }
        Pin::new(&mut self.future).poll(cx)
    }
}

/// Polls `attempt` until it ends, `deadline` passes or `abandon` is cancelled, starting a
/// renewal at `first` (at once if it has passed) and then on an `every` cadence, a late one
/// delaying the next. A renewal runs beside the handler, never instead of it: a hung Redis
/// must not stop the handler from being polled or its timeout from firing. One renewal at a
/// time; one still in flight is dropped at the end.
async fn supervise<'a, A>(
    mut attempt: A,
    deadline: tokio::time::Instant,
    (first, every): (tokio::time::Instant, Duration),
    abandon: &CancellationToken,
    mut renew: impl FnMut() -> Renewal<'a>,
) -> Ended
where
    A: Future<Output = Result<Result<(), HandlerError>, Panic>> + Unpin,
{
    let mut ticks = tokio::time::interval_at(first, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewal: Option<Renewal<'a>> = None;
    let cutoff = tokio::time::sleep_until(deadline);
    tokio::pin!(cutoff);
    loop {
        tokio::select! {
            // The attempt first: a handler that is done never waits on (or arms) a timer.
            biased;
            joined = &mut attempt => return Ended::joined(joined),
            () = abandon.cancelled() => return Ended::Abandoned,
            () = &mut cutoff => return Ended::TimedOut,
            () = async {
                match renewal.as_mut() {
                    Some(renewing) => renewing.await,
                    None => std::future::pending().await,
                }
            }, if renewal.is_some() => renewal = None,
            _ = ticks.tick(), if renewal.is_none() => renewal = Some(renew()),
        }
    }
}

/// Polls a future, turning a panic while it is polled into `Err` (the future is not polled
/// again). Here a handler's: a panic is a failed attempt, and the worker lives on. The handler
/// runs inside the runner running its entry, not in a task of its own, so it must not block
/// its thread: blocking or CPU-heavy work belongs in
/// `tokio::task::spawn_blocking`. The OTLP exporters use it too (`simplebank-observability`):
/// tonic panics on some replies a collector can send.
#[derive(Debug)]
pub struct CatchUnwind<F>(pub F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Panic>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *inner).poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Why a payload does not decode as its type, without any of its values: serde_json's own
/// messages quote them (`invalid type: string "..."`, unknown fields and variants, a custom
/// error's text), and a payload may hold personal data or secrets, which the dead letter's
/// reason, the log and the span must not. serde's own "missing field" (the name is the
/// type's) is kept; otherwise the kind of error. Where it is (line and column), unless the
/// task is sensitive: a column gives away the length of a value.
fn undecodable(err: &serde_json::Error, sensitive: bool) -> String {
    use serde_json::error::Category;
    // serde_json gives no position (line 0) for errors of no place in the text.
    let at = match err.line() {
        0 => String::new(),
        line => format!(" at line {line} column {}", err.column()),
    };
    let what = match err.classify() {
        Category::Syntax => "not valid JSON, or nested too deep".to_owned(),
        Category::Eof => "JSON cut short".to_owned(),
        Category::Data | Category::Io => match missing_field(&err.to_string(), &at) {
            Some(field) => format!("missing field `{field}`"),
            None => "a value or field its type does not accept".to_owned(),
        },
    };
    if sensitive { what } else { what + &at }
}

/// The field of serde's own "missing field `name`" error, if `text` is exactly that message
/// (a name of word characters, then the error's own position `at`): a custom error that only
/// starts like it is not taken for it.
fn missing_field<'a>(text: &'a str, at: &str) -> Option<&'a str> {
    let (name, rest) = text.strip_prefix("missing field `")?.split_once('`')?;
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    (rest == at && (1..=64).contains(&name.len()) && name.bytes().all(word)).then_some(name)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Each queue's spans are named after its own stream, a queue not given at start too.
    #[test]
    fn each_queues_span_is_named_after_its_stream() {
        let keys = Keys::new(crate::Namespace::parse("names-test").unwrap());
        let queue = |name| QueueName::parse(name).unwrap();
        let names = SpanNames::new(&keys, &[queue("critical"), queue("default")]);
        for name in ["critical", "default", "low"] {
            let stream = keys.stream(&queue(name));
            let (span, attribute) = names.of(&keys, &queue(name));
            assert_eq!(span, format!("process {stream}"));
            assert_eq!(attribute, stream);
        }
        // The names given at start are the interned ones, not copies made per span.
        let (span, _) = names.of(&keys, &queue("default"));
        assert!(matches!(span, Cow::Borrowed(_)));
    }

    /// A payload's decoding error as the dead letter gives it.
    fn reason<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        json: &str,
        sensitive: bool,
    ) -> String {
        undecodable(&serde_json::from_str::<T>(json).unwrap_err(), sensitive)
    }

    /// No kind of decoding error quotes the payload: not a value of the wrong type, an unknown
    /// field or variant, an untagged enum, nor a custom error that starts like serde's own
    /// "missing field"; only serde's own missing field is named.
    #[test]
    fn a_payload_error_quotes_nothing_of_the_payload() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[expect(dead_code, reason = "only decoded")]
        struct Strict {
            n: u32,
            kind: Kind,
        }
        #[derive(Debug, serde::Deserialize)]
        enum Kind {
            A,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(untagged)]
        #[expect(dead_code, reason = "only decoded")]
        enum Either {
            N(u32),
            B(bool),
        }
        fn custom<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
            let text = <String as serde::Deserialize>::deserialize(d)?;
            Err(serde::de::Error::custom(format!(
                "missing field `x` {text}"
            )))
        }
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "only decoded")]
        struct Custom {
            #[serde(deserialize_with = "custom")]
            n: u32,
        }
        let other = "a value or field its type does not accept";
        let at = |column: usize| format!(" at line 1 column {column}");
        let cases = [
            (
                reason::<Strict>(r#"{"n":"SECRET","kind":"A"}"#, false),
                other.to_owned() + &at(13),
            ),
            (
                reason::<Strict>(r#"{"n":1,"kind":"A","SECRET":1}"#, false),
                other.to_owned() + &at(26),
            ),
            (
                reason::<Strict>(r#"{"n":1,"kind":"SECRET"}"#, false),
                other.to_owned() + &at(22),
            ),
            // No place in the text: no position.
            (reason::<Either>(r#""SECRET""#, false), other.to_owned()),
            (
                reason::<Custom>(r#"{"n":"SECRET"}"#, false),
                other.to_owned() + &at(14),
            ),
            (
                reason::<Strict>(r#"{"n":1}"#, false),
                "missing field `kind`".to_owned() + &at(7),
            ),
            (
                reason::<Strict>(r#"{"n":1,"kind":"A""#, false),
                "JSON cut short".to_owned() + &at(17),
            ),
            (
                reason::<Strict>(r#"{"n":SECRET}"#, false),
                "not valid JSON, or nested too deep".to_owned() + &at(6),
            ),
        ];
        for (reason, expected) in cases {
            assert_eq!(reason, expected);
        }
        // Sensitive: not even where (a column gives away a value's length).
        assert_eq!(
            reason::<Strict>(r#"{"n":"SECRET","kind":"A"}"#, true),
            other
        );
    }

    type Attempt = CatchUnwind<Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>>;

    /// The size of the future `f` returns, read off its type.
    fn returned_size<A, B, F>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The future run per entry stays small: at most 640 bytes, made and moved into its
    /// runner once per entry.
    #[test]
    fn the_future_run_per_entry_stays_small() {
        let size = returned_size(Dispatcher::process);
        assert!(
            size <= 640,
            "the future run per entry is {size} bytes (BENCHMARKS.md, step 10)"
        );
    }

    /// A handler's future that counts its polls and is done once `sleep` is (at once for
    /// `None`); it panics at poll number `panic_at`.
    struct Counted<'a> {
        polls: &'a AtomicU32,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
        panic_at: Option<u32>,
    }

    impl Future for Counted<'_> {
        type Output = Result<(), HandlerError>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let poll = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            assert_ne!(Some(poll), self.panic_at, "the handler panics");
            match self.sleep.as_mut() {
                Some(sleep) => sleep.as_mut().poll(cx).map(Ok),
                None => Poll::Ready(Ok(())),
            }
        }
    }

    /// Runs a `Counted` handler that sleeps `sleep` through `run_attempt` (5 s timeout, 1 s
    /// renewal cadence, paused time); returns how it ended, how often it was polled and
    /// whether the renewing function was made.
    async fn attempted(
        sleep: Option<Duration>,
        panic_at: Option<u32>,
        abandon: &CancellationToken,
    ) -> (Ended, u32, bool) {
        let polls = AtomicU32::new(0);
        let made = std::sync::atomic::AtomicBool::new(false);
        let handler = Counted {
            polls: &polls,
            sleep: sleep.map(|d| Box::pin(tokio::time::sleep(d))),
            panic_at,
        };
        let begun = tokio::time::Instant::now();
        let ended = run_attempt(
            CatchUnwind(handler),
            (begun, begun + Duration::from_secs(5)),
            Duration::from_secs(1),
            abandon,
            || {
                made.store(true, Ordering::SeqCst);
                || -> Renewal<'static> { Box::pin(std::future::ready(())) }
            },
        )
        .await;
        (
            ended,
            polls.load(Ordering::SeqCst),
            made.load(Ordering::SeqCst),
        )
    }

    /// The lease counts from the attempt's start, not from the end of the handler's first
    /// poll: one whose first poll blocked its thread past its renewals (here 3.5 s of a 1 s
    /// cadence, the attempt begun that long ago) renews once as soon as it yields, before a
    /// reclaimer could take the entry over, and not once per renewal missed.
    #[tokio::test(start_paused = true)]
    async fn a_first_poll_that_blocked_past_a_renewal_renews_at_once() {
        let renewals = AtomicU32::new(0);
        let begun = tokio::time::Instant::now() - Duration::from_millis(3500);
        let handler: Attempt = sleeping(Duration::from_millis(200));
        let ended = run_attempt(
            handler,
            (begun, begun + Duration::from_secs(5)),
            Duration::from_secs(1),
            &CancellationToken::new(),
            || {
                || -> Renewal<'static> {
                    renewals.fetch_add(1, Ordering::SeqCst);
                    Box::pin(std::future::ready(()))
                }
            },
        )
        .await;
        assert!(matches!(ended, Ended::Returned(Ok(()))), "{ended:?}");
        assert_eq!(renewals.load(Ordering::SeqCst), 1);
    }

    /// A handler done at its first poll is polled once, and no renewal is prepared for it.
    #[tokio::test(start_paused = true)]
    async fn a_handler_done_at_its_first_poll_is_run_without_supervision() {
        let (ended, polls, made) = attempted(None, None, &CancellationToken::new()).await;
        assert!(matches!(ended, Ended::Returned(Ok(()))), "{ended:?}");
        assert_eq!((polls, made), (1, false));
    }

    /// A handler pending at its first poll is supervised, and polled again only once woken:
    /// twice in all for one wake-up.
    #[tokio::test(start_paused = true)]
    async fn a_pending_handler_is_polled_again_only_when_woken() {
        let abandon = CancellationToken::new();
        let (ended, polls, made) =
            attempted(Some(Duration::from_millis(500)), None, &abandon).await;
        assert!(matches!(ended, Ended::Returned(Ok(()))), "{ended:?}");
        assert_eq!((polls, made), (2, true));
    }

    /// A panic is a panic whether it comes at the first poll or at a later one.
    #[tokio::test(start_paused = true)]
    async fn a_panic_at_the_first_or_a_later_poll_ends_the_attempt() {
        let abandon = CancellationToken::new();
        let (ended, polls, _) = attempted(None, Some(1), &abandon).await;
        assert!(matches!(ended, Ended::Panicked), "{ended:?}");
        assert_eq!(polls, 1);
        let (ended, polls, _) = attempted(Some(Duration::from_secs(1)), Some(2), &abandon).await;
        assert!(matches!(ended, Ended::Panicked), "{ended:?}");
        assert_eq!(polls, 2);
    }

    /// A pending handler still meets its timeout, and the shutdown timeout before it: after
    /// its first poll, the checks come in the order they always did.
    #[tokio::test(start_paused = true)]
    async fn a_pending_handler_is_timed_out_or_abandoned() {
        let running = CancellationToken::new();
        let (ended, _, _) = attempted(Some(Duration::from_secs(60)), None, &running).await;
        assert!(matches!(ended, Ended::TimedOut), "{ended:?}");
        let abandoned = CancellationToken::new();
        abandoned.cancel();
        let (ended, polls, _) = attempted(Some(Duration::from_secs(60)), None, &abandoned).await;
        assert!(matches!(ended, Ended::Abandoned), "{ended:?}");
        assert_eq!(polls, 1);
    }

    fn sleeping(duration: Duration) -> Attempt {
        CatchUnwind(Box::pin(async move {
            tokio::time::sleep(duration).await;
            Ok(())
        }))
    }

    /// Runs `attempt` with a 1 s renewal cadence and a 5 s timeout, on paused time; returns
    /// how it ended and how many renewals started.
    async fn supervised(attempt: Attempt, renewal_takes: Duration) -> (Ended, u32) {
        let renewals = AtomicU32::new(0);
        let abandon = CancellationToken::new();
        let now = tokio::time::Instant::now();
        let ended = supervise(
            attempt,
            now + Duration::from_secs(5),
            (now + Duration::from_secs(1), Duration::from_secs(1)),
            &abandon,
            || {
                renewals.fetch_add(1, Ordering::SeqCst);
                Box::pin(tokio::time::sleep(renewal_takes))
            },
        )
        .await;
        (ended, renewals.load(Ordering::SeqCst))
    }

    /// A lease is renewed every `renew_every` while the handler runs, the first one
    /// `renew_every` in: a 2.5 s handler gets two.
    #[tokio::test(start_paused = true)]
    async fn renews_the_lease_on_its_cadence_while_the_handler_runs() {
        let (ended, renewals) =
            supervised(sleeping(Duration::from_millis(2500)), Duration::ZERO).await;
        assert!(matches!(ended, Ended::Returned(Ok(()))), "{ended:?}");
        assert_eq!(renewals, 2);
    }

    /// A handler that finishes at once arms no timer and renews nothing.
    #[tokio::test(start_paused = true)]
    async fn a_handler_done_at_once_renews_nothing() {
        let (ended, renewals) = supervised(sleeping(Duration::ZERO), Duration::ZERO).await;
        assert!(matches!(ended, Ended::Returned(Ok(()))), "{ended:?}");
        assert_eq!(renewals, 0);
    }

    /// The timeout cuts a long handler off at 5 s, after the renewals at 1-4 s.
    #[tokio::test(start_paused = true)]
    async fn the_timeout_cuts_a_long_handler_off() {
        let (ended, renewals) = supervised(sleeping(Duration::from_secs(60)), Duration::ZERO).await;
        assert!(matches!(ended, Ended::TimedOut), "{ended:?}");
        assert_eq!(renewals, 4);
    }

    /// A renewal that hangs (Redis stopped) neither stalls the handler nor starts a second
    /// renewal beside it; the timeout still fires.
    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_does_not_stop_the_handler_or_its_timeout() {
        let (ended, renewals) =
            supervised(sleeping(Duration::from_secs(3)), Duration::from_secs(3600)).await;
        assert!(matches!(ended, Ended::Returned(Ok(()))), "{ended:?}");
        assert_eq!(renewals, 1, "one renewal at a time");
        let (ended, renewals) =
            supervised(sleeping(Duration::from_secs(60)), Duration::from_secs(3600)).await;
        assert!(matches!(ended, Ended::TimedOut), "{ended:?}");
        assert_eq!(renewals, 1);
    }
}
