//! Token revocations are stored, found, and pruned once past their expiry, on both databases.

use chrono::{Duration, Utc};
use diesel::prelude::*;
use server::config::DatabaseTarget;
use server::db::Db;
use server::tokens;

fn check(db: &Db) {
    let now = Utc::now();
    db.run_blocking(|conn| {
        tokens::revoke(conn, "expired-jti", "u1", now - Duration::hours(1))?;
        tokens::revoke(conn, "live-jti", "u1", now + Duration::hours(1))?;
        // Revoking twice is harmless.
        tokens::revoke(conn, "live-jti", "u1", now + Duration::hours(1))?;
        assert!(tokens::is_revoked(conn, "expired-jti")?);
        assert!(tokens::is_revoked(conn, "live-jti")?);
        assert!(!tokens::is_revoked(conn, "other")?);
        assert_eq!(tokens::prune(conn, now)?, 1);
        assert!(!tokens::is_revoked(conn, "expired-jti")?);
        assert!(
            tokens::is_revoked(conn, "live-jti")?,
            "a live revocation must survive pruning"
        );
        Ok(())
    })
    .unwrap();
}

#[test]
fn revocations_on_sqlite() {
    let dir = std::env::temp_dir().join(format!("revoke-{}", uuid::Uuid::new_v4()));
    let db = Db::open(DatabaseTarget::Sqlite(dir.join("factory.db"))).unwrap();
    check(&db);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn revocations_on_postgres() {
    let admin = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("revoke_{}", uuid::Uuid::new_v4().simple());
    let mut conn = diesel::PgConnection::establish(&admin)
        .unwrap_or_else(|e| panic!("PostgreSQL is required at {admin}: {e}"));
    diesel::sql_query(format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let db = Db::open(DatabaseTarget::Postgres(format!("{base}/{name}"))).unwrap();
    check(&db);
    drop(db);
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .unwrap();
}
