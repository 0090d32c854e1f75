//! Firmware releases as the REST API shows them (`/api/v1/firmware/releases`).

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

/// One stored artifact. `storedName` is the file name under `<data dir>/firmware/` and under
/// `/firmware/<project>/` for boards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FirmwareRelease {
    pub id: String,
    pub project: String,
    pub version: String,
    pub channel: String,
    pub filename: String,
    pub stored_name: String,
    pub size: i64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_by: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Path of the artifact route, for a device or a script to download it.
    pub artifact_url: String,
    /// The signed manifest permits this release to replace a newer version.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// The signed manifest's security floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_floor: Option<u64>,
}

/// `POST /api/v1/firmware/deployments`: a release to a list of devices or to a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentRequest {
    pub release_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Devices per wave. Absent (and no `wavePercent`): one wave of every target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_size: Option<u32>,
    /// Devices per wave as a share of the targets, rounded up (1–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_percent: Option<u32>,
    /// At most this many devices download at once; absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_downloads: Option<u32>,
    /// The deployment pauses by itself when more than this share of a wave failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold_percent: Option<u32>,
    /// How long a device must stay healthy on the new version before its wave counts as done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_secs: Option<u32>,
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// A deployment as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    Running,
    Paused,
    Cancelled,
    Completed,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Running => "RUNNING",
            DeploymentStatus::Paused => "PAUSED",
            DeploymentStatus::Cancelled => "CANCELLED",
            DeploymentStatus::Completed => "COMPLETED",
        }
    }
}

impl std::str::FromStr for DeploymentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "RUNNING" => DeploymentStatus::Running,
            "PAUSED" => DeploymentStatus::Paused,
            "CANCELLED" => DeploymentStatus::Cancelled,
            "COMPLETED" => DeploymentStatus::Completed,
            other => return Err(format!("unknown deployment status `{other}`")),
        })
    }
}

/// One device's part: PENDING → IN_PROGRESS (downloading) → STAGED (verified and staged,
/// restarting) → ACTIVE (back on the new version), or FAILED with a reason, or CANCELLED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeviceDeploymentStatus {
    Pending,
    InProgress,
    Staged,
    Active,
    Failed,
    Cancelled,
}

impl DeviceDeploymentStatus {
    pub const ALL: [DeviceDeploymentStatus; 6] = [
        DeviceDeploymentStatus::Pending,
        DeviceDeploymentStatus::InProgress,
        DeviceDeploymentStatus::Staged,
        DeviceDeploymentStatus::Active,
        DeviceDeploymentStatus::Failed,
        DeviceDeploymentStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceDeploymentStatus::Pending => "PENDING",
            DeviceDeploymentStatus::InProgress => "IN_PROGRESS",
            DeviceDeploymentStatus::Staged => "STAGED",
            DeviceDeploymentStatus::Active => "ACTIVE",
            DeviceDeploymentStatus::Failed => "FAILED",
            DeviceDeploymentStatus::Cancelled => "CANCELLED",
        }
    }
}

impl std::str::FromStr for DeviceDeploymentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeviceDeploymentStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown device deployment status `{s}`"))
    }
}

/// One device in a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceDeployment {
    pub device_id: String,
    /// Waves count from 1.
    pub wave: u32,
    pub status: DeviceDeploymentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// While IN_PROGRESS: the download's percentage and message, as the device last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_message: Option<String>,
    /// Set while the device soaks on the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_until: Option<DateTime<Utc>>,
    /// Set when it stayed healthy for the whole soak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A deployment, with per-status counts; `devices` only on `GET …/deployments/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub release_id: String,
    pub version: String,
    pub status: DeploymentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_reason: Option<String>,
    /// The wave being rolled out, from 1.
    pub current_wave: u32,
    pub waves: u32,
    pub wave_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_downloads: Option<u32>,
    pub failure_threshold_percent: u32,
    pub soak_secs: u32,
    pub allow_downgrade: bool,
    pub counts: std::collections::BTreeMap<DeviceDeploymentStatus, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceDeployment>>,
}

/// The project the edge agent's own releases are uploaded under; an agent verifies a
/// signature over this project name only, so a release of another product cannot pass as one.
pub const AGENT_PROJECT: &str = "edge";

/// First line of the signed manifest, naming its format.
pub const MANIFEST_HEADER: &str = "factory-firmware-manifest-v1";

/// The canonical bytes a release signature covers: the header, then one `key=value` line each
/// for the project, version, artifact digest (lowercase hex), size and expiry (Unix seconds).
/// A manifest without rollback fields; `Manifest::bytes` writes those too.
pub fn manifest_bytes(
    project: &str,
    version: &str,
    sha256_hex: &str,
    size: u64,
    expires_unix: i64,
) -> Vec<u8> {
    format!(
        "{MANIFEST_HEADER}\nproject={project}\nversion={version}\nsha256={sha256_hex}\nsize={size}\nexpires={expires_unix}\n"
    )
    .into_bytes()
}

/// Everything a release signature vouches for. The first six lines are the original manifest;
/// the rollback fields add a line each only when set, so a manifest signed before they existed
/// (no permission, no floor) has exactly the bytes it had, and its signature still verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub project: String,
    pub version: String,
    /// The artifact's SHA-256, lowercase hex.
    pub sha256: String,
    pub size: u64,
    /// The signature is worthless after this (Unix seconds): a device refuses a frozen
    /// (replayed stale) manifest.
    pub expires_unix: i64,
    /// The signer allows this release to replace a newer version (`downgrade=allowed`).
    pub allow_downgrade: bool,
    /// The release's security floor (`security_floor=N`): a device that accepted it never
    /// stages a release of a lower floor again (an absent floor counts as 0).
    pub security_floor: Option<u64>,
}

impl Manifest {
    /// The signed bytes: `manifest_bytes`, then `downgrade=allowed` and `security_floor=N` when
    /// set, in that order, each ending in `\n`.
    pub fn bytes(&self) -> Vec<u8> {
        let mut bytes = manifest_bytes(
            &self.project,
            &self.version,
            &self.sha256.to_ascii_lowercase(),
            self.size,
            self.expires_unix,
        );
        if self.allow_downgrade {
            bytes.extend_from_slice(b"downgrade=allowed\n");
        }
        if let Some(floor) = self.security_floor {
            bytes.extend_from_slice(format!("security_floor={floor}\n").as_bytes());
        }
        bytes
    }
}

/// First line of a signed key-rotation message.
pub const ROTATION_HEADER: &str = "factory-keyring-rotation-v1";

/// A change of the keys a device trusts for releases: keys to add and keys to retire, signed
/// by a key the device trusts already. `sequence` only grows: a device applies a rotation only
/// when its sequence is above every one it applied, so an old message cannot be replayed to
/// bring a retired key back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotation {
    /// Base64 of raw 32-byte Ed25519 public keys, as written in the settings.
    pub add: Vec<String>,
    pub retire: Vec<String>,
    pub sequence: u64,
    pub expires_unix: i64,
}

impl KeyRotation {
    /// The signed bytes: the header, `sequence=`, `expires=`, then one `add=` line per added key
    /// and one `retire=` line per retired key, in the order given, each ending in `\n`.
    pub fn bytes(&self) -> Vec<u8> {
        let mut text = format!(
            "{ROTATION_HEADER}\nsequence={}\nexpires={}\n",
            self.sequence, self.expires_unix
        );
        for key in &self.add {
            text.push_str(&format!("add={key}\n"));
        }
        for key in &self.retire {
            text.push_str(&format!("retire={key}\n"));
        }
        text.into_bytes()
    }
}
