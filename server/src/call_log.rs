//! Every gRPC call gets a server span and one log line.
//!
//! The span follows the OpenTelemetry RPC conventions (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`), continues the trace of a `traceparent` the client
//! sent in the metadata, and is marked ERROR for the server-fault codes. The log line (method,
//! status code, duration) is written inside the span, so it carries the trace id, also for a
//! call its client gave up on (CANCELLED). Reflection and health calls (tools and load
//! balancers, several a second) are logged at DEBUG whatever their status, and their spans are
//! at DEBUG: not traced unless `RUST_LOG` asks for DEBUG.
//!
//! Unary errors are "trailers-only" responses, so their `grpc-status` is in the response
//! headers; a response without it in the headers is a success whose OK status follows in the
//! trailers.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Instant,
};

use simplebank_observability::propagation::{TraceContext, record_error, set_parent};
use tonic::{Code, codegen::http};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::log_every::LogEvery;

/// Wraps every service of the server in [`CallLog`].
#[derive(Debug, Clone, Default)]
pub struct CallLogLayer {
    unknown_methods: Arc<Mutex<LogEvery>>,
}

impl<S> Layer<S> for CallLogLayer {
    type Service = CallLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLog {
            inner,
            unknown_methods: Arc::clone(&self.unknown_methods),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallLog<S> {
    inner: S,
    /// Calls to methods that do not exist get a WARN line once per [`crate::log_every::EVERY`]
    /// at most (any client can make them, as fast as it likes); the others a DEBUG line.
    unknown_methods: Arc<Mutex<LogEvery>>,
}

/// Codes that mean the server failed (OpenTelemetry: span status ERROR on the server side).
pub(crate) fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Marks a response whose failure is the client's doing: [`crate::backpressure`] sets it on
/// every answer to a request message it could not read. It matters when the code is one of
/// the server-fault codes (DEADLINE_EXCEEDED, for a message that did not arrive within the
/// body timeout): the span keeps the code's ERROR status (the conventions go by code); the log
/// line is a WARN naming the client as the cause, so that a slow or vanishing client does not
/// page an operator.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientFault;

/// Reflection and health: called by tools and load balancers, not by users.
fn is_infrastructure(method: &str) -> bool {
    method.starts_with("/grpc.reflection.") || method.starts_with("/grpc.health.")
}

/// The code's name as gRPC documents it (`INVALID_ARGUMENT`), for the log.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The request path as it may appear in a log line and a span name: gRPC paths are
/// `/package.Service/Method`, so anything else (a client's spaces, braces or `key=value`
/// text, which the development log format would print as if they were fields) becomes `_`,
/// and the length is capped.
fn loggable_path(path: &str) -> String {
    const MAX: usize = 200;
    let mut clean: String = path
        .chars()
        .take(MAX)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if path.chars().count() > MAX {
        clean.push_str("...");
    }
    clean
}

/// The caller's W3C trace context, by the W3C Trace Context rules for repeated headers: two or
/// more `traceparent` headers are no parent (the call starts a trace of its own, as the W3C
/// test suite expects), and several `tracestate` headers are one list, joined with commas in
/// their order (HTTP's rule for a list header). A header that is not visible ASCII is none.
fn trace_context(headers: &http::HeaderMap) -> TraceContext {
    let mut parents = headers.get_all("traceparent").iter();
    let traceparent = match (parents.next(), parents.next()) {
        (Some(only), None) => only.to_str().ok().map(str::to_owned),
        _ => None,
    };
    let mut states = headers.get_all("tracestate").iter().peekable();
    let tracestate = states.peek().is_some().then(|| {
        states
            .map(|value| value.to_str().ok())
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(","))
    });
    TraceContext {
        traceparent,
        tracestate: tracestate.flatten(),
    }
}

fn header(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
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
        let method = loggable_path(request.uri().path());
        let full_name = method.trim_start_matches('/');
        let (rpc_service, rpc_method) = full_name.split_once('/').unwrap_or((full_name, ""));
        macro_rules! call_span {
            ($level:expr) => {
                tracing::span!(
                    $level,
                    "grpc",
                    otel.name = %full_name,
                    otel.kind = "server",
                    otel.status_code = tracing::field::Empty,
                    rpc.system = "grpc",
                    rpc.service = %rpc_service,
                    rpc.method = %rpc_method,
                    rpc.grpc.status_code = tracing::field::Empty,
                )
            };
        }
        // A probe's span is at DEBUG, so not traced by default: a load balancer checking
        // every few seconds would otherwise make a trace of each check.
        let span = if is_infrastructure(&method) {
            call_span!(tracing::Level::DEBUG)
        } else {
            call_span!(tracing::Level::INFO)
        };
        set_parent(&span, &trace_context(request.headers()));
        let started = Instant::now();
        let unknown_methods = Arc::clone(&self.unknown_methods);
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let mut unanswered = Unanswered {
                    method: Some(method),
                    started,
                    unknown_methods: Arc::clone(&unknown_methods),
                };
                let result = future.await;
                let method = unanswered.method.take().unwrap_or_default();
                let code = match &result {
                    Ok(response) => header(response.headers(), "grpc-status")
                        .and_then(|value| value.parse::<i32>().ok())
                        .map_or(Code::Ok, Code::from_i32),
                    Err(_) => Code::Unknown,
                };
                let client_fault = result
                    .as_ref()
                    .is_ok_and(|response| response.extensions().get::<ClientFault>().is_some());
                log_call(&method, code, started, client_fault, &unknown_methods);
                result
            }
            .instrument(span),
        )
    }
}

/// The call's log line, in its span (which gets the status code, and ERROR for the
/// server-fault codes, as the conventions say).
fn log_call(
    method: &str,
    code: Code,
    started: Instant,
    client_fault: bool,
    unknown_methods: &Mutex<LogEvery>,
) {
    let span = tracing::Span::current();
    span.record("rpc.grpc.status_code", code as i64);
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let status = code_name(code);
    if is_server_error(code) {
        record_error(&span, status);
    }
    if is_infrastructure(method) {
        // Whatever the status: health and reflection are library code whose failures come
        // from the request (tonic's codec answers a missing or malformed message with
        // INTERNAL) or from a client gone, and any client may send those at will.
        tracing::debug!(method, status, duration_ms, "gRPC call");
    } else if code == Code::Unimplemented {
        // Any client can ask for a method that does not exist: not an ERROR line an operator
        // is paged for, and a WARN line only now and then.
        let due = unknown_methods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .due();
        match due {
            Some(suppressed) => tracing::warn!(
                method,
                status,
                duration_ms,
                unknown_method_calls_not_warned = suppressed,
                "gRPC call"
            ),
            None => tracing::debug!(method, status, duration_ms, "gRPC call"),
        }
    } else if client_fault && is_server_error(code) {
        tracing::warn!(method, status, duration_ms, cause = "client", "gRPC call");
    } else if is_server_error(code) {
        tracing::error!(method, status, duration_ms, "gRPC call");
    } else {
        tracing::info!(method, status, duration_ms, "gRPC call");
    }
}

/// The code of a call dropped before its answer, for its log line and its metrics: INTERNAL
/// while a panic unwinds through it (the server's fault), else CANCELLED (its client reset the
/// stream or let its deadline pass, and hyper or tonic dropped the call).
pub(crate) fn unanswered_code() -> Code {
    if std::thread::panicking() {
        Code::Internal
    } else {
        Code::Cancelled
    }
}

/// A call not answered yet: dropped unanswered, it still gets its log line, with
/// [`unanswered_code`]. The drop runs in the call's span.
struct Unanswered {
    method: Option<String>,
    started: Instant,
    unknown_methods: Arc<Mutex<LogEvery>>,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(method) = self.method.take() {
            log_call(
                &method,
                unanswered_code(),
                self.started,
                false,
                &self.unknown_methods,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        fmt::Write as _,
        future::Future,
        pin::Pin,
        sync::{Arc, Mutex},
        task::{Context, Poll},
    };

    use tonic::codegen::http::{self, HeaderMap, HeaderValue};
    use tower::{Layer as _, Service};
    use tracing::{
        Event, Level, Metadata, Subscriber,
        field::{Field, Visit},
        span,
    };

    use super::{CallLogLayer, loggable_path, trace_context};

    /// Each event's level and fields, in order.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<(Level, String)>>>);

    struct Fields(String);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{}={value:?} ", field.name());
        }
    }

    impl Subscriber for Recorded {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            let level = *event.metadata().level();
            self.0.lock().expect("lock").push((level, fields.0));
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    type Answer = Pin<Box<dyn Future<Output = Result<http::Response<()>, Infallible>> + Send>>;

    /// A service whose every call is `answer()`.
    #[derive(Clone)]
    struct Handler(fn() -> Answer);

    impl Service<http::Request<()>> for Handler {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = Answer;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Answer {
            (self.0)()
        }
    }

    fn create_user() -> http::Request<()> {
        http::Request::builder()
            .uri("/simplebank.v1.SimpleBank/CreateUser")
            .body(())
            .expect("request")
    }

    /// A call dropped unanswered still gets its line: CANCELLED (its client gave up) at INFO,
    /// or INTERNAL at ERROR when a panic in the handler unwound through it.
    #[tokio::test]
    async fn a_call_never_answered_gets_its_line_as_cancelled_or_as_the_servers_fault() {
        let recorded = Recorded::default();
        let _default = tracing::subscriber::set_default(recorded.clone());

        let pending = || -> Answer { Box::pin(std::future::pending()) };
        let mut call = CallLogLayer::default().layer(Handler(pending));
        let mut given_up = call.call(create_user());
        let mut context = Context::from_waker(std::task::Waker::noop());
        assert!(given_up.as_mut().poll(&mut context).is_pending());
        drop(given_up);

        let panicking = || -> Answer { Box::pin(async { panic!("a bug in a handler") }) };
        let mut call = CallLogLayer::default().layer(Handler(panicking));
        let crashed = tokio::spawn(call.call(create_user())).await;
        assert!(crashed.is_err_and(|e| e.is_panic()));

        let lines = recorded.0.lock().expect("lock").clone();
        let calls: Vec<_> = lines
            .iter()
            .filter(|(_, fields)| fields.contains("gRPC call"))
            .collect();
        assert_eq!(calls.len(), 2, "{lines:?}");
        assert_eq!(calls[0].0, Level::INFO, "{lines:?}");
        assert!(calls[0].1.contains("status=\"CANCELLED\""), "{lines:?}");
        assert_eq!(calls[1].0, Level::ERROR, "{lines:?}");
        assert!(calls[1].1.contains("status=\"INTERNAL\""), "{lines:?}");
    }

    /// Any client can call methods that do not exist as fast as it likes: each call keeps its
    /// line, but only the first is a WARN (then one per period at most, counting those left
    /// at DEBUG); an outside attack had one WARN line per call.
    #[tokio::test]
    async fn calls_to_unknown_methods_warn_once_a_period() {
        let recorded = Recorded::default();
        let _default = tracing::subscriber::set_default(recorded.clone());
        let unimplemented = || -> Answer {
            Box::pin(async {
                Ok(http::Response::builder()
                    .header("grpc-status", "12")
                    .body(())
                    .expect("response"))
            })
        };
        let mut call = CallLogLayer::default().layer(Handler(unimplemented));
        for n in 0..5 {
            let request = http::Request::builder()
                .uri(format!("/simplebank.v1.SimpleBank/Nope{n}"))
                .body(())
                .expect("request");
            call.call(request).await.expect("answered");
        }
        let lines = recorded.0.lock().expect("lock").clone();
        let calls: Vec<_> = lines
            .iter()
            .filter(|(_, fields)| fields.contains("gRPC call"))
            .collect();
        assert_eq!(calls.len(), 5, "a line per call: {lines:?}");
        assert_eq!(calls[0].0, Level::WARN, "{lines:?}");
        assert!(calls[0].1.contains("Nope0"), "{lines:?}");
        assert!(
            calls[1..]
                .iter()
                .all(|(level, fields)| *level == Level::DEBUG
                    && fields.contains("status=\"UNIMPLEMENTED\"")),
            "{lines:?}"
        );
    }

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_bytes(value).expect("header value"));
        }
        map
    }

    #[test]
    fn repeated_trace_headers_follow_the_w3c_rules() {
        let one = trace_context(&headers(&[
            ("traceparent", PARENT.as_bytes()),
            ("tracestate", b"a=1"),
        ]));
        assert_eq!(one.traceparent.as_deref(), Some(PARENT));
        assert_eq!(one.tracestate.as_deref(), Some("a=1"));

        // Two traceparents, even equal ones: no parent.
        let two = trace_context(&headers(&[
            ("traceparent", PARENT.as_bytes()),
            ("traceparent", PARENT.as_bytes()),
            ("tracestate", b"a=1"),
        ]));
        assert_eq!(two.traceparent, None);

        // Several tracestates: one list, in order.
        let list = trace_context(&headers(&[
            ("traceparent", PARENT.as_bytes()),
            ("tracestate", b"a=1"),
            ("tracestate", b"b=2,c=3"),
        ]));
        assert_eq!(list.tracestate.as_deref(), Some("a=1,b=2,c=3"));

        // One that is not visible ASCII spoils the list, not the parent.
        let spoiled = trace_context(&headers(&[
            ("traceparent", PARENT.as_bytes()),
            ("tracestate", b"a=1"),
            ("tracestate", b"b=\xff"),
        ]));
        assert_eq!(spoiled.traceparent.as_deref(), Some(PARENT));
        assert_eq!(spoiled.tracestate, None);

        let none = trace_context(&HeaderMap::new());
        assert_eq!((none.traceparent, none.tracestate), (None, None));
    }

    #[test]
    fn paths_cannot_forge_log_fields() {
        assert_eq!(
            loggable_path("/simplebank.v1.SimpleBank/CreateUser"),
            "/simplebank.v1.SimpleBank/CreateUser"
        );
        assert_eq!(
            loggable_path("/x}: admin_login_ok user=root {a=1/CreateUser"),
            "/x___admin_login_ok_user_root__a_1/CreateUser"
        );
        assert_eq!(loggable_path("/a\u{1b}[31mred"), "/a__31mred");
        let long = format!("/{}", "a".repeat(10_000));
        assert_eq!(loggable_path(&long).len(), 203);
    }
}
