//! Back-pressure on the `SimpleBank` calls (and, with a budget of its own, the `QueueAdmin`
//! calls of the admin listener), as one tower layer on the server builder: a concurrency limit
//! that sheds the excess at once, and a request timeout.
//!
//! - The request message is read whole first, within `GRPC_REQUEST_BODY_TIMEOUT`, and only a
//!   complete message takes a call slot: a client that trickles (or stalls) its body cannot
//!   hold the shared budget. A request is one message of at most 64 KiB
//!   ([`crate::framing`] checks that as it arrives), so buffering it costs little.
//! - Past `GRPC_MAX_CONCURRENT_CALLS` calls in flight, a new call is refused before any work
//!   with RESOURCE_EXHAUSTED and a `google.rpc.RetryInfo` detail ([`RETRY_AFTER`]): waiting
//!   calls would each hold memory and, behind the hashing queue, time; a client can retry
//!   elsewhere or later. (UNAVAILABLE stays the code for "the database is unavailable".)
//! - A call running longer than `GRPC_REQUEST_TIMEOUT` is dropped and answered with
//!   DEADLINE_EXCEEDED; dropping it releases its database connection and its slot. A hash
//!   already started on the hashing pool finishes there (it is bounded by the pool's size).
//!
//! Health and reflection are not limited: a load balancer must see a busy server as serving,
//! and a client must be able to discover the API while calls are shed.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::Semaphore;
use tonic::{
    Code, Status,
    body::Body,
    codegen::{Bytes, http},
};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::{call_log::ClientFault, config::CallLimits};

/// The delay a shed call is told to wait before it retries.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Applies [`CallLimits`] to the `SimpleBank` calls of every connection (one shared budget).
#[derive(Debug, Clone)]
pub struct BackpressureLayer {
    slots: Arc<Semaphore>,
    timeout: Duration,
    body_timeout: Duration,
}

impl BackpressureLayer {
    pub fn new(limits: CallLimits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_concurrent_calls)),
            timeout: limits.request_timeout,
            body_timeout: limits.body_timeout,
        }
    }
}

impl<S> Layer<S> for BackpressureLayer {
    type Service = Backpressure<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Backpressure {
            inner,
            slots: self.slots.clone(),
            timeout: self.timeout,
            body_timeout: self.body_timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backpressure<S> {
    inner: S,
    slots: Arc<Semaphore>,
    timeout: Duration,
    body_timeout: Duration,
}

impl<S, ResBody> Service<http::Request<Body>> for Backpressure<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !crate::framing::is_unary(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        // The service that was made ready; a clone takes its place for the next call.
        let inner = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, inner);
        let (slots, timeout, body_timeout) = (self.slots.clone(), self.timeout, self.body_timeout);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // Whatever goes wrong here is the client's doing: the server only reads.
            let body = match tokio::time::timeout(body_timeout, Buffered::read(body)).await {
                Ok(Ok(body)) => body,
                Ok(Err(status)) => return Ok(client_fault(status)),
                Err(_) => {
                    return Ok(client_fault(Status::deadline_exceeded(format!(
                        "the request message did not arrive within the server's {} s limit",
                        body_timeout.as_secs_f64()
                    ))));
                }
            };
            let Ok(_slot) = slots.try_acquire_owned() else {
                return Ok(shed().into_http());
            };
            let future = inner.call(http::Request::from_parts(parts, Body::new(body)));
            match tokio::time::timeout(timeout, future).await {
                Ok(result) => result,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call did not finish within the server's {} s limit",
                    timeout.as_secs_f64()
                ))
                .into_http()),
            }
        })
    }
}

/// A request body read whole: its data chunks as they arrived (one, usually; never copied).
#[derive(Debug, Default)]
struct Buffered {
    chunks: std::collections::VecDeque<Bytes>,
}

impl Buffered {
    /// Reads `body` to its end; a framing error (see [`crate::framing`]) is the client's answer.
    async fn read(mut body: Body) -> Result<Self, Status> {
        let mut buffered = Self::default();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            if let Ok(data) = frame?.into_data()
                && !data.is_empty()
            {
                buffered.chunks.push_back(data);
            }
        }
        Ok(buffered)
    }
}

impl HttpBody for Buffered {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.chunks.pop_front().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        let len: usize = self.chunks.iter().map(Bytes::len).sum();
        SizeHint::with_exact(u64::try_from(len).unwrap_or(u64::MAX))
    }
}

/// The answer to a request whose message could not be read: a body the transport cut off (the
/// client reset its stream, whatever the reason it gave, or closed or broke its connection,
/// mid-message) is CANCELLED, as gRPC names a call its client abandoned, rather than the code
/// tonic derives from the transport's error (UNKNOWN, INTERNAL, or one the client picks by
/// its reset's reason: UNAVAILABLE, RESOURCE_EXHAUSTED...); the framing's own refusals, which
/// carry no transport error, keep their codes. Marked [`ClientFault`] for the call log.
fn client_fault<B: Default>(status: Status) -> http::Response<B> {
    let status = if std::error::Error::source(&status).is_some() {
        Status::cancelled("the request ended before its message arrived whole")
    } else {
        status
    };
    let mut response = status.into_http();
    response.extensions_mut().insert(ClientFault);
    response
}

/// RESOURCE_EXHAUSTED with a RetryInfo detail.
fn shed() -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        "the server is at its limit of concurrent calls; retry later",
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}
