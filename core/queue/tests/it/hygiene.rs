//! Key hygiene: what a task leaves behind is deleted or expires. 10,000 tasks through success,
//! a retry and death (with locks of both kinds) leave the namespace's keys as they were after
//! the worker started, plus each queue's dead stream, bounded by `dead_letter_max`, and the
//! done marker of each task with an id, expiring within `DONE_MARKER_TTL`; the counters count
//! every attempt.

use std::{collections::BTreeSet, time::Duration};

use simplebank_queue::{
    Backoff, DONE_MARKER_TTL, QueueName, known_queues, queue_stats,
    testing::{TestRedis, eventually},
};

use crate::helpers::{Mode, Running, handlers, job, manager, namespace_keys, publisher, settings};

const TASKS: u32 = 10_000;
const DEAD_LETTER_MAX: u64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_leave_only_the_bounded_dead_letters_behind() {
    let redis = TestRedis::new();
    let keys = redis.keys();
    let mut conn = manager(&redis);
    let queues = [
        QueueName::parse("clean-a").unwrap(),
        QueueName::parse("clean-b").unwrap(),
    ];
    let mut worker_settings = settings("hygiene", &[(&queues[0], 2), (&queues[1], 1)]);
    worker_settings.concurrency = 50;
    worker_settings.backoff = Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(5),
    };
    worker_settings.dead_letter_max = DEAD_LETTER_MAX;
    let worker = Running::start(&redis, worker_settings, handlers());
    eventually("the worker registered", Duration::from_secs(10), || {
        let (mut conn, keys) = (conn.clone(), keys.clone());
        async move { known_queues(&mut conn, &keys).await.unwrap().len() == 2 }
    })
    .await;
    let mut raw = redis.conn().await;
    let baseline: BTreeSet<String> = namespace_keys(&mut raw, &keys).await.into_iter().collect();

    // n % 3: 0 succeeds, 1 fails once then succeeds, 2 fails twice and dies (max_retry 1).
    // Every 10th holds a task id lock, every 10th + 5 a content lock with a TTL.
    let mut expected = [(0u64, 0u64, 0u64); 2]; // processed, failed, died
    let tasks: Vec<_> = (0..TASKS)
        .map(|n| {
            let q = usize::try_from(n % 2).unwrap();
            let (mode, attempts, failures) = match n % 3 {
                0 => (Mode::Succeed, 1, 0),
                1 => (Mode::FailOnce, 2, 1),
                _ => (Mode::Fail, 2, 2),
            };
            expected[q].0 += attempts;
            expected[q].1 += failures;
            expected[q].2 += u64::from(failures == 2);
            let task = job(&queues[q], n, mode).with_max_retry(1);
            match n % 10 {
                0 => task.with_task_id(format!("hygiene-{n}")).unwrap(),
                5 => task.with_unique(Duration::from_secs(3600)).unwrap(),
                _ => task,
            }
        })
        .collect();
    publisher(&redis).publish_batch(&tasks).await.unwrap();

    eventually("every attempt counted", Duration::from_secs(180), || {
        let (mut conn, keys, queues) = (conn.clone(), keys.clone(), queues.clone());
        async move {
            for (queue, (processed, failed, _)) in queues.iter().zip(expected) {
                let s = queue_stats(&mut conn, &keys, queue).await.unwrap();
                if (
                    s.processed,
                    s.failed,
                    s.pending,
                    s.active,
                    s.scheduled,
                    s.retry,
                ) != (processed, failed, 0, 0, 0, 0)
                {
                    return false;
                }
            }
            true
        }
    })
    .await;
    worker.stop().await;

    let after: BTreeSet<String> = namespace_keys(&mut raw, &keys).await.into_iter().collect();
    let dead_streams: BTreeSet<String> = queues.iter().map(|q| keys.dead(q)).collect();
    // A task with an id (every 10th) leaves a marker, succeeded or dead, that expires.
    let markers: BTreeSet<String> = (0..TASKS)
        .step_by(10)
        .map(|n| {
            keys.done(
                &queues[usize::try_from(n % 2).unwrap()],
                &format!("hygiene-{n}"),
            )
        })
        .collect();
    let expected_keys: BTreeSet<String> = baseline
        .union(&dead_streams)
        .chain(&markers)
        .cloned()
        .collect();
    assert_eq!(
        after, expected_keys,
        "keys left behind besides the dead letters and the done markers"
    );
    for marker in &markers {
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(marker)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(
            ttl_ms > 0 && ttl_ms <= i64::try_from(DONE_MARKER_TTL.as_millis()).unwrap(),
            "{marker} expires (PTTL {ttl_ms} ms)"
        );
    }
    for (queue, (_, _, died)) in queues.iter().zip(expected) {
        let s = queue_stats(&mut conn, &keys, queue).await.unwrap();
        assert_eq!(
            s.dead,
            died.min(DEAD_LETTER_MAX),
            "{queue}: bounded dead letters"
        );
    }
    eprintln!(
        "measured: {} keys after the worker started, {} after {TASKS} tasks (+ {} dead streams, {} done markers)",
        baseline.len(),
        after.len(),
        dead_streams.len(),
        markers.len()
    );
}
