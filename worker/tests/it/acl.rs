//! The queue as a least-privilege Redis ACL user: exactly the rules of
//! `simplebank_core::keys::acl_setuser_rules` (the namespace's keys, the listed commands), the
//! `default` user off. Retries, dead letters and their requeue, delays, uniqueness and the
//! takeover of a crashed consumer's entry all work, and Redis refused nothing but the optional
//! commands (`ACL LOG`).

use std::{sync::Arc, time::Duration};

use simplebank_core::{
    keys::acl_setuser_rules,
    redis_client,
    testing::{RedisServer, TestRedis, eventually},
};
use simplebank_queue::{
    DeadLetters, GROUP, Handlers, Namespace, PublishError, QueueName, Task, acl::OPTIONAL,
};

use crate::helpers::{
    Noop, Recorder, RunningWorker, ensure_group, publisher, scheduled_count, settings, stream_state,
};

const PASSWORD: &str = "acl-Pa55word-never-logged";

/// A private server whose only users are `simplebank` (the rules of the code, for `ns`) and an
/// admin; returns the user's and the admin's view of one namespace.
async fn restricted_redis() -> (RedisServer, TestRedis, TestRedis) {
    let server = RedisServer::start().await;
    let namespace =
        Namespace::parse(&format!("acl-{}", uuid::Uuid::new_v4().simple())).expect("namespace");
    let rules = acl_setuser_rules(&namespace);
    let admin_address = server.restrict_to("simplebank", PASSWORD, &rules).await;
    let user = TestRedis {
        address: format!("redis://simplebank:{PASSWORD}@{}", server.address()),
        namespace: namespace.clone(),
    };
    let admin = TestRedis {
        address: admin_address,
        namespace,
    };
    (server, user, admin)
}

#[tokio::test]
async fn the_queue_runs_its_retry_dead_delay_unique_and_takeover_paths_as_the_acl_user() {
    let (_server, user, admin) = restricted_redis().await;
    let default = QueueName::parse("default").expect("queue");

    // Nothing broader than the list: other keys and other commands are refused.
    let mut conn = user.conn().await;
    for command in [
        redis::cmd("GET").arg("{other}:stream").clone(),
        redis::cmd("FLUSHALL").clone(),
        redis::cmd("KEYS").arg("*").clone(),
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendonly")
            .arg("no")
            .clone(),
    ] {
        let refused: redis::RedisResult<redis::Value> = command.query_async(&mut conn).await;
        let err = refused.expect_err("refused");
        assert_eq!(err.code(), Some("NOPERM"), "{err}");
    }

    // A crashed consumer's entry: read by "ghost", which never settles it.
    ensure_group(&user, &default).await;
    let ghost_task = Task::new(&Noop { n: 0 }).expect("task").with_max_retry(5);
    publisher(&user)
        .publish(&ghost_task)
        .await
        .expect("publish");
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(user.keys().stream(&default))
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP as ghost");
    assert_ne!(read, redis::Value::Nil);

    // Every task fails its first 4 runs: max_retry 3 dies, max_retry 5 succeeds on run 5.
    let recorder = Recorder::new().with_behaviour(Arc::new(|seen_before| {
        if seen_before < 4 { Err("boom") } else { Ok(()) }
    }));
    let mut worker_settings = settings("acl-worker");
    worker_settings.visibility_timeout = Duration::from_secs(1);
    let worker = RunningWorker::start(
        &user,
        worker_settings,
        Handlers::new().on::<Noop>(recorder.clone()),
    );
    let doomed = Task::new(&Noop { n: 1 }).expect("task").with_max_retry(3);
    let delayed = Task::new(&Noop { n: 2 })
        .expect("task")
        .with_max_retry(5)
        .with_process_in(Duration::from_millis(300));
    let unique = Task::new(&Noop { n: 3 })
        .expect("task")
        .with_max_retry(5)
        .with_task_id("acl-unique")
        .expect("task id");
    let publisher = publisher(&user);
    for task in [&doomed, &delayed, &unique] {
        publisher.publish(task).await.expect("publish");
    }
    let twin = Task::new(&Noop { n: 4 })
        .expect("task")
        .with_task_id("acl-unique")
        .expect("task id");
    assert!(
        matches!(
            publisher.publish(&twin).await,
            Err(PublishError::Conflict { .. })
        ),
        "the id's lock holds"
    );

    let dead = DeadLetters::new(
        redis_client::lazy_manager(user.client(), redis_client::RESPONSE_TIMEOUT)
            .expect("connection"),
        user.keys(),
    );
    eventually("the doomed task is dead", Duration::from_secs(30), || {
        let dead = dead.clone();
        let default = default.clone();
        async move { dead.count(&default).await.ok() == Some(1) }
    })
    .await;
    let letters = dead.list(&default, 10).await.expect("list dead letters");
    assert_eq!(letters[0].attempts, 4);
    let requeued = dead
        .requeue(&default, &[&letters[0].entry_id])
        .await
        .expect("requeue");
    assert_eq!(requeued, 1);

    let runs = |id: &str| {
        recorder
            .runs
            .lock()
            .expect("lock")
            .get(id)
            .map_or(0, Vec::len)
    };
    eventually("every task ran to its end", Duration::from_secs(30), || {
        let done = runs(doomed.id()) == 5
            && runs(ghost_task.id()) == 5
            && runs(delayed.id()) == 5
            && runs(unique.id()) == 5;
        let user = &user;
        async move {
            done && stream_state(user, "default").await == (0, 0)
                && scheduled_count(user).await == 0
        }
    })
    .await;
    assert_eq!(dead.count(&default).await.expect("count"), 0);
    worker.stop().await;

    let denials: Vec<String> = admin
        .acl_denials()
        .await
        .into_iter()
        .filter(|line| !OPTIONAL.iter().any(|optional| line.ends_with(optional)))
        .collect();
    // The test's own refused commands above, and nothing else.
    assert_eq!(
        denials.len(),
        4,
        "Redis refused the queue something: {denials:#?}"
    );
}
