//! Device-group rows: lookups, members and the unique-name rule.

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{DeviceGroup, Page};
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

/// A group as the API shows it: its member count, and its members' ids when asked.
pub fn to_api(
    conn: &mut DbConnection,
    row: GroupRow,
    with_members: bool,
) -> StoreResult<DeviceGroup> {
    let member_count = members::table
        .filter(members::group_id.eq(&row.id))
        .count()
        .get_result(conn)?;
    let device_ids = if with_members {
        Some(member_ids(conn, &row.id)?)
    } else {
        None
    };
    Ok(DeviceGroup {
        id: row.id,
        name: row.name,
        description: row.description,
        member_count,
        created_at: row.created_at.and_utc(),
        updated_at: row.updated_at.and_utc(),
        device_ids,
    })
}

/// Stores a new group, refusing a name another group has.
pub fn insert(
    conn: &mut DbConnection,
    id: String,
    name: String,
    description: Option<String>,
) -> StoreResult<DeviceGroup> {
    name_taken(conn, &name, None)?;
    let now = Utc::now().naive_utc();
    let row = GroupRow {
        id,
        name,
        description,
        created_at: now,
        updated_at: now,
    };
    diesel::insert_into(groups::table)
        .values(&row)
        .execute(conn)?;
    to_api(conn, row, true)
}

/// One page of groups by name, without their members' ids.
pub fn list(conn: &mut DbConnection, limit: i64, offset: i64) -> StoreResult<Page<DeviceGroup>> {
    let total = groups::table.count().get_result(conn)?;
    let rows: Vec<GroupRow> = groups::table
        .order(groups::name.asc())
        .limit(limit)
        .offset(offset)
        .select(GroupRow::as_select())
        .load(conn)?;
    let items = rows
        .into_iter()
        .map(|r| to_api(conn, r, false))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Page { items, total })
}

/// Changes a group's name and description; `None` keeps what is stored.
pub fn update(
    conn: &mut DbConnection,
    id: &str,
    name: Option<String>,
    description: Option<String>,
) -> StoreResult<DeviceGroup> {
    let row = require(conn, id)?;
    if let Some(name) = &name {
        name_taken(conn, name, Some(id))?;
    }
    diesel::update(groups::table.find(id))
        .set((
            groups::name.eq(name.unwrap_or(row.name)),
            groups::description.eq(description.or(row.description)),
            groups::updated_at.eq(Utc::now().naive_utc()),
        ))
        .execute(conn)?;
    let row = require(conn, id)?;
    to_api(conn, row, true)
}

/// Deletes a group and its memberships; the devices stay.
pub fn delete(conn: &mut DbConnection, id: &str) -> StoreResult<()> {
    require(conn, id)?;
    diesel::delete(members::table.filter(members::group_id.eq(id))).execute(conn)?;
    diesel::delete(groups::table.find(id)).execute(conn)?;
    Ok(())
}

/// Adds devices to a group; ones already in stay once. All must exist, or nothing is added.
pub fn add_members(
    conn: &mut DbConnection,
    id: &str,
    device_ids: &[String],
) -> StoreResult<DeviceGroup> {
    let row = require(conn, id)?;
    let mut wanted = device_ids.to_vec();
    wanted.sort();
    wanted.dedup();
    let existing = crate::store::devices::known_ids(conn, &wanted)?;
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|d| !existing.contains(*d))
        .take(10)
        .collect();
    if !missing.is_empty() {
        return Err(StoreError::bad_request(
            ErrorCode::DeviceNotFound,
            format!(
                "unknown devices: {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let already: Vec<String> = member_ids(conn, id)?;
    for device_id in wanted.iter().filter(|d| !already.contains(d)) {
        diesel::insert_into(members::table)
            .values((members::group_id.eq(id), members::device_id.eq(device_id)))
            .execute(conn)?;
    }
    to_api(conn, row, true)
}

/// Removes devices from a group.
pub fn remove_members(
    conn: &mut DbConnection,
    id: &str,
    device_ids: &[String],
) -> StoreResult<DeviceGroup> {
    let row = require(conn, id)?;
    for chunk in device_ids.chunks(500) {
        diesel::delete(
            members::table
                .filter(members::group_id.eq(id))
                .filter(members::device_id.eq_any(chunk)),
        )
        .execute(conn)?;
    }
    to_api(conn, row, true)
}

/// One group with its members' ids.
pub fn view(conn: &mut DbConnection, id: &str) -> StoreResult<DeviceGroup> {
    let row = require(conn, id)?;
    to_api(conn, row, true)
}
