//! The database threads: a fixed set, one per pooled connection, fed by a bounded queue.
//!
//! Handlers run their queries here instead of on actix's blocking pool, which grows to 1,024
//! threads under load while only the pool's few connections can do any work: the extra
//! threads only wait, each with its stack. A fixed set keeps the thread count flat, and the
//! bounded queue turns overload into a quick refusal (the caller answers 503 with
//! `Retry-After`) instead of a wait that grows without end.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// Work for a database thread. A job brings its own handle on the pool: the threads hold
/// none, so the pool and its connections close with the last `Db`, not at process exit (where
/// closing a TLS connection to PostgreSQL after OpenSSL's own exit handlers have run crashes).
pub type Job = Box<dyn FnOnce() + Send>;

/// Jobs that may wait per database thread before new ones are refused. At a few hundred
/// microseconds a query this is well under a second of queue.
pub const QUEUE_PER_THREAD: usize = 256;

/// The sending side; the threads end when the last clone of it is dropped.
#[derive(Clone)]
pub struct Executor {
    jobs: SyncSender<Job>,
    threads: usize,
}

/// The queue is full: the database threads are behind.
#[derive(Debug, thiserror::Error)]
#[error("the database queue is full")]
pub struct Busy;

impl Executor {
    /// Starts `threads` threads, with room for `threads * QUEUE_PER_THREAD` jobs.
    pub fn start(threads: usize) -> std::io::Result<Executor> {
        let threads = threads.max(1);
        let (jobs, queue) = sync_channel::<Job>(threads * QUEUE_PER_THREAD);
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("db-{n}"))
                .spawn(move || work(&queue))?;
        }
        Ok(Executor { jobs, threads })
    }

    /// Queues `job`, or refuses it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            // Disconnected cannot happen while `self` holds a sender; either way no thread
            // will run the job.
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn work(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, never while running one.
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = next else {
            return;
        };
        // A panicking job drops its reply channel (its caller sees an internal error); the
        // thread stays, so the set never shrinks.
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a database job panicked");
        }
    }
}
