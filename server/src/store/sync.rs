//! Storing an edge's sync batch: its rows, idempotently, and their outbox entries.

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::store::db::DbConnection;
use crate::store::error::{StoreError, StoreResult};
use protocol::sync::{RecordKind, SyncRecord, SyncResponse};
use schema::schema::{
    aggregated_batch_fixations, aggregated_batches, aggregated_bottles, aggregated_pallets,
    cloud_sync_queue,
};

/// State of a fresh `cloud_sync_queue` row.
pub const QUEUE_PENDING: &str = "PENDING";

/// The wire name of a kind, which is also the queue's `kind` column.
pub fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Bottle => "bottle",
        RecordKind::Batch => "batch",
        RecordKind::Pallet => "pallet",
        RecordKind::BatchFixate => "batch_fixate",
    }
}

/// Stores a checked batch in one transaction and counts what was new.
///
/// A batch costs a few statements, not a few per record: the ids already stored are looked up
/// together, and the new records are written by multi-row inserts, one savepoint per chunk.
/// A concurrent request may store one of the ids between the lookup and the insert; that
/// chunk's savepoint then rolls back, and its records are written one at a time, so the late
/// ones count as duplicates and the rest are kept.
pub fn store(
    conn: &mut DbConnection,
    device_id: &str,
    records: Vec<SyncRecord>,
) -> StoreResult<SyncResponse> {
    let now = Utc::now().naive_utc();
    crate::store::db::write_transaction(conn, |conn| {
        let mut duplicates = 0u64;
        // The same id twice in one body: the second is a duplicate of the first.
        let mut seen = std::collections::HashSet::new();
        let mut fresh: Vec<SyncRecord> = Vec::with_capacity(records.len());
        for record in records {
            if seen.insert(record.id.clone()) {
                fresh.push(record);
            } else {
                duplicates += 1;
            }
        }
        let taken = stored_ids(conn, &fresh)?;
        fresh.retain(|r| {
            let known = taken.contains(&r.id);
            duplicates += u64::from(known);
            !known
        });
        let rows: Vec<(RecordKind, AggregatedRow, QueueRow)> = fresh
            .into_iter()
            .map(|r| rows_of(r, device_id, now))
            .collect();
        let mut accepted = 0u64;
        for chunk in rows.chunks(INSERT_CHUNK) {
            match conn.transaction(|conn| insert_all(conn, chunk)) {
                Ok(()) => accepted += chunk.len() as u64,
                Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                    tracing::debug!(
                        records = chunk.len(),
                        "a concurrent request stored some of these ids first; storing them one by one"
                    );
                    for row in chunk {
                        if insert_one(conn, row)? {
                            accepted += 1;
                        } else {
                            duplicates += 1;
                        }
                    }
                }
                Err(e) => return Err(StoreError::from(e)),
            }
        }
        Ok(SyncResponse {
            accepted,
            duplicates,
        })
    })
}

/// The two rows a new record becomes: its `aggregated_*` row and its queue row.
pub fn rows_of(
    record: SyncRecord,
    device_id: &str,
    now: NaiveDateTime,
) -> (RecordKind, AggregatedRow, QueueRow) {
    let payload = record.payload.to_string();
    let queued = QueueRow {
        id: record.id.clone(),
        kind: kind_name(record.kind).to_owned(),
        company_id: record.company_id.clone(),
        payload: payload.clone(),
        state: QUEUE_PENDING.to_owned(),
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        created_at: record.created_at.naive_utc(),
    };
    let row = AggregatedRow {
        id: record.id,
        device_id: device_id.to_owned(),
        company_id: record.company_id,
        payload,
        created_at: record.created_at.naive_utc(),
        received_at: now,
    };
    (record.kind, row, queued)
}

/// Writes a chunk of new records with one insert per table.
pub fn insert_all(
    conn: &mut DbConnection,
    chunk: &[(RecordKind, AggregatedRow, QueueRow)],
) -> QueryResult<()> {
    for kind in RecordKind::ALL {
        let rows: Vec<&AggregatedRow> = chunk
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, row, _)| row)
            .collect();
        if !rows.is_empty() {
            insert_aggregated(conn, kind, &rows)?;
        }
    }
    let queued: Vec<&QueueRow> = chunk.iter().map(|(_, _, q)| q).collect();
    crate::on_backend!(conn, |c| diesel::insert_into(cloud_sync_queue::table)
        .values(queued)
        .execute(c))?;
    Ok(())
}

/// Writes one record in its own savepoint; answers false when its id was stored meanwhile.
pub fn insert_one(
    conn: &mut DbConnection,
    (kind, row, queued): &(RecordKind, AggregatedRow, QueueRow),
) -> StoreResult<bool> {
    let inserted = conn.transaction(|conn| {
        insert_aggregated(conn, *kind, &[row])?;
        diesel::insert_into(cloud_sync_queue::table)
            .values(queued)
            .execute(conn)
    });
    match inserted {
        Ok(_) => Ok(true),
        Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(false),
        Err(e) => Err(StoreError::from(e)),
    }
}

/// The ids among `records` that are already stored: in the `aggregated_*` table of their
/// kind, or queued for the cloud under any kind.
pub fn stored_ids(
    conn: &mut DbConnection,
    records: &[SyncRecord],
) -> StoreResult<std::collections::HashSet<String>> {
    let mut taken = std::collections::HashSet::new();
    macro_rules! lookup {
        ($table:ident, $ids:expr) => {
            for chunk in $ids.chunks(LOOKUP_CHUNK) {
                let found: Vec<String> = $table::table
                    .filter($table::id.eq_any(chunk))
                    .select($table::id)
                    .load(conn)?;
                taken.extend(found);
            }
        };
    }
    for kind in RecordKind::ALL {
        let ids: Vec<&str> = records
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.id.as_str())
            .collect();
        if ids.is_empty() {
            continue;
        }
        match kind {
            RecordKind::Bottle => lookup!(aggregated_bottles, ids),
            RecordKind::Batch => lookup!(aggregated_batches, ids),
            RecordKind::Pallet => lookup!(aggregated_pallets, ids),
            RecordKind::BatchFixate => lookup!(aggregated_batch_fixations, ids),
        }
    }
    let all: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    lookup!(cloud_sync_queue, all);
    Ok(taken)
}

/// Inserts rows into the `aggregated_*` table of their kind, in one statement.
pub fn insert_aggregated(
    conn: &mut DbConnection,
    kind: RecordKind,
    rows: &[&AggregatedRow],
) -> QueryResult<usize> {
    macro_rules! insert_into {
        ($table:ident) => {{
            let values: Vec<_> = rows
                .iter()
                .map(|row| {
                    (
                        $table::id.eq(&row.id),
                        $table::device_id.eq(&row.device_id),
                        $table::company_id.eq(&row.company_id),
                        $table::payload.eq(&row.payload),
                        $table::created_at.eq(row.created_at),
                        $table::received_at.eq(row.received_at),
                    )
                })
                .collect();
            crate::on_backend!(conn, |c| diesel::insert_into($table::table)
                .values(&values)
                .execute(c))
        }};
    }
    match kind {
        RecordKind::Bottle => insert_into!(aggregated_bottles),
        RecordKind::Batch => insert_into!(aggregated_batches),
        RecordKind::Pallet => insert_into!(aggregated_pallets),
        RecordKind::BatchFixate => insert_into!(aggregated_batch_fixations),
    }
}

/// One row of an `aggregated_*` table; the four tables share the shape.
#[derive(Debug, Clone)]
pub struct AggregatedRow {
    id: String,
    device_id: String,
    company_id: String,
    payload: String,
    created_at: NaiveDateTime,
    received_at: NaiveDateTime,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = cloud_sync_queue)]
pub struct QueueRow {
    id: String,
    kind: String,
    company_id: String,
    payload: String,
    state: String,
    attempts: i64,
    next_attempt_at: NaiveDateTime,
    last_error: Option<String>,
    created_at: NaiveDateTime,
}

/// Rows written by one multi-row statement: 500 rows of the queue's 9 columns stay far below
/// the bind-parameter limits of SQLite (32,766) and PostgreSQL (65,535).
pub const INSERT_CHUNK: usize = 500;

/// Ids looked up by one `IN (…)` query.
pub const LOOKUP_CHUNK: usize = 500;
