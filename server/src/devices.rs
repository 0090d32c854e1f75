//! Devices: the model, its queries, enrollment and the device routes.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{
    Device, DeviceStatus, DeviceTokenResponse, Envelope, Page, UpdateDeviceRequest,
};
use schema::schema::devices;
use serde::Deserialize;

use crate::audit::{self, audited, AuditEntry};
use crate::auth::{self, Authorized, ManageDevices, ViewDevices};
use crate::db::DbConnection;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::refusals;
use crate::registry::ListConnected;
use crate::state::AppState;

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

pub fn find(conn: &mut DbConnection, id: &str) -> ApiResult<Option<DeviceRow>> {
    Ok(devices::table
        .find(id)
        .select(DeviceRow::as_select())
        .first(conn)
        .optional()?)
}

/// The 404 of every route that names a device that is not there.
pub fn not_found() -> ApiError {
    ApiError::not_found(ErrorCode::DeviceNotFound, "no such device")
}

/// The device, or the 404 that says it is not there.
pub fn require(conn: &mut DbConnection, id: &str) -> ApiResult<DeviceRow> {
    find(conn, id)?.ok_or_else(not_found)
}

/// Which of `ids` name an enrolled device, asked in chunks so a long list stays within the
/// backends' bound-parameter limits.
pub fn known_ids(
    conn: &mut DbConnection,
    ids: &[String],
) -> ApiResult<std::collections::HashSet<String>> {
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
) -> ApiResult<Page<Device>> {
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
pub fn mark_all_offline(conn: &mut DbConnection) -> ApiResult<usize> {
    Ok(
        diesel::update(devices::table.filter(devices::status.ne(DeviceStatus::Offline.as_str())))
            .set(devices::status.eq(DeviceStatus::Offline.as_str()))
            .execute(conn)?,
    )
}

pub fn mark_online(conn: &mut DbConnection, id: &str, remote_addr: Option<&str>) -> ApiResult<()> {
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

pub fn mark_offline(conn: &mut DbConnection, id: &str) -> ApiResult<()> {
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
pub fn record_status(conn: &mut DbConnection, id: &str, update: &StatusUpdate) -> ApiResult<()> {
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

/// Device ids appear in URLs, file names and logs, so they are kept to a safe alphabet.
pub fn validate_device_id(id: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "device id must be 1-128 characters of letters, digits, '-', '_' or '.', not starting with '.'",
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollQuery {
    pub name: Option<String>,
    pub company_id: Option<String>,
    pub production_line_id: Option<String>,
    pub version: Option<String>,
}

pub const ENROLLMENT_KEY_HEADER: &str = "X-Enrollment-Key";

/// `POST /api/v1/devices/{id}/token`: a device presents the enrollment key and gets a new
/// device JWT. The new token's id replaces the old one on the device row, which revokes the
/// old token (a socket on it is closed).
pub async fn issue_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<EnrollQuery>,
) -> ApiResult<HttpResponse> {
    let device_id = path.into_inner();
    validate_device_id(&device_id)?;
    let source = audit::source_of(&req);
    let Some(expected) = state.config.enrollment_key.as_deref() else {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            ErrorCode::EnrollmentDisabled,
            "enrollment is disabled: the server has no enrollment key configured",
        ));
    };
    let source_key = source.clone().unwrap_or_default();
    let limits = &state.limits;
    let mut slots = refusals::admit(
        &[
            (&limits.enroll_by_source, source_key.as_str()),
            (&limits.enroll_by_device, device_id.as_str()),
        ],
        "too many failed enrollments from this address or for this device; try again later",
    )
    .await?;
    let (Some(by_device), Some(by_source)) = (slots.pop(), slots.pop()) else {
        return Err(ApiError::internal("enrollment admission lost a slot"));
    };
    let presented = req
        .headers()
        .get(ENROLLMENT_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !auth::secrets_equal(presented, expected) {
        let mut entries = vec![
            AuditEntry::new("device.token", "failure: invalid enrollment key")
                .actor(Some(format!("device:{device_id}")), None)
                .target(Some(device_id.clone()))
                .source(source),
        ];
        entries.extend(by_source.fail().as_ref().map(refusals::lockout_entry));
        entries.extend(by_device.fail().as_ref().map(refusals::lockout_entry));
        refusals::record_all(&state.db, entries).await?;
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidEnrollmentKey,
            "missing or wrong X-Enrollment-Key",
        ));
    }
    by_device.succeed(false);
    by_source.succeed(false);
    let query = query.into_inner();
    for (field, value) in [
        ("name", &query.name),
        ("companyId", &query.company_id),
        ("productionLineId", &query.production_line_id),
        ("version", &query.version),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > 256) {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidParameter,
                format!("{field} is longer than 256 characters"),
            ));
        }
    }
    let issued = state
        .jwt
        .issue_device(&device_id, state.config.device_token_ttl_secs)?;
    let auto_enroll = state.config.allow_auto_enrollment;
    let (id, jti) = (device_id.clone(), issued.jti.clone());
    let created = state
        .db
        .run(move |conn| {
            crate::db::write_transaction(conn, |conn| {
                let now = Utc::now().naive_utc();
                let created =
                    match find(conn, &id)? {
                        Some(_) => {
                            diesel::update(devices::table.find(&id))
                                .set((
                                    devices::token_id.eq(Some(&jti)),
                                    devices::updated_at.eq(now),
                                ))
                                .execute(conn)?;
                            if let Some(v) = &query.version {
                                diesel::update(devices::table.find(&id))
                                    .set(devices::version.eq(Some(v)))
                                    .execute(conn)?;
                            }
                            false
                        }
                        None if auto_enroll => {
                            let row = DeviceRow {
                                id: id.clone(),
                                name: query.name.clone().unwrap_or_else(|| id.clone()),
                                company_id: query.company_id.clone(),
                                production_line_id: query.production_line_id.clone(),
                                status: DeviceStatus::Offline.as_str().to_owned(),
                                version: query.version.clone(),
                                last_seen: None,
                                remote_addr: None,
                                token_id: Some(jti.clone()),
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
                        None => return Err(ApiError::not_found(
                            ErrorCode::DeviceNotFound,
                            "unknown device and auto-enrollment is off; register the device first",
                        )),
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
                .target(Some(id.clone()))
                .params(serde_json::json!({"jti": jti}))
                .source(source);
                audit::record(conn, &entry)?;
                Ok(created)
            })
        })
        .await?;
    // A socket opened with the previous token must not outlive it.
    state.registry.do_send(crate::registry::TokenRotated {
        device_id: device_id.clone(),
        token_id: issued.jti.clone(),
    });
    tracing::info!(device = %device_id, created, "device token issued");
    Ok(HttpResponse::Ok().json(Envelope::ok(DeviceTokenResponse {
        token: issued.token,
        device_id,
        expires_at: issued.expires_at,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    #[serde(flatten)]
    pub filter: DeviceFilter,
}

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// Checks paging parameters and applies the defaults.
pub fn paging(limit: Option<i64>, offset: Option<i64>) -> ApiResult<(i64, i64)> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
    let offset = offset.unwrap_or(0);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            format!("limit must be between 1 and {MAX_PAGE_SIZE}"),
        ));
    }
    if offset < 0 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "offset must not be negative",
        ));
    }
    Ok((limit, offset))
}

/// `GET /api/v1/devices`.
pub async fn list_devices(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    let ListQuery {
        limit,
        offset,
        filter,
    } = query.into_inner();
    let (limit, offset) = paging(limit, offset)?;
    if let Some(status) = &filter.status {
        if !matches!(status.as_str(), "ONLINE" | "OFFLINE" | "DISABLED") {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidParameter,
                format!("status must be ONLINE, OFFLINE or DISABLED, not `{status}`"),
            ));
        }
    }
    if filter.q.as_ref().is_some_and(|q| q.len() > 128) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "q is longer than 128 characters",
        ));
    }
    let page = state
        .db
        .run(move |conn| list(conn, &filter, limit, offset))
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

/// `GET /api/v1/devices/{id}`.
pub async fn get_device(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let row = state.db.run(move |conn| require(conn, &id)).await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(row.to_api())))
}

/// `GET /api/v1/devices/connected`: the sessions this server holds now.
pub async fn connected_devices(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    let sessions = state
        .registry
        .send(ListConnected)
        .await
        .map_err(ApiError::internal)?;
    let total = sessions.len() as i64;
    Ok(HttpResponse::Ok().json(Envelope::ok(Page {
        items: sessions,
        total,
    })))
}

/// `PATCH /api/v1/devices/{id}`: rename or move a device.
pub async fn update_device(
    user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<UpdateDeviceRequest>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let change = body.into_inner();
    if let Some(name) = &change.name {
        if name.trim().is_empty() || name.len() > 256 {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidParameter,
                "name must be 1-256 characters",
            ));
        }
    }
    let optional = [&change.company_id, &change.production_line_id];
    for value in optional.into_iter().flatten().flatten() {
        if value.is_empty() || value.len() > 256 {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidParameter,
                "companyId and productionLineId must be 1-256 characters or null",
            ));
        }
    }
    let entry = AuditEntry::new("device.update", "success")
        .actor(Some(user.username.clone()), Some(user.role))
        .target(Some(id.clone()))
        .params(serde_json::to_value(&change).unwrap_or_default())
        .source(audit::source_of(&req));
    let row = audited(&state.db, entry, move |conn| {
        let row = require(conn, &id)?;
        diesel::update(devices::table.find(&id))
            .set((
                devices::name.eq(change.name.unwrap_or(row.name)),
                devices::company_id.eq(change.company_id.unwrap_or(row.company_id)),
                devices::production_line_id
                    .eq(change.production_line_id.unwrap_or(row.production_line_id)),
                devices::updated_at.eq(Utc::now().naive_utc()),
            ))
            .execute(conn)?;
        require(conn, &id)
    })
    .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(row.to_api())))
}

/// `DELETE /api/v1/devices/{id}`: forgets a device with its commands, logs and events. Its
/// token stops working with its row, and a connected session is closed.
pub async fn delete_device(
    user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let entry = AuditEntry::new("device.delete", "success")
        .actor(Some(user.username.clone()), Some(user.role))
        .target(Some(id.clone()))
        .source(audit::source_of(&req));
    let target = id.clone();
    audited(&state.db, entry, move |conn| {
        if diesel::delete(devices::table.find(&target)).execute(conn)? == 0 {
            return Err(not_found());
        }
        Ok(())
    })
    .await?;
    // No token matches an empty id, so any open session of the device is closed.
    state.registry.do_send(crate::registry::TokenRotated {
        device_id: id.clone(),
        token_id: String::new(),
    });
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({"deleted": id}))))
}
