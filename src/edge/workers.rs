//! The per-core mode's workers: one OS thread each, running a single-threaded tokio runtime
//! that serves its own `SO_REUSEPORT` socket of every public listener, so a connection, its
//! TLS, its HTTP and its session never leave the thread that accepted it.

use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// How long a stopping worker waits for its blocking tasks (a DNS lookup in flight) before
/// its thread ends anyway.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// Running worker threads. Dropped without [`Workers::stop`], the threads still end (their
/// tasks are dropped), but nobody waits for them.
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// Start `n` workers, `wsgate-worker-0` … `wsgate-worker-{n-1}`; each runs until
    /// [`Workers::stop`].
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let mut workers = Self {
            handles: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            stop: CancellationToken::new(),
        };
        for i in 0..n {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let stop = workers.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("wsgate-worker-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    metrics::set_worker(i);
                    if tx.send(Ok(runtime.handle().clone())).is_err() {
                        return;
                    }
                    // The tasks spawned onto this runtime's handle run while this waits.
                    runtime.block_on(stop.cancelled());
                    // Whatever the drain left is dropped here, on its own thread.
                    runtime.shutdown_timeout(BLOCKING_GRACE);
                })
                .with_context(|| format!("starting worker thread {i}"))?;
            workers.threads.push(thread);
            let handle = rx
                .await
                .map_err(|_| anyhow::anyhow!("worker thread {i} ended while starting"))?
                .with_context(|| format!("starting the runtime of worker {i}"))?;
            workers.handles.push(handle);
        }
        Ok(workers)
    }

    /// Each worker's runtime, in worker order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// End every worker (tasks still on them are dropped) and wait for their threads.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        // Joining blocks; the blocking pool is where that may happen.
        let joined = tokio::task::spawn_blocking(move || {
            threads.into_iter().filter_map(|t| t.join().err()).count()
        })
        .await;
        match joined {
            Ok(0) => {}
            Ok(n) => tracing::error!(event = "shutdown", panicked = n, "worker thread panicked"),
            Err(e) => tracing::error!(event = "shutdown", error = %e, "joining worker threads"),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The number of workers `worker_threads` asks for: itself, or one per CPU for 0.
pub fn count(worker_threads: usize) -> usize {
    match worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}
