//! What every handler shares: the database, the token keys, the settings and the actors.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use crate::auth::JwtKeys;
use crate::cloud_sync::{CloudSync, CloudTarget, SharedStats};
use crate::config::Config;
use crate::dashboard_registry::DashboardRegistry;
use crate::db::Db;
use crate::deployer::FirmwareDeployer;
use crate::dispatcher::CommandDispatcher;
use crate::events::EventBus;
use crate::presence::PresenceWriter;
use crate::ratelimit::FailureLimiter;
use crate::registry::DeviceRegistry;
use crate::telemetry::TelemetrySink;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub jwt: JwtKeys,
    pub config: Arc<Config>,
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
}

/// The failure counters of login and enrollment.
#[derive(Debug)]
pub struct Limits {
    pub login_by_account: FailureLimiter,
    pub login_by_source: FailureLimiter,
    pub enroll_by_source: FailureLimiter,
    pub enroll_by_device: FailureLimiter,
}

impl Limits {
    pub fn from_config(config: &Config) -> Self {
        let window = Duration::from_secs(config.lockout_secs);
        Limits {
            login_by_account: FailureLimiter::new(config.login_max_failures, window),
            login_by_source: FailureLimiter::new(config.source_max_failures, window),
            enroll_by_source: FailureLimiter::new(config.source_max_failures, window),
            enroll_by_device: FailureLimiter::new(config.login_max_failures, window),
        }
    }

    pub fn prune(&self) {
        self.login_by_account.prune();
        self.login_by_source.prune();
        self.enroll_by_source.prune();
        self.enroll_by_device.prune();
    }
}
