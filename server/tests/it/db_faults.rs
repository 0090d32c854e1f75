//! The database layer against hostile input and faults: SQLite syncs every commit to disk
//! (`synchronous = FULL`), and text PostgreSQL cannot store (a NUL) is the client's 400, not a
//! 500, should any get past the checks where input enters.

use actix_web::http::StatusCode;
use diesel::prelude::*;
use diesel::sql_types::Integer;
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
