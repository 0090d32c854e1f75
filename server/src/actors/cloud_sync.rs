//! The `CloudSync` actor: drains `cloud_sync_queue` to the OKTO cloud.
//!
//! Every `TICK`, due PENDING records (oldest first) are grouped per company and kind into
//! batches of at most `batch_size` and posted through the shared `cloud` client, at most
//! `concurrency` batches at a time. A batch the cloud accepts (2xx) is marked SENT; a failed one
//! goes back with its attempts counted and its next attempt pushed out by exponential backoff
//! with jitter; past `max_attempts` a record is DEAD, listed by REST and requeued by hand. The
//! cloud URL and token can change while running (SIGHUP re-reads the token file, or
//! `PUT /api/v1/sync/cloud`), which the seed's static token could not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};

use protocol::sync::{RecordKind, SyncRecord};
use serde::Serialize;

use crate::actors::cluster::SetLeader;
use crate::error::ApiError;
use crate::store::db::Db;
use crate::store::outbox::*;

/// How often the queue is looked at.
pub const TICK: Duration = Duration::from_millis(500);
/// The longest wait between attempts unless configured otherwise.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);

/// Where and how to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudTarget {
    pub url: String,
    pub token: String,
}

/// What `GET /api/v1/sync/status` reports beyond the queue counts.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompanyStats {
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub sent: u64,
}

#[derive(Debug, Default)]
pub struct SyncStats {
    pub configured: bool,
    pub per_company: BTreeMap<String, CompanyStats>,
}

pub type SharedStats = Arc<Mutex<SyncStats>>;

/// A batch to post: one company, one kind.
struct Batch {
    company_id: String,
    kind: RecordKind,
    rows: Vec<(String, i64)>,
    records: Vec<SyncRecord>,
}

fn batches(rows: Vec<QueueRow>, batch_size: usize) -> (Vec<Batch>, Vec<(String, i64)>) {
    let mut groups: BTreeMap<(String, String), Batch> = BTreeMap::new();
    let mut out = Vec::new();
    let mut broken = Vec::new();
    for row in rows {
        let (Some(kind), Ok(payload)) = (kind_of(&row.kind), serde_json::from_str(&row.payload))
        else {
            broken.push((row.id, row.attempts));
            continue;
        };
        let key = (row.company_id.clone(), row.kind.clone());
        let batch = groups.entry(key.clone()).or_insert_with(|| Batch {
            company_id: row.company_id.clone(),
            kind,
            rows: Vec::new(),
            records: Vec::new(),
        });
        batch.rows.push((row.id.clone(), row.attempts));
        batch.records.push(SyncRecord {
            id: row.id,
            kind,
            company_id: row.company_id,
            payload,
            created_at: row.created_at.and_utc(),
        });
        if batch.records.len() >= batch_size {
            if let Some(full) = groups.remove(&key) {
                out.push(full);
            }
        }
    }
    out.extend(groups.into_values());
    (out, broken)
}

pub struct CloudSync {
    db: Db,
    target: Option<CloudTarget>,
    settings: CloudSettings,
    stats: SharedStats,
    /// Trust for https cloud URLs (the platform's roots plus `cloud_ca_file`).
    tls: Option<Arc<rustls::ClientConfig>>,
    http: Option<awc::Client>,
    busy: bool,
    /// Only the leader among replicas drains, so no record is sent twice.
    leader: bool,
}

impl CloudSync {
    pub fn new(
        db: Db,
        target: Option<CloudTarget>,
        settings: CloudSettings,
        stats: SharedStats,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        CloudSync {
            db,
            target,
            settings,
            stats,
            tls,
            http: None,
            busy: false,
            leader: false,
        }
    }

    fn set_configured(&self) {
        if let Ok(mut stats) = self.stats.lock() {
            stats.configured = self.target.is_some();
        }
    }
}

impl Actor for CloudSync {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // awc's client is tied to the thread it was made on, which is this actor's.
        self.http = Some(cloud::https_client(
            self.tls.as_ref(),
            Some(cloud::REQUEST_TIMEOUT),
        ));
        self.set_configured();
        ctx.run_interval(TICK, |act, ctx| act.drain(ctx));
    }
}

impl Handler<SetLeader> for CloudSync {
    type Result = ();
    fn handle(&mut self, msg: SetLeader, _: &mut Context<Self>) {
        self.leader = msg.0;
    }
}

/// Points the drain at another cloud URL or token, at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdateTarget(pub Option<CloudTarget>);

impl Handler<UpdateTarget> for CloudSync {
    type Result = ();
    fn handle(&mut self, msg: UpdateTarget, _: &mut Context<Self>) {
        let changed = self.target != msg.0;
        self.target = msg.0;
        self.set_configured();
        if changed {
            tracing::info!(configured = self.target.is_some(), "cloud target updated");
        }
    }
}

impl CloudSync {
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.busy || !self.leader {
            return;
        }
        let (Some(target), Some(http)) = (self.target.clone(), self.http.clone()) else {
            return;
        };
        self.busy = true;
        let db = self.db.clone();
        let settings = self.settings;
        let stats = self.stats.clone();
        let limit = (settings.batch_size * settings.concurrency) as i64;
        async move {
            let now = Utc::now();
            let rows = db.run(move |conn| Ok(due(conn, now, limit)?)).await?;
            if rows.is_empty() {
                return Ok::<_, ApiError>(());
            }
            let (batches, broken) = batches(rows, settings.batch_size);
            if !broken.is_empty() {
                db.run(move |conn| Ok(mark_failed(conn, &broken, "unreadable queue row", settings, now)?)).await?;
            }
            let sends = batches.into_iter().map(|batch| {
                let (http, target) = (http.clone(), target.clone());
                async move {
                    let result = cloud::post_records(
                        &http,
                        &target.url,
                        &target.token,
                        &batch.company_id,
                        batch.kind,
                        &batch.records,
                    )
                    .await;
                    (batch, result)
                }
            });
            for (batch, result) in futures_util::future::join_all(sends).await {
                let now = Utc::now();
                match result {
                    Ok(()) => {
                        let ids: Vec<String> = batch.rows.iter().map(|(id, _)| id.clone()).collect();
                        let n = ids.len() as u64;
                        db.run(move |conn| Ok(mark_sent(conn, &ids)?)).await?;
                        if let Ok(mut s) = stats.lock() {
                            let c = s.per_company.entry(batch.company_id.clone()).or_default();
                            c.last_success = Some(now);
                            c.sent += n;
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        tracing::warn!(company = %batch.company_id, records = batch.rows.len(), error = %message, "cloud batch failed");
                        if let Ok(mut s) = stats.lock() {
                            let c = s.per_company.entry(batch.company_id.clone()).or_default();
                            c.last_error = Some(message.clone());
                            c.last_error_at = Some(now);
                        }

                        let rows = batch.rows;
                        let dead = db.run(move |conn| Ok(mark_failed(conn, &rows, &message, settings, now)?)).await?;
                        if dead > 0 {
                            tracing::error!(company = %batch.company_id, dead, "records moved to the dead-letter state");
                        }
                    }
                }
            }
            Ok(())
        }
        .into_actor(self)
        .map(|result, act, _| {
            act.busy = false;
            if let Err(e) = result {
                tracing::warn!(error = %e, "cloud drain round failed");
            }
        })
        // Concurrency is bounded by the batches of one round; rounds do not overlap.
        .spawn(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        for attempts in 0..20 {
            let d = backoff(attempts, DEFAULT_RETRY_MAX);
            let base = BACKOFF_BASE
                .saturating_mul(1u32 << attempts.clamp(0, 16) as u32)
                .min(DEFAULT_RETRY_MAX);
            assert!(
                d >= base && d <= base.mul_f64(1.25),
                "attempt {attempts}: {d:?}"
            );
        }
    }

    #[test]
    fn batches_group_by_company_and_kind_and_split_at_the_size() {
        let row = |id: &str, company: &str, kind: &str| QueueRow {
            id: id.into(),
            kind: kind.into(),
            company_id: company.into(),
            payload: "{}".into(),
            state: STATE_PENDING.into(),
            attempts: 0,
            next_attempt_at: Utc::now().naive_utc(),
            last_error: None,
            created_at: Utc::now().naive_utc(),
        };
        let rows = vec![
            row("1", "a", "bottle"),
            row("2", "a", "bottle"),
            row("3", "a", "bottle"),
            row("4", "b", "bottle"),
            row("5", "a", "pallet"),
            row("6", "a", "nonsense"),
        ];
        let (batches, broken) = batches(rows, 2);
        let shapes: Vec<(String, RecordKind, usize)> = batches
            .iter()
            .map(|b| (b.company_id.clone(), b.kind, b.records.len()))
            .collect();
        assert_eq!(shapes.len(), 4);
        assert!(shapes.contains(&("a".into(), RecordKind::Bottle, 2)));
        assert!(shapes.contains(&("a".into(), RecordKind::Bottle, 1)));
        assert!(shapes.contains(&("b".into(), RecordKind::Bottle, 1)));
        assert!(shapes.contains(&("a".into(), RecordKind::Pallet, 1)));
        assert_eq!(broken, vec![("6".to_string(), 0)]);
    }
}
