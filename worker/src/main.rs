//! `simplebank-worker`: runs tasks until SIGINT/SIGTERM; a second signal exits at once.

use std::process::ExitCode;

use simplebank_core::{config, report};
use simplebank_observability::LogFormat;
use simplebank_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match config::load_app_env().and_then(|()| WorkerConfig::from_env()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("simplebank-worker: {err}");
            return ExitCode::from(2);
        }
    };
    let format = match config.common.environment {
        config::Environment::Production => LogFormat::Json,
        config::Environment::Development => LogFormat::Pretty,
    };
    if let Err(err) = simplebank_observability::init(format) {
        eprintln!("simplebank-worker: {err}");
        return ExitCode::from(2);
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    match simplebank_worker::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %report::chain(&err), "simplebank-worker failed");
            ExitCode::FAILURE
        }
    }
}

/// First SIGINT/SIGTERM: graceful shutdown. Second: exit now; unfinished tasks stay pending.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for signals");
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        if round == 0 {
            tracing::info!("shutting down: finishing running tasks (signal again to exit now)");
            shutdown.cancel();
        } else {
            tracing::warn!("second signal: exiting now; unfinished tasks stay pending");
            std::process::exit(130);
        }
    }
}
