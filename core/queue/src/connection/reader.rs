//! The worker's read path on one server over plain TCP: connections of its own, each with one
//! command in flight, whose replies are decoded by a small RESP2 decoder instead of the redis
//! crate's.
//!
//! Why: decoding XREADGROUP replies took half of a worker's instructions (`callgrind`,
//! BENCHMARKS.md): the redis crate's decoder is built on `combine`, whose resumable parser
//! machinery costs far more than the bytes it reads. Here a reply is first checked complete
//! by walking its headers (a bulk string is skipped by its length), then handed whole to the
//! caller's builder: [`value`] makes the redis crate's [`Value`]s in one pass, and the fetch
//! loop's builder decodes XREADGROUP's entries straight into tasks, walking the bytes with
//! [`Resp`].
//!
//! What it is not: a general client. It sends what [`Reader::query_all`] is given, logs in (AUTH
//! with the user and password of the address, SELECT its database) on each new connection,
//! and speaks RESP2 whatever the address asks for (the entries decode the same either way). A
//! Redis Cluster, TLS (`rediss://`) and Unix sockets keep the redis crate's connections
//! ([`Reader::for_endpoint`] gives `None`).
//!
//! Failures: each query runs within its timeout, connecting and logging in included. A
//! connection that failed in any way (I/O, timeout, a reply that is not well framed or that
//! its builder refuses, a refused login) is dropped, and the next query connects afresh, so
//! a restarted Redis or a rotated password needs nothing more. An error reply (`-NOGROUP
//! ...`) is a reply, handed to the builder like any other, and leaves the connection in use.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use redis::{ConnectionAddr, ErrorKind, RedisResult, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::Endpoint;

/// How long connecting may take (as for the redis crate's connections, `endpoint`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections kept for the next query; more are made when more queries overlap (the fetch
/// loop has at most two reads in flight), and closed when they come back to a full pool.
const IDLE: usize = 4;

/// A bulk string longer than Redis' own largest (`proto-max-bulk-len` at most 512 MB) is no
/// reply of a Redis: the connection is dropped instead of buffering it.
const MAX_BULK: usize = 512 * 1024 * 1024;

/// Arrays nest this deep at most (an XREADGROUP reply nests four deep).
const MAX_DEPTH: usize = 16;

/// A simple string's, an error's or a length's line longer than this is no reply of a Redis.
const MAX_LINE: usize = 64 * 1024;

/// How much to read at a time.
const READ_SIZE: usize = 64 * 1024;

/// A connection's buffer larger than this (after a long reply) is freed once the reply is
/// decoded.
pub(super) const KEPT_BUFFER: usize = 1024 * 1024;

/// Where and as whom to connect, and the connections not in use.
pub(crate) struct Reader {
    server: Server,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for Reader {
    // The password is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

/// One server over plain TCP, and as whom to log in: what a [`Reader`] and a
/// [`super::writer::Writer`] connect to.
#[derive(Clone)]
pub(super) struct Server {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl Server {
    /// The server of `client` if it is one server over plain TCP (not TLS, not a Unix socket).
    pub(super) fn of(client: &redis::Client) -> Option<Self> {
        let info = client.get_connection_info();
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        Some(Self {
            host: host.clone(),
            port: *port,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        })
    }

    /// A new connection, logged in (AUTH with the address' user and password, SELECT its
    /// database), by `deadline` (connecting alone within [`CONNECT_TIMEOUT`]).
    pub(super) async fn connect(&self, deadline: Instant) -> RedisResult<Conn> {
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        let stream = tokio::time::timeout_at(
            tokio::time::Instant::from_std(deadline.min(Instant::now() + CONNECT_TIMEOUT)),
            connect,
        )
        .await
        .map_err(|_| timed_out())??;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            replies: Replies::default(),
            closed: false,
        };
        if let Some(password) = &self.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = &self.username {
                auth.arg(username);
            }
            auth.arg(password);
            conn.request(&auth.get_packed_command())
                .await?
                .extract_error()?;
        }
        if self.db != 0 {
            conn.request(&redis::cmd("SELECT").arg(self.db).get_packed_command())
                .await?
                .extract_error()?;
        }
        Ok(conn)
    }
}

impl Reader {
    /// A reader for `endpoint` if it is one server over plain TCP (see the module header),
    /// each query within `timeout` (keep it above the BLOCK time of blocking reads).
    pub(crate) fn for_endpoint(endpoint: &Endpoint, timeout: Duration) -> Option<Self> {
        let Endpoint::Single(client) = endpoint else {
            return None;
        };
        Some(Self {
            server: Server::of(client)?,
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `cmds` together (one round trip) and returns their replies in order, each made
    /// by `build` from the bytes of one reply, straight from the connection's buffer (see
    /// [`Resp`]; an error reply is a reply too: one command's error does not hide the others'
    /// replies). An error `build` returns fails the query and drops the connection. Only for
    /// commands that may run twice (the reads): those whose idle connection turns out closed
    /// are sent again on a new one (see below).
    pub(crate) async fn query_all<T>(
        &self,
        cmds: &[&redis::Cmd],
        build: impl Fn(&[u8]) -> RedisResult<T>,
    ) -> RedisResult<Vec<T>> {
        let deadline = Instant::now() + self.timeout;
        let mut packed = Vec::new();
        for cmd in cmds {
            cmd.write_packed_command(&mut packed);
        }
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let reused = taken.is_some();
        let mut conn = match taken {
            Some(conn) => conn,
            None => within(deadline, self.server.connect(deadline)).await?,
        };
        let mut replies = within(deadline, conn.requests(&packed, cmds.len(), &build)).await;
        if replies.is_err() && reused && conn.closed() {
            // Closed before any of a reply came: most often an idle connection the server
            // closed (a restart, its `timeout`, CLIENT KILL), so the commands go out once
            // more on a new one. Had they run (a server that died before answering), what
            // they delivered stays pending and is taken over, as after any lost reply.
            conn = within(deadline, self.server.connect(deadline)).await?;
            replies = within(deadline, conn.requests(&packed, cmds.len(), &build)).await;
        }
        let replies = replies?;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE {
            idle.push(conn);
        }
        drop(idle);
        Ok(replies)
    }
}

/// `future` if it finishes before `deadline`; an I/O error (timed out) if not.
pub(super) async fn within<T>(
    deadline: Instant,
    future: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), future)
        .await
        .map_err(|_| timed_out())?
}

pub(super) fn timed_out() -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "Redis did not answer in time").into()
}

/// One connection with no command in flight between requests.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    /// Bytes read and not yet decoded (none between requests).
    pub(super) replies: Replies,
    /// See [`Conn::closed`].
    closed: bool,
}

impl Conn {
    /// Whether the last request found the connection closed by the server (at its end or
    /// reset) before any of its reply was read.
    fn closed(&self) -> bool {
        self.closed
    }

    /// Writes `packed` and reads one reply. Any error leaves the connection unusable (the
    /// caller drops it): an error reply is a reply (`Value::ServerError`), not an error.
    async fn request(&mut self, packed: &[u8]) -> RedisResult<Value> {
        let mut replies = self.requests(packed, 1, &value).await?;
        replies.pop().ok_or_else(|| protocol("no reply"))
    }

    /// Writes `packed` (`count` commands) and reads their `count` replies, each made by
    /// `build`, as [`Conn::request`].
    async fn requests<T>(
        &mut self,
        packed: &[u8],
        count: usize,
        build: &impl Fn(&[u8]) -> RedisResult<T>,
    ) -> RedisResult<Vec<T>> {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
        let gone = |err: &std::io::Error| matches!(err.kind(), BrokenPipe | ConnectionReset);
        if let Err(err) = self.stream.write_all(packed).await {
            self.closed = gone(&err);
            return Err(err.into());
        }
        let mut replies = Vec::with_capacity(count);
        loop {
            while let Some(reply) = self.replies.next(build)? {
                replies.push(reply);
                if replies.len() < count {
                    continue;
                }
                if !self.replies.all_taken() {
                    // Nothing else in flight: bytes past the replies are none of ours.
                    return Err(protocol("bytes after the reply"));
                }
                self.replies.compact();
                return Ok(replies);
            }
            let nothing_yet = self.replies.buf.is_empty();
            match self.stream.read_buf(self.replies.room()).await {
                Ok(0) => {
                    self.closed = nothing_yet;
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
                Ok(_) => {}
                Err(err) => {
                    self.closed = nothing_yet && gone(&err);
                    return Err(err.into());
                }
            }
        }
    }
}

/// The bytes read from a connection, and how far the replies in them have been taken: each
/// reply is walked as it arrives (see [`scan`]), then handed whole to a builder.
#[derive(Default)]
pub(super) struct Replies {
    buf: Vec<u8>,
    /// Where the first reply not yet taken starts.
    start: usize,
    /// How far that reply has been walked.
    progress: Progress,
    /// No new look at that reply before `buf` holds this much of it (a long bulk string is
    /// waited for whole, not walked up to at every read).
    wait_for: usize,
}

impl Replies {
    /// The next reply, once it has all arrived, made by `build` from its bytes.
    pub(super) fn next<T>(
        &mut self,
        build: impl FnOnce(&[u8]) -> RedisResult<T>,
    ) -> RedisResult<Option<T>> {
        if self.buf.len() - self.start < self.wait_for {
            return Ok(None);
        }
        match scan(&self.buf[self.start..], &mut self.progress)? {
            Err(need) => {
                self.wait_for = need;
                Ok(None)
            }
            Ok(end) => {
                let reply = build(&self.buf[self.start..self.start + end]);
                self.start += end;
                self.progress = Progress::default();
                self.wait_for = 0;
                reply.map(Some)
            }
        }
    }

    /// Whether every byte read belongs to a reply taken.
    pub(super) fn all_taken(&self) -> bool {
        self.start == self.buf.len()
    }

    /// Drops the replies taken; after a long reply, an emptied buffer keeps little memory.
    pub(super) fn compact(&mut self) {
        self.buf.drain(..self.start);
        self.start = 0;
        if self.buf.is_empty() && self.buf.capacity() > KEPT_BUFFER {
            self.buf = Vec::new();
        }
    }

    /// Where the next read goes.
    pub(super) fn room(&mut self) -> &mut Vec<u8> {
        self.buf.reserve(READ_SIZE);
        &mut self.buf
    }
}

pub(super) fn protocol(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((ErrorKind::Parse, "invalid RESP reply", what.to_owned()))
}

/// What is wrong with a reply's bytes, as the walks below find it: made a [`protocol`] error
/// only where it leaves them. Two words, where a `RedisResult` around every header and length
/// made a worker spend 6-7% more instructions a task (BENCHMARKS.md, "Errors kept small in
/// the reader").
#[derive(Debug, Clone, Copy)]
struct Malformed(&'static str);

impl From<Malformed> for redis::RedisError {
    fn from(Malformed(what): Malformed) -> Self {
        protocol(what)
    }
}

/// How far [`scan`] got into a reply: where the first element not yet whole starts, and the
/// elements still to come at each open array level.
#[derive(Debug, Default)]
struct Progress {
    at: usize,
    pending: Vec<usize>,
}

/// Walks the headers of the one reply at the start of `buf` on from `progress` (so a reply
/// that arrives in pieces is walked once, not again from its start at every read), allocating
/// nothing: `Ok(Ok)` with the reply's length if it is all there; `Ok(Err)` with how long
/// `buf` must grow before a new look can get further; `Err` for bytes no Redis sends.
fn scan(buf: &[u8], progress: &mut Progress) -> Result<Result<usize, usize>, Malformed> {
    loop {
        let Some((kind, line, next)) = header(buf, progress.at)? else {
            return Ok(Err(buf.len() + 1));
        };
        let mut at = next;
        match kind {
            b'+' | b'-' | b':' => {}
            b'$' => {
                if let Some(len) = length(line)? {
                    if len > MAX_BULK {
                        return Err(Malformed("bulk string too long"));
                    }
                    if buf.len() < at + len + 2 {
                        return Ok(Err(at + len + 2));
                    }
                    if &buf[at + len..at + len + 2] != b"\r\n" {
                        return Err(Malformed("bulk string without its CRLF"));
                    }
                    at += len + 2;
                }
            }
            b'*' => {
                if let Some(len) = length(line)?
                    && len > 0
                {
                    if progress.pending.len() == MAX_DEPTH {
                        return Err(Malformed("arrays nested too deep"));
                    }
                    progress.pending.push(len);
                    progress.at = at;
                    continue;
                }
            }
            _ => return Err(Malformed("unknown type")),
        }
        progress.at = at;
        // One element done: close every array it completes.
        loop {
            match progress.pending.last_mut() {
                None => return Ok(Ok(at)),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    progress.pending.pop();
                }
            }
        }
    }
}

/// The reply `buf` (which [`scan`] found whole) as a [`Value`].
pub(crate) fn value(buf: &[u8]) -> RedisResult<Value> {
    let (value, used) = build_at(buf, 0)?;
    debug_assert_eq!(used, buf.len());
    Ok(value)
}

fn build_at(buf: &[u8], at: usize) -> RedisResult<(Value, usize)> {
    let Some((kind, line, at)) = header(buf, at)? else {
        return Err(protocol("reply cut short"));
    };
    Ok(match kind {
        b'+' if line == b"OK" => (Value::Okay, at),
        b'+' => (Value::SimpleString(text(line)?), at),
        b'-' => {
            // Rare: the redis crate makes the error (its code and kind) from the line.
            let mut raw = Vec::with_capacity(line.len() + 3);
            raw.push(b'-');
            raw.extend_from_slice(line);
            raw.extend_from_slice(b"\r\n");
            (redis::parse_redis_value(&raw)?, at)
        }
        b':' => {
            let n = text(line)?
                .parse()
                .map_err(|_| protocol("integer that does not parse"))?;
            (Value::Int(n), at)
        }
        b'$' => match length(line)? {
            None => (Value::Nil, at),
            Some(len) => (Value::BulkString(buf[at..at + len].to_vec()), at + len + 2),
        },
        b'*' => match length(line)? {
            None => (Value::Nil, at),
            Some(len) => {
                let mut items = Vec::with_capacity(len);
                let mut at = at;
                for _ in 0..len {
                    let (item, next) = build_at(buf, at)?;
                    items.push(item);
                    at = next;
                }
                (Value::Array(items), at)
            }
        },
        _ => return Err(protocol("unknown type")),
    })
}

/// A line's type byte, the rest of it (without CRLF), and where the next line starts.
type Header<'a> = (u8, &'a [u8], usize);

/// The [`Header`] of the line at `at`; `None` if its CRLF has not arrived yet.
fn header(buf: &[u8], at: usize) -> Result<Option<Header<'_>>, Malformed> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    if !b"+-:$*".contains(&kind) {
        // Refused at once, not after waiting for a line end that may never come.
        return Err(Malformed("unknown type"));
    }
    let rest = &buf[at + 1..];
    let Some(cr) = rest[..rest.len().min(MAX_LINE)]
        .iter()
        .position(|&b| b == b'\r')
    else {
        if rest.len() >= MAX_LINE {
            return Err(Malformed("line too long"));
        }
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((kind, &rest[..cr], at + 1 + cr + 2))),
        Some(_) => Err(Malformed("CR without LF")),
    }
}

/// A walk, element by element, through the bytes of one whole reply (one [`scan`] found
/// complete), for a reply decoded straight into the caller's types instead of [`Value`]s.
/// Each step says `None` when the next element is not of the kind asked for, or not all
/// there (bytes no scan checked: never read past their end).
pub(crate) struct Resp<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Resp<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// The error of an error reply (`-NOGROUP ...`), its code kept; `None` for any other.
    pub(crate) fn error(reply: &[u8]) -> Option<redis::RedisError> {
        if reply.first() != Some(&b'-') {
            return None;
        }
        Some(match value(reply) {
            Ok(value) => value
                .extract_error()
                .err()
                .unwrap_or_else(|| protocol("error")),
            Err(err) => err,
        })
    }

    /// Where the next element starts, to come back to with [`Resp::rewind`].
    pub(crate) fn position(&self) -> usize {
        self.at
    }

    /// Goes back to `position` (from [`Resp::position`]), to read what is there again.
    pub(crate) fn rewind(&mut self, position: usize) {
        self.at = position;
    }

    /// The next element, an array: its length, `Some(None)` if nil.
    pub(crate) fn array(&mut self) -> Option<Option<usize>> {
        let (kind, line, next) = header(self.buf, self.at).ok()??;
        if kind != b'*' {
            return None;
        }
        let len = length(line).ok()?;
        self.at = next;
        Some(len)
    }

    /// The next element, a bulk string that is not nil: its bytes.
    pub(crate) fn bulk(&mut self) -> Option<&'a [u8]> {
        let (kind, line, next) = header(self.buf, self.at).ok()??;
        if kind != b'$' {
            return None;
        }
        let len = length(line).ok()??;
        let end = next.checked_add(len)?;
        if self.buf.get(end..end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        self.at = end + 2;
        Some(&self.buf[next..end])
    }

    /// The next element, whatever it is, as a [`Value`].
    pub(crate) fn value(&mut self) -> RedisResult<Value> {
        let (value, next) = build_at(self.buf, self.at)?;
        self.at = next;
        Ok(value)
    }
}

/// A bulk string's or an array's length: `None` for -1 (nil).
fn length(line: &[u8]) -> Result<Option<usize>, Malformed> {
    if line == b"-1" {
        return Ok(None);
    }
    if line.is_empty() {
        return Err(Malformed("length that does not parse"));
    }
    line.iter()
        .try_fold(0usize, |n, &digit| {
            if !digit.is_ascii_digit() {
                return None;
            }
            n.checked_mul(10)?.checked_add(usize::from(digit - b'0'))
        })
        .map(Some)
        .ok_or(Malformed("length that does not parse"))
}

fn text(line: &[u8]) -> RedisResult<String> {
    String::from_utf8(line.to_vec()).map_err(|_| protocol("line that is not UTF-8"))
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;
