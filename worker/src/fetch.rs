//! Reading new entries (XREADGROUP `>`) in priority order: the queues of one round are tried
//! one by one without blocking; only when all are empty does one read block on all of them.
//! Blocking reads use their own connection, so acks and claims never wait behind them.

use std::time::Duration;

use redis::{
    aio::ConnectionManager,
    streams::{StreamId, StreamReadOptions, StreamReadReply},
};
use simplebank_core::task::{GROUP, Keys, QueueName};

use crate::priority::Priority;

/// Reads new entries for one consumer.
#[derive(Debug)]
pub struct Fetcher {
    conn: ConnectionManager,
    streams: Vec<String>,
    queues: Vec<QueueName>,
    priority: Priority,
    consumer: String,
    block: Duration,
}

impl Fetcher {
    pub fn new(
        conn: ConnectionManager,
        keys: &Keys,
        queues: &[(QueueName, u32)],
        strict: bool,
        consumer: String,
        block: Duration,
    ) -> Self {
        let weights: Vec<u32> = queues.iter().map(|(_, weight)| *weight).collect();
        Self {
            conn,
            streams: queues.iter().map(|(queue, _)| keys.stream(queue)).collect(),
            queues: queues.iter().map(|(queue, _)| queue.clone()).collect(),
            priority: Priority::new(&weights, strict),
            consumer,
            block,
        }
    }

    /// Up to `count` new entries from one queue (or a few more from a blocking read across
    /// all queues); empty when nothing arrived within the block time.
    pub async fn fetch(&mut self, count: usize) -> redis::RedisResult<Vec<(QueueName, StreamId)>> {
        for index in self.priority.next_order() {
            let options = StreamReadOptions::default()
                .group(GROUP, &self.consumer)
                .count(count);
            let reply = self.read(&[&self.streams[index]], options).await?;
            if !reply.is_empty() {
                return Ok(reply);
            }
        }
        let block_ms = usize::try_from(self.block.as_millis()).unwrap_or(usize::MAX);
        let options = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(count)
            .block(block_ms);
        let streams: Vec<&String> = self.streams.iter().collect();
        self.read(&streams, options).await
    }

    async fn read(
        &self,
        streams: &[&String],
        options: StreamReadOptions,
    ) -> redis::RedisResult<Vec<(QueueName, StreamId)>> {
        let ids = vec![">"; streams.len()];
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg(&options)
            .arg("STREAMS")
            .arg(streams)
            .arg(&ids)
            .query_async(&mut self.conn.clone())
            .await?;
        let mut entries = Vec::new();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(position) = self.streams.iter().position(|s| *s == stream.key) else {
                continue;
            };
            let queue = &self.queues[position];
            entries.extend(stream.ids.into_iter().map(|id| (queue.clone(), id)));
        }
        Ok(entries)
    }
}
