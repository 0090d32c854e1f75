//! Every type that crosses a socket or a REST body between the factory server, edge agents
//! and dashboards.
//!
//! The names and shapes here are those of `contract.md`; devices in the field depend on them,
//! so a change to a field name is a protocol break, not a refactoring. This crate depends on
//! neither actix nor diesel, so the agent, the server and test clients share it freely.

pub mod charts;
pub mod codes;
pub mod commands;
pub mod dashboard;
pub mod device;
pub mod firmware;
pub mod hex;
pub mod limits;
pub mod ota;
pub mod rest;
pub mod signing;
pub mod sync;

pub use commands::{Command, CommandKind, CommandProgress, CommandResult, CommandType};
pub use device::{DeviceEvent, DeviceFrame, ServerFrame};

/// Timestamps on the wire are RFC 3339 in UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
