//! The firmware deployment routes (`/api/v1/firmware/deployments`): create, list, get, and
//! pause, resume and cancel. Their rows and queries live in `store::deployments`; the state
//! machine that moves them is `store::rollout`, which the `FirmwareDeployer` actor drives.
//!
//! Every transition is one conditional UPDATE on the state it leaves, so the actor, a late
//! command result and an operator's pause can never both win.

use actix_web::{web, HttpRequest, HttpResponse};
use protocol::firmware::{DeploymentRequest, DeploymentStatus};
use protocol::rest::Envelope;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actors::deployer::Poke;
use crate::api::audit::{audited, by_user};
use crate::api::paging::Paging;
use crate::auth::{Authorized, ManageFirmware, ViewDevices};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use crate::store::deployments::*;

// ---- REST ----

/// `POST /api/v1/firmware/deployments`.
pub async fn create(
    user: Authorized<ManageFirmware>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<DeploymentRequest>,
) -> ApiResult<HttpResponse> {
    let request = body.into_inner();
    if request.device_ids.is_empty() == request.group_id.is_none() {
        return Err(ApiError::from(invalid(
            "give deviceIds or groupId, one of them",
        )));
    }
    if request.failure_threshold_percent.is_some_and(|p| p > 100) {
        return Err(ApiError::from(invalid(
            "failureThresholdPercent must be between 0 and 100",
        )));
    }
    if request.max_concurrent_downloads == Some(0) {
        return Err(ApiError::from(invalid(
            "maxConcurrentDownloads must be at least 1",
        )));
    }
    if request.soak_secs.is_some_and(|s| s > 7 * 24 * 3600) {
        return Err(ApiError::from(invalid("soakSecs must be at most a week")));
    }
    let entry = by_user(&user, &req, "firmware.deploy")
        .target(Some(request.release_id.clone()))
        .params(serde_json::to_value(&request).unwrap_or(Value::Null));
    let created_by = user.username.clone();
    let (row, rows) = audited(&state.db, entry, move |conn| {
        Ok(create_deployment(conn, &request, created_by)?)
    })
    .await?;
    state.deployer.do_send(Poke);
    Ok(HttpResponse::Created().json(Envelope::ok(row.to_api(&rows, true))))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    pub status: Option<String>,
    #[serde(rename = "releaseId")]
    pub release_id: Option<String>,
}

/// `GET /api/v1/firmware/deployments`: newest first, with per-status counts.
pub async fn list(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
    paging: Paging,
) -> ApiResult<HttpResponse> {
    let (limit, offset) = paging.checked()?;
    let ListQuery {
        status, release_id, ..
    } = query.into_inner();
    if let Some(s) = &status {
        s.parse::<DeploymentStatus>()
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidParameter, e))?;
    }
    let page = state
        .db
        .run(move |conn| {
            Ok(page(
                conn,
                status.as_deref(),
                release_id.as_deref(),
                limit,
                offset,
            )?)
        })
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(page)))
}

/// `GET /api/v1/firmware/deployments/{id}`: with every device's state.
pub async fn get(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let deployment = state
        .db
        .run(move |conn| {
            let row = find(conn, &id)?.ok_or_else(not_found)?;
            let targets = targets_of(conn, &id)?;
            let mut deployment = row.to_api(&targets, true);
            with_progress(conn, &mut deployment)?;
            Ok(deployment)
        })
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::ok(deployment)))
}

/// Pause stops new downloads (running ones finish and are recorded); resume starts the failed
/// devices of the current wave again, since those failures are why it paused; cancel settles
/// every device that has not started as CANCELLED.
async fn control(
    user: Authorized<ManageFirmware>,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: String,
    control: Control,
) -> ApiResult<HttpResponse> {
    let entry = by_user(&user, &req, control.action()).target(Some(id.clone()));
    let by = user.username.clone();
    let deployment = audited(&state.db, entry, move |conn| {
        Ok(control_deployment(conn, &id, control, &by)?)
    })
    .await?;
    state.deployer.do_send(crate::actors::deployer::Announce {
        deployment_id: deployment.id.clone(),
        status: deployment.status,
        detail: json!({ "pausedReason": deployment.paused_reason, "currentWave": deployment.current_wave }),
    });
    state.deployer.do_send(Poke);
    Ok(HttpResponse::Ok().json(Envelope::ok(deployment)))
}

/// `POST /api/v1/firmware/deployments/{id}/pause`.
pub async fn pause(
    user: Authorized<ManageFirmware>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    control(user, state, req, path.into_inner(), Control::Pause).await
}

/// `POST /api/v1/firmware/deployments/{id}/resume`.
pub async fn resume(
    user: Authorized<ManageFirmware>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    control(user, state, req, path.into_inner(), Control::Resume).await
}

/// `POST /api/v1/firmware/deployments/{id}/cancel`.
pub async fn cancel(
    user: Authorized<ManageFirmware>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    control(user, state, req, path.into_inner(), Control::Cancel).await
}
