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
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{Envelope, Page};
use protocol::sync::{RecordKind, SyncRecord};
use rand::Rng;
use schema::schema::cloud_sync_queue as queue;
use serde::{Deserialize, Serialize};

use crate::audit::{self, audited, AuditEntry};
use crate::auth::{Authorized, ManageDevices, ManageUsers, ViewDevices};
use crate::db::{Db, DbConnection};
use crate::devices::paging;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;

pub const STATE_PENDING: &str = "PENDING";
pub const STATE_SENT: &str = "SENT";
pub const STATE_DEAD: &str = "DEAD";
/// How often the queue is looked at.
pub const TICK: Duration = Duration::from_millis(500);
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest wait between attempts unless configured otherwise.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(300);

/// Where and how to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudTarget {
    pub url: String,
    pub token: String,
}

#[derive(Debug, Clone, Copy)]
pub struct CloudSettings {
    pub batch_size: usize,
    pub concurrency: usize,
    pub max_attempts: i64,
    /// The longest wait between two attempts of a record.
    pub retry_max: Duration,
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

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = queue)]
pub struct QueueRow {
    pub id: String,
    pub kind: String,
    pub company_id: String,
    pub payload: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: NaiveDateTime,
    pub last_error: Option<String>,
    pub created_at: NaiveDateTime,
}

fn kind_of(name: &str) -> Option<RecordKind> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

/// Backoff before attempt `attempts + 1`: doubling from one second to five minutes, with up
/// to a quarter of jitter so a recovering cloud is not hit by every batch at once.
pub fn backoff(attempts: i64, max: Duration) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempts.clamp(0, 16) as u32);
    let capped = exp.min(max);
    let jitter = rand::thread_rng().gen_range(0.0..0.25);
    capped + capped.mul_f64(jitter)
}

pub fn due(conn: &mut DbConnection, now: DateTime<Utc>, limit: i64) -> ApiResult<Vec<QueueRow>> {
    Ok(queue::table
        .filter(queue::state.eq(STATE_PENDING))
        .filter(queue::next_attempt_at.le(now.naive_utc()))
        .order((queue::created_at.asc(), queue::id.asc()))
        .limit(limit)
        .select(QueueRow::as_select())
        .load(conn)?)
}

pub fn mark_sent(conn: &mut DbConnection, ids: &[String]) -> ApiResult<usize> {
    let mut n = 0;
    for chunk in ids.chunks(500) {
        n += diesel::update(queue::table.filter(queue::id.eq_any(chunk)))
            .set((
                queue::state.eq(STATE_SENT),
                queue::last_error.eq(None::<String>),
            ))
            .execute(conn)?;
    }
    Ok(n)
}

/// Counts a failed attempt on each row; rows past `max_attempts` become DEAD.
pub fn mark_failed(
    conn: &mut DbConnection,
    rows: &[(String, i64)],
    error: &str,
    settings: CloudSettings,
    now: DateTime<Utc>,
) -> ApiResult<usize> {
    let max_attempts = settings.max_attempts;
    let mut dead = 0;
    crate::db::write_transaction(conn, |conn| {
        for (id, attempts) in rows {
            let attempts = attempts + 1;
            let state = if attempts >= max_attempts {
                STATE_DEAD
            } else {
                STATE_PENDING
            };
            if state == STATE_DEAD {
                dead += 1;
            }
            let next = now
                + chrono::Duration::from_std(backoff(attempts - 1, settings.retry_max))
                    .unwrap_or_default();
            diesel::update(queue::table.find(id))
                .set((
                    queue::state.eq(state),
                    queue::attempts.eq(attempts),
                    queue::next_attempt_at.eq(next.naive_utc()),
                    queue::last_error.eq(Some(crate::commands::cap_output(error, 1000))),
                ))
                .execute(conn)?;
        }
        Ok(())
    })?;
    Ok(dead)
}

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
    http: Option<awc::Client>,
    busy: bool,
}

impl CloudSync {
    pub fn new(
        db: Db,
        target: Option<CloudTarget>,
        settings: CloudSettings,
        stats: SharedStats,
    ) -> Self {
        CloudSync {
            db,
            target,
            settings,
            stats,
            http: None,
            busy: false,
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
        self.http = Some(
            awc::Client::builder()
                .timeout(cloud::REQUEST_TIMEOUT)
                .finish(),
        );
        self.set_configured();
        ctx.run_interval(TICK, |act, ctx| act.drain(ctx));
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
        if self.busy {
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
            let rows = db.run(move |conn| due(conn, now, limit)).await?;
            if rows.is_empty() {
                return Ok::<_, ApiError>(());
            }
            let (batches, broken) = batches(rows, settings.batch_size);
            if !broken.is_empty() {
                db.run(move |conn| mark_failed(conn, &broken, "unreadable queue row", settings, now)).await?;
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
                        db.run(move |conn| mark_sent(conn, &ids)).await?;
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
                        let dead = db.run(move |conn| mark_failed(conn, &rows, &message, settings, now)).await?;
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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CompanyStatus {
    pending: i64,
    sent: i64,
    dead: i64,
    oldest_pending_age_secs: Option<i64>,
    #[serde(flatten)]
    stats: CompanyStats,
}

/// `GET /api/v1/sync/status`.
pub async fn status(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    let rows: Vec<(String, String, i64)> = state
        .db
        .run(|conn| {
            Ok(queue::table
                .group_by((queue::company_id, queue::state))
                .select((queue::company_id, queue::state, diesel::dsl::count_star()))
                .load(conn)?)
        })
        .await?;
    let oldest: Vec<(String, Option<NaiveDateTime>)> = state
        .db
        .run(|conn| {
            Ok(queue::table
                .filter(queue::state.eq(STATE_PENDING))
                .group_by(queue::company_id)
                .select((queue::company_id, diesel::dsl::min(queue::created_at)))
                .load(conn)?)
        })
        .await?;
    let now = Utc::now();
    let (configured, per_company) = {
        let s = state
            .cloud_stats
            .lock()
            .map_err(|_| ApiError::internal("stats lock"))?;
        (s.configured, s.per_company.clone())
    };
    let mut companies: BTreeMap<String, CompanyStatus> = BTreeMap::new();
    for (company, st, n) in rows {
        let c = companies
            .entry(company.clone())
            .or_insert_with(|| CompanyStatus {
                pending: 0,
                sent: 0,
                dead: 0,
                oldest_pending_age_secs: None,
                stats: per_company.get(&company).cloned().unwrap_or_default(),
            });
        match st.as_str() {
            STATE_PENDING => c.pending += n,
            STATE_SENT => c.sent += n,
            STATE_DEAD => c.dead += n,
            _ => {}
        }
    }
    for (company, ts) in oldest {
        if let (Some(c), Some(ts)) = (companies.get_mut(&company), ts) {
            c.oldest_pending_age_secs = Some((now - ts.and_utc()).num_seconds().max(0));
        }
    }
    let total = |f: fn(&CompanyStatus) -> i64| companies.values().map(f).sum::<i64>();
    let body = serde_json::json!({
        "cloudConfigured": configured,
        "pending": total(|c| c.pending),
        "sent": total(|c| c.sent),
        "dead": total(|c| c.dead),
        "oldestPendingAgeSecs": companies.values().filter_map(|c| c.oldest_pending_age_secs).max(),
        "companies": companies,
    });
    Ok(HttpResponse::Ok().json(Envelope::ok(body)))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    pub kind: String,
    pub company_id: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
pub struct DeadQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// `GET /api/v1/sync/dead-letters`.
pub async fn dead_letters(
    _user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    query: web::Query<DeadQuery>,
) -> ApiResult<HttpResponse> {
    let (limit, offset) = paging(query.limit, query.offset)?;
    let page = state
        .db
        .run(move |conn| {
            let total = queue::table
                .filter(queue::state.eq(STATE_DEAD))
                .count()
                .get_result(conn)?;
            let rows: Vec<QueueRow> = queue::table
                .filter(queue::state.eq(STATE_DEAD))
                .order((queue::created_at.asc(), queue::id.asc()))
                .limit(limit)
                .offset(offset)
                .select(QueueRow::as_select())
                .load(conn)?;
            let items = rows
                .into_iter()
                .map(|r| DeadLetter {
                    id: r.id,
                    kind: r.kind,
                    company_id: r.company_id,
                    attempts: r.attempts,
                    last_error: r.last_error,
                    created_at: r.created_at.and_utc(),
                })
                .collect();
            Ok(Page { items, total })
        })
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequeueRequest {
    /// Absent: every dead letter.
    pub ids: Option<Vec<String>>,
}

/// `POST /api/v1/sync/dead-letters/requeue`: back to PENDING with a fresh attempt count.
pub async fn requeue(
    user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RequeueRequest>,
) -> ApiResult<HttpResponse> {
    let ids = body.into_inner().ids;
    if ids
        .as_ref()
        .is_some_and(|ids| ids.is_empty() || ids.len() > 10_000)
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "ids must list 1 to 10000 records",
        ));
    }
    let entry = AuditEntry::new("sync.requeue", "success")
        .actor(Some(user.username.clone()), Some(user.role))
        .params(serde_json::json!({"count": ids.as_ref().map(Vec::len)}))
        .source(audit::source_of(&req));
    let n = audited(&state.db, entry, move |conn| {
        let now = Utc::now().naive_utc();
        let set = (
            queue::state.eq(STATE_PENDING),
            queue::attempts.eq(0i64),
            queue::next_attempt_at.eq(now),
        );
        let n = match &ids {
            None => diesel::update(queue::table.filter(queue::state.eq(STATE_DEAD)))
                .set(set)
                .execute(conn)?,
            Some(ids) => {
                let mut n = 0;
                for chunk in ids.chunks(500) {
                    n += diesel::update(
                        queue::table
                            .filter(queue::state.eq(STATE_DEAD))
                            .filter(queue::id.eq_any(chunk)),
                    )
                    .set(set)
                    .execute(conn)?;
                }
                n
            }
        };
        Ok(n)
    })
    .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({"requeued": n}))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudUpdate {
    pub url: Option<String>,
    pub token: Option<String>,
}

/// `PUT /api/v1/sync/cloud`: a new cloud URL and/or token, in effect at once (ADMIN). The
/// token is never echoed or audited.
pub async fn update_cloud(
    user: Authorized<ManageUsers>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<CloudUpdate>,
) -> ApiResult<HttpResponse> {
    let update = body.into_inner();
    if let Some(url) = &update.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidParameter,
                "url must be an http(s) URL",
            ));
        }
    }
    if update
        .token
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > 8192)
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "token must be 1-8192 characters",
        ));
    }
    let target = {
        let mut current = state
            .cloud_target
            .lock()
            .map_err(|_| ApiError::internal("target lock"))?;
        let url = update
            .url
            .clone()
            .or_else(|| current.as_ref().map(|t| t.url.clone()));
        let token = update
            .token
            .clone()
            .or_else(|| current.as_ref().map(|t| t.token.clone()));
        let target = match (url, token) {
            (Some(url), Some(token)) => Some(CloudTarget { url, token }),
            _ => {
                return Err(ApiError::unprocessable(
                    ErrorCode::InvalidParameter,
                    "both a cloud url and a token are needed",
                ))
            }
        };
        *current = target.clone();
        target
    };
    let entry = AuditEntry::new("sync.cloud.update", "success")
        .actor(Some(user.username.clone()), Some(user.role))
        .params(serde_json::json!({"url": update.url, "tokenChanged": update.token.is_some()}))
        .source(audit::source_of(&req));
    state
        .db
        .run(move |conn| audit::record(conn, &entry))
        .await?;
    state.cloud.do_send(UpdateTarget(target));
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({"updated": true}))))
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
