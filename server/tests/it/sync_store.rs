//! `sync::store` against a real PostgreSQL, where two writers really interleave (SQLite's
//! `BEGIN IMMEDIATE` lets one writer in at a time): an id that another transaction stores
//! between the batch's lookup and its insert becomes a duplicate, and the rest of the batch is
//! kept. And the PostgreSQL setting that keeps the batch lookup fast.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use protocol::sync::{RecordKind, SyncRecord};
use server::error::ApiError;

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
    SyncRecord {
        id: id.to_owned(),
        kind: RecordKind::Bottle,
        company_id: "acme".into(),
        payload: serde_json::json!({"code": id}),
        created_at: "2030-01-01T00:00:00Z".parse().unwrap(),
    }
}

#[test]
fn an_id_stored_meanwhile_by_another_transaction_is_a_duplicate_and_the_rest_is_kept() {
    let test = crate::common::ServerDb::postgres();
    let (held, is_held) = mpsc::channel();
    let (commit, may_commit) = mpsc::channel::<()>();

    // Another writer inserts `race-1` and holds its transaction open.
    let other = {
        let db = test.db.clone();
        std::thread::spawn(move || {
            db.run_blocking(move |conn| {
                conn.transaction(|conn| {
                    diesel::sql_query(
                        "INSERT INTO aggregated_bottles \
                         (id, device_id, company_id, payload, created_at, received_at) \
                         VALUES ('race-1', 'edge-other', 'acme', '{}', now(), now())",
                    )
                    .execute(conn)?;
                    held.send(()).unwrap();
                    may_commit.recv().unwrap();
                    diesel::QueryResult::Ok(())
                })
                .map_err(ApiError::from)
            })
        })
    };
    is_held.recv().unwrap();

    // The batch's lookup cannot see the uncommitted row, so its multi-row insert waits on it.
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
    commit.send(()).unwrap();
    other.join().unwrap().unwrap();

    let stored = batch.join().unwrap().unwrap();
    assert_eq!((stored.accepted, stored.duplicates), (3, 1));
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

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    plan_cache_mode: String,
}

/// The batch lookup's `id = ANY($1)` is slow under a generic plan (see `db.rs`), so pooled
/// PostgreSQL connections plan every statement with its parameters.
#[test]
fn pooled_postgres_connections_plan_each_statement_with_its_parameters() {
    let test = crate::common::ServerDb::postgres();
    let mode = test
        .db
        .run_blocking(|conn| {
            Ok(diesel::sql_query("SHOW plan_cache_mode")
                .get_result::<Setting>(conn)
                .map_err(ApiError::from)?
                .plan_cache_mode)
        })
        .unwrap();
    assert_eq!(mode, "force_custom_plan");
}
