//! The database layer against hostile input and faults: SQLite syncs every commit to disk
//! (`synchronous = FULL`), PostgreSQL reuses the plans of prepared statements, and text
//! PostgreSQL cannot store (a NUL) is the client's 400, not a 500, should any get past the
//! checks where input enters.

use actix_web::http::StatusCode;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use protocol::sync::{RecordKind, SyncRecord};
use server::db::DbConnection;
use server::error::{ApiError, ErrorCode};

#[derive(QueryableByName)]
struct Synchronous {
    #[diesel(sql_type = Integer)]
    synchronous: i32,
}

/// SQLite's `PRAGMA synchronous` value for FULL.
const SYNCHRONOUS_FULL: i32 = 2;

#[test]
fn pooled_sqlite_connections_sync_every_commit() {
    let test = crate::common::ServerDb::sqlite();
    let mode = test
        .db
        .run_blocking(|conn| match conn {
            DbConnection::Sqlite(c) => Ok(diesel::sql_query("PRAGMA synchronous")
                .get_result::<Synchronous>(c)
                .map_err(ApiError::from)?
                .synchronous),
            DbConnection::Postgresql(_) => unreachable!("a SQLite test database"),
        })
        .unwrap();
    assert_eq!(mode, SYNCHRONOUS_FULL);
}

#[derive(QueryableByName)]
struct Plans {
    #[diesel(sql_type = BigInt)]
    generic_plans: i64,
}

/// PostgreSQL plans a statement the server runs again and again once, not at every run: the
/// login check of every request, run ten times on one pooled connection, is served from a
/// generic plan. Forcing a fresh plan at every run (`plan_cache_mode = force_custom_plan`, as
/// this server once did) spent a quarter of the database's CPU on planning at 1,000
/// commands/s, the foreign key checks of every inserted row among it.
#[test]
fn pooled_postgres_connections_reuse_the_plans_of_prepared_statements() {
    let test = crate::common::ServerDb::postgres();
    let generic = test
        .db
        .run_blocking(|conn| {
            for _ in 0..10 {
                server::store::users::find_for_token(conn, "nobody", "no-jti")?;
            }
            Ok(diesel::sql_query(
                "SELECT generic_plans FROM pg_prepared_statements \
                 WHERE statement LIKE '%revoked_tokens%'",
            )
            .get_result::<Plans>(conn)
            .map_err(ApiError::from)?
            .generic_plans)
        })
        .unwrap();
    assert!(generic > 0, "the login check was planned anew at every run");
}

#[test]
fn nul_text_refused_by_postgres_is_a_bad_request() {
    let test = crate::common::ServerDb::postgres();
    let record = SyncRecord {
        id: "nul-\u{0}-id".into(),
        kind: RecordKind::Bottle,
        company_id: "acme".into(),
        payload: serde_json::json!({"code": "x"}),
        created_at: "2030-01-01T00:00:00Z".parse().unwrap(),
    };
    let err = test
        .db
        .run_blocking(move |conn| Ok(server::store::sync::store(conn, "edge-1", vec![record])?))
        .unwrap_err();
    assert_eq!(err.status, StatusCode::BAD_REQUEST, "{err:?}");
    assert_eq!(err.code, ErrorCode::InvalidBody);
    assert!(err.message.contains("U+0000"), "{}", err.message);
}
