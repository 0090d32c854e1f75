//! Firmware releases as the REST API shows them (`/api/v1/firmware/releases`).

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// One stored artifact. `storedName` is the file name under `<data dir>/firmware/` and under
/// `/firmware/<project>/` for boards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub signature_expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_by: Option<String>,
    pub created_at: Timestamp,
    /// Path of the artifact route, for a device or a script to download it.
    pub artifact_url: String,
}
