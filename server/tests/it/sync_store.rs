//! `sync::store` against a real PostgreSQL, where two writers really interleave (SQLite's
//! `BEGIN IMMEDIATE` lets one writer in at a time): an id that another transaction stores
//! while the batch is written becomes a duplicate, and the rest of the batch is kept, both
//! when the other writer stores only the record's row (the one-statement path meets a unique
//! violation and the general path takes over) and when it is a concurrent sync (the queue's
//! `ON CONFLICT DO NOTHING` waits for it). On both backends, what is stored already, in its
//! kind's table or queued under any kind, is a duplicate.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use protocol::sync::{RecordKind, SyncRecord};
use server::error::ApiError;

use crate::common::ServerDb;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(db: &server::db::Db, sql: &'static str) -> i64 {
    db.run_blocking(move |conn| {
        Ok(diesel::sql_query(sql)
            .get_result::<Count>(conn)
            .map_err(ApiError::from)?
            .n)
    })
    .unwrap()
}

fn bottle(id: &str) -> SyncRecord {
    record(id, RecordKind::Bottle)
}

fn record(id: &str, kind: RecordKind) -> SyncRecord {
    SyncRecord {
        id: id.to_owned(),
        kind,
        company_id: "acme".into(),
        payload: serde_json::json!({"code": id}),
        created_at: "2030-01-01T00:00:00Z".parse().unwrap(),
    }
}

/// Another writer's uncommitted bottle `race-1`, with no cloud queue row.
const OTHER_BOTTLE: &[&str] = &[CONCURRENT_SYNC[1]];

#[test]
fn an_id_stored_meanwhile_by_another_transaction_is_a_duplicate_and_the_rest_is_kept() {
    let test = ServerDb::postgres();
    // The batch's lookup cannot see the uncommitted row, so its multi-row insert waits on it.
    assert_eq!(race_with(&test, OTHER_BOTTLE, true), (3, 1));
    assert_eq!(
        count(&test.db, "SELECT count(*) AS n FROM aggregated_bottles"),
        4
    );
    assert_eq!(
        count(
            &test.db,
            "SELECT count(*) AS n FROM aggregated_bottles WHERE device_id = 'edge-1'"
        ),
        3,
        "race-1 stays the other writer's"
    );
    assert_eq!(
        count(&test.db, "SELECT count(*) AS n FROM cloud_sync_queue"),
        3
    );
}

/// Another writer holds `statements` in an open transaction while a batch of `race-0..3` is
/// stored, then commits (or rolls back); answers the batch's (accepted, duplicates).
fn race_with(test: &ServerDb, statements: &'static [&'static str], commit_it: bool) -> (u64, u64) {
    let (held, is_held) = mpsc::channel();
    let (finish, may_finish) = mpsc::channel::<()>();
    let other = {
        let db = test.db.clone();
        std::thread::spawn(move || {
            db.run_blocking(move |conn| {
                let done = conn.transaction(|conn| {
                    for sql in statements {
                        diesel::sql_query(*sql).execute(conn)?;
                    }
                    held.send(()).unwrap();
                    may_finish.recv().unwrap();
                    if commit_it {
                        Ok(())
                    } else {
                        Err(diesel::result::Error::RollbackTransaction)
                    }
                });
                match done {
                    Ok(()) | Err(diesel::result::Error::RollbackTransaction) => Ok(()),
                    Err(e) => Err(ApiError::from(e)),
                }
            })
        })
    };
    is_held.recv().unwrap();
    let batch = {
        let db = test.db.clone();
        std::thread::spawn(move || {
            let records = (0..4).map(|i| bottle(&format!("race-{i}"))).collect();
            db.run_blocking(move |conn| Ok(server::store::sync::store(conn, "edge-1", records)?))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &test.db,
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    ) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the batch never waited on the other writer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    finish.send(()).unwrap();
    other.join().unwrap().unwrap();
    let stored = batch.join().unwrap().unwrap();
    (stored.accepted, stored.duplicates)
}

const CONCURRENT_SYNC: &[&str] = &[
    "INSERT INTO cloud_sync_queue (id, kind, company_id, payload, state, attempts, \
     next_attempt_at, created_at) VALUES ('race-1', 'bottle', 'acme', '{}', 'PENDING', 0, now(), now())",
    "INSERT INTO aggregated_bottles (id, device_id, company_id, payload, created_at, received_at) \
     VALUES ('race-1', 'edge-other', 'acme', '{}', now(), now())",
];

#[test]
fn a_concurrent_sync_of_the_same_id_that_commits_makes_it_a_duplicate() {
    let test = ServerDb::postgres();
    assert_eq!(race_with(&test, CONCURRENT_SYNC, true), (3, 1));
    assert_eq!(
        count(
            &test.db,
            "SELECT count(*) AS n FROM aggregated_bottles WHERE device_id = 'edge-1'"
        ),
        3,
        "race-1 stays the other writer's"
    );
    assert_eq!(
        count(&test.db, "SELECT count(*) AS n FROM cloud_sync_queue"),
        4
    );
}

#[test]
fn a_concurrent_sync_of_the_same_id_that_rolls_back_leaves_it_to_the_batch() {
    let test = ServerDb::postgres();
    assert_eq!(race_with(&test, CONCURRENT_SYNC, false), (4, 0));
    assert_eq!(
        count(
            &test.db,
            "SELECT count(*) AS n FROM aggregated_bottles WHERE device_id = 'edge-1'"
        ),
        4
    );
    assert_eq!(
        count(&test.db, "SELECT count(*) AS n FROM cloud_sync_queue"),
        4
    );
}

on_both_backends!(
    what_is_stored_already_is_a_duplicate_whatever_its_kind,
    a_full_batch_of_mixed_kinds_is_stored_whole
);

/// 1,000 records of every kind, more than one fixed-size statement of each and a remainder:
/// every one stored once, with its queue row, and the same batch again is all duplicates.
fn a_full_batch_of_mixed_kinds_is_stored_whole(test: ServerDb) {
    let kinds = RecordKind::ALL;
    let records: Vec<SyncRecord> = (0..1000)
        .map(|i| record(&format!("m-{i}"), kinds[i % 7 % 4]))
        .collect();
    let again = records.clone();
    let stored = test
        .db
        .run_blocking(move |conn| Ok(server::store::sync::store(conn, "edge-1", records)?))
        .unwrap();
    assert_eq!((stored.accepted, stored.duplicates), (1000, 0));
    let stored = test
        .db
        .run_blocking(move |conn| Ok(server::store::sync::store(conn, "edge-1", again)?))
        .unwrap();
    assert_eq!((stored.accepted, stored.duplicates), (0, 1000));
    assert_eq!(
        count(&test.db, "SELECT count(*) AS n FROM cloud_sync_queue"),
        1000
    );
    let per_kind = count(&test.db, "SELECT count(*) AS n FROM aggregated_bottles")
        + count(&test.db, "SELECT count(*) AS n FROM aggregated_batches")
        + count(&test.db, "SELECT count(*) AS n FROM aggregated_pallets")
        + count(
            &test.db,
            "SELECT count(*) AS n FROM aggregated_batch_fixations",
        );
    assert_eq!(per_kind, 1000);
    assert_eq!(
        count(
            &test.db,
            "SELECT count(*) AS n FROM cloud_sync_queue q JOIN aggregated_pallets p ON p.id = q.id \
             WHERE q.kind = 'pallet' AND p.company_id = 'acme' AND p.device_id = 'edge-1'"
        ),
        count(&test.db, "SELECT count(*) AS n FROM aggregated_pallets")
    );
}

fn what_is_stored_already_is_a_duplicate_whatever_its_kind(test: ServerDb) {
    let store = |records: Vec<SyncRecord>| {
        let stored = test
            .db
            .run_blocking(move |conn| Ok(server::store::sync::store(conn, "edge-1", records)?))
            .unwrap();
        (stored.accepted, stored.duplicates)
    };
    let first = vec![
        record("p-1", RecordKind::Pallet),
        record("x-1", RecordKind::Batch),
        record("f-1", RecordKind::BatchFixate),
    ];
    assert_eq!(store(first), (3, 0));
    // A pallet's row with no queue row (as if its queue row were gone): still a duplicate.
    test.db
        .run_blocking(|conn| {
            diesel::sql_query("DELETE FROM cloud_sync_queue WHERE id = 'p-1'")
                .execute(conn)
                .map_err(ApiError::from)
        })
        .unwrap();
    let again = vec![
        record("p-1", RecordKind::Pallet),
        // Queued as a batch: the same id as another kind is a duplicate too.
        record("x-1", RecordKind::Bottle),
        record("f-1", RecordKind::BatchFixate),
        record("new-1", RecordKind::Bottle),
        record("new-1", RecordKind::Bottle),
        record("new-2", RecordKind::Pallet),
    ];
    assert_eq!(store(again), (2, 4));
    assert_eq!(
        count(&test.db, "SELECT count(*) AS n FROM cloud_sync_queue"),
        4
    );
    assert_eq!(
        count(&test.db, "SELECT count(*) AS n FROM aggregated_pallets"),
        2
    );
    assert_eq!(
        count(&test.db, "SELECT count(*) AS n FROM aggregated_bottles"),
        1
    );
    assert_eq!(store(Vec::new()), (0, 0));
}
