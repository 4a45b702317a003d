//! The per-queue layout on a Redis that enforces it: a private single-node Redis Cluster, where
//! a script (or any multi-key command) whose keys are in two slots fails with CROSSSLOT. Every
//! path a task can take runs there; then every key of the namespace has its queue's hash tag
//! (or the namespace's, for the registry).

use std::time::Duration;

use simplebank_queue::{
    Backoff, DeadLetters, QueueName, known_queues, queue_stats,
    testing::{RedisServer, TestRedis, eventually},
};

use crate::helpers::{Mode, Running, handlers, job, manager, namespace_keys, publisher, settings};

/// A private redis-server in cluster mode that owns every slot.
async fn cluster_node() -> RedisServer {
    let server = RedisServer::start_with(&["--cluster-enabled", "yes"]).await;
    let client = simplebank_queue::connection::client(&server.address()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually("the cluster is ok", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            info.contains("cluster_state:ok")
        }
    })
    .await;
    server
}

#[tokio::test]
async fn every_path_of_a_task_stays_in_its_queues_slot() {
    let server = cluster_node().await;
    let redis = TestRedis::at(server.address());
    let keys = redis.keys();
    let queue = QueueName::parse("sharded").unwrap();
    let mut conn = manager(&redis);
    let dead = DeadLetters::new(conn.clone(), keys.clone());

    let mut worker_settings = settings("slot-1", &[(&queue, 2)]);
    worker_settings.backoff = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(20),
    };
    let worker = Running::start(&redis, worker_settings, handlers());
    let publisher = publisher(&redis);
    let tasks = [
        job(&queue, 1, Mode::Succeed),
        job(&queue, 2, Mode::Succeed)
            .with_task_id("only-once")
            .unwrap(),
        job(&queue, 3, Mode::Succeed)
            .with_unique(Duration::from_secs(60))
            .unwrap(),
        job(&queue, 4, Mode::Succeed).with_process_in(Duration::from_millis(100)),
        job(&queue, 5, Mode::Fail).with_max_retry(1),
        job(&queue, 6, Mode::Refuse),
    ];
    for task in &tasks {
        publisher.publish(task).await.unwrap();
    }
    publisher
        .publish_batch(&[job(&queue, 7, Mode::Succeed), job(&queue, 8, Mode::Succeed)])
        .await
        .unwrap();
    let settled = |expected_dead: u64| {
        let (keys, queue, conn) = (keys.clone(), queue.clone(), conn.clone());
        move || {
            let (keys, queue, mut conn) = (keys.clone(), queue.clone(), conn.clone());
            async move {
                let Ok(s) = queue_stats(&mut conn, &keys, &queue).await else {
                    return false;
                };
                (s.pending, s.active, s.scheduled, s.retry, s.dead) == (0, 0, 0, 0, expected_dead)
            }
        }
    };
    eventually("all settled: 2 dead", Duration::from_secs(20), settled(2)).await;
    // Requeued, they fail (once more each) and die again.
    assert_eq!(dead.requeue_all(&queue).await.unwrap(), 2);
    eventually("dead again", Duration::from_secs(20), settled(2)).await;
    worker.stop().await;
    assert_eq!(
        known_queues(&mut conn, &keys).await.unwrap(),
        vec![(queue.clone(), Some(2))]
    );

    let tag = format!("{{{}:{}}}:", keys.namespace().as_str(), queue.as_str());
    let mut raw = redis.conn().await;
    for key in namespace_keys(&mut raw, &keys).await {
        assert!(
            key.starts_with(&tag) || key == keys.queues(),
            "{key} is neither a key of the queue ({tag}...) nor the registry"
        );
    }
    assert_eq!(dead.delete_all(&queue).await.unwrap(), 2);
}
