//! One log line per gRPC call: method, status code and duration.
//!
//! Unary errors are "trailers-only" responses, so their `grpc-status` is in the response
//! headers; a response without it in the headers is a success whose OK status follows in the
//! trailers.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tonic::{Code, codegen::http};
use tower::{Layer, Service};

/// Wraps every service of the server in [`CallLog`].
#[derive(Debug, Clone, Copy)]
pub struct CallLogLayer;

impl<S> Layer<S> for CallLogLayer {
    type Service = CallLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLog { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CallLog<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CallLog<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let elapsed = started.elapsed();
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from_i32),
                Err(_) => Code::Unknown,
            };
            let duration_ms = elapsed.as_secs_f64() * 1_000.0;
            if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
                tracing::error!(method, status_code = ?code, duration_ms, "gRPC call");
            } else {
                tracing::info!(method, status_code = ?code, duration_ms, "gRPC call");
            }
            result
        })
    }
}
