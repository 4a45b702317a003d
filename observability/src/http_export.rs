//! OTLP/HTTP's transport (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`): each export one
//! `POST` of the protobuf bytes on an HTTP/1.1 connection to the collector, kept open between
//! exports and driven by the `otlp-export` thread's runtime, as the gRPC channel is. Used by the
//! span exporter (`span_export`) and, through [`opentelemetry_http::HttpClient`], by the stock
//! metrics exporter. One request at a time on a connection; each signal has its own.
//!
//! Why not the gRPC exporter only: with every span exported, the worker spends less CPU per
//! span over HTTP/1.1 than over HTTP/2 (BENCHMARKS.md, scenario 7).

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, StatusCode, Uri,
    client::conn::http1::SendRequest,
    header::{
        CONTENT_ENCODING, CONTENT_TYPE, HOST, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT,
    },
};
use prost::bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    runtime::Handle,
    task::AbortHandle,
};

use crate::{
    InitError,
    endpoint::Endpoint,
    export::OnceAMinute,
    span_export::{Failure, http_failure, no_reply, retrying},
};

/// The most of a collector's reply read: an export's reply is a few bytes (a partial success
/// at most); a collector or proxy answering with more is not read further, and its connection
/// is closed.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// What a connection reads in one exchange before its reads fail (one read may pass it by its
/// size): the reply's body and heads, informational ones (`100 Continue`) included. hyper
/// skips those and reads on, so that a collector sending them without end kept the export
/// thread busy until the timeout; a body alone is bounded by [`MAX_REPLY_BYTES`].
const MAX_EXCHANGE_BYTES: usize = MAX_REPLY_BYTES + 64 * 1024;

/// The protobuf bodies' media type (OTLP/HTTP).
pub(crate) const PROTOBUF: &str = "application/x-protobuf";

/// A collector's reply to one request.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    /// `Retry-After` as sent (seconds or an HTTP date), if any: see [`Reply::retry_after`].
    pub retry_after: Option<HeaderValue>,
    /// `Content-Type`, if any.
    pub content_type: Option<HeaderValue>,
    /// The body of a success (at most [`MAX_REPLY_BYTES`]); empty for any other status, whose
    /// body is not read (a proxy's error page may be long, and is never shown).
    pub body: Bytes,
    /// Whether a success's body was read whole: one cut short (the connection closed, or past
    /// [`MAX_REPLY_BYTES`]) is still a success, the status having said so, but no OTLP reply.
    pub complete: bool,
}

impl Reply {
    /// The wait `Retry-After` asks for, from now: its seconds or its HTTP date, at most
    /// `limit` (a collector asking for more than the export has left is not waited for;
    /// a huge or past value cannot overflow a deadline).
    pub fn retry_after(&self, limit: Duration) -> Option<Duration> {
        let value = self.retry_after.as_ref()?.to_str().ok()?.trim();
        let wait = match value.parse::<u64>() {
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => httpdate::parse_http_date(value)
                .ok()?
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        };
        Some(wait.min(limit.saturating_add(Duration::from_secs(1))))
    }

    /// Whether a success's reply is an OTLP one's: read whole, and empty (all went in) or
    /// labelled as protobuf, the request's media type, as a collector answers.
    pub fn is_protobuf(&self) -> bool {
        let labelled = || {
            let media_type = self
                .content_type
                .as_ref()?
                .to_str()
                .ok()?
                .split(';')
                .next()?;
            Some(media_type.trim().eq_ignore_ascii_case(PROTOBUF))
        };
        self.complete && (self.body.is_empty() || labelled() == Some(true))
    }
}

/// What failed on the way (no reply): the connection, the request or the reply's reading, or
/// the time. Never the endpoint or a header's value: neither is quoted by these causes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failed {
    #[error("no answer within the export's timeout")]
    TimedOut,
    #[error("cannot connect to the collector: {0}")]
    Connect(std::io::Error),
    #[error("{}", simplebank_queue::report::chain(.0))]
    Http(#[from] hyper::Error),
    #[error("the export thread is gone")]
    ExportThreadGone,
    #[error("the export's task panicked")]
    Panicked,
}

/// Whether a request on a kept connection failed because the collector had closed it (an idle
/// timeout racing the request: hyper saw the close before writing, or the collector reset the
/// connection with the request unread, or closed it before any reply). The request may have
/// reached the collector in the last case: sent again, it is at most a duplicate, as a retry is.
fn closed_meanwhile(err: &hyper::Error) -> bool {
    if err.is_canceled() || err.is_closed() || err.is_incomplete_message() {
        return true;
    }
    let mut cause = std::error::Error::source(err);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            );
        }
        cause = err.source();
    }
    false
}

/// Posts export requests to one collector URL.
#[derive(Clone)]
pub(crate) struct HttpTransport(Arc<Inner>);

struct Inner {
    /// `host:port`, dialled and sent as `Host`.
    authority: String,
    /// The request target: the URL's path (and nothing else: a query is refused at start),
    /// parsed at start so that building a request cannot fail.
    path: Uri,
    /// The checked `OTEL_EXPORTER_OTLP_*_HEADERS`, and the user agent.
    headers: HeaderMap,
    timeout: Duration,
    /// The `otlp-export` thread's runtime, where connections live and requests run.
    runtime: Handle,
    /// The open connection, if any: taken out while a request is on it, put back only after a
    /// whole exchange, so that one given up on (a timeout) is never used again.
    idle: Mutex<Option<Connection>>,
    /// Metrics: a failure without a reply (the stock exporter's error says only "network
    /// error") is warned about with its cause, at most once a minute.
    failure_warned: OnceAMinute,
}

/// Neither the endpoint (its path may be a vendor's tenant) nor header values (API keys).
impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("headers", &self.0.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.0.timeout)
            .finish_non_exhaustive()
    }
}

/// An HTTP/1.1 connection; its driving task ends when it is dropped.
struct Connection {
    send: SendRequest<Full<Bytes>>,
    driver: AbortHandle,
    /// What its socket may still read in this exchange.
    unread: Arc<AtomicUsize>,
}

/// A connection's socket, whose reads fail once the exchange's bytes are used up.
struct Metered {
    stream: tokio::net::TcpStream,
    unread: Arc<AtomicUsize>,
}

impl AsyncRead for Metered {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let unread = this.unread.load(Ordering::Relaxed);
        if unread == 0 {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the collector sent more than {MAX_EXCHANGE_BYTES} bytes in reply"
            ))));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.unread
            .store(unread.saturating_sub(read), Ordering::Relaxed);
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl HttpTransport {
    /// A transport to `endpoint` (checked: `http://host:port/path`) sending `headers`, each
    /// request given at most `timeout`. Call on the runtime that is to drive its connections
    /// (the `otlp-export` thread's). Connects at the first request.
    pub fn new(
        endpoint: &Endpoint,
        headers: HeaderMap,
        timeout: Duration,
    ) -> Result<Self, InitError> {
        let cause = |cause: &str| InitError::Exporter {
            variable: endpoint.variable,
            cause: cause.into(),
        };
        let rest = endpoint
            .url
            .split_once("://")
            .map_or(endpoint.url.as_str(), |(_, rest)| rest);
        let (authority, path) = rest
            .find('/')
            .map_or((rest, "/"), |at| (&rest[..at], &rest[at..]));
        let path = path
            .parse::<Uri>()
            .map_err(|_| cause("has a path HTTP does not accept: percent-encode it"))?;
        let mut headers = headers;
        // The user's own (OTEL_EXPORTER_OTLP_HEADERS) wins.
        if !headers.contains_key(USER_AGENT) {
            headers.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("simplebank/", env!("CARGO_PKG_VERSION"))),
            );
        }
        headers.insert(
            HOST,
            HeaderValue::from_str(authority).map_err(|_| cause("not a host HTTP accepts"))?,
        );
        let runtime = Handle::try_current().map_err(|_| cause("built outside a runtime"))?;
        Ok(Self(Arc::new(Inner {
            authority: authority.to_owned(),
            path,
            headers,
            timeout,
            runtime,
            idle: Mutex::new(None),
            failure_warned: OnceAMinute::default(),
        })))
    }

    /// Posts `body` as `content_type`, within `left` (capped at the transport's timeout).
    /// Runs on the `otlp-export` runtime whatever the caller's: the span batcher's thread
    /// and the SDK's metrics thread have no I/O driver of their own.
    pub async fn post(
        &self,
        body: Bytes,
        content_type: HeaderValue,
        extra: Option<HeaderMap>,
        left: Duration,
    ) -> Result<Reply, Failed> {
        let inner = Arc::clone(&self.0);
        let deadline = tokio::time::Instant::now() + left.min(inner.timeout);
        self.0
            .runtime
            .spawn(async move { inner.exchange(body, content_type, extra, deadline).await })
            .await
            .unwrap_or_else(|gone| {
                Err(if gone.is_panic() {
                    Failed::Panicked
                } else {
                    Failed::ExportThreadGone
                })
            })
    }
}

impl Inner {
    /// One request and its reply, on the idle connection or a new one. A kept connection the
    /// collector closed meanwhile (an idle timeout racing the request) is replaced once, at
    /// once: that is no failure of the collector's, and at exit there is no retry.
    /// Each step waits until `deadline` at most.
    async fn exchange(
        &self,
        body: Bytes,
        content_type: HeaderValue,
        extra: Option<HeaderMap>,
        deadline: tokio::time::Instant,
    ) -> Result<Reply, Failed> {
        if let Some(connection) = self.take_idle() {
            match self
                .exchange_on(connection, &body, &content_type, &extra, deadline)
                .await
            {
                Err(Failed::Http(err)) if closed_meanwhile(&err) => tracing::debug!(
                    target: "simplebank::otlp",
                    "the collector had closed the kept connection: the request is sent again on a new one"
                ),
                done => return done,
            }
        }
        let connection = tokio::time::timeout_at(deadline, self.connect())
            .await
            .map_err(|_| Failed::TimedOut)??;
        self.exchange_on(connection, &body, &content_type, &extra, deadline)
            .await
    }

    /// The kept connection, if it is still open (as far as hyper has seen).
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.take()
            .filter(|connection| !connection.send.is_closed())
    }

    async fn exchange_on(
        &self,
        mut connection: Connection,
        body: &Bytes,
        content_type: &HeaderValue,
        extra: &Option<HeaderMap>,
        deadline: tokio::time::Instant,
    ) -> Result<Reply, Failed> {
        tokio::time::timeout_at(deadline, connection.send.ready())
            .await
            .map_err(|_| Failed::TimedOut)??;
        connection
            .unread
            .store(MAX_EXCHANGE_BYTES, Ordering::Relaxed);
        let mut request = hyper::Request::new(Full::new(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.path.clone();
        let headers = request.headers_mut();
        // What the caller sets (the stock metrics exporter's `Content-Encoding`) first, then
        // ours: checked at start, they replace any of the same name.
        if let Some(extra) = extra {
            headers.extend(extra.clone());
        }
        for name in self.headers.keys() {
            headers.remove(name);
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        headers.insert(CONTENT_TYPE, content_type.clone());
        let response = tokio::time::timeout_at(deadline, connection.send.send_request(request))
            .await
            .map_err(|_| Failed::TimedOut)??;
        let status = response.status();
        let retry_after = response.headers().get(RETRY_AFTER).cloned();
        let content_type = response.headers().get(CONTENT_TYPE).cloned();
        let mut reply = Reply {
            status,
            retry_after,
            content_type,
            body: Bytes::new(),
            complete: false,
        };
        if !status.is_success() {
            // Not read: the connection is closed with the rest of the reply in it.
            return Ok(reply);
        }
        // A success whose body cannot be read whole (cut short, too long, or not all there
        // by the deadline) is a success all the same (the spans or metrics are in): not sent
        // again; its connection is closed.
        let body = Limited::new(response.into_body(), MAX_REPLY_BYTES).collect();
        if let Ok(Ok(body)) = tokio::time::timeout_at(deadline, body).await {
            reply.body = body.to_bytes();
            reply.complete = true;
            *self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(connection);
        }
        Ok(reply)
    }

    async fn connect(&self) -> Result<Connection, Failed> {
        let stream = tokio::net::TcpStream::connect(self.authority.as_str())
            .await
            .map_err(Failed::Connect)?;
        // Each request is written whole before its reply is awaited: no need to wait for ACKs.
        stream.set_nodelay(true).map_err(Failed::Connect)?;
        let unread = Arc::new(AtomicUsize::new(MAX_EXCHANGE_BYTES));
        let stream = Metered {
            stream,
            unread: Arc::clone(&unread),
        };
        let (send, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection).abort_handle();
        Ok(Connection {
            send,
            driver,
            unread,
        })
    }
}

/// The stock metrics exporter's client: its requests go the same way, its own URL and headers
/// replaced by the checked ones, retried here by the span exporter's policy within the
/// timeout (the stock exporter's own retries are off: each of its attempts got the whole
/// timeout, so that an export took up to twice it).
#[tonic::async_trait]
impl opentelemetry_http::HttpClient for HttpTransport {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<Bytes>,
    ) -> Result<opentelemetry_http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static(PROTOBUF));
        // Of the stock exporter's headers only the body's encoding: its others were read from
        // the same variables by laxer rules; the checked ones are sent instead.
        let extra = parts
            .headers
            .get(CONTENT_ENCODING)
            .map(|encoding| HeaderMap::from_iter([(CONTENT_ENCODING, encoding.clone())]));
        let transport = self.clone();
        // On the `otlp-export` runtime, for its timer: the SDK's metrics thread has none.
        let delivered = self
            .0
            .runtime
            .spawn(async move {
                let send = |left| {
                    let (transport, body) = (&transport, body.clone());
                    let (content_type, extra) = (content_type.clone(), extra.clone());
                    async move {
                        let reply = transport
                            .post(body, content_type, extra, left)
                            .await
                            .map_err(|failed| no_reply(&failed))?;
                        if reply.status.is_success() {
                            Ok(reply)
                        } else {
                            Err(http_failure(&reply, left))
                        }
                    }
                };
                retrying(transport.0.timeout, Instant::now(), || false, send).await
            })
            .await
            .map_err(|_| Failed::ExportThreadGone)?;
        let reply = match delivered {
            Ok(reply) => reply,
            // A status: the stock exporter names it.
            Err(Failure {
                status: Some(status),
                ..
            }) => Reply {
                status,
                retry_after: None,
                content_type: None,
                body: Bytes::new(),
                complete: false,
            },
            Err(failure) => {
                if self.0.failure_warned.due() {
                    tracing::warn!(
                        target: "simplebank::otlp",
                        "metrics {} (next warning in a minute at the earliest)",
                        failure.text
                    );
                }
                return Err(failure.text.into());
            }
        };
        let mut response = opentelemetry_http::Response::new(reply.body);
        *response.status_mut() = reply.status;
        Ok(response)
    }
}
