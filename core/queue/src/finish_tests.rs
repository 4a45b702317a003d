//! FINISH deletes exactly the entries it acks. Its trim (`XTRIM MINID`) must never reach an
//! entry that is still pending or not delivered yet, whatever the order tasks finish in and
//! whatever the ids look like (a sequence or a time that gains a digit compares differently as
//! text).

use std::{collections::BTreeSet, time::Duration};

use super::{FINISH, Finished, FinishedLock, done_ttl_ms, finish, finish_cmd};
use crate::{
    connection::{self, Connection},
    keys::{EntryId, GROUP, Keys, Namespace, QueueName},
    testing::{RedisServer, TestRedis},
};

/// Ids whose text order is not their order: times and sequences across digit boundaries, up
/// to the largest sequence Redis allows.
fn tricky_ids() -> Vec<(u64, u64)> {
    let mut ids = Vec::new();
    for ms in [7, 9, 10, 11, 99, 100, 101, 1_000, 1_732_870_000_000] {
        for seq in [0, 1, 2, 9, 10, 11, 99, 100, 1_000] {
            ids.push((ms, seq));
        }
    }
    ids.push((1_732_870_000_001, u64::MAX - 1));
    ids.push((1_732_870_000_001, u64::MAX));
    ids.push((1_732_870_000_002, 5));
    ids
}

/// xorshift64: a fixed sequence per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn text((ms, seq): (u64, u64)) -> String {
    format!("{ms}-{seq}")
}

async fn stream_ids(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    entries.into_iter().map(|(id, _)| id).collect()
}

async fn pending_ids(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> Vec<String> {
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query_async(conn)
        .await
        .expect("XPENDING");
    pending.into_iter().map(|(id, ..)| id).collect()
}

/// One run: every entry added up front, then rounds of reading a few and finishing a random
/// choice of those delivered (in a random order), checking after each FINISH that the stream
/// holds exactly the entries not acked and the group exactly the delivered ones not acked.
async fn run(seed: u64, read_at_most: usize, finish_at_most: usize) {
    let redis = TestRedis::new();
    let queue = QueueName::parse("default").expect("queue");
    let stream = redis.keys().stream(&queue);
    let mut conn = redis.conn().await;
    xgroup_create(&mut conn, &stream).await;
    let all: Vec<(u64, u64)> = tricky_ids();
    xadd_all(&mut conn, &stream, &all).await;
    let mut manager = manager(&redis);
    let mut rng = Rng(seed);
    let mut delivered: Vec<(u64, u64)> = Vec::new();
    let mut acked: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut next = 0;
    while acked.len() < all.len() {
        if next < all.len() {
            for id in read(&mut conn, &stream, 1 + rng.below(read_at_most)).await {
                assert_eq!(id, text(all[next]), "read in id order");
                delivered.push(all[next]);
                next += 1;
            }
        }
        // Finish a random choice of what is running, in a random order.
        let mut batch = Vec::new();
        for _ in 0..1 + rng.below(finish_at_most) {
            if delivered.is_empty() {
                break;
            }
            batch.push(delivered.swap_remove(rng.below(delivered.len())));
        }
        if batch.is_empty() {
            continue;
        }
        finish_ids(&mut manager, &redis, &queue, &batch).await;
        acked.extend(batch.iter().copied());

        let left: Vec<String> = all
            .iter()
            .filter(|id| !acked.contains(id))
            .map(|id| text(*id))
            .collect();
        assert_eq!(
            stream_ids(&mut conn, &stream).await,
            left,
            "seed {seed}: the stream holds exactly what is not acked (after acking {batch:?})"
        );
        let mut running: Vec<(u64, u64)> = delivered.clone();
        running.sort_unstable();
        assert_eq!(
            pending_ids(&mut conn, &stream).await,
            running.into_iter().map(text).collect::<Vec<_>>(),
            "seed {seed}: the group holds exactly what runs"
        );
    }
}

#[tokio::test]
async fn finishing_in_any_order_deletes_exactly_the_acked_entries() {
    for seed in [1, 7, 42, 1_000_003, 0xdead_beef] {
        run(seed, 12, 6).await;
    }
}

#[tokio::test]
async fn finishing_one_at_a_time_and_in_large_batches_too() {
    run(3, 1, 1).await;
    run(5, 40, 40).await;
}

async fn xgroup_create(conn: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await
        .expect("XGROUP CREATE");
}

async fn xadd_all(conn: &mut redis::aio::MultiplexedConnection, stream: &str, ids: &[(u64, u64)]) {
    for id in ids {
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg(text(*id))
            .arg("n")
            .arg(1)
            .query_async(conn)
            .await
            .expect("XADD");
    }
}

/// Delivers up to `count` entries to consumer `c`; their ids.
async fn read(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    count: usize,
) -> Vec<String> {
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("c")
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .expect("XREADGROUP");
    reply
        .keys
        .into_iter()
        .flat_map(|key| key.ids)
        .map(|entry| entry.id)
        .collect()
}

/// The queue's own connection, as the worker's acker has it.
fn manager(redis: &TestRedis) -> Connection {
    connection::lazy_manager(redis.client(), Duration::from_secs(5))
        .expect("manager")
        .into()
}

/// Queue `default` of `redis` with the entries `ids` added and all delivered to one
/// consumer: the queue, its stream and a connection.
async fn all_delivered(
    redis: &TestRedis,
    ids: &[(u64, u64)],
) -> (QueueName, String, redis::aio::MultiplexedConnection) {
    let queue = QueueName::parse("default").expect("queue");
    let stream = redis.keys().stream(&queue);
    let mut conn = redis.conn().await;
    xgroup_create(&mut conn, &stream).await;
    xadd_all(&mut conn, &stream, ids).await;
    read(&mut conn, &stream, ids.len()).await;
    (queue, stream, conn)
}

/// FINISH of `ids`, none holding a lock.
async fn finish_ids(
    manager: &mut Connection,
    redis: &TestRedis,
    queue: &QueueName,
    ids: &[(u64, u64)],
) {
    let finished: Vec<Finished> = ids
        .iter()
        .map(|id| Finished {
            entry_id: text(*id),
            lock: None,
        })
        .collect();
    finish(manager, &redis.keys(), queue, finished.iter())
        .await
        .expect("finish");
}

/// The group re-created (the worker does so on NOGROUP, from `0`) while tasks ran: the
/// entries after those it has delivered again are undelivered again, so a batch with an id
/// that is no longer pending deletes only its own entries, whether none of them is pending
/// any more or some are.
#[tokio::test]
async fn after_the_group_is_re_created_only_the_finished_entries_go() {
    for (redelivered, batch) in [(0, vec![(5, 6)]), (3, vec![(5, 1), (5, 2), (5, 3), (5, 6)])] {
        let redis = TestRedis::new();
        let all: Vec<(u64, u64)> = (1..=10).map(|seq| (5, seq)).collect();
        let (queue, stream, mut conn) = all_delivered(&redis, &all).await;
        let _: i64 = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(&stream)
            .arg(GROUP)
            .query_async(&mut conn)
            .await
            .expect("XGROUP DESTROY");
        xgroup_create(&mut conn, &stream).await;
        if redelivered > 0 {
            read(&mut conn, &stream, redelivered).await;
        }

        finish_ids(&mut manager(&redis), &redis, &queue, &batch).await;
        let left: Vec<String> = all
            .iter()
            .filter(|id| !batch.contains(id))
            .map(|id| text(*id))
            .collect();
        assert_eq!(
            stream_ids(&mut conn, &stream).await,
            left,
            "{redelivered} delivered again, then {batch:?} finished"
        );
    }
}

/// A batch finished while an older entry still runs goes by the trim: no `XDEL` (which
/// records the id it deleted, `max-deleted-entry-id`) for the entries below that one.
#[tokio::test]
async fn entries_below_the_oldest_pending_go_by_the_trim() {
    let redis = TestRedis::new();
    let queue = QueueName::parse("default").expect("queue");
    let stream = redis.keys().stream(&queue);
    let mut conn = redis.conn().await;
    xgroup_create(&mut conn, &stream).await;
    let all: Vec<(u64, u64)> = (1..=4).map(|seq| (7, seq)).collect();
    xadd_all(&mut conn, &stream, &all).await;
    read(&mut conn, &stream, 3).await;

    finish_ids(&mut manager(&redis), &redis, &queue, &[(7, 2), (7, 1)]).await;
    assert_eq!(stream_ids(&mut conn, &stream).await, ["7-3", "7-4"]);
    let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .expect("XINFO STREAM");
    let deleted: String =
        redis::from_redis_value(info["max-deleted-entry-id"].clone()).expect("an id");
    assert_eq!(deleted, "0-0", "deleted by the trim, not by XDEL");
}

/// FINISH sends its script by hash; a Redis that has not cached it (a new or restarted
/// server, a SCRIPT FLUSH) answers NOSCRIPT, and the script is loaded and called again.
#[tokio::test]
async fn a_redis_without_the_script_cached_gets_it() {
    let server = RedisServer::start().await;
    let redis = TestRedis::at(server.address());
    let all: Vec<(u64, u64)> = (1..=4).map(|seq| (5, seq)).collect();
    let (queue, stream, mut conn) = all_delivered(&redis, &all).await;
    let mut manager = manager(&redis);
    for batch in all.chunks(2) {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .expect("SCRIPT FLUSH");
        finish_ids(&mut manager, &redis, &queue, batch).await;
    }
    assert_eq!(stream_ids(&mut conn, &stream).await, Vec::<String>::new());
    assert_eq!(pending_ids(&mut conn, &stream).await, Vec::<String>::new());
}

/// FINISH's command is, byte for byte, the redis crate's script invocation it replaced:
/// the same keys and arguments in the same order, with and without locks and done markers,
/// its ids sorted or not, parsable or not.
#[test]
fn finish_is_the_invocation_it_replaced() {
    let keys = Keys::new(Namespace::parse("ns").expect("namespace"));
    let queue = QueueName::parse("default").expect("queue");
    let entry = |id: &str, lock: Option<(usize, bool)>| Finished {
        entry_id: id.to_owned(),
        lock: lock.map(|(n, done)| FinishedLock {
            key: format!("{{ns:default}}:unique:k{n}"),
            token: format!("token-{n}"),
            done: done.then(|| format!("{{ns:default}}:done:{n}")),
        }),
    };
    let cases = [
        vec![entry("5-1", None), entry("5-2", None), entry("6-0", None)],
        vec![
            entry("10-0", None),
            entry("9-3", None),
            entry("bad", None),
            entry("9-3", None),
        ],
        vec![
            entry("7-1", Some((1, true))),
            entry("7-0", None),
            entry("8-2", Some((2, false))),
            entry("8-1", Some((3, true))),
        ],
    ];
    for entries in &cases {
        // As `finish` built it before (59c51ae's parent).
        let mut batch: Vec<&Finished> = entries.iter().collect();
        batch.sort_by_cached_key(|entry| EntryId::parse(&entry.entry_id));
        let mut invocation = FINISH.key(keys.stream(&queue));
        invocation
            .key(keys.stats(&queue))
            .arg(GROUP)
            .arg(batch.len());
        for entry in batch {
            invocation.arg(&entry.entry_id);
        }
        for lock in entries.iter().filter_map(|entry| entry.lock.as_ref()) {
            invocation
                .key(&lock.key)
                .key(lock.done.as_ref().unwrap_or(&lock.key))
                .arg(&lock.token)
                .arg(done_ttl_ms(lock.done.as_ref()));
        }
        let theirs = redis::pipe()
            .invoke_script(&invocation)
            .get_packed_pipeline();
        let ours = finish_cmd(&keys, &queue, entries.iter()).get_packed_command();
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }
}
