//! The actors: one per file, each owning one piece of live state (a socket, the registry of
//! connected devices, the command dispatcher, the firmware deployer, ...).

pub mod cloud_sync;
pub mod cluster;
pub mod command_writer;
pub mod dashboard_registry;
pub mod deployer;
pub mod dispatcher;
pub mod events;
pub mod janitor;
pub mod presence;
pub mod registry;
pub mod session;
pub mod telemetry;
