//! User rows: lookups by id and name, counting, inserting, and the last-admin rule.

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{Role, UserInfo};
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
