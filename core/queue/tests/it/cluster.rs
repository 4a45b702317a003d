//! The queue on a real Redis Cluster (three primaries, a replica each): the three queues'
//! streams on three different primaries, every path of a task on each, an idle worker woken
//! on any queue (per-queue blocking reads), and a queue's slot moved to another primary while
//! a worker drains it (ASK during the migration, MOVED after) with nothing lost.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use simplebank_queue::{
    Backoff, ConsumerSettings, DeadLetters, HandlerError, Handlers, Keys, Publisher, QueueName,
    TaskContext, Worker,
    connection::Endpoint,
    known_queues, pause, queue_stats, resume,
    testing::{RedisCluster, eventually},
};
use tokio_util::sync::CancellationToken;

use crate::helpers::{Job, Mode, job};

fn queues() -> Vec<QueueName> {
    ["critical", "default", "low"]
        .iter()
        .map(|q| QueueName::parse(q).unwrap())
        .collect()
}

/// Runs per payload `n`, counted by the handler.
type Runs = Arc<Mutex<HashMap<u32, u32>>>;

fn counting_handlers(runs: &Runs) -> Handlers {
    let runs = Arc::clone(runs);
    Handlers::new().on(move |job: Job, cx: TaskContext| {
        let runs = Arc::clone(&runs);
        async move {
            *runs.lock().unwrap().entry(job.n).or_default() += 1;
            match job.mode {
                Mode::Succeed => Ok(()),
                Mode::FailOnce if cx.attempt() > 1 => Ok(()),
                Mode::Fail | Mode::FailOnce => Err(HandlerError::new("failing on purpose")),
                Mode::Refuse => Err(HandlerError::skip_retry("refused on purpose")),
            }
        }
    })
}

/// Queues `<prefix>0`, `<prefix>1`, ...
fn numbered_queues(prefix: &str, count: usize) -> Vec<QueueName> {
    (0..count)
        .map(|i| QueueName::parse(&format!("{prefix}{i}")).unwrap())
        .collect()
}

/// Handlers counting runs per payload `n`; the task with `n` 0 runs for `long`.
fn first_runs_long(runs: &Runs, long: Duration) -> Handlers {
    let runs = Arc::clone(runs);
    Handlers::new().on(move |job: Job, _cx: TaskContext| {
        let runs = Arc::clone(&runs);
        async move {
            *runs.lock().unwrap().entry(job.n).or_default() += 1;
            if job.n == 0 {
                tokio::time::sleep(long).await;
            }
            Ok::<(), HandlerError>(())
        }
    })
}

fn worker_settings(name: &str, queues: &[QueueName]) -> ConsumerSettings {
    let mut settings = ConsumerSettings::new(name);
    settings.queues = queues.iter().cloned().zip([6, 3, 1]).collect();
    settings.visibility_timeout = Duration::from_secs(2);
    settings.backoff = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(20),
    };
    settings
}

fn start(endpoint: &Endpoint, keys: &Keys, settings: ConsumerSettings, handlers: Handlers) -> Stop {
    let worker = Worker::with_endpoint(
        endpoint.clone(),
        keys.namespace().clone(),
        settings,
        handlers,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { worker.run(token).await.unwrap() });
    Stop(shutdown, task)
}

struct Stop(CancellationToken, tokio::task::JoinHandle<()>);

impl Stop {
    async fn stop(self) {
        self.0.cancel();
        self.1.await.unwrap();
    }
}

#[tokio::test]
async fn three_queues_on_three_primaries_take_every_path() {
    let cluster = RedisCluster::start().await;
    let queues = queues();
    let keys = Keys::new(cluster.spread_namespace(&queues).await);
    let mut primaries = Vec::new();
    for queue in &queues {
        primaries.push(cluster.primary_port_of(&keys.stream(queue)).await);
    }
    let mut distinct = primaries.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "one primary per queue: {primaries:?}");

    let endpoint = Endpoint::parse(&cluster.seeds(), true, &Default::default()).unwrap();
    let conn = endpoint.connect_lazy(Duration::from_secs(2)).unwrap();
    let publisher = Publisher::new(conn.clone(), keys.clone());
    let runs = Runs::default();
    let worker = start(
        &endpoint,
        &keys,
        worker_settings("cluster-1", &queues),
        counting_handlers(&runs),
    );

    // Every path on every queue: plain, task id lock, unique content, delayed, retried then
    // dead, dead at once, and a batch.
    for (i, queue) in (0u32..).zip(&queues) {
        let n = i * 100;
        for task in [
            job(queue, n + 1, Mode::Succeed),
            job(queue, n + 2, Mode::Succeed)
                .with_task_id(format!("only-once-{n}"))
                .unwrap(),
            job(queue, n + 3, Mode::Succeed)
                .with_unique(Duration::from_secs(60))
                .unwrap(),
            job(queue, n + 4, Mode::Succeed).with_process_in(Duration::from_millis(200)),
            job(queue, n + 5, Mode::Fail).with_max_retry(1),
            job(queue, n + 6, Mode::Refuse),
        ] {
            publisher.publish(&task).await.unwrap();
        }
    }
    let batch: Vec<_> = (0u32..)
        .zip(&queues)
        .map(|(i, queue)| job(queue, i * 100 + 7, Mode::Succeed))
        .collect();
    publisher.publish_batch(&batch).await.unwrap();

    let settled = |dead: u64| {
        let (keys, queues, conn) = (keys.clone(), queues.clone(), conn.clone());
        move || {
            let (keys, queues, mut conn) = (keys.clone(), queues.clone(), conn.clone());
            async move {
                for queue in &queues {
                    match queue_stats(&mut conn, &keys, queue).await {
                        Ok(s)
                            if (s.pending, s.active, s.scheduled, s.retry, s.dead)
                                == (0, 0, 0, 0, dead) => {}
                        _ => return false,
                    }
                }
                true
            }
        }
    };
    eventually(
        "every queue settled, 2 dead each",
        Duration::from_secs(30),
        settled(2),
    )
    .await;
    {
        let runs = runs.lock().unwrap();
        for i in 0..3u32 {
            for k in [1, 2, 3, 4, 6, 7] {
                assert_eq!(runs.get(&(i * 100 + k)), Some(&1), "job {}", i * 100 + k);
            }
            assert_eq!(runs.get(&(i * 100 + 5)), Some(&2), "retried once");
        }
    }

    // The idle worker now blocks on each queue separately: a task on any of them wakes it.
    for (i, queue) in (0u32..).zip(&queues) {
        publisher
            .publish(&job(queue, 900 + i, Mode::Succeed))
            .await
            .unwrap();
        let runs = Arc::clone(&runs);
        eventually(
            "the idle worker ran the new task",
            Duration::from_secs(10),
            move || {
                let done = runs.lock().unwrap().contains_key(&(900 + i));
                async move { done }
            },
        )
        .await;
    }

    let dead = DeadLetters::new(conn.clone(), keys.clone());
    for queue in &queues {
        assert_eq!(dead.requeue_all(queue).await.unwrap(), 2);
    }
    eventually("dead again", Duration::from_secs(30), settled(2)).await;
    worker.stop().await;
    let mut registry = known_queues(&mut conn.clone(), &keys).await.unwrap();
    registry.sort();
    assert_eq!(registry.len(), 3);

    // No command crossed slots (an idle worker's read across the queues would have: the
    // nodes count refused commands by error).
    for index in 0..cluster.nodes.len() {
        let mut node = cluster.node_conn(index).await;
        let errors: String = redis::cmd("INFO")
            .arg("errorstats")
            .query_async(&mut node)
            .await
            .unwrap();
        assert!(!errors.contains("CROSSSLOT"), "node {index}: {errors}");
    }

    // Each stream lives on its primary: that node holds the key (no MOVED).
    for (queue, port) in queues.iter().zip(&primaries) {
        let mut node = cluster.node_conn(cluster.index_of(*port)).await;
        let length: u64 = redis::cmd("XLEN")
            .arg(keys.stream(queue))
            .query_async(&mut node)
            .await
            .unwrap();
        assert_eq!(length, 0, "{queue} settled on its own primary");
        let exists: i64 = redis::cmd("EXISTS")
            .arg(keys.stream(queue))
            .query_async(&mut node)
            .await
            .unwrap();
        assert_eq!(exists, 1, "{queue}'s stream is on port {port}");
    }
}

/// One slot, tasks trickling onto every queue: while a busy worker's read holds the slot, the
/// blocking read of another queue (started when it was idle) comes back with entries and no
/// slot. Those must wait for the slot without stopping the loop that frees it: the fetch loop
/// once waited for the slot inside the branch, and the read holding it was never taken in.
#[tokio::test]
async fn entries_of_a_blocking_read_wait_for_a_slot_without_stopping_the_worker() {
    let cluster = RedisCluster::start().await;
    let queues = queues();
    let keys = Keys::new(cluster.spread_namespace(&queues).await);
    let endpoint = Endpoint::parse(&cluster.seeds(), true, &Default::default()).unwrap();
    let conn = endpoint.connect_lazy(Duration::from_secs(2)).unwrap();
    let publisher = Publisher::new(conn.clone(), keys.clone());
    let runs = Runs::default();
    let mut settings = worker_settings("one-slot", &queues);
    settings.concurrency = 1;
    let worker = start(&endpoint, &keys, settings, counting_handlers(&runs));

    const TASKS: u32 = 300;
    for n in 0..TASKS {
        let queue = &queues[n as usize % queues.len()];
        publisher
            .publish(&job(queue, n, Mode::Succeed))
            .await
            .unwrap();
        // Paced, so that the worker goes idle and busy again many times.
        if n % 3 == 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let all = Arc::clone(&runs);
    eventually("every task ran", Duration::from_secs(30), move || {
        let count = all.lock().unwrap().len();
        async move { count == TASKS as usize }
    })
    .await;
    worker.stop().await;
    assert!(
        runs.lock().unwrap().values().all(|&n| n == 1),
        "ran once each"
    );
}

#[tokio::test]
async fn a_queue_moved_to_another_primary_while_draining_loses_nothing() {
    let cluster = RedisCluster::start().await;
    let queue = QueueName::parse("default").unwrap();
    let keys = Keys::new(cluster.spread_namespace(std::slice::from_ref(&queue)).await);
    let endpoint = Endpoint::parse(&cluster.seeds(), true, &Default::default()).unwrap();
    let conn = endpoint.connect_lazy(Duration::from_secs(2)).unwrap();
    let publisher = Publisher::new(conn.clone(), keys.clone());
    const TASKS: u32 = 3000;
    let tasks: Vec<_> = (0..TASKS).map(|n| job(&queue, n, Mode::Succeed)).collect();
    publisher.publish_batch(&tasks).await.unwrap();

    let runs = Runs::default();
    let mut settings = worker_settings("mover-1", std::slice::from_ref(&queue));
    settings.queues = vec![(queue.clone(), 1)];
    // Slow enough that the migration happens mid-drain.
    let slow = Arc::clone(&runs);
    let handlers = Handlers::new().on(move |job: Job, _: TaskContext| {
        let runs = Arc::clone(&slow);
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            *runs.lock().unwrap().entry(job.n).or_default() += 1;
            Ok::<(), HandlerError>(())
        }
    });
    let worker = start(&endpoint, &keys, settings, handlers);
    let started = Arc::clone(&runs);
    eventually("the drain started", Duration::from_secs(20), move || {
        let count = started.lock().unwrap().len();
        async move { count > 100 }
    })
    .await;

    let from = cluster.primary_port_of(&keys.stream(&queue)).await;
    let to = cluster
        .topology()
        .await
        .into_iter()
        .find(|n| n.primary && n.port != from)
        .unwrap()
        .port;
    let slot = cluster.slot_of(&keys.stream(&queue)).await;
    cluster.move_slot(slot, to).await;
    assert_eq!(cluster.primary_port_of(&keys.stream(&queue)).await, to);

    let all = Arc::clone(&runs);
    eventually("every task ran", Duration::from_secs(60), move || {
        let count = all.lock().unwrap().len();
        async move { count == TASKS as usize }
    })
    .await;
    let mut conn = conn.clone();
    eventually("nothing left on the queue", Duration::from_secs(30), || {
        let (keys, queue, mut conn) = (keys.clone(), queue.clone(), conn.clone());
        async move {
            matches!(queue_stats(&mut conn, &keys, &queue).await,
                Ok(s) if (s.pending, s.active) == (0, 0))
        }
    })
    .await;
    worker.stop().await;
    let duplicates = runs.lock().unwrap().values().filter(|&&n| n > 1).count();
    // A moved slot is not a crash: a task runs twice only if its ack met the migration and
    // was retried after the entry had been claimed again; none in practice, a few allowed.
    assert!(duplicates <= 20, "{duplicates} tasks ran twice");
    let _ = queue_stats(&mut conn, &keys, &queue).await.unwrap();
}

#[tokio::test]
async fn a_paused_queue_on_a_cluster_is_not_read_and_its_counters_count() {
    let cluster = RedisCluster::start().await;
    let queues = queues();
    let keys = Keys::new(cluster.spread_namespace(&queues).await);
    let endpoint = Endpoint::parse(&cluster.seeds(), true, &Default::default()).unwrap();
    let mut conn = endpoint.connect_lazy(Duration::from_secs(2)).unwrap();
    let publisher = Publisher::new(conn.clone(), keys.clone());
    let (held, flowing) = (&queues[0], &queues[1]);
    // Paused before the worker starts: neither its non-blocking reads nor the per-queue
    // blocking read of an idle worker may take it.
    assert!(pause(&mut conn, &keys, held).await.unwrap());
    let feed = |from: u32| {
        let publisher = publisher.clone();
        let (held, flowing) = (held.clone(), flowing.clone());
        async move {
            for n in from..from + 10 {
                publisher
                    .publish(&job(&held, 1000 + n, Mode::Succeed))
                    .await
                    .unwrap();
                let mode = if n % 2 == 0 {
                    Mode::Succeed
                } else {
                    Mode::FailOnce
                };
                publisher
                    .publish(&job(&flowing, 2000 + n, mode))
                    .await
                    .unwrap();
            }
        }
    };
    feed(0).await;
    let runs = Runs::default();
    let worker = start(
        &endpoint,
        &keys,
        worker_settings("pauser-1", &queues),
        counting_handlers(&runs),
    );
    let ran = |range: std::ops::Range<u32>| {
        let runs = Arc::clone(&runs);
        move || {
            let done = range.clone().all(|n| runs.lock().unwrap().contains_key(&n));
            async move { done }
        }
    };
    eventually(
        "the open queue drained",
        Duration::from_secs(20),
        ran(2000..2010),
    )
    .await;
    // Idle now (blocking per queue); more for the open queue wakes it, the paused one stays.
    feed(10).await;
    eventually(
        "the open queue drained again",
        Duration::from_secs(20),
        ran(2010..2020),
    )
    .await;
    let flowing_stats = || {
        let (mut conn, keys, flowing) = (conn.clone(), keys.clone(), flowing.clone());
        async move {
            let s = queue_stats(&mut conn, &keys, &flowing).await.unwrap();
            // 20 tasks, 10 of them failing once: 30 attempts, 10 failed.
            (s.pending, s.active, s.retry, s.processed, s.failed) == (0, 0, 0, 30, 10)
        }
    };
    eventually(
        "the counters of the open queue",
        Duration::from_secs(20),
        flowing_stats,
    )
    .await;
    assert!(
        (1000..1020).all(|n| !runs.lock().unwrap().contains_key(&n)),
        "a task of the paused queue ran"
    );
    let stats = queue_stats(&mut conn, &keys, held).await.unwrap();
    assert!(stats.paused);
    assert_eq!((stats.pending, stats.active, stats.processed), (20, 0, 0));

    assert!(resume(&mut conn, &keys, held).await.unwrap());
    eventually(
        "the resumed queue drained",
        Duration::from_secs(20),
        ran(1000..1020),
    )
    .await;
    worker.stop().await;
}

/// Entries a cluster's blocking reads brought while the only slot was busy wait in the fetch
/// loop, pending with this consumer but with no lease. When the running task outlasts the
/// visibility timeout the reclaimer may take them over; the loop must then not run its own
/// copies: each still runs once. (Found by an outside attack: 1-2 of the 7 ran twice in 4 runs
/// of 4, before the loop left entries that waited half the timeout to the reclaimer.) Eight
/// queues, so that seven entries wait behind the long task.
#[tokio::test]
async fn entries_waiting_for_a_slot_are_not_run_twice_when_a_long_task_holds_it() {
    let cluster = RedisCluster::start().await;
    let queues = numbered_queues("q", 8);
    let keys = Keys::new(cluster.spread_namespace(&queues[..3]).await);
    let endpoint = Endpoint::parse(&cluster.seeds(), true, &Default::default()).unwrap();
    let conn = endpoint.connect_lazy(Duration::from_secs(2)).unwrap();
    let publisher = Publisher::new(conn.clone(), keys.clone());
    let runs = Runs::default();
    // Well past the visibility timeout (its own lease is renewed).
    let handlers = first_runs_long(&runs, Duration::from_secs(4));
    let mut settings = worker_settings("long-one-slot", &queues);
    settings.queues = queues.iter().cloned().map(|queue| (queue, 1)).collect();
    settings.concurrency = 1;
    settings.visibility_timeout = Duration::from_secs(1);
    let worker = start(&endpoint, &keys, settings, handlers);
    // Idle: a blocking read waits on every queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher
        .publish(&job(&queues[0], 0, Mode::Succeed))
        .await
        .unwrap();
    // The slot is busy now (or about to be); the other queues' blocking reads bring one entry each.
    for n in 1..8u32 {
        publisher
            .publish(&job(&queues[n as usize], n, Mode::Succeed))
            .await
            .unwrap();
    }
    let all = Arc::clone(&runs);
    eventually("every task ran", Duration::from_secs(30), move || {
        let count = all.lock().unwrap().len();
        async move { count == 8 }
    })
    .await;
    // Time for a second run, if there is one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    worker.stop().await;
    let runs = runs.lock().unwrap().clone();
    assert!(runs.values().all(|&n| n == 1), "ran once each: {runs:?}");
}

/// A shutdown while entries wait in the fetch loop for the only slot, held by a task that runs
/// long: the waiting entries stay pending (for the reclaimer), so the shutdown timeout (a
/// second) cuts the long task off and the worker stops. (Found by an outside attack: the loop
/// waited for a slot for them first, and the worker ran on until the hour-long task ended.)
#[tokio::test]
async fn a_shutdown_with_entries_waiting_for_a_slot_keeps_the_shutdown_timeout() {
    let cluster = RedisCluster::start().await;
    let queues = numbered_queues("s", 4);
    let keys = Keys::new(cluster.spread_namespace(&queues[..3]).await);
    let endpoint = Endpoint::parse(&cluster.seeds(), true, &Default::default()).unwrap();
    let conn = endpoint.connect_lazy(Duration::from_secs(2)).unwrap();
    let publisher = Publisher::new(conn.clone(), keys.clone());
    let runs = Runs::default();
    let handlers = first_runs_long(&runs, Duration::from_secs(3600));
    let mut settings = worker_settings("stopping-one-slot", &queues);
    settings.queues = queues.iter().cloned().map(|queue| (queue, 1)).collect();
    settings.concurrency = 1;
    settings.shutdown_timeout = Duration::from_secs(1);
    let worker = start(&endpoint, &keys, settings, handlers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..4u32 {
        publisher
            .publish(&job(&queues[n as usize], n, Mode::Succeed))
            .await
            .unwrap();
    }
    let started = Arc::clone(&runs);
    eventually("the long task runs", Duration::from_secs(10), move || {
        let running = started.lock().unwrap().contains_key(&0);
        async move { running }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A bound for a hang, not a speed: the shutdown timeout is one second, the task an hour.
    let stopped = tokio::time::timeout(Duration::from_secs(60), worker.stop()).await;
    assert!(
        stopped.is_ok(),
        "the worker did not stop within a minute of SIGTERM (shutdown timeout 1 s): {:?}",
        runs.lock().unwrap()
    );
}
