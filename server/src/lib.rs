//! simplebank-server: the gRPC edge of simplebank.
//!
//! - [`pb`]: the generated `simplebank.v1` types, client and server.
//! - [`config`]: the server's settings, from the environment.
//! - [`service`]: the `SimpleBank` RPCs.
//! - [`status`]: the one mapping from core errors to `tonic::Status`.
//! - [`relay`]: the loop that publishes outbox rows left behind.
//! - [`health`]: `grpc.health.v1` status, driven by PostgreSQL and Redis checks.
//! - [`call_log`]: one log line per call.
//! - [`tls`]: TLS (and client certificates) for the listener, from PEM files.
//! - [`backpressure`]: the concurrency limit (with load shedding) and request timeout.
//! - [`connection`]: the bound on open connections, and deadlines for silent or idle ones.
//! - [`framing`], [`codec`]: malformed or oversized requests are the client's error.
//! - [`tokens`]: PASETO v4.local access tokens.
//! - [`auth`]: the caller's bearer token, address and user agent.
//! - [`throttle`]: failed sign-ins counted per username and address in Redis.
//!
//! [`run`] starts everything on a given listener and stops when `shutdown` resolves, so tests
//! run the real server in-process on port 0.

pub mod auth;
pub mod backpressure;
pub mod call_log;
pub mod codec;
pub mod config;
pub mod connection;
pub mod framing;
pub mod health;
pub mod relay;
pub mod service;
pub mod status;
pub mod throttle;
pub mod tls;
pub mod tokens;

/// The generated `simplebank.v1` code.
pub mod pb {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("simplebank.v1");

    /// The encoded descriptors of `simplebank.v1` and its imports, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("simplebank_descriptor");
}

use std::future::Future;

use simplebank_core::{
    password::HashPool,
    redis_client,
    store::{Store, StoreError},
};
use simplebank_queue::{Keys, Publisher};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use PostgreSQL (DB_SOURCE)")]
    Store(#[from] StoreError),
    #[error("cannot use Redis (REDIS_ADDRESS)")]
    Redis(#[from] redis::RedisError),
    #[error("reflection service could not be built")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs the server on `listener` until `shutdown` resolves: migrates the database, serves
/// `SimpleBank`, health and reflection, and relays the outbox. On shutdown, health turns
/// NOT_SERVING, new connections are refused, calls in flight finish, then it returns.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    run_with_hashing(config, listener, shutdown, HashPool::per_core()).await
}

/// [`run`] with the password hashing pool given, so a test can count its verifications.
pub async fn run_with_hashing(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    hashing: HashPool,
) -> Result<(), ServerError> {
    if config.auth.ephemeral_key {
        tracing::warn!(
            "TOKEN_SYMMETRIC_KEY is not set: using a random key; access tokens will not survive \
             a restart"
        );
    }
    let store = Store::connect_lazy(&config.common.db_source)?;
    store.migrate().await?;
    tracing::info!("db migrated successfully");

    let redis = config.common.redis_client()?;
    let redis = redis_client::lazy_manager(redis, redis_client::RESPONSE_TIMEOUT)?;
    let keys = Keys::new(config.common.namespace.clone());
    let throttle = throttle::LoginThrottle::new(redis.clone(), keys.clone(), config.auth.login);
    let publisher = Publisher::new(redis, keys);

    let stop = CancellationToken::new();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = tokio::spawn(health::watch(
        reporter.clone(),
        store.clone(),
        publisher.clone(),
        config.health_check_interval,
        stop.clone(),
    ));
    let relay = tokio::spawn(relay::run(
        store.clone(),
        publisher.clone(),
        config.outbox_relay_interval,
        stop.clone(),
    ));

    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let publishes = tokio_util::task::TaskTracker::new();
    let auth = service::Auth {
        tokens: config.auth.token_maker(),
        sessions: config.auth.sessions,
        throttle,
    };
    let bank = service::SimpleBankService::new(store, publisher, publishes.clone(), hashing, auth);
    let address = listener.local_addr().ok();
    match address {
        Some(address) => tracing::info!(%address, "start gRPC server"),
        None => tracing::info!("start gRPC server"),
    }
    tls::log_mode(config.tls.as_ref(), address);

    let stopping = stop.clone();
    let connections = config.limits.connections;
    // Layers run in this order. Framing wraps the body before back-pressure reads it whole.
    // Calls in flight get their request timeout (and the body deadline) to finish after the
    // shutdown signal; streams that never end on their own (health Watch) are then cut.
    let drain_limit = config.limits.body_timeout + config.limits.request_timeout;
    let draining = CancellationToken::new();
    let drain_started = draining.clone();
    let serve = tls::server_builder(config.tls.as_ref())?
        .max_concurrent_streams(connections.max_streams_per_connection)
        .http2_keepalive_interval(Some(connections.keepalive_interval))
        .http2_keepalive_timeout(Some(connections.keepalive_timeout))
        .layer(connection::StreamCountLayer)
        .layer(call_log::CallLogLayer)
        .layer(framing::FramingLayer)
        .layer(backpressure::BackpressureLayer::new(config.limits))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::simple_bank_server::SimpleBankServer::new(bank)
                .max_decoding_message_size(framing::MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(connection::incoming(listener, connections), async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new calls, finishing calls in flight");
            stopping.cancel();
            health::set_not_serving(&reporter).await;
            drain_started.cancel();
        });
    let served = tokio::select! {
        served = serve => served,
        () = async {
            draining.cancelled().await;
            tokio::time::sleep(drain_limit).await;
        } => {
            let limit_ms = u64::try_from(drain_limit.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(limit_ms, "calls or streams still open after the drain limit: closed");
            Ok(())
        }
    };
    stop.cancel();
    // The publishes after commit still running: each ends within `outbox::PUBLISH_GRACE`,
    // leaving its row to a relay if Redis did not take it.
    publishes.close();
    publishes.wait().await;
    let _ = tokio::join!(health, relay);
    tracing::info!("gRPC server stopped");
    Ok(served?)
}

/// Reflection knows our API, health, and `google.rpc` error details (so grpcurl and Evans can
/// print a BadRequest's field violations).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
