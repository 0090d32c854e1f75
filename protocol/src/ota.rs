//! Bodies of the OTA routes for boards that run no agent (`ota-firmware-server.md`).
//! These keep the seed's snake_case names, which boards in the field already send.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaTokenRequest {
    pub device_id: String,
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_minutes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_fw: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtaTokenResponse {
    pub token: String,
    pub expires_at: String,
    pub payload: Value,
}
