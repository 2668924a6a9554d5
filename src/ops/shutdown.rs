//! Process signals: SIGINT or SIGTERM cancels the one token every task watches.

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
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
            () = token.cancelled() => return Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; info!("Ctrl-C received") }
            () = token.cancelled() => return Ok(()),
        }
    }
    token.cancel();
    Ok(())
}
