//! Shutdown on SIGTERM or Ctrl-C: the first signal drains, a second exits at once.

use tokio_util::sync::CancellationToken;

/// A token cancelled by the first SIGTERM or SIGINT. A second signal exits
/// the process immediately with status 130.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        for count in 1.. {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if count == 1 {
                tracing::info!("Shutting down: draining (send the signal again to exit at once).");
                cancel.cancel();
            } else {
                tracing::warn!("Second signal: exiting without draining.");
                std::process::exit(130);
            }
        }
    });
    token
}
