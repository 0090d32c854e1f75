//! The boards listed per OTA project: `PUT`, `DELETE` and list under
//! `/api/v1/ota/projects/{project}/devices` (ADMIN; changes audited). A board downloads its
//! project's firmware only while it is listed with `fwAccess` (unless the server runs with
//! `--ota-legacy-boards`), so taking a board off the list stops it at its next request.

use actix_web::{web, HttpRequest, HttpResponse};
use protocol::ota::OtaBoardRequest;
use protocol::rest::Envelope;

use crate::api::audit::{audited, by_user};
use crate::api::paging::Paging;
use crate::auth::{Authorized, ManageFirmware};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use crate::store::boards;
use crate::store::firmware::is_safe_name;

/// A board id is what its token's `sub` says, so it follows the token route's rule: 1-128
/// characters without control characters.
pub fn is_board_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(char::is_control)
}

fn checked_path(path: (String, String)) -> ApiResult<(String, String)> {
    let (project, device_id) = path;
    if !is_safe_name(&project, 64) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "project must be 1-64 of [A-Za-z0-9._-]",
        ));
    }
    if !is_board_id(&device_id) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "deviceId must be 1-128 characters without control characters",
        ));
    }
    Ok((project, device_id))
}

/// `PUT /api/v1/ota/projects/{project}/devices/{deviceId}` with `{"fwAccess", "productionLineId"?}`.
pub async fn put_board(
    user: Authorized<ManageFirmware>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<OtaBoardRequest>,
) -> ApiResult<HttpResponse> {
    let (project, device_id) = checked_path(path.into_inner())?;
    let body = body.into_inner();
    if body
        .production_line_id
        .as_deref()
        .is_some_and(|l| l.is_empty() || l.len() > 128)
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidBody,
            "productionLineId must be 1-128 characters",
        ));
    }
    let entry = by_user(&user, &req, "ota.board.put")
        .target(Some(device_id.clone()))
        .params(serde_json::json!({
            "project": project, "fwAccess": body.fw_access,
            "productionLineId": body.production_line_id,
        }));
    let row = audited(&state.db, entry, move |conn| {
        Ok(boards::put(
            conn,
            &project,
            &device_id,
            body.fw_access,
            body.production_line_id,
        )?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(row.to_api())))
}

/// `DELETE /api/v1/ota/projects/{project}/devices/{deviceId}`.
pub async fn delete_board(
    user: Authorized<ManageFirmware>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project, device_id) = checked_path(path.into_inner())?;
    let entry = by_user(&user, &req, "ota.board.delete")
        .target(Some(device_id.clone()))
        .params(serde_json::json!({ "project": project }));
    let deleted = device_id.clone();
    audited(&state.db, entry, move |conn| {
        Ok(boards::delete(conn, &project, &device_id)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(serde_json::json!({ "deleted": deleted }))))
}

/// `GET /api/v1/ota/projects/{project}/devices`: the project's boards by id, paged.
pub async fn list_boards(
    _user: Authorized<ManageFirmware>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    paging: Paging,
) -> ApiResult<HttpResponse> {
    let project = path.into_inner();
    if !is_safe_name(&project, 64) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidParameter,
            "project must be 1-64 of [A-Za-z0-9._-]",
        ));
    }
    let (limit, offset) = paging.checked()?;
    let page = state
        .db
        .run(move |conn| Ok(boards::page(conn, &project, limit, offset)?))
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}
