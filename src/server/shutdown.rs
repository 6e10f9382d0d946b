//! Termination signals.

use tracing::warn;

/// Resolves on the next SIGTERM (what kubelet sends) or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = ctrl_c() => {}
                }
            }
            Err(err) => {
                warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the server");
                ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c().await;
}

async fn ctrl_c() {
    if let Err(err) = tokio::signal::ctrl_c().await {
        warn!(error = %err, "cannot listen for SIGINT");
        std::future::pending::<()>().await;
    }
}
