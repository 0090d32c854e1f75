//! Deployment rows and their targets: lookups, progress counts, which releases are in use, and
//! the operator's create, list, pause, resume and cancel.

use crate::store::db::DbConnection;
use crate::store::error::{ErrorCode, StoreError, StoreResult};
use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::firmware::{
    Deployment, DeploymentRequest, DeploymentStatus, DeviceDeployment, DeviceDeploymentStatus,
};
use protocol::rest::{DeviceStatus, Page};
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

/// Deployments per status, for the metrics; a status no deployment has is absent.
pub fn counts_by_status(conn: &mut DbConnection) -> StoreResult<Vec<(String, i64)>> {
    Ok(deployments::table
        .group_by(deployments::status)
        .select((deployments::status, diesel::dsl::count_star()))
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

/// The waves of `n` targets: the size of one, and how many.
pub fn wave_plan(n: usize, request: &DeploymentRequest) -> StoreResult<(usize, usize)> {
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

/// Creates a RUNNING deployment of a release to the devices or the group a request names,
/// with one PENDING target row per device. Runs in the caller's write transaction, so the
/// check that no device is still in another rollout and the insert cannot be split by a
/// concurrent create.
pub fn create_deployment(
    conn: &mut DbConnection,
    request: &DeploymentRequest,
    created_by: String,
) -> StoreResult<(DeploymentRow, Vec<TargetRow>)> {
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
        return Err(invalid("the deployment has no target devices"));
    }
    if wanted.len() > MAX_DEPLOYMENT_TARGETS {
        return Err(StoreError::bad_request(
            ErrorCode::TooManyTargets,
            format!("at most {MAX_DEPLOYMENT_TARGETS} devices per deployment"),
        ));
    }
    let known = crate::store::devices::known_ids(conn, &wanted)?;
    if let Some(missing) = wanted.iter().find(|d| !known.contains(*d)) {
        return Err(StoreError::not_found(
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
            return Err(StoreError::conflict(
                ErrorCode::DeviceInDeployment,
                format!("device {device} is still in deployment {deployment}"),
            ));
        }
    }
    let (wave_size, waves) = wave_plan(wanted.len(), request)?;
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
            .unwrap_or(DEFAULT_FAILURE_THRESHOLD_PERCENT) as i32,
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
}

/// One page of deployments, newest first, each with its per-status counts; `status` and
/// `release_id` filter when given.
pub fn page(
    conn: &mut DbConnection,
    status: Option<&str>,
    release_id: Option<&str>,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<Deployment>> {
    let filtered = || {
        let mut q = deployments::table.into_boxed();
        if let Some(s) = status {
            q = q.filter(deployments::status.eq(s.to_owned()));
        }
        if let Some(r) = release_id {
            q = q.filter(deployments::release_id.eq(r.to_owned()));
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
}

/// What an operator asks of a deployment.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    Pause,
    Resume,
    Cancel,
}

impl Control {
    /// The audit action of the request.
    pub fn action(self) -> &'static str {
        match self {
            Control::Pause => "firmware.deployment.pause",
            Control::Resume => "firmware.deployment.resume",
            Control::Cancel => "firmware.deployment.cancel",
        }
    }
}

/// Pauses, resumes or cancels a deployment and answers it with every device's state. The
/// deployment row changes by a conditional update from the state read here, so an operator's
/// request and the deployer's promotion cannot both win.
pub fn control_deployment(
    conn: &mut DbConnection,
    id: &str,
    control: Control,
    by: &str,
) -> StoreResult<Deployment> {
    use crate::store::rollout::{set_deployment, set_target};
    let row = find(conn, id)?.ok_or_else(not_found)?;
    let now = Utc::now().naive_utc();
    let from = row.status();
    let to = match (control, from) {
        (Control::Pause, DeploymentStatus::Running) => DeploymentStatus::Paused,
        (Control::Resume, DeploymentStatus::Paused) => DeploymentStatus::Running,
        (Control::Cancel, DeploymentStatus::Running | DeploymentStatus::Paused) => {
            DeploymentStatus::Cancelled
        }
        _ => {
            return Err(StoreError::conflict(
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
                    .filter(targets::deployment_id.eq(id))
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
                .filter(targets::deployment_id.eq(id))
                .filter(targets::status.eq(DeviceDeploymentStatus::InProgress.as_str()))
                .select(TargetRow::as_select())
                .load(conn)?;
            for row in started {
                let Some(command) = &row.command_id else {
                    continue;
                };
                match crate::store::commands::cancel(conn, &row.device_id, command, by) {
                    Ok(_) => {
                        set_target(
                            conn,
                            &row,
                            DeviceDeploymentStatus::Cancelled,
                            Some(
                                "the deployment was cancelled before the device took the update"
                                    .into(),
                            ),
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
                    .filter(targets::deployment_id.eq(id))
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
    let row = find(conn, id)?.ok_or_else(not_found)?;
    let targets = targets_of(conn, id)?;
    Ok(row.to_api(&targets, true))
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
