//! An OTLP receiver (feature `test-util`): a tonic server implementing the collector's
//! TraceService and MetricsService from the official OpenTelemetry protobuf definitions
//! (`opentelemetry-proto`). Tests keep the spans and metric points to inspect them; benchmarks
//! only count them.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    metrics::v1::{metric::Data, number_data_point},
    resource::v1::Resource,
    trace::v1::Span,
};
use tonic::{Request, Response, Status};

/// Every span and metric point received (with the `service.name` that sent it), or only
/// their count.
#[derive(Debug, Clone, Default)]
pub struct OtlpSink {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    count: Arc<AtomicUsize>,
    points: Arc<Mutex<Vec<MetricPoint>>>,
    metric_exports: Arc<AtomicUsize>,
    /// Each trace export's request headers (gRPC metadata), when keeping.
    trace_headers: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    /// Requests that reached the OTLP/HTTP listener, by path.
    http_requests: Arc<Mutex<Vec<String>>>,
    /// The OTLP/HTTP listener's port.
    http_port: u16,
    keep: bool,
}

/// One data point of one exported metric, flattened for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    /// The resource's attributes (`service.name`, `service.instance.id`, ...), as text.
    pub resource: BTreeMap<String, String>,
    /// The instrumentation scope's name.
    pub scope: String,
    /// The metric's name.
    pub name: String,
    /// Its unit.
    pub unit: String,
    /// The point's attributes, as text.
    pub attributes: BTreeMap<String, String>,
    /// When it was taken (ns since the epoch).
    pub time_unix_nano: u64,
    /// Its value.
    pub value: PointValue,
}

/// The value of a [`MetricPoint`].
#[derive(Debug, Clone, PartialEq)]
pub enum PointValue {
    /// A counter's total (cumulative temporality) or a non-monotonic sum.
    Sum(f64),
    /// A gauge's reading.
    Gauge(f64),
    /// A histogram's sample count and sum.
    Histogram {
        /// How many samples.
        count: u64,
        /// Their sum.
        sum: f64,
    },
}

impl PointValue {
    /// The sum's or gauge's value, or the histogram's count.
    pub fn number(&self) -> f64 {
        match self {
            Self::Sum(v) | Self::Gauge(v) => *v,
            #[allow(clippy::cast_precision_loss)]
            Self::Histogram { count, .. } => *count as f64,
        }
    }
}

impl MetricPoint {
    /// The service that sent it.
    pub fn service(&self) -> &str {
        self.resource.get("service.name").map_or("", String::as_str)
    }

    /// One attribute, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// Any attribute value as text (what tests compare against).
pub fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn resource_attributes(resource: Option<&Resource>) -> BTreeMap<String, String> {
    resource
        .map(|r| attributes(&r.attributes))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl MetricsService for OtlpSink {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metric_exports.fetch_add(1, Ordering::Relaxed);
        if self.keep {
            let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
            for resource_metrics in request.into_inner().resource_metrics {
                let resource = resource_attributes(resource_metrics.resource.as_ref());
                for scope_metrics in resource_metrics.scope_metrics {
                    let scope = scope_metrics.scope.map(|s| s.name).unwrap_or_default();
                    for metric in scope_metrics.metrics {
                        let point = |attrs: &[KeyValue], time_unix_nano, value| MetricPoint {
                            resource: resource.clone(),
                            scope: scope.clone(),
                            name: metric.name.clone(),
                            unit: metric.unit.clone(),
                            attributes: attributes(attrs),
                            time_unix_nano,
                            value,
                        };
                        #[allow(clippy::cast_precision_loss)]
                        let number =
                            |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p
                                .value
                            {
                                Some(number_data_point::Value::AsDouble(d)) => d,
                                Some(number_data_point::Value::AsInt(i)) => i as f64,
                                None => f64::NAN,
                            };
                        match &metric.data {
                            Some(Data::Sum(sum)) => {
                                points.extend(sum.data_points.iter().map(|p| {
                                    point(
                                        &p.attributes,
                                        p.time_unix_nano,
                                        PointValue::Sum(number(p)),
                                    )
                                }))
                            }
                            Some(Data::Gauge(gauge)) => {
                                points.extend(gauge.data_points.iter().map(|p| {
                                    point(
                                        &p.attributes,
                                        p.time_unix_nano,
                                        PointValue::Gauge(number(p)),
                                    )
                                }));
                            }
                            Some(Data::Histogram(histogram)) => {
                                points.extend(histogram.data_points.iter().map(|p| {
                                    point(
                                        &p.attributes,
                                        p.time_unix_nano,
                                        PointValue::Histogram {
                                            count: p.count,
                                            sum: p.sum.unwrap_or_default(),
                                        },
                                    )
                                }));
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for OtlpSink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        if self.keep {
            let headers = request
                .metadata()
                .clone()
                .into_headers()
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect();
            self.trace_headers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(headers);
        }
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                self.count.fetch_add(scope.spans.len(), Ordering::Relaxed);
                if self.keep {
                    spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver's HTTP/2 window for a request: the largest the exporter sends
/// (`MAX_REQUEST_BYTES`), twice the 2 MiB that kept up, and the connection's twice that. With
/// hyper's default, 1 MiB, the exporter fell behind fast traced drains and dropped spans
/// (BENCHMARKS.md, Tracing export, step 9).
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const _: () = assert!(crate::span_export::MAX_REQUEST_BYTES <= STREAM_WINDOW as usize);

impl OtlpSink {
    /// Starts a receiver (traces and metrics) on a free loopback port; `keep`: store the spans
    /// and metric points (tests) or only count them (benchmarks). Returns it and its port.
    pub async fn start(keep: bool) -> std::io::Result<(Self, u16)> {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sink = Self {
            keep,
            http_port: http.local_addr()?.port(),
            ..Self::default()
        };
        tokio::spawn(sink.clone().serve_http(http));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let metrics = MetricsServiceServer::new(sink.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut server = tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(2 * STREAM_WINDOW);
        let router = if keep {
            server.add_service(TraceServiceServer::new(sink.clone()))
        } else {
            server.add_service(count::SpanCounter(Arc::clone(&sink.count)))
        };
        tokio::spawn(async move {
            let _ = router
                .add_service(metrics)
                .serve_with_incoming(incoming)
                .await;
        });
        Ok((sink, port))
    }

    /// The port of its OTLP/HTTP listener (`POST /v1/traces`, `/v1/metrics`, protobuf bodies),
    /// which keeps or counts what arrives as the gRPC one does.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The paths of the requests its OTLP/HTTP listener received, in arrival order.
    pub fn http_requests(&self) -> Vec<String> {
        self.http_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves OTLP/HTTP on `listener`: HTTP/1.1, as the exporter speaks it.
    async fn serve_http(self, listener: tokio::net::TcpListener) {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let sink = self.clone();
            let service = hyper::service::service_fn(move |request| {
                let sink = sink.clone();
                async move { Ok::<_, std::convert::Infallible>(sink.http_export(request).await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    }

    /// One OTLP/HTTP request: its body decoded as the path says (or only its spans counted),
    /// answered with an empty protobuf response.
    async fn http_export(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<http_body_util::Full<prost::bytes::Bytes>> {
        use http_body_util::BodyExt as _;
        use prost::Message as _;
        let path = request.uri().path().to_owned();
        self.http_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        let (parts, body) = request.into_parts();
        let reply = |status: u16| {
            hyper::Response::builder()
                .status(status)
                .header("content-type", "application/x-protobuf")
                .body(http_body_util::Full::default())
                .unwrap_or_default()
        };
        let Ok(body) = body.collect().await.map(|body| body.to_bytes()) else {
            return reply(400);
        };
        let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers);
        let exported = match path.as_str() {
            "/v1/traces" if !self.keep => match count::spans_in(&body) {
                Ok(spans) => {
                    self.count.fetch_add(spans, Ordering::Relaxed);
                    Ok(())
                }
                Err(_) => return reply(400),
            },
            "/v1/traces" => match ExportTraceServiceRequest::decode(body) {
                Ok(decoded) => {
                    let request = Request::from_parts(metadata, Default::default(), decoded);
                    TraceService::export(self, request).await.map(|_| ())
                }
                Err(_) => return reply(400),
            },
            "/v1/metrics" => match ExportMetricsServiceRequest::decode(body) {
                Ok(decoded) => {
                    let request = Request::from_parts(metadata, Default::default(), decoded);
                    MetricsService::export(self, request).await.map(|_| ())
                }
                Err(_) => return reply(400),
            },
            _ => return reply(404),
        };
        reply(if exported.is_ok() { 200 } else { 500 })
    }

    /// How many spans arrived.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The kept spans.
    pub fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The request headers of each trace export kept (`start(true)`), in arrival order.
    pub fn trace_headers(&self) -> Vec<BTreeMap<String, String>> {
        self.trace_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many metric exports arrived.
    pub fn metric_exports(&self) -> usize {
        self.metric_exports.load(Ordering::Relaxed)
    }

    /// Every kept metric point, in the order received.
    pub fn metric_points(&self) -> Vec<MetricPoint> {
        self.points
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest point of each series (resource, metric, attributes) named `name`: with
    /// cumulative temporality, the totals so far.
    pub fn latest(&self, name: &str) -> Vec<MetricPoint> {
        let mut latest: BTreeMap<String, MetricPoint> = BTreeMap::new();
        for point in self.metric_points().into_iter().filter(|p| p.name == name) {
            let series = format!("{:?}{:?}", point.resource, point.attributes);
            match latest.get(&series) {
                Some(seen) if seen.time_unix_nano > point.time_unix_nano => {}
                _ => {
                    latest.insert(series, point);
                }
            }
        }
        latest.into_values().collect()
    }
}

/// The trace service of a receiver that only counts (benchmarks). It reads each export request
/// down to its spans and skips their contents, which are never decoded: a full decode (every
/// attribute a `String`) took a tenth of the machine in the bench's traced drains, CPU that a
/// collector on another machine would not take from the worker and Redis (BENCHMARKS.md,
/// scenario 7).
mod count {
    use std::{
        convert::Infallible,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Context, Poll},
    };

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::encoding::{DecodeContext, WireType};
    use tonic::codegen::{BoxFuture, Service, http};

    /// `ExportTraceServiceRequest` read only as far as its spans (the field numbers of the
    /// OTLP protobuf definitions); every other field is skipped unread.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Request {
        #[prost(message, repeated, tag = "1")]
        resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct ResourceSpans {
        #[prost(message, repeated, tag = "2")]
        scope_spans: Vec<ScopeSpans>,
    }

    /// `ScopeSpans` as the count of its spans (field 2): each span is stepped over by its
    /// length, its fields never walked, so a span whose own fields are malformed still counts.
    /// Decoding only: the receiver never sends one.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct ScopeSpans {
        spans: usize,
    }

    impl prost::Message for ScopeSpans {
        fn encode_raw(&self, _buf: &mut impl prost::bytes::BufMut) {}

        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: WireType,
            buf: &mut impl prost::bytes::Buf,
            ctx: DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            if tag == 2 {
                // A span is a message: anything else in its place is no span.
                prost::encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                self.spans += 1;
            }
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }

        fn encoded_len(&self) -> usize {
            0
        }

        fn clear(&mut self) {
            self.spans = 0;
        }
    }

    /// The spans in the bytes of an export request.
    pub(super) fn spans_in(bytes: &[u8]) -> Result<usize, prost::DecodeError> {
        Ok(spans(<Request as prost::Message>::decode(bytes)?))
    }

    fn spans(request: Request) -> usize {
        request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans)
            .sum()
    }

    #[derive(Clone)]
    pub(super) struct SpanCounter(pub(super) Arc<AtomicUsize>);

    impl tonic::server::NamedService for SpanCounter {
        const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    }

    impl tonic::server::UnaryService<Request> for SpanCounter {
        type Response = ExportTraceServiceResponse;
        type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

        fn call(&mut self, request: tonic::Request<Request>) -> Self::Future {
            self.0
                .fetch_add(spans(request.into_inner()), Ordering::Relaxed);
            std::future::ready(Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            })))
        }
    }

    impl Service<http::Request<tonic::body::Body>> for SpanCounter {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
            let counter = self.clone();
            Box::pin(async move {
                if request.uri().path()
                    != concat!(
                        "/opentelemetry.proto.collector.trace.v1.TraceService",
                        "/Export"
                    )
                {
                    return Ok(tonic::Status::unimplemented("").into_http());
                }
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(counter, request).await)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::{
            ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
        },
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };
    use prost::Message as _;

    use super::{OtlpSink, count};

    fn span(n: u8) -> Span {
        Span {
            trace_id: vec![n; 16],
            span_id: vec![n; 8],
            name: format!("process {n}"),
            attributes: vec![KeyValue {
                key: "messaging.system".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("redis".into())),
                }),
                ..KeyValue::default()
            }],
            ..Span::default()
        }
    }

    /// Two resources, one with an empty scope: 5 spans in all.
    fn request() -> ExportTraceServiceRequest {
        // With the scope and schema URL the exporter sends: fields that are no spans.
        let scope = |spans: std::ops::Range<u8>| ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "simplebank".into(),
                ..InstrumentationScope::default()
            }),
            spans: spans.map(span).collect(),
            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
        };
        ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(0..3), scope(0..0)],
                    ..ResourceSpans::default()
                },
                ResourceSpans {
                    scope_spans: vec![scope(3..5)],
                    ..ResourceSpans::default()
                },
            ],
        }
    }

    /// The counting receiver's decoder finds every span of a request without reading them,
    /// and refuses a request whose span field is not a message.
    #[test]
    fn spans_are_counted_by_their_framing_alone() {
        let bytes = request().encode_to_vec();
        assert_eq!(count::spans_in(&bytes).expect("decodes"), 5);
        // ScopeSpans (field 2 of ResourceSpans) holding a varint as field 2 (spans).
        let odd = [0x0a, 0x04, 0x12, 0x02, 0x10, 0x01];
        assert!(count::spans_in(&odd).is_err());
        // A span longer than the ScopeSpans holding it, though not than the request: the
        // ResourceSpans goes on with a schema URL.
        let overlong = [
            0x0a, 0x0b, 0x12, 0x04, 0x12, 0x05, 0x00, 0x00, 0x1a, 0x03, b'a', b'b', b'c',
        ];
        assert!(count::spans_in(&overlong).is_err());
    }

    /// Through the receiver's gRPC service, as the exporter sends them.
    #[tokio::test]
    async fn the_counting_receiver_counts_what_arrives() {
        let (sink, port) = OtlpSink::start(false).await.expect("receiver");
        let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect");
        client.export(request()).await.expect("export");
        client.export(request()).await.expect("export");
        assert_eq!(sink.count(), 10);
        assert!(sink.spans().is_empty());
    }

    /// The receiver's windows, as it announces them to a client (its SETTINGS frame and the
    /// WINDOW_UPDATE that opens the connection's beyond HTTP/2's initial 65,535 bytes): room
    /// for the largest request the exporter sends, two on the connection.
    #[tokio::test]
    async fn the_receiver_takes_a_whole_request_without_waiting_to_read_it() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let (_sink, port) = OtlpSink::start(false).await.expect("receiver");
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        // The client's preface: the magic, then an empty SETTINGS frame.
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        socket.write_all(&preface).await.expect("preface");
        let (mut stream_window, mut connection_increment) = (None, None);
        let read = async {
            while stream_window.is_none() || connection_increment.is_none() {
                let mut head = [0; 9];
                socket.read_exact(&mut head).await.expect("frame header");
                let length =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0; length];
                socket
                    .read_exact(&mut payload)
                    .await
                    .expect("frame payload");
                let on_connection = head[5..9] == [0; 4];
                match head[3] {
                    // SETTINGS (not its ACK): six bytes a setting; 4 is INITIAL_WINDOW_SIZE.
                    4 if head[4] & 1 == 0 => {
                        for setting in payload.chunks_exact(6) {
                            if setting[..2] == [0, 4] {
                                stream_window = Some(u32::from_be_bytes(
                                    setting[2..].try_into().expect("four bytes"),
                                ));
                            }
                        }
                    }
                    8 if on_connection => {
                        connection_increment = Some(
                            u32::from_be_bytes(payload[..4].try_into().expect("four bytes"))
                                & 0x7fff_ffff,
                        );
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the receiver's settings and window update");
        let largest = u32::try_from(crate::span_export::MAX_REQUEST_BYTES).expect("fits");
        let stream_window = stream_window.expect("read");
        assert!(stream_window >= largest, "stream window {stream_window}");
        assert_eq!(
            connection_increment.expect("read") + 65_535,
            2 * stream_window,
            "the connection's window holds two requests"
        );
    }
}
