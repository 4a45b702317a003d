//! Failure handling: retries with backoff up to max_retry, dead letters, requeue, panics,
//! timeouts, skip-retry, not-a-failure, poison entries, unknown types, crash loops.

use std::{sync::Arc, time::Duration};

use simplebank_core::{
    redis_client,
    testing::{TestRedis, eventually},
};
use simplebank_queue::{
    DeadLetters, GROUP, Handler, HandlerError, Handlers, QueueName, Task, TaskContext, TaskPayload,
};

use crate::helpers::{
    Noop, Recorder, RunningWorker, ensure_group, publisher, scheduled_count, settings,
    wait_for_runs, wait_until_drained,
};

/// The queue of [`Noop`] tasks.
fn default_queue() -> QueueName {
    QueueName::parse("default").expect("queue")
}

fn dead_letters(redis: &TestRedis) -> DeadLetters {
    let conn = redis_client::lazy_manager(redis.client(), redis_client::RESPONSE_TIMEOUT)
        .expect("connection");
    DeadLetters::new(conn, redis.keys())
}

async fn wait_for_dead(redis: &TestRedis, n: usize) {
    let dead = dead_letters(redis);
    eventually(
        &format!("{n} dead letters"),
        Duration::from_secs(20),
        || {
            let dead = dead.clone();
            async move { dead.count(&default_queue()).await.ok() == Some(n) }
        },
    )
    .await;
}

fn noop(n: u32) -> Task {
    Task::new(&Noop { n }).expect("task")
}

#[tokio::test]
async fn a_failing_task_runs_max_retry_plus_one_times_then_is_dead_and_can_be_requeued() {
    let redis = TestRedis::new();
    // Fails its first 4 runs, succeeds after: with max_retry 3 it dies after run 4; a requeue
    // then succeeds.
    let recorder = Recorder::new().with_behaviour(Arc::new(|seen_before| {
        if seen_before < 4 { Err("boom") } else { Ok(()) }
    }));
    let worker = RunningWorker::start(
        &redis,
        settings("failing"),
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    let task = noop(1)
        .with_max_retry(3)
        .with_trace(simplebank_queue::trace::TraceContext {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
        });
    publisher(&redis).publish(&task).await.expect("publish");

    wait_for_dead(&redis, 1).await;
    assert_eq!(recorder.total_runs(), 4, "exactly max_retry + 1 attempts");
    let dead = dead_letters(&redis)
        .list(&default_queue(), 10)
        .await
        .expect("list");
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.error, "boom");
    assert_eq!(letter.attempts, 4);
    assert_eq!(letter.queue.as_str(), "default");
    let (first, last) = (
        letter.first_failed_at.expect("first"),
        letter.last_failed_at.expect("last"),
    );
    assert!(first <= last, "{first} <= {last}");
    let dead_task = letter.task.as_ref().expect("a decodable task");
    assert_eq!(dead_task.id(), task.id());
    assert_eq!(dead_task.trace(), task.trace(), "trace context kept");
    // No fifth run can happen on its own: nothing is scheduled, queued or pending.
    assert_eq!(scheduled_count(&redis).await, 0);
    wait_until_drained(&redis, "default").await;
    assert_eq!(recorder.total_runs(), 4);

    // Requeue: it runs again (and now succeeds); the dead letter is gone.
    assert_eq!(
        dead_letters(&redis)
            .requeue(&default_queue(), &[&letter.entry_id])
            .await
            .expect("requeue"),
        1
    );
    wait_for_runs(&recorder, 5, false).await;
    wait_until_drained(&redis, "default").await;
    assert_eq!(
        dead_letters(&redis)
            .count(&default_queue())
            .await
            .expect("count"),
        0
    );
    worker.stop().await;
}

/// A handler that sleeps far past its timeout, or panics (in its future, or before it returns
/// one), depending on the payload.
struct Misbehaving;

impl Handler<Noop> for Misbehaving {
    fn handle(
        &self,
        noop: Noop,
        _task: TaskContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + '_ {
        assert_ne!(noop.n, 4, "handler bug before its future");
        async move {
            match noop.n {
                0 => tokio::time::sleep(Duration::from_secs(30)).await,
                1 => panic!("handler bug"),
                2 => return Err(HandlerError::skip_retry("bad input, do not retry")),
                _ => {}
            }
            Ok(())
        }
    }
}

#[tokio::test]
async fn timeouts_and_panics_are_failed_attempts_and_skip_retry_dies_at_once() {
    let redis = TestRedis::new();
    let worker = RunningWorker::start(
        &redis,
        settings("misbehaving"),
        Handlers::new().on::<Noop>(Misbehaving),
    );
    let publisher = publisher(&redis);
    let slow = noop(0)
        .with_max_retry(1)
        .with_timeout(Duration::from_millis(100))
        .expect("timeout");
    let panicking = noop(1).with_max_retry(1);
    let refused = noop(2).with_max_retry(5);
    let panicking_early = noop(4).with_max_retry(1);
    for task in [&slow, &panicking, &refused, &panicking_early] {
        publisher.publish(task).await.expect("publish");
    }
    wait_for_dead(&redis, 4).await;

    let dead = dead_letters(&redis)
        .list(&default_queue(), 10)
        .await
        .expect("list");
    let find = |id: &str| {
        dead.iter()
            .find(|d| d.task.as_ref().is_some_and(|t| t.id() == id))
            .expect("dead letter")
    };
    assert!(
        find(slow.id()).error.starts_with("timed out after 100"),
        "{:?}",
        find(slow.id())
    );
    assert_eq!(find(slow.id()).attempts, 2);
    assert_eq!(find(panicking.id()).error, "handler panicked");
    assert_eq!(find(panicking.id()).attempts, 2);
    assert_eq!(find(refused.id()).error, "bad input, do not retry");
    assert_eq!(find(refused.id()).attempts, 1);
    assert_eq!(find(panicking_early.id()).error, "handler panicked");
    assert_eq!(find(panicking_early.id()).attempts, 2);

    // Still alive: a good task is processed.
    let good = noop(3);
    publisher.publish(&good).await.expect("publish");
    wait_until_drained(&redis, "default").await;
    assert_eq!(
        dead_letters(&redis)
            .count(&default_queue())
            .await
            .expect("count"),
        4
    );
    worker.stop().await;
}

#[tokio::test]
async fn not_a_failure_is_retried_without_using_up_attempts() {
    let redis = TestRedis::new();
    struct Busy(Recorder);
    impl Handler<Noop> for Busy {
        async fn handle(&self, noop: Noop, task: TaskContext) -> Result<(), HandlerError> {
            let _ = Handler::<Noop>::handle(&self.0, noop, task).await;
            if self.0.total_runs() <= 3 {
                return Err(HandlerError::not_a_failure("rate limited, try later"));
            }
            Ok(())
        }
    }
    let recorder = Recorder::new();
    let worker = RunningWorker::start(
        &redis,
        settings("busy"),
        Handlers::new().on::<Noop>(Busy(recorder.clone())),
    );
    // max_retry 0: one counted failure would kill it.
    publisher(&redis)
        .publish(&noop(1).with_max_retry(0))
        .await
        .expect("publish");
    wait_for_runs(&recorder, 4, false).await;
    wait_until_drained(&redis, "default").await;
    assert_eq!(scheduled_count(&redis).await, 0);
    assert_eq!(
        dead_letters(&redis)
            .count(&default_queue())
            .await
            .expect("count"),
        0
    );
    worker.stop().await;
}

/// An entry written by hand with a type of a megabyte: dead-lettered with a reason that quotes
/// the type's start and its length, not all of it (it was quoted whole, and logged twice over).
#[tokio::test]
async fn a_task_type_of_a_megabyte_is_quoted_in_part() {
    let redis = TestRedis::new();
    let worker = RunningWorker::start(
        &redis,
        settings("quoter"),
        Handlers::new().on::<Noop>(Recorder::new()),
    );
    let stream = redis.keys().stream(&default_queue());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        .to_string();
    let kind = format!("task:{}", "\u{202e}x".repeat(256 * 1024));
    let mut conn = redis.conn().await;
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(&[
            ("id", "huge-type"),
            ("type", kind.as_str()),
            ("payload", "{}"),
            ("attempt", "1"),
            ("max_retry", "3"),
            ("timeout_ms", "1000"),
            ("enqueued_at", now.as_str()),
        ])
        .query_async(&mut conn)
        .await
        .expect("XADD");
    wait_for_dead(&redis, 1).await;
    worker.stop().await;
    let dead = dead_letters(&redis)
        .list(&default_queue(), 10)
        .await
        .expect("list");
    let error = &dead[0].error;
    // 256 bytes of the type at most, escaped (a bidi control is 8 characters quoted).
    assert!(error.len() < 2_000, "{} bytes", error.len());
    assert!(
        error.starts_with("no handler for task type \"task:")
            && error.ends_with("(1048581 bytes)\""),
        "{error:?}"
    );
    assert_eq!(dead[0].task.as_ref().map(Task::kind), Some(kind.as_str()));
}

#[tokio::test]
async fn poison_entries_and_unknown_types_are_dead_lettered_at_once() {
    let redis = TestRedis::new();
    let recorder = Recorder::new();
    let worker = RunningWorker::start(
        &redis,
        settings("sorter"),
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    let stream = redis
        .keys()
        .stream(&QueueName::parse("default").expect("queue"));
    let mut conn = redis.conn().await;
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("garbage")
        .arg("\u{1f4a9}")
        .arg("id")
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("XADD poison");
    /// A type no handler is registered for.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Orphan {
        n: u32,
    }
    impl TaskPayload for Orphan {
        const TYPE: &'static str = "task:nobody_handles_this";
    }
    let unknown = Task::new(&Orphan { n: 1 }).expect("task");
    let publisher = publisher(&redis);
    publisher
        .publish(&unknown)
        .await
        .expect("enqueue an unknown type is allowed");
    for n in 0..5 {
        publisher.publish(&noop(n)).await.expect("publish");
    }

    wait_for_dead(&redis, 2).await;
    wait_for_runs(&recorder, 5, true).await;
    wait_until_drained(&redis, "default").await;
    let dead = dead_letters(&redis)
        .list(&default_queue(), 10)
        .await
        .expect("list");
    let poison = dead
        .iter()
        .find(|d| d.task.is_none())
        .expect("poison letter");
    assert!(
        poison.error.contains("undecodable entry"),
        "{}",
        poison.error
    );
    assert!(
        poison
            .raw
            .as_deref()
            .is_some_and(|raw| raw.contains("garbage"))
    );
    assert_eq!(poison.attempts, 0);
    let orphan = dead
        .iter()
        .find(|d| d.task.is_some())
        .expect("unknown-type letter");
    assert_eq!(
        orphan.error,
        r#"no handler for task type "task:nobody_handles_this""#
    );
    assert_eq!(
        orphan.attempts, 1,
        "a delivery no handler runs is a failed attempt"
    );
    assert!(matches!(
        dead_letters(&redis)
            .requeue_one(&default_queue(), &poison.entry_id)
            .await,
        Err(simplebank_queue::DeadError::Poison(_))
    ));
    assert_eq!(recorder.total_runs(), 5, "nothing else disturbed");
    worker.stop().await;
}

/// A payload that does not decode as its registered type (a producer of another version, say)
/// cannot succeed on a retry: it is decoded once, before the handler, and dead-lettered at
/// once with a reason that names no value of it; the handler never runs.
#[tokio::test]
async fn a_payload_that_does_not_decode_as_its_type_is_dead_lettered_without_a_run() {
    let redis = TestRedis::new();
    let recorder = Recorder::new();
    let worker = RunningWorker::start(
        &redis,
        settings("decoder"),
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    /// Same wire name as `Noop`, another shape.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct OldNoop {
        count: String,
    }
    impl TaskPayload for OldNoop {
        const TYPE: &'static str = Noop::TYPE;
    }
    let task = Task::new(&OldNoop { count: "x".into() })
        .expect("task")
        .with_max_retry(5);
    publisher(&redis).publish(&task).await.expect("publish");
    publisher(&redis).publish(&noop(1)).await.expect("publish");
    // A value of the wrong type: serde's own message would quote it.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Quoted {
        n: String,
    }
    impl TaskPayload for Quoted {
        const TYPE: &'static str = Noop::TYPE;
        const SENSITIVE: bool = true;
    }
    let secret = Task::new(&Quoted {
        n: "SECRET-TOKEN-123".into(),
    })
    .expect("task");
    publisher(&redis).publish(&secret).await.expect("publish");

    wait_for_dead(&redis, 2).await;
    wait_for_runs(&recorder, 1, false).await;
    wait_until_drained(&redis, "default").await;
    let dead = dead_letters(&redis)
        .list(&default_queue(), 10)
        .await
        .expect("list");
    assert_eq!(dead.len(), 2);
    let (missing, quoted) = match dead[0].task.as_ref().map(Task::id) == Some(secret.id()) {
        true => (&dead[1], &dead[0]),
        false => (&dead[0], &dead[1]),
    };
    assert!(
        missing
            .error
            .starts_with("the payload does not decode as test:noop: missing field `n`"),
        "{}",
        missing.error
    );
    assert_eq!(missing.attempts, 1);
    // Sensitive: neither the value nor where it ends.
    assert!(!quoted.error.contains("SECRET"), "{}", quoted.error);
    assert_eq!(
        quoted.error,
        "the payload does not decode as test:noop: a value or field its type does not accept"
    );
    assert_eq!(scheduled_count(&redis).await, 0, "not retried");
    assert_eq!(recorder.total_runs(), 1, "only the good task ran");
    worker.stop().await;
}

/// The dead letter and each retry's `last_error` carry the whole cause chain of a handler's
/// error, each cause once: "outer: inner", not just "outer".
#[tokio::test]
async fn errors_reach_last_error_and_the_dead_letters_with_their_causes() {
    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;
    #[derive(Debug, thiserror::Error)]
    #[error("database unavailable")]
    struct Unavailable(#[source] Refused);

    let redis = TestRedis::new();
    let worker = RunningWorker::start(
        &redis,
        settings("causes"),
        Handlers::new()
            .on(|_: Noop, _: TaskContext| async { Err(HandlerError::new(Unavailable(Refused))) }),
    );
    let task = noop(1).with_max_retry(1);
    publisher(&redis).publish(&task).await.expect("publish");
    wait_for_dead(&redis, 1).await;
    let dead = dead_letters(&redis)
        .list(&default_queue(), 10)
        .await
        .expect("list");
    assert_eq!(dead[0].error, "database unavailable: connection refused");
    assert_eq!(dead[0].attempts, 2);
    // The dead letter keeps the fields of the last attempt's entry: its last_error was
    // written by the retry before it.
    let raw: Vec<(String, String)> = {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(redis.keys().dead(&default_queue()))
            .arg("-")
            .arg("+")
            .query_async(&mut redis.conn().await)
            .await
            .expect("XRANGE");
        reply.ids[0]
            .map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), redis::from_redis_value_ref(v).ok()?)))
            .collect()
    };
    assert!(
        raw.iter()
            .any(|(k, v)| k == "last_error" && v == "database unavailable: connection refused"),
        "{raw:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_entry_delivered_more_than_max_retry_plus_one_times_is_dead_lettered() {
    let redis = TestRedis::new();
    let recorder = Recorder::new();
    let queue = QueueName::parse("default").expect("queue");
    let stream = redis.keys().stream(&queue);
    ensure_group(&redis, &queue).await;
    let task = noop(1).with_max_retry(2);
    publisher(&redis).publish(&task).await.expect("publish");

    // A consumer that crashed on it again and again: delivered, then "claimed" 4 more times.
    let mut conn = redis.conn().await;
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("crasher")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("read");
    let entry_id = reply.keys[0].ids[0].id.clone();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&stream)
        .arg(GROUP)
        .arg("crasher")
        .arg(0)
        .arg(&entry_id)
        .arg("RETRYCOUNT")
        .arg(3)
        .arg("JUSTID")
        .query_async(&mut conn)
        .await
        .expect("set the delivery count");

    let mut survivor = settings("survivor");
    survivor.visibility_timeout = Duration::from_millis(300);
    let worker = RunningWorker::start(
        &redis,
        survivor,
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    wait_for_dead(&redis, 1).await;
    let dead = dead_letters(&redis)
        .list(&default_queue(), 10)
        .await
        .expect("list");
    assert!(
        dead[0].error.starts_with("delivered 4 times"),
        "{}",
        dead[0].error
    );
    assert_eq!(recorder.total_runs(), 0, "not run a fifth time");
    wait_until_drained(&redis, "default").await;
    worker.stop().await;
}

/// An entry written by hand with the largest attempt number and as many retries allowed is
/// retried at that attempt number when it fails: counting the attempt up neither overflows
/// (a panic in a debug build, 0 in a release one) nor loses the entry.
#[tokio::test]
async fn a_failure_at_the_largest_attempt_number_is_retried_at_it() {
    let redis = TestRedis::new();
    let recorder = Recorder::new().with_behaviour(Arc::new(|_| Err("boom")));
    let queue = default_queue();
    let stream = redis.keys().stream(&queue);
    let mut conn = redis.conn().await;
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("id")
        .arg("largest-attempt")
        .arg("type")
        .arg("test:noop")
        .arg("payload")
        .arg(r#"{"n":1}"#)
        .arg("attempt")
        .arg(u32::MAX)
        .arg("max_retry")
        .arg(u32::MAX)
        .arg("timeout_ms")
        .arg(5000)
        .arg("enqueued_at")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("XADD");
    let worker = RunningWorker::start(
        &redis,
        settings("largest"),
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    wait_for_runs(&recorder, 1, true).await;
    let retry = redis.keys().retry(&queue);
    eventually("the retry scheduled", Duration::from_secs(20), || {
        let (mut conn, retry) = (conn.clone(), retry.clone());
        async move {
            let members: Vec<String> = redis::cmd("ZRANGE")
                .arg(&retry)
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            members.len() == 1 && members[0].contains(r#""attempt","4294967295""#)
        }
    })
    .await;
    worker.stop().await;
}
