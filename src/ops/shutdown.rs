//! Process signals: SIGINT or SIGTERM cancels the one token every task watches (SIGHUP is a
//! reload: `reload.rs`).

use tokio_util::sync::CancellationToken;
use tracing::info;

/// Cancel `token` on the first SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => info!(event = "shutdown", "SIGTERM received"),
            _ = int.recv() => info!(event = "shutdown", "SIGINT received"),
            () = token.cancelled() => return Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; info!(event = "shutdown", "Ctrl-C received") }
            () = token.cancelled() => return Ok(()),
        }
    }
    token.cancel();
    Ok(())
}
