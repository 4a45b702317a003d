//! Batched acknowledgement: tasks finishing together are settled by few FINISH calls, across
//! streams, each lock released only when its task still holds it.

use std::time::Duration;

use tokio::task::JoinSet;

use super::{Ack, Acker};
use crate::{
    connection,
    keys::{GROUP, QueueName},
    scripts::{Finished, FinishedLock},
    testing::{RedisServer, TestRedis},
};

const PER_STREAM: usize = 300;
const QUEUES: [&str; 2] = ["default", "critical"];

#[tokio::test]
async fn finished_entries_are_acked_in_batches_and_locks_released_only_by_their_holder() {
    // A server of the test's own: the test counts the script calls it receives.
    let server = RedisServer::start().await;
    let redis = TestRedis::at(server.address());
    let keys = redis.keys();
    let mut conn = redis.conn().await;
    let streams: Vec<String> = QUEUES
        .iter()
        .map(|q| keys.stream(&QueueName::parse(q).expect("queue")))
        .collect();

    let mut acks = Vec::new();
    for (queue, stream) in QUEUES.iter().zip(&streams) {
        let queue = QueueName::parse(queue).expect("queue");
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await
            .expect("group");
        for _ in 0..PER_STREAM {
            let _: String = redis::cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("n")
                .arg(1)
                .query_async(&mut conn)
                .await
                .expect("xadd");
        }
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("c")
            .arg("COUNT")
            .arg(PER_STREAM)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .expect("read");
        for entry in &read.keys[0].ids {
            acks.push(Ack {
                queue: queue.clone(),
                entry: Finished {
                    entry_id: entry.id.clone(),
                    lock: None,
                },
            });
        }
    }
    // Every tenth task holds a lock; every thirtieth lock has meanwhile passed to another task.
    let mut released = Vec::new();
    let mut kept = Vec::new();
    let mut marked = Vec::new();
    for (i, ack) in acks.iter_mut().enumerate().filter(|(i, _)| i % 10 == 0) {
        // The lock is in the slot of its task's queue.
        let queue = QueueName::parse(QUEUES[i / PER_STREAM]).expect("queue");
        let key = keys.unique(&queue, Some(&format!("u{i}")));
        let token = format!("token-{i}");
        let holder = if i % 30 == 0 { "another" } else { &token };
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(holder)
            .query_async(&mut conn)
            .await
            .expect("set lock");
        if i % 30 == 0 {
            kept.push(key.clone());
        } else {
            released.push(key.clone());
        }
        // Every twentieth task has an id: it leaves a done marker, even where its lock passed on.
        let done = (i % 20 == 0).then(|| keys.done(&queue, &format!("u{i}")));
        if let Some(done) = &done {
            marked.push((done.clone(), token.clone()));
        }
        ack.entry.lock = Some(FinishedLock { key, token, done });
    }
    let calls_before = finish_calls(&mut conn).await;

    let manager = connection::lazy_manager(redis.client(), Duration::from_secs(2)).expect("mgr");
    let acker = Acker::start(manager.into(), keys.clone());
    let mut running = JoinSet::new();
    for ack in acks {
        let acker = acker.clone();
        running.spawn(async move { acker.ack(ack).await });
    }
    while let Some(result) = running.join_next().await {
        result.expect("joined").expect("acked");
    }

    for stream in &streams {
        let len: usize = redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut conn)
            .await
            .expect("XLEN");
        let pending: (usize, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(stream)
            .arg(GROUP)
            .query_async(&mut conn)
            .await
            .expect("XPENDING");
        assert_eq!(
            (len, pending.0),
            (0, 0),
            "every entry of {stream} acknowledged and deleted"
        );
    }
    for key in &released {
        let exists: bool = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("exists");
        assert!(!exists, "{key} released by its task");
    }
    for key in &kept {
        let holder: String = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("get");
        assert_eq!(holder, "another", "{key} belongs to another task now");
    }
    assert!(!marked.is_empty());
    for (key, token) in &marked {
        let (marker, ttl_ms): (Option<String>, i64) = redis::pipe()
            .cmd("GET")
            .arg(key)
            .cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .expect("marker");
        assert_eq!(marker.as_ref(), Some(token), "{key} marks its task done");
        assert!(
            ttl_ms > 0 && ttl_ms <= crate::DONE_MARKER_TTL.as_millis() as i64,
            "{key} expires ({ttl_ms} ms)"
        );
    }
    for queue in QUEUES {
        let processed: u64 = redis::cmd("HGET")
            .arg(keys.stats(&QueueName::parse(queue).expect("queue")))
            .arg("processed")
            .query_async(&mut conn)
            .await
            .expect("HGET");
        assert_eq!(
            processed, PER_STREAM as u64,
            "every ack of {queue} counted once"
        );
    }
    let calls = finish_calls(&mut conn).await - calls_before;
    assert!(
        calls < (2 * PER_STREAM / 4) as u64,
        "{} acks took {calls} script calls: not batched",
        2 * PER_STREAM
    );
}

/// Script calls (EVALSHA and EVAL) the server has run so far.
async fn finish_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("info");
    info.lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            line.split(['=', ','])
                .nth(1)
                .and_then(|calls| calls.parse::<u64>().ok())
        })
        .sum()
}
