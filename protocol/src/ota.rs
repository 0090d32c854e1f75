//! Bodies of the OTA routes for boards that run no agent (`ota-firmware-server.md`).
//! These keep the seed's snake_case names, which boards in the field already send.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OtaTokenRequest {
    pub device_id: String,
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_minutes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_fw: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OtaTokenResponse {
    pub token: String,
    pub expires_at: String,
    pub payload: Value,
}

/// A board listed for a project (`/api/v1/ota/projects/{project}/devices`): only a listed board
/// with `fwAccess` downloads the project's firmware, naming itself in `X-Device-ID`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct OtaBoard {
    pub project: String,
    pub device_id: String,
    pub fw_access: bool,
    /// The production line whose download budget the board's downloads count against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_line_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `PUT /api/v1/ota/projects/{project}/devices/{deviceId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtaBoardRequest {
    pub fw_access: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_line_id: Option<String>,
}

/// `POST /admin/revoke_token`: the token itself, or its `jti` (one of the two). The seed's
/// snake_case, like `/admin/generate_token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RevokeTokenRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// The header a board names itself in on a download (or `?device_id=`).
pub const DEVICE_ID_HEADER: &str = "X-Device-ID";
