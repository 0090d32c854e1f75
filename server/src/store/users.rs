//! User rows: lookups by id and name, counting, inserting, the first admin's bootstrap, and
//! the last-admin rule.

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{Page, Role, UserInfo};
use schema::schema::users;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: String,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub disabled: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub token_version: i64,
}

impl User {
    pub fn role(&self) -> StoreResult<Role> {
        Role::parse(&self.role)
            .ok_or_else(|| StoreError::internal(format!("bad role {}", self.role)))
    }

    pub fn to_api(&self) -> StoreResult<UserInfo> {
        Ok(UserInfo {
            id: self.id.clone(),
            username: self.username.clone(),
            role: self.role()?,
            disabled: self.disabled,
            created_at: self.created_at.and_utc(),
            updated_at: self.updated_at.and_utc(),
        })
    }
}

pub fn find_by_id(conn: &mut DbConnection, id: &str) -> StoreResult<Option<User>> {
    Ok(users::table
        .find(id)
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

/// The user `id` and whether the token `jti` was revoked, in one statement: the login check
/// every request makes is one round trip (and one transaction), not two. Read from the
/// database each time, never cached, so a revocation or a disabled user made by any replica
/// is refused by every replica at once.
pub fn find_for_token(
    conn: &mut DbConnection,
    id: &str,
    jti: &str,
) -> StoreResult<Option<(User, bool)>> {
    use schema::schema::revoked_tokens;
    let revoked = diesel::dsl::exists(revoked_tokens::table.filter(revoked_tokens::jti.eq(jti)));
    Ok(users::table
        .find(id)
        .select((User::as_select(), revoked))
        .first(conn)
        .optional()?)
}

pub fn find_by_username(conn: &mut DbConnection, username: &str) -> StoreResult<Option<User>> {
    Ok(users::table
        .filter(users::username.eq(username))
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

pub fn count(conn: &mut DbConnection) -> StoreResult<i64> {
    Ok(users::table.count().get_result(conn)?)
}

pub fn require(conn: &mut DbConnection, id: &str) -> StoreResult<User> {
    find_by_id(conn, id)?
        .ok_or_else(|| StoreError::not_found(ErrorCode::UserNotFound, "no such user"))
}

/// Inserts a user with a password hash computed beforehand (on the hashing threads, outside
/// the transaction).
pub fn insert(
    conn: &mut DbConnection,
    username: &str,
    password_hash: String,
    role: Role,
) -> StoreResult<User> {
    let now = Utc::now().naive_utc();
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        username: username.to_owned(),
        password_hash,
        role: role.as_str().to_owned(),
        disabled: false,
        created_at: now,
        updated_at: now,
        token_version: 0,
    };
    if find_by_username(conn, username)?.is_some() {
        return Err(StoreError::conflict(
            ErrorCode::UsernameTaken,
            format!("username {username} is taken"),
        ));
    }
    diesel::insert_into(users::table)
        .values(&user)
        .execute(conn)?;
    Ok(user)
}

/// Enabled admins other than `except`; the last one may not be demoted, disabled or deleted.
pub fn other_enabled_admins(conn: &mut DbConnection, except: &str) -> StoreResult<i64> {
    Ok(users::table
        .filter(users::role.eq(Role::Admin.as_str()))
        .filter(users::disabled.eq(false))
        .filter(users::id.ne(except))
        .count()
        .get_result(conn)?)
}

/// Sets a user's password hash, revoking every token issued before.
pub fn set_password(conn: &mut DbConnection, id: &str, hash: String) -> StoreResult<User> {
    diesel::update(users::table.find(id))
        .set((
            users::password_hash.eq(hash),
            users::token_version.eq(users::token_version + 1),
            users::updated_at.eq(Utc::now().naive_utc()),
        ))
        .execute(conn)?;
    require(conn, id)
}

/// One page of users by name.
pub fn list(conn: &mut DbConnection, limit: i64, offset: i64) -> StoreResult<Page<UserInfo>> {
    let total = users::table.count().get_result(conn)?;
    let rows: Vec<User> = users::table
        .order(users::username.asc())
        .limit(limit)
        .offset(offset)
        .select(User::as_select())
        .load(conn)?;
    let items = rows
        .iter()
        .map(User::to_api)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { items, total })
}

/// Changes a user's role, disabled flag or password hash (`None` keeps each), revoking every
/// token issued before; the last enabled admin must stay an enabled admin.
pub fn update(
    conn: &mut DbConnection,
    id: &str,
    role: Option<Role>,
    disabled: Option<bool>,
    hash: Option<String>,
) -> StoreResult<User> {
    let user = require(conn, id)?;
    let stays_admin = role.map_or(user.role == Role::Admin.as_str(), |r| r == Role::Admin);
    let stays_enabled = !disabled.unwrap_or(user.disabled);
    let is_enabled_admin = user.role == Role::Admin.as_str() && !user.disabled;
    if is_enabled_admin && !(stays_admin && stays_enabled) && other_enabled_admins(conn, id)? == 0 {
        return Err(StoreError::conflict(
            ErrorCode::LastAdmin,
            "the last enabled admin must stay an enabled admin",
        ));
    }
    diesel::update(users::table.find(id))
        .set((
            users::role.eq(role.map_or(user.role.clone(), |r| r.as_str().to_owned())),
            users::disabled.eq(disabled.unwrap_or(user.disabled)),
            users::password_hash.eq(hash.unwrap_or(user.password_hash.clone())),
            users::token_version.eq(users::token_version + 1),
            users::updated_at.eq(Utc::now().naive_utc()),
        ))
        .execute(conn)?;
    require(conn, id)
}

/// Deletes a user; the last enabled admin cannot be deleted.
pub fn delete(conn: &mut DbConnection, id: &str) -> StoreResult<()> {
    let user = require(conn, id)?;
    if user.role == Role::Admin.as_str() && !user.disabled && other_enabled_admins(conn, id)? == 0 {
        return Err(StoreError::conflict(
            ErrorCode::LastAdmin,
            "the last enabled admin cannot be deleted",
        ));
    }
    diesel::delete(users::table.find(id)).execute(conn)?;
    Ok(())
}

/// Creates the first admin with its audit row if there is no user yet. The count is asked
/// again inside the write transaction, since another server process may have bootstrapped
/// since the caller's count.
pub fn bootstrap(
    conn: &mut DbConnection,
    username: &str,
    password_hash: String,
) -> StoreResult<()> {
    crate::store::db::write_transaction(conn, |conn| {
        if count(conn)? == 0 {
            insert(conn, username, password_hash, Role::Admin)?;
            crate::store::audit::record(
                conn,
                &crate::store::audit::AuditEntry::new("user.bootstrap", "success")
                    .actor(Some("system".into()), None)
                    .target(Some(username.into())),
            )?;
        }
        Ok(())
    })
}
