//! Reading new entries (XREADGROUP `>`) in priority order: the queues of one round are tried
//! one by one without blocking; only when all are empty does a read block. Blocking reads use
//! their own connections, so acks and claims never wait behind them. Paused queues (as last
//! refreshed, see `paused`) are left out of every read, blocking or not; when all are paused,
//! a read waits for a change of the flags instead, at most the block time.
//!
//! On one server over plain TCP (where reads go through the reader), a queue that the last
//! read of it found empty is not read alone (a round trip for nothing): it goes out with the
//! next queue of the round in the same round trip, an XREADGROUP of `COUNT 1` over the queues
//! seen empty, then one over the next queue for the rest of the slots. So such a read never
//! brings more entries than it holds slots for, and the queues earlier in the round come
//! first. A queue seen empty joins only while the next one keeps a slot of its own; one found
//! with entries is read alone, with all the slots, at its next turn, so the weights hold
//! between busy queues. When one read of the round trip fails, the entries the other brought
//! (already delivered to this consumer) are still dispatched.
//!
//! How the blocking read is made depends on the deployment. On one server it is one
//! `XREADGROUP ... BLOCK` over the streams of all the open queues. On a Redis Cluster the
//! queues' streams are in different slots (often on different nodes), and a multi-key command
//! across slots is refused (CROSSSLOT), so each open queue gets a blocking read of its own, on
//! a connection of its own (a blocked connection to a node holds up whatever else is sent on
//! it), all waiting at once: an entry on any queue wakes the worker as fast as on one server,
//! and no weight starves another. A blocking read's reply is never dropped (its entries are
//! already delivered to this consumer): a queue's blocking read that is still waiting when
//! another queue woke the worker goes on, and its entries are dispatched when it returns. A
//! queue paused while its blocking read waits gets no new one once it returns (the block time
//! is capped, see `paused`).
//!
//! [`run`] is the fetch loop: it takes free concurrency slots, reads as many entries, and hands
//! each to the dispatcher with its slot. [`Fetcher::fetch`] returns an independent read, so the
//! loop can keep two in flight while entries keep coming. A read may bring more entries than it
//! holds slots for (a cluster's blocking reads hold none; a blocking read across streams counts
//! per stream): those wait in the loop for slots, and no new read starts before they have one.
//! The loop never waits for a slot inside a branch: the reads in flight may hold every slot,
//! and only the loop can hand theirs on. A waiting entry has no lease: one that waited half the
//! visibility timeout is left pending instead (the reclaimer, this worker's or another's, takes
//! it over once its timeout has passed, and runs it once), and so are those still waiting at
//! shutdown, which then does not wait for a slot.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{Value, streams::StreamReadOptions};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use super::{dispatch::Dispatcher, group, paused::Paused, priority::Priority};
use crate::{
    connection::{
        Connection,
        reader::{Reader, Resp},
    },
    fields::{self, Delivered, Entry},
    keys::{GROUP, Keys, QueueName},
    report,
};

/// How many reads may be in flight at once while entries keep coming: the next read goes out
/// while the last batch runs, so a busy worker is not idle for a round trip per batch. An idle
/// worker has one (blocking) read at a time.
const READS_IN_FLIGHT: usize = 2;

/// What the fetch loop reads for and with.
pub(crate) struct Reading<'a> {
    /// For re-creating the consumer groups if they vanish.
    pub conn: &'a mut Connection,
    pub keys: &'a Keys,
    pub queues: &'a [QueueName],
    pub slots: &'a Arc<Semaphore>,
    pub concurrency: usize,
    pub dispatcher: &'a Arc<Dispatcher>,
    /// Entries that waited half of it for a slot are left pending (see the module header).
    pub visibility_timeout: Duration,
}

/// Entries read and not yet dispatched, for want of a free slot, with when they were read.
#[derive(Debug)]
struct Waiting {
    entries: VecDeque<(Instant, QueueName, Delivered)>,
    /// How long one may wait before it is left pending for the reclaimer.
    stale_after: Duration,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Leaves every waiting entry pending (at shutdown).
    fn leave_pending(&mut self) {
        if !self.entries.is_empty() {
            tracing::debug!(
                entries = self.entries.len(),
                "shutting down: entries waiting for a slot are left pending for the reclaimer"
            );
            self.entries.clear();
        }
    }
}

/// A read in flight, with the concurrency slots it reads for.
type Read = (Vec<OwnedSemaphorePermit>, redis::RedisResult<Entries>);

/// What a read brought.
type Entries = Vec<(QueueName, Delivered)>;

/// Why a read brought nothing.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("XREADGROUP failed")]
    Redis(#[from] redis::RedisError),
    /// The task running the read panicked (a bug, not a Redis failure).
    #[error("the read task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads and dispatches until `shutdown`. A read is never cut short (its entries are already
/// delivered to this consumer): on `shutdown` no new read starts, and the entries of the reads
/// in flight (a cluster's per-queue blocking reads included) are still dispatched where a slot
/// is free; those that would wait for one are left pending for the reclaimer.
pub(crate) async fn run(mut fetcher: Fetcher, reading: Reading<'_>, shutdown: &CancellationToken) {
    let Reading {
        conn,
        keys,
        queues,
        slots,
        concurrency,
        dispatcher,
        visibility_timeout,
    } = reading;
    let mut reads: JoinSet<Read> = JoinSet::new();
    // Cluster only: the per-queue blocking reads in flight, by task id -> queue index.
    let mut blocked = Blocked::default();
    let mut waiting = Waiting {
        entries: VecDeque::new(),
        stale_after: visibility_timeout / 2,
    };
    let mut failing = false;
    // Whether the last read brought entries: only then may a second read overlap.
    let mut busy = false;
    loop {
        if shutdown.is_cancelled() {
            waiting.leave_pending();
        }
        let limit = if busy { READS_IN_FLIGHT } else { 1 };
        // An idle worker whose queues' blocking reads are waiting waits for them; entries
        // already read go first.
        let may_read = !shutdown.is_cancelled()
            && waiting.is_empty()
            && reads.len() < limit
            && (busy || blocked.reads.is_empty());
        tokio::select! {
            biased;
            Some(done) = reads.join_next() => {
                let (permits, result) = match done {
                    Ok((permits, read)) => (permits, read.map_err(ReadError::Redis)),
                    Err(join) => (Vec::new(), Err(ReadError::Task(join))),
                };
                match result {
                    Ok(mut entries) => {
                        recovered(&mut failing);
                        busy = !entries.is_empty();
                        dispatch(entries.drain(..), permits, &mut waiting, slots, dispatcher);
                        fetcher.recycle(entries);
                    }
                    Err(err) => {
                        busy = false;
                        drop(permits);
                        read_failed(&err, &mut *conn, keys, queues, &mut failing, shutdown).await;
                    }
                }
                if !busy && !shutdown.is_cancelled() {
                    blocked.start(&fetcher, slots);
                }
            }
            Some(done) = blocked.reads.join_next_with_id() => {
                let result = match done {
                    Ok((id, read)) => {
                        blocked.queues.remove(&id);
                        read.map_err(ReadError::Redis)
                    }
                    Err(join) => {
                        blocked.queues.remove(&join.id());
                        Err(ReadError::Task(join))
                    }
                };
                match result {
                    Ok(mut entries) => {
                        recovered(&mut failing);
                        busy |= !entries.is_empty();
                        dispatch(entries.drain(..), Vec::new(), &mut waiting, slots, dispatcher);
                        fetcher.recycle(entries);
                    }
                    Err(err) => {
                        read_failed(&err, &mut *conn, keys, queues, &mut failing, shutdown).await;
                    }
                }
                if !busy && !shutdown.is_cancelled() {
                    blocked.start(&fetcher, slots);
                }
            }
            permit = Arc::clone(slots).acquire_owned(), if may_read || !waiting.is_empty() => {
                let Ok(first) = permit else { return };
                if !waiting.is_empty() {
                    dispatch([], vec![first], &mut waiting, slots, dispatcher);
                    continue;
                }
                // Busy: reads of half the slots each, so one is in flight while the entries
                // of the other run (double buffering). Idle: one read for every free slot.
                let cap = if busy { concurrency.div_ceil(READS_IN_FLIGHT) } else { usize::MAX };
                // Sized for the slots free now: no growing on the way.
                let mut permits = Vec::with_capacity(cap.min(slots.available_permits() + 1));
                permits.push(first);
                while permits.len() < cap
                    && let Ok(permit) = Arc::clone(slots).try_acquire_owned()
                {
                    permits.push(permit);
                }
                let read = fetcher.fetch(permits.len());
                // Boxed: unboxed, the read made its task's cell larger than 1 KiB, which glibc
                // serves only after merging its free lists (BENCHMARKS.md, "Runners that
                // outlive their entry").
                reads.spawn(Box::pin(async move { (permits, read.await) }));
            }
            // Entries waiting for a slot do not hold up a shutdown: they stay pending.
            () = shutdown.cancelled(), if reads.is_empty() && blocked.reads.is_empty() => {
                waiting.leave_pending();
                return;
            }
        }
        if shutdown.is_cancelled()
            && reads.is_empty()
            && blocked.reads.is_empty()
            && waiting.is_empty()
        {
            return;
        }
    }
}

/// Hands `entries`, after those already `waiting`, to the dispatcher, each with a slot: one of
/// `permits`, or a free one taken now. What finds no free slot waits (in order) for the loop's
/// next one; one that has waited too long is left pending; the permits left over are released.
fn dispatch(
    entries: impl IntoIterator<Item = (QueueName, Delivered)>,
    mut permits: Vec<OwnedSemaphorePermit>,
    waiting: &mut Waiting,
    slots: &Arc<Semaphore>,
    dispatcher: &Arc<Dispatcher>,
) {
    let now = Instant::now();
    waiting
        .entries
        .extend((entries.into_iter()).map(|(queue, entry)| (now, queue, entry)));
    while let Some(permit) = permits
        .pop()
        .or_else(|| Arc::clone(slots).try_acquire_owned().ok())
    {
        let Some((read_at, queue, entry)) = waiting.entries.pop_front() else {
            return;
        };
        if read_at.elapsed() >= waiting.stale_after {
            tracing::debug!(
                entry_id = entry.id(),
                "waited too long for a slot: left pending for the reclaimer"
            );
            permits.push(permit);
            continue;
        }
        dispatcher.spawn(queue, entry, None, permit);
    }
}

fn recovered(failing: &mut bool) {
    if *failing {
        tracing::info!("reading from Redis again");
        *failing = false;
    }
}

/// After a failed read: re-creates the groups if they vanished, says so once per outage, and
/// waits a little before the next read.
async fn read_failed(
    err: &ReadError,
    conn: &mut Connection,
    keys: &Keys,
    queues: &[QueueName],
    failing: &mut bool,
    shutdown: &CancellationToken,
) {
    if let ReadError::Redis(err) = err
        && group::is_missing(err)
    {
        let _ = group::ensure(conn, keys, queues).await;
    }
    if !*failing {
        tracing::warn!(error = %report::chain(err), "cannot read tasks; retrying");
        *failing = true;
    }
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
}

/// The per-queue blocking reads of a cluster in flight, and the queue each one reads.
#[derive(Default)]
struct Blocked {
    reads: JoinSet<redis::RedisResult<Entries>>,
    queues: HashMap<tokio::task::Id, usize>,
}

impl Blocked {
    /// Starts a blocking read on each open (not paused) queue that has none in flight, for as
    /// many entries as there are free slots. Nothing on one server, where [`Fetcher::fetch`]
    /// blocks itself.
    fn start(&mut self, fetcher: &Fetcher, slots: &Semaphore) {
        let count = slots.available_permits().max(1);
        let open = fetcher.target.paused.now();
        for index in 0..fetcher.target.streams.len() {
            if !open.is_open(index) || self.queues.values().any(|&blocking| blocking == index) {
                continue;
            }
            let Some(read) = fetcher.block_on(index, count) else {
                return;
            };
            // Boxed, as the loop's reads are (see `run`).
            let id = self.reads.spawn(Box::pin(read)).id();
            self.queues.insert(id, index);
        }
    }
}

/// Reads new entries for one consumer.
#[derive(Debug)]
pub(crate) struct Fetcher {
    target: Arc<Target>,
    priority: Priority,
}

/// What a read needs, shared by reads in flight.
#[derive(Debug)]
struct Target {
    /// Non-blocking reads (and, on one server, the blocking read over all streams), unless
    /// `reader` is set.
    conn: Connection,
    /// One server over plain TCP: reads go out on connections of their own instead of
    /// `conn`, their replies decoded from their bytes (see `reader`'s module header, and
    /// [`decode`]).
    reader: Option<Reader>,
    /// Cluster only: one connection per queue (by index) for its blocking reads.
    blocking: Option<Vec<Connection>>,
    streams: Vec<String>,
    queues: Vec<QueueName>,
    consumer: String,
    block: Duration,
    paused: Paused,
    /// By queue: whether the last read of its stream brought nothing.
    seen_empty: Vec<AtomicBool>,
    /// Emptied vectors of past reads, which the reader's replies are decoded into: a read's
    /// vector is a large allocation (BENCHMARKS.md, "The worker's vectors kept").
    spare: Mutex<Vec<Entries>>,
}

/// The connections reads go out on.
pub(crate) struct ReadConnections {
    /// Non-blocking reads (and, on one server, the blocking read over all streams).
    pub conn: Connection,
    /// Instead of `conn`, where it can be used (one server over plain TCP).
    pub reader: Option<Reader>,
    /// Cluster only: one connection per queue, in the order of the queues, for its blocking
    /// reads.
    pub blocking: Option<Vec<Connection>>,
}

impl Fetcher {
    /// Reads with `conns.reader` if set, else on `conns.conn`; with `conns.blocking` (on a cluster) each queue blocks on its
    /// own connection, else one read blocks on all streams on `conns.conn`.
    pub(crate) fn new(
        conns: ReadConnections,
        keys: &Keys,
        queues: &[(QueueName, u32)],
        strict: bool,
        consumer: String,
        block: Duration,
        paused: Paused,
    ) -> Self {
        let weights: Vec<u32> = queues.iter().map(|(_, weight)| *weight).collect();
        Self {
            target: Arc::new(Target {
                conn: conns.conn,
                reader: conns.reader,
                blocking: conns.blocking,
                streams: queues.iter().map(|(queue, _)| keys.stream(queue)).collect(),
                queues: queues.iter().map(|(queue, _)| queue.clone()).collect(),
                consumer,
                block,
                paused,
                seen_empty: queues.iter().map(|_| AtomicBool::new(false)).collect(),
                spare: Mutex::new(Vec::new()),
            }),
            priority: Priority::new(&weights, strict),
        }
    }

    /// A read of up to `count` new entries from one queue (or, on one server, a few more from
    /// a blocking read across all queues); empty when nothing arrived within the block time
    /// (on a cluster: at once, and the loop starts the queues' blocking reads). The queue
    /// order is taken now; the read is independent of `self`, so reads can overlap.
    pub(crate) fn fetch(
        &mut self,
        count: usize,
    ) -> impl Future<Output = redis::RedisResult<Entries>> + Send + 'static {
        let order = self.priority.next_order();
        let target = Arc::clone(&self.target);
        async move { target.fetch(&order, count).await }
    }

    /// Keeps `entries` (a read's, now handed on) for a later read.
    fn recycle(&self, entries: Entries) {
        self.target.recycle(entries);
    }

    /// Cluster only: a blocking read of up to `count` new entries of the queue at `index`, on
    /// that queue's own connection; `None` on one server.
    fn block_on(
        &self,
        index: usize,
        count: usize,
    ) -> Option<impl Future<Output = redis::RedisResult<Entries>> + Send + 'static> {
        let conn = self.target.blocking.as_ref()?.get(index)?.clone();
        let target = Arc::clone(&self.target);
        Some(async move {
            let options = target.options(count).block(target.block_ms());
            target.read(conn, &[(&[index], options)]).await
        })
    }
}

impl Target {
    async fn fetch(&self, order: &[usize], count: usize) -> redis::RedisResult<Entries> {
        let open = self.paused.now();
        let order: Vec<usize> = (order.iter().copied())
            .filter(|&index| open.is_open(index))
            .collect();
        // The queues are tried in `order`. With the reader (one server over plain TCP), those
        // the last read of them found empty go out with the next one, in the same round
        // trip, for at most one entry each, so the read brings no more than its `count` (see
        // the module header).
        let merge = self.reader.is_some();
        let mut start = 0;
        for (position, &index) in order.iter().enumerate() {
            let last = position + 1 == order.len();
            let empty = &order[start..position];
            // It joins only while the next queue keeps at least one slot of its own.
            if merge
                && !last
                && self.seen_empty[index].load(Ordering::Relaxed)
                && empty.len() + 2 <= count
            {
                continue;
            }
            let mut reads = Vec::with_capacity(2);
            if !empty.is_empty() {
                reads.push((empty, self.options(1)));
            }
            reads.push((
                &order[position..=position],
                self.options(count - empty.len()),
            ));
            let reply = self.read(self.conn.clone(), &reads).await?;
            if !reply.is_empty() {
                return Ok(reply);
            }
            self.recycle(reply);
            start = position + 1;
        }
        if order.is_empty() {
            // Every queue paused (or their state not known yet): nothing to read until that
            // changes; wait for it, at most a block time, as a blocking read would.
            let mut paused = self.paused.clone();
            let _ = tokio::time::timeout(self.block, paused.changed()).await;
            return Ok(Vec::new());
        }
        if self.blocking.is_some() {
            // A cluster: the loop starts the open queues' blocking reads (`Blocked::start`).
            return Ok(Vec::new());
        }
        // Woken by new entries, it brings those of one stream (Redis serves a blocked read on
        // the first stream that gets some), at most `count`.
        let options = self.options(count).block(self.block_ms());
        self.read(self.conn.clone(), &[(&order, options)]).await
    }

    fn options(&self, count: usize) -> StreamReadOptions {
        StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(count)
    }

    fn block_ms(&self) -> usize {
        usize::try_from(self.block.as_millis()).unwrap_or(usize::MAX)
    }

    /// `reads` in one round trip, each an XREADGROUP of the streams of the queues at its
    /// indexes: their entries in that order. Notes which queues they found empty.
    async fn read(
        &self,
        mut conn: Connection,
        reads: &[(&[usize], StreamReadOptions)],
    ) -> redis::RedisResult<Entries> {
        let cmds: Vec<redis::Cmd> = (reads.iter())
            .map(|(indexes, options)| {
                let streams: Vec<&String> = indexes.iter().map(|&i| &self.streams[i]).collect();
                let ids = vec![">"; streams.len()];
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg(options).arg("STREAMS").arg(&streams).arg(&ids);
                cmd
            })
            .collect();
        // By read: its entries, each with the index of its queue, or why it failed.
        let replies = match &self.reader {
            Some(reader) => {
                let cmds: Vec<&redis::Cmd> = cmds.iter().collect();
                // A reply that does not decode (well framed, as the reader checked) fails its
                // own read only: the other read's entries, already delivered, still run.
                reader
                    .query_all(&cmds, |reply| {
                        Ok(decode(reply, &self.streams, &self.queues, self.spare()))
                    })
                    .await?
            }
            None => {
                // One at a time (several only with the reader, see `fetch`).
                let mut replies = Vec::with_capacity(cmds.len());
                for cmd in &cmds {
                    let reply = read_reply(cmd.query_async(&mut conn).await?);
                    replies.push(reply.map(|streams| self.by_queue(streams)));
                }
                replies
            }
        };
        let mut entries = Entries::new();
        let mut failed = None;
        for ((indexes, _), read) in reads.iter().zip(replies) {
            let read = match read {
                Ok(read) => read,
                Err(err) => {
                    // Not seen empty: read alone next time, where its error shows.
                    for &index in *indexes {
                        self.seen_empty[index].store(false, Ordering::Relaxed);
                    }
                    failed.get_or_insert(err);
                    continue;
                }
            };
            for &index in *indexes {
                let found = read.iter().any(|(queue, _)| *queue == self.queues[index]);
                self.seen_empty[index].store(!found, Ordering::Relaxed);
            }
            // A read's entries are kept as decoded, not copied; a vector emptied on the way
            // is kept for a later read.
            if entries.is_empty() {
                self.recycle(std::mem::replace(&mut entries, read));
            } else {
                let mut read = read;
                entries.append(&mut read);
                self.recycle(read);
            }
        }
        match failed {
            // Entries another read of the round trip delivered are this consumer's already:
            // they run, and the failed queue's error shows at its next read.
            Some(err) if entries.is_empty() => Err(err),
            _ => Ok(entries),
        }
    }

    /// An empty vector for a read's entries: one a past read left, if any.
    fn spare(&self) -> Entries {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        spare.pop().unwrap_or_default()
    }

    /// Keeps `entries`, emptied, for a later read's [`Target::spare`]: at most
    /// [`READS_IN_FLIGHT`] of them, and only with the reader, whose replies are decoded into
    /// them.
    fn recycle(&self, mut entries: Entries) {
        if self.reader.is_none() || entries.capacity() == 0 {
            return;
        }
        entries.clear();
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < READS_IN_FLIGHT {
            spare.push(entries);
        }
    }

    /// The entries of `streams` (as [`read_reply`] gives them) with their
    /// queue; those of a stream not read are left out.
    fn by_queue(&self, streams: Vec<(String, Vec<Entry>)>) -> Entries {
        let mut read = Entries::new();
        for (stream, entries) in streams {
            if let Some(index) = self.streams.iter().position(|s| *s == stream) {
                let queue = &self.queues[index];
                read.extend((entries.into_iter()).map(|e| (queue.clone(), Delivered::Fields(e))));
            }
        }
        read
    }
}

/// An XREADGROUP reply of `streams` (those of `queues`) read straight from its bytes (the
/// reader's): its entries with their queue, each decoded into its task as it is
/// read, so no [`Value`] is built on the way (BENCHMARKS.md, "Entries decoded from the
/// reply's bytes"). An entry of another shape, or one that is no task, is read as [`entry`]
/// reads it, and decoded (or dead-lettered) when it runs, as from any other reply; those of
/// a stream not read are left out.
fn decode(
    reply: &[u8],
    streams: &[String],
    queues: &[QueueName],
    mut read: Entries,
) -> redis::RedisResult<Entries> {
    debug_assert!(read.is_empty(), "a read's entries go into an empty vector");
    if let Some(err) = Resp::error(reply) {
        return Err(err);
    }
    if reply == b"$-1\r\n" {
        // A nil reply (nothing new) as RESP2 writes nil in general: `*-1` is Redis' own.
        return Ok(read);
    }
    let mut resp = Resp::new(reply);
    let Some(count_streams) = resp.array().ok_or_else(unexpected)? else {
        return Ok(read);
    };
    let mut fields = Vec::new();
    for _ in 0..count_streams {
        let (Some(Some(2)), Some(stream), Some(Some(count))) =
            (resp.array(), resp.bulk(), resp.array())
        else {
            return Err(unexpected());
        };
        let Some(index) = streams.iter().position(|s| s.as_bytes() == stream) else {
            // A stream not read: its entries are left out.
            for _ in 0..count {
                resp.value()?;
            }
            continue;
        };
        read.reserve(count);
        for _ in 0..count {
            let start = resp.position();
            let decoded = raw_entry(&mut resp, &mut fields).and_then(|id| {
                let id = std::str::from_utf8(id).ok()?.to_owned();
                let task = fields::decode_raw(queues[index].clone(), &fields).ok()?;
                Some(Delivered::Task {
                    id,
                    task: Box::new(task),
                })
            });
            let entry = match decoded {
                Some(task) => task,
                None => {
                    resp.rewind(start);
                    Delivered::Fields(entry(resp.value()?)?)
                }
            };
            read.push((queues[index].clone(), entry));
        }
    }
    Ok(read)
}

/// The id of the entry `[id, [field, value, ...]]` next in `resp`, its fields (names and
/// values, all bulk strings) put in `fields`; `None` if it is of another shape.
fn raw_entry<'a>(resp: &mut Resp<'a>, fields: &mut Vec<(&'a [u8], &'a [u8])>) -> Option<&'a [u8]> {
    fields.clear();
    if resp.array()? != Some(2) {
        return None;
    }
    let id = resp.bulk()?;
    let len = resp.array()??;
    if len % 2 != 0 {
        return None;
    }
    for _ in 0..len / 2 {
        fields.push((resp.bulk()?, resp.bulk()?));
    }
    Some(id)
}

/// The entries of an XREAD/XREADGROUP reply, by stream, moved out of the reply rather than
/// copied into the hash maps of the generic `StreamReadReply` (BENCHMARKS.md, step 3).
fn read_reply(reply: Value) -> redis::RedisResult<Vec<(String, Vec<Entry>)>> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(streams) => streams,
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| pair(stream).ok_or_else(unexpected))
            .collect::<redis::RedisResult<_>>()?,
        _ => return Err(unexpected()),
    };
    streams
        .into_iter()
        .map(|(key, entries)| {
            let Value::Array(entries) = entries else {
                return Err(unexpected());
            };
            let entries = entries
                .into_iter()
                .map(entry)
                .collect::<redis::RedisResult<_>>()?;
            Ok((text(key).ok_or_else(unexpected)?, entries))
        })
        .collect()
}

/// One entry: `[id, [field, value, ...]]`; the fields are nil for an entry deleted while
/// pending. A field name that is not UTF-8 is kept, with its bad bytes replaced: it is no
/// field a task has, so the entry is judged by its other fields (and dead-lettered if they do
/// not make a task) instead of failing the read of every entry with it.
pub(super) fn entry(raw: Value) -> redis::RedisResult<Entry> {
    let (id, fields) = pair(raw).ok_or_else(unexpected)?;
    let id = text(id).ok_or_else(unexpected)?;
    let fields = match fields {
        Value::Nil => Vec::new(),
        Value::Map(fields) => fields,
        Value::Array(flat) => {
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                fields.push((name, value));
            }
            fields
        }
        _ => return Err(unexpected()),
    };
    let fields = fields
        .into_iter()
        .map(|(name, value)| Some((name_text(name)?, value)))
        .collect::<Option<_>>()
        .ok_or_else(unexpected)?;
    Ok(Entry { id, fields })
}

/// A field name as text, its bytes that are not UTF-8 replaced.
fn name_text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(
            String::from_utf8(bytes)
                .unwrap_or_else(|bad| String::from_utf8_lossy(bad.as_bytes()).into_owned()),
        ),
        other => text(other),
    }
}

fn pair(value: Value) -> Option<(Value, Value)> {
    let Value::Array(items) = value else {
        return None;
    };
    let [first, second] = <[Value; 2]>::try_from(items).ok()?;
    Some((first, second))
}

pub(super) fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

fn unexpected() -> redis::RedisError {
    unexpected_reply("XREADGROUP")
}

/// A reply of `command` that is not of the shape it documents.
pub(super) fn unexpected_reply(command: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        command.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        TaskPayload,
        connection::{Endpoint, Tls},
        task::{Envelope, Task},
        testing::{RedisServer, TestRedis, eventually},
    };

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Nothing;

    impl TaskPayload for Nothing {
        const TYPE: &'static str = "test:nothing";
    }

    /// One fetch of up to `count` entries: the queues of the entries it brought, and the
    /// XREADGROUP commands it took (the server's own count).
    async fn counted(
        fetcher: &mut Fetcher,
        admin: &mut redis::aio::MultiplexedConnection,
        count: usize,
    ) -> (Vec<String>, u64) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(admin)
            .await
            .unwrap();
        let read = fetcher.fetch(count).await.unwrap();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(admin)
            .await
            .unwrap();
        let line = stats.lines().find(|l| l.starts_with("cmdstat_xreadgroup:"));
        let calls = line
            .and_then(|l| l.split([':', '=', ',']).nth(2))
            .map_or(0, |calls| calls.parse().unwrap());
        let queues = read.iter().map(|(queue, _)| queue.to_string()).collect();
        (queues, calls)
    }

    /// `n` entries (of one field) for `queue`'s stream, as a pipeline.
    fn xadds(keys: &Keys, queue: &QueueName, n: usize) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for i in 0..n {
            pipe.cmd("XADD")
                .arg(keys.stream(queue))
                .arg("*")
                .arg("n")
                .arg(i)
                .ignore();
        }
        pipe
    }

    /// A fetcher of the queues `names` (strict, equal weights: in their order) on `server`,
    /// blocking `block`, once the pause flags are known; cancel the token to stop their loop.
    async fn fetcher(
        server: &RedisServer,
        keys: &Keys,
        names: &[QueueName],
        block: Duration,
    ) -> (Fetcher, CancellationToken) {
        let endpoint = Endpoint::parse(&server.address(), false, &Tls::default()).unwrap();
        let mut conn = endpoint.connect_lazy(Duration::from_secs(5)).unwrap();
        group::ensure(&mut conn, keys, names).await.unwrap();
        let stop = CancellationToken::new();
        let paused =
            super::super::paused::watch(conn.clone(), keys.clone(), names.to_vec(), stop.clone());
        let weights: Vec<(QueueName, u32)> = names.iter().map(|q| (q.clone(), 1)).collect();
        let fetcher = Fetcher::new(
            ReadConnections {
                conn,
                reader: Reader::for_endpoint(&endpoint, block + Duration::from_secs(5)),
                blocking: None,
            },
            keys,
            &weights,
            true,
            "c1".into(),
            block,
            paused.clone(),
        );
        eventually("the pause flags are known", Duration::from_secs(5), || {
            let open = paused.now().is_open(0);
            async move { open }
        })
        .await;
        (fetcher, stop)
    }

    /// Queues found empty go out with the next one, in the same round trip, for one entry
    /// each: never more entries than the read's slots, those of the queues earlier in the
    /// round first; a queue found with entries is read alone again.
    #[tokio::test]
    async fn queues_seen_empty_are_read_with_the_next_one() {
        // A server of its own: the test counts the reads it serves.
        let server = RedisServer::start().await;
        let redis = TestRedis::at(server.address());
        let keys = redis.keys();
        let names = ["critical", "low", "default"].map(|q| QueueName::parse(q).unwrap());
        let (mut fetcher, stop) = fetcher(&server, &keys, &names, Duration::from_millis(10)).await;
        let mut admin = redis.conn().await;
        let add = |queue: &QueueName, n: usize| xadds(&keys, queue, n);
        let queues = |list: &[(&str, usize)]| -> Vec<String> {
            (list.iter())
                .flat_map(|&(queue, n)| std::iter::repeat_n(queue.to_owned(), n))
                .collect()
        };
        let _: () = add(&names[2], 20).query_async(&mut admin).await.unwrap();

        // Nothing known yet: critical (empty), low (empty), then default, one by one.
        let read = counted(&mut fetcher, &mut admin, 4).await;
        assert_eq!(read, (queues(&[("default", 4)]), 3));

        // Both seen empty: read with default in one round trip, one entry each at most, so
        // default keeps the rest of the slots.
        let read = counted(&mut fetcher, &mut admin, 4).await;
        assert_eq!(read, (queues(&[("default", 2)]), 2));

        // Entries of both meanwhile: one of each, first, and no more than the four slots.
        let _: () = add(&names[0], 5).query_async(&mut admin).await.unwrap();
        let _: () = add(&names[1], 5).query_async(&mut admin).await.unwrap();
        let read = counted(&mut fetcher, &mut admin, 4).await;
        let expected = queues(&[("critical", 1), ("low", 1), ("default", 2)]);
        assert_eq!(read, (expected, 2));

        // Critical was found with entries: read alone again, with all the slots.
        let read = counted(&mut fetcher, &mut admin, 4).await;
        assert_eq!(read, (queues(&[("critical", 4)]), 1));

        // Two slots. Critical, found with entries last time, is read alone (empty now), then
        // low, alone too (it had entries).
        let read = counted(&mut fetcher, &mut admin, 2).await;
        assert_eq!(read, (queues(&[("low", 2)]), 2));
        // Critical, seen empty, joins low: one entry at most, so low keeps one slot.
        let read = counted(&mut fetcher, &mut admin, 2).await;
        assert_eq!(read, (queues(&[("low", 1)]), 2));

        // Critical's group gone (its stream deleted) while low has entries: low's are
        // not lost to critical's error in the same round trip; critical, then read alone,
        // shows the error (which makes the fetch loop re-create the groups).
        let _: () = add(&names[1], 1).query_async(&mut admin).await.unwrap();
        let _: () = redis::cmd("DEL")
            .arg(keys.stream(&names[0]))
            .query_async(&mut admin)
            .await
            .unwrap();
        let read = counted(&mut fetcher, &mut admin, 4).await;
        assert_eq!(read, (queues(&[("low", 2)]), 2));
        let err = fetcher.fetch(4).await.unwrap_err();
        assert_eq!(err.code(), Some("NOGROUP"), "{err}");
        stop.cancel();
    }

    /// The vectors reads' entries are decoded into are kept across reads: every vector kept,
    /// or handed back by the loop once it has dispatched a read's entries, is after the next
    /// read still kept or that read's result, whichever way the round trip goes (a queue read
    /// alone and found empty, two reads in one with entries in one or both), and no more are
    /// kept than reads go in flight.
    #[tokio::test]
    async fn reads_fill_the_vectors_past_reads_left() {
        let server = RedisServer::start().await;
        let redis = TestRedis::at(server.address());
        let keys = redis.keys();
        let names = ["critical", "default"].map(|q| QueueName::parse(q).unwrap());
        let (mut fetcher, stop) = fetcher(&server, &keys, &names, Duration::from_millis(10)).await;
        let mut admin = redis.conn().await;
        let add = |queue: &QueueName, n: usize| xadds(&keys, queue, n);
        let _: () = add(&names[1], 100).query_async(&mut admin).await.unwrap();
        let kept = |fetcher: &Fetcher| -> Vec<*const (QueueName, Delivered)> {
            let spare = fetcher.target.spare.lock().unwrap();
            assert!(spare.len() <= READS_IN_FLIGHT);
            assert!(spare.iter().all(|v| v.capacity() > 0 && v.is_empty()));
            spare.iter().map(|v| v.as_ptr()).collect()
        };

        // Critical alone (empty), then default; and a vector handed back as by a second
        // read in flight, so that a round trip of two reads takes two kept ones.
        let mut read = fetcher.fetch(8).await.unwrap();
        fetcher.recycle(Vec::with_capacity(16));
        for round in 0..3 {
            let mut before = kept(&fetcher);
            before.push(read.as_ptr());
            fetcher.recycle(read);
            // Critical, seen empty, with default in one round trip: with an entry of its own
            // (both reads bring entries); then alone, found empty again, then default alone;
            // then with default in one round trip, empty.
            if round == 0 {
                let _: () = add(&names[0], 1).query_async(&mut admin).await.unwrap();
            }
            read = fetcher.fetch(8).await.unwrap();
            assert!(!read.is_empty(), "round {round}");
            let mut after = kept(&fetcher);
            after.push(read.as_ptr());
            for at in &before {
                assert!(after.contains(at), "round {round}: a vector was dropped");
            }
        }
        stop.cancel();
    }

    /// RESP2 bytes of `value`, as Redis writes them (`Nil` as the nil array).
    fn resp(value: &Value) -> Vec<u8> {
        match value {
            Value::Nil => b"*-1\r\n".to_vec(),
            Value::Int(n) => format!(":{n}\r\n").into_bytes(),
            Value::SimpleString(text) => format!("+{text}\r\n").into_bytes(),
            Value::BulkString(bytes) => {
                let mut out = format!("${}\r\n", bytes.len()).into_bytes();
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
                out
            }
            Value::Array(items) => {
                let mut out = format!("*{}\r\n", items.len()).into_bytes();
                items.iter().for_each(|item| out.extend(resp(item)));
                out
            }
            other => panic!("not written here: {other:?}"),
        }
    }

    /// What a read gives, entry by entry: its queue, its id, and its task (as
    /// the dispatcher will decode it), or its fields if it is no task.
    type Outcome = (QueueName, String, Result<Envelope, Vec<(String, Value)>>);

    fn outcomes(read: Entries) -> Vec<Outcome> {
        (read.into_iter())
            .map(|(queue, delivered)| match delivered {
                Delivered::Task { id, task } => (queue, id, Ok(*task)),
                Delivered::Fields(entry) => {
                    let task = fields::decode_entry(queue.clone(), &entry);
                    (queue, entry.id, task.map_err(|_| entry.fields))
                }
            })
            .collect()
    }

    /// An XREADGROUP reply decoded from its bytes gives what the same reply read as
    /// [`Value`]s gives (the redis crate's path), for the entries of every shape; the tasks
    /// are decoded as they are read, the rest left to the dispatcher.
    #[test]
    fn replies_decoded_from_their_bytes_give_what_values_give() {
        let queues = ["critical", "default"].map(|q| QueueName::parse(q).unwrap());
        let streams: Vec<String> = queues
            .iter()
            .map(|q| format!("{{ns:{q}}}:stream"))
            .collect();
        let task = |payload: &str| {
            let mut task = Envelope::first(Task::new(&Nothing).unwrap());
            task.task.payload = payload.to_owned();
            task.task.traceparent =
                Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
            task
        };
        let flat = |fields: &[(&[u8], Value)]| {
            Value::Array(
                (fields.iter())
                    .flat_map(|(name, value)| [Value::BulkString(name.to_vec()), value.clone()])
                    .collect(),
            )
        };
        let encoded = |task: &Envelope| -> Vec<(&'static [u8], Value)> {
            (fields::encode(task).into_iter())
                .map(|(name, value)| (name.as_bytes(), Value::BulkString(value.into_bytes())))
                .collect()
        };
        // CR/LF, NUL, bidi controls and look-alikes in a value; a length of many digits.
        let hostile = task("{\"a\":\"x\\r\\n\u{0}\u{202e}\u{0430}dmin\r\n*1\r\n$-1\r\n\"}");
        let long = task(&format!("\"{}\"", "y".repeat(100_000)));
        // A name that is not UTF-8 (first, so a match on its lossy or stripped form would win).
        let mut odd_name = encoded(&hostile);
        odd_name.insert(0, (b"\xffid", bulk("other")));
        // A name twice: the first counts.
        odd_name.push((b"payload", bulk("other")));
        let mut missing = encoded(&hostile);
        missing.retain(|(name, _)| *name != b"type");
        let mut number = encoded(&hostile);
        number.retain(|(name, _)| *name != b"max_retry");
        number.push((b"max_retry", Value::Int(3)));
        // A field sent as a nil bulk string (marked here, replaced in the bytes below).
        let mut nil_value = encoded(&hostile);
        nil_value.push((b"traceparent", bulk("NIL-BULK")));
        nil_value.retain(|(name, value)| *name != b"traceparent" || *value == bulk("NIL-BULK"));
        // A name without its value.
        let mut dangling = flat(&encoded(&hostile));
        if let Value::Array(items) = &mut dangling {
            items.push(bulk("deadline"));
        }
        let entry = |id: &str, fields: Value| Value::Array(vec![bulk(id), fields]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk(&streams[1]),
                Value::Array(vec![
                    entry("1-0", flat(&encoded(&hostile))),
                    entry("1-1", flat(&encoded(&long))),
                    entry("1-2", flat(&odd_name)),
                    entry("1-3", flat(&missing)),
                    entry("1-4", Value::Nil),
                    entry("1-5", flat(&number)),
                    entry("1-6", flat(&[(b"id", bulk("x")), (b"odd", Value::Nil)])),
                    entry("1-7", flat(&nil_value)),
                    entry("1-8", dangling),
                    Value::Array(vec![
                        Value::SimpleString("1-9".into()),
                        flat(&encoded(&hostile)),
                    ]),
                ]),
            ]),
            // A stream not read: left out.
            Value::Array(vec![
                bulk("{ns:other}:stream"),
                Value::Array(vec![entry("2-0", flat(&encoded(&hostile)))]),
            ]),
            Value::Array(vec![
                bulk(&streams[0]),
                Value::Array(vec![entry("3-0", flat(&encoded(&hostile)))]),
            ]),
        ]);
        let marked = resp(&reply);
        let mark = b"$8\r\nNIL-BULK\r\n";
        let at = marked.windows(mark.len()).position(|w| w == mark).unwrap();
        let bytes = [&marked[..at], b"$-1\r\n", &marked[at + mark.len()..]].concat();
        let ours = decode(&bytes, &streams, &queues, Vec::new()).unwrap();
        // A read fills the vector it is given (one a past read left), not a new one.
        let spare: Entries = Vec::with_capacity(64);
        let at = spare.as_ptr();
        let again = decode(&bytes, &streams, &queues, spare).unwrap();
        assert_eq!((again.as_ptr(), again.len()), (at, ours.len()));
        let decoded_on_read: Vec<bool> = (ours.iter())
            .map(|(_, read)| matches!(read, Delivered::Task { .. }))
            .collect();
        assert_eq!(
            decoded_on_read,
            [
                true, true, true, false, false, false, false, false, false, false, true
            ],
            "the tasks of the usual shape are decoded as they are read"
        );
        let theirs = read_reply(crate::connection::reader::value(&bytes).unwrap()).unwrap();
        let theirs = (theirs.into_iter())
            .filter_map(|(stream, entries)| {
                let queue = &queues[streams.iter().position(|s| *s == stream)?];
                Some(
                    entries
                        .into_iter()
                        .map(move |e| (queue.clone(), Delivered::Fields(e))),
                )
            })
            .flatten()
            .collect();
        let ours = outcomes(ours);
        assert_eq!(ours, outcomes(theirs));
        assert_eq!(ours[0].2, Ok(hostile.clone()));
        assert_eq!(ours[1].2, Ok(long));
        assert_eq!(ours[2].2, Ok(hostile.clone()));
        assert!(ours[3].2.is_err() && ours[4].2.is_err() && ours[6].2.is_err());
        let mut untraced = hostile.clone();
        (untraced.task.traceparent, untraced.task.tracestate) = (None, None);
        assert_eq!(ours[7].2, Ok(untraced), "a nil traceparent is dropped");
        assert_eq!((&ours[8].2, &ours[9].2), (&ours[0].2, &ours[0].2));
        let mut three = hostile.clone();
        three.task.max_retry = 3;
        assert_eq!(ours[5].2, Ok(three));
        let mut critical = hostile;
        critical.task.queue = queues[0].clone();
        assert_eq!((&ours[10].0, &ours[10].2), (&queues[0], &Ok(critical)));

        // No entries, an error reply (its code kept), and replies of no XREADGROUP shape.
        assert!(
            decode(b"*-1\r\n", &streams, &queues, Vec::new())
                .unwrap()
                .is_empty()
        );
        assert!(
            decode(b"$-1\r\n", &streams, &queues, Vec::new())
                .unwrap()
                .is_empty()
        );
        let err = decode(b"-NOGROUP No such key\r\n", &streams, &queues, Vec::new()).unwrap_err();
        assert_eq!(err.code(), Some("NOGROUP"));
        let non_utf8_id = resp(&Value::Array(vec![Value::Array(vec![
            bulk(&streams[0]),
            Value::Array(vec![Value::Array(vec![
                Value::BulkString(b"\xff-0".to_vec()),
                flat(&encoded(&task("1"))),
            ])]),
        ])]));
        for reply in [&b":1\r\n"[..], b"*1\r\n*1\r\n$1\r\ns\r\n", &non_utf8_id] {
            let err = decode(reply, &streams, &queues, Vec::new()).unwrap_err();
            assert_eq!(
                err.kind(),
                redis::ErrorKind::UnexpectedReturnType,
                "{reply:?}"
            );
            assert!(read_reply(crate::connection::reader::value(reply).unwrap()).is_err());
        }
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn reads_resp2_and_resp3_replies() {
        let entries = |fields: Value| {
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), fields]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ])
        };
        let flat = Value::Array(vec![bulk("id"), bulk("a"), bulk("type"), bulk("t")]);
        let expected = vec![(
            "{ns:default}:stream".to_owned(),
            vec![
                Entry {
                    id: "1-0".into(),
                    fields: vec![("id".into(), bulk("a")), ("type".into(), bulk("t"))],
                },
                Entry {
                    id: "2-0".into(),
                    fields: Vec::new(),
                },
            ],
        )];
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("{ns:default}:stream"),
            entries(flat.clone()),
        ])]);
        assert_eq!(read_reply(resp2).unwrap(), expected);
        let resp3 = Value::Map(vec![(bulk("{ns:default}:stream"), entries(flat))]);
        assert_eq!(read_reply(resp3).unwrap(), expected);
        assert!(read_reply(Value::Nil).unwrap().is_empty());
        assert!(read_reply(Value::Int(1)).is_err());
        assert!(read_reply(Value::Array(vec![Value::Array(vec![bulk("k")])])).is_err());
    }
}
