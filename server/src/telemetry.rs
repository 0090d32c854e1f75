//! Device telemetry: log lines and scan/print/alert events, written in batches, listed by
//! REST, and pruned by age.
//!
//! Sessions hand records to the `TelemetrySink` actor, which buffers them and flushes a batch
//! every `FLUSH_INTERVAL` or at `FLUSH_AT` records to the `TelemetryWriter`, a one-thread
//! `SyncArbiter` that writes a whole batch in one transaction. While the writer is behind by
//! more than `MAX_BATCHES_IN_FLIGHT`, new records are dropped and counted rather than queued
//! without bound: telemetry must never take the server's memory.

use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{DeviceEventRecord, DeviceLogLine, Envelope, Page};
use schema::schema::{device_events, device_logs};
use serde::Deserialize;

use crate::auth::{Authorized, ViewDevices};
use crate::db::{Db, DbConnection};
use crate::devices;
use crate::error::ApiResult;
use crate::state::AppState;

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
pub const FLUSH_AT: usize = 500;
pub const MAX_BATCHES_IN_FLIGHT: usize = 8;
/// Longest log line or event payload stored; longer ones are cut.
pub const MAX_STORED_TEXT: usize = 8 * 1024;

#[derive(Debug, Clone, Insertable, Queryable, Selectable)]
#[diesel(table_name = device_logs)]
pub struct LogRow {
    pub id: String,
    pub device_id: String,
    pub ts: NaiveDateTime,
    pub level: String,
    pub line: String,
}

#[derive(Debug, Clone, Insertable, Queryable, Selectable)]
#[diesel(table_name = device_events)]
pub struct EventRow {
    pub id: String,
    pub device_id: String,
    pub ts: NaiveDateTime,
    pub event_type: String,
    pub payload: String,
}

/// One record for the sink.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum Telemetry {
    Log(LogRow),
    Event(EventRow),
}

impl Telemetry {
    pub fn log(device_id: &str, ts: DateTime<Utc>, level: &str, line: &str) -> Self {
        Telemetry::Log(LogRow {
            id: uuid::Uuid::new_v4().to_string(),
            device_id: device_id.to_owned(),
            ts: ts.naive_utc(),
            level: level.chars().take(16).collect(),
            line: crate::commands::cap_output(line, MAX_STORED_TEXT),
        })
    }

    pub fn event(
        device_id: &str,
        ts: DateTime<Utc>,
        event_type: &str,
        payload: &serde_json::Value,
    ) -> Self {
        Telemetry::Event(EventRow {
            id: uuid::Uuid::new_v4().to_string(),
            device_id: device_id.to_owned(),
            ts: ts.naive_utc(),
            event_type: event_type.to_owned(),
            payload: crate::commands::cap_output(&payload.to_string(), MAX_STORED_TEXT),
        })
    }
}

/// A batch for the writer.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct WriteBatch(pub Vec<Telemetry>);

pub struct TelemetryWriter {
    db: Db,
}

impl TelemetryWriter {
    pub fn new(db: Db) -> Self {
        TelemetryWriter { db }
    }
}

impl Actor for TelemetryWriter {
    type Context = SyncContext<Self>;
}

/// Rows per multi-row insert: 5 columns each stays far below SQLite's and PostgreSQL's
/// limits on bound parameters.
const INSERT_CHUNK: usize = 500;

/// Writes a batch in one transaction, with one multi-row insert per table and chunk (a
/// statement per row made a device's backlog of thousands of scans outrun the writer on a
/// busy PostgreSQL). Rows of a device deleted meanwhile fail the foreign key; then the batch
/// is retried row by row so one gone device costs only its own rows.
pub fn write_batch(conn: &mut DbConnection, batch: &[Telemetry]) -> ApiResult<usize> {
    fn insert_one(conn: &mut DbConnection, record: &Telemetry) -> QueryResult<usize> {
        match record {
            Telemetry::Log(row) => diesel::insert_into(device_logs::table)
                .values(row)
                .execute(conn),
            Telemetry::Event(row) => diesel::insert_into(device_events::table)
                .values(row)
                .execute(conn),
        }
    }
    let logs: Vec<&LogRow> = batch
        .iter()
        .filter_map(|r| match r {
            Telemetry::Log(row) => Some(row),
            Telemetry::Event(_) => None,
        })
        .collect();
    let events: Vec<&EventRow> = batch
        .iter()
        .filter_map(|r| match r {
            Telemetry::Event(row) => Some(row),
            Telemetry::Log(_) => None,
        })
        .collect();
    let all = conn.transaction(|conn| {
        for chunk in logs.chunks(INSERT_CHUNK) {
            crate::on_backend!(conn, |c| diesel::insert_into(device_logs::table)
                .values(chunk.to_vec())
                .execute(c))?;
        }
        for chunk in events.chunks(INSERT_CHUNK) {
            crate::on_backend!(conn, |c| diesel::insert_into(device_events::table)
                .values(chunk.to_vec())
                .execute(c))?;
        }
        QueryResult::Ok(batch.len())
    });
    match all {
        Ok(n) => Ok(n),
        Err(_) => {
            let mut written = 0;
            for record in batch {
                if insert_one(conn, record).is_ok() {
                    written += 1;
                }
            }
            Ok(written)
        }
    }
}

impl Handler<WriteBatch> for TelemetryWriter {
    type Result = usize;

    fn handle(&mut self, msg: WriteBatch, _: &mut SyncContext<Self>) -> usize {
        match self.db.run_blocking(|conn| write_batch(conn, &msg.0)) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, records = msg.0.len(), "telemetry batch lost");
                0
            }
        }
    }
}

pub struct TelemetrySink {
    writer: Addr<TelemetryWriter>,
    buffer: Vec<Telemetry>,
    in_flight: usize,
    dropped: u64,
}

impl TelemetrySink {
    pub fn new(writer: Addr<TelemetryWriter>) -> Self {
        TelemetrySink {
            writer,
            buffer: Vec::with_capacity(FLUSH_AT),
            in_flight: 0,
            dropped: 0,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.buffer.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.buffer, Vec::with_capacity(FLUSH_AT));
        self.in_flight += 1;
        self.writer
            .send(WriteBatch(batch))
            .into_actor(self)
            .map(|_, act, _| act.in_flight -= 1)
            .spawn(ctx);
    }
}

impl Actor for TelemetrySink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(FLUSH_INTERVAL, |act, ctx| {
            if act.dropped > 0 {
                tracing::warn!(
                    dropped = act.dropped,
                    "telemetry records dropped: the database is behind"
                );
                act.dropped = 0;
            }
            act.flush(ctx);
        });
    }
}

impl Handler<Telemetry> for TelemetrySink {
    type Result = ();

    fn handle(&mut self, msg: Telemetry, ctx: &mut Context<Self>) {
        if self.in_flight >= MAX_BATCHES_IN_FLIGHT && self.buffer.len() >= FLUSH_AT {
            self.dropped += 1;
            return;
        }
        self.buffer.push(msg);
        if self.buffer.len() >= FLUSH_AT && self.in_flight < MAX_BATCHES_IN_FLIGHT {
            self.flush(ctx);
        }
    }
}

/// Writes what is buffered now; answers when the batch is handed to the writer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for TelemetrySink {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

/// Deletes log lines and events older than `cutoff`, at most `batch` rows per statement, so
/// a large backlog never holds a long lock. Returns how many rows went.
pub fn prune_older_than(
    conn: &mut DbConnection,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> ApiResult<usize> {
    let cutoff = cutoff.naive_utc();
    let mut total = 0;
    loop {
        let ids: Vec<String> = device_logs::table
            .filter(device_logs::ts.lt(cutoff))
            .select(device_logs::id)
            .limit(batch)
            .load(conn)?;
        if ids.is_empty() {
            break;
        }
        total += diesel::delete(device_logs::table.filter(device_logs::id.eq_any(&ids)))
            .execute(conn)?;
    }
    loop {
        let ids: Vec<String> = device_events::table
            .filter(device_events::ts.lt(cutoff))
            .select(device_events::id)
            .limit(batch)
            .load(conn)?;
        if ids.is_empty() {
            break;
        }
        total += diesel::delete(device_events::table.filter(device_events::id.eq_any(&ids)))
            .execute(conn)?;
    }
    Ok(total)
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub level: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// `GET /api/v1/devices/{id}/logs`: newest first.
pub async fn device_logs(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<LogQuery>,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let q = query.into_inner();
    let (limit, offset) = devices::paging(q.limit, q.offset)?;
    let level = q.level.map(|l| l.to_uppercase());
    let page = state
        .db
        .run(move |conn| {
            devices::require(conn, &device_id)?;
            let filtered = || {
                let mut query = device_logs::table
                    .filter(device_logs::device_id.eq(device_id.clone()))
                    .into_boxed();
                if let Some(level) = &level {
                    query = query.filter(device_logs::level.eq(level.clone()));
                }
                if let Some(since) = q.since {
                    query = query.filter(device_logs::ts.ge(since.naive_utc()));
                }
                if let Some(until) = q.until {
                    query = query.filter(device_logs::ts.lt(until.naive_utc()));
                }
                query
            };
            let total = filtered().count().get_result(conn)?;
            let rows: Vec<LogRow> = filtered()
                .order((device_logs::ts.desc(), device_logs::id.desc()))
                .limit(limit)
                .offset(offset)
                .select(LogRow::as_select())
                .load(conn)?;
            let items = rows
                .into_iter()
                .map(|r| DeviceLogLine {
                    id: r.id,
                    device_id: r.device_id,
                    ts: r.ts.and_utc(),
                    level: r.level,
                    line: r.line,
                })
                .collect();
            Ok(Page { items, total })
        })
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

#[derive(Debug, Deserialize)]
pub struct EventQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// `GET /api/v1/devices/{id}/events`: scans, prints and alerts, newest first.
pub async fn device_events(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<EventQuery>,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    let q = query.into_inner();
    let (limit, offset) = devices::paging(q.limit, q.offset)?;
    let page = state
        .db
        .run(move |conn| {
            devices::require(conn, &device_id)?;
            let filtered = || {
                let mut query = device_events::table
                    .filter(device_events::device_id.eq(device_id.clone()))
                    .into_boxed();
                if let Some(t) = &q.event_type {
                    query = query.filter(device_events::event_type.eq(t.clone()));
                }
                if let Some(since) = q.since {
                    query = query.filter(device_events::ts.ge(since.naive_utc()));
                }
                if let Some(until) = q.until {
                    query = query.filter(device_events::ts.lt(until.naive_utc()));
                }
                query
            };
            let total = filtered().count().get_result(conn)?;
            let rows: Vec<EventRow> = filtered()
                .order((device_events::ts.desc(), device_events::id.desc()))
                .limit(limit)
                .offset(offset)
                .select(EventRow::as_select())
                .load(conn)?;
            let items = rows
                .into_iter()
                .map(|r| DeviceEventRecord {
                    id: r.id,
                    device_id: r.device_id,
                    ts: r.ts.and_utc(),
                    event_type: r.event_type,
                    payload: serde_json::from_str(&r.payload).unwrap_or(serde_json::Value::Null),
                })
                .collect();
            Ok(Page { items, total })
        })
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}
