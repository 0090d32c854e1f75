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

/// Device → server: the optional first-frame authentication, then events, one per frame or
/// several telemetry events in a `batch` frame (an addition to the contract: a device with
/// a backlog sends one frame per `MAX_BATCH_EVENTS` events instead of one per event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeviceFrame {
    Auth {
        token: String,
    },
    /// `{"type": "batch", "events": [...]}`: at most `limits::MAX_BATCH_EVENTS` events,
    /// handled as if each had come in its own frame, in order.
    Batch {
        events: Vec<TelemetryEvent>,
    },
    #[serde(untagged)]
    Event(DeviceEvent),
}

/// The events a `batch` frame may carry: telemetry. Command results and progress are not
/// among them; they always travel alone so that nothing waits behind a backlog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TelemetryEvent {
    Status(StatusEvent),
    LogLine(LogLineEvent),
    Scan(ScanEvent),
    Print(PrintEvent),
    Alert(AlertEvent),
}

impl From<TelemetryEvent> for DeviceEvent {
    fn from(event: TelemetryEvent) -> Self {
        match event {
            TelemetryEvent::Status(e) => DeviceEvent::Status(e),
            TelemetryEvent::LogLine(e) => DeviceEvent::LogLine(e),
            TelemetryEvent::Scan(e) => DeviceEvent::Scan(e),
            TelemetryEvent::Print(e) => DeviceEvent::Print(e),
            TelemetryEvent::Alert(e) => DeviceEvent::Alert(e),
        }
    }
}

impl TryFrom<DeviceEvent> for TelemetryEvent {
    /// Command results and progress, which are not telemetry.
    type Error = DeviceEvent;

    fn try_from(event: DeviceEvent) -> Result<Self, DeviceEvent> {
        match event {
            DeviceEvent::Status(e) => Ok(TelemetryEvent::Status(e)),
            DeviceEvent::LogLine(e) => Ok(TelemetryEvent::LogLine(e)),
            DeviceEvent::Scan(e) => Ok(TelemetryEvent::Scan(e)),
            DeviceEvent::Print(e) => Ok(TelemetryEvent::Print(e)),
            DeviceEvent::Alert(e) => Ok(TelemetryEvent::Alert(e)),
            other => Err(other),
        }
    }
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

/// Longest device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// What a valid device id is, for messages that refuse one.
pub const DEVICE_ID_RULE: &str =
    "device id must be 1-128 characters of letters, digits, '-', '_' or '.', not starting with '.'";

/// Whether `id` is a valid device id: 1-128 ASCII letters, digits, `-`, `_` or `.`, not
/// starting with `.` (ids name files and appear in URLs).
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.')
}
