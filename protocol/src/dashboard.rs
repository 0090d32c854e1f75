//! Frames of the dashboard WebSocket, `/ws/dashboard`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::device::DeviceEvent;

/// Browser → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DashboardClientFrame {
    Auth {
        token: String,
    },
    /// Either list absent means all; a later subscribe replaces the earlier one.
    #[serde(rename_all = "camelCase")]
    Subscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_ids: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_types: Option<Vec<String>>,
    },
}

/// A device event as a dashboard sees it: the device's own frame with `deviceId` added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardEvent {
    pub device_id: String,
    #[serde(flatten)]
    pub event: DeviceEvent,
}

/// Server → browser frames that are not device events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DashboardNotice {
    /// How many events this dashboard missed because it read too slowly.
    Dropped {
        count: u64,
    },
    /// Progress of a firmware deployment on one device.
    #[serde(rename_all = "camelCase")]
    Deployment {
        deployment_id: String,
        device_id: String,
        status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<Value>,
    },
    Error {
        code: String,
        message: String,
    },
}
