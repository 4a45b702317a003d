//! `queue_stats` and `known_queues`: the counts of each state of a queue, the age of its oldest
//! pending task, the registry.

use std::time::Duration;

use simplebank_queue::{
    DeadLetters, GROUP, QueueName, known_queues, queue_stats,
    testing::{TestRedis, eventually},
};

use crate::helpers::{Mode, Running, handlers, job, manager, publisher, settings};

/// A known mix: 1 retrying and 1 dead (left by a worker), then 2 entries added with ids 10
/// and 9 minutes old, the first delivered (active), 3 fresh ones pending, 2 delayed.
#[tokio::test]
async fn counts_each_state_and_the_age_of_the_oldest_pending_task() {
    let redis = TestRedis::new();
    let keys = redis.keys();
    let queue = QueueName::parse("mix").unwrap();
    let mut conn = manager(&redis);
    let publisher = publisher(&redis);

    let worker = Running::start(&redis, settings("mixer", &[(&queue, 4)]), handlers());
    publisher
        .publish(&job(&queue, 1, Mode::Fail))
        .await
        .unwrap();
    publisher
        .publish(&job(&queue, 2, Mode::Refuse))
        .await
        .unwrap();
    publisher
        .publish(&job(&queue, 3, Mode::Succeed))
        .await
        .unwrap();
    eventually(
        "one retrying, one dead, none left",
        Duration::from_secs(10),
        || {
            let mut conn = conn.clone();
            let (keys, queue) = (keys.clone(), queue.clone());
            async move {
                let s = queue_stats(&mut conn, &keys, &queue).await.unwrap();
                (s.retry, s.dead, s.pending, s.active) == (1, 1, 0, 0)
            }
        },
    )
    .await;
    worker.stop().await;

    // Two entries with explicit old ids (as if enqueued 10 and 9 minutes ago).
    let stream = keys.stream(&queue);
    let mut raw = redis.conn().await;
    let now_ms: u64 = {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut raw).await.unwrap();
        secs * 1000 + micros / 1000
    };
    // The stream has held entries of now: ids from the past need a fresh stream and group.
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut raw)
        .await
        .unwrap();
    for minutes in [10, 9] {
        let id = format!("{}-0", now_ms - minutes * 60_000);
        let entry = job(&queue, 100 + u32::try_from(minutes).unwrap(), Mode::Succeed);
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg(&id)
            .arg("id")
            .arg(entry.id())
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let read = |count: usize| {
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("holder")
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .clone()
    };
    let _: redis::Value = read(1).query_async(&mut raw).await.unwrap();
    for n in 0..3 {
        publisher
            .publish(&job(&queue, 10 + n, Mode::Succeed))
            .await
            .unwrap();
    }
    for n in 0..2 {
        publisher
            .publish(&job(&queue, 20 + n, Mode::Succeed).with_process_in(Duration::from_secs(3600)))
            .await
            .unwrap();
    }

    let stats = queue_stats(&mut conn, &keys, &queue).await.unwrap();
    assert_eq!(stats.queue, queue);
    assert_eq!(stats.weight, Some(4), "registered by the worker");
    assert!(!stats.paused);
    assert_eq!(
        (
            stats.pending,
            stats.active,
            stats.scheduled,
            stats.retry,
            stats.dead
        ),
        (4, 1, 2, 1, 1)
    );
    let age = stats.oldest_pending_age.expect("something is pending");
    // The 9-minute-old entry, not the 10-minute-old one (delivered: active, not pending).
    assert!(
        age >= Duration::from_secs(9 * 60) && age < Duration::from_secs(10 * 60),
        "{age:?}"
    );

    // Deliver the 9-minute-old entry and settle it (XACK + XDEL, as FINISH does when an older
    // entry is still pending): the group's last delivered entry is now deleted, where Redis
    // reports no lag. The counts hold.
    let reply: redis::streams::StreamReadReply = read(1).query_async(&mut raw).await.unwrap();
    let id = reply.keys[0].ids[0].id.clone();
    let _: () = redis::pipe()
        .cmd("XACK")
        .arg(&stream)
        .arg(GROUP)
        .arg(&id)
        .ignore()
        .cmd("XDEL")
        .arg(&stream)
        .arg(&id)
        .ignore()
        .query_async(&mut raw)
        .await
        .unwrap();
    let stats = queue_stats(&mut conn, &keys, &queue).await.unwrap();
    assert_eq!((stats.pending, stats.active), (3, 1));
    let age = stats.oldest_pending_age.expect("fresh ones pending");
    assert!(age < Duration::from_secs(9 * 60), "{age:?}");

    // The dead letter is there to be read, in its queue.
    let dead = DeadLetters::new(manager(&redis), keys.clone());
    assert_eq!(dead.count(&queue).await.unwrap(), 1);

    assert_eq!(
        known_queues(&mut conn, &keys).await.unwrap(),
        vec![(queue.clone(), Some(4))]
    );
}

/// A queue nobody used reads as zeros, unregistered, unpaused, with nothing pending.
#[tokio::test]
async fn an_unused_queue_reads_as_empty() {
    let redis = TestRedis::new();
    let keys = redis.keys();
    let queue = QueueName::parse("nothing-here").unwrap();
    let stats = queue_stats(&mut manager(&redis), &keys, &queue)
        .await
        .unwrap();
    assert_eq!(
        (
            stats.weight,
            stats.paused,
            stats.pending,
            stats.active,
            stats.dead
        ),
        (None, false, 0, 0, 0)
    );
    assert_eq!(stats.oldest_pending_age, None);
    assert!(
        known_queues(&mut manager(&redis), &keys)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A task whose type no worker handles is dead-lettered as a failed attempt: it counts in
/// `processed` and `failed` as a refused task does, so `dead` and `failed` agree, and its dead
/// letter says it was attempted once.
#[tokio::test]
async fn a_task_no_handler_runs_is_a_failed_attempt() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Orphan {
        n: u32,
    }
    impl simplebank_queue::TaskPayload for Orphan {
        const TYPE: &'static str = "test:nobody_handles_this";
    }
    let redis = TestRedis::new();
    let keys = redis.keys();
    let queue = QueueName::parse("orphans").unwrap();
    let conn = manager(&redis);
    let publisher = publisher(&redis);
    let worker = Running::start(&redis, settings("adopter", &[(&queue, 1)]), handlers());
    let orphan = simplebank_queue::Task::new(&Orphan { n: 1 })
        .unwrap()
        .with_queue(queue.clone());
    publisher.publish(&orphan).await.unwrap();
    publisher
        .publish(&job(&queue, 2, Mode::Refuse))
        .await
        .unwrap();
    eventually("both dead", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        let (keys, queue) = (keys.clone(), queue.clone());
        async move {
            let s = queue_stats(&mut conn, &keys, &queue).await.unwrap();
            (s.dead, s.pending, s.active) == (2, 0, 0)
        }
    })
    .await;
    worker.stop().await;
    let stats = queue_stats(&mut manager(&redis), &keys, &queue)
        .await
        .unwrap();
    assert_eq!((stats.processed, stats.failed), (2, 2), "{stats:?}");
    let dead = DeadLetters::new(manager(&redis), keys.clone());
    let letters = dead.list(&queue, 10).await.unwrap();
    let letter = letters
        .iter()
        .find(|d| d.task.as_ref().is_some_and(|t| t.id() == orphan.id()))
        .expect("the orphan's dead letter");
    assert_eq!(
        letter.error,
        r#"no handler for task type "test:nobody_handles_this""#
    );
    assert_eq!(letter.attempts, 1);
    assert!(letter.first_failed_at.is_some() && letter.last_failed_at.is_some());
}
