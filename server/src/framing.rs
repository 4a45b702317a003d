//! The gRPC framing of every request on the port (`SimpleBank`, health, reflection), checked as
//! the body streams in, before tonic buffers or decodes anything (a tower layer on the server
//! builder):
//!
//! - a message longer than [`MAX_REQUEST_BYTES`] is RESOURCE_EXHAUSTED, refused on its 5-byte
//!   header, so a large body is never buffered (tonic alone says OUT_OF_RANGE, after its
//!   4 MiB default);
//! - a body that ends inside a frame, or a frame whose flag byte is neither 0 nor 1, or is 1
//!   (compressed) without a `grpc-encoding` header, is INVALID_ARGUMENT (tonic alone says
//!   INTERNAL);
//! - a `SimpleBank` or `QueueAdmin` call (all unary) must carry exactly one message: none, or a
//!   second one, is INVALID_ARGUMENT before the handler runs (tonic alone would ignore the
//!   second).
//!
//! A streaming service may swallow the error of its request stream (reflection ends with OK):
//! for calls of the other services the violation also replaces the status in the trailers.
//!
//! A request's fields are a few short strings: 64 KiB is far above any valid request and far
//! below what would cost the server memory; it is a constant, not a setting, for that reason.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use http_body::{Body as HttpBody, Frame};
use tonic::{
    Status,
    body::Body,
    codegen::{Bytes, http},
};
use tower::{Layer, Service};

/// The largest request message the `SimpleBank` RPCs accept, in bytes (before decompression;
/// tonic applies the same limit after it).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The path prefixes of the unary services (`SimpleBank` on the public listener, `QueueAdmin`
/// on the admin one), whose calls carry exactly one message each.
pub const UNARY_SERVICES: [&str; 2] = [
    "/simplebank.v1.SimpleBank/",
    "/simplebank.admin.v1.QueueAdmin/",
];

/// Whether `path` is a call of one of the [`UNARY_SERVICES`].
pub fn is_unary(path: &str) -> bool {
    UNARY_SERVICES.iter().any(|prefix| path.starts_with(prefix))
}

/// gRPC's length-prefixed message header: a flag byte and a big-endian u32 length.
const HEADER: usize = 5;

/// Wraps the request body of every call in [`CheckedBody`].
#[derive(Debug, Clone, Copy)]
pub struct FramingLayer;

impl<S> Layer<S> for FramingLayer {
    type Service = Framing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Framing { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Framing<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for Framing<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let unary = is_unary(request.uri().path());
        // Without an encoding (or with `identity`) nothing can be compressed.
        let compressed = request
            .headers()
            .get("grpc-encoding")
            .is_some_and(|encoding| encoding.as_bytes() != b"identity");
        // tonic's unary path turns the body's error into the call's status by itself.
        let violation = (!unary).then(|| Arc::new(OnceLock::new()));
        let checked = |body| CheckedBody::new(body, unary, compressed, violation.clone());
        let future = self
            .inner
            .call(request.map(|body| Body::new(checked(body))));
        Box::pin(async move {
            let response = future.await?;
            Ok(match violation {
                None => response,
                Some(violation) => response.map(|inner| Body::new(Overridden { inner, violation })),
            })
        })
    }
}

/// A response body whose final status is the request's framing violation, if there was one.
#[derive(Debug)]
struct Overridden {
    inner: Body,
    violation: Arc<OnceLock<Status>>,
}

impl HttpBody for Overridden {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ends = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            _ => false,
        };
        match self.violation.get() {
            Some(status) if ends => {
                let mut trailers = http::HeaderMap::new();
                let status = Status::new(status.code(), status.message());
                match status.add_header(&mut trailers) {
                    Ok(()) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Err(status) => Poll::Ready(Some(Err(status))),
                }
            }
            _ => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && self.violation.get().is_none()
    }
}

/// A request body that fails (with the [`Status`] the client gets) as soon as its framing is
/// wrong.
#[derive(Debug)]
pub struct CheckedBody {
    inner: Body,
    header: [u8; HEADER],
    header_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
    messages: usize,
    failed: bool,
    /// A unary call: exactly one message.
    unary: bool,
    /// The request names a `grpc-encoding`, so a message may be compressed.
    compressed: bool,
    /// Where a violation is kept for the response (calls outside `SimpleBank`).
    violation: Option<Arc<OnceLock<Status>>>,
}

impl CheckedBody {
    fn new(
        inner: Body,
        unary: bool,
        compressed: bool,
        violation: Option<Arc<OnceLock<Status>>>,
    ) -> Self {
        Self {
            inner,
            header: [0; HEADER],
            header_len: 0,
            remaining: 0,
            messages: 0,
            failed: false,
            unary,
            compressed,
            violation,
        }
    }

    /// Follows the frames through `data`; the first violation is returned.
    fn check(&mut self, data: &Bytes) -> Result<(), Status> {
        let mut rest = data.as_ref();
        while !rest.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(rest.len());
                self.remaining -= take;
                rest = &rest[take..];
                continue;
            }
            self.header[self.header_len] = rest[0];
            self.header_len += 1;
            rest = &rest[1..];
            if self.header_len < HEADER {
                continue;
            }
            self.header_len = 0;
            self.messages += 1;
            if self.unary && self.messages > 1 {
                return Err(Status::invalid_argument(
                    "malformed request: a unary call carries exactly one message",
                ));
            }
            if self.header[0] > 1 {
                return Err(Status::invalid_argument(
                    "malformed request: a message's compression flag must be 0 or 1",
                ));
            }
            if self.header[0] == 1 && !self.compressed {
                return Err(Status::invalid_argument(
                    "malformed request: a compressed message needs a grpc-encoding header",
                ));
            }
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > MAX_REQUEST_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "the request message is {len} bytes; the limit is {MAX_REQUEST_BYTES} bytes"
                )));
            }
            self.remaining = len;
        }
        Ok(())
    }

    /// At the end of the body: a frame cut short, or no message at all, is malformed.
    fn finish(&self) -> Result<(), Status> {
        if self.header_len > 0 || self.remaining > 0 {
            return Err(Status::invalid_argument(
                "malformed request: the body ends inside a message",
            ));
        }
        if self.unary && self.messages == 0 {
            return Err(Status::invalid_argument(
                "malformed request: the body carries no message",
            ));
        }
        Ok(())
    }
}

impl HttpBody for CheckedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let verdict = match &polled {
            Poll::Pending | Poll::Ready(Some(Err(_))) => return polled,
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) => {
                    let data = data.clone();
                    self.check(&data)
                }
                None => Ok(()),
            },
            Poll::Ready(None) => self.finish(),
        };
        match verdict {
            Ok(()) => polled,
            Err(status) => {
                self.failed = true;
                if let Some(violation) = &self.violation {
                    let _ = violation.set(Status::new(status.code(), status.message()));
                }
                Poll::Ready(Some(Err(status)))
            }
        }
    }
}
