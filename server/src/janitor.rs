//! The `Janitor` actor: periodic housekeeping that must not wait for a request to happen.
//! Today it prunes expired token revocations and stale rate-limit counters.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;

use crate::db::Db;
use crate::state::Limits;
use crate::tokens;

/// How often housekeeping runs.
pub const JANITOR_INTERVAL: Duration = Duration::from_secs(600);

pub struct Janitor {
    db: Db,
    limits: Arc<Limits>,
}

impl Janitor {
    pub fn new(db: Db, limits: Arc<Limits>) -> Self {
        Janitor { db, limits }
    }
}

/// Runs one round now; the interval sends it too.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Sweep;

impl Actor for Janitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.notify(Sweep);
        ctx.run_interval(JANITOR_INTERVAL, |_, ctx| ctx.notify(Sweep));
    }
}

impl Handler<Sweep> for Janitor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Sweep, _: &mut Context<Self>) -> Self::Result {
        self.limits.prune();
        let db = self.db.clone();
        Box::pin(async move {
            match db.run(|conn| tokens::prune(conn, Utc::now())).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "expired token revocations pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning token revocations failed"),
            }
        })
    }
}
