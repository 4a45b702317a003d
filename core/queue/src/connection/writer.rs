//! The publishers' writes on one server over plain TCP: one connection of its own per
//! [`super::Connection`], commands pipelined on it (many in flight, the replies in order), the
//! replies decoded by the reader's decoder (`reader`).
//!
//! Why: a publish awaiting its XADD spent over half of its instructions in the redis crate's
//! multiplexed connection (encoding through `Cmd`, a channel and a task per command, and
//! decoding its one-line reply with `combine`; BENCHMARKS.md, "The publishers' own
//! connection"). Here commands queued while the connection's task was busy go out in one
//! write, and the replies are matched to them in order.
//!
//! What it is not: a general client. It is used for the commands a [`crate::Publisher`]
//! sends without options (XADD); a Redis Cluster, TLS (`rediss://`) and Unix sockets keep the
//! redis crate's connections ([`Writer::new`] gives `None`), and so do writes that wait for
//! replicas (WAIT must follow its write on the same connection).
//!
//! Failures: a command waits at most its timeout, connecting and logging in (as the reader
//! does) included. When the oldest command in flight has waited that long (a hung server), on
//! any I/O error, on a reply that does not decode, or on bytes sent while no command is in
//! flight, every command in flight fails and the connection is dropped; the next command
//! connects afresh. No command is sent twice: one whose connection failed may have run, and its
//! caller is told it failed (as with the redis crate); commands queued but not yet written fail
//! with the connection too. The connection is read all the time, so one the server closed while
//! idle (a restart, its `timeout`, CLIENT KILL) is noticed at once and the next command goes
//! out on a new one (unless it races the close). An error reply is the command's error and
//! leaves the connection in use.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use redis::{RedisResult, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{mpsc, oneshot},
};

use super::reader::{self, KEPT_BUFFER, Replies, Server};

/// Where to connect, and the task of the connection in use.
pub(crate) struct Writer {
    server: Server,
    timeout: Duration,
    /// Where the connection's task takes its commands; `None` before the first command.
    current: Mutex<Option<mpsc::UnboundedSender<Request>>>,
}

impl std::fmt::Debug for Writer {
    // The password is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

/// One command for the connection's task.
struct Request {
    packed: Vec<u8>,
    deadline: Instant,
    reply: oneshot::Sender<RedisResult<Value>>,
}

impl Writer {
    /// A writer for `client` if it is one server over plain TCP (see the module header), each
    /// command within `timeout`. Connects at its first command.
    pub(super) fn new(client: &redis::Client, timeout: Duration) -> Option<Self> {
        Some(Self {
            server: Server::of(client)?,
            timeout,
            current: Mutex::new(None),
        })
    }

    /// Sends `packed` (one command in the protocol's bytes) and returns its reply: the
    /// command's error for an error reply. Within a runtime: the connection is a task of its
    /// own.
    pub(crate) async fn query_packed(&self, packed: Vec<u8>) -> RedisResult<Value> {
        let deadline = Instant::now() + self.timeout;
        let (reply, answer) = oneshot::channel();
        self.send(Request {
            packed,
            deadline,
            reply,
        });
        let reply = match tokio::time::timeout_at(deadline.into(), answer).await {
            Err(_) => return Err(reader::timed_out()),
            // The task always answers; were it gone without, the command's fate is unknown.
            Ok(Err(_)) => return Err(aborted("the connection's task ended")),
            Ok(Ok(reply)) => reply?,
        };
        match reply {
            Value::ServerError(_) => reply.extract_error(),
            reply => Ok(reply),
        }
    }

    /// Hands `request` to the connection's task, starting one (a new connection) if there is
    /// none or the last one ended.
    fn send(&self, request: Request) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let request = match current.as_ref() {
            Some(task) => match task.send(request) {
                Ok(()) => return,
                // That task ended (its connection failed): the command never reached it.
                Err(mpsc::error::SendError(request)) => request,
            },
            None => request,
        };
        let (task, requests) = mpsc::unbounded_channel();
        // Cannot fail: `requests` is alive.
        let _ = task.send(request);
        tokio::spawn(run(self.server.clone(), requests));
        *current = Some(task);
    }
}

/// The connection's task: connects for the first request, then writes what comes (all that
/// is queued in one write) and reads the replies, until the connection fails or the writer is
/// dropped with nothing in flight.
async fn run(server: Server, mut requests: mpsc::UnboundedReceiver<Request>) {
    let Some(first) = requests.recv().await else {
        return;
    };
    let connected = async {
        let conn = server.connect(first.deadline).await?;
        // Nagle's algorithm on, as on the redis crate's connections: while commands are in
        // flight, those that follow are sent together (fewer packets for both ends).
        conn.stream.set_nodelay(false)?;
        Ok(conn)
    };
    let conn = match reader::within(first.deadline, connected).await {
        Ok(conn) => conn,
        Err(err) => {
            fail(err, &mut VecDeque::from([first.reply]), &mut requests);
            return;
        }
    };
    let mut pipeline = Pipeline {
        in_flight: VecDeque::new(),
        out: Vec::new(),
        replies: conn.replies,
    };
    let (mut read, mut write) = conn.stream.into_split();
    let mut next = Some(first);
    let mut open = true;
    let err = loop {
        // Everything queued goes out in one write.
        while let Some(request) = next.take().or_else(|| requests.try_recv().ok()) {
            pipeline.out.extend_from_slice(&request.packed);
            pipeline
                .in_flight
                .push_back((request.deadline, request.reply));
        }
        let oldest = pipeline.in_flight.front().map(|(deadline, _)| *deadline);
        if !pipeline.out.is_empty() {
            let deadline = oldest.unwrap_or_else(Instant::now);
            let written = reader::within(deadline, async {
                Ok(write.write_all(&pipeline.out).await?)
            })
            .await;
            if let Err(err) = written {
                break err;
            }
            pipeline.out.clear();
            if pipeline.out.capacity() > KEPT_BUFFER {
                pipeline.out = Vec::new();
            }
        }
        if !open && pipeline.in_flight.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            read = read.read_buf(pipeline.replies.room()) => {
                let decoded = match read {
                    Ok(0) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                    Ok(_) => pipeline.answer(),
                    Err(err) => Err(err.into()),
                };
                if let Err(err) = decoded {
                    break err;
                }
                // Checked here too: a server that never stops sending keeps this branch ready.
                if pipeline.in_flight.front().is_some_and(|(deadline, _)| *deadline <= Instant::now()) {
                    break reader::timed_out();
                }
            }
            request = requests.recv(), if open => match request {
                Some(request) => next = Some(request),
                // The writer is gone: the replies still due are read, then the task ends.
                None => open = false,
            },
            () = tokio::time::sleep_until(oldest.unwrap_or_else(Instant::now).into()),
                if oldest.is_some() => break reader::timed_out(),
        }
    };
    fail(err, &mut pipeline.in_flight_replies(), &mut requests);
}

/// A connection's commands in flight and the bytes on their way.
struct Pipeline {
    /// The commands sent and not yet answered, oldest first, with their deadlines.
    in_flight: VecDeque<(Instant, oneshot::Sender<RedisResult<Value>>)>,
    /// Commands to write.
    out: Vec<u8>,
    /// Bytes read and not yet decoded.
    replies: Replies,
}

impl Pipeline {
    /// Answers the commands whose replies have arrived whole, oldest first.
    fn answer(&mut self) -> RedisResult<()> {
        while let Some(value) = self.replies.next(reader::value)? {
            let Some((_, reply)) = self.in_flight.pop_front() else {
                return Err(reader::protocol("a reply to no command"));
            };
            // A caller that gave up (its timeout) no longer listens.
            let _ = reply.send(Ok(value));
        }
        self.replies.compact();
        if self.in_flight.is_empty() && !self.replies.all_taken() {
            // Redis sends nothing unasked: such bytes would be taken for the next reply (and
            // no deadline bounds them while no command waits).
            return Err(reader::protocol("bytes with no command in flight"));
        }
        Ok(())
    }

    fn in_flight_replies(&mut self) -> VecDeque<oneshot::Sender<RedisResult<Value>>> {
        self.in_flight.drain(..).map(|(_, reply)| reply).collect()
    }
}

/// Fails the commands `in_flight` and those still queued (never written) with `err`: the
/// first gets it, the others a copy; no command is taken after this.
fn fail(
    err: redis::RedisError,
    in_flight: &mut VecDeque<oneshot::Sender<RedisResult<Value>>>,
    requests: &mut mpsc::UnboundedReceiver<Request>,
) {
    requests.close();
    while let Ok(request) = requests.try_recv() {
        in_flight.push_back(request.reply);
    }
    let Some(first) = in_flight.pop_front() else {
        return;
    };
    for reply in in_flight.drain(..) {
        let _ = reply.send(Err(copy(&err)));
    }
    let _ = first.send(Err(err));
}

/// An error like `err` for another command it failed: a timeout stays a timeout, a server's
/// error (a refused login) keeps its code and text, a refused or dropped connection its kind.
fn copy(err: &redis::RedisError) -> redis::RedisError {
    if err.is_timeout() {
        return reader::timed_out();
    }
    if let Some(code) = err.code() {
        let line = format!("-{code} {}\r\n", err.detail().unwrap_or_default());
        if let Ok(value) = redis::parse_redis_value(line.as_bytes())
            && let Err(copy) = value.extract_error()
        {
            return copy;
        }
    }
    let kind = if err.is_connection_refusal() {
        std::io::ErrorKind::ConnectionRefused
    } else if err.is_connection_dropped() {
        std::io::ErrorKind::ConnectionReset
    } else {
        std::io::ErrorKind::ConnectionAborted
    };
    std::io::Error::new(kind, format!("the connection to Redis failed: {err}")).into()
}

fn aborted(why: &str) -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        format!("the connection to Redis failed: {why}"),
    )
    .into()
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
