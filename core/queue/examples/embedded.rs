//! The queue embedded in a service of your own: a payload type, a typed handler, enqueueing,
//! processing, a retry and a dead letter. Needs a Redis (`REDIS_ADDRESS`, default
//! `127.0.0.1:6379`): `cargo run -p simplebank-queue --example embedded`.

use std::time::Duration;

use simplebank_queue::{
    Backoff, ConsumerSettings, DeadLetters, HandlerError, Handlers, Keys, Namespace, Publisher,
    QueueName, Task, TaskContext, TaskPayload, Worker, connection,
};
use tokio_util::sync::CancellationToken;

/// What the producer sends: any serde type, named once on the wire.
#[derive(serde::Serialize, serde::Deserialize)]
struct Welcome {
    user: String,
}

impl TaskPayload for Welcome {
    const TYPE: &'static str = "example:welcome";
    const MAX_RETRY: u32 = 2;
}

/// Gets the decoded payload and its delivery: bob fails once (and is retried), mallory is
/// refused for good (a dead letter), everyone else is welcomed.
async fn welcome(job: Welcome, cx: TaskContext) -> Result<(), HandlerError> {
    match (job.user.as_str(), cx.attempt()) {
        ("bob", 1) => return Err(HandlerError::new("mail server busy")),
        ("mallory", _) => return Err(HandlerError::skip_retry("address is on the block list")),
        (user, attempt) => println!("welcomed {user} (attempt {attempt})"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("REDIS_ADDRESS").unwrap_or_else(|_| "127.0.0.1:6379".into());
    let namespace = std::env::var("QUEUE_NAMESPACE").unwrap_or_else(|_| "example".into());
    let keys = Keys::new(Namespace::parse(&namespace)?);
    let client = connection::client(&address)?;
    let conn = connection::lazy_manager(client, connection::RESPONSE_TIMEOUT)?;

    let publisher = Publisher::new(conn.clone(), keys.clone());
    for user in ["alice", "bob", "mallory"] {
        publisher
            .publish(&Task::new(&Welcome { user: user.into() })?)
            .await?;
    }

    let mut settings = ConsumerSettings::new("example-1");
    settings.backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    let handlers = Handlers::new().on(welcome);
    let worker = Worker::new(&address, keys.namespace().clone(), settings, handlers)?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));

    // Until nothing is queued, running or waiting for a retry.
    let default = QueueName::parse("default")?;
    while publisher.backlog(std::slice::from_ref(&default)).await? > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for letter in DeadLetters::new(conn, keys).list(&default, 10).await? {
        println!(
            "dead letter: {} after {} attempt(s)",
            letter.error, letter.attempts
        );
    }
    shutdown.cancel();
    running.await??;
    Ok(())
}
