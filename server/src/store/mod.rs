//! Rows and queries, one file per resource. Nothing here knows about HTTP or actors: every
//! function takes a connection and answers with a `StoreError` the edge maps to its own error.

pub mod audit;
pub mod boards;
pub mod command_batch;
pub mod commands;
pub mod counters;
pub mod db;
pub mod deployments;
pub mod devices;
pub mod error;
pub mod executor;
pub mod failures;
pub mod firmware;
pub mod groups;
pub mod leases;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod rollout;
pub mod sync;
pub mod telemetry;
pub mod tokens;
pub mod users;

pub use error::{StoreError, StoreResult};
