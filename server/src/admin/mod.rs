//! The admin listener: `simplebank.admin.v1.QueueAdmin` (with health and reflection) on
//! `ADMIN_GRPC_ADDRESS`, never on the public port.
//!
//! - [`config`]: `ADMIN_GRPC_ADDRESS` and `ADMIN_TOKEN`, checked together at start.
//! - [`auth`]: the token check in front of every call of the listener.
//! - `service`: the RPCs: requests checked field by field, then the queue's own admin
//!   operations (`simplebank_queue::admin`), which alone read the Redis layout.
//!
//! The listener runs the same hardening stack as the public one (`crate::serve`): connection
//! limits and deadlines, framing, a call budget of its own, the request timeout, TLS when
//! configured.

pub mod auth;
pub mod config;
mod service;

use std::net::SocketAddr;

pub use service::QueueAdminService;

use self::config::AdminConfig;

/// The start line of the admin listener; never the token, only whether one is required.
pub fn log_start(address: Option<SocketAddr>, config: &AdminConfig) {
    let token = if config.token.is_some() {
        "required (ADMIN_TOKEN)"
    } else {
        "not required (loopback, no ADMIN_TOKEN)"
    };
    match address {
        Some(address) => tracing::info!(%address, token, "start admin gRPC server"),
        None => tracing::info!(token, "start admin gRPC server"),
    }
}
