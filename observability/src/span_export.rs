//! The OTLP span exporter: sends the request bytes of each batch ([`crate::span_batch`]) on a
//! tonic channel (OTLP/gRPC) or as an HTTP/1.1 `POST` (OTLP/HTTP, [`crate::http_export`]),
//! driven by the `otlp-export` thread, retrying what the specification calls transient. It
//! reads the variables the stock exporter reads for traces (endpoint, headers, timeout,
//! compression), checked at start like the endpoint: a bad value stops the program with the
//! variable's name, never its value (headers carry API keys).

use std::{
    str::FromStr as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use prost::{
    Message as _,
    bytes::{Buf as _, Bytes},
};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::HeaderValue,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::Channel,
};

use crate::{
    InitError,
    endpoint::{Endpoint, Protocol, first_set, invalid},
    export::{OnceAMinute, unwinding},
    http_export::{self, HttpTransport, PROTOBUF},
};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The variables of one signal's exporter settings, each `[its own, the common one]`: the
/// first set wins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Signal {
    headers: [&'static str; 2],
    timeout: [&'static str; 2],
    compression: [&'static str; 2],
}

impl Signal {
    pub const TRACES: Self = Self {
        headers: [
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ],
        timeout: [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
        compression: [
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ],
    };
    pub const METRICS: Self = Self {
        headers: [
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ],
        timeout: [
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ],
        compression: [
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ],
    };
}

/// The specification's default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer is refused: an export that may wait hours against a hung collector loses every span
/// meanwhile without a warning.
const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// Headers past this are refused at start: collectors and the proxies in front of them refuse
/// larger header lists (Envoy's default is 60 KiB), and every export would fail.
const MAX_HEADERS_BYTES: usize = 60 * 1024;

/// An exporter's settings besides the endpoint, read from the environment: the span
/// exporter's, and those handed to the metrics exporter.
#[derive(Clone)]
pub(crate) struct Settings {
    pub headers: MetadataMap,
    pub timeout: Duration,
    /// The variable that asked for a compression this build does not do (`gzip`, `zstd`):
    /// warned about once logging is up, as the stock exporter ignored it with a warning.
    pub ignored_compression: Option<&'static str>,
}

/// Header values are secrets (API keys): only their names are shown.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("headers", &header_names(&self.headers))
            .field("timeout", &self.timeout)
            .field("ignored_compression", &self.ignored_compression)
            .finish()
    }
}

fn header_names(headers: &MetadataMap) -> Vec<String> {
    headers
        .keys()
        .map(|key| match key {
            tonic::metadata::KeyRef::Ascii(key) => key.as_str().to_owned(),
            tonic::metadata::KeyRef::Binary(key) => key.as_str().to_owned(),
        })
        .collect()
}

impl Settings {
    /// The settings of `signal`'s exporter, checked. The metrics exporter reads its own with
    /// opentelemetry-otlp's rules, which skip what they cannot parse; checking them here first
    /// stops the program on the same values for both signals.
    pub fn from_env(signal: Signal) -> Result<Self, InitError> {
        let headers = match first_set(signal.headers)? {
            Some((variable, value)) => {
                parse_headers(&value).map_err(|message| invalid(variable, message))?
            }
            None => MetadataMap::new(),
        };
        let timeout = match first_set(signal.timeout)? {
            Some((variable, value)) => match value.trim().parse::<u64>() {
                Ok(ms @ 1..=MAX_TIMEOUT_MS) => Duration::from_millis(ms),
                _ => {
                    return Err(invalid(
                        variable,
                        format!(
                            "must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS} \
                             (10 minutes), such as 10000"
                        ),
                    ));
                }
            },
            None => DEFAULT_TIMEOUT,
        };
        let ignored_compression = match first_set(signal.compression)? {
            None => None,
            Some((variable, value)) => match value.trim().to_ascii_lowercase().as_str() {
                "none" => None,
                "gzip" | "zstd" => Some(variable),
                _ => {
                    return Err(invalid(
                        variable,
                        "must be none, gzip or zstd (this build sends OTLP uncompressed)".into(),
                    ));
                }
            },
        };
        Ok(Self {
            headers,
            timeout,
            ignored_compression,
        })
    }
}

const SET_BY_THE_TRANSPORT: [&str; 12] = [
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "expect",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `key=value` pairs separated by commas, values percent-encoded (the OTLP exporter
/// specification's format); keys are lower-cased as gRPC metadata requires. As the stock
/// exporter: a pair with an empty value is left out, a key given twice is sent twice. The
/// reason if not, naming the pair by its position, never its text.
fn parse_headers(value: &str) -> Result<MetadataMap, String> {
    if value.len() > MAX_HEADERS_BYTES {
        return Err(format!(
            "is longer than {MAX_HEADERS_BYTES} bytes, more than a collector accepts"
        ));
    }
    let mut headers = MetadataMap::new();
    for (n, pair) in value.split(',').enumerate() {
        let n = n + 1;
        if pair.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("pair {n} is not key=value"));
        };
        let key = key.trim().to_ascii_lowercase();
        let value = percent_decode(value.trim())
            .ok_or_else(|| format!("pair {n}'s value has a bad %-escape or is not UTF-8"))?;
        if key.ends_with("-bin") {
            return Err(format!(
                "pair {n}'s key ends in -bin: binary headers are not supported"
            ));
        }
        let key = MetadataKey::from_str(&key)
            .map_err(|_| format!("pair {n}'s key is not a valid header name"))?;
        if key.as_str().starts_with("grpc-") {
            return Err(format!("pair {n}'s key is reserved by gRPC"));
        }
        // HTTP and the exporter set these themselves: sent as well, they were dropped on the
        // way (`connection`...) or contradicted the request (`content-length`, `host`, or
        // `content-encoding` on a body that is not encoded: every export refused).
        if SET_BY_THE_TRANSPORT.contains(&key.as_str()) {
            return Err(format!(
                "pair {n}'s key is a header the exporter or HTTP sets itself"
            ));
        }
        if value.is_empty() {
            continue;
        }
        // gRPC's ASCII metadata values are printable ASCII (0x20-0x7e).
        let value = value
            .bytes()
            .all(|byte| (0x20..0x7f).contains(&byte))
            .then(|| MetadataValue::try_from(value.as_str()).ok())
            .flatten()
            .ok_or_else(|| {
                format!(
                    "pair {n}'s value is not printable ASCII (a CR, LF, NUL, tab or other \
                     control character, or a character beyond ASCII)"
                )
            })?;
        headers.append(key, value);
    }
    Ok(headers)
}

fn percent_decode(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        if byte == b'%' {
            let hex = after.get(..2)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &after[2..];
        } else {
            bytes.push(byte);
            rest = after;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Sends encoded batches to one collector.
pub(crate) struct OtlpSpanExporter {
    transport: Transport,
    headers: MetadataMap,
    timeout: Duration,
    shut_down: AtomicBool,
    partial_warned: OnceAMinute,
    not_otlp_warned: OnceAMinute,
}

/// Neither the endpoint (it may carry `user:password@`) nor header values.
impl std::fmt::Debug for OtlpSpanExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSpanExporter")
            .field("headers", &header_names(&self.headers))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How batches reach the collector (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`).
enum Transport {
    Grpc(tonic::client::Grpc<Channel>),
    Http(HttpTransport),
}

/// An attempt that failed: what to log, and whether and when to try again.
#[derive(Debug)]
pub(crate) struct Failure {
    pub text: String,
    pub retryable: bool,
    /// The wait the collector asked for (`google.rpc.RetryInfo`, `Retry-After`).
    pub asked: Option<Duration>,
    /// OTLP/HTTP: the reply's status, when there was a reply.
    pub status: Option<hyper::StatusCode>,
}

/// Tries `send` (given what is left of `timeout`, counted from `started`) until it succeeds,
/// fails for good, or the retries or the time run out; once only when `once`. The policy is
/// [`RETRIES`]'s. Waits with Tokio's timer: call on a runtime.
pub(crate) async fn retrying<T, F: Future<Output = Result<T, Failure>>>(
    timeout: Duration,
    started: Instant,
    once: impl Fn() -> bool,
    mut send: impl FnMut(Duration) -> F,
) -> Result<T, Failure> {
    let mut backoff = FIRST_BACKOFF;
    let mut retries = 0;
    loop {
        let failure = match send(timeout.saturating_sub(started.elapsed())).await {
            Ok(done) => return Ok(done),
            Err(failure) => failure,
        };
        let wait = failure.asked.unwrap_or_else(|| jittered(backoff));
        if retries == RETRIES
            || !failure.retryable
            || wait >= timeout.saturating_sub(started.elapsed())
            || once()
        {
            return Err(failure);
        }
        // A collector may ask for a wait of minutes: bounded by the timeout above.
        tokio::time::sleep(wait).await;
        retries += 1;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What an OTLP/HTTP reply that is no success means: a failure, transient or not (the
/// specification's 429, 502, 503 and 504), named by its status. The body (a
/// `google.rpc.Status`) is not read, as the gRPC status's message is left out: it may quote
/// what it was sent.
pub(crate) fn http_failure(reply: &http_export::Reply, left: Duration) -> Failure {
    let retryable = matches!(reply.status.as_u16(), 429 | 502 | 503 | 504);
    Failure {
        text: format!("export failed: HTTP {}", reply.status.as_u16()),
        retryable,
        asked: if retryable {
            reply.retry_after(left)
        } else {
            None
        },
        status: Some(reply.status),
    }
}

/// A request that got no reply: the connection failed (a reply's heads too long for a
/// collector's among the causes) or the time ran out, all transient.
pub(crate) fn no_reply(failed: &http_export::Failed) -> Failure {
    Failure {
        text: format!("export failed: {failed}"),
        retryable: true,
        asked: None,
        status: None,
    }
}

/// Retries after a failure the OTLP specification calls transient, as the stock exporter's
/// recommended policy: 3 at most, waiting 100, 200 then 400 ms (less up to a fifth, jitter),
/// or what the collector's `google.rpc.RetryInfo` asks for, all within the export's timeout:
/// each attempt gets what is left of it. RESOURCE_EXHAUSTED is retried only with a
/// `RetryInfo` (the specification: the collector says recovery is possible).
const RETRIES: u32 = 3;
/// The largest request sent: gRPC servers refuse a message over 4 MiB unless told otherwise
/// (the OpenTelemetry Collector's and Jaeger's default), less room for framing.
pub(crate) const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024 - 4 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_millis(1600);

fn is_transient(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// The wait a collector asks for in a `google.rpc.RetryInfo` detail of its status, if any
/// (a detail that does not decode is none; a delay past the export's timeout gives up).
fn retry_delay(status: &Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    status.get_details_retry_info()?.retry_delay
}

/// `base` less up to a fifth, drawn from the clock: processes restarted together do not retry
/// in step.
fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    // Microseconds: some clocks count no finer.
    base - base / 5 * ((nanos / 1000) % 1000) / 1000
}

impl OtlpSpanExporter {
    /// Built on the runtime that will drive the channel (the `otlp-export` thread's). The
    /// connection is made at the first export, so a collector that is not up yet is no error.
    pub fn new(endpoint: &Endpoint, settings: Settings) -> Result<Self, InitError> {
        if endpoint.protocol == Protocol::HttpProtobuf {
            let transport = HttpTransport::new(
                endpoint,
                settings.headers.clone().into_headers(),
                settings.timeout,
            )?;
            return Ok(Self {
                transport: Transport::Http(transport),
                headers: settings.headers,
                timeout: settings.timeout,
                shut_down: AtomicBool::new(false),
                partial_warned: OnceAMinute::default(),
                not_otlp_warned: OnceAMinute::default(),
            });
        }
        let channel = tonic::transport::Endpoint::from_shared(endpoint.url.clone())
            .map_err(|_| InitError::Exporter {
                variable: endpoint.variable,
                cause: "not a URL tonic accepts".into(),
            })?
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("simplebank/", env!("CARGO_PKG_VERSION")))
            .map_err(|_| InitError::Exporter {
                variable: endpoint.variable,
                cause: "cannot set the user agent".into(),
            })?
            .connect_lazy();
        Ok(Self {
            transport: Transport::Grpc(tonic::client::Grpc::new(channel)),
            headers: settings.headers,
            timeout: settings.timeout,
            shut_down: AtomicBool::new(false),
            partial_warned: OnceAMinute::default(),
            not_otlp_warned: OnceAMinute::default(),
        })
    }

    /// Sends one request (`body`, from [`crate::span_batch::Batch::encode`]), retrying a
    /// transient failure within the export's timeout; after [`Self::shut_down`], once only.
    pub async fn export(&self, body: Vec<u8>) -> OTelSdkResult {
        self.deliver(Bytes::from(body), Instant::now()).await
    }

    /// From now on, no retries: what is left is sent once, at exit.
    pub fn shut_down(&self) {
        self.shut_down.store(true, Ordering::Release);
    }

    /// Sends `body`, retrying a transient failure, within what is left of the export's timeout
    /// (counted from `started`). On the `otlp-batch` thread's runtime, whose timer also tells
    /// of the spans dropped meanwhile.
    async fn deliver(&self, body: Bytes, started: Instant) -> OTelSdkResult {
        let response = retrying(
            self.timeout,
            started,
            || self.shut_down.load(Ordering::Acquire),
            |left| self.send(body.clone(), left),
        )
        .await
        .map_err(|failure| OTelSdkError::InternalFailure(failure.text))?;
        if let Some(partial) = response.partial_success
            && (partial.rejected_spans > 0 || !partial.error_message.is_empty())
        {
            self.warn_partial(partial.rejected_spans);
        }
        Ok(())
    }

    /// One request with `body`, given `left` of the export's timeout.
    async fn send(
        &self,
        body: Bytes,
        left: Duration,
    ) -> Result<ExportTraceServiceResponse, Failure> {
        match &self.transport {
            Transport::Grpc(grpc) => self.send_grpc(grpc, body, left).await.map_err(|status| {
                let asked = retry_delay(&status);
                Failure {
                    retryable: is_transient(status.code())
                        || (status.code() == tonic::Code::ResourceExhausted && asked.is_some()),
                    asked,
                    text: self.describe(&status),
                    status: None,
                }
            }),
            Transport::Http(http) => {
                let reply = http
                    .post(body, HeaderValue::from_static(PROTOBUF), None, left)
                    .await
                    .map_err(|failed| no_reply(&failed))?;
                if reply.status.is_success() {
                    // A collector answers in the request's media type, with a protobuf
                    // `ExportTraceServiceResponse` (empty when all went in). Anything else
                    // is a success all the same, the status says so, but not from a collector:
                    // the endpoint may be another service, or a proxy's.
                    let response = reply
                        .is_protobuf()
                        .then(|| ExportTraceServiceResponse::decode(reply.body).ok())
                        .flatten();
                    if response.is_none() {
                        self.warn_not_otlp(reply.status.as_u16());
                    }
                    return Ok(response.unwrap_or_default());
                }
                Err(http_failure(&reply, left))
            }
        }
    }

    /// One gRPC request with `body`, given `left` of the export's timeout (tonic keeps the
    /// shorter of it and the channel's, and tells the collector the deadline).
    async fn send_grpc(
        &self,
        grpc: &tonic::client::Grpc<Channel>,
        body: Bytes,
        left: Duration,
    ) -> Result<ExportTraceServiceResponse, Status> {
        let mut request =
            tonic::Request::from_parts(self.headers.clone(), tonic::Extensions::default(), body);
        request.set_timeout(left);
        let mut grpc = grpc.clone();
        grpc.ready()
            .await
            .map_err(|err| Status::from_error(err.into()))?;
        let response = unwinding(grpc.unary(
            request,
            tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH),
            Raw,
        ))
        .await
        .map_err(|unreadable| Status::from_error(Box::new(unreadable)))??;
        Ok(response.into_inner())
    }

    /// What went wrong, for a log line: the status code and the local causes (connection
    /// refused, timed out...), not the collector's message, which proxies and vendors' intakes
    /// fill with what they were sent (an API key). The endpoint has no user information
    /// (refused at start), and no cause quotes it.
    fn describe(&self, status: &Status) -> String {
        let mut text = format!("export failed: {:?}", status.code());
        let mut cause = std::error::Error::source(status);
        while let Some(err) = cause {
            text.push_str(": ");
            // h2 quotes a GOAWAY's debug data: text the collector chose, as its status message.
            if let Some(h2) = err.downcast_ref::<h2::Error>()
                && h2.is_go_away()
            {
                text.push_str("the collector closed the connection (GOAWAY");
                if let Some(reason) = h2.reason() {
                    text.push_str(&format!(", {reason:?}"));
                }
                text.push(')');
                break;
            }
            text.push_str(&err.to_string());
            cause = err.source();
        }
        text
    }

    /// A success whose reply is no OTLP response: warned about at most once a minute, without
    /// the reply.
    fn warn_not_otlp(&self, status: u16) {
        if self.not_otlp_warned.due() {
            tracing::warn!(
                target: "simplebank::otlp",
                status,
                "the OTLP/HTTP endpoint accepted the spans, but its reply is no OTLP response \
                 (not application/x-protobuf, or not an ExportTraceServiceResponse): is the \
                 endpoint a collector's? (next warning in a minute at the earliest)"
            );
        }
    }

    /// Spans the collector refused though the request succeeded: not retried (the
    /// specification says so), warned about at most once a minute.
    /// (Without the collector's message: as in `describe`, it may quote what it was sent.)
    fn warn_partial(&self, rejected: i64) {
        if self.partial_warned.due() {
            tracing::warn!(
                target: "simplebank::otlp",
                rejected_spans = rejected,
                "the OTLP collector accepted the spans only in part (next warning in a minute at the earliest)"
            );
        }
    }
}

/// Request bodies are already protobuf bytes; the response is decoded with prost.
#[derive(Debug, Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Self::Encoder {
        Raw
    }

    fn decoder(&mut self) -> Self::Decoder {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let response = ExportTraceServiceResponse::decode(&mut *src)
            .map_err(|_| Status::internal("the collector's response is not protobuf"))?;
        src.advance(src.remaining());
        Ok(Some(response))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn headers_are_pairs_with_percent_encoded_values() {
        let headers = parse_headers(
            " Api-Key = s%3Dcr%2Ct ,x-tenant=acme,, authorization=Basic%20YTpi,x-b=%7e,\
             x-tenant=second,x-empty=",
        )
        .unwrap();
        assert_eq!(headers.get("api-key").unwrap(), "s=cr,t");
        assert_eq!(
            headers.get_all("x-tenant").iter().collect::<Vec<_>>(),
            ["acme", "second"]
        );
        assert_eq!(headers.get("authorization").unwrap(), "Basic YTpi");
        assert!(headers.get("x-empty").is_none());
        assert_eq!(headers.len(), 5);
        assert!(parse_headers("").unwrap().is_empty());
        let debug = format!(
            "{:?}",
            Settings {
                headers,
                timeout: DEFAULT_TIMEOUT,
                ignored_compression: None
            }
        );
        assert!(
            debug.contains("api-key") && !debug.contains("s=cr"),
            "{debug}"
        );
    }

    #[test]
    fn a_bad_pair_is_refused_by_position_without_its_text() {
        let long = format!("k={}", "S3CR3T".repeat(11_000));
        for (bad, reason) in [
            ("a=1,S3CR3T", "pair 2 is not key=value"),
            (
                "k=S3CR3T%0d%0aX-Forged: 1",
                "pair 1's value is not printable ASCII",
            ),
            ("k=S3CR3T%00", "pair 1's value is not printable ASCII"),
            ("k=S3CR3T\r\nx: y", "pair 1's value is not printable ASCII"),
            ("k=S3CR3T\u{e9}", "pair 1's value is not printable ASCII"),
            ("k=S3CR3T%zz", "pair 1's value has a bad %-escape"),
            (
                "k=S3CR3T%ff",
                "pair 1's value has a bad %-escape or is not UTF-8",
            ),
            ("k=S3CR3T%4", "pair 1's value has a bad %-escape"),
            ("bad key=S3CR3T", "pair 1's key is not a valid header name"),
            ("=S3CR3T", "pair 1's key is not a valid header name"),
            (
                "k\u{202e}=S3CR3T",
                "pair 1's key is not a valid header name",
            ),
            (
                "k\u{0410}=S3CR3T",
                "pair 1's key is not a valid header name",
            ),
            ("grpc-timeout=S3CR3T", "pair 1's key is reserved by gRPC"),
            ("x-key-bin=S3CR3T", "pair 1's key ends in -bin"),
            ("k=S3CR3T%+9", "pair 1's value has a bad %-escape"),
            ("k=S3CR3T%C3%A9", "pair 1's value is not printable ASCII"),
            (
                "Host=S3CR3T",
                "pair 1's key is a header the exporter or HTTP sets",
            ),
            (
                "content-length=5",
                "pair 1's key is a header the exporter or HTTP sets",
            ),
            (
                "te=S3CR3T",
                "pair 1's key is a header the exporter or HTTP sets",
            ),
            // An encoding the body does not have: every export refused.
            (
                "Content-Encoding=gzip",
                "pair 1's key is a header the exporter or HTTP sets",
            ),
            (
                "expect=100-continue",
                "pair 1's key is a header the exporter or HTTP sets",
            ),
            (long.as_str(), "is longer than 61440 bytes"),
        ] {
            let err = parse_headers(bad).expect_err(bad);
            let bad = &bad[..bad.len().min(40)];
            assert!(err.starts_with(reason), "{bad:?}: {err}");
            assert!(!err.contains("S3CR3T"), "{bad:?}: {err}");
        }
    }

    /// A scripted collector, also used by the span processor's tests (`span_batch`).
    pub(crate) mod against_a_collector {
        use std::{
            collections::VecDeque,
            sync::{Arc, Mutex, atomic::AtomicUsize},
            time::SystemTime,
        };

        use opentelemetry::trace::{
            SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState,
        };
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceRequest,
            trace_service_server::{TraceService, TraceServiceServer},
        };
        use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

        use super::*;
        use crate::{span_batch::Batch, span_encoding::EncodedResource};

        pub(crate) type Reply = Result<ExportTraceServiceResponse, Status>;

        /// A collector answering each export with the next scripted reply (then success),
        /// after `delay`; from call `hang_from` on (counting from 1), never.
        #[derive(Clone, Default)]
        pub(crate) struct Scripted {
            pub replies: Arc<Mutex<VecDeque<Reply>>>,
            pub calls: Arc<AtomicUsize>,
            /// Spans in each request received.
            pub spans: Arc<Mutex<Vec<usize>>>,
            /// The spans' names, in the order received, every scope's.
            pub names: Arc<Mutex<Vec<String>>>,
            /// Requests answered (after `delay`).
            pub replied: Arc<AtomicUsize>,
            pub delay: Duration,
            pub hang_from: Option<usize>,
        }

        #[tonic::async_trait]
        impl TraceService for Scripted {
            async fn export(
                &self,
                request: tonic::Request<ExportTraceServiceRequest>,
            ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
                let spans: Vec<_> = request.get_ref().resource_spans[0]
                    .scope_spans
                    .iter()
                    .flat_map(|scope| &scope.spans)
                    .collect();
                self.spans.lock().unwrap().push(spans.len());
                self.names
                    .lock()
                    .unwrap()
                    .extend(spans.iter().map(|span| span.name.clone()));
                let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if self.hang_from.is_some_and(|from| call >= from) {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(self.delay).await;
                self.replied.fetch_add(1, Ordering::SeqCst);
                let next = self.replies.lock().unwrap().pop_front();
                next.unwrap_or_else(|| Ok(ExportTraceServiceResponse::default()))
                    .map(tonic::Response::new)
            }
        }

        pub(crate) async fn collector(replies: Vec<Reply>) -> (Scripted, String) {
            serve(Scripted {
                replies: Arc::new(Mutex::new(replies.into())),
                ..Scripted::default()
            })
            .await
        }

        pub(crate) async fn serve(collector: Scripted) -> (Scripted, String) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!(
                "http://otel-user:s3cret-pw@{}",
                listener.local_addr().unwrap()
            );
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let service = TraceServiceServer::new(collector.clone());
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(incoming),
            );
            (collector, url)
        }

        pub(crate) fn exporter(url: String, timeout: Duration) -> OtlpSpanExporter {
            let endpoint = Endpoint {
                variable: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                url,
                protocol: Protocol::Grpc,
            };
            let settings = Settings {
                headers: parse_headers("api-key=S3CR3T").unwrap(),
                timeout,
                ignored_compression: None,
            };
            OtlpSpanExporter::new(&endpoint, settings).unwrap()
        }

        /// A request of one span.
        pub(crate) fn batch() -> Vec<u8> {
            let mut body = Vec::new();
            Batch::of(&[span(0)]).encode(&EncodedResource::default(), &mut body);
            body
        }

        /// A span with an attribute of `bytes` bytes.
        pub(crate) fn span(bytes: usize) -> SpanData {
            let attributes = if bytes == 0 {
                vec![]
            } else {
                vec![opentelemetry::KeyValue::new("big", "x".repeat(bytes))]
            };
            SpanData {
                span_context: SpanContext::new(
                    TraceId::from(1),
                    SpanId::from(2),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                ),
                parent_span_id: SpanId::INVALID,
                parent_span_is_remote: false,
                span_kind: SpanKind::Consumer,
                name: "process".into(),
                start_time: SystemTime::now(),
                end_time: SystemTime::now(),
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: opentelemetry::trace::Status::Unset,
                instrumentation_scope: opentelemetry::InstrumentationScope::builder("t").build(),
            }
        }

        pub(crate) fn assert_no_secret(err: &OTelSdkError) {
            let text = err.to_string();
            for secret in ["S3CR3T", "s3cret-pw", "otel-user"] {
                assert!(!text.contains(secret), "{text}");
            }
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_transient_failure_is_retried_and_the_batch_delivered() {
            let (restarting, url) = collector(vec![
                Err(Status::unavailable("restarting")),
                Err(Status::unavailable("restarting")),
            ])
            .await;
            exporter(url, DEFAULT_TIMEOUT)
                .export(batch())
                .await
                .unwrap();
            assert_eq!(restarting.calls.load(Ordering::SeqCst), 3);
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn retries_stop_after_three_and_a_refusal_is_not_retried() {
            let (down, url) = collector(vec![Err(Status::unavailable("down")); 5]).await;
            let err = exporter(url, DEFAULT_TIMEOUT)
                .export(batch())
                .await
                .unwrap_err();
            assert_eq!(down.calls.load(Ordering::SeqCst), 4);
            assert!(err.to_string().contains("Unavailable"), "{err}");

            // The collector's message is left out: proxies echo what they were sent.
            let (refusing, url) = collector(vec![Err(Status::permission_denied(
                "api-key S3CR3T is not valid",
            ))])
            .await;
            let err = exporter(url, DEFAULT_TIMEOUT)
                .export(batch())
                .await
                .unwrap_err();
            assert_eq!(refusing.calls.load(Ordering::SeqCst), 1);
            assert!(err.to_string().contains("PermissionDenied"), "{err}");
            assert_no_secret(&err);
        }

        pub(crate) fn exhausted(retry_after: Option<Duration>) -> Reply {
            let details = match retry_after {
                Some(delay) => tonic_types::ErrorDetails::with_retry_info(Some(delay)),
                None => tonic_types::ErrorDetails::new(),
            };
            Err(<Status as tonic_types::StatusExt>::with_error_details(
                tonic::Code::ResourceExhausted,
                "memory limit reached",
                details,
            ))
        }

        /// RESOURCE_EXHAUSTED is retried when the collector says when (a `RetryInfo`), after
        /// the wait it asks for, and not otherwise; a wait past the export's timeout is not
        /// waited for.
        #[tokio::test(flavor = "multi_thread")]
        async fn resource_exhausted_is_retried_when_the_collector_says_when() {
            let (pressed, url) = collector(vec![exhausted(Some(Duration::from_millis(700)))]).await;
            let started = Instant::now();
            exporter(url, DEFAULT_TIMEOUT)
                .export(batch())
                .await
                .unwrap();
            assert_eq!(pressed.calls.load(Ordering::SeqCst), 2);
            // Its own backoff would have been 100 ms at most.
            assert!(started.elapsed() >= Duration::from_millis(700));

            let (full, url) = collector(vec![exhausted(None)]).await;
            let err = exporter(url, DEFAULT_TIMEOUT)
                .export(batch())
                .await
                .unwrap_err();
            assert_eq!(full.calls.load(Ordering::SeqCst), 1);
            assert!(err.to_string().contains("ResourceExhausted"), "{err}");

            let (later, url) = collector(vec![exhausted(Some(Duration::from_secs(3600)))]).await;
            let started = Instant::now();
            exporter(url, Duration::from_secs(2))
                .export(batch())
                .await
                .unwrap_err();
            assert_eq!(later.calls.load(Ordering::SeqCst), 1);
            assert!(started.elapsed() < Duration::from_secs(2));
        }

        /// A collector answering its first `bad` requests with a status whose
        /// `grpc-status-details-bin` is not base64 (tonic panics reading it), then with success;
        /// counts the requests.
        async fn malformed_details(bad: usize) -> (Arc<AtomicUsize>, String) {
            use tonic::codegen::http;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let calls = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&calls);
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let mut connection = h2::server::handshake(socket).await.unwrap();
                    let calls = Arc::clone(&counted);
                    tokio::spawn(async move {
                        while let Some(Ok((request, mut respond))) = connection.accept().await {
                            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
                            tokio::spawn(async move {
                                let mut body = request.into_body();
                                while let Some(Ok(chunk)) = body.data().await {
                                    let _ = body.flow_control().release_capacity(chunk.len());
                                }
                                let head = http::Response::builder()
                                    .header("content-type", "application/grpc");
                                if call <= bad {
                                    let head = head
                                        .header("grpc-status", "14")
                                        .header("grpc-status-details-bin", "!!!");
                                    let _ = respond.send_response(head.body(()).unwrap(), true);
                                    return;
                                }
                                let mut stream = respond
                                    .send_response(head.body(()).unwrap(), false)
                                    .unwrap();
                                let _ = stream.send_data(Bytes::from_static(&[0; 5]), false);
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                                let _ = stream.send_trailers(trailers);
                            });
                        }
                    });
                }
            });
            (calls, url)
        }

        /// A reply the gRPC client panics on fails its export, not retried, and the exporter
        /// goes on: the panic ended the `otlp-batch` thread, and every span after it was lost.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_reply_the_grpc_client_panics_on_fails_that_export_only() {
            let (calls, url) = malformed_details(1).await;
            let exporter = exporter(url, DEFAULT_TIMEOUT);
            let err = exporter.export(batch()).await.unwrap_err();
            assert!(err.to_string().contains("could not be read"), "{err}");
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            exporter.export(batch()).await.unwrap();
            assert_eq!(calls.load(Ordering::SeqCst), 2);
        }

        /// A collector that answers each request with a GOAWAY whose debug data quotes what it
        /// was sent (an API key).
        async fn goaway_with_debug_data() -> String {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut preface = [0; 24];
                        socket.read_exact(&mut preface).await?;
                        // SETTINGS (empty), then an ACK of the client's.
                        socket.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
                        socket.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await?;
                        loop {
                            let mut head = [0; 9];
                            socket.read_exact(&mut head).await?;
                            let length = usize::from(head[0]) << 16
                                | usize::from(head[1]) << 8
                                | usize::from(head[2]);
                            let mut payload = vec![0; length];
                            socket.read_exact(&mut payload).await?;
                            if head[3] == 1 {
                                break;
                            }
                        }
                        // GOAWAY: last stream 0, INTERNAL_ERROR, the debug data.
                        let debug = b"api-key=S3CR3T \xe2\x80\xae\x1b[31m\r\nforged";
                        let mut frame = vec![0, 0, (8 + debug.len()) as u8, 7, 0, 0, 0, 0, 0];
                        frame.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
                        frame.extend_from_slice(debug);
                        socket.write_all(&frame).await?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        std::io::Result::Ok(())
                    });
                }
            });
            url
        }

        /// A GOAWAY's debug data is the collector's text, left out of the error as its status
        /// message is.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_goaways_debug_data_is_left_out() {
            let url = goaway_with_debug_data().await;
            let err = exporter(url, Duration::from_secs(5))
                .export(batch())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("GOAWAY"), "{err}");
            assert!(!err.to_string().contains("forged"), "{err}");
            assert_no_secret(&err);
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_partial_success_is_a_success() {
            let (partial, url) = collector(vec![Ok(ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: 1,
                    error_message: "span too large".into(),
                }),
            })])
            .await;
            exporter(url, DEFAULT_TIMEOUT)
                .export(batch())
                .await
                .unwrap();
            assert_eq!(partial.calls.load(Ordering::SeqCst), 1);
        }

        /// A collector that accepts the connection and never answers: the export gives up
        /// within its timeout, retries included (each attempt gets what is left of it; before,
        /// four attempts of a full timeout each), naming no secret.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_collector_that_never_answers_costs_one_timeout() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let held = std::thread::spawn(move || {
                let (connection, _) = listener.accept().unwrap();
                std::thread::sleep(Duration::from_secs(8));
                drop(connection);
            });
            let hung = exporter(url, Duration::from_secs(1));
            let started = Instant::now();
            let err = hung.export(batch()).await.unwrap_err();
            let took = started.elapsed();
            assert!(took < Duration::from_millis(2500), "{took:?}");
            assert_no_secret(&err);
            drop(held);
        }

        /// A retry gets what is left of the timeout, not a timeout of its own: a slow refusal
        /// (1.5 s) then a collector that hangs is given up on at 2 s, not 3.6 s.
        #[tokio::test(flavor = "multi_thread")]
        async fn retries_share_the_exports_timeout() {
            let (hanging, url) = serve(Scripted {
                replies: Arc::new(Mutex::new(vec![Err(Status::unavailable("busy"))].into())),
                delay: Duration::from_millis(1500),
                hang_from: Some(2),
                ..Scripted::default()
            })
            .await;
            let started = Instant::now();
            let err = exporter(url, Duration::from_secs(2))
                .export(batch())
                .await
                .unwrap_err();
            let took = started.elapsed();
            assert_eq!(hanging.calls.load(Ordering::SeqCst), 2, "{err}");
            assert!(took < Duration::from_millis(3000), "{took:?}");
        }
    }

    /// The exporter over OTLP/HTTP against a scripted HTTP/1.1 collector.
    mod over_http {
        use std::{
            collections::VecDeque,
            sync::{
                Arc, Mutex,
                atomic::{AtomicUsize, Ordering},
            },
        };

        use http_body_util::BodyExt as _;
        use prost::Message as _;

        use super::{
            super::*,
            against_a_collector::{assert_no_secret, batch},
        };

        /// A reply: status, `Retry-After`, body; `None`: never answer. Status 0: close the
        /// connection without an answer.
        type Scripted = Option<(u16, Option<&'static str>, Vec<u8>)>;

        /// What the collector saw: each request's path, headers and body length, and the
        /// connections it accepted.
        #[derive(Clone, Default)]
        struct Seen {
            requests: Arc<Mutex<Vec<(String, hyper::HeaderMap, usize)>>>,
            connections: Arc<AtomicUsize>,
        }

        /// A collector answering each request with the next of `replies`, then 200, its
        /// bodies labelled as protobuf.
        async fn collector(replies: Vec<Scripted>) -> (Seen, String) {
            collector_answering_as(replies, PROTOBUF, Duration::ZERO).await
        }

        /// [`collector`], its bodies labelled `content_type`, each reply sent after `delay`.
        async fn collector_answering_as(
            replies: Vec<Scripted>,
            content_type: &'static str,
            delay: Duration,
        ) -> (Seen, String) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/otlp/v1/traces", listener.local_addr().unwrap());
            let seen = Seen::default();
            let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
            let state = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    let (seen, replies) = (state.clone(), Arc::clone(&replies));
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let (seen, replies) = (seen.clone(), Arc::clone(&replies));
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await?.to_bytes();
                                seen.requests.lock().unwrap().push((
                                    parts.uri.path().to_owned(),
                                    parts.headers,
                                    body.len(),
                                ));
                                let next = replies.lock().unwrap().pop_front();
                                let Some((status, retry_after, body)) =
                                    next.unwrap_or(Some((200, None, Vec::new())))
                                else {
                                    std::future::pending::<()>().await;
                                    unreachable!()
                                };
                                tokio::time::sleep(delay).await;
                                if status == 0 {
                                    // hyper closes the connection on a service's error.
                                    return Err("closed without an answer".into());
                                }
                                let mut reply = hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", content_type);
                                if let Some(after) = retry_after {
                                    reply = reply.header("retry-after", after);
                                }
                                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                                    reply
                                        .body(http_body_util::Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                    );
                }
            });
            (seen, url)
        }

        fn exporter(url: String, timeout: Duration) -> OtlpSpanExporter {
            let endpoint = Endpoint {
                variable: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                url,
                protocol: Protocol::HttpProtobuf,
            };
            let settings = Settings {
                headers: parse_headers("api-key=S3CR3T,x-tenant=acme").unwrap(),
                timeout,
                ignored_compression: None,
            };
            OtlpSpanExporter::new(&endpoint, settings).unwrap()
        }

        /// The log lines written while `future` ran on this thread.
        async fn logged<T>(future: impl Future<Output = T>) -> (T, String) {
            let lines = crate::logs::tests::Captured::default();
            let writer = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            let output = {
                let _default = tracing::subscriber::set_default(subscriber);
                future.await
            };
            (output, lines.text())
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_batch_is_posted_to_the_path_with_the_headers_and_transient_statuses_retried() {
            let (seen, url) = collector(vec![
                Some((503, None, Vec::new())),
                Some((429, Some("0"), Vec::new())),
            ])
            .await;
            let body = batch();
            exporter(url, DEFAULT_TIMEOUT)
                .export(body.clone())
                .await
                .unwrap();
            let requests = seen.requests.lock().unwrap().clone();
            assert_eq!(requests.len(), 3);
            for (path, headers, length) in &requests {
                assert_eq!(path, "/otlp/v1/traces");
                assert_eq!(*length, body.len());
                assert_eq!(headers["content-type"], "application/x-protobuf");
                assert_eq!(headers["api-key"], "S3CR3T");
                assert_eq!(headers["x-tenant"], "acme");
                assert!(headers["host"].to_str().unwrap().starts_with("127.0.0.1:"));
            }
            // Connections are kept between requests; a failure's is closed (its body unread).
            assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
            let (seen, url) = collector(Vec::new()).await;
            let exporter = exporter(url, DEFAULT_TIMEOUT);
            for _ in 0..3 {
                exporter.export(batch()).await.unwrap();
            }
            assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_refusal_is_not_retried_and_its_body_is_not_quoted() {
            for status in [400, 401, 403, 404, 413, 500] {
                let refusal = b"api-key S3CR3T is not valid".to_vec();
                let (seen, url) = collector(vec![Some((status, None, refusal))]).await;
                let err = exporter(url, DEFAULT_TIMEOUT)
                    .export(batch())
                    .await
                    .unwrap_err();
                assert_eq!(seen.requests.lock().unwrap().len(), 1, "{status}");
                assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
                assert_no_secret(&err);
            }
        }

        /// A transient status with a body longer than any collector's (a proxy's error page)
        /// is still that status, retried: the body of a failure is not read.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_transient_status_with_a_long_body_is_retried() {
            let page = vec![b'x'; 1 << 20];
            let (seen, url) = collector(vec![Some((503, None, page))]).await;
            exporter(url, DEFAULT_TIMEOUT)
                .export(batch())
                .await
                .unwrap();
            assert_eq!(seen.requests.lock().unwrap().len(), 2);
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn retry_after_is_waited_for_within_the_timeout() {
            let (seen, url) = collector(vec![Some((503, Some("1"), Vec::new()))]).await;
            let started = Instant::now();
            exporter(url, DEFAULT_TIMEOUT)
                .export(batch())
                .await
                .unwrap();
            assert!(started.elapsed() >= Duration::from_secs(1));
            assert_eq!(seen.requests.lock().unwrap().len(), 2);
            // A wait past the export's timeout is not waited for: the export gives up before
            // its timeout.
            let timeout = Duration::from_secs(5);
            let (seen, url) = collector(vec![Some((503, Some("60"), Vec::new()))]).await;
            let started = Instant::now();
            let err = exporter(url, timeout).export(batch()).await.unwrap_err();
            assert!(started.elapsed() < timeout, "{err}");
            assert_eq!(seen.requests.lock().unwrap().len(), 1);
        }

        /// A `Retry-After` of the most seconds there are, after a second of the export had
        /// passed, overflowed the deadline's sum: the panic ended the thread that exports.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_huge_retry_after_is_not_waited_for() {
            let (seen, url) = collector(vec![
                Some((503, Some("1"), Vec::new())),
                Some((503, Some("18446744073709551615"), Vec::new())),
            ])
            .await;
            let err = exporter(url, DEFAULT_TIMEOUT)
                .export(batch())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("HTTP 503"), "{err}");
            assert_eq!(seen.requests.lock().unwrap().len(), 2);
        }

        #[test]
        fn retry_after_is_seconds_or_a_date_at_most_the_limit() {
            let reply = |value: &str| http_export::Reply {
                status: hyper::StatusCode::SERVICE_UNAVAILABLE,
                retry_after: Some(HeaderValue::from_str(value).unwrap()),
                content_type: None,
                body: Bytes::new(),
                complete: false,
            };
            let limit = Duration::from_secs(10);
            let at = |from_now: Duration| {
                httpdate::fmt_http_date(std::time::SystemTime::now() + from_now)
            };
            for (value, expected) in [
                ("3", Some(Duration::from_secs(3))),
                (" 3 ", Some(Duration::from_secs(3))),
                ("18446744073709551615", Some(Duration::from_secs(11))),
                ("-1", None),
                ("1.5", None),
                ("soon", None),
                ("Wed, 21 Oct 2015 07:28:00 GMT", Some(Duration::ZERO)),
                (
                    &at(Duration::from_secs(3600)),
                    Some(Duration::from_secs(11)),
                ),
            ] {
                assert_eq!(reply(value).retry_after(limit), expected, "{value}");
            }
            let soon = reply(&at(Duration::from_secs(5)))
                .retry_after(limit)
                .unwrap();
            assert!(soon <= Duration::from_secs(5) && soon >= Duration::from_secs(3));
        }

        /// A collector that never answers costs the export its timeout; the connection the
        /// request was left on is not used again: the next export connects anew and succeeds.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_hung_collector_costs_one_timeout_and_its_connection() {
            let (seen, url) = collector(vec![None]).await;
            let exporter = exporter(url, Duration::from_secs(1));
            let err = exporter.export(batch()).await.unwrap_err();
            assert!(err.to_string().contains("timeout"), "{err}");
            assert_no_secret(&err);
            exporter.export(batch()).await.unwrap();
            assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
        }

        /// A kept connection the collector closes after reading the next request, without an
        /// answer, is replaced at once, even at exit: the request is sent again (a duplicate,
        /// as a retry may be), since the same close races an idle timeout.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_kept_connection_closed_by_the_collector_is_replaced_at_once() {
            let (seen, url) = collector(vec![
                Some((200, None, Vec::new())),
                Some((0, None, Vec::new())),
            ])
            .await;
            let kept = exporter(url, DEFAULT_TIMEOUT);
            kept.export(batch()).await.unwrap();
            kept.shut_down();
            kept.export(batch()).await.unwrap();
            assert_eq!(seen.requests.lock().unwrap().len(), 3);
            assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
            // On a new connection, the same is a failure (not sent twice at once).
            let (seen, url) = collector(vec![Some((0, None, Vec::new()))]).await;
            let fresh = exporter(url, DEFAULT_TIMEOUT);
            fresh.shut_down();
            let err = fresh.export(batch()).await.unwrap_err();
            assert_no_secret(&err);
            assert_eq!(seen.requests.lock().unwrap().len(), 1);
        }

        /// A success's reply longer than any collector's is not read to its end; the status
        /// said the spans are in: not sent again, warned about.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_long_success_is_cut_off_and_not_sent_again() {
            let (seen, url) = collector(vec![Some((200, None, vec![b'x'; 1 << 20]))]).await;
            let (exported, logs) = logged(exporter(url, DEFAULT_TIMEOUT).export(batch())).await;
            exported.unwrap();
            assert!(logs.contains("its reply is no OTLP response"), "{logs}");
            assert_eq!(seen.requests.lock().unwrap().len(), 1);
        }

        /// Reads one request (its heads and the body their `content-length` announces) off
        /// `stream`; false at its end.
        async fn read_request(stream: &mut tokio::net::TcpStream) -> bool {
            use tokio::io::AsyncReadExt as _;
            let mut read = Vec::new();
            let mut chunk = [0; 8192];
            loop {
                if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                    let heads = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
                    let length: usize = heads
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length:"))
                        .map_or(0, |value| value.trim().parse().unwrap());
                    if read.len() >= end + 4 + length {
                        return true;
                    }
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => read.extend_from_slice(&chunk[..n]),
                }
            }
        }

        /// A collector speaking HTTP/1.1 by hand: each connection is given to `serve`, with
        /// its number (from 0); the requests it read are counted.
        async fn by_hand<F: Future<Output = ()> + Send + 'static>(
            serve: impl Fn(tokio::net::TcpStream, usize, Arc<AtomicUsize>) -> F + Send + 'static,
        ) -> (Arc<AtomicUsize>, String) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
            let requests = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&requests);
            tokio::spawn(async move {
                let mut connections = 0;
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, connections, Arc::clone(&counted)));
                    connections += 1;
                }
            });
            (requests, url)
        }

        const OK: &[u8] =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";

        /// A success whose body ends before its length (the connection closed), or stalls
        /// (`stall`): the spans are in, not sent again; warned about.
        async fn a_success_cut_short_is_not_sent_again(stall: bool) {
            use tokio::io::AsyncWriteExt as _;
            let (requests, url) = by_hand(move |mut stream, _, requests| async move {
                if read_request(&mut stream).await {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\n\
                                  content-length: 100\r\n\r\nabc";
                    let _ = stream.write_all(reply).await;
                    if stall {
                        std::future::pending::<()>().await;
                    }
                }
            })
            .await;
            let exporter = exporter(url, Duration::from_secs(1));
            let (exported, logs) = logged(exporter.export(batch())).await;
            exported.unwrap();
            assert!(logs.contains("its reply is no OTLP response"), "{logs}");
            assert_eq!(requests.load(Ordering::SeqCst), 1);
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_success_whose_body_is_cut_short_is_not_sent_again() {
            a_success_cut_short_is_not_sent_again(false).await;
        }

        /// Before, the export ran into its timeout and was reported lost.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_success_whose_body_stalls_is_not_sent_again() {
            a_success_cut_short_is_not_sent_again(true).await;
        }

        /// A kept connection the collector closes with the next request unread (its idle
        /// timeout as the request arrives: the kernel resets the connection) is replaced at
        /// once, even at exit.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_kept_connection_reset_with_the_request_unread_is_replaced_at_once() {
            use tokio::io::AsyncWriteExt as _;
            let (requests, url) = by_hand(|mut stream, connection, requests| async move {
                while read_request(&mut stream).await {
                    requests.fetch_add(1, Ordering::SeqCst);
                    stream.write_all(OK).await.unwrap();
                    if connection == 0 {
                        // The next request arrives, and is left unread.
                        stream.readable().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return;
                    }
                }
            })
            .await;
            let kept = exporter(url, DEFAULT_TIMEOUT);
            kept.export(batch()).await.unwrap();
            kept.shut_down();
            kept.export(batch()).await.unwrap();
            assert_eq!(requests.load(Ordering::SeqCst), 2);
        }

        /// A partial success (protobuf in a 200) is a success, warned about with the count of
        /// spans refused, not the collector's message.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_partial_success_is_a_success_and_warned_about() {
            let partial = ExportTraceServiceResponse {
                partial_success: Some(
                    opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess {
                        rejected_spans: 7,
                        error_message: "S3CR3T".into(),
                    },
                ),
            };
            let (_, url) = collector(vec![Some((200, None, partial.encode_to_vec()))]).await;
            let (exported, logs) = logged(exporter(url, DEFAULT_TIMEOUT).export(batch())).await;
            exported.unwrap();
            assert!(logs.contains("accepted the spans only in part"), "{logs}");
            assert!(logs.contains("rejected_spans=7"), "{logs}");
            assert!(!logs.contains("S3CR3T"), "{logs}");
            // A full success says nothing.
            let (_, url) = collector(vec![Some((200, None, Vec::new()))]).await;
            let (exported, logs) = logged(exporter(url, DEFAULT_TIMEOUT).export(batch())).await;
            exported.unwrap();
            assert_eq!(logs, "");
        }

        /// A success that is no OTLP reply (another service's page, a proxy's) is a success
        /// the log warns about, without its body.
        #[tokio::test(flavor = "multi_thread")]
        async fn a_success_that_is_no_otlp_reply_is_warned_about() {
            for (content_type, body) in [
                ("text/html", b"<html>S3CR3T</html>".to_vec()),
                (PROTOBUF, b"\xffS3CR3T".to_vec()),
            ] {
                let (_, url) = collector_answering_as(
                    vec![Some((200, None, body))],
                    content_type,
                    Duration::ZERO,
                )
                .await;
                let (exported, logs) = logged(exporter(url, DEFAULT_TIMEOUT).export(batch())).await;
                exported.unwrap();
                assert!(logs.contains("its reply is no OTLP response"), "{logs}");
                assert!(logs.contains("status=200"), "{logs}");
                assert!(!logs.contains("S3CR3T"), "{logs}");
            }
        }

        /// hyper skips informational replies (`100 Continue`) and reads on: a collector
        /// sending them without end kept the export busy until its timeout, each time. What
        /// an exchange reads in all is bounded.
        #[tokio::test(flavor = "multi_thread")]
        async fn endless_informational_replies_are_cut_off() {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut request = [0; 4096];
                        let _ = stream.read(&mut request).await;
                        let heads = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(100);
                        while stream.write_all(&heads).await.is_ok() {}
                    });
                }
            });
            let err = exporter(url, DEFAULT_TIMEOUT)
                .export(batch())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("bytes in reply"), "{err}");
        }

        /// The metrics exporter's client (the stock exporter's own retries off) retries a
        /// transient status itself and hands back the last status.
        #[tokio::test(flavor = "multi_thread")]
        async fn the_metrics_client_retries_transient_statuses_and_hands_back_the_last() {
            use opentelemetry_http::HttpClient as _;
            let metrics = |url: String, timeout| {
                let endpoint = Endpoint {
                    variable: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                    url,
                    protocol: Protocol::HttpProtobuf,
                };
                http_export::HttpTransport::new(&endpoint, hyper::HeaderMap::new(), timeout)
                    .unwrap()
            };
            let request = || {
                let mut request = opentelemetry_http::Request::new(Bytes::from_static(b"\x0a\x00"));
                request
                    .headers_mut()
                    .insert("content-type", HeaderValue::from_static(PROTOBUF));
                // The stock exporter's headers, read by its rules: not sent.
                request
                    .headers_mut()
                    .insert("api-key", HeaderValue::from_static("unchecked"));
                request
            };
            let (seen, url) = collector(vec![
                Some((503, Some("0"), Vec::new())),
                Some((502, None, Vec::new())),
            ])
            .await;
            let response = metrics(url, DEFAULT_TIMEOUT)
                .send_bytes(request())
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let requests = seen.requests.lock().unwrap().clone();
            assert_eq!(requests.len(), 3);
            assert!(
                requests
                    .iter()
                    .all(|(_, headers, _)| !headers.contains_key("api-key"))
            );
            let (seen, url) = collector(vec![Some((429, None, Vec::new())); 4]).await;
            let response = metrics(url, DEFAULT_TIMEOUT)
                .send_bytes(request())
                .await
                .unwrap();
            assert_eq!(response.status(), 429);
            assert_eq!(seen.requests.lock().unwrap().len(), 4);
            // A retry gets what is left of the timeout, not all of it again (each of the
            // stock exporter's attempts did): here too little for the collector's answer.
            let timeout = Duration::from_secs(2);
            let (seen, url) = collector_answering_as(
                vec![Some((503, None, Vec::new())); 2],
                PROTOBUF,
                timeout * 6 / 10,
            )
            .await;
            let err = metrics(url, timeout)
                .send_bytes(request())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("timeout"), "{err}");
            assert_eq!(seen.requests.lock().unwrap().len(), 2);
        }
    }
}
