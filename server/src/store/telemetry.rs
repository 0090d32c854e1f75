//! Device telemetry rows: log lines, events and metric samples, written in batches; log lines
//! and events are pruned by age here, samples by `metrics::prune`.

use crate::store::db::DbConnection;
use crate::store::error::StoreResult;
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{DeviceEventRecord, DeviceLogLine, Page};
use schema::schema::{device_events, device_logs};

use crate::store::metrics::{insert_samples, SampleRow};

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

/// An event row as `COPY` takes it: borrowed, every column given (no defaults).
#[derive(Insertable)]
#[diesel(table_name = device_events)]
#[diesel(treat_none_as_default_value = false)]
struct EventCopy<'a> {
    id: &'a str,
    device_id: &'a str,
    ts: NaiveDateTime,
    event_type: &'a str,
    payload: &'a str,
}

impl<'a> EventCopy<'a> {
    fn of(row: &'a EventRow) -> Self {
        EventCopy {
            id: &row.id,
            device_id: &row.device_id,
            ts: row.ts,
            event_type: &row.event_type,
            payload: &row.payload,
        }
    }
}

/// One record for the sink.
#[derive(Debug, Clone)]
pub enum Telemetry {
    Log(LogRow),
    Event(EventRow),
    /// The numeric metrics of one status (`metrics::samples_of`).
    Metrics(Vec<SampleRow>),
}

impl Telemetry {
    pub fn log(device_id: &str, ts: DateTime<Utc>, level: &str, line: &str) -> Self {
        Telemetry::Log(LogRow {
            id: uuid::Uuid::new_v4().to_string(),
            device_id: device_id.to_owned(),
            ts: ts.naive_utc(),
            level: level.chars().take(16).collect(),
            line: crate::store::commands::cap_output(line, MAX_STORED_TEXT),
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
            payload: crate::store::commands::cap_output(&payload.to_string(), MAX_STORED_TEXT),
        })
    }
}

/// Rows per multi-row insert: 5 columns each stays far below SQLite's and PostgreSQL's
/// limits on bound parameters.
pub const INSERT_CHUNK: usize = 500;

/// Writes a batch in one transaction, with one multi-row insert per table and chunk (a
/// statement per row made a device's backlog of thousands of scans outrun the writer on a
/// busy PostgreSQL). Rows of a device deleted meanwhile fail the foreign key; then the batch
/// is retried row by row so one gone device costs only its own rows.
pub fn write_batch(conn: &mut DbConnection, batch: &[Telemetry]) -> StoreResult<usize> {
    pub fn insert_one(conn: &mut DbConnection, record: &Telemetry) -> QueryResult<usize> {
        match record {
            Telemetry::Log(row) => diesel::insert_into(device_logs::table)
                .values(row)
                .execute(conn),
            Telemetry::Event(row) => diesel::insert_into(device_events::table)
                .values(row)
                .execute(conn),
            Telemetry::Metrics(rows) => insert_samples(conn, rows),
        }
    }
    let logs: Vec<&LogRow> = batch
        .iter()
        .filter_map(|r| match r {
            Telemetry::Log(row) => Some(row),
            _ => None,
        })
        .collect();
    let events: Vec<&EventRow> = batch
        .iter()
        .filter_map(|r| match r {
            Telemetry::Event(row) => Some(row),
            _ => None,
        })
        .collect();
    let samples: Vec<SampleRow> = batch
        .iter()
        .flat_map(|r| match r {
            Telemetry::Metrics(rows) => rows.as_slice(),
            _ => &[],
        })
        .cloned()
        .collect();
    let all = conn.transaction(|conn| {
        for chunk in logs.chunks(INSERT_CHUNK) {
            crate::on_backend!(conn, |c| diesel::insert_into(device_logs::table)
                .values(chunk.to_vec())
                .execute(c))?;
        }
        if let Some(pg) = crate::store::db::as_postgres(conn) {
            // COPY (binary): a group of thousands of events in one statement, without
            // thousands of bound parameters to parse.
            if !events.is_empty() {
                let rows: Vec<EventCopy> = events.iter().map(|row| EventCopy::of(row)).collect();
                diesel::copy_from(device_events::table)
                    .from_insertable(&rows)
                    .execute(pg)?;
            }
        } else {
            for chunk in events.chunks(INSERT_CHUNK) {
                crate::on_backend!(conn, |c| diesel::insert_into(device_events::table)
                    .values(chunk.to_vec())
                    .execute(c))?;
            }
        }
        insert_samples(conn, &samples)?;
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

/// Deletes log lines and events older than `cutoff`, at most `batch` rows per statement, so
/// a large backlog never holds a long lock. Returns how many rows went.
pub fn prune_older_than(
    conn: &mut DbConnection,
    cutoff: DateTime<Utc>,
    batch: i64,
) -> StoreResult<usize> {
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

/// Which of a device's records a page holds: a level or event type, and a time window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// The log level (upper case) or the event type; `None` for all.
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One page of a device's log lines, newest first.
pub fn logs_page(
    conn: &mut DbConnection,
    device_id: &str,
    window: &Window,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<DeviceLogLine>> {
    crate::store::devices::require(conn, device_id)?;
    let filtered = || {
        let mut query = device_logs::table
            .filter(device_logs::device_id.eq(device_id.to_owned()))
            .into_boxed();
        if let Some(level) = &window.kind {
            query = query.filter(device_logs::level.eq(level.clone()));
        }
        if let Some(since) = window.since {
            query = query.filter(device_logs::ts.ge(since.naive_utc()));
        }
        if let Some(until) = window.until {
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
}

/// One page of a device's events, newest first.
pub fn events_page(
    conn: &mut DbConnection,
    device_id: &str,
    window: &Window,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<DeviceEventRecord>> {
    crate::store::devices::require(conn, device_id)?;
    let filtered = || {
        let mut query = device_events::table
            .filter(device_events::device_id.eq(device_id.to_owned()))
            .into_boxed();
        if let Some(t) = &window.kind {
            query = query.filter(device_events::event_type.eq(t.clone()));
        }
        if let Some(since) = window.since {
            query = query.filter(device_events::ts.ge(since.naive_utc()));
        }
        if let Some(until) = window.until {
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
}
