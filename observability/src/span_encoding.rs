//! Finished spans written straight into the protobuf bytes of an OTLP
//! `ExportTraceServiceRequest` (opentelemetry-proto's `collector/trace/v1`), without the
//! intermediate structs the stock exporter builds: it copies every key and value into a new
//! `String` (values through `Display`), then encodes those, then frees them, which was most of
//! what an exported span cost (BENCHMARKS.md, scenario 7). The bytes decode to what the stock
//! conversion (`group_spans_by_resource_and_scope`) produces; a test checks it field by field.
//!
//! Field numbers are the OTLP protos' (`trace/v1/trace.proto`, `common/v1/common.proto`,
//! `resource/v1/resource.proto`). A nested message is written in place behind a one-byte length,
//! which is widened afterwards when the body needs more: no sizing pass. Two forms skip even
//! that, being most of what a span holds: a span is given a two-byte length (most take 128
//! bytes to 16 KiB), and an attribute with a short key and a short text or small whole number
//! is written with its lengths known up front. Either way the bytes are prost's, minimal
//! lengths included (tests compare them byte for byte).

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::{Array, InstrumentationScope, Value, trace::Status};
use opentelemetry_sdk::{Resource, trace::SpanData};

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the flags field says whether the parent is remote.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// The resource's part of every request, encoded once (the resource does not change).
#[derive(Debug, Default, Clone)]
pub(crate) struct EncodedResource {
    /// The `Resource` message's body.
    body: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub fn new(resource: &Resource) -> Self {
        let mut body = Vec::new();
        for (key, value) in resource.iter() {
            key_value(&mut body, 1, key.as_str(), value);
        }
        Self {
            body,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }

    /// At most what the resource adds to a request: its body, schema URL and the
    /// `ResourceSpans` and `Resource` framing.
    pub fn overhead(&self) -> usize {
        self.body.len() + self.schema_url.len() + 32
    }
}

/// Appends `span` to `out` as one `ScopeSpans.spans` field. A batch is made of these, grouped
/// by scope, and sent with [`export_request`].
pub(crate) fn span_entry(out: &mut Vec<u8>, span: &SpanData) {
    // ScopeSpans.spans = 2. Nearly every span takes 128 bytes to 16 KiB, whose length takes
    // two bytes: two are kept for it, and the body is moved only for a shorter or longer one.
    key(out, 2, LEN);
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    encode_span(out, span);
    let length = out.len() - at - 2;
    if let 0x80..0x4000 = length {
        out[at] = (length as u8) | 0x80;
        out[at + 1] = (length >> 7) as u8;
    } else {
        put_length(out, at..at + 2, length);
    }
}

/// At most what `scope` adds to a request besides its spans: the `ScopeSpans` and
/// `InstrumentationScope` messages around them.
pub(crate) fn scope_overhead(scope: &InstrumentationScope) -> usize {
    let mut header = Vec::new();
    scope_message(&mut header, scope);
    header.len() + scope.schema_url().unwrap_or_default().len() + 32
}

/// Appends to `out` the `ExportTraceServiceRequest` carrying `scopes` from `resource`: one
/// `ResourceSpans`, with one `ScopeSpans` per scope, in the order given, each holding its
/// spans' entries ([`span_entry`]) as they are. Given the scopes in the order they first
/// appear and each one's spans in the order they ended, it is what the stock conversion
/// builds.
pub(crate) fn export_request<'a>(
    resource: &EncodedResource,
    scopes: impl IntoIterator<Item = (&'a InstrumentationScope, &'a [u8])>,
    out: &mut Vec<u8>,
) {
    // ExportTraceServiceRequest.resource_spans = 1
    message(out, 1, |out| {
        // ResourceSpans.resource = 1
        message(out, 1, |out| out.extend_from_slice(&resource.body));
        for (scope, entries) in scopes {
            // ResourceSpans.scope_spans = 2
            message(out, 2, |out| {
                scope_message(out, scope);
                out.extend_from_slice(entries);
                // ScopeSpans.schema_url = 3
                string(out, 3, scope.schema_url().unwrap_or_default());
            });
        }
        // ResourceSpans.schema_url = 3
        string(out, 3, &resource.schema_url);
    });
}

/// `ScopeSpans.scope` (field 1).
fn scope_message(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    message(out, 1, |out| {
        string(out, 1, scope.name());
        string(out, 2, scope.version().unwrap_or_default());
        for attribute in scope.attributes() {
            key_value(out, 3, attribute.key.as_str(), &attribute.value);
        }
    });
}

/// A `Span` message's body.
fn encode_span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(out, 1, &context.trace_id().to_bytes());
    bytes(out, 2, &context.span_id().to_bytes());
    string(out, 3, &context.trace_state().header());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    string(out, 5, &span.name);
    // SpanKind: UNSPECIFIED 0, INTERNAL 1, SERVER 2, CLIENT 3, PRODUCER 4, CONSUMER 5.
    let kind = match span.span_kind {
        opentelemetry::trace::SpanKind::Internal => 1,
        opentelemetry::trace::SpanKind::Server => 2,
        opentelemetry::trace::SpanKind::Client => 3,
        opentelemetry::trace::SpanKind::Producer => 4,
        opentelemetry::trace::SpanKind::Consumer => 5,
    };
    uint(out, 6, kind);
    fixed64(out, 7, nanos(span.start_time));
    fixed64(out, 8, nanos(span.end_time));
    for attribute in &span.attributes {
        key_value(out, 9, attribute.key.as_str(), &attribute.value);
    }
    uint(out, 10, span.dropped_attributes_count.into());
    for event in span.events.iter() {
        message(out, 11, |out| {
            fixed64(out, 1, nanos(event.timestamp));
            string(out, 2, &event.name);
            for attribute in &event.attributes {
                key_value(out, 3, attribute.key.as_str(), &attribute.value);
            }
            uint(out, 4, event.dropped_attributes_count.into());
        });
    }
    uint(out, 12, span.events.dropped_count.into());
    for link in span.links.iter() {
        let linked = &link.span_context;
        message(out, 13, |out| {
            bytes(out, 1, &linked.trace_id().to_bytes());
            bytes(out, 2, &linked.span_id().to_bytes());
            string(out, 3, &linked.trace_state().header());
            for attribute in &link.attributes {
                key_value(out, 4, attribute.key.as_str(), &attribute.value);
            }
            uint(out, 5, link.dropped_attributes_count.into());
            fixed32(out, 6, flags(linked.is_remote(), linked.trace_flags()));
        });
    }
    uint(out, 14, span.links.dropped_count.into());
    // Status (always present, as the stock conversion sets it): message = 2, code = 3
    // (UNSET 0, OK 1, ERROR 2).
    message(out, 15, |out| match &span.status {
        Status::Unset => {}
        Status::Ok => uint(out, 3, 1),
        Status::Error { description } => {
            string(out, 2, description);
            uint(out, 3, 2);
        }
    });
    fixed32(
        out,
        16,
        flags(span.parent_span_is_remote, context.trace_flags()),
    );
}

fn flags(remote: bool, trace_flags: opentelemetry::trace::TraceFlags) -> u32 {
    let remote = if remote { CONTEXT_IS_REMOTE } else { 0 };
    u32::from(trace_flags.to_u8()) | CONTEXT_HAS_IS_REMOTE | remote
}

/// Nanoseconds since the Unix epoch; 0 before it, as the stock conversion does.
fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

/// A `KeyValue` message as field `field`.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    // The common cases, a short key with a short text or a small whole number, written header
    // by header: what the general path writes, without its reserved lengths. `any` is the
    // `AnyValue` field's first bytes (its tag, its length, then the value's), `text` the rest.
    let short = match value {
        Value::String(text) => {
            let text = text.as_str().as_bytes();
            // AnyValue.string_value = 1
            (text.len() < 0x80)
                .then(|| ([0x12, text.len() as u8 + 2, 0x0a, text.len() as u8], text))
        }
        // AnyValue.int_value = 3
        Value::I64(number @ 0..0x80) => Some(([0x12, 2, 0x18, *number as u8], &[][..])),
        _ => None,
    };
    if let Some((any, text)) = short
        && let Some(header) = short_header(field, key.len(), usize::from(any[1]))
    {
        out.extend_from_slice(&header);
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&any);
        out.extend_from_slice(text);
        return;
    }
    message(out, field, |out| {
        string(out, 1, key);
        message(out, 2, |out| any_value(out, value));
    });
}

/// The first four bytes of a `KeyValue` field with a key of `key` bytes and an `AnyValue` of
/// `value` bytes, when every length in it takes one byte (the message under 128 bytes), the
/// key is not empty (proto3 leaves an empty key out) and the field's tag is one byte.
fn short_header(field: u32, key: usize, value: usize) -> Option<[u8; 4]> {
    // KeyValue.key = 1: tag, length, bytes; KeyValue.value = 2: tag, length, the AnyValue.
    let body = 2 + key + 2 + value;
    (field < 16 && key > 0 && body < 0x80).then_some([
        ((field << 3) | LEN) as u8,
        body as u8,
        0x0a,
        key as u8,
    ])
}

/// An `AnyValue` message's body. Its `value` is a `oneof`, so a default (0, false, "") is
/// still written: it is what says which one is set.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(value) => {
            key(out, 2, VARINT);
            varint(out, u64::from(*value));
        }
        Value::I64(value) => {
            key(out, 3, VARINT);
            varint(out, u64::from_ne_bytes(value.to_ne_bytes()));
        }
        Value::F64(value) => {
            key(out, 4, FIXED64);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Value::String(value) => {
            key(out, 1, LEN);
            length_delimited(out, value.as_str().as_bytes());
        }
        // ArrayValue.values = 1, each an AnyValue.
        Value::Array(array) => message(out, 5, |out| match array {
            Array::Bool(values) => each(out, values, |v| Value::Bool(*v)),
            Array::I64(values) => each(out, values, |v| Value::I64(*v)),
            Array::F64(values) => each(out, values, |v| Value::F64(*v)),
            Array::String(values) => {
                for value in values {
                    message(out, 1, |out| {
                        key(out, 1, LEN);
                        length_delimited(out, value.as_str().as_bytes());
                    });
                }
            }
            // A kind added to the API later: its text.
            other => message(out, 1, |out| {
                key(out, 1, LEN);
                length_delimited(out, other.to_string().as_bytes());
            }),
        }),
        other => {
            key(out, 1, LEN);
            length_delimited(out, other.to_string().as_bytes());
        }
    }
}

fn each<T>(out: &mut Vec<u8>, values: &[T], value: impl Fn(&T) -> Value) {
    for one in values {
        message(out, 1, |out| any_value(out, &value(one)));
    }
}

/// A message as field `field`: its body written by `body` behind a length prefix, reserved as
/// one byte and widened (the body moved along) when the body is 128 bytes or more. Written even
/// when empty: a singular message field's presence is what it says.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    let at = out.len();
    out.push(0);
    body(out);
    let length = out.len() - at - 1;
    if let Ok(short @ 0..0x80) = u8::try_from(length) {
        out[at] = short;
        return;
    }
    put_length(out, at..at + 1, length);
}

/// Writes `length` in place of the bytes `kept` for it, moving the body after them along when
/// its varint takes more or fewer.
fn put_length(out: &mut Vec<u8>, kept: std::ops::Range<usize>, length: usize) {
    let mut prefix = Vec::with_capacity(10);
    varint(&mut prefix, length as u64);
    out.splice(kept, prefix);
}

/// A string field, left out when empty (proto3's default).
fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

/// A bytes field, left out when empty.
fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        key(out, field, LEN);
        length_delimited(out, value);
    }
}

fn length_delimited(out: &mut Vec<u8>, value: &[u8]) {
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// A varint field (uint32, uint64, enum), left out when 0.
fn uint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(out, field, VARINT);
        varint(out, value);
    }
}

fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        key(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from((field << 3) | wire_type));
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use std::{
        borrow::Cow,
        time::{Duration, SystemTime},
    };

    use opentelemetry::{
        InstrumentationScope, KeyValue, StringValue,
        trace::{Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    };
    use opentelemetry_proto::{
        tonic::collector::trace::v1::ExportTraceServiceRequest,
        transform::{
            common::tonic::ResourceAttributesWithSchema,
            trace::tonic::group_spans_by_resource_and_scope,
        },
    };
    use opentelemetry_sdk::{
        Resource,
        trace::{SpanData, SpanEvents, SpanLinks},
    };
    use prost::Message as _;

    use super::*;

    fn context(trace: u128, span: u64, remote: bool, state: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            state.parse::<TraceState>().unwrap(),
        )
    }

    /// Every kind of value, at the edges of their encodings.
    fn attributes() -> Vec<KeyValue> {
        vec![
            KeyValue::new("empty", ""),
            KeyValue::new("text", "x".repeat(200)),
            KeyValue::new("long", "é".repeat(10_000)),
            KeyValue::new("control", "a\r\n\0\u{1b}\u{202e}b"),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("negative", i64::MIN),
            KeyValue::new("max", i64::MAX),
            KeyValue::new("false", false),
            KeyValue::new("true", true),
            KeyValue::new("float", -1.5_f64),
            KeyValue::new("float zero", 0.0_f64),
            KeyValue::new(
                "strings",
                Value::Array(Array::String(vec![
                    StringValue::from(""),
                    StringValue::from("b".repeat(300)),
                ])),
            ),
            KeyValue::new("ints", Value::Array(Array::I64(vec![0, -1, 1 << 40]))),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![false, true]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![0.0, 2.25]))),
            KeyValue::new("no values", Value::Array(Array::I64(vec![]))),
            KeyValue::new("", "empty key"),
        ]
    }

    fn span(scope: &InstrumentationScope, n: u64) -> SpanData {
        let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789 + n);
        let mut events = SpanEvents::default();
        events.events.push(opentelemetry::trace::Event::new(
            "retrying",
            start + Duration::from_millis(1),
            attributes(),
            3,
        ));
        events.events.push(opentelemetry::trace::Event::new(
            "",
            SystemTime::UNIX_EPOCH,
            vec![],
            0,
        ));
        events.dropped_count = 7;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            context(u128::MAX, 1, true, "k=v,other=2"),
            vec![KeyValue::new("link", 1_i64)],
            2,
        ));
        links
            .links
            .push(Link::new(context(5, 6, false, ""), vec![], 0));
        links.dropped_count = 1;
        SpanData {
            span_context: context(
                0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c + u128::from(n),
                n + 1,
                false,
                "vendor=value",
            ),
            parent_span_id: if n.is_multiple_of(2) {
                SpanId::from(99)
            } else {
                SpanId::INVALID
            },
            parent_span_is_remote: n.is_multiple_of(3),
            span_kind: [
                SpanKind::Internal,
                SpanKind::Server,
                SpanKind::Client,
                SpanKind::Producer,
                SpanKind::Consumer,
            ][(n % 5) as usize]
                .clone(),
            name: Cow::Owned(format!("process {n} {}", "n".repeat(n as usize * 40))),
            start_time: start,
            end_time: start + Duration::from_micros(n * 13),
            attributes: if n == 1 { vec![] } else { attributes() },
            dropped_attributes_count: u32::try_from(n).unwrap(),
            events: if n == 2 {
                SpanEvents::default()
            } else {
                events
            },
            links: if n == 3 { SpanLinks::default() } else { links },
            status: match n % 3 {
                0 => Status::Unset,
                1 => Status::Ok,
                _ => Status::error(format!("failed {n}\r\n")),
            },
            instrumentation_scope: scope.clone(),
        }
    }

    #[test]
    fn the_bytes_decode_to_what_the_stock_conversion_builds() {
        let main = InstrumentationScope::builder("simplebank").build();
        let other = InstrumentationScope::builder("other")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([KeyValue::new("scope.key", "v"), KeyValue::new("n", 2_i64)])
            .build();
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "simplebank-worker"),
                KeyValue::new(
                    "service.instance.id",
                    "b0c5b7ce-0000-4000-8000-000000000000",
                ),
                KeyValue::new("attempt", 3_i64),
            ])
            .with_schema_url([], "https://opentelemetry.io/schemas/1.26.0")
            .build();
        let spans: Vec<SpanData> = (0..12)
            .map(|n| span(if n % 4 == 1 { &other } else { &main }, n))
            .collect();
        for batch in [&spans[..], &spans[..1], &spans[1..2], &spans[5..9]] {
            let mut ours = Vec::new();
            // Grouped by scope as the span processor groups them.
            crate::span_batch::Batch::of(batch).encode(&EncodedResource::new(&resource), &mut ours);
            let decoded = ExportTraceServiceRequest::decode(&ours[..]).unwrap();
            let stock = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(
                    batch.to_vec(),
                    &ResourceAttributesWithSchema::from(&resource),
                ),
            };
            assert_eq!(decoded, stock);
            // And byte for byte what prost writes for the same structs: the same field order,
            // and minimal lengths, which any decoder reads.
            assert_eq!(ours, stock.encode_to_vec());
        }
    }

    /// `spans` as the processor sends them, and as prost writes the stock conversion of them
    /// (an empty resource).
    fn both_ways(spans: &[SpanData]) -> (Vec<u8>, Vec<u8>) {
        let resource = Resource::builder_empty().build();
        let mut ours = Vec::new();
        crate::span_batch::Batch::of(spans).encode(&EncodedResource::new(&resource), &mut ours);
        let stock = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans.to_vec(),
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        (ours, stock.encode_to_vec())
    }

    /// A span's length is kept two bytes for: spans of every length class, at its edges (127
    /// and 128 bytes, 16,383 and 16,384), come out as prost writes them.
    #[test]
    fn spans_at_the_edges_of_their_length_are_what_prost_writes() {
        let scope = InstrumentationScope::builder("simplebank").build();
        // A span of a name of `name` bytes and a dropped-attributes count of `dropped` (0 is
        // left out, 1 takes 2 bytes, 128 takes 3: what the name's steps skip), and its body's
        // length.
        let sized = |name: usize, dropped: u32| {
            let mut one = span(&scope, 1);
            one.events = SpanEvents::default();
            one.links = SpanLinks::default();
            one.attributes = vec![];
            one.dropped_attributes_count = dropped;
            one.name = Cow::Owned("n".repeat(name));
            let mut body = Vec::new();
            encode_span(&mut body, &one);
            (one, body.len())
        };
        let bare = sized(0, 0).1;
        for body in [127_usize, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let (one, _) = (body.saturating_sub(bare + 8)..=body - bare)
                .flat_map(|name| [0, 1, 128].map(|dropped| sized(name, dropped)))
                .find(|(_, length)| *length == body)
                .unwrap();
            let (ours, prosts) = both_ways(&[one]);
            assert_eq!(ours, prosts, "a span of {body} bytes");
        }
    }

    /// Attributes on either side of the short forms' edges: a message of 127 bytes (written
    /// with its lengths up front) and of 128 (the general path), a text and a whole number.
    #[test]
    fn attributes_at_the_edges_of_the_short_forms_are_what_prost_writes() {
        let scope = InstrumentationScope::builder("simplebank").build();
        let mut one = span(&scope, 1);
        one.events = SpanEvents::default();
        one.links = SpanLinks::default();
        one.attributes = vec![
            // KeyValue bodies: 2 + key + 2 + (2 + text), and 2 + key + 2 + 2.
            KeyValue::new("k", "v".repeat(120)),
            KeyValue::new("k", "v".repeat(121)),
            KeyValue::new("k".repeat(121), 5_i64),
            KeyValue::new("k".repeat(122), 5_i64),
            KeyValue::new("k", 127_i64),
            KeyValue::new("k", 128_i64),
            KeyValue::new("k", -1_i64),
            KeyValue::new("k", ""),
        ];
        for attribute in &one.attributes {
            let mut ours = Vec::new();
            key_value(&mut ours, 9, attribute.key.as_str(), &attribute.value);
            let mut general = Vec::new();
            message(&mut general, 9, |out| {
                string(out, 1, attribute.key.as_str());
                message(out, 2, |out| any_value(out, &attribute.value));
            });
            assert_eq!(ours, general, "{attribute:?}");
        }
        let (ours, prosts) = both_ways(&[one]);
        assert_eq!(ours, prosts);
    }

    /// Spans of random attributes (keys and texts of 0 to 300 bytes, any character, numbers
    /// of every size) and random names, against prost's bytes: the short forms' edges are
    /// wherever the lengths fall.
    #[test]
    fn random_spans_are_what_prost_writes() {
        let scope = InstrumentationScope::builder("simplebank").build();
        // A fixed-seed generator (xorshift): the same spans on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        let text = |next: &mut dyn FnMut(u64) -> u64| -> String {
            let length = next(300);
            (0..length)
                .map(|_| match next(4) {
                    0 => char::from_u32(next(0x80) as u32).unwrap(),
                    1 => ['\u{0}', '\r', '\n', '\u{202e}', 'é', '😀'][next(6) as usize],
                    _ => char::from(b'a' + next(26) as u8),
                })
                .collect()
        };
        for _ in 0..500 {
            let mut one = span(&scope, 1);
            one.events = SpanEvents::default();
            one.links = SpanLinks::default();
            one.name = Cow::Owned(text(&mut next));
            one.attributes = (0..next(12))
                .map(|_| {
                    let key = text(&mut next);
                    match next(3) {
                        0 => KeyValue::new(key, text(&mut next)),
                        1 => KeyValue::new(key, next(300) as i64 - 100),
                        _ => KeyValue::new(key, (next(u64::MAX) as i64).wrapping_mul(3)),
                    }
                })
                .collect();
            let attributes = one.attributes.clone();
            let (ours, prosts) = both_ways(&[one]);
            assert_eq!(ours, prosts, "{attributes:?}");
        }
    }

    #[test]
    fn a_default_resource_is_an_empty_message() {
        let mut out = Vec::new();
        let scope = InstrumentationScope::builder("s").build();
        crate::span_batch::Batch::of(&[span(&scope, 1)])
            .encode(&EncodedResource::default(), &mut out);
        let decoded = ExportTraceServiceRequest::decode(&out[..]).unwrap();
        let resource = decoded.resource_spans[0].resource.as_ref().unwrap();
        assert!(resource.attributes.is_empty());
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 1);
    }

    #[test]
    fn lengths_widen_across_every_varint_size() {
        for (length, prefix) in [
            (0, &[0x00][..]),
            (1, &[0x01]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        ] {
            let mut out = vec![7];
            message(&mut out, 1, |out| out.resize(out.len() + length, b'z'));
            let mut expected = vec![7, 0x0a];
            expected.extend_from_slice(prefix);
            expected.resize(expected.len() + length, b'z');
            assert_eq!(out, expected, "{length}");
        }
    }
}
