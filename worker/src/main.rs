//! `simplebank-worker`: runs tasks until SIGINT/SIGTERM; a second signal exits at once.
//! `simplebank-worker migrate-redis` moves a Redis of the old key layout into the new one.

use std::process::ExitCode;

use simplebank_core::{config, redis_client, report};
use simplebank_observability::LogFormat;
use simplebank_queue::Keys;
use simplebank_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

/// jemalloc, not glibc's malloc: every exported span is allocated on the runtime thread and
/// freed on the export thread, and glibc's frees across threads made tracing with every span
/// exported cost a fifth of the worker's speed (BENCHMARKS.md, Tracing export).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One runtime thread: a worker process is I/O-bound and needs no cross-thread wake-ups
/// (BENCHMARKS.md, step 7). Run more processes to use more cores; blocking work in a handler
/// belongs in `spawn_blocking`, which has its own threads.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("migrate-redis") => return migrate_redis().await,
        Some(_) => {
            eprintln!("usage: simplebank-worker [migrate-redis]");
            return ExitCode::from(2);
        }
    }
    let config = match config::load_app_env().and_then(|()| WorkerConfig::from_env()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("simplebank-worker: {err}");
            return ExitCode::from(2);
        }
    };
    // A refused password, a missing database index or an ACL that forbids our keys will not
    // fix itself: stop now, like any bad setting. A Redis that is down or hung is waited for.
    // A database certificate that does not verify will not fix itself either.
    if let Err(err) = simplebank_core::store::check_access(&config.common.db_source).await {
        eprintln!("simplebank-worker: {err}");
        return ExitCode::from(2);
    }
    if let Err(err) = check_redis(&config).await {
        eprintln!("simplebank-worker: {err}");
        return ExitCode::from(2);
    }
    let format = match config.common.environment {
        config::Environment::Production => LogFormat::Json,
        config::Environment::Development => LogFormat::Pretty,
    };
    let telemetry = match simplebank_observability::init(&simplebank_observability::Config {
        default_service_name: "simplebank-worker",
        log_format: format,
    }) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("simplebank-worker: {err}");
            return ExitCode::from(2);
        }
    };
    let config = WorkerConfig {
        metrics_interval: telemetry.metrics_interval(),
        ..config
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(simplebank_worker::signals::watch(shutdown.clone()));
    let code = match simplebank_worker::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %report::chain(&err), "simplebank-worker failed");
            ExitCode::FAILURE
        }
    };
    // The last spans and metrics go out while the runtime still drives the exporters.
    telemetry.shutdown().await;
    code
}

async fn check_redis(config: &WorkerConfig) -> Result<(), config::ConfigError> {
    let endpoint = config
        .common
        .redis_endpoint()
        .map_err(|e| config::ConfigError::new("REDIS_ADDRESS", e.to_string()))?;
    redis_client::check_access(&endpoint, &Keys::new(config.common.namespace.clone())).await
}

/// `migrate-redis`: needs only REDIS_ADDRESS and REDIS_NAMESPACE (and app.env).
async fn migrate_redis() -> ExitCode {
    let common = match config::load_app_env().and_then(|()| config::CommonConfig::from_env()) {
        Ok(common) => common,
        Err(err) => {
            eprintln!("simplebank-worker: {err}");
            return ExitCode::from(2);
        }
    };
    match simplebank_worker::migrate_redis::run(&common).await {
        Ok(migrated) => {
            println!("{}", simplebank_worker::migrate_redis::summary(&migrated));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("simplebank-worker migrate-redis: {}", report::chain(&err));
            ExitCode::FAILURE
        }
    }
}
