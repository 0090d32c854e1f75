//! The bodies of the chart routes: a device's metric series, production throughput and the
//! fleet summary. Times are RFC 3339 UTC; a point's `ts` is the start of its step.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The stored resolution an answer was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// Every status as the device sent it.
    Raw,
    /// One-minute buckets.
    Minute,
    /// One-hour buckets.
    Hour,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Minute => "minute",
            Resolution::Hour => "hour",
        }
    }
}

/// One step of a metric: the samples that fell into it, summed up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MetricPoint {
    pub ts: DateTime<Utc>,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub count: i64,
}

/// One metric's points, oldest first; steps without samples are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MetricSeries {
    pub metric: String,
    pub points: Vec<MetricPoint>,
}

/// `GET /api/v1/devices/{id}/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeviceMetrics {
    pub device_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Seconds per point.
    pub step: i64,
    pub resolution: Resolution,
    pub series: Vec<MetricSeries>,
}

/// Production counts of one step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ThroughputPoint {
    pub ts: DateTime<Utc>,
    pub scans_valid: i64,
    pub scans_invalid: i64,
    pub prints: i64,
    pub batches: i64,
    pub pallets: i64,
}

/// One production line of one company; every step of the range, zeros included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ThroughputSeries {
    pub production_line_id: Option<String>,
    pub company_id: Option<String>,
    pub points: Vec<ThroughputPoint>,
}

/// `GET /api/v1/production/throughput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Throughput {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step: i64,
    pub series: Vec<ThroughputSeries>,
}

/// The fleet in one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FleetPoint {
    pub ts: DateTime<Utc>,
    /// Devices that sent a status in the step (the most in any one minute or hour of it).
    pub online: i64,
    /// Commands created in the step, by the state they are in now.
    pub commands: BTreeMap<String, i64>,
    /// Deployment targets whose state last changed in the step, by that state.
    pub deployment_devices: BTreeMap<String, i64>,
}

/// `GET /api/v1/fleet/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FleetSummary {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step: i64,
    pub resolution: Resolution,
    pub points: Vec<FleetPoint>,
    /// Deployments by their state now.
    pub deployments: BTreeMap<String, i64>,
}
