//! Device-group rows: lookups, members and the unique-name rule.

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use schema::schema::{device_group_members as members, device_groups as groups};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = groups)]
pub struct GroupRow {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

pub fn not_found() -> StoreError {
    StoreError::not_found(ErrorCode::GroupNotFound, "no such device group")
}

pub fn require(conn: &mut DbConnection, id: &str) -> StoreResult<GroupRow> {
    groups::table
        .find(id)
        .select(GroupRow::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(not_found)
}

pub fn member_ids(conn: &mut DbConnection, id: &str) -> StoreResult<Vec<String>> {
    Ok(members::table
        .filter(members::group_id.eq(id))
        .select(members::device_id)
        .order(members::device_id.asc())
        .load(conn)?)
}

pub fn name_taken(conn: &mut DbConnection, name: &str, except: Option<&str>) -> StoreResult<()> {
    let mut query = groups::table.filter(groups::name.eq(name)).into_boxed();
    if let Some(id) = except {
        query = query.filter(groups::id.ne(id.to_owned()));
    }
    let n: i64 = query.count().get_result(conn)?;
    if n > 0 {
        return Err(StoreError::conflict(
            ErrorCode::GroupNameTaken,
            format!("a group named {name} exists"),
        ));
    }
    Ok(())
}
