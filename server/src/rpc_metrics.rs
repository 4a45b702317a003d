//! The RPC server duration histogram of the OpenTelemetry semantic conventions 1.42.0 (the
//! version of the crate family in use): `rpc.server.call.duration`, in seconds, one sample per
//! call, as a tower layer on a listener's server builder.
//!
//! Attributes: `rpc.system.name` = `grpc`; `rpc.method`, the fully qualified method
//! (`simplebank.v1.SimpleBank/CreateUser`) when the listener serves it, else `_OTHER` (a path
//! is whatever a client sends, so only known methods become values); `rpc.response.status_code`,
//! the gRPC code's name (`OK`, `INVALID_ARGUMENT`); `error.type`, the same name, for the codes
//! that are the server's failure (the ones the call log marks as errors). The sets are
//! precomputed, (known methods + 1) x 17 codes, and the histogram is bound to each on its first
//! use, so recording allocates and hashes nothing and a client cannot add a series.
//!
//! The call ends when its response body does: the status is read from the trailers (or from
//! the headers of a trailers-only response, which is how errors are sent); a response body
//! dropped before its end (the client went away) is `CANCELLED`. The spans (`call_log`) still
//! carry the older attribute names (`rpc.system`, `rpc.service`, `rpc.grpc.status_code`).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body as HttpBody, Frame};
use opentelemetry::{
    KeyValue,
    metrics::{BoundHistogram, Histogram, Meter},
};
use prost::Message as _;
use tonic::{
    Code, Status,
    body::Body,
    codegen::{Bytes, http},
};
use tower::{Layer, Service};

use crate::call_log::{code_name, is_server_error, unanswered_code};

/// `rpc.method` for a path the listener does not serve.
pub const OTHER_METHOD: &str = "_OTHER";

/// The recommended buckets of `rpc.server.call.duration` (seconds).
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Every gRPC code, in numeric order (index = code).
const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// A listener's known methods and their attribute sets.
#[derive(Debug)]
struct Shared {
    histogram: Histogram<f64>,
    /// `/package.Service/Method` -> index into `sets`; `_OTHER` is the last.
    methods: HashMap<String, usize>,
    /// Per method, one set per code.
    sets: Vec<Vec<CallSet>>,
}

/// One method and code: the attributes, and the histogram bound to them once used.
#[derive(Debug)]
struct CallSet {
    attributes: Arc<[KeyValue]>,
    bound: OnceLock<BoundHistogram<f64>>,
}

impl Shared {
    fn set(&self, method: usize, code: Code) -> &CallSet {
        let code = usize::try_from(code as i32)
            .unwrap_or(2)
            .min(CODES.len() - 1);
        &self.sets[method][code]
    }

    fn record(&self, method: usize, code: Code, seconds: f64) {
        let set = self.set(method, code);
        set.bound
            .get_or_init(|| self.histogram.bind(&set.attributes))
            .record(seconds);
    }
}

/// Records `rpc.server.call.duration` for every call of the services it wraps.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    shared: Arc<Shared>,
}

/// Why the known methods could not be read.
#[derive(Debug, thiserror::Error)]
#[error("a file descriptor set does not decode")]
pub struct DescriptorError(#[from] prost::DecodeError);

impl RpcMetricsLayer {
    /// A layer recording with `meter`; the methods of the services in the encoded file
    /// descriptor sets `descriptors` are known, any other path is `_OTHER`.
    pub fn new(meter: &Meter, descriptors: &[&[u8]]) -> Result<Self, DescriptorError> {
        let mut names = Vec::new();
        for encoded in descriptors {
            let set = prost_types::FileDescriptorSet::decode(*encoded)?;
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    let service_name = match package {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        names.push(format!("{service_name}/{}", method.name()));
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        let mut methods = HashMap::new();
        let mut sets = Vec::new();
        for (index, name) in names
            .iter()
            .map(String::as_str)
            .chain([OTHER_METHOD])
            .enumerate()
        {
            if name != OTHER_METHOD {
                methods.insert(format!("/{name}"), index);
            }
            let method: Arc<str> = Arc::from(name);
            sets.push(
                CODES
                    .iter()
                    .map(|&code| {
                        let mut set = vec![
                            KeyValue::new("rpc.system.name", "grpc"),
                            KeyValue::new("rpc.method", Arc::clone(&method)),
                            KeyValue::new("rpc.response.status_code", code_name(code)),
                        ];
                        if is_server_error(code) {
                            set.push(KeyValue::new("error.type", code_name(code)));
                        }
                        CallSet {
                            attributes: Arc::from(set),
                            bound: OnceLock::new(),
                        }
                    })
                    .collect(),
            );
        }
        let histogram = meter
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("Measures the duration of an incoming Remote Procedure Call (RPC).")
            .with_boundaries(BUCKETS.to_vec())
            .build();
        Ok(Self {
            shared: Arc::new(Shared {
                histogram,
                methods,
                sets,
            }),
        })
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    shared: Arc<Shared>,
}

fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(Code::from_i32)
}

impl<S> Service<http::Request<Body>> for RpcMetrics<S>
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
        let shared = Arc::clone(&self.shared);
        let method = shared
            .methods
            .get(request.uri().path())
            .copied()
            .unwrap_or(shared.sets.len() - 1);
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut call = Call {
                shared,
                method,
                started,
                recorded: false,
            };
            let response = match future.await {
                Ok(response) => response,
                Err(err) => {
                    call.record(Code::Unknown);
                    return Err(err);
                }
            };
            // A trailers-only response (every error) carries its status in the headers.
            if let Some(code) = status_in(response.headers()) {
                call.record(code);
            }
            Ok(response.map(|inner| Body::new(Measured { inner, call })))
        })
    }
}

/// One call, recorded once: when its status is known, or as CANCELLED if never.
#[derive(Debug)]
struct Call {
    shared: Arc<Shared>,
    method: usize,
    started: Instant,
    recorded: bool,
}

impl Call {
    fn record(&mut self, code: Code) {
        if !self.recorded {
            self.recorded = true;
            self.shared
                .record(self.method, code, self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    /// Never answered: counted as the call log logs it.
    fn drop(&mut self) {
        self.record(unanswered_code());
    }
}

/// A response body that records its call when it ends.
#[derive(Debug)]
struct Measured {
    inner: Body,
    call: Call,
}

impl HttpBody for Measured {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_in(trailers).unwrap_or(Code::Unknown);
                    self.call.record(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.call.record(status.code()),
            // The end without trailers: a trailers-only response was recorded from its
            // headers; anything else had no status, which gRPC clients read as UNKNOWN.
            Poll::Ready(None) => self.call.record(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_come_from_the_descriptors_and_the_rest_is_other() {
        let meter = opentelemetry::global::meter("test");
        let layer = RpcMetricsLayer::new(
            &meter,
            &[
                crate::pb::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
        )
        .expect("descriptors");
        let shared = &layer.shared;
        assert!(
            shared
                .methods
                .contains_key("/simplebank.v1.SimpleBank/CreateUser")
        );
        assert!(shared.methods.contains_key("/grpc.health.v1.Health/Check"));
        assert!(
            !shared
                .methods
                .contains_key("/simplebank.v1.SimpleBank/Nope")
        );
        let other = shared.sets.len() - 1;
        let set = &shared.set(other, Code::Unimplemented).attributes;
        let text: Vec<String> = set
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        assert_eq!(
            text,
            [
                "rpc.system.name=grpc",
                "rpc.method=_OTHER",
                "rpc.response.status_code=UNIMPLEMENTED",
                "error.type=UNIMPLEMENTED"
            ]
        );
        let create = shared.methods["/simplebank.v1.SimpleBank/CreateUser"];
        assert_eq!(
            shared.set(create, Code::InvalidArgument).attributes.len(),
            3,
            "no error.type"
        );
        assert!(RpcMetricsLayer::new(&meter, &[b"\xff\xff"]).is_err());
    }
}
