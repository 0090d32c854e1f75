//! Device groups: their routes, and dispatch to every member.

use actix_web::{web, HttpRequest, HttpResponse};
use protocol::rest::{Envelope, GroupRequest, MembersRequest};

use crate::api::audit::{audited, by_user};
use crate::api::commands::{fan_out, parse_dispatch, MAX_BULK_TARGETS};
use crate::api::paging::Paging;
use crate::auth::{Authorized, DispatchCommands, ManageDevices, ViewDevices};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use crate::store::audit::AuditEntry;
use crate::store::groups::*;

fn validate_name(name: &str) -> ApiResult<()> {
    if name.trim().is_empty() || name.len() > 128 {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "name must be 1-128 characters",
        ));
    }
    Ok(())
}

fn entry(
    user: &crate::auth::AuthUser,
    req: &HttpRequest,
    action: &str,
    target: &str,
) -> AuditEntry {
    by_user(user, req, action).target(Some(target.to_owned()))
}

/// `POST /api/v1/device-groups`.
pub async fn create_group(
    user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<GroupRequest>,
) -> ApiResult<HttpResponse> {
    let GroupRequest { name, description } = body.into_inner();
    let name =
        name.ok_or_else(|| ApiError::bad_request(ErrorCode::InvalidBody, "name is required"))?;
    validate_name(&name)?;
    let id = uuid::Uuid::new_v4().to_string();
    let e = entry(&user, &req, "group.create", &id).params(serde_json::json!({"name": name}));
    let group = audited(&state.db, e, move |conn| {
        Ok(insert(conn, id, name, description)?)
    })
    .await?;
    Ok(HttpResponse::Created().json(Envelope::ok(group)))
}

/// `GET /api/v1/device-groups`.
pub async fn list_groups(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    paging: Paging,
) -> ApiResult<HttpResponse> {
    let (limit, offset) = paging.checked()?;
    let page = state
        .db
        .run(move |conn| Ok(list(conn, limit, offset)?))
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

/// `GET /api/v1/device-groups/{id}`: with its members' ids.
pub async fn get_group(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let group = state.db.run(move |conn| Ok(view(conn, &id)?)).await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(group)))
}

/// `PUT /api/v1/device-groups/{id}`: name and description.
pub async fn update_group(
    user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<GroupRequest>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let change = body.into_inner();
    if let Some(name) = &change.name {
        validate_name(name)?;
    }
    let e =
        entry(&user, &req, "group.update", &id).params(serde_json::json!({"name": change.name}));
    let group = audited(&state.db, e, move |conn| {
        Ok(update(conn, &id, change.name, change.description)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(group)))
}

/// `DELETE /api/v1/device-groups/{id}`: the devices stay.
pub async fn delete_group(
    user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let e = entry(&user, &req, "group.delete", &id);
    let target = id.clone();
    audited(&state.db, e, move |conn| Ok(delete(conn, &target)?)).await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({"deleted": id}))))
}

fn check_members(request: &MembersRequest) -> ApiResult<()> {
    if request.device_ids.is_empty() || request.device_ids.len() > MAX_BULK_TARGETS {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            format!("deviceIds must list 1 to {MAX_BULK_TARGETS} devices"),
        ));
    }
    Ok(())
}

/// `POST /api/v1/device-groups/{id}/members`: adds devices; ones already in stay once. All
/// must exist, or nothing is added.
pub async fn add_members(
    user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<MembersRequest>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let request = body.into_inner();
    check_members(&request)?;
    let e = entry(&user, &req, "group.members.add", &id)
        .params(serde_json::json!({"count": request.device_ids.len()}));
    let group = audited(&state.db, e, move |conn| {
        Ok(crate::store::groups::add_members(
            conn,
            &id,
            &request.device_ids,
        )?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(group)))
}

/// `DELETE /api/v1/device-groups/{id}/members`.
pub async fn remove_members(
    user: Authorized<ManageDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<MembersRequest>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let request = body.into_inner();
    check_members(&request)?;
    let e = entry(&user, &req, "group.members.remove", &id)
        .params(serde_json::json!({"count": request.device_ids.len()}));
    let group = audited(&state.db, e, move |conn| {
        Ok(crate::store::groups::remove_members(
            conn,
            &id,
            &request.device_ids,
        )?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(group)))
}

/// `POST /api/v1/device-groups/{id}/commands`: the single-device body, sent to every member
/// at once; answers per device.
pub async fn dispatch_to_group(
    user: Authorized<DispatchCommands>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let request = parse_dispatch(&body)?;
    let targets = state
        .db
        .run(move |conn| {
            require(conn, &id)?;
            Ok(member_ids(conn, &id)?)
        })
        .await?;
    if targets.is_empty() {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidParameter,
            "the group has no members",
        ));
    }
    fan_out(&state, &user, &req, targets, request).await
}
