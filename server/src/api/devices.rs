//! The device routes: enrollment (`POST /api/v1/devices/{id}/token`), list, get, update and
//! delete. The rows and their queries live in `store::devices`.

use actix_web::{web, HttpRequest, HttpResponse};
use protocol::rest::{
    DeviceTokenResponse, Envelope, Page, RegisterDeviceRequest, UpdateDeviceRequest,
};
use serde::Deserialize;

use crate::actors::registry::ListConnected;
use crate::api::audit::{audited, by_user};
use crate::api::paging::Paging;
use crate::auth::{self, Authorized, DeleteDevices, ManageDevices, RegisterDevices, ViewDevices};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::refusals;
use crate::state::AppState;
use crate::store::audit::AuditEntry;
use crate::store::devices::*;

/// Device ids appear in URLs, file names and logs, so they are kept to a safe alphabet.
pub fn validate_device_id(id: &str) -> ApiResult<()> {
    if protocol::device::is_valid_device_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            protocol::device::DEVICE_ID_RULE,
        ))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
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
    let source = crate::auth::source_of(&req);
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
    .await
    .inspect_err(|_| crate::metrics::enrollment_failed("locked"))?;
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
        let (source_lock, device_lock) = tokio::join!(by_source.fail(), by_device.fail());
        entries.extend(source_lock.as_ref().map(refusals::lockout_entry));
        entries.extend(device_lock.as_ref().map(refusals::lockout_entry));
        crate::metrics::enrollment_failed("key");
        refusals::record_all(&state.db, entries).await?;
        return Err(ApiError::unauthorized(
            ErrorCode::InvalidEnrollmentKey,
            "missing or wrong X-Enrollment-Key",
        ));
    }
    tokio::join!(by_device.succeed(false), by_source.succeed(false));
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
    let enrollment = Enrollment {
        name: query.name,
        company_id: query.company_id,
        production_line_id: query.production_line_id,
        version: query.version,
    };
    let created = state
        .db
        .run(move |conn| Ok(enroll(conn, &id, &jti, &enrollment, auto_enroll, source)?))
        .await?;
    // A socket opened with the previous token must not outlive it.
    state
        .registry
        .do_send(crate::actors::registry::TokenRotated {
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
    #[serde(flatten)]
    pub filter: DeviceFilter,
}

/// `GET /api/v1/devices`.
pub async fn list_devices(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
    paging: Paging,
) -> ApiResult<HttpResponse> {
    let ListQuery { filter } = query.into_inner();
    let (limit, offset) = paging.checked()?;
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
        .run(move |conn| Ok(list(conn, &filter, limit, offset)?))
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
    let row = state.db.run(move |conn| Ok(require(conn, &id)?)).await?;
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
        check_name(name)?;
    }
    let optional = [&change.company_id, &change.production_line_id];
    for value in optional.into_iter().flatten().flatten() {
        check_label(
            value,
            "companyId and productionLineId must be 1-256 characters or null",
        )?;
    }
    let entry = by_user(&user, &req, "device.update")
        .target(Some(id.clone()))
        .params(serde_json::to_value(&change).unwrap_or_default());
    let row = audited(&state.db, entry, move |conn| Ok(update(conn, &id, change)?)).await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(row.to_api())))
}

/// A device's display name: not blank, at most 256 bytes.
fn check_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 256 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "name must be 1-256 characters",
        ));
    }
    Ok(())
}

/// A company or production-line id: 1-256 bytes; `message` names the fields.
fn check_label(value: &str, message: &'static str) -> ApiResult<()> {
    if value.is_empty() || value.len() > 256 {
        return Err(ApiError::bad_request(ErrorCode::InvalidParameter, message));
    }
    Ok(())
}

/// What a registration must satisfy before it is stored; the admin command line checks the
/// same.
pub fn check_registration(request: &RegisterDeviceRequest) -> ApiResult<()> {
    if !protocol::device::is_valid_device_id(&request.id) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            protocol::device::DEVICE_ID_RULE,
        ));
    }
    if let Some(name) = &request.name {
        check_name(name)?;
    }
    let optional = [&request.company_id, &request.production_line_id];
    for value in optional.into_iter().flatten() {
        check_label(
            value,
            "companyId and productionLineId must be 1-256 characters",
        )?;
    }
    if request.group_ids.len() > 100 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "at most 100 groupIds",
        ));
    }
    Ok(())
}

/// `POST /api/v1/devices` (ADMIN): registers a device before it is switched on; it may then
/// enroll with the enrollment key while auto-enrollment is off. 409 `device_exists`.
pub async fn register_device(
    user: Authorized<RegisterDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<RegisterDeviceRequest>,
) -> ApiResult<HttpResponse> {
    let request = body.into_inner();
    check_registration(&request)?;
    let entry = by_user(&user, &req, "device.register")
        .target(Some(request.id.clone()))
        .params(serde_json::to_value(&request).unwrap_or_default());
    let row = audited(&state.db, entry, move |conn| {
        Ok(crate::store::devices::register(conn, &request)?)
    })
    .await?;
    Ok(HttpResponse::Created().json(Envelope::ok(row.to_api())))
}

/// `DELETE /api/v1/devices/{id}`: forgets a device with its commands, logs and events. Its
/// token stops working with its row, and a connected session is closed. An admin's, as in the
/// seed (terminal CRUD).
pub async fn delete_device(
    user: Authorized<DeleteDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let entry = by_user(&user, &req, "device.delete").target(Some(id.clone()));
    let target = id.clone();
    audited(&state.db, entry, move |conn| Ok(delete(conn, &target)?)).await?;
    // No token matches an empty id, so any open session of the device is closed.
    state
        .registry
        .do_send(crate::actors::registry::TokenRotated {
            device_id: id.clone(),
            token_id: String::new(),
        });
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({"deleted": id}))))
}
