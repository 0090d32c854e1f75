//! Which replica holds which device's socket, with a lease (`device_presence`).
//!
//! A replica writes a row when a device connects to it (with the device's ONLINE, in one
//! transaction), renews the leases of all its rows by heartbeat, and deletes its row when the
//! device leaves. A row whose lease has passed belongs to a replica that died; `expire` deletes
//! it and marks the device OFFLINE. A starting replica writes only its own rows and expired ones
//! (`start`), never another live replica's: that replica's devices are still connected.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use protocol::rest::DeviceStatus;
use schema::schema::{device_presence, devices};

use crate::on_backend;
use crate::store::db::{write_transaction, DbConnection};
use crate::store::devices as device_rows;
use crate::store::error::{StoreError, StoreResult};

/// The device connected to `replica`: its row says so until `expires_at`, and the device is
/// ONLINE, both in one transaction (so a starting replica never sees one without the other).
pub fn claim(
    conn: &mut DbConnection,
    device_id: &str,
    replica: &str,
    remote_addr: Option<&str>,
    expires_at: DateTime<Utc>,
) -> StoreResult<()> {
    write_transaction(conn, |conn| {
        upsert(conn, device_id, replica, expires_at)?;
        device_rows::mark_online(conn, device_id, remote_addr)
    })
}

fn upsert(
    conn: &mut DbConnection,
    device_id: &str,
    replica: &str,
    expires_at: DateTime<Utc>,
) -> StoreResult<()> {
    let until = expires_at.naive_utc();
    let row = (
        device_presence::device_id.eq(device_id),
        device_presence::replica_id.eq(replica),
        device_presence::expires_at.eq(until),
    );
    // Both dialects have `ON CONFLICT … DO UPDATE`; diesel builds it per concrete backend.
    on_backend!(conn, |c| diesel::insert_into(device_presence::table)
        .values(row)
        .on_conflict(device_presence::device_id)
        .do_update()
        .set((
            device_presence::replica_id.eq(replica),
            device_presence::expires_at.eq(until),
        ))
        .execute(c))?;
    Ok(())
}

/// The device left `replica`. Only while the row is still this replica's does the device go
/// OFFLINE: when it has moved to another replica already, that one holds it ONLINE. Answers
/// whether it was marked OFFLINE.
pub fn release(conn: &mut DbConnection, device_id: &str, replica: &str) -> StoreResult<bool> {
    write_transaction(conn, |conn| {
        let deleted = diesel::delete(
            device_presence::table
                .filter(device_presence::device_id.eq(device_id))
                .filter(device_presence::replica_id.eq(replica)),
        )
        .execute(conn)?;
        if deleted == 0 {
            return Ok(false);
        }
        device_rows::mark_offline(conn, device_id)?;
        Ok(true)
    })
}

/// The heartbeat: every row of `replica` is held until `expires_at`. Answers how many rows it
/// renewed, which the replica compares with the devices it holds to write the missing ones.
pub fn renew(
    conn: &mut DbConnection,
    replica: &str,
    expires_at: DateTime<Utc>,
) -> StoreResult<usize> {
    Ok(
        diesel::update(device_presence::table.filter(device_presence::replica_id.eq(replica)))
            .set(device_presence::expires_at.eq(expires_at.naive_utc()))
            .execute(conn)?,
    )
}

/// The replica other than `me` whose unexpired lease holds `device_id`, if any.
pub fn holder_other_than(
    conn: &mut DbConnection,
    device_id: &str,
    me: &str,
    now: DateTime<Utc>,
) -> StoreResult<Option<String>> {
    Ok(device_presence::table
        .filter(device_presence::device_id.eq(device_id))
        .filter(device_presence::replica_id.ne(me))
        .filter(device_presence::expires_at.gt(now.naive_utc()))
        .select(device_presence::replica_id)
        .first(conn)
        .optional()?)
}

/// Deletes the rows whose lease passed before `now` (their replica died) and marks their
/// devices OFFLINE; answers those devices.
pub fn expire(conn: &mut DbConnection, now: DateTime<Utc>) -> StoreResult<Vec<String>> {
    write_transaction(conn, |conn| {
        let now = now.naive_utc();
        let stale: Vec<String> = device_presence::table
            .filter(device_presence::expires_at.le(now))
            .select(device_presence::device_id)
            .load(conn)?;
        if stale.is_empty() {
            return Ok(stale);
        }
        diesel::delete(
            device_presence::table
                .filter(device_presence::device_id.eq_any(&stale))
                .filter(device_presence::expires_at.le(now)),
        )
        .execute(conn)?;
        for device in &stale {
            device_rows::mark_offline(conn, device)?;
        }
        Ok::<_, StoreError>(stale)
    })
}

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = diesel::sql_types::Text)]
    replica_id: String,
}

/// The replicas other than `me` that hold devices but whose LISTEN connection PostgreSQL no
/// longer lists (`leases::session_name`): killed, or cut off from the database. Their leases
/// would hold the devices ONLINE until they pass. Nothing on SQLite, where there is one process.
pub fn silent_holders(conn: &mut DbConnection, me: &str) -> StoreResult<Vec<String>> {
    let Some(pg) = crate::store::db::as_postgres(conn) else {
        return Ok(Vec::new());
    };
    let rows: Vec<Holder> = diesel::sql_query(
        "SELECT DISTINCT p.replica_id FROM device_presence p \
         WHERE p.replica_id <> $1 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
         WHERE a.application_name = ($2 || p.replica_id) AND a.datname = current_database())",
    )
    .bind::<diesel::sql_types::Text, _>(me)
    .bind::<diesel::sql_types::Text, _>(crate::store::leases::session_name(""))
    .load(pg)?;
    Ok(rows.into_iter().map(|r| r.replica_id).collect())
}

/// Deletes every row of `replicas` (dead ones) and marks their devices OFFLINE, at once rather
/// than when the leases pass; answers those devices. A device that moved to a live replica
/// meanwhile has that replica's row, which stays.
pub fn expire_replicas(conn: &mut DbConnection, replicas: &[String]) -> StoreResult<Vec<String>> {
    if crate::store::db::as_postgres(conn).is_none() {
        return Ok(Vec::new());
    }
    write_transaction(conn, |conn| {
        // The rows deleted, not those read first: a device that moved meanwhile is not one.
        let gone: Vec<String> = match crate::store::db::as_postgres(conn) {
            Some(pg) => diesel::delete(
                device_presence::table.filter(device_presence::replica_id.eq_any(replicas)),
            )
            .returning(device_presence::device_id)
            .get_results(pg)?,
            None => Vec::new(),
        };
        for device in &gone {
            device_rows::mark_offline(conn, device)?;
        }
        Ok::<_, StoreError>(gone)
    })
}

/// What a replica does at start instead of marking every device OFFLINE: deletes its own rows
/// (a replica id given again after a crash) and expired ones, then marks OFFLINE the devices
/// left ONLINE that no live row holds. `sole`: no other process can use this database (SQLite),
/// so every row is a previous run's. Answers how many devices went OFFLINE.
pub fn start(
    conn: &mut DbConnection,
    replica: &str,
    now: DateTime<Utc>,
    sole: bool,
) -> StoreResult<usize> {
    write_transaction(conn, |conn| {
        if sole {
            diesel::delete(device_presence::table).execute(conn)?;
        } else {
            diesel::delete(
                device_presence::table.filter(
                    device_presence::replica_id
                        .eq(replica)
                        .or(device_presence::expires_at.le(now.naive_utc())),
                ),
            )
            .execute(conn)?;
        }
        let held = device_presence::table.select(device_presence::device_id);
        Ok::<_, StoreError>(
            diesel::update(
                devices::table
                    .filter(devices::status.ne(DeviceStatus::Offline.as_str()))
                    .filter(diesel::dsl::not(devices::id.eq_any(held))),
            )
            .set(devices::status.eq(DeviceStatus::Offline.as_str()))
            .execute(conn)?,
        )
    })
}
