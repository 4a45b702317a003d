//! W3C trace context across process boundaries: the queue's implementation (OpenTelemetry API
//! only), shared so the server's gRPC edge and the queue agree on one carrier.

pub use simplebank_queue::trace::{
    TraceContext, context_of, otel_context, record_error, set_parent,
};
