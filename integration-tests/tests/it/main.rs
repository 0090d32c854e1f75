//! The end-to-end tests, one binary (CI links it once): real `factory-server` and `edge-agent`
//! processes driven over real sockets, a module per area. Test paths keep the area's name
//! (`commands::sqlite::…`, `hostile::flood::postgres::…`); `scripts/test.sh` runs `hostile::`
//! in a pass of its own. `tidy` checks the workspace's source text.
//!
//! The binaries must be built first: `cargo build --workspace --bins`.

mod common;

mod admin_cli;
mod agent_commands;
mod agent_firmware;
mod benchmark;
mod charts_e2e;
mod cloud;
mod commands;
mod dashboard_e2e;
mod deployments;
mod edge_agent;
mod firmware;
mod first_run;
mod hostile;
mod metrics;
mod openapi;
mod printer;
mod rbac;
mod scaleout;
mod scaleout_gaps;
mod scaleout_limits;
mod security;
mod supply_chain;
mod sync_route;
mod telemetry;
mod testdb;
mod tidy;
mod tls;
mod updater;
mod walking_skeleton;
