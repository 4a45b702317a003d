//! Back-pressure on the `SimpleBank` calls, as one tower layer on the server builder: a
//! concurrency limit that sheds the excess at once, and a request timeout.
//!
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

use tokio::sync::Semaphore;
use tonic::{Code, Status, codegen::http};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::config::CallLimits;

/// The path prefix of the calls this layer limits.
const LIMITED: &str = "/simplebank.v1.SimpleBank/";

/// The delay a shed call is told to wait before it retries.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Applies [`CallLimits`] to the `SimpleBank` calls of every connection (one shared budget).
#[derive(Debug, Clone)]
pub struct BackpressureLayer {
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl BackpressureLayer {
    pub fn new(limits: CallLimits) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limits.max_concurrent_calls)),
            timeout: limits.request_timeout,
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
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backpressure<S> {
    inner: S,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Backpressure<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if !request.uri().path().starts_with(LIMITED) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Box::pin(async { Ok(shed().into_http()) });
        };
        let (future, timeout) = (self.inner.call(request), self.timeout);
        Box::pin(async move {
            let _slot = slot;
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

/// RESOURCE_EXHAUSTED with a RetryInfo detail.
fn shed() -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        "the server is at its limit of concurrent calls; retry later",
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}
