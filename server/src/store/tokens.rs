//! Revoked user tokens: written at logout, checked on every request, pruned once the token
//! would have expired anyway. Device tokens are revoked differently: a device row names its one
//! current token (`devices.token_id`), so issuing a new one revokes the old.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use schema::schema::revoked_tokens;

use crate::store::db::DbConnection;
use crate::store::error::StoreResult;

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = revoked_tokens)]
pub struct RevokedToken {
    jti: String,
    subject: String,
    expires_at: NaiveDateTime,
    revoked_at: NaiveDateTime,
}

pub fn revoke(
    conn: &mut DbConnection,
    jti: &str,
    subject: &str,
    expires_at: DateTime<Utc>,
) -> StoreResult<()> {
    if is_revoked(conn, jti)? {
        return Ok(());
    }
    diesel::insert_into(revoked_tokens::table)
        .values(&RevokedToken {
            jti: jti.to_owned(),
            subject: subject.to_owned(),
            expires_at: expires_at.naive_utc(),
            revoked_at: Utc::now().naive_utc(),
        })
        .execute(conn)?;
    Ok(())
}

pub fn is_revoked(conn: &mut DbConnection, jti: &str) -> StoreResult<bool> {
    let found: i64 = revoked_tokens::table
        .filter(revoked_tokens::jti.eq(jti))
        .count()
        .get_result(conn)?;
    Ok(found > 0)
}

/// Deletes revocations of tokens that have expired; an expired token is refused anyway.
pub fn prune(conn: &mut DbConnection, now: DateTime<Utc>) -> StoreResult<usize> {
    Ok(
        diesel::delete(
            revoked_tokens::table.filter(revoked_tokens::expires_at.lt(now.naive_utc())),
        )
        .execute(conn)?,
    )
}
