//! OTLP/HTTP's transport (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`): each export one
//! `POST` of the protobuf bytes on an HTTP/1.1 connection to the collector, kept open between
//! exports and driven by the `otlp-export` thread's runtime, as the gRPC channel is. Used by the
//! span exporter (`span_export`) and, through [`opentelemetry_http::HttpClient`], by the stock
//! metrics exporter. One request at a time on a connection; each signal has its own.
//!
//! Why not the gRPC exporter only: with every span exported, a drain kept 81-87% of its
//! untraced speed over gRPC and 86-95% over HTTP/1.1 in the same rounds, the worker spending
//! less CPU per span (BENCHMARKS.md, scenario 7).

use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    StatusCode,
    client::conn::http1::SendRequest,
    header::{CONTENT_TYPE, HOST, HeaderMap, HeaderValue, RETRY_AFTER, USER_AGENT},
};
use prost::bytes::Bytes;
use tokio::{runtime::Handle, sync::Mutex, task::AbortHandle};

use crate::{InitError, endpoint::Endpoint};

/// The most of a collector's reply read: an export's reply is a few bytes (a partial success
/// at most); a collector or proxy answering with more is not read further, and its connection
/// is closed.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// The protobuf bodies' media type (OTLP/HTTP).
pub(crate) const PROTOBUF: &str = "application/x-protobuf";

/// A collector's reply to one request.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    /// `Retry-After` in seconds (its date form is not read: the backoff applies instead).
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// What failed on the way (no reply): the connection, the request or the reply's reading, or
/// the time. Never the endpoint or a header's value: neither is quoted by these causes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failed {
    #[error("no answer within the export's timeout")]
    TimedOut,
    #[error("cannot connect to the collector: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("the collector's reply is longer than {MAX_REPLY_BYTES} bytes")]
    ReplyTooLong,
    #[error("the export thread is gone")]
    ExportThreadGone,
}

/// Posts export requests to one collector URL.
#[derive(Clone)]
pub(crate) struct HttpTransport(Arc<Inner>);

struct Inner {
    /// `host:port`, dialled and sent as `Host`.
    authority: String,
    /// The request target: the URL's path (and nothing else: a query is refused at start).
    path: String,
    /// The checked `OTEL_EXPORTER_OTLP_*_HEADERS`, and the user agent.
    headers: HeaderMap,
    timeout: Duration,
    /// The `otlp-export` thread's runtime, where connections live and requests run.
    runtime: Handle,
    /// The open connection, if any: taken out while a request is on it, put back only after a
    /// whole exchange, so that one given up on (a timeout) is never used again.
    idle: Mutex<Option<Connection>>,
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
            .map(|(_, rest)| rest)
            .ok_or_else(|| cause("not an http:// URL"))?;
        let (authority, path) = rest
            .find('/')
            .map_or((rest, "/"), |at| (&rest[..at], &rest[at..]));
        let mut headers = headers;
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("simplebank/", env!("CARGO_PKG_VERSION"))),
        );
        headers.insert(
            HOST,
            HeaderValue::from_str(authority).map_err(|_| cause("not a host HTTP accepts"))?,
        );
        let runtime = Handle::try_current().map_err(|_| cause("built outside a runtime"))?;
        Ok(Self(Arc::new(Inner {
            authority: authority.to_owned(),
            path: path.to_owned(),
            headers,
            timeout,
            runtime,
            idle: Mutex::new(None),
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
        let left = left.min(inner.timeout);
        self.0
            .runtime
            .spawn(async move {
                tokio::time::timeout(left, inner.exchange(body, content_type, extra))
                    .await
                    .unwrap_or(Err(Failed::TimedOut))
            })
            .await
            .unwrap_or(Err(Failed::ExportThreadGone))
    }
}

impl Inner {
    /// One request and its whole reply, on the idle connection or a new one.
    async fn exchange(
        &self,
        body: Bytes,
        content_type: HeaderValue,
        extra: Option<HeaderMap>,
    ) -> Result<Reply, Failed> {
        let idle = self.idle.lock().await.take();
        let mut connection = match idle {
            Some(connection) if !connection.send.is_closed() => connection,
            _ => self.connect().await?,
        };
        connection.send.ready().await?;
        let mut request = hyper::Request::post(self.path.as_str())
            .body(Full::new(body))
            .map_err(|_| Failed::ExportThreadGone)?;
        let headers = request.headers_mut();
        // What the caller sets (the stock metrics exporter's own headers) first, then ours:
        // checked at start, they replace any of the same name.
        if let Some(extra) = extra {
            headers.extend(extra);
        }
        for name in self.headers.keys() {
            headers.remove(name);
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        headers.insert(CONTENT_TYPE, content_type);
        let response = connection.send.send_request(request).await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|err| match err.downcast::<hyper::Error>() {
                Ok(err) => Failed::Http(*err),
                Err(_) => Failed::ReplyTooLong,
            })?
            .to_bytes();
        *self.idle.lock().await = Some(connection);
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }

    async fn connect(&self) -> Result<Connection, Failed> {
        let stream = tokio::net::TcpStream::connect(self.authority.as_str())
            .await
            .map_err(Failed::Connect)?;
        // Each request is written whole before its reply is awaited: no need to wait for ACKs.
        stream.set_nodelay(true).map_err(Failed::Connect)?;
        let (send, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection).abort_handle();
        Ok(Connection { send, driver })
    }
}

/// The stock metrics exporter's client: its requests go the same way, its own URL and headers
/// replaced by the checked ones.
#[tonic::async_trait]
impl opentelemetry_http::HttpClient for HttpTransport {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<Bytes>,
    ) -> Result<opentelemetry_http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (mut parts, body) = request.into_parts();
        let content_type = parts
            .headers
            .remove(CONTENT_TYPE)
            .unwrap_or(HeaderValue::from_static(PROTOBUF));
        let reply = self
            .post(body, content_type, Some(parts.headers), self.0.timeout)
            .await?;
        let mut response = opentelemetry_http::Response::new(reply.body);
        *response.status_mut() = reply.status;
        if let Some(after) = reply.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(after.as_secs()));
        }
        Ok(response)
    }
}
