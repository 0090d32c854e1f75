//! Device rows: lookups, the filtered list, and the presence and status columns.

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{Device, DeviceStatus, Page};
use schema::schema::devices;
use serde::Deserialize;

diesel::define_sql_function! {
    /// SQL `lower(text)`, which both backends have.
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

diesel::define_sql_function! {
    /// SQL `coalesce(a, b)`, which both backends have.
    fn coalesce(
        a: diesel::sql_types::Nullable<diesel::sql_types::Text>,
        b: diesel::sql_types::Nullable<diesel::sql_types::Text>,
    ) -> diesel::sql_types::Nullable<diesel::sql_types::Text>;
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = devices)]
pub struct DeviceRow {
    pub id: String,
    pub name: String,
    pub company_id: Option<String>,
    pub production_line_id: Option<String>,
    pub status: String,
    pub version: Option<String>,
    pub last_seen: Option<NaiveDateTime>,
    pub remote_addr: Option<String>,
    pub token_id: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub connection_mode: Option<String>,
    pub boot_id: Option<String>,
    pub run_id: Option<String>,
    pub metrics: Option<String>,
    pub status_at: Option<NaiveDateTime>,
}

impl DeviceRow {
    pub fn to_api(&self) -> Device {
        Device {
            id: self.id.clone(),
            name: self.name.clone(),
            company_id: self.company_id.clone(),
            production_line_id: self.production_line_id.clone(),
            status: match self.status.as_str() {
                "ONLINE" => DeviceStatus::Online,
                "DISABLED" => DeviceStatus::Disabled,
                _ => DeviceStatus::Offline,
            },
            version: self.version.clone(),
            last_seen: self.last_seen.map(|t| t.and_utc()),
            remote_addr: self.remote_addr.clone(),
            created_at: self.created_at.and_utc(),
            connection_mode: self.connection_mode.clone(),
            boot_id: self.boot_id.clone(),
            run_id: self.run_id.clone(),
            metrics: self
                .metrics
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
            status_at: self.status_at.map(|t| t.and_utc()),
        }
    }
}

pub fn find(conn: &mut DbConnection, id: &str) -> StoreResult<Option<DeviceRow>> {
    Ok(devices::table
        .find(id)
        .select(DeviceRow::as_select())
        .first(conn)
        .optional()?)
}

/// The 404 of every route that names a device that is not there.
pub fn not_found() -> StoreError {
    StoreError::not_found(ErrorCode::DeviceNotFound, "no such device")
}

/// The device, or the 404 that says it is not there.
pub fn require(conn: &mut DbConnection, id: &str) -> StoreResult<DeviceRow> {
    find(conn, id)?.ok_or_else(not_found)
}

/// Which of `ids` name an enrolled device, asked in chunks so a long list stays within the
/// backends' bound-parameter limits.
pub fn known_ids(
    conn: &mut DbConnection,
    ids: &[String],
) -> StoreResult<std::collections::HashSet<String>> {
    let mut found = std::collections::HashSet::new();
    for chunk in ids.chunks(500) {
        let known: Vec<String> = devices::table
            .filter(devices::id.eq_any(chunk))
            .select(devices::id)
            .load(conn)?;
        found.extend(known);
    }
    Ok(found)
}

/// Filters of the device list; every one given must hold.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceFilter {
    pub status: Option<String>,
    pub group_id: Option<String>,
    pub production_line_id: Option<String>,
    pub company_id: Option<String>,
    /// Case-insensitive substring of the id or the name.
    pub q: Option<String>,
}

/// Escapes `%`, `_` and the escape character so user text matches literally in a LIKE.
pub fn like_pattern(text: &str) -> String {
    let escaped = text
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

pub fn list(
    conn: &mut DbConnection,
    filter: &DeviceFilter,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Device>> {
    use diesel::dsl::exists;
    use schema::schema::device_group_members as members;
    let filtered = || {
        let mut query = devices::table.into_boxed();
        if let Some(status) = &filter.status {
            query = query.filter(devices::status.eq(status.clone()));
        }
        if let Some(line) = &filter.production_line_id {
            query = query.filter(devices::production_line_id.eq(line.clone()));
        }
        if let Some(company) = &filter.company_id {
            query = query.filter(devices::company_id.eq(company.clone()));
        }
        if let Some(group) = &filter.group_id {
            query = query.filter(exists(
                members::table
                    .filter(members::group_id.eq(group.clone()))
                    .filter(members::device_id.eq(devices::id)),
            ));
        }
        if let Some(q) = filter.q.as_deref().filter(|q| !q.is_empty()) {
            let pattern = like_pattern(q);
            query = query.filter(
                lower(devices::id)
                    .like(pattern.clone())
                    .escape('\\')
                    .or(lower(devices::name).like(pattern).escape('\\')),
            );
        }
        query
    };
    let total = filtered().count().get_result(conn)?;
    let rows: Vec<DeviceRow> = filtered()
        .order(devices::id.asc())
        .limit(limit)
        .offset(offset)
        .select(DeviceRow::as_select())
        .load(conn)?;
    Ok(Page {
        items: rows.iter().map(DeviceRow::to_api).collect(),
        total,
    })
}

/// Sessions do not survive a restart, so at start every device is offline until it connects.
pub fn mark_all_offline(conn: &mut DbConnection) -> StoreResult<usize> {
    Ok(
        diesel::update(devices::table.filter(devices::status.ne(DeviceStatus::Offline.as_str())))
            .set(devices::status.eq(DeviceStatus::Offline.as_str()))
            .execute(conn)?,
    )
}

pub fn mark_online(
    conn: &mut DbConnection,
    id: &str,
    remote_addr: Option<&str>,
) -> StoreResult<()> {
    let now = Utc::now().naive_utc();
    diesel::update(devices::table.find(id))
        .set((
            devices::status.eq(DeviceStatus::Online.as_str()),
            devices::last_seen.eq(Some(now)),
            devices::remote_addr.eq(remote_addr),
            devices::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn mark_offline(conn: &mut DbConnection, id: &str) -> StoreResult<()> {
    let now = Utc::now().naive_utc();
    diesel::update(
        devices::table
            .find(id)
            .filter(devices::status.ne(DeviceStatus::Offline.as_str())),
    )
    .set((
        devices::status.eq(DeviceStatus::Offline.as_str()),
        devices::last_seen.eq(Some(now)),
        devices::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(())
}

/// What a device's `status` frame says about it.
#[derive(Debug, Clone, Default)]
pub struct StatusUpdate {
    /// ONLINE, or DISABLED while the device has production turned off.
    pub status: Option<DeviceStatus>,
    pub version: Option<String>,
    pub boot_id: Option<String>,
    pub run_id: Option<String>,
    pub connection_mode: Option<String>,
    pub metrics: Option<String>,
}

/// Stores a device's latest status. A status frame from a session that has since closed must
/// not turn an OFFLINE device back on, so the status word is only set on a connected device.
pub fn record_status(conn: &mut DbConnection, id: &str, update: &StatusUpdate) -> StoreResult<()> {
    let now = Utc::now().naive_utc();
    diesel::update(devices::table.find(id))
        .set((
            devices::last_seen.eq(Some(now)),
            devices::status_at.eq(Some(now)),
            devices::metrics.eq(update.metrics.as_deref()),
            devices::connection_mode.eq(update.connection_mode.as_deref()),
            devices::boot_id.eq(update.boot_id.as_deref()),
            devices::run_id.eq(update.run_id.as_deref()),
            // A status without a version keeps the one stored.
            devices::version.eq(coalesce(update.version.as_deref(), devices::version)),
        ))
        .execute(conn)?;
    if let Some(status) = update.status {
        diesel::update(
            devices::table
                .find(id)
                .filter(devices::status.ne(DeviceStatus::Offline.as_str())),
        )
        .set(devices::status.eq(status.as_str()))
        .execute(conn)?;
    }
    Ok(())
}
