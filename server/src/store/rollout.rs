//! The deployment state machine: each step of a rollout (stage a wave, activate it, soak,
//! settle a download, take an alert) as one transaction that returns the effects the deployer
//! then carries out.

use crate::store::db::DbConnection;
use crate::store::deployments::*;
use crate::store::error::StoreResult;
use chrono::{Duration as ChronoDuration, NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::commands::{Command, CommandKind};
use protocol::firmware::{DeploymentStatus, DeviceDeploymentStatus};
use protocol::rest::{CommandStatus, DeviceStatus};
use schema::schema::{
    commands, devices, firmware_deployment_devices as targets, firmware_deployments as deployments,
};
use serde_json::{json, Value};

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

/// One target while it is still in `status`: every transition is conditional on the state it
/// leaves, so that two writers (a pass and a cancel) never both move the same row.
#[diesel::dsl::auto_type(no_type_alias)]
pub fn target_in<'a>(deployment_id: &'a str, device_id: &'a str, status: &'a str) -> _ {
    targets::table
        .filter(targets::deployment_id.eq(deployment_id))
        .filter(targets::device_id.eq(device_id))
        .filter(targets::status.eq(status))
}

pub fn set_target(
    conn: &mut DbConnection,
    row: &TargetRow,
    status: DeviceDeploymentStatus,
    reason: Option<String>,
    now: NaiveDateTime,
) -> StoreResult<bool> {
    let n = diesel::update(target_in(&row.deployment_id, &row.device_id, &row.status))
        .set((
            targets::status.eq(status.as_str()),
            targets::reason.eq(reason),
            targets::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

pub fn device_effect(
    row: &TargetRow,
    status: DeviceDeploymentStatus,
    detail: Option<Value>,
) -> Effect {
    Effect::Device {
        deployment_id: row.deployment_id.clone(),
        device_id: row.device_id.clone(),
        status,
        detail,
    }
}

pub fn fail(
    conn: &mut DbConnection,
    row: &TargetRow,
    reason: String,
    now: NaiveDateTime,
    effects: &mut Vec<Effect>,
) -> StoreResult<()> {
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
pub fn update_command(
    conn: &mut DbConnection,
    deployment: &DeploymentRow,
    command_id: String,
) -> StoreResult<Option<Command>> {
    let Some(release) = crate::store::firmware::find(conn, &deployment.release_id)? else {
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
            project: Some(release.project.clone()),
            manifest_allow_downgrade: release.allow_downgrade,
            security_floor: release.security_floor.map(|f| f.max(0) as u64),
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
) -> StoreResult<Vec<Effect>> {
    crate::store::db::write_transaction(conn, |conn| {
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
        let views = device_views(conn, &rows)?;
        let step = Step {
            deployment: &deployment,
            carried,
            timeouts,
            now,
        };
        for row in &rows {
            reconcile_target(conn, &step, row, views.get(&row.device_id), &mut effects)?;
        }
        if status != DeploymentStatus::Running {
            return Ok(effects);
        }
        let Some(mut rows) = settle_waves(conn, &mut deployment, now, &mut effects)? else {
            return Ok(effects);
        };
        start_downloads(conn, &deployment, &mut rows, timeouts, now, &mut effects)?;
        Ok(effects)
    })
}

/// What every step of one pass over a deployment reads.
struct Step<'a> {
    deployment: &'a DeploymentRow,
    carried: &'a Carried,
    timeouts: Timeouts,
    now: NaiveDateTime,
}

/// The device rows (status, version, run id) of the targets a pass looks at, by device id.
fn device_views(
    conn: &mut DbConnection,
    rows: &[TargetRow],
) -> StoreResult<std::collections::HashMap<String, DeviceView>> {
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
    Ok(views)
}

/// Takes one unsettled target a step further from what its device reports: an ended
/// download, a staged device back on the new version, the end of its soak.
fn reconcile_target(
    conn: &mut DbConnection,
    step: &Step,
    row: &TargetRow,
    view: Option<&DeviceView>,
    effects: &mut Vec<Effect>,
) -> StoreResult<()> {
    let Step { carried, now, .. } = *step;
    match row.status() {
        DeviceDeploymentStatus::InProgress => {
            let awaited = row
                .command_id
                .as_ref()
                .is_some_and(|c| carried.awaited.contains(c));
            if !awaited {
                settle_download(conn, row, carried, now, effects)?;
            }
        }
        DeviceDeploymentStatus::Staged => activate_staged(conn, step, row, view, effects)?,
        DeviceDeploymentStatus::Active if row.verified_at.is_none() => {
            check_soak(conn, step, row, view, effects)?
        }
        _ => {}
    }
    Ok(())
}

/// A STAGED device: ACTIVE once it is back online on the deployment's version, FAILED when it
/// was deleted or did not come back within the activation timeout.
fn activate_staged(
    conn: &mut DbConnection,
    step: &Step,
    row: &TargetRow,
    view: Option<&DeviceView>,
    effects: &mut Vec<Effect>,
) -> StoreResult<()> {
    let Step {
        deployment,
        timeouts,
        now,
        ..
    } = *step;
    let online = view.is_some_and(|v| v.status == DeviceStatus::Online.as_str());
    let reported = view.and_then(|v| v.version.as_deref());
    if view.is_none() {
        fail(conn, row, "the device was deleted".into(), now, effects)?;
    } else if online && reported == Some(deployment.version.as_str()) {
        let soak_until = now + ChronoDuration::seconds(deployment.soak_secs.into());
        let n = diesel::update(target_in(&row.deployment_id, &row.device_id, &row.status))
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
    } else if now - row.updated_at > ChronoDuration::from_std(timeouts.activate).unwrap_or_default()
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
            effects,
        )?;
    }
    Ok(())
}

/// An ACTIVE device in its soak: FAILED when it reports another version or restarted,
/// verified when the soak ends with it online.
fn check_soak(
    conn: &mut DbConnection,
    step: &Step,
    row: &TargetRow,
    view: Option<&DeviceView>,
    effects: &mut Vec<Effect>,
) -> StoreResult<()> {
    let Step {
        deployment, now, ..
    } = *step;
    let online = view.is_some_and(|v| v.status == DeviceStatus::Online.as_str());
    let reported = view.and_then(|v| v.version.as_deref());
    let Some(view) = view else {
        fail(conn, row, "the device was deleted".into(), now, effects)?;
        return Ok(());
    };
    if reported != Some(deployment.version.as_str()) {
        let reason = format!(
            "unhealthy after the update: the device now reports version {}",
            reported.unwrap_or("none")
        );
        fail(conn, row, reason, now, effects)?;
    } else if row.run_id.is_some() && view.run_id != row.run_id {
        let reason = "unhealthy after the update: the device restarted during the \
                      soak"
            .to_owned();
        fail(conn, row, reason, now, effects)?;
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
            let reason = "unhealthy after the update: offline at the end of the soak".to_owned();
            fail(conn, row, reason, now, effects)?;
        }
    }
    Ok(())
}

/// Settles the current wave: pauses the deployment past the failure threshold, promotes the
/// next wave or completes the deployment once every target is settled. Answers the current
/// wave's targets for the download step, or `None` when this pass ends here.
fn settle_waves(
    conn: &mut DbConnection,
    deployment: &mut DeploymentRow,
    now: NaiveDateTime,
    effects: &mut Vec<Effect>,
) -> StoreResult<Option<Vec<TargetRow>>> {
    let id = deployment.id.clone();
    let id = id.as_str();
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
                deployment,
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
            return Ok(None);
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
                    return Ok(None);
                }
                deployment.current_wave = wave + 1;
                effects.push(Effect::Deployment {
                    deployment_id: id.to_owned(),
                    status: DeploymentStatus::Running,
                    detail: json!({ "currentWave": wave + 1 }),
                });
                continue;
            }
            if set_deployment(conn, deployment, DeploymentStatus::Completed, None, now)? {
                effects.push(Effect::Deployment {
                    deployment_id: id.to_owned(),
                    status: DeploymentStatus::Completed,
                    detail: json!({ "currentWave": wave }),
                });
            }
            return Ok(None);
        }
        break;
    }
    Ok(Some(rows))
}

/// Starts downloads in the current wave, within the deployment's cap.
fn start_downloads(
    conn: &mut DbConnection,
    deployment: &DeploymentRow,
    rows: &mut [TargetRow],
    timeouts: Timeouts,
    now: NaiveDateTime,
    effects: &mut Vec<Effect>,
) -> StoreResult<()> {
    let id = deployment.id.as_str();
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
        let Some(command) = update_command(conn, deployment, command_id.clone())? else {
            fail(conn, row, "the release was deleted".into(), now, effects)?;
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
            crate::store::commands::insert_pending(
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
    Ok(())
}

/// An IN_PROGRESS device whose answer the actor does not await: the command was queued for an
/// offline device, or the server restarted during the download. The command's record says how
/// it ended; one still queued (or delivered from the queue in this run) is left to the
/// dispatcher; one a restart orphaned is sent again under a fresh id (the agent resumes a
/// partial download, and re-staging is harmless).
pub fn settle_download(
    conn: &mut DbConnection,
    row: &TargetRow,
    carried: &Carried,
    now: NaiveDateTime,
    effects: &mut Vec<Effect>,
) -> StoreResult<()> {
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

pub fn set_deployment(
    conn: &mut DbConnection,
    deployment: &DeploymentRow,
    status: DeploymentStatus,
    paused_reason: Option<&str>,
    now: NaiveDateTime,
) -> StoreResult<bool> {
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
) -> StoreResult<Option<Effect>> {
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
) -> StoreResult<Vec<Effect>> {
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
