//! What every handler shares: the database, the token keys, the settings and the actors.

use std::sync::Arc;

use actix::Addr;

use crate::actors::cloud_sync::{CloudSync, CloudTarget, SharedStats};
use crate::actors::dashboard_registry::DashboardRegistry;
use crate::actors::deployer::FirmwareDeployer;
use crate::actors::dispatcher::CommandDispatcher;
use crate::actors::events::EventBus;
use crate::actors::presence::PresenceWriter;
use crate::actors::registry::DeviceRegistry;
use crate::actors::telemetry::TelemetrySink;
use crate::budget::DownloadBudget;
use crate::config::Config;
use crate::jwt::JwtKeys;
pub use crate::limits::Limits;
use crate::policy::Policy;
use crate::store::db::Db;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub jwt: JwtKeys,
    pub config: Arc<Config>,
    /// Who may send which command: the seed's table and the `[rights]` settings, read at start.
    pub policy: Arc<Policy>,
    pub registry: Addr<DeviceRegistry>,
    pub dispatcher: Addr<CommandDispatcher>,
    pub deployer: Addr<FirmwareDeployer>,
    pub presence: Addr<PresenceWriter>,
    pub bus: Addr<EventBus>,
    pub cloud: Addr<CloudSync>,
    pub cloud_stats: SharedStats,
    /// The cloud target now in force, kept so a partial update can fill in the rest.
    pub cloud_target: Arc<std::sync::Mutex<Option<CloudTarget>>>,
    pub telemetry: Addr<TelemetrySink>,
    pub limits: Arc<Limits>,
    /// Open dashboard sockets: their caps, and how revocations reach them.
    pub dashboards: Arc<DashboardRegistry>,
    /// Artifact transfers at once, in all and per production line.
    pub downloads: Arc<DownloadBudget>,
}
