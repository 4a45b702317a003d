//! The OTLP/gRPC span exporter: each batch is encoded on the SDK's batch thread straight into
//! request bytes ([`crate::span_encoding`]) and sent on a tonic channel driven by the
//! `otlp-export` thread. It reads the variables the stock exporter reads for traces (endpoint,
//! headers, timeout, compression), checked at start like the endpoint: a bad value stops the
//! program with the variable's name, never its value (headers carry API keys).

use std::{
    str::FromStr as _,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
};
use prost::{Message as _, bytes::Buf as _};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::Channel,
};

use crate::{
    InitError,
    endpoint::Endpoint,
    span_encoding::{EncodedResource, export_request},
};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Headers: the traces variable, else the common one.
const HEADERS_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_HEADERS",
];
/// Milliseconds per export: the traces variable, else the common one.
const TIMEOUT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
];
const COMPRESSION_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
];
/// The specification's default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers past this are refused at start: HTTP/2 servers commonly refuse a header list over
/// 16 KiB, and every export would fail.
const MAX_HEADERS_BYTES: usize = 8 * 1024;

/// The span exporter's settings besides the endpoint, read from the environment.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    headers: MetadataMap,
    timeout: Duration,
}

/// The first of `vars` set to something other than blanks, with its name.
fn first_set(vars: [&'static str; 2]) -> Result<Option<(&'static str, String)>, InitError> {
    for variable in vars {
        match std::env::var(variable) {
            Ok(value) if value.trim().is_empty() => {}
            Ok(value) => return Ok(Some((variable, value))),
            Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(invalid(variable, "is not valid UTF-8".into()));
            }
        }
    }
    Ok(None)
}

fn invalid(variable: &'static str, message: String) -> InitError {
    InitError::Setting { variable, message }
}

impl Settings {
    pub fn from_env() -> Result<Self, InitError> {
        let headers = match first_set(HEADERS_VARS)? {
            Some((variable, value)) => {
                parse_headers(&value).map_err(|message| invalid(variable, message))?
            }
            None => MetadataMap::new(),
        };
        let timeout = match first_set(TIMEOUT_VARS)? {
            Some((variable, value)) => match value.trim().parse::<u64>() {
                Ok(ms @ 1..) => Duration::from_millis(ms),
                _ => {
                    return Err(invalid(
                        variable,
                        "must be a whole number of milliseconds above 0, such as 10000".into(),
                    ));
                }
            },
            None => DEFAULT_TIMEOUT,
        };
        if let Some((variable, value)) = first_set(COMPRESSION_VARS)?
            && !value.trim().eq_ignore_ascii_case("none")
        {
            return Err(invalid(
                variable,
                "this build sends spans uncompressed: only `none` is accepted".into(),
            ));
        }
        Ok(Self { headers, timeout })
    }
}

/// `key=value` pairs separated by commas, values percent-encoded (the OTLP exporter
/// specification's format); keys are lower-cased as gRPC metadata requires. The reason if not,
/// naming the pair by its position, never its text.
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
        let key = MetadataKey::from_str(&key)
            .map_err(|_| format!("pair {n}'s key is not a valid header name"))?;
        if key.as_str().starts_with("grpc-") || key.as_str() == "te" {
            return Err(format!("pair {n}'s key is reserved by gRPC"));
        }
        let value = MetadataValue::try_from(value.as_str()).map_err(|_| {
            format!("pair {n}'s value has a control character (CR, LF, NUL...) or is not text")
        })?;
        headers.insert(key, value);
    }
    Ok(headers)
}

fn percent_decode(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        if byte == b'%' {
            let hex = after.get(..2)?;
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
#[derive(Debug)]
pub(crate) struct OtlpSpanExporter {
    grpc: tonic::client::Grpc<Channel>,
    /// Left out of error messages: it may carry `user:password@`.
    url: String,
    headers: MetadataMap,
    resource: EncodedResource,
    /// The size of the last request, to size the next one's buffer.
    last_size: AtomicUsize,
    shut_down: AtomicBool,
}

impl OtlpSpanExporter {
    /// Built on the runtime that will drive the channel (the `otlp-export` thread's). The
    /// connection is made at the first export, so a collector that is not up yet is no error.
    pub fn new(endpoint: &Endpoint, settings: Settings) -> Result<Self, InitError> {
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
            grpc: tonic::client::Grpc::new(channel),
            url: endpoint.url.clone(),
            headers: settings.headers,
            resource: EncodedResource::default(),
            last_size: AtomicUsize::new(0),
            shut_down: AtomicBool::new(false),
        })
    }
}

impl SpanExporter for OtlpSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(self.last_size.load(Ordering::Relaxed));
        export_request(&self.resource, &batch, &mut body);
        drop(batch);
        self.last_size.store(body.len(), Ordering::Relaxed);
        let request =
            tonic::Request::from_parts(self.headers.clone(), tonic::Extensions::default(), body);
        let mut grpc = self.grpc.clone();
        let response = async {
            grpc.ready()
                .await
                .map_err(|err| Status::unavailable(err.to_string()))?;
            grpc.unary(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH),
                Raw,
            )
            .await
        };
        match response.await {
            Ok(response) => match response.into_inner().partial_success {
                Some(partial) if partial.rejected_spans > 0 => {
                    Err(OTelSdkError::InternalFailure(format!(
                        "the collector rejected {} of the spans",
                        partial.rejected_spans
                    )))
                }
                _ => Ok(()),
            },
            Err(status) => Err(OTelSdkError::InternalFailure(
                format!("export failed: {:?} {}", status.code(), status.message())
                    .replace(&self.url, "<the endpoint>"),
            )),
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            Err(OTelSdkError::AlreadyShutdown)
        } else {
            Ok(())
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

/// Request bodies are already protobuf bytes; the response is decoded with prost.
#[derive(Debug, Clone, Copy)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
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
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
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
mod tests {
    use super::*;

    #[test]
    fn headers_are_pairs_with_percent_encoded_values() {
        let headers =
            parse_headers(" Api-Key = s%3Dcr%2Ct ,x-tenant=acme,, authorization=Basic%20YTpi ")
                .unwrap();
        assert_eq!(headers.get("api-key").unwrap(), "s=cr,t");
        assert_eq!(headers.get("x-tenant").unwrap(), "acme");
        assert_eq!(headers.get("authorization").unwrap(), "Basic YTpi");
        assert_eq!(headers.len(), 3);
        assert!(parse_headers("").unwrap().is_empty());
    }

    #[test]
    fn a_bad_pair_is_refused_by_position_without_its_text() {
        let long = format!("k={}", "S3CR3T".repeat(2000));
        for (bad, reason) in [
            ("a=1,S3CR3T", "pair 2 is not key=value"),
            (
                "k=S3CR3T%0d%0aX-Forged: 1",
                "pair 1's value has a control character",
            ),
            ("k=S3CR3T%00", "pair 1's value has a control character"),
            ("k=S3CR3T\r\nx: y", "pair 1's value has a control character"),
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
            ("grpc-timeout=S3CR3T", "pair 1's key is reserved by gRPC"),
            ("TE=S3CR3T", "pair 1's key is reserved by gRPC"),
            (long.as_str(), "is longer than 8192 bytes"),
        ] {
            let err = parse_headers(bad).expect_err(bad);
            let bad = &bad[..bad.len().min(40)];
            assert!(err.starts_with(reason), "{bad:?}: {err}");
            assert!(!err.contains("S3CR3T"), "{bad:?}: {err}");
        }
    }
}
