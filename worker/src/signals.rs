//! Signals: the first SIGINT/SIGTERM asks for a graceful shutdown; a second one exits the
//! process at once (code 130). Either way nothing unfinished is acknowledged: what was running
//! stays pending and another worker takes it over.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first signal; exits the process on the second.
pub async fn watch(shutdown: CancellationToken) {
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
