//! The span processor: a sampled span is encoded into its OTLP bytes on the thread that ends
//! it ([`span_entry`]), appended to the open batch, and freed there; the `otlp-batch` thread
//! sends each closed batch as one request. It replaces the SDK's batch processor, which handed
//! every `SpanData` over to its own thread to be encoded and freed: on a worker's two cores
//! that hand-over cost the drain as much as encoding and sending did (BENCHMARKS.md, Tracing
//! export, step 6).
//!
//! It reads the SDK's variables, checked at start: `OTEL_BSP_SCHEDULE_DELAY` (a batch is sent
//! at least this often), `OTEL_BSP_MAX_QUEUE_SIZE` (spans waiting to be sent; past it, spans
//! are dropped and counted) and `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (spans per request; a batch
//! also closes before it would pass the 4 MiB a collector takes).

use std::{
    cell::RefCell,
    collections::VecDeque,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanProcessor},
};

use crate::{
    InitError,
    endpoint::invalid,
    export::OnceAMinute,
    span_encoding::{EncodedResource, export_request, scope_overhead, span_entry},
    span_export::{MAX_REQUEST_BYTES, OtlpSpanExporter},
};

const SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
const MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
const MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";

/// How long `force_flush` waits for the batches it closed (the SDK's, too).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// A thread's encoding buffer is given back past this (one span with an attribute of
/// megabytes would otherwise keep its size for the life of the thread).
const KEPT_SCRATCH: usize = 64 * 1024;

/// The batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchSettings {
    pub delay: Duration,
    pub max_queue: usize,
    pub max_batch: usize,
}

impl BatchSettings {
    /// From the environment, checked: a value that is not a whole number in range stops the
    /// program with the variable's name (the SDK skipped it and used the default).
    pub fn from_env() -> Result<Self, InitError> {
        Self::parse(|variable| match std::env::var(variable) {
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(invalid(variable, "is not valid UTF-8".into()))
            }
        })
    }

    fn parse(
        var: impl Fn(&'static str) -> Result<Option<String>, InitError>,
    ) -> Result<Self, InitError> {
        let whole = |variable: &'static str, default: u64, max: u64, unit: &str| {
            let Some(value) = var(variable)? else {
                return Ok(default);
            };
            match value.trim().parse::<u64>() {
                Ok(n @ 1..) if n <= max => Ok(n),
                _ => Err(invalid(
                    variable,
                    format!("must be a whole number of {unit} from 1 to {max}, such as {default}"),
                )),
            }
        };
        let delay = whole(SCHEDULE_DELAY, 5_000, 3_600_000, "milliseconds")?;
        let max_queue = whole(MAX_QUEUE_SIZE, 2_048, 16_777_216, "spans")?;
        let max_batch = whole(MAX_EXPORT_BATCH_SIZE, 512, 16_777_216, "spans")?;
        Ok(Self {
            delay: Duration::from_millis(delay),
            max_queue: usize::try_from(max_queue).unwrap_or(usize::MAX),
            // As the SDK: a batch larger than the queue is the queue.
            max_batch: usize::try_from(max_batch.min(max_queue)).unwrap_or(usize::MAX),
        })
    }
}

/// Spans grouped by scope, each scope's spans as encoded entries in the order they ended, the
/// scopes in the order they first appeared: what the stock conversion builds from the same
/// spans.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    scopes: Vec<(InstrumentationScope, Vec<u8>)>,
    spans: usize,
    /// At most what a request of it takes besides the resource.
    bytes: usize,
    /// Where the last span's scope is in `scopes`: nearly always the next one's too.
    last: usize,
    /// Its place among the closed batches, counted from 1.
    seq: u64,
    /// The first scope's buffer is made this large, from the last batch's size, so that it is
    /// not grown (and copied) a dozen times over.
    capacity: usize,
}

/// Where a span's entry goes in a batch, and what it adds to the request's size.
#[derive(Debug, Clone, Copy)]
struct Found {
    /// Its scope's place in `scopes`, if the batch holds that scope already.
    at: Option<usize>,
    cost: usize,
}

impl Batch {
    /// Where `scope` is in `scopes`, if it is there.
    fn find(&self, scope: &InstrumentationScope) -> Option<usize> {
        if self.scopes.get(self.last).is_some_and(|(s, _)| s == scope) {
            return Some(self.last);
        }
        self.scopes.iter().position(|(s, _)| s == scope)
    }

    /// Where a span's `entry` of `scope` would go, and what it would add to the request.
    fn cost(&self, scope: &InstrumentationScope, entry: &[u8]) -> Found {
        let at = self.find(scope);
        Found {
            at,
            cost: entry.len() + at.map_or_else(|| scope_overhead(scope), |_| 0),
        }
    }

    /// Adds `entry`, of `scope`, where [`Batch::cost`] found its place.
    fn push(&mut self, scope: &InstrumentationScope, entry: &[u8], Found { at, cost }: Found) {
        let at = match at {
            Some(at) => at,
            None => {
                let capacity = if self.scopes.is_empty() {
                    self.capacity
                } else {
                    0
                };
                self.scopes
                    .push((scope.clone(), Vec::with_capacity(capacity)));
                self.scopes.len() - 1
            }
        };
        self.scopes[at].1.extend_from_slice(entry);
        self.last = at;
        self.spans += 1;
        self.bytes += cost;
    }

    /// Appends the request carrying the batch from `resource` to `out`.
    pub fn encode(&self, resource: &EncodedResource, out: &mut Vec<u8>) {
        export_request(
            resource,
            self.scopes
                .iter()
                .map(|(scope, entries)| (scope, &entries[..])),
            out,
        );
    }

    /// The batch of `spans`, in order, as the processor builds it (no limits).
    #[cfg(test)]
    pub fn of(spans: &[SpanData]) -> Self {
        let mut batch = Self::default();
        let mut entry = Vec::new();
        for span in spans {
            entry.clear();
            span_entry(&mut entry, span);
            let found = batch.cost(&span.instrumentation_scope, &entry);
            batch.push(&span.instrumentation_scope, &entry, found);
        }
        batch
    }
}

/// What the ending threads and the `otlp-batch` thread share.
#[derive(Debug)]
struct Queue {
    settings: BatchSettings,
    state: Mutex<State>,
    /// A batch closed, or a flush or shutdown asked for: the `otlp-batch` thread's wake-up.
    work: Condvar,
    /// A batch sent (or given up on), or the thread stopped: what flushes wait for.
    done: Condvar,
    /// Spans dropped because the queue was full, since the last warning.
    dropped: AtomicUsize,
    /// Spans too large for a request on their own, since the last warning.
    too_large: AtomicUsize,
}

#[derive(Debug)]
struct State {
    open: Batch,
    closed: VecDeque<Batch>,
    /// The spans in `open` and `closed`: what counts against the queue's size.
    queued: usize,
    /// The spans of the batch being sent.
    sending: usize,
    /// The `seq` of the last batch closed, and of the last one the thread is done with.
    last_closed: u64,
    last_done: u64,
    last_export: Instant,
    resource: Arc<EncodedResource>,
    stopping: bool,
    stopped: bool,
}

impl State {
    /// Closes the open batch, if it holds a span.
    fn close(&mut self) {
        if self.open.spans > 0 {
            self.last_closed += 1;
            // A quarter more than the last, so that a slightly larger batch is not copied
            // whole into a buffer twice its size, under the lock.
            let last = self.open.scopes[0].1.len();
            let capacity = (last + last / 4).min(MAX_REQUEST_BYTES);
            let mut batch = std::mem::replace(
                &mut self.open,
                Batch {
                    capacity,
                    ..Batch::default()
                },
            );
            batch.seq = self.last_closed;
            self.closed.push_back(batch);
        }
    }
}

impl Queue {
    fn new(settings: BatchSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State {
                open: Batch::default(),
                closed: VecDeque::new(),
                queued: 0,
                sending: 0,
                last_closed: 0,
                last_done: 0,
                last_export: Instant::now(),
                resource: Arc::default(),
                stopping: false,
                stopped: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            dropped: AtomicUsize::new(0),
            too_large: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a span's `entry` of `scope`, or counts it dropped.
    fn add(&self, scope: &InstrumentationScope, entry: &[u8]) {
        let mut state = self.lock();
        if state.stopping {
            return;
        }
        let resource = state.resource.overhead();
        // (Only a large entry can be too large: the scope's size is not worked out otherwise.)
        if entry.len() + resource > MAX_REQUEST_BYTES / 2
            && entry.len() + scope_overhead(scope) + resource > MAX_REQUEST_BYTES
        {
            self.too_large.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if state.queued >= self.settings.max_queue {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut found = state.open.cost(scope, entry);
        if state.open.spans > 0 && state.open.bytes + found.cost + resource > MAX_REQUEST_BYTES {
            state.close();
            self.work.notify_one();
            found = state.open.cost(scope, entry);
        }
        state.open.push(scope, entry, found);
        state.queued += 1;
        if state.open.spans >= self.settings.max_batch {
            state.close();
            self.work.notify_one();
        }
    }

    /// Closes the open batch and waits until the thread is done with every batch closed so
    /// far, at most `timeout`. On failure, also the spans left unsent (queued and in flight),
    /// counted as the wait ends.
    fn flush(
        &self,
        mut state: MutexGuard<'_, State>,
        timeout: Duration,
    ) -> Result<(), (OTelSdkError, usize)> {
        state.close();
        let target = state.last_closed;
        self.work.notify_one();
        let (state, _) = self
            .done
            .wait_timeout_while(state, timeout, |state| {
                state.last_done < target && !state.stopped
            })
            .unwrap_or_else(|e| e.into_inner());
        if state.last_done >= target {
            return Ok(());
        }
        let left = state.queued + state.sending;
        Err(if state.stopped {
            (
                OTelSdkError::InternalFailure("the span export thread stopped".into()),
                left,
            )
        } else {
            (OTelSdkError::Timeout(timeout), left)
        })
    }
}

thread_local! {
    /// Each ending thread's buffer for the span it encodes, outside the queue's lock.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The span processor (see the module's header).
#[derive(Debug)]
pub(crate) struct SpanBatcher {
    queue: Arc<Queue>,
    exporter: Arc<OtlpSpanExporter>,
}

impl SpanBatcher {
    /// Starts the `otlp-batch` thread, which sends with `exporter`.
    pub fn start(exporter: OtlpSpanExporter, settings: BatchSettings) -> Result<Self, InitError> {
        let queue = Arc::new(Queue::new(settings));
        let exporter = Arc::new(exporter);
        // The exporter's calls are futures on a tonic channel driven by the `otlp-export`
        // thread: this runtime only waits for them, with a timer to tell of losses meanwhile
        // and for `deliver`'s waits between retries.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(InitError::ExportThread)?;
        let (thread_queue, thread_exporter) = (Arc::clone(&queue), Arc::clone(&exporter));
        std::thread::Builder::new()
            .name("otlp-batch".into())
            .spawn(move || send_batches(&thread_queue, &thread_exporter, &runtime))
            .map_err(InitError::ExportThread)?;
        Ok(Self { queue, exporter })
    }
}

/// The `otlp-batch` thread: sends each closed batch, closing the open one when the schedule's
/// delay has passed since the last export, until shut down with nothing left.
fn send_batches(queue: &Queue, exporter: &OtlpSpanExporter, runtime: &tokio::runtime::Runtime) {
    crate::export::mark_export_thread();
    // However the thread ends, even by a panic: no more spans are taken, and flushes return.
    let _stops = Stops(queue);
    let failure_warned = OnceAMinute::default();
    let losses_warned = OnceAMinute::default();
    let mut state = queue.lock();
    loop {
        if let Some(batch) = state.closed.pop_front() {
            state.queued -= batch.spans;
            state.sending = batch.spans;
            state.last_export = Instant::now();
            let resource = Arc::clone(&state.resource);
            drop(state);
            let mut body = Vec::with_capacity(batch.bytes + resource.overhead());
            batch.encode(&resource, &mut body);
            let (seq, spans) = (batch.seq, batch.spans);
            drop(batch);
            // Losses are told while an export waits too: against a collector that hangs, an
            // export can take its whole timeout, and the queue fills meanwhile.
            let result = runtime.block_on(async {
                let export = exporter.export(body);
                tokio::pin!(export);
                loop {
                    tokio::select! {
                        result = &mut export => break result,
                        () = tokio::time::sleep(Duration::from_secs(1)) => queue.tell_losses(&losses_warned, false),
                    }
                }
            });
            if let Err(err) = result
                && failure_warned.due()
            {
                tracing::warn!(
                    target: "simplebank::otlp",
                    spans, error = %crate::export::capped(&err),
                    "cannot export spans to the OTLP collector; dropping them (next warning in a minute at the earliest)"
                );
            }
            queue.tell_losses(&losses_warned, false);
            state = queue.lock();
            state.last_done = seq;
            state.sending = 0;
            queue.done.notify_all();
            continue;
        }
        // (Shutdown closed the open batch when it set `stopping`, and no span is added after.)
        if state.stopping {
            drop(state);
            queue.tell_losses(&losses_warned, true);
            return;
        }
        let due = state.last_export + queue.settings.delay;
        let now = Instant::now();
        if now >= due {
            state.close();
            state.last_export = now;
            continue;
        }
        state = queue
            .work
            .wait_timeout(state, due - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        drop(state);
        queue.tell_losses(&losses_warned, false);
        state = queue.lock();
    }
}

impl Queue {
    /// Warns of the spans dropped since the last warning, if there were any and a minute has
    /// passed since it (`warned`); at exit (`last`), whenever it was.
    fn tell_losses(&self, warned: &OnceAMinute, last: bool) {
        let pending = self.dropped.load(Ordering::Relaxed) + self.too_large.load(Ordering::Relaxed);
        if pending > 0 && (last || warned.due()) {
            self.report_losses();
        }
    }

    /// Warns of the spans dropped and not yet told of (the counts wait in the queue until
    /// then, so that an exit whose export is stuck can still tell of them).
    fn report_losses(&self) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let too_large = self.too_large.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                target: "simplebank::otlp",
                spans = dropped,
                max_queue_size = self.settings.max_queue,
                "dropped spans: the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE; the collector is slow or down, or spans end faster than they are sent) (next warning in a minute at the earliest)"
            );
        }
        if too_large > 0 {
            tracing::warn!(
                target: "simplebank::otlp",
                spans = too_large,
                limit_bytes = MAX_REQUEST_BYTES,
                "dropped spans too large for an OTLP request on their own (an attribute of megabytes); the others are exported (next warning in a minute at the earliest)"
            );
        }
    }
}

/// Marks the queue stopped when the `otlp-batch` thread ends.
struct Stops<'a>(&'a Queue);

impl Drop for Stops<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                target: "simplebank::otlp",
                "the span export thread stopped on a panic: spans are no longer exported"
            );
        }
        let mut state = self.0.lock();
        state.stopping = true;
        state.stopped = true;
        self.0.done.notify_all();
    }
}

impl SpanProcessor for SpanBatcher {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let queue = |entry: &mut Vec<u8>| {
            entry.clear();
            span_entry(entry, &span);
            self.queue.add(&span.instrumentation_scope, entry);
        };
        let queued = SCRATCH.try_with(|scratch| {
            // Busy only if ending a span ended another (nothing in encoding does).
            let Ok(mut entry) = scratch.try_borrow_mut() else {
                return false;
            };
            queue(&mut entry);
            if entry.capacity() > KEPT_SCRATCH {
                *entry = Vec::new();
            }
            true
        });
        // Without it (the thread's locals being destroyed, or busy): a buffer of its own, never
        // a panic, which inside a span's drop could abort the process.
        if queued != Ok(true) {
            queue(&mut Vec::new());
        }
        // `span` is freed here, by the thread that ended it.
    }

    fn force_flush(&self) -> OTelSdkResult {
        let state = self.queue.lock();
        if state.stopping {
            // Shut down, or the `otlp-batch` thread is gone.
            return Err(OTelSdkError::AlreadyShutdown);
        }
        self.queue
            .flush(state, FLUSH_TIMEOUT)
            .map_err(|(err, _)| err)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let mut state = self.queue.lock();
        if state.stopping {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        state.stopping = true;
        // From now on exports are not retried: what is queued is sent once, within `timeout`.
        self.exporter.shut_down();
        let (err, left) = match self.queue.flush(state, timeout) {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        if left > 0 {
            let cause = match err {
                OTelSdkError::Timeout(_) => {
                    "the last flush ran out of time (the collector is slow or down, or the export had fallen behind)"
                }
                _ => "the span export thread had stopped",
            };
            tracing::warn!(
                target: "simplebank::otlp",
                spans = left,
                timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                "spans not exported at exit: {cause}"
            );
        }
        // The `otlp-batch` thread tells of these when it ends, which it may not do in time.
        self.queue.report_losses();
        Err(err)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.queue.lock().resource = Arc::new(EncodedResource::new(resource));
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use super::*;
    use crate::span_export::tests::against_a_collector::{
        Scripted, collector, exhausted, exporter, serve, span,
    };

    const MB: usize = 1024 * 1024;

    fn settings(delay_ms: u64, max_queue: usize, max_batch: usize) -> BatchSettings {
        BatchSettings {
            delay: Duration::from_millis(delay_ms),
            max_queue,
            max_batch,
        }
    }

    /// The entry of a span with an attribute of `bytes` bytes.
    fn entry(bytes: usize) -> Vec<u8> {
        let mut entry = Vec::new();
        span_entry(&mut entry, &span(bytes));
        entry
    }

    fn parse(vars: &[(&str, &str)]) -> Result<BatchSettings, InitError> {
        BatchSettings::parse(|variable| {
            Ok(vars
                .iter()
                .find(|(name, _)| *name == variable)
                .map(|(_, value)| (*value).to_owned()))
        })
    }

    #[test]
    fn settings_are_the_sdks_defaults_and_checked() {
        assert_eq!(parse(&[]).unwrap(), settings(5_000, 2_048, 512));
        assert_eq!(
            parse(&[
                (SCHEDULE_DELAY, " 200 "),
                (MAX_QUEUE_SIZE, "65536"),
                (MAX_EXPORT_BATCH_SIZE, "2048"),
            ])
            .unwrap(),
            settings(200, 65_536, 2_048)
        );
        // A batch larger than the queue is the queue, as in the SDK.
        assert_eq!(
            parse(&[(MAX_QUEUE_SIZE, "100"), (MAX_EXPORT_BATCH_SIZE, "512")]).unwrap(),
            settings(5_000, 100, 100)
        );
        for variable in [SCHEDULE_DELAY, MAX_QUEUE_SIZE, MAX_EXPORT_BATCH_SIZE] {
            for bad in ["0", "-1", "1.5", "12ms", "99999999999", "S3CR3T\r\n", "١٢"] {
                let err = parse(&[(variable, bad)]).unwrap_err().to_string();
                assert!(err.contains(variable), "{err}");
                assert!(err.contains("whole number"), "{err}");
                assert!(!err.contains("S3CR3T"), "{err}");
            }
        }
    }

    #[test]
    fn a_full_queue_drops_spans_and_counts_them() {
        let queue = Queue::new(settings(60_000, 4, 2));
        let scope = span(0).instrumentation_scope;
        for _ in 0..10 {
            queue.add(&scope, &entry(0));
        }
        let state = queue.lock();
        assert_eq!(state.queued, 4);
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 6);
        let batches: Vec<usize> = state.closed.iter().map(|batch| batch.spans).collect();
        assert_eq!(batches, [2, 2]);
        assert_eq!(state.open.spans, 0);
    }

    /// A batch closes before a span would take its request past what a collector takes; a
    /// span too large on its own is dropped and counted, not its batch (the collector
    /// refused a whole batch for one such span).
    #[test]
    fn a_batch_closes_before_the_request_limit_and_a_span_too_large_alone_is_dropped() {
        let queue = Queue::new(settings(60_000, 100, 100));
        let resource = EncodedResource::new(
            &Resource::builder_empty()
                .with_attributes([opentelemetry::KeyValue::new(
                    "service.name",
                    "x".repeat(300),
                )])
                .with_schema_url([], "https://opentelemetry.io/schemas/1.26.0")
                .build(),
        );
        queue.lock().resource = Arc::new(resource.clone());
        let scope = span(0).instrumentation_scope;
        let other = InstrumentationScope::builder("other")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([opentelemetry::KeyValue::new("k", "v".repeat(200))])
            .build();
        for (bytes, scope) in [
            (0, &scope),
            (3 * MB, &scope),
            (3 * MB, &scope),
            (5 * MB, &scope),
            (0, &other),
            (MB / 2, &other),
            (MB / 2 + 100, &scope),
        ] {
            queue.add(scope, &entry(bytes));
        }
        assert_eq!(queue.too_large.load(Ordering::Relaxed), 1);
        let mut state = queue.lock();
        state.close();
        let mut sizes = Vec::new();
        for batch in &state.closed {
            let mut body = Vec::new();
            batch.encode(&resource, &mut body);
            assert!(body.len() <= batch.bytes + resource.overhead());
            assert!(body.len() <= MAX_REQUEST_BYTES);
            sizes.push(batch.spans);
        }
        assert_eq!(sizes, [2, 3, 1]);
    }

    /// When the `otlp-batch` thread ends with batches not sent (a panic: its `Stops` guard
    /// runs), a flush waiting for them fails at once rather than succeeding or timing out.
    #[test]
    fn a_flush_fails_at_once_when_the_export_thread_stops_first() {
        let queue = Queue::new(settings(60_000, 100, 100));
        queue.add(&span(0).instrumentation_scope, &entry(0));
        std::thread::scope(|threads| {
            threads.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                drop(Stops(&queue));
            });
            let started = Instant::now();
            let flushed = queue.flush(queue.lock(), Duration::from_secs(60));
            assert!(
                matches!(flushed, Err((OTelSdkError::InternalFailure(_), 1))),
                "{flushed:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(30));
        });
    }

    /// A processor sending to `url` with `settings`, its exports timed out after `timeout`.
    fn batcher(url: String, timeout: Duration, settings: BatchSettings) -> SpanBatcher {
        SpanBatcher::start(exporter(url, timeout), settings).unwrap()
    }

    /// A processor sending to `collector`'s `url` with `settings`, in a provider.
    fn provider(url: String, settings: BatchSettings) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_span_processor(batcher(url, Duration::from_secs(10), settings))
            .build()
    }

    fn end_spans(provider: &SdkTracerProvider, names: impl IntoIterator<Item = String>) {
        let tracer = provider.tracer("test");
        for name in names {
            tracer.start(name).end();
        }
    }

    /// Waits up to 10 s for `collector` to have received `spans` spans.
    async fn received(collector: &Scripted, spans: usize) -> Vec<usize> {
        for _ in 0..1000 {
            let requests = collector.spans.lock().unwrap().clone();
            if requests.iter().sum::<usize>() >= spans {
                return requests;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        collector.spans.lock().unwrap().clone()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn ended_spans_are_sent_in_batches_of_the_configured_size_in_order() {
        let (collector, url) = collector(vec![]).await;
        let provider = provider(url, settings(60_000, 100, 3));
        let names: Vec<String> = (0..7).map(|n| format!("span {n}")).collect();
        end_spans(&provider, names.clone());
        let flushed =
            tokio::task::spawn_blocking(move || provider.force_flush().map(|()| provider))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(*collector.spans.lock().unwrap(), [3, 3, 1]);
        assert_eq!(*collector.names.lock().unwrap(), names);
        drop(flushed);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_not_yet_full_is_sent_on_schedule() {
        let (collector, url) = collector(vec![]).await;
        let provider = provider(url, settings(100, 100, 50));
        end_spans(&provider, ["one".to_owned(), "two".to_owned()]);
        // (In one request or two: the schedule may fall between them.)
        assert_eq!(received(&collector, 2).await.iter().sum::<usize>(), 2);
        tokio::task::spawn_blocking(move || drop(provider))
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn shutdown_sends_what_is_queued_then_takes_no_more() {
        let (collector, url) = collector(vec![]).await;
        let batcher = batcher(url, Duration::from_secs(10), settings(60_000, 100, 50));
        for _ in 0..5 {
            batcher.on_end(span(0));
        }
        let batcher = tokio::task::spawn_blocking(move || {
            batcher
                .shutdown_with_timeout(Duration::from_secs(5))
                .unwrap();
            batcher
        })
        .await
        .unwrap();
        assert_eq!(*collector.spans.lock().unwrap(), [5]);
        batcher.on_end(span(0));
        assert_eq!(batcher.queue.lock().queued, 0);
        assert!(batcher.force_flush().is_err());
        assert!(
            batcher
                .shutdown_with_timeout(Duration::from_secs(1))
                .is_err()
        );
        assert_eq!(*collector.spans.lock().unwrap(), [5]);
    }

    /// A flush waits for the batch being sent as well as for those still queued.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_flush_waits_for_the_batch_in_flight_and_the_rest() {
        let (collector, url) = serve(Scripted {
            delay: Duration::from_millis(500),
            ..Scripted::default()
        })
        .await;
        let batcher = batcher(url, Duration::from_secs(10), settings(60_000, 100, 2));
        batcher.on_end(span(0));
        batcher.on_end(span(0));
        // The first batch is on its way (received, not answered) when the third span ends.
        while collector.spans.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        batcher.on_end(span(0));
        let batcher = tokio::task::spawn_blocking(move || {
            batcher.force_flush().unwrap();
            batcher
        })
        .await
        .unwrap();
        assert_eq!(collector.replied.load(Ordering::SeqCst), 2);
        assert_eq!(*collector.spans.lock().unwrap(), [2, 1]);
        assert_eq!(batcher.queue.lock().queued, 0);
        tokio::task::spawn_blocking(move || batcher.shutdown())
            .await
            .unwrap()
            .unwrap();
    }

    /// Against a collector that hangs, or one that asks for a long wait before the retry, the
    /// spans dropped meanwhile are taken to be told of while the export waits, not only once it
    /// ends (up to its timeout, which can be minutes).
    #[tokio::test(flavor = "multi_thread")]
    async fn losses_are_told_of_while_an_export_waits() {
        let hanging = serve(Scripted {
            hang_from: Some(1),
            ..Scripted::default()
        })
        .await;
        let asking = collector(vec![exhausted(Some(Duration::from_secs(50)))]).await;
        for (collector, url) in [hanging, asking] {
            let batcher = batcher(url, Duration::from_secs(60), settings(60_000, 1, 1));
            batcher.on_end(span(0));
            while collector.calls.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for _ in 0..3 {
                batcher.on_end(span(0));
            }
            assert_eq!(batcher.queue.dropped.load(Ordering::Relaxed), 2);
            for _ in 0..500 {
                if batcher.queue.dropped.load(Ordering::Relaxed) == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(batcher.queue.dropped.load(Ordering::Relaxed), 0);
            assert_eq!(collector.calls.load(Ordering::SeqCst), 1, "still waiting");
        }
    }

    /// An exit whose last flush runs out of time says how many spans it leaves unsent, the
    /// batch in flight included: a loss at exit is otherwise silent.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_exit_that_runs_out_of_time_says_how_many_spans_are_left() {
        let (collector, url) = serve(Scripted {
            hang_from: Some(1),
            ..Scripted::default()
        })
        .await;
        let batcher = batcher(url, Duration::from_secs(60), settings(60_000, 100, 2));
        batcher.on_end(span(0));
        batcher.on_end(span(0));
        while collector.calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..3 {
            batcher.on_end(span(0));
        }
        let log = tokio::task::spawn_blocking(move || {
            crate::logs::tests::logged(crate::LogFormat::Json, || {
                let result = batcher.shutdown_with_timeout(Duration::from_millis(300));
                assert!(
                    matches!(result, Err(OTelSdkError::Timeout(_))),
                    "{result:?}"
                );
            })
        })
        .await
        .unwrap();
        assert!(log.contains("spans not exported at exit"), "{log}");
        assert!(log.contains(r#""spans":5"#), "{log}");
        assert!(log.contains(r#""timeout_ms":300"#), "{log}");
    }

    /// Spans of several scopes (tracers) go in one request, each under its scope.
    #[tokio::test(flavor = "multi_thread")]
    async fn spans_of_several_scopes_share_a_batch() {
        let (collector, url) = collector(vec![]).await;
        let provider = provider(url, settings(60_000, 100, 4));
        let (first, second) = (provider.tracer("first"), provider.tracer("second"));
        for n in 0..2 {
            first.start(format!("first {n}")).end();
            second.start(format!("second {n}")).end();
        }
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*collector.spans.lock().unwrap(), [4]);
        assert_eq!(
            *collector.names.lock().unwrap(),
            ["first 0", "first 1", "second 0", "second 1"]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_span_not_sampled_is_not_queued() {
        let (_collector, url) = collector(vec![]).await;
        let batcher = batcher(url, Duration::from_secs(10), settings(60_000, 100, 50));
        let mut unsampled = span(0);
        unsampled.span_context = opentelemetry::trace::SpanContext::new(
            unsampled.span_context.trace_id(),
            unsampled.span_context.span_id(),
            opentelemetry::trace::TraceFlags::default(),
            false,
            opentelemetry::trace::TraceState::default(),
        );
        batcher.on_end(unsampled);
        assert_eq!(batcher.queue.lock().queued, 0);
        batcher.on_end(span(0));
        assert_eq!(batcher.queue.lock().queued, 1);
        tokio::task::spawn_blocking(move || batcher.shutdown())
            .await
            .unwrap()
            .unwrap();
    }
}
