//! simplebank-server: the gRPC edge of simplebank.
//!
//! - [`pb`]: the generated `simplebank.v1` types, client and server.
//! - [`config`]: the server's settings, from the environment.
//! - [`service`]: the `SimpleBank` RPCs.
//! - [`status`]: the one mapping from core errors to `tonic::Status`.
//! - [`relay`]: the loop that publishes outbox rows left behind.
//! - [`health`]: `grpc.health.v1` status, driven by PostgreSQL and Redis checks.
//! - [`call_log`]: one log line per call.
//! - [`rpc_metrics`], [`outbox_metrics`]: the call duration histogram and the outbox backlog
//!   gauge (OpenTelemetry, recorded for the meter provider the binary installs).
//! - [`tls`]: TLS (and client certificates) for the listener, from PEM files.
//! - [`backpressure`]: the concurrency limit (with load shedding) and request timeout.
//! - [`connection`]: the bound on open connections, and deadlines for silent or idle ones.
//! - [`framing`], [`codec`]: malformed or oversized requests are the client's error.
//! - [`tokens`]: PASETO v4.local access tokens.
//! - [`auth`]: the caller's bearer token, address and user agent.
//! - [`throttle`]: failed sign-ins counted per username and address in Redis.
//! - [`admin`]: the `simplebank.admin.v1.QueueAdmin` service on its own listener, with its
//!   token check.
//!
//! [`run`] starts everything on a given listener and stops when `shutdown` resolves, so tests
//! run the real server in-process on port 0 ([`run_with`] takes the admin listener too).

pub mod admin;
pub mod auth;
pub mod backpressure;
pub mod call_log;
pub mod codec;
pub mod config;
pub mod connection;
pub mod framing;
pub mod health;
pub mod log_every;
pub mod outbox_metrics;
pub mod relay;
pub mod rpc_metrics;
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

    /// The generated `simplebank.admin.v1` code (the admin listener's API).
    pub mod admin {
        #![allow(missing_debug_implementations, clippy::all)]
        tonic::include_proto!("simplebank.admin.v1");

        /// The encoded descriptors of `simplebank.admin.v1` and its imports, for the admin
        /// listener's reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("simplebank_admin_descriptor");
    }
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

use crate::{
    admin::auth::AdminAuthLayer, config::CallLimits, rpc_metrics::RpcMetricsLayer, tls::TlsConfig,
};

pub use config::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use PostgreSQL (DB_SOURCE)")]
    Store(#[from] StoreError),
    #[error("cannot use Redis (REDIS_ADDRESS)")]
    Redis(#[from] redis::RedisError),
    #[error("reflection service could not be built")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the RPC metrics cannot read the services' descriptors")]
    Descriptors(#[from] rpc_metrics::DescriptorError),
    #[error("gRPC transport failed")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot listen on ADMIN_GRPC_ADDRESS {address}")]
    AdminListen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The sockets the server serves: the public API, and the admin API when it is on.
#[derive(Debug)]
pub struct Listeners {
    /// `simplebank.v1.SimpleBank`, health and reflection.
    pub public: TcpListener,
    /// `simplebank.admin.v1.QueueAdmin`, health and reflection; `None`: no admin listener.
    pub admin: Option<TcpListener>,
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

/// [`run`] with the password hashing pool given, so a test can count its verifications. The
/// admin listener is bound here, on `ADMIN_GRPC_ADDRESS` (`config.admin.address`).
pub async fn run_with_hashing(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    hashing: HashPool,
) -> Result<(), ServerError> {
    let admin = match config.admin.address {
        None => None,
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|source| ServerError::AdminListen { address, source })?,
        ),
    };
    let listeners = Listeners {
        public: listener,
        admin,
    };
    run_with(config, listeners, shutdown, hashing).await
}

/// The whole server on `listeners` (the admin one, if any, as given: `config.admin.address`
/// is not bound again), until `shutdown` resolves.
pub async fn run_with(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    hashing: HashPool,
) -> Result<(), ServerError> {
    let Listeners {
        public: listener,
        admin: admin_listener,
    } = listeners;
    if config.auth.ephemeral_key {
        tracing::warn!(
            "TOKEN_SYMMETRIC_KEY is not set: using a random key; access tokens will not survive \
             a restart"
        );
    }
    let store = Store::connect_lazy(&config.common.db_source)?
        .with_email_change_limits(config.auth.email_changes);
    store.migrate().await?;
    tracing::info!("db migrated successfully");

    let endpoint = config.common.redis_endpoint()?;
    let redis = endpoint.connect_lazy(redis_client::RESPONSE_TIMEOUT)?;
    let keys = Keys::new(config.common.namespace.clone());
    let throttle = throttle::LoginThrottle::new(redis.clone(), keys.clone(), config.auth.login);
    let queue_admin = admin::QueueAdminService::new(redis.clone(), keys.clone());
    // A publisher that waits for replicas has a connection of its own: a WAIT holds up the
    // commands behind it on its connection (sign-in throttling, health), and its response
    // timeout must cover the wait.
    if let Some(wait) = config.common.redis_wait {
        // In the background: a Redis that is down must not hold up the start.
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            redis_client::warn_if_replicas_missing(&endpoint, wait.replicas()).await;
        });
    }
    let shared = redis.clone();
    let publisher = match config.common.redis_wait {
        None => Publisher::new(redis, keys),
        Some(wait) => Publisher::new(
            endpoint.connect_lazy(redis_client::RESPONSE_TIMEOUT + wait.timeout())?,
            keys,
        )
        .with_replica_wait(Some(wait)),
    };

    let stop = CancellationToken::new();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = tokio::spawn(health::watch(
        reporter.clone(),
        store.clone(),
        shared,
        config.health_check_interval,
        stop.clone(),
    ));
    let relay = tokio::spawn(relay::run(
        store.clone(),
        publisher.clone(),
        config.outbox_relay_interval,
        stop.clone(),
    ));
    // Instruments of the global meter provider (no-ops when the binary exports no metrics).
    let meter = opentelemetry::global::meter("simplebank-server");
    let _backlog = outbox_metrics::register(&meter, store.clone());

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

    let public_routes = tonic::service::Routes::new(health_service.clone())
        .add_service(reflection(pb::FILE_DESCRIPTOR_SET).build_v1()?)
        .add_service(reflection(pb::FILE_DESCRIPTOR_SET).build_v1alpha()?)
        .add_service(
            pb::simple_bank_server::SimpleBankServer::new(bank)
                .max_decoding_message_size(framing::MAX_REQUEST_BYTES),
        );

    let stopping = stop.clone();
    // Calls in flight get their request timeout (and the body deadline) to finish after the
    // shutdown signal; streams that never end on their own (health Watch) are then cut.
    let drain_limit = config.limits.body_timeout + config.limits.request_timeout;
    let draining = CancellationToken::new();
    let drain_started = draining.clone();
    let public = serve(
        public_routes,
        config.tls.as_ref(),
        config.limits,
        RpcMetricsLayer::new(&meter, PUBLIC_DESCRIPTORS)?,
        AdminAuthLayer::new(None),
        listener,
        async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new calls, finishing calls in flight");
            stopping.cancel();
            health::set_not_serving(&reporter).await;
            drain_started.cancel();
        },
    );
    let admin = async {
        let Some(admin_listener) = admin_listener else {
            return Ok(());
        };
        let address = admin_listener.local_addr().ok();
        admin::log_start(address, &config.admin);
        let routes = tonic::service::Routes::new(health_service)
            .add_service(reflection(pb::admin::FILE_DESCRIPTOR_SET).build_v1()?)
            .add_service(reflection(pb::admin::FILE_DESCRIPTOR_SET).build_v1alpha()?)
            .add_service(
                pb::admin::queue_admin_server::QueueAdminServer::new(queue_admin)
                    .max_decoding_message_size(framing::MAX_REQUEST_BYTES),
            );
        // Its own budget of calls and connections: operators can look while the public port
        // is saturated, and admin calls never take a sign-up's slot.
        let draining = draining.clone();
        serve(
            routes,
            config.tls.as_ref(),
            config.limits,
            RpcMetricsLayer::new(&meter, ADMIN_DESCRIPTORS)?,
            AdminAuthLayer::new(config.admin.token.as_ref()),
            admin_listener,
            async move { draining.cancelled().await },
        )
        .await
        .map_err(ServerError::from)
    };
    // A listener that fails stops the other: the server is not half up.
    let serve = async {
        tokio::try_join!(async { public.await.map_err(ServerError::from) }, admin).map(|_| ())
    };
    let served: Result<(), ServerError> = tokio::select! {
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
    served
}

/// One listener's server: the hardening stack (stream counting, the RPC metrics, the call log,
/// the token check where there is one, framing, back-pressure with a budget of its own) around
/// `routes`, with TLS when configured, until `shutdown` resolves.
async fn serve(
    routes: tonic::service::Routes,
    tls: Option<&TlsConfig>,
    limits: CallLimits,
    metrics: RpcMetricsLayer,
    auth: AdminAuthLayer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let connections = limits.connections;
    // Layers run in this order. Framing wraps the body before back-pressure reads it whole;
    // the token is checked before either reads anything.
    tls::server_builder(tls)?
        .max_concurrent_streams(connections.max_streams_per_connection)
        .http2_keepalive_interval(Some(connections.keepalive_interval))
        .http2_keepalive_timeout(Some(connections.keepalive_timeout))
        .layer(connection::StreamCountLayer)
        .layer(metrics)
        .layer(call_log::CallLogLayer::default())
        .layer(auth)
        .layer(framing::FramingLayer)
        .layer(backpressure::BackpressureLayer::new(limits))
        .add_routes(routes)
        .serve_with_incoming_shutdown(connection::incoming(listener, connections), shutdown)
        .await
}

/// The services of each listener, whose methods the RPC metrics name (any other path is
/// `_OTHER`).
const PUBLIC_DESCRIPTORS: &[&[u8]] = &[
    pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];
const ADMIN_DESCRIPTORS: &[&[u8]] = &[
    pb::admin::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Reflection knows one API (`descriptors`), health, and `google.rpc` error details (so grpcurl
/// and Evans can print a BadRequest's field violations).
fn reflection(descriptors: &'static [u8]) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
