//! The listener's connections, before tonic sees them: how many may be open, how long a new
//! one may stay silent, and how long one may stay open with no call on it.
//!
//! - [`incoming`] accepts only while fewer than `GRPC_MAX_CONNECTIONS` are open: at the bound it
//!   stops calling `accept`, so new clients wait in the kernel's backlog instead of taking file
//!   descriptors. An accept error (EMFILE, ENFILE...) is logged at most once per
//!   [`ERROR_LOG_EVERY`] and followed by a pause, so the loop never spins; so is reaching the
//!   bound.
//! - One client address (an IPv4 address, or an IPv6 /64: what one host holds) may have at
//!   most `GRPC_MAX_CONNECTIONS_PER_ADDRESS` open: a connection past that is closed at once,
//!   so that one client cannot take every slot and keep everyone else waiting. Logged at most
//!   once per [`ERROR_LOG_EVERY`], with the count since.
//! - A [`Conn`] must deliver its first [`PREFACE_LEN`] bytes (the HTTP/2 preface, or the start
//!   of a TLS handshake) within `GRPC_CONNECTION_PREFACE_TIMEOUT`, and is closed once it has had
//!   no open stream for `GRPC_CONNECTION_IDLE_TIMEOUT`. Open streams are counted by
//!   [`StreamCountLayer`] through the connection's [`ConnInfo`], which tonic puts on every
//!   request.
//!
//! A peer that stops answering while streams are open is closed by HTTP/2 keepalive pings
//! (configured on the tonic builder), not here.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::Stream;
use tonic::{
    codegen::http,
    transport::server::{Connected, TlsConnectInfo},
};
use tower::{Layer, Service};

use crate::{auth::counted_address, config::ConnectionLimits, log_every::LogEvery};

/// The HTTP/2 client preface (`PRI * HTTP/2.0...`) is 24 bytes.
pub const PREFACE_LEN: usize = 24;

/// Accept errors are logged at most this often.
pub const ERROR_LOG_EVERY: Duration = crate::log_every::EVERY;

/// The pause after an accept error: the error (a full fd table, usually) will not clear at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// What a connection shares with the requests it carries.
#[derive(Debug)]
struct Shared {
    open_streams: AtomicUsize,
    /// When the last stream ended (or the connection opened).
    idle_since: Mutex<Instant>,
}

/// tonic's connect info for a [`Conn`]: the peer's address and its stream count.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    remote_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
}

impl ConnInfo {
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }

    /// The connect info tonic put on `extensions`, over plaintext or TLS.
    pub fn of(extensions: &http::Extensions) -> Option<&Self> {
        extensions.get::<Self>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<Self>>()
                .map(TlsConnectInfo::get_ref)
        })
    }
}

/// An accepted TCP connection holding one of the `GRPC_MAX_CONNECTIONS` slots, and one of its
/// address's `GRPC_MAX_CONNECTIONS_PER_ADDRESS`.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    info: ConnInfo,
    _slot: OwnedSemaphorePermit,
    _address_slot: AddressSlot,
    limits: ConnectionLimits,
    /// Bytes read so far, counted up to [`PREFACE_LEN`].
    received: usize,
    deadline: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(
        stream: TcpStream,
        remote_addr: SocketAddr,
        slots: (OwnedSemaphorePermit, AddressSlot),
        limits: ConnectionLimits,
    ) -> Self {
        let now = Instant::now();
        Self {
            info: ConnInfo {
                remote_addr: Some(remote_addr),
                shared: Arc::new(Shared {
                    open_streams: AtomicUsize::new(0),
                    idle_since: Mutex::new(now),
                }),
            },
            stream,
            _slot: slots.0,
            _address_slot: slots.1,
            limits,
            received: 0,
            deadline: Box::pin(tokio::time::sleep_until(now + limits.preface_timeout)),
        }
    }

    /// `Err` once the connection has overstayed: silent since it opened, or idle too long.
    /// Otherwise the deadline is re-armed, so the task is woken to check again.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            if self.received < PREFACE_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within GRPC_CONNECTION_PREFACE_TIMEOUT",
                ));
            }
            let shared = &self.info.shared;
            let next = if shared.open_streams.load(Ordering::Acquire) > 0 {
                Instant::now() + self.limits.idle_timeout
            } else {
                let idle_since = *shared
                    .idle_since
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                idle_since + self.limits.idle_timeout
            };
            if next <= Instant::now() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no call within GRPC_CONNECTION_IDLE_TIMEOUT",
                ));
            }
            self.deadline.as_mut().reset(next);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len() - before;
            if self.received < PREFACE_LEN {
                self.received = (self.received + read).min(PREFACE_LEN);
                if self.received == PREFACE_LEN {
                    // From now on the deadline is the idle timeout.
                    let now = Instant::now();
                    *self
                        .info
                        .shared
                        .idle_since
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
                    let next = now + self.limits.idle_timeout;
                    self.deadline.as_mut().reset(next);
                }
            }
            return polled;
        }
        if let Err(e) = self.check_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// The connections of `listener`, within `limits`. Never yields an error: accept errors are
/// logged and waited out here (tonic would retry them at once, spinning).
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let addresses = Arc::new(PerAddress::new(limits.max_connections_per_address));
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    // The loop ends when tonic drops the stream (shutdown): `send` then fails.
    tokio::spawn(async move {
        let (mut errors, mut full, mut refused) = (
            LogEvery::default(),
            LogEvery::default(),
            LogEvery::default(),
        );
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => Ok(slot),
                Err(_) => {
                    if let Some(suppressed) = full.due() {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            suppressed,
                            "GRPC_MAX_CONNECTIONS connections open: new clients wait until one closes"
                        );
                    }
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => slot,
                        () = sender.closed() => return,
                    }
                }
            };
            let Ok(slot) = slot else { return };
            let stream = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            match stream {
                Ok((stream, peer)) => {
                    let Some(address_slot) = addresses.take(peer.ip()) else {
                        // Closed at once (dropped with the slot): nothing read, nothing sent.
                        if let Some(suppressed) = refused.due() {
                            tracing::warn!(
                                client.address = %peer.ip(),
                                max_connections_per_address = limits.max_connections_per_address,
                                suppressed,
                                "connection closed: its address has GRPC_MAX_CONNECTIONS_PER_ADDRESS open"
                            );
                        }
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let conn = Conn::new(stream, peer, (slot, address_slot), limits);
                    if sender.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    drop(slot);
                    if let Some(suppressed) = errors.due() {
                        tracing::error!(
                            error = %e,
                            suppressed,
                            "cannot accept connections (file descriptors exhausted?); retrying"
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        () = sender.closed() => return,
                    }
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Open connections by client.
#[derive(Debug)]
struct PerAddress {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `ip`, unless it has `max` open.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = counted_address(&ip);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            key,
            table: Arc::clone(self),
        })
    }
}

/// One open connection of a client; given back on drop.
#[derive(Debug)]
struct AddressSlot {
    key: IpAddr,
    table: Arc<PerAddress>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Counts each request as an open stream of its connection until its response body ends, for
/// the idle timeout. Outermost layer: a call shed or refused is still a stream while it lasts.
#[derive(Debug, Clone, Copy)]
pub struct StreamCountLayer;

impl<S> Layer<S> for StreamCountLayer {
    type Service = StreamCount<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamCount { inner }
    }
}

#[derive(Debug, Clone)]
pub struct StreamCount<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for StreamCount<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let guard = ConnInfo::of(request.extensions()).map(|info| {
            info.shared.open_streams.fetch_add(1, Ordering::AcqRel);
            StreamGuard(info.shared.clone())
        });
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|inner| CountedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// Ends its stream (for the idle timeout) when dropped.
#[derive(Debug)]
struct StreamGuard(Arc<Shared>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream counted until hyper drops it (sent or reset).
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    _guard: Option<StreamGuard>,
}

impl<B: HttpBody + Unpin> HttpBody for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
