//! Moving a Redis of the old layout (one hash tag per namespace) into the per-queue layout:
//! keys written in the old format, detected, moved once (a rerun moves nothing), then run.

use std::time::Duration;

use simplebank_queue::{
    DeadLetters, QueueName, migrate, queue_stats,
    testing::{TestRedis, eventually},
};

use crate::helpers::{Mode, Running, handlers, job, manager, publisher, settings};

/// The fields of every entry of `stream`, as text, in no particular order.
async fn entries(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Vec<Vec<(String, String)>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .map(|entry| {
            (entry.map.iter())
                .map(|(k, v)| (k.clone(), redis::from_redis_value_ref(v).unwrap()))
                .collect()
        })
        .collect()
}

fn with(fields: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut fields: Vec<_> = fields.iter().filter(|(k, _)| k != name).cloned().collect();
    fields.push((name.to_owned(), value.to_owned()));
    fields
}

fn member(queue: &str, fields: &[(String, String)]) -> String {
    let flat: Vec<&String> = fields.iter().flat_map(|(k, v)| [k, v]).collect();
    serde_json::json!({ "queue": queue, "fields": flat }).to_string()
}

#[tokio::test]
async fn the_old_layout_is_detected_moved_once_and_then_run() {
    let redis = TestRedis::new();
    let keys = redis.keys();
    let ns = keys.namespace().as_str().to_owned();
    let old = |suffix: &str| format!("{{{ns}}}:{suffix}");
    let (default, critical) = (
        QueueName::parse("default").unwrap(),
        QueueName::parse("critical").unwrap(),
    );
    let mut conn = manager(&redis);
    let mut raw = redis.conn().await;

    // Tasks written by today's publisher, then rewritten by hand into the old layout.
    let publisher = publisher(&redis);
    for n in 1..=3 {
        publisher
            .publish(&job(&default, n, Mode::Succeed))
            .await
            .unwrap();
    }
    let unique = job(&default, 4, Mode::Succeed)
        .with_unique(Duration::from_secs(3600))
        .unwrap()
        .with_process_in(Duration::from_secs(3600));
    publisher.publish(&unique).await.unwrap();
    let plain = entries(&mut raw, &keys.stream(&default)).await;
    assert_eq!(plain.len(), 3);
    for fields in &plain {
        let _: String = redis::cmd("XADD")
            .arg(old("stream:default"))
            .arg("*")
            .arg(fields)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(old("stream:default"))
        .arg("workers")
        .arg("0")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("old-worker")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(old("stream:default"))
        .arg(">")
        .query_async(&mut raw)
        .await
        .unwrap();
    // The delayed task with its content lock, in the old suffix form (queue included).
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.scheduled(&default))
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut delayed: serde_json::Value = serde_json::from_str(&members[0]).unwrap();
    let fields = delayed["fields"].as_array_mut().unwrap();
    let at = fields.iter().position(|f| f == "unique").unwrap() + 1;
    let new_suffix = fields[at].as_str().unwrap().to_owned();
    let old_suffix = new_suffix.replacen("content:", "content:default:", 1);
    fields[at] = old_suffix.clone().into();
    let new_lock = keys.unique(&default, Some(&new_suffix));
    let token: String = redis::cmd("GET")
        .arg(&new_lock)
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(old("scheduled"))
        .arg(1)
        .arg(delayed.to_string())
        .ignore()
        // A retry of a critical task (attempt 3), due long ago.
        .cmd("ZADD")
        .arg(old("scheduled"))
        .arg(2)
        .arg(member("critical", &with(&plain[0], "attempt", "3")))
        .ignore()
        .cmd("SET")
        .arg(old(&format!("unique:{old_suffix}")))
        .arg(&token)
        .arg("PX")
        .arg(3_600_000)
        .ignore()
        .cmd("SET")
        .arg(old("unique:id:long-gone"))
        .arg("x")
        .ignore()
        .cmd("XADD")
        .arg(old("dead"))
        .arg("1000-0")
        .arg(with(&with(&plain[1], "queue", "critical"), "error", "boom"))
        .ignore()
        .cmd("XADD")
        .arg(old("dead"))
        .arg("1001-0")
        .arg(&[
            ("queue", "default"),
            ("error", "undecodable"),
            ("raw", "{}"),
        ])
        .ignore()
        .cmd("XADD")
        .arg(old("dead"))
        .arg("1002-0")
        .arg(&[("error", "of no queue")])
        .ignore()
        .cmd("DEL")
        .arg(keys.stream(&default))
        .arg(keys.scheduled(&default))
        .arg(&new_lock)
        .ignore()
        .query_async(&mut raw)
        .await
        .unwrap();

    let queues = [default.clone(), critical.clone()];
    assert_eq!(
        migrate::old_layout_keys(&mut conn, &keys, &queues)
            .await
            .unwrap(),
        [old("scheduled"), old("dead"), old("stream:default")]
    );
    let moved = migrate::run(&mut conn, &keys).await.unwrap();
    assert_eq!(
        moved,
        migrate::Migrated {
            stream_entries: 3,
            scheduled: 1,
            retry: 1,
            dead: 2,
            locks_moved: 1,
            locks_dropped: 1,
            skipped: 1,
        }
    );
    let again = migrate::run(&mut conn, &keys).await.unwrap();
    assert_eq!(
        again,
        migrate::Migrated {
            skipped: 1,
            ..Default::default()
        },
        "a rerun moves nothing"
    );
    assert_eq!(
        migrate::old_layout_keys(&mut conn, &keys, &queues)
            .await
            .unwrap(),
        [old("dead")],
        "only the letter of no queue is left"
    );
    let (moved_token, ttl): (String, i64) = redis::pipe()
        .cmd("GET")
        .arg(&new_lock)
        .cmd("PTTL")
        .arg(&new_lock)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(moved_token, token, "the lock moved with its task");
    assert!(ttl > 0, "with its TTL");
    let dead = DeadLetters::new(conn.clone(), keys.clone());
    let critical_letters = dead.list(&critical, 10).await.unwrap();
    assert_eq!(critical_letters.len(), 1);
    assert_eq!(critical_letters[0].entry_id, "1000-0", "the id is kept");
    assert_eq!(dead.count(&default).await.unwrap(), 1);

    // A worker runs all of it: the 3 stream entries (the pending one again), the delayed task
    // (due at 1 ms) and the retry; the moved lock is released by its task.
    let worker = Running::start(
        &redis,
        settings("migrated", &[(&default, 1), (&critical, 1)]),
        handlers(),
    );
    assert_eq!(dead.requeue_all(&critical).await.unwrap(), 1);
    eventually("everything ran", Duration::from_secs(20), || {
        let (mut conn, keys) = (conn.clone(), keys.clone());
        let (default, critical) = (default.clone(), critical.clone());
        async move {
            let d = queue_stats(&mut conn, &keys, &default).await.unwrap();
            let c = queue_stats(&mut conn, &keys, &critical).await.unwrap();
            (d.processed, c.processed) == (4, 2)
        }
    })
    .await;
    worker.stop().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(&new_lock)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!exists, "released when its task finished");
}
