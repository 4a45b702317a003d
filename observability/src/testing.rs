//! An OTLP trace receiver (feature `test-util`): a tonic server implementing the collector's
//! TraceService from the official OpenTelemetry protobuf definitions (`opentelemetry-proto`).
//! Tests keep the spans to inspect them; benchmarks only count them.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tonic::{Request, Response, Status};

/// Every span received (with the `service.name` that sent it), or only their count.
#[derive(Debug, Clone, Default)]
pub struct OtlpSink {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    count: Arc<AtomicUsize>,
    keep: bool,
}

#[tonic::async_trait]
impl TraceService for OtlpSink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
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

impl OtlpSink {
    /// Starts a receiver on a free loopback port; `keep`: store the spans (tests) or only
    /// count them (benchmarks). Returns it and its port.
    pub async fn start(keep: bool) -> std::io::Result<(Self, u16)> {
        let sink = Self {
            keep,
            ..Self::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let service = TraceServiceServer::new(sink.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok((sink, port))
    }

    /// How many spans arrived.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The kept spans.
    pub fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
