//! Entries no publisher of ours writes, put on a stream by hand: a field name that is not
//! UTF-8 is a field no task has. It must not fail the read (or the reclaim) of the entries
//! around it: each is run or dead-lettered on its own (found by an outside attack: one such
//! entry held up every entry read with it until the visibility timeout, and was never
//! dead-lettered).

use std::time::Duration;

use simplebank_queue::{
    DeadLetters, QueueName, Task,
    testing::{TestRedis, eventually},
};

use crate::helpers::{Job, Mode, Running, handlers, manager, publisher, settings};

/// XADD of `fields` (raw bytes) onto `queue`'s stream.
async fn add_raw(redis: &TestRedis, queue: &QueueName, fields: &[(&[u8], &[u8])]) {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(redis.keys().stream(queue)).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    let _: String = cmd.query_async(&mut redis.conn().await).await.unwrap();
}

/// An entry that is a good `test:job` plus a field whose name is not UTF-8, and one whose only
/// payload field has such a name (so it is no task).
async fn add_odd_entries(redis: &TestRedis, queue: &QueueName) {
    let payload = serde_json::to_vec(&Job {
        n: 7,
        mode: Mode::Succeed,
    })
    .unwrap();
    let common: [(&[u8], &[u8]); 5] = [
        (b"type", b"test:job"),
        (b"attempt", b"1"),
        (b"max_retry", b"3"),
        (b"timeout_ms", b"30000"),
        (b"enqueued_at", b"1"),
    ];
    let mut runs = vec![(&b"id"[..], &b"odd-but-whole"[..]), (b"payload", &payload)];
    runs.extend(common);
    runs.push((b"x\xff\xfe", b"1"));
    add_raw(redis, queue, &runs).await;
    let mut dies = vec![(&b"id"[..], &b"no-payload"[..]), (b"pay\xffload", &payload)];
    dies.extend(common);
    add_raw(redis, queue, &dies).await;
}

/// Processed (the queue's counter), dead letters, entries left on the stream.
async fn outcome(redis: &TestRedis, queue: &QueueName) -> (u64, usize, u64) {
    let mut conn = redis.conn().await;
    let processed: Option<u64> = redis::cmd("HGET")
        .arg(redis.keys().stats(queue))
        .arg("processed")
        .query_async(&mut conn)
        .await
        .unwrap();
    let dead = DeadLetters::new(manager(redis), redis.keys())
        .count(queue)
        .await
        .unwrap();
    let left: u64 = redis::cmd("XLEN")
        .arg(redis.keys().stream(queue))
        .query_async(&mut conn)
        .await
        .unwrap();
    (processed.unwrap_or(0), dead, left)
}

/// Runs a worker with `worker_settings` until every entry of `queue` is settled (one dead
/// letter, nothing left on the stream); then at least `ran` counted as processed.
async fn run_until_settled(
    redis: &TestRedis,
    queue: &QueueName,
    worker_settings: simplebank_queue::ConsumerSettings,
    ran: u64,
) {
    let worker = Running::start(redis, worker_settings, handlers());
    eventually(
        "every entry settled: one dead letter, nothing left",
        Duration::from_secs(20),
        || async {
            let (_, dead, left) = outcome(redis, queue).await;
            (dead, left) == (1, 0)
        },
    )
    .await;
    worker.stop().await;
    assert!(
        outcome(redis, queue).await.0 >= ran,
        "every other entry ran"
    );
}

fn good_jobs(queue: &QueueName) -> Vec<Task> {
    (0..3)
        .map(|n| crate::helpers::job(queue, n, Mode::Succeed))
        .collect()
}

#[tokio::test]
async fn a_field_name_that_is_not_utf8_fails_only_its_own_entry() {
    let redis = TestRedis::new();
    let queue = QueueName::parse("default").unwrap();
    let publisher = publisher(&redis);
    publisher.publish_batch(&good_jobs(&queue)).await.unwrap();
    add_odd_entries(&redis, &queue).await;
    publisher.publish_batch(&good_jobs(&queue)).await.unwrap();
    // A visibility timeout far beyond the test: a read that failed would hold them all.
    let mut worker_settings = settings("reader", &[(&queue, 1)]);
    worker_settings.visibility_timeout = Duration::from_secs(3600);
    run_until_settled(&redis, &queue, worker_settings, 7).await;
    let letter = &DeadLetters::new(manager(&redis), redis.keys())
        .list(&queue, 10)
        .await
        .unwrap()[0];
    assert!(
        letter.error.contains("payload"),
        "the reason names the missing field: {}",
        letter.error
    );
}

#[tokio::test]
async fn the_reclaimer_takes_over_entries_with_such_a_field_name() {
    let redis = TestRedis::new();
    let queue = QueueName::parse("default").unwrap();
    add_odd_entries(&redis, &queue).await;
    publisher(&redis)
        .publish_batch(&good_jobs(&queue))
        .await
        .unwrap();
    // A consumer that read them all and vanished.
    let stream = redis.keys().stream(&queue);
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(simplebank_queue::GROUP)
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(simplebank_queue::GROUP)
        .arg("vanished")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut worker_settings = settings("heir", &[(&queue, 1)]);
    worker_settings.visibility_timeout = Duration::from_millis(300);
    run_until_settled(&redis, &queue, worker_settings, 4).await;
}

/// Members of the scheduled and retry sets that no publisher of ours writes (not JSON, an
/// odd number of fields, a field that is no string) are dead-lettered with their text, and the
/// tasks around them are promoted and run (found by an outside attack: one such member failed
/// every PROMOTE call of its queue, so none of its delayed tasks or retries ran again).
#[tokio::test]
async fn a_set_member_that_is_no_task_is_dead_lettered_and_the_rest_promoted() {
    let redis = TestRedis::new();
    let queue = QueueName::parse("default").unwrap();
    let mut conn = redis.conn().await;
    for (set, member) in [
        (redis.keys().scheduled(&queue), "notjson"),
        (
            redis.keys().scheduled(&queue),
            r#"{"fields":["id","x","type"]}"#,
        ),
        (redis.keys().retry(&queue), r#"{"fields":[["nested"],"x"]}"#),
    ] {
        let _: i64 = redis::cmd("ZADD")
            .arg(set)
            .arg(0)
            .arg(member)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let delayed: Vec<Task> = good_jobs(&queue)
        .into_iter()
        .map(|task| task.with_process_in(Duration::from_millis(300)))
        .collect();
    publisher(&redis).publish_batch(&delayed).await.unwrap();
    let worker = Running::start(&redis, settings("promoter", &[(&queue, 1)]), handlers());
    eventually(
        "the delayed tasks ran and the odd members are dead letters",
        Duration::from_secs(20),
        || async {
            let (processed, dead, left) = outcome(&redis, &queue).await;
            (processed, dead, left) == (3, 3, 0)
        },
    )
    .await;
    worker.stop().await;
    let letters = DeadLetters::new(manager(&redis), redis.keys())
        .list(&queue, 10)
        .await
        .unwrap();
    assert!(letters.iter().all(|letter| letter.task.is_none()));
    assert!(
        letters
            .iter()
            .any(|letter| letter.raw.as_deref() == Some(r#"{"member":"notjson"}"#)),
        "{letters:?}"
    );
    for set in [redis.keys().scheduled(&queue), redis.keys().retry(&queue)] {
        let left: u64 = redis::cmd("ZCARD")
            .arg(set)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }
}
