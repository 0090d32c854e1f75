//! Firmware deployments: their rows, the queries that move them, and the REST routes
//! (`/api/v1/firmware/deployments`). The `FirmwareDeployer` actor (`deployer.rs`) drives them.
//!
//! Every transition is one conditional UPDATE on the state it leaves, so the actor, a late
//! command result and an operator's pause can never both win. `advance` reconciles one
//! deployment with what the devices report (their stored status, version and run id), which is
//! why a status frame that overtakes a command result, or a server restart, loses nothing.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{Duration as ChronoDuration, NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::commands::{Command, CommandKind};
use protocol::firmware::{
    Deployment, DeploymentRequest, DeploymentStatus, DeviceDeployment, DeviceDeploymentStatus,
};
use protocol::rest::{CommandStatus, DeviceStatus, Envelope, Page};
use schema::schema::{
    commands, devices, firmware_deployment_devices as targets, firmware_deployments as deployments,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::{self, audited, AuditEntry};
use crate::auth::{Authorized, ManageFirmware, ViewDevices};
use crate::db::DbConnection;
use crate::deployer::Poke;
use crate::devices::paging;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;

/// Most devices in one deployment; a larger fleet is rolled out as several.
pub const MAX_DEPLOYMENT_TARGETS: usize = 10_000;
/// The share of a wave that may fail before the deployment pauses itself, when not given.
pub const DEFAULT_FAILURE_THRESHOLD_PERCENT: u32 = 20;
/// How long a device stays on the new version before its wave may be promoted, when not given.
pub const DEFAULT_SOAK_SECS: u32 = 60;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = deployments)]
pub struct DeploymentRow {
    pub id: String,
    pub release_id: String,
    pub version: String,
    pub status: String,
    pub paused_reason: Option<String>,
    pub wave_size: i32,
    pub current_wave: i32,
    pub waves: i32,
    pub max_concurrent_downloads: Option<i32>,
    pub failure_threshold_percent: i32,
    pub soak_secs: i32,
    pub allow_downgrade: bool,
    pub created_by: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = targets)]
pub struct TargetRow {
    pub deployment_id: String,
    pub device_id: String,
    pub wave: i32,
    pub status: String,
    pub reason: Option<String>,
    pub command_id: Option<String>,
    pub run_id: Option<String>,
    pub soak_until: Option<NaiveDateTime>,
    pub verified_at: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
}

impl TargetRow {
    fn status(&self) -> DeviceDeploymentStatus {
        self.status
            .parse()
            .unwrap_or(DeviceDeploymentStatus::Failed)
    }

    fn to_api(&self) -> DeviceDeployment {
        DeviceDeployment {
            device_id: self.device_id.clone(),
            wave: self.wave.max(1) as u32,
            status: self.status(),
            reason: self.reason.clone(),
            command_id: self.command_id.clone(),
            progress: None,
            progress_message: None,
            soak_until: self.soak_until.map(|t| t.and_utc()),
            verified_at: self.verified_at.map(|t| t.and_utc()),
            updated_at: self.updated_at.and_utc(),
        }
    }

    /// Nothing more will happen to this device in this deployment.
    fn is_settled(&self) -> bool {
        match self.status() {
            DeviceDeploymentStatus::Failed | DeviceDeploymentStatus::Cancelled => true,
            DeviceDeploymentStatus::Active => self.verified_at.is_some(),
            _ => false,
        }
    }
}

impl DeploymentRow {
    pub fn status(&self) -> DeploymentStatus {
        self.status.parse().unwrap_or(DeploymentStatus::Cancelled)
    }

    fn to_api(&self, rows: &[TargetRow], with_devices: bool) -> Deployment {
        let mut counts = zero_counts();
        for row in rows {
            *counts.entry(row.status()).or_default() += 1;
        }
        self.summary(
            counts,
            with_devices.then(|| rows.iter().map(TargetRow::to_api).collect()),
        )
    }

    fn summary(
        &self,
        counts: BTreeMap<DeviceDeploymentStatus, u64>,
        devices: Option<Vec<DeviceDeployment>>,
    ) -> Deployment {
        Deployment {
            id: self.id.clone(),
            release_id: self.release_id.clone(),
            version: self.version.clone(),
            status: self.status(),
            paused_reason: self.paused_reason.clone(),
            current_wave: self.current_wave.max(1) as u32,
            waves: self.waves.max(0) as u32,
            wave_size: self.wave_size.max(0) as u32,
            max_concurrent_downloads: self.max_concurrent_downloads.map(|n| n.max(0) as u32),
            failure_threshold_percent: self.failure_threshold_percent.max(0) as u32,
            soak_secs: self.soak_secs.max(0) as u32,
            allow_downgrade: self.allow_downgrade,
            counts,
            created_by: self.created_by.clone(),
            created_at: self.created_at.and_utc(),
            updated_at: self.updated_at.and_utc(),
            devices,
        }
    }
}

fn zero_counts() -> BTreeMap<DeviceDeploymentStatus, u64> {
    DeviceDeploymentStatus::ALL
        .into_iter()
        .map(|s| (s, 0))
        .collect()
}

/// Per-status device counts of these deployments, counted by the database: a list page must
/// not load every device row of every deployment on it.
fn counts_of(
    conn: &mut DbConnection,
    ids: &[String],
) -> ApiResult<std::collections::HashMap<String, BTreeMap<DeviceDeploymentStatus, u64>>> {
    let rows: Vec<(String, String, i64)> = targets::table
        .filter(targets::deployment_id.eq_any(ids))
        .group_by((targets::deployment_id, targets::status))
        .select((
            targets::deployment_id,
            targets::status,
            diesel::dsl::count_star(),
        ))
        .load(conn)?;
    let mut all = std::collections::HashMap::new();
    for (id, status, n) in rows {
        let counts = all.entry(id).or_insert_with(zero_counts);
        if let Ok(status) = status.parse() {
            *counts.entry(status).or_default() += n.max(0) as u64;
        }
    }
    Ok(all)
}

fn not_found() -> ApiError {
    ApiError::not_found(ErrorCode::DeploymentNotFound, "no such deployment")
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidBody, message)
}

pub fn find(conn: &mut DbConnection, id: &str) -> ApiResult<Option<DeploymentRow>> {
    Ok(deployments::table
        .find(id)
        .select(DeploymentRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn targets_of(conn: &mut DbConnection, id: &str) -> ApiResult<Vec<TargetRow>> {
    Ok(targets::table
        .filter(targets::deployment_id.eq(id))
        .order((targets::wave.asc(), targets::device_id.asc()))
        .select(TargetRow::as_select())
        .load(conn)?)
}

/// The devices of a deployment between their first download and a passed soak.
fn unsettled_of(conn: &mut DbConnection, id: &str) -> ApiResult<Vec<TargetRow>> {
    Ok(targets::table
        .filter(targets::deployment_id.eq(id))
        .filter(targets::status.eq_any([
            DeviceDeploymentStatus::InProgress.as_str(),
            DeviceDeploymentStatus::Staged.as_str(),
            DeviceDeploymentStatus::Active.as_str(),
        ]))
        .filter(targets::verified_at.is_null())
        .select(TargetRow::as_select())
        .load(conn)?)
}

/// Which of these devices are ONLINE.
fn online_among(
    conn: &mut DbConnection,
    ids: &[&str],
) -> ApiResult<std::collections::HashSet<String>> {
    let mut online = std::collections::HashSet::new();
    for chunk in ids.chunks(500) {
        let found: Vec<String> = devices::table
            .filter(devices::id.eq_any(chunk))
            .filter(devices::status.eq(DeviceStatus::Online.as_str()))
            .select(devices::id)
            .load(conn)?;
        online.extend(found);
    }
    Ok(online)
}

/// One wave's devices, in the order they are started (online ones first, see `advance`).
fn wave_of(conn: &mut DbConnection, id: &str, wave: i32) -> ApiResult<Vec<TargetRow>> {
    Ok(targets::table
        .filter(targets::deployment_id.eq(id))
        .filter(targets::wave.eq(wave))
        .order(targets::device_id.asc())
        .select(TargetRow::as_select())
        .load(conn)?)
}

/// Deployments that may still change: the actor looks at these on every tick.
pub fn unfinished(conn: &mut DbConnection) -> ApiResult<Vec<String>> {
    Ok(deployments::table
        .filter(deployments::status.eq_any([
            DeploymentStatus::Running.as_str(),
            DeploymentStatus::Paused.as_str(),
        ]))
        .select(deployments::id)
        .order(deployments::created_at.asc())
        .load(conn)?)
}

/// Devices that take part in an unfinished deployment and are not settled yet, with their
/// update commands: a status frame or an alert from one of them is worth a look.
pub fn watched_devices(conn: &mut DbConnection) -> ApiResult<Vec<(String, Option<String>)>> {
    Ok(targets::table
        .inner_join(deployments::table)
        .filter(deployments::status.eq_any([
            DeploymentStatus::Running.as_str(),
            DeploymentStatus::Paused.as_str(),
        ]))
        .filter(targets::status.eq_any([
            DeviceDeploymentStatus::InProgress.as_str(),
            DeviceDeploymentStatus::Staged.as_str(),
            DeviceDeploymentStatus::Active.as_str(),
        ]))
        .filter(targets::verified_at.is_null())
        .select((targets::device_id, targets::command_id))
        .load(conn)?)
}

/// Whether a release may be deleted: no unfinished deployment may still send its URL.
pub fn release_in_use(conn: &mut DbConnection, release_id: &str) -> ApiResult<bool> {
    let n: i64 = deployments::table
        .filter(deployments::release_id.eq(release_id))
        .filter(deployments::status.eq_any([
            DeploymentStatus::Running.as_str(),
            DeploymentStatus::Paused.as_str(),
        ]))
        .count()
        .get_result(conn)?;
    Ok(n > 0)
}

/// A change the actor carries out after `advance` committed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send this `update_firmware` to the device.
    Dispatch {
        deployment_id: String,
        device_id: String,
        command: Command,
        issued_by: Option<String>,
    },
    /// Tell dashboards about a device's new state.
    Device {
        deployment_id: String,
        device_id: String,
        status: DeviceDeploymentStatus,
        detail: Option<Value>,
    },
    /// Tell dashboards about the deployment's new state.
    Deployment {
        deployment_id: String,
        status: DeploymentStatus,
        detail: Value,
    },
}

/// The `update_firmware` commands the actor knows to be under way: those it awaits an
/// answer for, and those the dispatcher queued for an offline device (delivered when it
/// connects, or expired). An IN_PROGRESS row whose command is in neither was lost to a restart.
#[derive(Debug, Clone, Default)]
pub struct Carried {
    pub awaited: std::collections::HashSet<String>,
    pub queued: std::collections::HashSet<String>,
}

/// The settings `advance` needs besides the rows.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From STAGED to the device reporting the new version.
    pub activate: std::time::Duration,
    /// For a device to download and stage the release (the command's timeout).
    pub stage: std::time::Duration,
}

/// What the server knows about a device, as `advance` reads it.
#[derive(Debug, Clone, Queryable)]
struct DeviceView {
    id: String,
    status: String,
    version: Option<String>,
    run_id: Option<String>,
}

/// One target while it is still in `status`: every transition is conditional on the state it
/// leaves, so that two writers (a pass and a cancel) never both move the same row.
#[diesel::dsl::auto_type(no_type_alias)]
fn target_in<'a>(deployment_id: &'a str, device_id: &'a str, status: &'a str) -> _ {
    targets::table
        .filter(targets::deployment_id.eq(deployment_id))
        .filter(targets::device_id.eq(device_id))
        .filter(targets::status.eq(status))
}

fn set_target(
    conn: &mut DbConnection,
    row: &TargetRow,
    status: DeviceDeploymentStatus,
    reason: Option<String>,
    now: NaiveDateTime,
) -> ApiResult<bool> {
    let n = diesel::update(target_in(&row.deployment_id, &row.device_id, &row.status))
        .set((
            targets::status.eq(status.as_str()),
            targets::reason.eq(reason),
            targets::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

fn device_effect(row: &TargetRow, status: DeviceDeploymentStatus, detail: Option<Value>) -> Effect {
    Effect::Device {
        deployment_id: row.deployment_id.clone(),
        device_id: row.device_id.clone(),
        status,
        detail,
    }
}

fn fail(
    conn: &mut DbConnection,
    row: &TargetRow,
    reason: String,
    now: NaiveDateTime,
    effects: &mut Vec<Effect>,
) -> ApiResult<()> {
    if set_target(
        conn,
        row,
        DeviceDeploymentStatus::Failed,
        Some(reason.clone()),
        now,
    )? {
        effects.push(device_effect(
            row,
            DeviceDeploymentStatus::Failed,
            Some(json!({ "reason": reason })),
        ));
    }
    Ok(())
}

/// The `update_firmware` command of one target.
fn update_command(
    conn: &mut DbConnection,
    deployment: &DeploymentRow,
    command_id: String,
) -> ApiResult<Option<Command>> {
    let Some(release) = crate::firmware::find(conn, &deployment.release_id)? else {
        return Ok(None);
    };
    Ok(Some(Command::new(
        command_id,
        CommandKind::UpdateFirmware {
            version: release.version.clone(),
            // A path: the agent resolves it against the server URL it already uses, so the
            // address stays right behind a proxy or a renamed host.
            url: format!("/api/v1/firmware/releases/{}/artifact", release.id),
            sha256: release.sha256.clone(),
            size: release.size_bytes.max(0) as u64,
            signature_base64: release.signature_base64.clone(),
            signature_expires_at: release.signature_expires_at.map(|t| t.and_utc()),
            deployment_id: Some(deployment.id.clone()),
            allow_downgrade: deployment.allow_downgrade,
        },
    )))
}

/// Takes a deployment one step further, in one write transaction: devices that came back on
/// the new version become ACTIVE and start their soak; soaks end healthy or not; a wave whose
/// failures pass the threshold pauses the deployment, a settled wave promotes the next one;
/// and PENDING devices of the current wave start downloading, within the download cap.
///
/// An IN_PROGRESS row whose command the actor does not await is settled from the command's
/// record (see `settle_download`).
pub fn advance(
    conn: &mut DbConnection,
    id: &str,
    carried: &Carried,
    timeouts: Timeouts,
) -> ApiResult<Vec<Effect>> {
    crate::db::write_transaction(conn, |conn| {
        let mut effects = Vec::new();
        let Some(mut deployment) = find(conn, id)? else {
            return Ok(effects);
        };
        let status = deployment.status();
        if !matches!(status, DeploymentStatus::Running | DeploymentStatus::Paused) {
            return Ok(effects);
        }
        let now = Utc::now().naive_utc();
        // Only the devices something can happen to, and only their device rows: a pass over
        // a large deployment reads its moving part, not every target, each second.
        let rows = unsettled_of(conn, id)?;
        let ids: Vec<&str> = rows.iter().map(|r| r.device_id.as_str()).collect();
        let mut views = std::collections::HashMap::new();
        for chunk in ids.chunks(500) {
            let found: Vec<DeviceView> = devices::table
                .filter(devices::id.eq_any(chunk))
                .select((
                    devices::id,
                    devices::status,
                    devices::version,
                    devices::run_id,
                ))
                .load(conn)?;
            views.extend(found.into_iter().map(|d| (d.id.clone(), d)));
        }

        for row in &rows {
            let view = views.get(&row.device_id);
            let online = view.is_some_and(|v| v.status == DeviceStatus::Online.as_str());
            let reported = view.and_then(|v| v.version.as_deref());
            match row.status() {
                DeviceDeploymentStatus::InProgress => {
                    let awaited = row
                        .command_id
                        .as_ref()
                        .is_some_and(|c| carried.awaited.contains(c));
                    if !awaited {
                        settle_download(conn, row, carried, now, &mut effects)?;
                    }
                }
                DeviceDeploymentStatus::Staged => {
                    if view.is_none() {
                        fail(
                            conn,
                            row,
                            "the device was deleted".into(),
                            now,
                            &mut effects,
                        )?;
                    } else if online && reported == Some(deployment.version.as_str()) {
                        let soak_until = now + ChronoDuration::seconds(deployment.soak_secs.into());
                        let n = diesel::update(target_in(
                            &row.deployment_id,
                            &row.device_id,
                            &row.status,
                        ))
                        .set((
                            targets::status.eq(DeviceDeploymentStatus::Active.as_str()),
                            targets::run_id.eq(view.and_then(|v| v.run_id.clone())),
                            targets::soak_until.eq(Some(soak_until)),
                            targets::updated_at.eq(now),
                        ))
                        .execute(conn)?;
                        if n == 1 {
                            effects.push(device_effect(
                                row,
                                DeviceDeploymentStatus::Active,
                                Some(json!({ "soakUntil": soak_until.and_utc() })),
                            ));
                        }
                    } else if now - row.updated_at
                        > ChronoDuration::from_std(timeouts.activate).unwrap_or_default()
                    {
                        fail(
                            conn,
                            row,
                            format!(
                                "the device did not come back on {} within {} s of staging it",
                                deployment.version,
                                timeouts.activate.as_secs()
                            ),
                            now,
                            &mut effects,
                        )?;
                    }
                }
                DeviceDeploymentStatus::Active if row.verified_at.is_none() => {
                    let Some(view) = view else {
                        fail(
                            conn,
                            row,
                            "the device was deleted".into(),
                            now,
                            &mut effects,
                        )?;
                        continue;
                    };
                    if reported != Some(deployment.version.as_str()) {
                        let reason = format!(
                            "unhealthy after the update: the device now reports version {}",
                            reported.unwrap_or("none")
                        );
                        fail(conn, row, reason, now, &mut effects)?;
                    } else if row.run_id.is_some() && view.run_id != row.run_id {
                        let reason = "unhealthy after the update: the device restarted during the \
                                      soak"
                            .to_owned();
                        fail(conn, row, reason, now, &mut effects)?;
                    } else if row.soak_until.is_some_and(|t| t <= now) {
                        if online {
                            let n = diesel::update(
                                target_in(&row.deployment_id, &row.device_id, &row.status)
                                    .filter(targets::verified_at.is_null()),
                            )
                            .set((
                                targets::verified_at.eq(Some(now)),
                                targets::updated_at.eq(now),
                            ))
                            .execute(conn)?;
                            if n == 1 {
                                effects.push(device_effect(
                                    row,
                                    DeviceDeploymentStatus::Active,
                                    Some(json!({ "verified": true })),
                                ));
                            }
                        } else {
                            let reason =
                                "unhealthy after the update: offline at the end of the soak"
                                    .to_owned();
                            fail(conn, row, reason, now, &mut effects)?;
                        }
                    }
                }
                _ => {}
            }
        }

        if status != DeploymentStatus::Running {
            return Ok(effects);
        }
        // The current wave as the steps above left it.
        let mut rows;
        loop {
            let wave = deployment.current_wave;
            rows = wave_of(conn, id, wave)?;
            let in_wave = &rows;
            let failed = in_wave
                .iter()
                .filter(|r| r.status() == DeviceDeploymentStatus::Failed)
                .count();
            let threshold = deployment.failure_threshold_percent.max(0) as usize;
            if !in_wave.is_empty() && failed * 100 > threshold * in_wave.len() {
                let reason = format!(
                    "wave {wave}: {failed} of {} devices failed, above the threshold of \
                     {threshold} %",
                    in_wave.len()
                );
                if set_deployment(
                    conn,
                    &deployment,
                    DeploymentStatus::Paused,
                    Some(&reason),
                    now,
                )? {
                    effects.push(Effect::Deployment {
                        deployment_id: id.to_owned(),
                        status: DeploymentStatus::Paused,
                        detail: json!({ "pausedReason": reason, "currentWave": wave }),
                    });
                }
                return Ok(effects);
            }
            if in_wave.iter().all(|r| r.is_settled()) {
                if wave < deployment.waves {
                    let n = diesel::update(
                        deployments::table
                            .filter(deployments::id.eq(id))
                            .filter(deployments::current_wave.eq(wave))
                            .filter(deployments::status.eq(DeploymentStatus::Running.as_str())),
                    )
                    .set((
                        deployments::current_wave.eq(wave + 1),
                        deployments::updated_at.eq(now),
                    ))
                    .execute(conn)?;
                    if n != 1 {
                        return Ok(effects);
                    }
                    deployment.current_wave = wave + 1;
                    effects.push(Effect::Deployment {
                        deployment_id: id.to_owned(),
                        status: DeploymentStatus::Running,
                        detail: json!({ "currentWave": wave + 1 }),
                    });
                    continue;
                }
                if set_deployment(conn, &deployment, DeploymentStatus::Completed, None, now)? {
                    effects.push(Effect::Deployment {
                        deployment_id: id.to_owned(),
                        status: DeploymentStatus::Completed,
                        detail: json!({ "currentWave": wave }),
                    });
                }
                return Ok(effects);
            }
            break;
        }

        // Start downloads in the current wave, within the cap.
        let downloading: i64 = targets::table
            .filter(targets::deployment_id.eq(id))
            .filter(targets::status.eq(DeviceDeploymentStatus::InProgress.as_str()))
            .count()
            .get_result(conn)?;
        let downloading = downloading.max(0) as usize;
        let slots = match deployment.max_concurrent_downloads {
            Some(cap) => (cap.max(1) as usize).saturating_sub(downloading),
            None => usize::MAX,
        };
        let wave = deployment.current_wave;
        let mut pending: Vec<&mut TargetRow> = rows
            .iter_mut()
            .filter(|r| r.wave == wave && r.status() == DeviceDeploymentStatus::Pending)
            .collect();
        if slots < pending.len() {
            // Online devices first: an offline one gets its update queued and holds a slot
            // until it connects, which should not keep a device that could download waiting.
            let ids: Vec<&str> = pending.iter().map(|r| r.device_id.as_str()).collect();
            let online = online_among(conn, &ids)?;
            pending.sort_by_key(|r| !online.contains(&r.device_id));
        }
        for row in pending.into_iter().take(slots) {
            let command_id = uuid::Uuid::new_v4().to_string();
            let Some(command) = update_command(conn, &deployment, command_id.clone())? else {
                fail(
                    conn,
                    row,
                    "the release was deleted".into(),
                    now,
                    &mut effects,
                )?;
                continue;
            };
            let n = diesel::update(target_in(
                &row.deployment_id,
                &row.device_id,
                DeviceDeploymentStatus::Pending.as_str(),
            ))
            .set((
                targets::status.eq(DeviceDeploymentStatus::InProgress.as_str()),
                targets::command_id.eq(Some(&command_id)),
                targets::reason.eq(None::<String>),
                targets::updated_at.eq(now),
            ))
            .execute(conn)?;
            if n == 1 {
                // Stored with the row, so a cancel between here and the dispatcher finds it.
                crate::commands::insert_pending(
                    conn,
                    &row.device_id,
                    &command,
                    timeouts.stage.as_millis().min(i64::MAX as u128) as i64,
                    deployment.created_by.as_deref(),
                )?;
                row.status = DeviceDeploymentStatus::InProgress.as_str().to_owned();
                effects.push(device_effect(
                    row,
                    DeviceDeploymentStatus::InProgress,
                    Some(json!({ "commandId": command_id })),
                ));
                effects.push(Effect::Dispatch {
                    deployment_id: deployment.id.clone(),
                    device_id: row.device_id.clone(),
                    command,
                    issued_by: deployment.created_by.clone(),
                });
            }
        }
        Ok(effects)
    })
}

/// An IN_PROGRESS device whose answer the actor does not await: the command was queued for an
/// offline device, or the server restarted during the download. The command's record says how
/// it ended; one still queued (or delivered from the queue in this run) is left to the
/// dispatcher; one a restart orphaned is sent again under a fresh id (the agent resumes a
/// partial download, and re-staging is harmless).
fn settle_download(
    conn: &mut DbConnection,
    row: &TargetRow,
    carried: &Carried,
    now: NaiveDateTime,
    effects: &mut Vec<Effect>,
) -> ApiResult<()> {
    let record: Option<(String, Option<String>)> = match &row.command_id {
        Some(id) => commands::table
            .find(id)
            .select((commands::status, commands::output))
            .first(conn)
            .optional()?,
        None => None,
    };
    let status = record.as_ref().and_then(|(s, _)| CommandStatus::parse(s));
    match status {
        Some(CommandStatus::Success) => {
            if set_target(conn, row, DeviceDeploymentStatus::Staged, None, now)? {
                effects.push(device_effect(row, DeviceDeploymentStatus::Staged, None));
            }
        }
        Some(
            CommandStatus::Failed
            | CommandStatus::Timeout
            | CommandStatus::Cancelled
            | CommandStatus::Expired,
        ) => {
            let output = record.and_then(|(_, o)| o).unwrap_or_default();
            fail(conn, row, output, now, effects)?;
        }
        Some(CommandStatus::Queued) => {}
        _ if row
            .command_id
            .as_ref()
            .is_some_and(|c| carried.queued.contains(c)) => {}
        _ => {
            if set_target(conn, row, DeviceDeploymentStatus::Pending, None, now)? {
                effects.push(device_effect(row, DeviceDeploymentStatus::Pending, None));
            }
        }
    }
    Ok(())
}

fn set_deployment(
    conn: &mut DbConnection,
    deployment: &DeploymentRow,
    status: DeploymentStatus,
    paused_reason: Option<&str>,
    now: NaiveDateTime,
) -> ApiResult<bool> {
    let n = diesel::update(
        deployments::table
            .filter(deployments::id.eq(&deployment.id))
            .filter(deployments::status.eq(&deployment.status)),
    )
    .set((
        deployments::status.eq(status.as_str()),
        deployments::paused_reason.eq(paused_reason),
        deployments::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// The outcome of one `update_firmware` command: STAGED on success, FAILED with the device's
/// words otherwise. Only the command the row still waits for counts.
pub fn download_finished(
    conn: &mut DbConnection,
    deployment_id: &str,
    device_id: &str,
    command_id: &str,
    outcome: Result<String, String>,
) -> ApiResult<Option<Effect>> {
    let now = Utc::now().naive_utc();
    let (status, reason) = match &outcome {
        Ok(_) => (DeviceDeploymentStatus::Staged, None),
        Err(reason) => (DeviceDeploymentStatus::Failed, Some(reason.clone())),
    };
    let n = diesel::update(
        target_in(
            deployment_id,
            device_id,
            DeviceDeploymentStatus::InProgress.as_str(),
        )
        .filter(targets::command_id.eq(command_id)),
    )
    .set((
        targets::status.eq(status.as_str()),
        targets::reason.eq(&reason),
        targets::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok((n == 1).then(|| Effect::Device {
        deployment_id: deployment_id.to_owned(),
        device_id: device_id.to_owned(),
        status,
        detail: Some(match outcome {
            Ok(output) => json!({ "output": output }),
            Err(reason) => json!({ "reason": reason }),
        }),
    }))
}

/// An error-severity alert from a device between staging a release and passing its soak
/// fails it at once.
pub fn alert_received(
    conn: &mut DbConnection,
    device_id: &str,
    message: &str,
) -> ApiResult<Vec<Effect>> {
    let now = Utc::now().naive_utc();
    let rows: Vec<TargetRow> = targets::table
        .filter(targets::device_id.eq(device_id))
        .filter(targets::status.eq_any([
            DeviceDeploymentStatus::Staged.as_str(),
            DeviceDeploymentStatus::Active.as_str(),
        ]))
        .filter(targets::verified_at.is_null())
        .select(TargetRow::as_select())
        .load(conn)?;
    let mut effects = Vec::new();
    for row in rows {
        let reason = format!("unhealthy after the update: error alert \"{message}\"");
        fail(conn, &row, reason, now, &mut effects)?;
    }
    Ok(effects)
}

// ---- REST ----

/// The waves of `n` targets: the size of one, and how many.
fn wave_plan(n: usize, request: &DeploymentRequest) -> ApiResult<(usize, usize)> {
    let size = match (request.wave_size, request.wave_percent) {
        (Some(_), Some(_)) => return Err(invalid("give waveSize or wavePercent, not both")),
        (Some(0), _) => return Err(invalid("waveSize must be at least 1")),
        (Some(s), None) => (s as usize).min(n),
        (None, Some(p)) if !(1..=100).contains(&p) => {
            return Err(invalid("wavePercent must be between 1 and 100"))
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
        return Err(invalid("give deviceIds or groupId, one of them"));
    }
    if request.failure_threshold_percent.is_some_and(|p| p > 100) {
        return Err(invalid("failureThresholdPercent must be between 0 and 100"));
    }
    if request.max_concurrent_downloads == Some(0) {
        return Err(invalid("maxConcurrentDownloads must be at least 1"));
    }
    if request.soak_secs.is_some_and(|s| s > 7 * 24 * 3600) {
        return Err(invalid("soakSecs must be at most a week"));
    }
    let entry = AuditEntry::new("firmware.deploy", "success")
        .actor(Some(user.username.clone()), Some(user.role))
        .target(Some(request.release_id.clone()))
        .params(serde_json::to_value(&request).unwrap_or(Value::Null))
        .source(audit::source_of(&req));
    let created_by = user.username.clone();
    let (row, rows) = audited(&state.db, entry, move |conn| {
        let release = crate::firmware::find(conn, &request.release_id)?
            .ok_or_else(crate::firmware::not_found)?;
        let mut wanted = match &request.group_id {
            Some(group) => {
                crate::groups::require(conn, group)?;
                crate::groups::member_ids(conn, group)?
            }
            None => request.device_ids.clone(),
        };
        let mut seen = std::collections::HashSet::new();
        wanted.retain(|d| seen.insert(d.clone()));
        if wanted.is_empty() {
            return Err(invalid("the deployment has no target devices"));
        }
        if wanted.len() > MAX_DEPLOYMENT_TARGETS {
            return Err(ApiError::bad_request(
                ErrorCode::TooManyTargets,
                format!("at most {MAX_DEPLOYMENT_TARGETS} devices per deployment"),
            ));
        }
        let known = crate::devices::known_ids(conn, &wanted)?;
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
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub status: Option<String>,
    #[serde(rename = "releaseId")]
    pub release_id: Option<String>,
}

/// `GET /api/v1/firmware/deployments`: newest first, with per-status counts.
pub async fn list(
    _user: Authorized<ViewDevices>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> ApiResult<HttpResponse> {
    let (limit, offset) = paging(query.limit, query.offset)?;
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

/// The download progress of the devices still IN_PROGRESS, from their commands' records.
fn with_progress(conn: &mut DbConnection, deployment: &mut Deployment) -> ApiResult<()> {
    let Some(devices) = deployment.devices.as_mut() else {
        return Ok(());
    };
    let ids: Vec<String> = devices
        .iter()
        .filter(|d| d.status == DeviceDeploymentStatus::InProgress)
        .filter_map(|d| d.command_id.clone())
        .collect();
    let mut found = std::collections::HashMap::new();
    for chunk in ids.chunks(500) {
        let rows: Vec<(String, Option<i64>, Option<String>)> = commands::table
            .filter(commands::id.eq_any(chunk))
            .select((commands::id, commands::progress, commands::progress_message))
            .load(conn)?;
        found.extend(rows.into_iter().map(|(id, p, m)| (id, (p, m))));
    }
    for device in devices.iter_mut() {
        if device.status != DeviceDeploymentStatus::InProgress {
            continue;
        }
        if let Some((percent, message)) = device.command_id.as_ref().and_then(|c| found.get(c)) {
            device.progress = percent.map(|p| p.clamp(0, 100) as u8);
            device.progress_message = message.clone();
        }
    }
    Ok(())
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
        .source(audit::source_of(&req));
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
                    match crate::commands::cancel(conn, &row.device_id, command, &by) {
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
                        Err(e) => return Err(e),
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
    state.deployer.do_send(crate::deployer::Announce {
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
