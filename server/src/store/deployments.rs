//! Deployment rows and their targets: lookups, progress counts and which releases are in use.

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use protocol::firmware::{Deployment, DeploymentStatus, DeviceDeployment, DeviceDeploymentStatus};
use protocol::rest::DeviceStatus;
use schema::schema::{
    commands, devices, firmware_deployment_devices as targets, firmware_deployments as deployments,
};
use std::collections::BTreeMap;

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
    pub fn status(&self) -> DeviceDeploymentStatus {
        self.status
            .parse()
            .unwrap_or(DeviceDeploymentStatus::Failed)
    }

    pub fn to_api(&self) -> DeviceDeployment {
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
    pub fn is_settled(&self) -> bool {
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

    pub fn to_api(&self, rows: &[TargetRow], with_devices: bool) -> Deployment {
        let mut counts = zero_counts();
        for row in rows {
            *counts.entry(row.status()).or_default() += 1;
        }
        self.summary(
            counts,
            with_devices.then(|| rows.iter().map(TargetRow::to_api).collect()),
        )
    }

    pub fn summary(
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

pub fn zero_counts() -> BTreeMap<DeviceDeploymentStatus, u64> {
    DeviceDeploymentStatus::ALL
        .into_iter()
        .map(|s| (s, 0))
        .collect()
}

/// Per-status device counts of these deployments, counted by the database: a list page must
/// not load every device row of every deployment on it.
pub fn counts_of(
    conn: &mut DbConnection,
    ids: &[String],
) -> StoreResult<std::collections::HashMap<String, BTreeMap<DeviceDeploymentStatus, u64>>> {
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

pub fn not_found() -> StoreError {
    StoreError::not_found(ErrorCode::DeploymentNotFound, "no such deployment")
}

pub fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::bad_request(ErrorCode::InvalidBody, message)
}

pub fn find(conn: &mut DbConnection, id: &str) -> StoreResult<Option<DeploymentRow>> {
    Ok(deployments::table
        .find(id)
        .select(DeploymentRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn targets_of(conn: &mut DbConnection, id: &str) -> StoreResult<Vec<TargetRow>> {
    Ok(targets::table
        .filter(targets::deployment_id.eq(id))
        .order((targets::wave.asc(), targets::device_id.asc()))
        .select(TargetRow::as_select())
        .load(conn)?)
}

/// The devices of a deployment between their first download and a passed soak.
pub fn unsettled_of(conn: &mut DbConnection, id: &str) -> StoreResult<Vec<TargetRow>> {
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
pub fn online_among(
    conn: &mut DbConnection,
    ids: &[&str],
) -> StoreResult<std::collections::HashSet<String>> {
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
pub fn wave_of(conn: &mut DbConnection, id: &str, wave: i32) -> StoreResult<Vec<TargetRow>> {
    Ok(targets::table
        .filter(targets::deployment_id.eq(id))
        .filter(targets::wave.eq(wave))
        .order(targets::device_id.asc())
        .select(TargetRow::as_select())
        .load(conn)?)
}

/// Deployments that may still change: the actor looks at these on every tick.
pub fn unfinished(conn: &mut DbConnection) -> StoreResult<Vec<String>> {
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
pub fn watched_devices(conn: &mut DbConnection) -> StoreResult<Vec<(String, Option<String>)>> {
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
pub fn release_in_use(conn: &mut DbConnection, release_id: &str) -> StoreResult<bool> {
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

/// The download progress of the devices still IN_PROGRESS, from their commands' records.
pub fn with_progress(conn: &mut DbConnection, deployment: &mut Deployment) -> StoreResult<()> {
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

/// What the server knows about a device, as `advance` reads it.
#[derive(Debug, Clone, Queryable)]
pub struct DeviceView {
    pub id: String,
    pub status: String,
    pub version: Option<String>,
    pub run_id: Option<String>,
}
