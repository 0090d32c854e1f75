//! What every handler shares: the database, the token keys, the settings and the actors.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use crate::actors::cloud_sync::{CloudSync, CloudTarget, SharedStats};
use crate::actors::dashboard_registry::DashboardRegistry;
use crate::actors::deployer::FirmwareDeployer;
use crate::actors::dispatcher::CommandDispatcher;
use crate::actors::events::EventBus;
use crate::actors::presence::PresenceWriter;
use crate::actors::registry::DeviceRegistry;
use crate::actors::telemetry::TelemetrySink;
use crate::auth::JwtKeys;
use crate::config::Config;
use crate::hashing::HashGate;
use crate::ratelimit::{FailureLimiter, Label, Summary};
use crate::store::db::Db;

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

/// The failure counters of every unauthenticated attempt, and the gate password checks pass.
#[derive(Debug)]
pub struct Limits {
    pub login_by_account: FailureLimiter,
    pub login_by_source: FailureLimiter,
    pub enroll_by_source: FailureLimiter,
    pub enroll_by_device: FailureLimiter,
    /// Wrong `X-Admin-Secret`s on `POST /admin/generate_token`.
    pub ota_by_source: FailureLimiter,
    /// Refused user, device and OTA tokens, on every route that takes one.
    pub token_by_source: FailureLimiter,
    pub hashing: HashGate,
}

impl Limits {
    pub fn from_config(config: &Config) -> std::io::Result<Self> {
        let window = Duration::from_secs(config.lockout_secs);
        let limiter = |action, key, max| FailureLimiter::new(Label { action, key }, max, window);
        Ok(Limits {
            login_by_account: limiter("auth.login", "account", config.login_max_failures),
            login_by_source: limiter("auth.login", "source", config.source_max_failures),
            enroll_by_source: limiter("device.token", "source", config.source_max_failures),
            enroll_by_device: limiter("device.token", "device", config.login_max_failures),
            ota_by_source: limiter("ota.token.generate", "source", config.source_max_failures),
            token_by_source: limiter("auth.token", "source", config.token_max_failures),
            hashing: HashGate::per_core()?,
        })
    }

    fn all(&self) -> [&FailureLimiter; 6] {
        [
            &self.login_by_account,
            &self.login_by_source,
            &self.enroll_by_source,
            &self.enroll_by_device,
            &self.ota_by_source,
            &self.token_by_source,
        ]
    }

    pub fn prune(&self) {
        for limiter in self.all() {
            limiter.prune();
        }
    }

    /// Every limiter's refusals since the last call, one summary per key.
    pub fn take_summaries(&self) -> Vec<Summary> {
        self.all()
            .into_iter()
            .flat_map(FailureLimiter::take_summaries)
            .collect()
    }
}
