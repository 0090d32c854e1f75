//! The firmware deployment routes (`/api/v1/firmware/deployments`): create, list, get, and
//! pause, resume and cancel. Their rows live in `store::deployments`; the state machine that
//! moves them is `store::rollout`, which the `FirmwareDeployer` actor drives.
//!
//! Every transition is one conditional UPDATE on the state it leaves, so the actor, a late
//! command result and an operator's pause can never both win.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use diesel::prelude::*;
use protocol::firmware::{DeploymentRequest, DeploymentStatus, DeviceDeploymentStatus};
use protocol::rest::{Envelope, Page};
use schema::schema::{firmware_deployment_devices as targets, firmware_deployments as deployments};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actors::deployer::Poke;
use crate::api::audit::audited;
use crate::api::paging::Paging;
use crate::auth::{Authorized, ManageFirmware, ViewDevices};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;
use crate::store::audit::AuditEntry;
use crate::store::deployments::*;
use crate::store::rollout::*;

// ---- REST ----

/// The waves of `n` targets: the size of one, and how many.
fn wave_plan(n: usize, request: &DeploymentRequest) -> ApiResult<(usize, usize)> {
    let size = match (request.wave_size, request.wave_percent) {
        (Some(_), Some(_)) => {
            return Err(ApiError::from(invalid(
                "give waveSize or wavePercent, not both",
            )))
        }
        (Some(0), _) => return Err(ApiError::from(invalid("waveSize must be at least 1"))),
        (Some(s), None) => (s as usize).min(n),
        (None, Some(p)) if !(1..=100).contains(&p) => {
            return Err(ApiError::from(invalid(
                "wavePercent must be between 1 and 100",
            )))
        }
        (None, Some(p)) => (n * p as usize).div_ceil(100).max(1),
        (None, None) => n,
    };
    Ok((size, n.div_ceil(size)))
}

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
    let entry = AuditEntry::new("firmware.deploy", "success")
        .actor(Some(user.username.clone()), Some(user.role))
        .target(Some(request.release_id.clone()))
        .params(serde_json::to_value(&request).unwrap_or(Value::Null))
        .source(crate::auth::source_of(&req));
    let created_by = user.username.clone();
    let (row, rows) = audited(&state.db, entry, move |conn| {
        let release = crate::store::firmware::find(conn, &request.release_id)?
            .ok_or_else(crate::store::firmware::not_found)?;
        let mut wanted = match &request.group_id {
            Some(group) => {
                crate::store::groups::require(conn, group)?;
                crate::store::groups::member_ids(conn, group)?
            }
            None => request.device_ids.clone(),
        };
        let mut seen = std::collections::HashSet::new();
        wanted.retain(|d| seen.insert(d.clone()));
        if wanted.is_empty() {
            return Err(ApiError::from(invalid(
                "the deployment has no target devices",
            )));
        }
        if wanted.len() > MAX_DEPLOYMENT_TARGETS {
            return Err(ApiError::bad_request(
                ErrorCode::TooManyTargets,
                format!("at most {MAX_DEPLOYMENT_TARGETS} devices per deployment"),
            ));
        }
        let known = crate::store::devices::known_ids(conn, &wanted)?;
        if let Some(missing) = wanted.iter().find(|d| !known.contains(*d)) {
            return Err(ApiError::not_found(
                ErrorCode::DeviceNotFound,
                format!("no such device: {missing}"),
            ));
        }
        // One rollout per device at a time: two would race to install different builds.
        for chunk in wanted.chunks(500) {
            let busy: Option<(String, String)> = targets::table
                .inner_join(deployments::table)
                .filter(targets::device_id.eq_any(chunk))
                .filter(deployments::status.eq_any([
                    DeploymentStatus::Running.as_str(),
                    DeploymentStatus::Paused.as_str(),
                ]))
                .filter(targets::status.ne_all([
                    DeviceDeploymentStatus::Failed.as_str(),
                    DeviceDeploymentStatus::Cancelled.as_str(),
                ]))
                .filter(targets::verified_at.is_null())
                .select((targets::device_id, targets::deployment_id))
                .first(conn)
                .optional()?;
            if let Some((device, deployment)) = busy {
                return Err(ApiError::conflict(
                    ErrorCode::DeviceInDeployment,
                    format!("device {device} is still in deployment {deployment}"),
                ));
            }
        }
        let (wave_size, waves) = wave_plan(wanted.len(), &request)?;
        let now = Utc::now().naive_utc();
        let row = DeploymentRow {
            id: uuid::Uuid::new_v4().to_string(),
            release_id: release.id.clone(),
            version: release.version.clone(),
            status: DeploymentStatus::Running.as_str().to_owned(),
            paused_reason: None,
            wave_size: wave_size as i32,
            current_wave: 1,
            waves: waves as i32,
            max_concurrent_downloads: request.max_concurrent_downloads.map(|n| n as i32),
            failure_threshold_percent: request
                .failure_threshold_percent
                .unwrap_or(DEFAULT_FAILURE_THRESHOLD_PERCENT)
                as i32,
            soak_secs: request.soak_secs.unwrap_or(DEFAULT_SOAK_SECS) as i32,
            allow_downgrade: request.allow_downgrade,
            created_by: Some(created_by),
            created_at: now,
            updated_at: now,
        };
        diesel::insert_into(deployments::table)
            .values(&row)
            .execute(conn)?;
        let rows: Vec<TargetRow> = wanted
            .iter()
            .enumerate()
            .map(|(i, device_id)| TargetRow {
                deployment_id: row.id.clone(),
                device_id: device_id.clone(),
                wave: (i / wave_size) as i32 + 1,
                status: DeviceDeploymentStatus::Pending.as_str().to_owned(),
                reason: None,
                command_id: None,
                run_id: None,
                soak_until: None,
                verified_at: None,
                updated_at: now,
            })
            .collect();
        // One statement per row: a multi-row INSERT is not portable across the two backends
        // of a MultiConnection. It is one transaction all the same.
        for row in &rows {
            diesel::insert_into(targets::table)
                .values(row)
                .execute(conn)?;
        }
        Ok((row, rows))
    })
    .await?;
    state.deployer.do_send(Poke);
    Ok(HttpResponse::Created().json(Envelope::ok(row.to_api(&rows, true))))
}

#[derive(Debug, Deserialize)]
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
            let filtered = || {
                let mut q = deployments::table.into_boxed();
                if let Some(s) = &status {
                    q = q.filter(deployments::status.eq(s.clone()));
                }
                if let Some(r) = &release_id {
                    q = q.filter(deployments::release_id.eq(r.clone()));
                }
                q
            };
            let total = filtered().count().get_result(conn)?;
            let rows: Vec<DeploymentRow> = filtered()
                .order((deployments::created_at.desc(), deployments::id.asc()))
                .limit(limit)
                .offset(offset)
                .select(DeploymentRow::as_select())
                .load(conn)?;
            let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
            let mut counts = counts_of(conn, &ids)?;
            let items = rows
                .iter()
                .map(|row| row.summary(counts.remove(&row.id).unwrap_or_else(zero_counts), None))
                .collect();
            Ok(Page { items, total })
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

#[derive(Debug, Clone, Copy)]
enum Control {
    Pause,
    Resume,
    Cancel,
}

impl Control {
    fn action(self) -> &'static str {
        match self {
            Control::Pause => "firmware.deployment.pause",
            Control::Resume => "firmware.deployment.resume",
            Control::Cancel => "firmware.deployment.cancel",
        }
    }
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
    let entry = AuditEntry::new(control.action(), "success")
        .actor(Some(user.username.clone()), Some(user.role))
        .target(Some(id.clone()))
        .source(crate::auth::source_of(&req));
    let by = user.username.clone();
    let deployment = audited(&state.db, entry, move |conn| {
        let row = find(conn, &id)?.ok_or_else(not_found)?;
        let now = Utc::now().naive_utc();
        let from = row.status();
        let to = match (control, from) {
            (Control::Pause, DeploymentStatus::Running) => DeploymentStatus::Paused,
            (Control::Resume, DeploymentStatus::Paused) => DeploymentStatus::Running,
            (Control::Cancel, DeploymentStatus::Running | DeploymentStatus::Paused) => {
                DeploymentStatus::Cancelled
            }
            _ => {
                return Err(ApiError::conflict(
                    ErrorCode::DeploymentState,
                    format!("the deployment is {}", from.as_str()),
                ))
            }
        };
        let reason = matches!(control, Control::Pause).then_some("paused by an operator");
        set_deployment(conn, &row, to, reason, now)?;
        match control {
            Control::Resume => {
                diesel::update(
                    targets::table
                        .filter(targets::deployment_id.eq(&id))
                        .filter(targets::wave.eq(row.current_wave))
                        .filter(targets::status.eq(DeviceDeploymentStatus::Failed.as_str())),
                )
                .set((
                    targets::status.eq(DeviceDeploymentStatus::Pending.as_str()),
                    targets::updated_at.eq(now),
                ))
                .execute(conn)?;
            }
            Control::Cancel => {
                // An update still waiting queued for an offline device (or not yet sent) is
                // withdrawn; one a device already has cannot be called back and finishes.
                let started: Vec<TargetRow> = targets::table
                    .filter(targets::deployment_id.eq(&id))
                    .filter(targets::status.eq(DeviceDeploymentStatus::InProgress.as_str()))
                    .select(TargetRow::as_select())
                    .load(conn)?;
                for row in started {
                    let Some(command) = &row.command_id else { continue };
                    match crate::store::commands::cancel(conn, &row.device_id, command, &by) {
                        Ok(_) => {
                            set_target(
                                conn,
                                &row,
                                DeviceDeploymentStatus::Cancelled,
                                Some("the deployment was cancelled before the device took the update".into()),
                                now,
                            )?;
                        }
                        Err(e) if e.code == ErrorCode::CommandNotCancellable => {}
                        Err(e) if e.code == ErrorCode::CommandNotFound => {}
                        Err(e) => return Err(ApiError::from(e)),
                    }
                }
                diesel::update(
                    targets::table
                        .filter(targets::deployment_id.eq(&id))
                        .filter(targets::status.eq(DeviceDeploymentStatus::Pending.as_str())),
                )
                .set((
                    targets::status.eq(DeviceDeploymentStatus::Cancelled.as_str()),
                    targets::reason.eq(Some("the deployment was cancelled")),
                    targets::updated_at.eq(now),
                ))
                .execute(conn)?;
            }
            Control::Pause => {}
        }
        let row = find(conn, &id)?.ok_or_else(not_found)?;
        let targets = targets_of(conn, &id)?;
        Ok(row.to_api(&targets, true))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(size: Option<u32>, percent: Option<u32>) -> DeploymentRequest {
        DeploymentRequest {
            release_id: "r".into(),
            device_ids: vec!["a".into()],
            group_id: None,
            wave_size: size,
            wave_percent: percent,
            max_concurrent_downloads: None,
            failure_threshold_percent: None,
            soak_secs: None,
            allow_downgrade: false,
        }
    }

    #[test]
    fn waves_split_the_targets_by_size_or_share() {
        assert_eq!(wave_plan(10, &request(None, None)).unwrap(), (10, 1));
        assert_eq!(wave_plan(10, &request(Some(3), None)).unwrap(), (3, 4));
        assert_eq!(wave_plan(10, &request(Some(50), None)).unwrap(), (10, 1));
        assert_eq!(wave_plan(10, &request(None, Some(25))).unwrap(), (3, 4));
        assert_eq!(wave_plan(3, &request(None, Some(1))).unwrap(), (1, 3));
        assert_eq!(wave_plan(4, &request(None, Some(50))).unwrap(), (2, 2));
        assert!(wave_plan(4, &request(Some(0), None)).is_err());
        assert!(wave_plan(4, &request(None, Some(0))).is_err());
        assert!(wave_plan(4, &request(None, Some(101))).is_err());
        assert!(wave_plan(4, &request(Some(2), Some(50))).is_err());
    }
}
