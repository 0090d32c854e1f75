//! The `Janitor` actor: periodic housekeeping that must not wait for a request to happen.
//! It prunes expired token revocations, stale rate-limit counters (its own in memory, and as
//! leader the shared ones in the database), and device logs and events past their retention,
//! writes the audit summaries of refused attempts, and every minute rolls device metrics up
//! into minute and hour buckets and deletes those past their retention.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;

use crate::actors::cluster::SetLeader;
use crate::limits::{self, Limits};
use crate::store::db::Db;
use crate::store::metrics::{self, Retention};
use crate::{store::failures, store::telemetry, store::tokens};

/// How often housekeeping runs.
pub const JANITOR_INTERVAL: Duration = Duration::from_secs(600);

/// Rows deleted per statement by the retention job.
pub const RETENTION_BATCH: i64 = 1000;

pub struct Janitor {
    db: Db,
    limits: Arc<Limits>,
    retention: chrono::Duration,
    summary_every: Duration,
    metrics: Retention,
    /// How often metrics are rolled up: a chart's newest minute is at most this old.
    rollup_every: Duration,
    /// A rollup still running; the next tick skips rather than overlap it.
    rolling: bool,
    /// Only the leader among replicas deletes and rolls up rows; every replica sums up and
    /// prunes its own limiters, which live in its memory.
    leader: bool,
}

impl Janitor {
    pub fn new(
        db: Db,
        limits: Arc<Limits>,
        retention_days: u32,
        summary_every: Duration,
        (metrics, rollup_every): (Retention, Duration),
    ) -> Self {
        Janitor {
            db,
            limits,
            retention: chrono::Duration::days(i64::from(retention_days)),
            summary_every,
            metrics,
            rollup_every,
            rolling: false,
            leader: false,
        }
    }
}

/// Writes the audit summaries of the attempts refused since the last time.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushRefusals;

/// Rolls metrics up and applies their retention now; the interval sends it too.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RollUp;

/// Runs one round now; the interval sends it too.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Sweep;

impl Actor for Janitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.notify(Sweep);
        ctx.run_interval(JANITOR_INTERVAL, |_, ctx| ctx.notify(Sweep));
        ctx.run_interval(self.summary_every, |_, ctx| ctx.notify(FlushRefusals));
        ctx.notify(RollUp);
        ctx.run_interval(self.rollup_every, |_, ctx| ctx.notify(RollUp));
    }
}

impl Handler<SetLeader> for Janitor {
    type Result = ();
    fn handle(&mut self, msg: SetLeader, ctx: &mut Context<Self>) {
        let became = msg.0 && !self.leader;
        self.leader = msg.0;
        if became {
            ctx.notify(Sweep);
            ctx.notify(RollUp);
        }
    }
}

impl Handler<RollUp> for Janitor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: RollUp, _: &mut Context<Self>) -> Self::Result {
        if self.rolling || !self.leader {
            return Box::pin(actix::fut::ready(()));
        }
        self.rolling = true;
        let (db, keep) = (self.db.clone(), self.metrics);
        let work = async move {
            let now = Utc::now();
            match db.run(move |conn| Ok(metrics::rollup(conn, now)?)).await {
                Ok(report) => tracing::debug!(?report, "metrics rolled up"),
                Err(e) => tracing::warn!(error = %e, "metrics rollup failed"),
            }
            match db
                .run(move |conn| Ok(metrics::prune(conn, now, keep)?))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "metrics past their retention deleted"),
                Err(e) => tracing::warn!(error = %e, "metrics retention failed"),
            }
        };
        Box::pin(work.into_actor(self).map(|_, act, _| act.rolling = false))
    }
}

impl Handler<FlushRefusals> for Janitor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushRefusals, _: &mut Context<Self>) -> Self::Result {
        let (db, limits) = (self.db.clone(), self.limits.clone());
        Box::pin(async move {
            match limits::flush_summaries(&db, &limits).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "refused attempts summed up in the audit log"),
                // flush_summaries has logged it.
                Err(_) => {}
            }
        })
    }
}

impl Handler<Sweep> for Janitor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Sweep, _: &mut Context<Self>) -> Self::Result {
        self.limits.prune();
        if !self.leader {
            return Box::pin(async {});
        }
        let db = self.db.clone();
        let cutoff = Utc::now() - self.retention;
        Box::pin(async move {
            match db
                .run(move |conn| Ok(telemetry::prune_older_than(conn, cutoff, RETENTION_BATCH)?))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, %cutoff, "old device logs and events deleted"),
                Err(e) => tracing::warn!(error = %e, "log retention failed"),
            }
            match db.run(|conn| Ok(tokens::prune(conn, Utc::now())?)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "expired token revocations pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning token revocations failed"),
            }
            match db.run(|conn| Ok(failures::prune(conn)?)).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(pruned = n, "shared failure counts past their window pruned")
                }
                Err(e) => tracing::warn!(error = %e, "pruning shared failure counts failed"),
            }
        })
    }
}
