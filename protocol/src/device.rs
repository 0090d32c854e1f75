//! Frames of the device WebSocket, `/ws/device`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::commands::{Command, CommandProgress, CommandResult};
use crate::Timestamp;

/// Server → device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    #[serde(rename_all = "camelCase")]
    Hello {
        device_id: String,
        server_time: Timestamp,
    },
    #[serde(rename_all = "camelCase")]
    Command { command: Command, timeout_ms: u64 },
    /// A frame the server could not take; the session stays open.
    Error { code: String, message: String },
}

/// Device → server: the optional first-frame authentication, then events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeviceFrame {
    Auth {
        token: String,
    },
    #[serde(untagged)]
    Event(DeviceEvent),
}

/// Everything a device reports once it is authenticated. The same events, with `deviceId`
/// added, are what dashboards receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeviceEvent {
    CommandResult(CommandResult),
    CommandProgress(CommandProgress),
    Status(StatusEvent),
    LogLine(LogLineEvent),
    Scan(ScanEvent),
    Print(PrintEvent),
    Alert(AlertEvent),
}

impl DeviceEvent {
    /// The `type` tag, used by dashboard filters.
    pub fn event_type(&self) -> &'static str {
        match self {
            DeviceEvent::CommandResult(_) => "command_result",
            DeviceEvent::CommandProgress(_) => "command_progress",
            DeviceEvent::Status(_) => "status",
            DeviceEvent::LogLine(_) => "log_line",
            DeviceEvent::Scan(_) => "scan",
            DeviceEvent::Print(_) => "print",
            DeviceEvent::Alert(_) => "alert",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEvent {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The operating system's boot id; changes on reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Changes on every start of the agent process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Value>,
    pub ts: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLineEvent {
    pub line: String,
    pub level: String,
    pub ts: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanEvent {
    pub code: String,
    pub valid: bool,
    pub ts: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrintEvent {
    pub code: String,
    pub ts: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub severity: String,
    pub message: String,
    pub ts: Timestamp,
}
