//! Running store work off the async threads: `Db::run` on the blocking pool, `run_blocking`
//! on an actor's own thread. Both answer with the REST error, so handlers use `?` on them.

use actix_web::web;

use crate::error::{ApiError, ApiResult};
pub use crate::store::db::*;

impl Db {
    /// Runs blocking database work on actix's blocking pool, never on an event loop.
    pub async fn run<F, T>(&self, f: F) -> ApiResult<T>
    where
        F: FnOnce(&mut DbConnection) -> ApiResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        web::block(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Runs blocking database work on the calling thread; for `SyncArbiter` actors, whose
    /// threads exist to block.
    pub fn run_blocking<F, T>(&self, f: F) -> ApiResult<T>
    where
        F: FnOnce(&mut DbConnection) -> ApiResult<T>,
    {
        let mut conn = self.pool.get()?;
        f(&mut conn)
    }
}
