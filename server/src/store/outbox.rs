//! The outbox of records for the cloud: which are due, and marking them sent or failed.

use crate::store::db::DbConnection;
use crate::store::error::{StoreError, StoreResult};
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::Page;
use protocol::sync::RecordKind;
use rand::Rng;
use schema::schema::cloud_sync_queue as queue;
use serde::Serialize;
use std::time::Duration;

pub const STATE_PENDING: &str = "PENDING";

pub const STATE_SENT: &str = "SENT";

pub const STATE_DEAD: &str = "DEAD";

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

pub fn kind_of(name: &str) -> Option<RecordKind> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

pub fn due(conn: &mut DbConnection, now: DateTime<Utc>, limit: i64) -> StoreResult<Vec<QueueRow>> {
    Ok(queue::table
        .filter(queue::state.eq(STATE_PENDING))
        .filter(queue::next_attempt_at.le(now.naive_utc()))
        .order((queue::created_at.asc(), queue::id.asc()))
        .limit(limit)
        .select(QueueRow::as_select())
        .load(conn)?)
}

pub fn mark_sent(conn: &mut DbConnection, ids: &[String]) -> StoreResult<usize> {
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
) -> StoreResult<usize> {
    let max_attempts = settings.max_attempts;
    let mut dead = 0;
    crate::store::db::write_transaction(conn, |conn| {
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
                    queue::last_error.eq(Some(crate::store::commands::cap_output(error, 1000))),
                ))
                .execute(conn)?;
        }
        Ok::<(), StoreError>(())
    })?;
    Ok(dead)
}

#[derive(Debug, Clone, Copy)]
pub struct CloudSettings {
    pub batch_size: usize,
    pub concurrency: usize,
    pub max_attempts: i64,
    /// The longest wait between two attempts of a record.
    pub retry_max: Duration,
}

/// Backoff before attempt `attempts + 1`: doubling from one second to five minutes, with up
/// to a quarter of jitter so a recovering cloud is not hit by every batch at once.
pub fn backoff(attempts: i64, max: Duration) -> Duration {
    let exp = BACKOFF_BASE.saturating_mul(1u32 << attempts.clamp(0, 16) as u32);
    let capped = exp.min(max);
    let jitter = rand::thread_rng().gen_range(0.0..0.25);
    capped + capped.mul_f64(jitter)
}

pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// A record the drain gave up on, as `GET /api/v1/sync/dead-letters` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    pub kind: String,
    pub company_id: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Rows of the queue per company and state.
pub fn counts_by_company(conn: &mut DbConnection) -> StoreResult<Vec<(String, String, i64)>> {
    Ok(queue::table
        .group_by((queue::company_id, queue::state))
        .select((queue::company_id, queue::state, diesel::dsl::count_star()))
        .load(conn)?)
}

/// Rows of the queue per state, whatever the company: what the metrics show.
pub fn counts_by_state(conn: &mut DbConnection) -> StoreResult<Vec<(String, i64)>> {
    Ok(queue::table
        .group_by(queue::state)
        .select((queue::state, diesel::dsl::count_star()))
        .load(conn)?)
}

/// The creation time of each company's oldest PENDING record.
pub fn oldest_pending_by_company(
    conn: &mut DbConnection,
) -> StoreResult<Vec<(String, Option<NaiveDateTime>)>> {
    Ok(queue::table
        .filter(queue::state.eq(STATE_PENDING))
        .group_by(queue::company_id)
        .select((queue::company_id, diesel::dsl::min(queue::created_at)))
        .load(conn)?)
}

/// One page of dead letters, oldest first.
pub fn dead_letters_page(
    conn: &mut DbConnection,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<DeadLetter>> {
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
}

/// Puts dead letters (`None`: all of them) back to PENDING with a fresh attempt count;
/// answers how many.
pub fn requeue_dead(conn: &mut DbConnection, ids: Option<&[String]>) -> StoreResult<usize> {
    let now = Utc::now().naive_utc();
    let set = (
        queue::state.eq(STATE_PENDING),
        queue::attempts.eq(0i64),
        queue::next_attempt_at.eq(now),
    );
    let n = match ids {
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
}
