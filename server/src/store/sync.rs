//! Storing an edge's sync batch: its rows, idempotently, and their outbox entries.

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::store::db::{as_postgres, as_sqlite, DbConnection};
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
/// The same id twice in one body counts the second as a duplicate of the first. On
/// PostgreSQL the rest is one statement (`PG_STORE_BATCH`); should it meet a unique violation
/// (an id stored by another path meanwhile), the batch is stored by the general path below,
/// which both backends share and which counts every record exactly.
pub fn store(
    conn: &mut DbConnection,
    device_id: &str,
    records: Vec<SyncRecord>,
) -> StoreResult<SyncResponse> {
    let now = Utc::now().naive_utc();
    let mut duplicates = 0u64;
    let mut seen = std::collections::HashSet::with_capacity(records.len());
    let mut fresh: Vec<SyncRecord> = Vec::with_capacity(records.len());
    for record in records {
        if seen.insert(record.id.clone()) {
            fresh.push(record);
        } else {
            duplicates += 1;
        }
    }
    drop(seen);
    if let Some(pg) = as_postgres(conn) {
        match store_postgres(pg, device_id, &fresh, now) {
            Ok(accepted) => {
                return Ok(SyncResponse {
                    accepted,
                    duplicates: duplicates + fresh.len() as u64 - accepted,
                })
            }
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                tracing::debug!(
                    records = fresh.len(),
                    "an id of this batch was stored meanwhile; storing it by the general path"
                );
            }
            Err(e) => return Err(StoreError::from(e)),
        }
    }
    let stored = store_general(conn, device_id, fresh, now)?;
    Ok(SyncResponse {
        accepted: stored.accepted,
        duplicates: duplicates + stored.duplicates,
    })
}

/// The statement that stores a whole batch on PostgreSQL: the records arrive as five arrays
/// (one bind each, however many records); each id not already stored in its kind's table is
/// queued for the cloud unless the queue holds it (`ON CONFLICT DO NOTHING`, which also waits
/// for a concurrent request storing the same id, then skips it), and exactly the ids the
/// queue took get their `aggregated_*` row. Its one row is how many the queue took. One round
/// trip and one short plan for 1,000 records, where the general path's multi-row inserts bind
/// 9,000 parameters and make a round trip per statement.
const PG_STORE_BATCH: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamp[])
        AS t(id, kind, company_id, payload, created_at)
), queued AS (
    INSERT INTO cloud_sync_queue
        (id, kind, company_id, payload, state, attempts, next_attempt_at, last_error, created_at)
    SELECT i.id, i.kind, i.company_id, i.payload, $8, 0, $7, NULL, i.created_at
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM aggregated_bottles a WHERE i.kind = 'bottle' AND a.id = i.id)
      AND NOT EXISTS (SELECT 1 FROM aggregated_batches a WHERE i.kind = 'batch' AND a.id = i.id)
      AND NOT EXISTS (SELECT 1 FROM aggregated_pallets a WHERE i.kind = 'pallet' AND a.id = i.id)
      AND NOT EXISTS (SELECT 1 FROM aggregated_batch_fixations a
                      WHERE i.kind = 'batch_fixate' AND a.id = i.id)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, kind
), fresh AS (
    SELECT i.* FROM input i JOIN queued q ON q.id = i.id
), bottles AS (
    INSERT INTO aggregated_bottles (id, device_id, company_id, payload, created_at, received_at)
    SELECT id, $6, company_id, payload, created_at, $7 FROM fresh WHERE kind = 'bottle'
), batches AS (
    INSERT INTO aggregated_batches (id, device_id, company_id, payload, created_at, received_at)
    SELECT id, $6, company_id, payload, created_at, $7 FROM fresh WHERE kind = 'batch'
), pallets AS (
    INSERT INTO aggregated_pallets (id, device_id, company_id, payload, created_at, received_at)
    SELECT id, $6, company_id, payload, created_at, $7 FROM fresh WHERE kind = 'pallet'
), fixations AS (
    INSERT INTO aggregated_batch_fixations
        (id, device_id, company_id, payload, created_at, received_at)
    SELECT id, $6, company_id, payload, created_at, $7 FROM fresh WHERE kind = 'batch_fixate'
)
SELECT count(*) AS accepted FROM queued";

#[derive(QueryableByName)]
struct Accepted {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    accepted: i64,
}

/// Stores records whose ids are distinct on PostgreSQL (`PG_STORE_BATCH`, one statement, so
/// one transaction); answers how many were new.
fn store_postgres(
    conn: &mut diesel::PgConnection,
    device_id: &str,
    records: &[SyncRecord],
    now: NaiveDateTime,
) -> QueryResult<u64> {
    use diesel::sql_types::{Array, Text, Timestamp};
    if records.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let kinds: Vec<&str> = records.iter().map(|r| kind_name(r.kind)).collect();
    let companies: Vec<&str> = records.iter().map(|r| r.company_id.as_str()).collect();
    let payloads: Vec<String> = records.iter().map(|r| r.payload.to_string()).collect();
    let created: Vec<NaiveDateTime> = records.iter().map(|r| r.created_at.naive_utc()).collect();
    let row: Accepted = diesel::sql_query(PG_STORE_BATCH)
        .bind::<Array<Text>, _>(&ids)
        .bind::<Array<Text>, _>(&kinds)
        .bind::<Array<Text>, _>(&companies)
        .bind::<Array<Text>, _>(&payloads)
        .bind::<Array<Timestamp>, _>(&created)
        .bind::<Text, _>(device_id)
        .bind::<Timestamp, _>(now)
        .bind::<Text, _>(QUEUE_PENDING)
        .get_result(conn)?;
    Ok(row.accepted as u64)
}

/// Stores records whose ids are distinct, in one transaction, on either backend.
///
/// A batch costs a few statements, not a few per record: the ids already stored are looked up
/// together, and the new records are written by multi-row inserts, one savepoint per chunk.
/// A concurrent request may store one of the ids between the lookup and the insert; that
/// chunk's savepoint then rolls back, and its records are written one at a time, so the late
/// ones count as duplicates and the rest are kept.
pub fn store_general(
    conn: &mut DbConnection,
    device_id: &str,
    mut fresh: Vec<SyncRecord>,
    now: NaiveDateTime,
) -> StoreResult<SyncResponse> {
    crate::store::db::write_transaction(conn, |conn| {
        let mut duplicates = 0u64;
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
    let mut queued: &[&QueueRow] = &chunk.iter().map(|(_, _, q)| q).collect::<Vec<_>>();
    if let Some(c) = as_sqlite(conn) {
        let mut fixed = queued.chunks_exact(SQLITE_STATEMENT_ROWS);
        for rows in &mut fixed {
            // Owned rows: a statement is kept only when its values borrow nothing.
            let rows: [QueueRow; SQLITE_STATEMENT_ROWS] = std::array::from_fn(|i| rows[i].clone());
            diesel::insert_into(cloud_sync_queue::table)
                .values(rows)
                .execute(c)?;
        }
        queued = fixed.remainder();
    }
    if !queued.is_empty() {
        crate::on_backend!(conn, |c| diesel::insert_into(cloud_sync_queue::table)
            .values(queued.to_vec())
            .execute(c))?;
    }
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
            macro_rules! values {
                ($row:expr) => {{
                    let row: &AggregatedRow = $row;
                    (
                        $table::id.eq(&row.id),
                        $table::device_id.eq(&row.device_id),
                        $table::company_id.eq(&row.company_id),
                        $table::payload.eq(&row.payload),
                        $table::created_at.eq(row.created_at),
                        $table::received_at.eq(row.received_at),
                    )
                }};
            }
            let mut written = 0;
            let mut rest = rows;
            if let Some(c) = as_sqlite(conn) {
                let mut fixed = rows.chunks_exact(SQLITE_STATEMENT_ROWS);
                for chunk in &mut fixed {
                    // Owned values: a statement is kept only when its values borrow nothing.
                    let chunk: [_; SQLITE_STATEMENT_ROWS] = std::array::from_fn(|i| {
                        let row = chunk[i];
                        (
                            $table::id.eq(row.id.clone()),
                            $table::device_id.eq(row.device_id.clone()),
                            $table::company_id.eq(row.company_id.clone()),
                            $table::payload.eq(row.payload.clone()),
                            $table::created_at.eq(row.created_at),
                            $table::received_at.eq(row.received_at),
                        )
                    });
                    written += diesel::insert_into($table::table)
                        .values(chunk)
                        .execute(c)?;
                }
                rest = fixed.remainder();
            }
            if !rest.is_empty() {
                let rest: Vec<_> = rest.iter().map(|row| values!(row)).collect();
                written += crate::on_backend!(conn, |c| diesel::insert_into($table::table)
                    .values(&rest)
                    .execute(c))?;
            }
            Ok(written)
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

/// Rows per multi-row insert on SQLite while a whole statement's worth is left: a statement of
/// one fixed shape is prepared once per connection and kept (diesel keeps only statements
/// whose text never changes), where one of any other size is prepared anew, and preparing an
/// insert of hundreds of rows costs about as much as running it. The rest of a chunk goes in
/// one statement of its own size.
pub const SQLITE_STATEMENT_ROWS: usize = 100;

/// Ids looked up by one `IN (…)` query.
pub const LOOKUP_CHUNK: usize = 500;
