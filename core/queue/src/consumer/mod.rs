//! The consumer engine. All workers of a namespace form one consumer group on the task
//! streams (one per queue). Each [`Worker`]:
//! - reads new entries in weighted priority order (`fetch`, `priority`), leaving out paused
//!   queues (`paused`);
//! - runs each with its handler, at most `concurrency` at a time (`dispatch`);
//! - settles each entry: done (batched acks, `ack`), retried with backoff (`backoff`), or
//!   dead-lettered (`dispatch`);
//! - renews the lease of long tasks, and takes over entries left pending past the visibility
//!   timeout by a crashed worker (`reclaim`);
//! - promotes due delayed tasks and retries of its queues onto their streams, and trims their
//!   dead letters to the retention (`promote`);
//! - on shutdown stops reading, lets running tasks finish within the shutdown timeout, and
//!   leaves the rest pending for another worker.

mod ack;
mod backoff;
mod dispatch;
mod fetch;
mod group;
mod handler;
mod paused;
mod priority;
mod promote;
mod reclaim;
mod runners;
mod settings;

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use backoff::Backoff;
pub use dispatch::CatchUnwind;
pub use handler::{FailureKind, Handler, HandlerError, Handlers, TaskContext};
pub use settings::{
    ConsumerSettings, DEFAULT_DEAD_LETTER_MAX, DEFAULT_DEAD_LETTER_RETENTION,
    DEFAULT_VISIBILITY_TIMEOUT, MAX_BLOCK, MAX_DEAD_LETTER_MAX, MIN_VISIBILITY_TIMEOUT,
    QueuesError, SettingsError, parse_queues,
};

use crate::{
    connection, depth,
    keys::{Keys, Namespace, QueueName},
    metrics::{self, ConsumerMetrics},
    report,
    trace::Tracer,
};
use dispatch::Dispatcher;
use fetch::Fetcher;
use reclaim::Reclaimer;

/// Why a worker stopped before its shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// A setting the worker cannot run with.
    #[error("invalid consumer settings")]
    Settings(#[from] SettingsError),
    /// The address is not a Redis address.
    #[error("invalid Redis address")]
    Address(#[source] redis::RedisError),
    /// Redis refuses this client (a password, an ACL, a database index): waiting cannot fix it.
    #[error("Redis refuses this client")]
    Refused(#[source] redis::RedisError),
}

/// One process's consumer: any handlers, any queues. See the crate docs for a whole example.
#[derive(Debug)]
pub struct Worker {
    endpoint: connection::Endpoint,
    keys: Keys,
    settings: ConsumerSettings,
    handlers: Handlers,
    meter: Option<opentelemetry::metrics::Meter>,
    tracer: Option<Tracer>,
    depth_every: Option<Duration>,
}

impl Worker {
    /// A worker for the queues of `settings` in `namespace`, on the Redis at `redis_address`
    /// (`host:port` or a `redis://` URL). Nothing is connected until [`Worker::run`].
    pub fn new(
        redis_address: &str,
        namespace: Namespace,
        settings: ConsumerSettings,
        handlers: Handlers,
    ) -> Result<Self, ConsumerError> {
        let client = connection::client(redis_address).map_err(ConsumerError::Address)?;
        Self::with_endpoint(client.into(), namespace, settings, handlers)
    }

    /// [`Worker::new`] on a Redis of the caller's choosing: one server with TLS settings of
    /// its own or a Redis Cluster ([`connection::Endpoint::parse`]), or a client it built
    /// (`client.into()`). The one way to hand a worker its connection settings.
    pub fn with_endpoint(
        endpoint: connection::Endpoint,
        namespace: Namespace,
        settings: ConsumerSettings,
        handlers: Handlers,
    ) -> Result<Self, ConsumerError> {
        settings.validate()?;
        Ok(Self {
            endpoint,
            keys: Keys::new(namespace),
            settings,
            handlers,
            meter: None,
            tracer: None,
            depth_every: None,
        })
    }

    /// Records the worker's metrics (see the crate docs, "Metrics") with `meter` instead of
    /// the global meter provider's.
    #[must_use]
    pub fn with_meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Makes the worker's `process` spans with `tracer` instead of the global tracer
    /// provider's (taken when the worker starts): for a program whose tracer provider is not
    /// the global one.
    #[must_use]
    pub fn with_tracer(
        mut self,
        tracer: impl opentelemetry::trace::Tracer<Span: Send + Sync + 'static> + Send + Sync + 'static,
    ) -> Self {
        self.tracer = Some(Tracer::of(tracer));
        self
    }

    /// Also reports the queue gauges (`simplebank.queue.depth`, `simplebank.queue.oldest_age`
    /// of every registered queue), reading them every `every` (the metrics export interval)
    /// while this worker is the namespace's one reader: the workers elect one through a lock
    /// in Redis, so the gauges are read once per namespace however many workers run.
    #[must_use]
    pub fn with_queue_depth(mut self, every: Duration) -> Self {
        self.depth_every = Some(every.max(Duration::from_millis(1)));
        self
    }

    /// Consumes until `shutdown` is cancelled, then drains as described in the crate docs.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let settings = self.settings;
        let queues: Vec<QueueName> = settings.queues.iter().map(|(q, _)| q.clone()).collect();
        let connect = |timeout| {
            self.endpoint
                .connect_lazy(timeout)
                .map_err(ConsumerError::Address)
        };
        let mut conn = connect(connection::RESPONSE_TIMEOUT)?;
        let fetch_conn = connect(settings.block + connection::RESPONSE_TIMEOUT)?;
        // On a cluster each queue blocks on a connection of its own (see `fetch`).
        let blocking = if self.endpoint.is_cluster() {
            let blocking = queues
                .iter()
                .map(|_| connect(settings.block + connection::RESPONSE_TIMEOUT));
            Some(blocking.collect::<Result<Vec<_>, _>>()?)
        } else {
            None
        };

        if !wait_for_groups(&mut conn, &self.keys, &queues, &shutdown).await? {
            return Ok(());
        }
        // Visible in XINFO CONSUMERS from now on; a failure here only delays that (the first
        // read adds the consumer too), so it is not a reason to stop.
        if let Err(err) = group::join(&mut conn, &self.keys, &queues, &settings.consumer_name).await
        {
            tracing::warn!(error = %report::chain(&err), "cannot join the consumer group yet; the first read will");
        }
        // Only the admin service and the metrics read the registry: a failure is not fatal.
        if let Err(err) = group::register(&mut conn, &self.keys, &settings.queues).await {
            tracing::warn!(error = %report::chain(&err), "cannot write this worker's queues into the registry");
        }
        warn_about_redis_settings(&mut conn).await;
        warn_about_old_layout(&mut conn, &self.keys, &queues).await;
        tracing::info!(
            consumer = %settings.consumer_name,
            concurrency = settings.concurrency,
            queues = %settings.queues.iter().map(|(q, w)| format!("{q}:{w}")).collect::<Vec<_>>().join(","),
            "start task processor"
        );

        let paused = paused::watch(
            conn.clone(),
            self.keys.clone(),
            queues.clone(),
            shutdown.clone(),
        );
        let meter = self.meter.unwrap_or_else(metrics::global_meter);
        let depth = self.depth_every.map(|every| {
            tokio::spawn(
                depth::DepthReporter {
                    conn: conn.clone(),
                    keys: self.keys.clone(),
                    consumer: settings.consumer_name.clone(),
                    every,
                    meter: meter.clone(),
                }
                .run(shutdown.clone()),
            )
        });
        let slots = Arc::new(Semaphore::new(settings.concurrency));
        let dispatcher = Arc::new(Dispatcher {
            conn: conn.clone(),
            keys: self.keys.clone(),
            handlers: self.handlers,
            acker: ack::Acker::start(conn.clone(), self.keys.clone()),
            shutdown: Arc::new(shutdown.clone()),
            consumer: settings.consumer_name.clone(),
            renew_every: settings.renew_interval(),
            backoff: settings.backoff,
            retention: settings.retention(),
            runners: runners::Runners::new(settings.concurrency),
            tracker: TaskTracker::new(),
            abandon: CancellationToken::new(),
            metrics: ConsumerMetrics::new(&meter),
            tracer: self.tracer.unwrap_or_else(Tracer::global),
            span_names: dispatch::SpanNames::new(&self.keys, &queues),
        });
        let _close_runners = runners::CloseOnDrop(&dispatcher.runners);
        let promoter = tokio::spawn(promote::run(
            conn.clone(),
            self.keys.clone(),
            queues.clone(),
            settings.retention(),
            dispatcher.metrics.clone(),
            shutdown.clone(),
        ));
        let reclaim = tokio::spawn(
            Reclaimer {
                conn: conn.clone(),
                keys: self.keys.clone(),
                queues: queues.clone(),
                consumer: settings.consumer_name.clone(),
                visibility_timeout: settings.visibility_timeout,
                interval: settings.reclaim_interval(),
                slots: Arc::clone(&slots),
                dispatcher: Arc::clone(&dispatcher),
                paused: paused.clone(),
            }
            .run(shutdown.clone()),
        );
        let fetcher = Fetcher::new(
            fetch::ReadConnections {
                conn: fetch_conn,
                reader: connection::reader::Reader::for_endpoint(
                    &self.endpoint,
                    settings.block + connection::RESPONSE_TIMEOUT,
                ),
                blocking,
            },
            &self.keys,
            &settings.queues,
            settings.strict_priority,
            settings.consumer_name.clone(),
            settings.block,
            paused,
        );
        let reading = fetch::Reading {
            conn: &mut conn,
            keys: &self.keys,
            queues: &queues,
            slots: &slots,
            concurrency: settings.concurrency,
            dispatcher: &dispatcher,
            visibility_timeout: settings.visibility_timeout,
        };
        fetch::run(fetcher, reading, &shutdown).await;
        let _ = tokio::join!(reclaim, promoter);
        if let Some(depth) = depth {
            let _ = depth.await;
        }

        // Counted before the waiting runners are woken to end, so that none has ended yet.
        let runners = dispatcher.tracker.len();
        let waiting = dispatcher.runners.close();
        dispatcher.tracker.close();
        let running = runners.saturating_sub(waiting);
        tracing::info!(running, "stopped reading; waiting for running tasks");
        if tokio::time::timeout(settings.shutdown_timeout, dispatcher.tracker.wait())
            .await
            .is_err()
        {
            dispatcher.abandon.cancel();
            dispatcher.tracker.wait().await;
        }
        tracing::info!("task processor stopped");
        Ok(())
    }
}

/// Creates the consumer groups, retrying while Redis is unreachable. False if shut down first;
/// an error if Redis refuses this client (a misconfiguration, which waiting cannot fix).
async fn wait_for_groups(
    conn: &mut crate::connection::Connection,
    keys: &Keys,
    queues: &[QueueName],
    shutdown: &CancellationToken,
) -> Result<bool, ConsumerError> {
    let mut warned = false;
    loop {
        match group::ensure(conn, keys, queues).await {
            Ok(()) => return Ok(true),
            Err(err) if connection::is_misconfiguration(&err) => {
                return Err(ConsumerError::Refused(err));
            }
            Err(err) if !warned => {
                tracing::warn!(error = %report::chain(&err), "cannot reach Redis; retrying");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Warns when Redis still holds keys of the old layout (one hash tag per namespace): their
/// tasks are not run until they are moved.
async fn warn_about_old_layout(
    conn: &mut crate::connection::Connection,
    keys: &Keys,
    queues: &[QueueName],
) {
    match crate::migrate::old_layout_keys(conn, keys, queues).await {
        Ok(found) if !found.is_empty() => tracing::warn!(
            keys = %found.join(", "),
            "Redis holds keys of the old single-hash-tag layout: their tasks are not run. \
             Stop the old workers and run `simplebank-worker migrate-redis` \
             (an embedding service: simplebank_queue::migrate::run)"
        ),
        Ok(_) => {}
        Err(err) => {
            tracing::debug!(error = %report::chain(&err), "cannot look for old-layout keys")
        }
    }
}

/// Warns when Redis may lose tasks: an eviction policy other than `noeviction`, or no AOF.
/// Managed Redis services may refuse CONFIG; then nothing is said.
async fn warn_about_redis_settings(conn: &mut crate::connection::Connection) {
    let config = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .ok()
                .and_then(|pair| pair.into_iter().nth(1))
        }
    };
    if let Some(policy) = config("maxmemory-policy").await
        && policy != "noeviction"
    {
        tracing::warn!(
            policy,
            "Redis maxmemory-policy is not noeviction: it may evict queued tasks"
        );
    }
    if config("appendonly").await.as_deref() == Some("no") {
        tracing::warn!(
            "Redis runs without AOF (appendonly no): a Redis restart loses queued tasks"
        );
    }
}
