//! Password verification on a few dedicated threads, at most one per core at a time.
//!
//! One Argon2 verification needs 19 MiB and a core for tens of milliseconds. Run on the
//! blocking pool, a burst of logins ran hundreds at once and took the server's memory with it.
//! Here at most `threads` verifications run, always on the same `threads` threads, each of
//! which allocates its 19 MiB once and keeps it (allocated and freed per hash, glibc kept the
//! freed copies resident: RSS grew by 19 MiB per login for a dozen logins). A request that
//! cannot get a turn within `wait` is answered 503 `server_busy` with `Retry-After`, so the
//! requests waiting for one hold a few bytes each.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};

use crate::error::{ApiError, ApiResult};
use crate::passwords::{self, HashMemory};

/// How long a verification may wait for a free thread before the request is answered 503.
pub const HASH_WAIT: Duration = Duration::from_secs(5);

/// Work for a hashing thread, given the thread's Argon2 memory.
type Job = Box<dyn FnOnce(&mut HashMemory) + Send>;

#[derive(Debug)]
pub struct HashGate {
    threads: usize,
    permits: Arc<Semaphore>,
    jobs: mpsc::Sender<Job>,
    wait: Duration,
}

impl HashGate {
    /// `threads` verification threads (at least one), each request waiting up to `wait`.
    pub fn new(threads: usize, wait: Duration) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (jobs, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    let mut memory = HashMemory::new();
                    loop {
                        // The lock is held only to take a job, never while running one.
                        let job = match receiver.lock() {
                            Ok(rx) => rx.recv(),
                            Err(poisoned) => poisoned.into_inner().recv(),
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            // The gate is gone: the server is stopping.
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(HashGate {
            threads,
            permits: Arc::new(Semaphore::new(threads)),
            jobs,
            wait,
        })
    }

    /// One thread per core the process may use.
    pub fn per_core() -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, HASH_WAIT)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Verifies `password` against `phc`, or against a dummy hash when there is none (an
    /// unknown user), so both failures take as long and an answer's timing tells no one
    /// which accounts exist.
    pub async fn verify(&self, password: String, phc: Option<String>) -> ApiResult<bool> {
        self.run(move |memory| {
            let ok = match phc {
                Some(phc) => passwords::verify_password_in(&password, &phc, memory),
                None => {
                    let dummy = passwords::dummy_hash(memory);
                    passwords::verify_password_in(&password, dummy, memory);
                    false
                }
            };
            Ok(ok)
        })
        .await
    }

    /// A new hash of `password` (creating a user, changing a password).
    pub async fn hash(&self, password: String) -> ApiResult<String> {
        self.run(move |memory| passwords::hash_password_in(&password, memory))
            .await
    }

    /// Runs `work` on a hashing thread once a turn is free, or answers 503 after `wait`.
    async fn run<T, F>(&self, work: F) -> ApiResult<T>
    where
        F: FnOnce(&mut HashMemory) -> ApiResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                ApiError::busy(
                    1,
                    "the server is busy checking passwords; try again shortly",
                )
            })?
            .map_err(ApiError::internal)?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let result = work(memory);
            // The turn ends when the work does, even if the request was abandoned meanwhile.
            drop(permit);
            let _ = tx.send(result);
        });
        self.jobs
            .send(job)
            .map_err(|_| ApiError::internal("password threads are gone"))?;
        rx.await
            .map_err(|_| ApiError::internal("a password thread stopped"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn verifies_real_and_dummy_hashes() {
        let gate = HashGate::new(1, Duration::from_secs(30)).unwrap();
        let hash = gate.hash("correct horse".into()).await.unwrap();
        assert!(gate
            .verify("correct horse".into(), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!gate.verify("wrong".into(), Some(hash)).await.unwrap());
        assert!(!gate.verify("anything".into(), None).await.unwrap());
    }

    #[actix_rt::test]
    async fn a_request_without_a_turn_is_answered_busy() {
        let gate = HashGate::new(1, Duration::from_millis(10)).unwrap();
        // Hold the only turn, as a long verification would.
        let _turn = gate.permits.clone().acquire_owned().await.unwrap();
        let err = gate.verify("x".into(), None).await.unwrap_err();
        assert_eq!(err.status, actix_web::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code.as_str(), "server_busy");
        assert_eq!(err.retry_after, Some(1));
    }
}
