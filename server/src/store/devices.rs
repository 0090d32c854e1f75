//! Device rows: lookups, the filtered list, and the presence and status columns.

use crate::store::audit::AuditEntry;
use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{Device, DeviceStatus, Page, UpdateDeviceRequest};
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

/// What a device presents when it asks for a token, besides its id.
#[derive(Debug, Clone, Default)]
pub struct Enrollment {
    pub name: Option<String>,
    pub company_id: Option<String>,
    pub production_line_id: Option<String>,
    pub version: Option<String>,
}

/// Stores a device's new token id, creating the row if `auto_enroll` allows it, and records
/// the audit row in the same write transaction, so two enrollments of one new device queue
/// for the lock instead of both inserting. Answers whether the row was created.
pub fn enroll(
    conn: &mut DbConnection,
    id: &str,
    jti: &str,
    enrollment: &Enrollment,
    auto_enroll: bool,
    source: Option<String>,
) -> StoreResult<bool> {
    crate::store::db::write_transaction(conn, |conn| {
        let now = Utc::now().naive_utc();
        let created = match find(conn, id)? {
            Some(_) => {
                diesel::update(devices::table.find(id))
                    .set((devices::token_id.eq(Some(jti)), devices::updated_at.eq(now)))
                    .execute(conn)?;
                if let Some(v) = &enrollment.version {
                    diesel::update(devices::table.find(id))
                        .set(devices::version.eq(Some(v)))
                        .execute(conn)?;
                }
                false
            }
            None if auto_enroll => {
                let row = DeviceRow {
                    id: id.to_owned(),
                    name: enrollment.name.clone().unwrap_or_else(|| id.to_owned()),
                    company_id: enrollment.company_id.clone(),
                    production_line_id: enrollment.production_line_id.clone(),
                    status: DeviceStatus::Offline.as_str().to_owned(),
                    version: enrollment.version.clone(),
                    last_seen: None,
                    remote_addr: None,
                    token_id: Some(jti.to_owned()),
                    created_at: now,
                    updated_at: now,
                    connection_mode: None,
                    boot_id: None,
                    run_id: None,
                    metrics: None,
                    status_at: None,
                };
                diesel::insert_into(devices::table)
                    .values(&row)
                    .execute(conn)?;
                true
            }
            None => {
                return Err(StoreError::not_found(
                    ErrorCode::DeviceNotFound,
                    "unknown device and auto-enrollment is off; register the device first",
                ))
            }
        };
        let entry = AuditEntry::new(
            "device.token",
            if created {
                "success: enrolled"
            } else {
                "success: rotated"
            },
        )
        .actor(Some(format!("device:{id}")), None)
        .target(Some(id.to_owned()))
        .params(serde_json::json!({ "jti": jti }))
        .source(source);
        crate::store::audit::record(conn, &entry)?;
        Ok(created)
    })
}

/// Registers a device that has not enrolled yet: a row without a token, in the groups named.
/// Runs inside the caller's write transaction (`audited`), so a second registration of the
/// same id waits for the first and then meets its row.
pub fn register(
    conn: &mut DbConnection,
    request: &protocol::rest::RegisterDeviceRequest,
) -> StoreResult<DeviceRow> {
    if find(conn, &request.id)?.is_some() {
        return Err(StoreError::conflict(
            ErrorCode::DeviceExists,
            format!("device {} is registered already", request.id),
        ));
    }
    for group_id in &request.group_ids {
        crate::store::groups::require(conn, group_id)?;
    }
    let now = Utc::now().naive_utc();
    let row = DeviceRow {
        id: request.id.clone(),
        name: request.name.clone().unwrap_or_else(|| request.id.clone()),
        company_id: request.company_id.clone(),
        production_line_id: request.production_line_id.clone(),
        status: DeviceStatus::Offline.as_str().to_owned(),
        version: None,
        last_seen: None,
        remote_addr: None,
        token_id: None,
        created_at: now,
        updated_at: now,
        connection_mode: None,
        boot_id: None,
        run_id: None,
        metrics: None,
        status_at: None,
    };
    diesel::insert_into(devices::table)
        .values(&row)
        .execute(conn)?;
    for group_id in &request.group_ids {
        crate::store::groups::add_members(conn, group_id, std::slice::from_ref(&request.id))?;
    }
    require(conn, &request.id)
}

/// Renames or moves a device and answers the stored row, or the device's 404. A field the
/// change leaves out keeps its stored value.
pub fn update(
    conn: &mut DbConnection,
    id: &str,
    change: UpdateDeviceRequest,
) -> StoreResult<DeviceRow> {
    let row = require(conn, id)?;
    diesel::update(devices::table.find(id))
        .set((
            devices::name.eq(change.name.unwrap_or(row.name)),
            devices::company_id.eq(change.company_id.unwrap_or(row.company_id)),
            devices::production_line_id
                .eq(change.production_line_id.unwrap_or(row.production_line_id)),
            devices::updated_at.eq(Utc::now().naive_utc()),
        ))
        .execute(conn)?;
    require(conn, id)
}

/// Deletes a device row; its commands, logs and events go with it by the schema's cascades.
pub fn delete(conn: &mut DbConnection, id: &str) -> StoreResult<()> {
    if diesel::delete(devices::table.find(id)).execute(conn)? == 0 {
        return Err(not_found());
    }
    Ok(())
}

/// The company a device writes records for, `None` if the device or its company is missing.
pub fn company_of(conn: &mut DbConnection, id: &str) -> StoreResult<Option<String>> {
    Ok(devices::table
        .find(id)
        .select(devices::company_id)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}
