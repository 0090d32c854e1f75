//! Token revocations are stored, found, and pruned once past their expiry, on both databases.

use chrono::{Duration, Utc};
use server::db::Db;
use server::store::tokens;

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
    check(&crate::common::ServerDb::sqlite().db);
}

#[test]
fn revocations_on_postgres() {
    check(&crate::common::ServerDb::postgres().db);
}
