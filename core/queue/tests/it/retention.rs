//! Dead letters are bounded: at most `dead_letter_max` per queue (the oldest trimmed first, by
//! the kill that goes past it) and none older than `dead_letter_retention` (trimmed by kills
//! and by the promoter, which also trims queues that no longer kill). Every trim is logged with
//! its queue, count and reason. Task streams are never trimmed.

use std::time::Duration;

use simplebank_queue::{
    DeadLetters, QueueName, queue_stats,
    testing::{TestRedis, eventually},
};

use crate::helpers::{Logs, Mode, Running, job, manager, publisher, settings};

/// Adds a fake dead letter to `queue` that died `age` ago (an explicit entry id).
async fn old_letter(redis: &TestRedis, queue: &QueueName, age: Duration) -> String {
    let mut conn = redis.conn().await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    let id = format!("{}-0", now_ms - u64::try_from(age.as_millis()).unwrap());
    redis::cmd("XADD")
        .arg(redis.keys().dead(queue))
        .arg(&id)
        .arg("queue")
        .arg(queue.as_str())
        .arg("error")
        .arg("from long ago")
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The sum of `count=` of the trim lines of `queue` for `reason`.
fn trimmed(logs: &Logs, queue: &QueueName, reason: &str) -> u64 {
    logs.lines_with(&["dead letters trimmed", &format!("queue={queue} "), reason])
        .iter()
        .filter_map(|line| {
            let count = line.split("count=").nth(1)?;
            count.split(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

#[tokio::test]
async fn dead_letters_are_bounded_by_count_and_age_and_each_trim_is_logged() {
    let logs = Logs::capture();
    let redis = TestRedis::new();
    let keys = redis.keys();
    let mut conn = manager(&redis);
    let (killing, quiet) = (
        QueueName::parse("bounded").unwrap(),
        QueueName::parse("quiet").unwrap(),
    );
    let ancient = old_letter(&redis, &killing, Duration::from_secs(2 * 86_400)).await;
    old_letter(&redis, &quiet, Duration::from_secs(2 * 86_400)).await;
    let recent = old_letter(&redis, &quiet, Duration::from_secs(3600)).await;

    let mut bounded = settings("trimmer", &[(&killing, 1), (&quiet, 1)]);
    bounded.dead_letter_max = 5;
    bounded.dead_letter_retention = Duration::from_secs(86_400);
    let worker = Running::start(&redis, bounded, crate::helpers::handlers());
    let tasks: Vec<_> = (0..12).map(|n| job(&killing, n, Mode::Refuse)).collect();
    publisher(&redis).publish_batch(&tasks).await.unwrap();
    eventually("12 tasks dead", Duration::from_secs(20), || {
        let (mut conn, keys, killing) = (conn.clone(), keys.clone(), killing.clone());
        async move {
            queue_stats(&mut conn, &keys, &killing)
                .await
                .unwrap()
                .failed
                == 12
        }
    })
    .await;
    // The promoter trims every queue as it starts: the quiet queue loses its old letter.
    eventually("the quiet queue trimmed", Duration::from_secs(20), || {
        let logs = logs.clone();
        let quiet = quiet.clone();
        async move { trimmed(&logs, &quiet, "DEAD_LETTER_RETENTION") == 1 }
    })
    .await;
    worker.stop().await;

    let dead = DeadLetters::new(conn.clone(), keys.clone());
    let kept = dead.list(&killing, 100).await.unwrap();
    assert_eq!(kept.len(), 5, "at most DEAD_LETTER_MAX");
    assert!(
        kept.iter()
            .all(|l| l.entry_id != ancient && l.task.is_some())
    );
    assert_eq!(
        trimmed(&logs, &killing, "DEAD_LETTER_MAX"),
        12 - 5,
        "{}",
        logs.text()
    );
    assert_eq!(trimmed(&logs, &killing, "DEAD_LETTER_RETENTION"), 1);
    let quiet_letters = dead.list(&quiet, 100).await.unwrap();
    assert_eq!(
        quiet_letters
            .iter()
            .map(|l| l.entry_id.as_str())
            .collect::<Vec<_>>(),
        [recent.as_str()],
        "only the letter within the retention stays"
    );
    let stats = queue_stats(&mut conn, &keys, &killing).await.unwrap();
    assert_eq!((stats.processed, stats.failed, stats.dead), (12, 12, 5));
}
