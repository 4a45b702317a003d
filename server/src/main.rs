//! `simplebank-server`: serves gRPC until SIGINT/SIGTERM.
//! `simplebank-server migrate up|down` applies or reverts the migrations and exits.

use std::process::ExitCode;

use simplebank_core::{
    config, redis_client,
    store::{self, Store},
};
use simplebank_observability::LogFormat;
use simplebank_queue::Keys;
use simplebank_server::{ServerConfig, status::chain};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match config::load_app_env().and_then(|()| ServerConfig::from_env()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("simplebank-server: {err}");
            return ExitCode::from(2);
        }
    };
    // A refused password, a missing database index or an ACL that forbids our keys will not
    // fix itself: stop now, like any bad setting. A Redis that is down or hung is waited for.
    // (`migrate` does not use Redis.)
    // A certificate that does not verify will not fix itself either.
    if let Err(err) = store::check_access(&config.common.db_source).await {
        eprintln!("simplebank-server: {err}");
        return ExitCode::from(2);
    }
    let serving = std::env::args().len() == 1;
    if serving && let Err(err) = check_redis(&config).await {
        eprintln!("simplebank-server: {err}");
        return ExitCode::from(2);
    }
    let format = match config.common.environment {
        config::Environment::Production => LogFormat::Json,
        config::Environment::Development => LogFormat::Pretty,
    };
    let telemetry = match simplebank_observability::init(&simplebank_observability::Config {
        default_service_name: "simplebank-server",
        log_format: format,
    }) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("simplebank-server: {err}");
            return ExitCode::from(2);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => serve(config).await,
        ["migrate", direction @ ("up" | "down")] => migrate(&config, direction).await,
        _ => {
            eprintln!("usage: simplebank-server [migrate up|down]");
            return ExitCode::from(2);
        }
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %chain(err.as_ref()), "simplebank-server failed");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

async fn serve(config: ServerConfig) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(config.grpc_address)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on GRPC_SERVER_ADDRESS {}: {e}",
                config.grpc_address
            )
        })?;
    simplebank_server::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

async fn migrate(config: &ServerConfig, direction: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect_lazy(&config.common.db_source)?;
    if direction == "up" {
        store.migrate().await?;
        tracing::info!("db migrated successfully");
    } else {
        store.migrate_down().await?;
        tracing::info!("db migrated down successfully");
    }
    Ok(())
}

async fn check_redis(config: &ServerConfig) -> Result<(), config::ConfigError> {
    let endpoint = config
        .common
        .redis_endpoint()
        .map_err(|e| config::ConfigError::new("REDIS_ADDRESS", e.to_string()))?;
    redis_client::check_access(&endpoint, &Keys::new(config.common.namespace.clone())).await
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
