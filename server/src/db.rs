//! Running store work off the async threads: `Db::run` on the database threads
//! (`store::executor`), `run_blocking` on an actor's own thread. Both answer with the REST
//! error, so handlers use `?` on them.

use std::time::Instant;

use crate::error::{ApiError, ApiResult};
use crate::metrics;
pub use crate::store::db::*;

impl Db {
    /// Runs blocking database work on the database threads, never on an event loop. When
    /// they are too far behind, answers 503 `server_busy` at once rather than queueing.
    pub async fn run<F, T>(&self, f: F) -> ApiResult<T>
    where
        F: FnOnce(&mut DbConnection) -> ApiResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = Instant::now();
        let pool = self.pool.clone();
        self.executor
            .submit(Box::new(move || {
                let started = Instant::now();
                metrics::db_queue_waited(started - queued);
                let conn = pool.get();
                metrics::db_connection_waited(started.elapsed());
                let result = conn
                    .map_err(ApiError::from)
                    .and_then(|mut conn| checked(&mut conn, f));
                // The caller may have gone (a dropped request); the work is done either way.
                let _ = reply.send(result);
            }))
            .map_err(|_| {
                metrics::db_job_refused();
                ApiError::busy(1, "the database is busy; try again shortly")
            })?;
        answer
            .await
            .map_err(|_| ApiError::internal("a database job ended without an answer"))?
    }

    /// The pool's connections and how many of them are idle, for the metrics.
    pub fn pool_state(&self) -> (u32, u32) {
        let state = self.pool.state();
        (state.connections, state.idle_connections)
    }

    /// How many database threads `run` uses.
    pub fn threads(&self) -> usize {
        self.executor.threads()
    }

    /// Runs blocking database work on the calling thread; for `SyncArbiter` actors, whose
    /// threads exist to block.
    pub fn run_blocking<F, T>(&self, f: F) -> ApiResult<T>
    where
        F: FnOnce(&mut DbConnection) -> ApiResult<T>,
    {
        let mut conn = self.pool.get()?;
        checked(&mut conn, f)
    }
}

/// Runs `f` on `conn`, and after a server-side failure checks that the connection still
/// answers (`check_after_error`): the pool no longer tests connections at checkout. A refusal
/// of the request itself (4xx) says nothing about the connection.
fn checked<F, T>(conn: &mut DbConnection, f: F) -> ApiResult<T>
where
    F: FnOnce(&mut DbConnection) -> ApiResult<T>,
{
    let result = f(conn);
    if let Err(e) = &result {
        if e.status.is_server_error() {
            check_after_error(conn);
        }
    }
    result
}
