//! Fault tests with real worker processes (the `test_worker` example: the real consumer with a
//! handler that records each run in `{ns}:test:runs`). Each asserts exact counts.

use std::time::{Duration, Instant};

use simplebank_core::{
    redis_client,
    testing::{RedisServer, TestRedis, eventually, sigterm},
};
use simplebank_queue::{Publisher, Task};

use crate::helpers::{
    TestJob, publish_jobs, recorded_runs, scheduled_count, spawn_test_worker, stream_state,
};

const CONCURRENCY: usize = 10;

/// SIGKILL, then wait for the exit: a dying worker must not touch Redis after the test cleans
/// its namespace up.
async fn sigkill(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let _ = child.wait().await;
}

async fn sigterm_and_wait(mut child: tokio::process::Child) -> std::process::ExitStatus {
    sigterm(&mut child, Duration::from_secs(20))
        .await
        .expect("exits after SIGTERM")
}

/// Waits until every id in `ids` has run at least once and nothing is queued, pending or
/// scheduled; returns the run counts.
async fn wait_all_done(
    redis: &TestRedis,
    ids: &[String],
    timeout: Duration,
) -> std::collections::HashMap<String, u64> {
    eventually("every task ran and the queue is empty", timeout, || async {
        let runs = recorded_runs(redis).await;
        ids.iter().all(|id| runs.contains_key(id))
            && stream_state(redis, "default").await == (0, 0)
            && scheduled_count(redis).await == 0
    })
    .await;
    recorded_runs(redis).await
}

#[tokio::test]
async fn killing_workers_with_sigkill_loses_nothing_and_bounds_duplicates() {
    let redis = TestRedis::new();
    let env = [
        ("WORKER_CONCURRENCY", "10"),
        ("WORKER_VISIBILITY_TIMEOUT", "1s"),
        ("WORKER_SHUTDOWN_TIMEOUT", "1s"),
    ];
    let mut generation = 0;
    let mut workers: Vec<tokio::process::Child> = (0..3)
        .map(|i| spawn_test_worker(&redis.address, &redis, &format!("w{i}-g0"), &env))
        .collect();
    let ids = publish_jobs(&redis, 10_000, 15).await;

    // Kill one worker (round robin) with SIGKILL about every 700 ms and start a new one.
    let started = Instant::now();
    let mut kills = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let done = recorded_runs(&redis).await.len();
        if done >= ids.len() - 500 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        let victim = kills % workers.len();
        sigkill(&mut workers[victim]).await;
        generation += 1;
        workers[victim] = spawn_test_worker(
            &redis.address,
            &redis,
            &format!("w{victim}-g{generation}"),
            &env,
        );
        kills += 1;
    }
    let runs = wait_all_done(&redis, &ids, Duration::from_secs(120)).await;
    for worker in &mut workers {
        sigkill(worker).await;
    }

    assert!(
        kills >= 3,
        "the run was long enough to kill workers {kills} times"
    );
    let total: u64 = runs.values().sum();
    let duplicates = total - ids.len() as u64;
    assert_eq!(runs.len(), ids.len(), "every task ran");
    assert!(
        ids.iter().all(|id| runs.get(id).copied().unwrap_or(0) >= 1),
        "none lost"
    );
    let bound = (kills * CONCURRENCY) as u64;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates after {kills} kills: more than the {bound} tasks in flight"
    );
    eprintln!(
        "sigkill test: {} tasks, {kills} kills, {duplicates} duplicates (bound {bound})",
        ids.len()
    );
}

#[tokio::test]
async fn a_redis_restart_with_aof_loses_no_acknowledged_enqueue() {
    let mut server =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let redis = TestRedis::at(server.address());
    let env = [
        ("WORKER_CONCURRENCY", "10"),
        ("WORKER_VISIBILITY_TIMEOUT", "1s"),
    ];
    let mut workers: Vec<tokio::process::Child> = (0..2)
        .map(|i| spawn_test_worker(&redis.address, &redis, &format!("aof-{i}"), &env))
        .collect();
    let conn = redis_client::lazy_manager(redis.client(), redis_client::RESPONSE_TIMEOUT)
        .expect("connection");
    let publisher = Publisher::new(conn, redis.keys());

    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let mut restarted = false;
    let mut down_since = None;
    for n in 0..3000u32 {
        if n == 1000 {
            // Stop Redis the hard way for a snapshot (no RDB save; the AOF is all it keeps).
            let mut admin = redis.conn().await;
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN")
                .arg("NOSAVE")
                .query_async(&mut admin)
                .await;
            down_since = Some(Instant::now());
        }
        if !restarted && down_since.is_some_and(|t| t.elapsed() > Duration::from_millis(500)) {
            server.restart().await;
            restarted = true;
        }
        let task = Task::new(&TestJob { n, sleep_ms: 2 }).expect("task");
        match publisher.publish(&task).await {
            Ok(_) => acknowledged.push(task.id().to_owned()),
            Err(_) => refused += 1,
        }
        if down_since.is_some() && !restarted {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(restarted, "Redis was restarted mid-run");
    assert!(
        refused > 0,
        "some enqueues were refused while Redis was down"
    );

    let runs = wait_all_done(&redis, &acknowledged, Duration::from_secs(60)).await;
    assert!(
        acknowledged.iter().all(|id| runs.contains_key(id)),
        "every acknowledged task ran"
    );
    for worker in &mut workers {
        sigkill(worker).await;
    }
    eprintln!(
        "aof test: {} acknowledged, {refused} refused while down, all {} ran",
        acknowledged.len(),
        acknowledged.len()
    );
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once_acking_nothing_unfinished() {
    let redis = TestRedis::new();
    let env = [
        ("WORKER_CONCURRENCY", "4"),
        ("WORKER_SHUTDOWN_TIMEOUT", "60s"),
    ];
    let mut worker = spawn_test_worker(&redis.address, &redis, "impatient", &env);
    publish_jobs(&redis, 2, 30_000).await;
    eventually(
        "both tasks are running",
        Duration::from_secs(20),
        || async { stream_state(&redis, "default").await == (2, 2) },
    )
    .await;
    let pid = worker.id().expect("running").to_string();
    for _ in 0..2 {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = tokio::time::timeout(Duration::from_secs(5), worker.wait())
        .await
        .expect("exits at once, not after the 60 s shutdown timeout")
        .expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(recorded_runs(&redis).await.is_empty(), "nothing finished");
    assert_eq!(
        stream_state(&redis, "default").await,
        (2, 2),
        "both still pending, unacked"
    );
}

#[tokio::test]
async fn sigterm_acks_what_finished_and_leaves_the_rest_to_another_worker() {
    let redis = TestRedis::new();
    let env = [
        ("WORKER_CONCURRENCY", "8"),
        ("WORKER_VISIBILITY_TIMEOUT", "1s"),
        ("WORKER_SHUTDOWN_TIMEOUT", "500ms"),
    ];
    let first = spawn_test_worker(&redis.address, &redis, "first", &env);
    let quick = publish_jobs(&redis, 4, 100).await;
    let slow = publish_jobs(&redis, 4, 5_000).await;
    // All eight are running in `first` (quick ones done) before the signal.
    eventually("the quick tasks ran", Duration::from_secs(20), || async {
        let runs = recorded_runs(&redis).await;
        quick.iter().all(|id| runs.contains_key(id))
    })
    .await;
    let status = sigterm_and_wait(first).await;
    assert!(status.success(), "{status:?}");
    let runs = recorded_runs(&redis).await;
    assert!(
        slow.iter().all(|id| !runs.contains_key(id)),
        "slow ones did not finish in `first`"
    );
    assert_eq!(
        stream_state(&redis, "default").await,
        (4, 4),
        "only the slow four are left, pending"
    );

    let mut second = spawn_test_worker(&redis.address, &redis, "second", &env);
    let all: Vec<String> = quick.iter().chain(&slow).cloned().collect();
    let runs = wait_all_done(&redis, &all, Duration::from_secs(30)).await;
    assert!(
        all.iter().all(|id| runs[id] == 1),
        "each ran exactly once: {runs:?}"
    );
    sigkill(&mut second).await;
}
