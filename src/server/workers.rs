//! Thread per core: with `worker_threads` above 1, each worker is a thread with a single-threaded
//! tokio runtime of its own, and each runs an accept loop on every scoring listener (a duplicate
//! of the same socket). A connection, its HTTP/2 streams and the backend connections it opens
//! stay on the worker that accepted it, as in nginx's worker processes, instead of moving between
//! cores with tokio's work-stealing scheduler (which made a request cost about a third more CPU
//! with two workers while its instructions rose 2.5 %: BENCHMARKS.md, "Results at `c9f492a`").
//! A busy worker does not get to `accept`, so new connections go to the idle ones.
//!
//! Everything else (the admin API, health checks, the store, reloads, signals) runs on the
//! process's main runtime, on the main thread, off the workers. With `worker_threads = 1` there
//! are no workers: the main runtime serves the connections too.

use std::io;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How long a stopping worker waits for its blocking tasks before it exits anyway.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// The worker threads; they stop when this is dropped (`stop` also waits for them).
pub(super) struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

/// `worker_threads` as configured, with 0 meaning one per CPU core (as the process may use
/// them: `available_parallelism` counts a container's CPU quota).
pub(super) fn resolve(worker_threads: usize) -> usize {
    match worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

impl Workers {
    /// Starts `n` worker threads, each with its own runtime.
    pub(super) fn start(n: usize) -> io::Result<Workers> {
        let mut w = Workers {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("scoregate-worker-{i}"))
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            w.handles.push(rt.handle().clone());
            w.stops.push(stop);
            w.threads.push(
                std::thread::Builder::new()
                    .name(format!("scoregate-worker-{i}"))
                    .spawn(move || {
                        // Runs the spawned tasks until told to stop (or the sender is dropped).
                        let _ = rt.block_on(stopped);
                        rt.shutdown_timeout(STOP_WAIT);
                    })?,
            );
        }
        Ok(w)
    }

    /// The workers' runtimes, to spawn their accept loops on.
    pub(super) fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Stops the workers (dropping the tasks still on them) and waits for their threads.
    pub(super) async fn stop(mut self) {
        self.stops.clear();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Dropping the senders ends each worker's `block_on`; the threads finish on their own.
        self.stops.clear();
    }
}
