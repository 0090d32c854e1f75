//! Device groups: the model, its queries and routes, and dispatch to every member.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use diesel::prelude::*;
use protocol::rest::{DeviceGroup, Envelope, GroupRequest, MembersRequest, Page};
use schema::schema::{device_group_members as members, device_groups as groups};

use crate::api::audit::audited;
use crate::api::commands::{fan_out, parse_dispatch, MAX_BULK_TARGETS};
use crate::api::paging::Paging;
use crate::auth::{Authorized, DispatchCommands, ManageDevices, ViewDevices};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use crate::store::audit::AuditEntry;
use crate::store::db::DbConnection;
use crate::store::groups::*;

fn to_api(conn: &mut DbConnection, row: GroupRow, with_members: bool) -> ApiResult<DeviceGroup> {
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
    AuditEntry::new(action, "success")
        .actor(Some(user.username.clone()), Some(user.role))
        .target(Some(target.to_owned()))
        .source(crate::auth::source_of(req))
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
        .run(move |conn| {
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
                .collect::<ApiResult<Vec<_>>>()?;
            Ok(Page { items, total })
        })
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
    let group = state
        .db
        .run(move |conn| {
            let row = require(conn, &id)?;
            to_api(conn, row, true)
        })
        .await?;
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
        let row = require(conn, &id)?;
        if let Some(name) = &change.name {
            name_taken(conn, name, Some(&id))?;
        }
        diesel::update(groups::table.find(&id))
            .set((
                groups::name.eq(change.name.unwrap_or(row.name)),
                groups::description.eq(change.description.or(row.description)),
                groups::updated_at.eq(Utc::now().naive_utc()),
            ))
            .execute(conn)?;
        let row = require(conn, &id)?;
        to_api(conn, row, true)
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
    audited(&state.db, e, move |conn| {
        require(conn, &target)?;
        diesel::delete(members::table.filter(members::group_id.eq(&target))).execute(conn)?;
        diesel::delete(groups::table.find(&target)).execute(conn)?;
        Ok(())
    })
    .await?;
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
        let row = require(conn, &id)?;
        let mut wanted = request.device_ids.clone();
        wanted.sort();
        wanted.dedup();
        let existing = crate::store::devices::known_ids(conn, &wanted)?;
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|d| !existing.contains(*d))
            .take(10)
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::bad_request(
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
        let already: Vec<String> = member_ids(conn, &id)?;
        for device_id in wanted.iter().filter(|d| !already.contains(d)) {
            diesel::insert_into(members::table)
                .values((members::group_id.eq(&id), members::device_id.eq(device_id)))
                .execute(conn)?;
        }
        to_api(conn, row, true)
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
        let row = require(conn, &id)?;
        for chunk in request.device_ids.chunks(500) {
            diesel::delete(
                members::table
                    .filter(members::group_id.eq(&id))
                    .filter(members::device_id.eq_any(chunk)),
            )
            .execute(conn)?;
        }
        to_api(conn, row, true)
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
