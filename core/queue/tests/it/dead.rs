//! Dead letters per queue: each operation idempotent, returning how many it affected; two
//! concurrent requeue-alls move each letter exactly once.

use std::{collections::HashMap, time::Duration};

use simplebank_queue::{
    DeadLetters, QueueName,
    testing::{TestRedis, eventually},
};

use crate::helpers::{Mode, Running, handlers, job, manager, publisher, settings};

const LETTERS: u32 = 300;

/// `LETTERS` dead letters in `queue` and 2 in `other`, left by a worker that refuses them all.
async fn dead_letters(redis: &TestRedis, queue: &QueueName, other: &QueueName) -> DeadLetters {
    let dead = DeadLetters::new(manager(redis), redis.keys());
    let worker = Running::start(
        redis,
        settings("refuser", &[(queue, 1), (other, 1)]),
        handlers(),
    );
    let publisher = publisher(redis);
    let tasks: Vec<_> = (0..LETTERS)
        .map(|n| job(queue, n, Mode::Refuse))
        .chain((0..2).map(|n| job(other, n, Mode::Refuse)))
        .collect();
    publisher.publish_batch(&tasks).await.unwrap();
    eventually("every task dead", Duration::from_secs(30), || {
        let dead = dead.clone();
        let (queue, other) = (queue.clone(), other.clone());
        async move {
            dead.count(&queue).await.ok() == Some(LETTERS as usize)
                && dead.count(&other).await.ok() == Some(2)
        }
    })
    .await;
    worker.stop().await;
    dead
}

/// The task ids on `queue`'s stream, with how often each is there.
async fn queued_ids(redis: &TestRedis, queue: &QueueName) -> HashMap<String, usize> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(redis.keys().stream(queue))
        .arg("-")
        .arg("+")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    let mut ids = HashMap::new();
    for entry in reply.ids {
        let id: String = entry.get("id").unwrap();
        *ids.entry(id).or_default() += 1;
    }
    ids
}

#[tokio::test]
async fn requeue_all_run_twice_at_once_moves_each_letter_exactly_once() {
    let redis = TestRedis::new();
    let (queue, other) = (
        QueueName::parse("poisoned").unwrap(),
        QueueName::parse("other").unwrap(),
    );
    let dead = dead_letters(&redis, &queue, &other).await;

    let (a, b) = tokio::join!(dead.requeue_all(&queue), dead.requeue_all(&queue));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, LETTERS as usize, "{a} + {b}");
    let ids = queued_ids(&redis, &queue).await;
    assert_eq!(ids.len(), LETTERS as usize, "every task back once");
    assert!(ids.values().all(|n| *n == 1), "none twice");
    assert_eq!(dead.count(&queue).await.unwrap(), 0);
    assert_eq!(
        dead.requeue_all(&queue).await.unwrap(),
        0,
        "a rerun moves nothing"
    );
    assert_eq!(
        dead.count(&other).await.unwrap(),
        2,
        "another queue's letters stay"
    );
    assert!(queued_ids(&redis, &other).await.is_empty());
}

#[tokio::test]
async fn requeue_and_delete_by_id_and_all_affect_each_letter_once() {
    let redis = TestRedis::new();
    let (queue, other) = (
        QueueName::parse("poisoned").unwrap(),
        QueueName::parse("other").unwrap(),
    );
    let dead = dead_letters(&redis, &queue, &other).await;
    let letters = dead.list(&queue, 10).await.unwrap();
    assert!(letters.iter().all(|l| l.queue == queue && l.task.is_some()));
    let ids: Vec<&str> = letters.iter().map(|l| l.entry_id.as_str()).collect();

    assert_eq!(dead.requeue(&queue, &ids[..4]).await.unwrap(), 4);
    assert_eq!(
        dead.requeue(&queue, &ids[..4]).await.unwrap(),
        0,
        "already requeued"
    );
    assert_eq!(queued_ids(&redis, &queue).await.len(), 4);
    // Ids of another queue's letters, or made up, affect nothing. Entry ids are per stream: a
    // letter of the other queue written in the same millisecond can carry an id this queue's
    // stream also has, so only the other queue's ids this queue lacks are foreign here.
    let all: Vec<String> = dead
        .list(&queue, LETTERS as usize)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.entry_id)
        .collect();
    let foreign: Vec<String> = dead
        .list(&other, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.entry_id)
        .filter(|id| !all.contains(id) && !ids[..4].contains(&id.as_str()))
        .collect();
    let foreign: Vec<&str> = foreign.iter().map(String::as_str).collect();
    assert_eq!(dead.requeue(&queue, &foreign).await.unwrap(), 0);
    assert_eq!(
        dead.delete(&queue, &[foreign.as_slice(), &["1-1"]].concat())
            .await
            .unwrap(),
        0
    );

    assert_eq!(dead.delete(&queue, &ids[4..10]).await.unwrap(), 6);
    assert_eq!(
        dead.delete(&queue, &ids[4..10]).await.unwrap(),
        0,
        "already deleted"
    );
    assert!(dead.get(&queue, ids[4]).await.unwrap().is_none());
    let left = LETTERS as usize - 10;
    assert_eq!(dead.count(&queue).await.unwrap(), left);

    assert_eq!(dead.delete_all(&queue).await.unwrap(), left);
    assert_eq!(dead.delete_all(&queue).await.unwrap(), 0, "already empty");
    assert_eq!(
        dead.count(&other).await.unwrap(),
        2,
        "another queue's letters stay"
    );
}
