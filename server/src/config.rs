//! Server settings in four layers: built-in defaults < TOML file < environment < flags.
//!
//! clap reads flags and their `FACTORY_*` environment twins (so `--help` lists both, and a flag
//! beats its variable); figment lays what clap found over the TOML file over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::policy::{Policy, RightsSettings};

/// A frame the socket does not take within this long closes it: the browser stopped reading.
/// The default of the `dashboard_send_timeout_secs` setting.
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Default of `dashboard_max_per_user`: sockets one user may hold (tabs, wall screens).
pub const MAX_DASHBOARDS_PER_USER: usize = 16;
/// Default of `dashboard_max_total`: sockets the server holds, authenticated or not. A stalled
/// one holds up to its channel's 1 MiB of events until its deadline, so this bounds memory.
pub const MAX_DASHBOARDS: usize = 256;

/// Default of `download_slots`: artifact transfers at once in all.
pub const DOWNLOAD_SLOTS: usize = 64;
/// Default of `download_slots_per_line`: a line's switch and its PCs' share of the uplink.
pub const DOWNLOAD_SLOTS_PER_LINE: usize = 16;

/// Settings of a running server, after all four layers are merged and checked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub bind: String,
    /// `postgres://…` selects PostgreSQL; anything else (or nothing) is a SQLite file.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    pub jwt_secret: Option<String>,
    pub enrollment_key: Option<String>,
    pub admin_password: Option<String>,
    pub allow_auto_enrollment: bool,
    /// Accept a device or user token in `?token=` on the WebSocket routes. Kept on for devices
    /// built against the seed; turn it off once every device authenticates by header or frame.
    pub allow_query_token: bool,
    pub user_token_ttl_secs: u64,
    pub device_token_ttl_secs: u64,
    /// Failed logins of one account before it is locked for `lockout_secs`.
    pub login_max_failures: u32,
    /// Failed logins, or failed enrollments, from one address before it is locked.
    pub source_max_failures: u32,
    /// Refused tokens from one address before its refused tokens are answered 429 (valid
    /// tokens from it keep working: a token cannot be guessed, so locking it protects nothing).
    pub token_max_failures: u32,
    pub lockout_secs: u64,
    /// Attempts refused while locked are written to the audit log as one summary row per key
    /// at most this often, instead of a row each.
    pub audit_summary_secs: u64,
    /// Device logs and events older than this many days are deleted.
    pub log_retention_days: u32,
    /// Hours raw metric samples are kept, and days their minute and hour buckets are.
    pub metrics_raw_retention_hours: u32,
    pub metrics_minute_retention_days: u32,
    pub metrics_hour_retention_days: u32,
    /// Seconds between two metric rollups: how old a chart's newest minute may be.
    pub metrics_rollup_secs: u64,
    /// Seconds a device has to come back with a new run id after `restart_service`.
    pub restart_confirm_secs: u64,
    /// Seconds a device has to come back with a new boot id after `reboot_os`.
    pub reboot_confirm_secs: u64,
    /// Seconds a deployed device has to download and stage a release.
    pub deployment_stage_timeout_secs: u64,
    /// Seconds a device has, once it staged a release, to come back on the new version.
    pub deployment_activate_timeout_secs: u64,
    /// OKTO cloud base URL; without it (and a token) records wait in the cloud queue.
    pub cloud_url: Option<String>,
    pub cloud_token: Option<String>,
    /// A file holding the cloud token, re-read on SIGHUP so a new token needs no restart.
    pub cloud_token_file: Option<PathBuf>,
    pub cloud_batch_size: usize,
    pub cloud_concurrency: usize,
    pub cloud_max_attempts: i64,
    /// The longest wait, in seconds, between two attempts of a record.
    pub cloud_retry_max_secs: u64,
    /// A PEM file of CAs the cloud client trusts besides the platform's roots.
    pub cloud_ca_file: Option<PathBuf>,
    /// PEM certificate chain and key: with both, the server speaks HTTPS and WSS on `bind`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Largest firmware artifact accepted, in bytes.
    pub firmware_max_bytes: u64,
    /// Ed25519 public keys (base64 of the raw 32 bytes, comma-separated) that may sign releases.
    pub firmware_trusted_keys: Option<String>,
    /// Refuse a release upload that carries no valid signature, even without trusted keys
    /// (with one, unsigned uploads are refused anyway unless `firmware_allow_unsigned`).
    pub firmware_require_signature: bool,
    /// Take unsigned uploads although keys are trusted; warned at every start.
    pub firmware_allow_unsigned: bool,
    /// Artifact transfers at once in all (deployments, hand-sent updates, boards, users).
    pub download_slots: usize,
    /// Artifact transfers at once to the devices and boards of one production line.
    pub download_slots_per_line: usize,
    /// Secret for `POST /admin/generate_token` (`X-Admin-Secret`); without it the route is off.
    pub ota_admin_secret: Option<String>,
    /// Default lifetime of OTA board tokens, in minutes.
    pub ota_jwt_expiry_minutes: u64,
    /// Serve `/firmware/…` without OTA tokens.
    pub ota_no_jwt: bool,
    /// The seed document's boards: tokens without `aud`, no `X-Device-ID`, no registration.
    pub ota_legacy_boards: bool,
    /// `HS256` or `HS512`, for OTA tokens only.
    pub ota_jwt_algorithm: String,
    /// Bearer token a Prometheus scraper presents on `GET /metrics`; without it the route is
    /// off (403), so a plant network learns nothing from it by default.
    pub metrics_token: Option<String>,
    /// Seconds a dashboard socket has to take a frame before it is closed as stalled.
    pub dashboard_send_timeout_secs: u64,
    /// Dashboard sockets one user may hold at once.
    pub dashboard_max_per_user: usize,
    /// Dashboard sockets the server holds at once, authenticated or not.
    pub dashboard_max_total: usize,
    pub log_level: String,
    /// This process's name among the replicas on one database (letters, digits, `_`, `-`, at
    /// most 40); without it a fresh one is drawn at each start.
    pub replica_id: Option<String>,
    /// Seconds a replica's hold on a device lasts without a heartbeat: how long the devices of
    /// a killed replica stay ONLINE, and commands for them are sent its way, at most.
    pub presence_lease_secs: u64,
    /// The lowest role per command type and per `exec_shell` template, over the seed's RBAC
    /// table (`[rights.commands]`, `[rights.templates]`; checked by `policy`).
    pub rights: RightsSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1:8080".into(),
            database_url: None,
            data_dir: PathBuf::from("./data"),
            jwt_secret: None,
            enrollment_key: None,
            admin_password: None,
            allow_auto_enrollment: false,
            allow_query_token: true,
            user_token_ttl_secs: 24 * 3600,
            device_token_ttl_secs: 365 * 24 * 3600,
            login_max_failures: 5,
            source_max_failures: 20,
            token_max_failures: 1000,
            lockout_secs: 900,
            audit_summary_secs: 60,
            log_retention_days: 30,
            metrics_raw_retention_hours: 24,
            metrics_minute_retention_days: 30,
            metrics_hour_retention_days: 365,
            metrics_rollup_secs: 60,
            restart_confirm_secs: 120,
            reboot_confirm_secs: 600,
            deployment_stage_timeout_secs: 1800,
            deployment_activate_timeout_secs: 600,
            cloud_url: None,
            cloud_token: None,
            cloud_token_file: None,
            cloud_batch_size: 500,
            cloud_concurrency: 4,
            cloud_max_attempts: 10,
            cloud_retry_max_secs: 300,
            cloud_ca_file: None,
            tls_cert: None,
            tls_key: None,
            firmware_max_bytes: 512 * 1024 * 1024,
            firmware_trusted_keys: None,
            firmware_require_signature: false,
            firmware_allow_unsigned: false,
            download_slots: DOWNLOAD_SLOTS,
            download_slots_per_line: DOWNLOAD_SLOTS_PER_LINE,
            ota_admin_secret: None,
            ota_jwt_expiry_minutes: 30,
            ota_no_jwt: false,
            ota_legacy_boards: false,
            ota_jwt_algorithm: "HS256".into(),
            metrics_token: None,
            dashboard_send_timeout_secs: SEND_TIMEOUT.as_secs(),
            dashboard_max_per_user: MAX_DASHBOARDS_PER_USER,
            dashboard_max_total: MAX_DASHBOARDS,
            log_level: "info".into(),
            replica_id: None,
            presence_lease_secs: 15,
            rights: RightsSettings::default(),
        }
    }
}

/// The longest lifetime or wait, in seconds, any setting may name: far past any sensible
/// value, far inside what chrono and the monotonic clock can add to now.
pub const MAX_PERIOD_SECS: u64 = 100 * 365 * 24 * 3600;
/// The longest log retention, in days, for the same reason.
pub const MAX_RETENTION_DAYS: u32 = 100 * 365;

/// A setting that cannot be used; the message is one line, fit for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The database a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Config {
    /// Merges the layers: defaults, then the TOML file named by `--config`, then what clap read
    /// from the environment and the flags.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &cli.config {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut config: Config = figment
            .merge(Serialized::defaults(&cli))
            .extract()
            .map_err(|e| ConfigError(one_line(&e.to_string())))?;
        // Maps have no flag of their own: the two lists are laid over the file's entries here.
        config
            .rights
            .overlay(
                cli.rights_commands.as_deref(),
                cli.rights_templates.as_deref(),
            )
            .map_err(ConfigError)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.bind.parse::<SocketAddr>().map_err(|_| {
            ConfigError(format!(
                "bind: `{}` is not an address like 127.0.0.1:8080",
                self.bind
            ))
        })?;
        if let Some(secret) = &self.jwt_secret {
            if secret.len() < 32 {
                return Err(ConfigError(
                    "jwt_secret: must be at least 32 characters".into(),
                ));
            }
        }
        if let Some(key) = &self.enrollment_key {
            if key.len() < 8 {
                return Err(ConfigError(
                    "enrollment_key: must be at least 8 characters".into(),
                ));
            }
        }
        if let Some(pw) = &self.admin_password {
            if pw.len() < 8 {
                return Err(ConfigError(
                    "admin_password: must be at least 8 characters".into(),
                ));
            }
        }
        if self.login_max_failures == 0
            || self.source_max_failures == 0
            || self.token_max_failures == 0
            || self.lockout_secs == 0
            || self.audit_summary_secs == 0
        {
            return Err(ConfigError(
                "login_max_failures, source_max_failures, token_max_failures, lockout_secs and audit_summary_secs must be positive".into(),
            ));
        }
        if self.cloud_batch_size == 0 || self.cloud_batch_size > 10_000 {
            return Err(ConfigError("cloud_batch_size must be 1-10000".into()));
        }
        if self.cloud_concurrency == 0 || self.cloud_concurrency > 64 {
            return Err(ConfigError("cloud_concurrency must be 1-64".into()));
        }
        if self.cloud_retry_max_secs == 0 {
            return Err(ConfigError(
                "cloud_retry_max_secs must be at least 1".into(),
            ));
        }
        if self.cloud_max_attempts < 1 {
            return Err(ConfigError("cloud_max_attempts must be at least 1".into()));
        }
        if let Some(url) = &self.cloud_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError(format!(
                    "cloud_url: `{url}` is not an http(s) URL"
                )));
            }
        }
        if let Some(path) = &self.cloud_token_file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "cloud_token_file: {} does not exist",
                    path.display()
                )));
            }
        }
        self.server_tls()?;
        self.cloud_tls()?;
        if self.log_retention_days == 0 {
            return Err(ConfigError("log_retention_days must be at least 1".into()));
        }
        self.check_metrics_retention()?;
        if self.user_token_ttl_secs == 0 || self.device_token_ttl_secs == 0 {
            return Err(ConfigError("token lifetimes must be positive".into()));
        }
        self.check_periods()?;
        self.check_replica()?;
        if let Some(url) = &self.database_url {
            if url.contains("://")
                && !(url.starts_with("postgres://")
                    || url.starts_with("postgresql://")
                    || url.starts_with("sqlite://"))
            {
                return Err(ConfigError(format!(
                    "database_url: unsupported scheme in `{}`; use postgres:// or a SQLite path",
                    redact_url(url)
                )));
            }
        }
        if self.firmware_max_bytes == 0 {
            return Err(ConfigError("firmware_max_bytes must be at least 1".into()));
        }
        let keys = self.firmware_keys()?;
        if self.firmware_require_signature && keys.is_empty() {
            return Err(ConfigError(
                "firmware_require_signature needs firmware_trusted_keys".into(),
            ));
        }
        if self.firmware_require_signature && self.firmware_allow_unsigned {
            return Err(ConfigError(
                "firmware_allow_unsigned contradicts firmware_require_signature".into(),
            ));
        }
        if !(1..=100_000).contains(&self.download_slots)
            || !(1..=100_000).contains(&self.download_slots_per_line)
        {
            return Err(ConfigError(
                "download_slots and download_slots_per_line must be 1-100000".into(),
            ));
        }
        if !matches!(self.ota_jwt_algorithm.as_str(), "HS256" | "HS512") {
            return Err(ConfigError(format!(
                "ota_jwt_algorithm: `{}` is neither HS256 nor HS512",
                self.ota_jwt_algorithm
            )));
        }
        if self.metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(ConfigError(
                "metrics_token: must be at least 16 characters".into(),
            ));
        }
        if let Some(secret) = &self.ota_admin_secret {
            if secret.len() < 16 {
                return Err(ConfigError(
                    "ota_admin_secret: must be at least 16 characters".into(),
                ));
            }
        }
        if !(1..=7 * 24 * 60).contains(&self.ota_jwt_expiry_minutes) {
            return Err(ConfigError("ota_jwt_expiry_minutes must be 1-10080".into()));
        }
        if !(1..=3600).contains(&self.dashboard_send_timeout_secs) {
            return Err(ConfigError(
                "dashboard_send_timeout_secs must be 1-3600".into(),
            ));
        }
        if self.dashboard_max_per_user == 0 || self.dashboard_max_total == 0 {
            return Err(ConfigError(
                "dashboard_max_per_user and dashboard_max_total must be at least 1".into(),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| ConfigError(format!("log_level: {e}")))?;
        Policy::from_settings(&self.rights).map_err(ConfigError)?;
        Ok(())
    }

    /// Each metrics resolution is kept at least as long as the finer one it is rolled up from
    /// (a chart reads the coarser one past the finer one's end), and within `MAX_RETENTION_DAYS`.
    fn check_metrics_retention(&self) -> Result<(), ConfigError> {
        let raw = self.metrics_raw_retention_hours;
        let (minutes, hours) = (
            self.metrics_minute_retention_days,
            self.metrics_hour_retention_days,
        );
        if raw == 0 || minutes == 0 || hours == 0 || hours > MAX_RETENTION_DAYS {
            return Err(ConfigError(format!(
                "metrics retentions must be positive, and the hour retention at most {MAX_RETENTION_DAYS} days"
            )));
        }
        if !(1..=3600).contains(&self.metrics_rollup_secs) {
            return Err(ConfigError("metrics_rollup_secs must be 1-3600".into()));
        }
        if u64::from(raw) > u64::from(minutes) * 24 || minutes > hours {
            return Err(ConfigError(
                "metrics retentions must not shrink from raw (hours) to minutes to hours (days)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Token lifetimes, waits and the log retention must stay within what a clock can add to
    /// now: a lifetime of 2^63 seconds passed every other check, and then every login
    /// panicked adding it to the time of day.
    fn check_periods(&self) -> Result<(), ConfigError> {
        let periods = [
            ("user_token_ttl_secs", self.user_token_ttl_secs),
            ("device_token_ttl_secs", self.device_token_ttl_secs),
            ("lockout_secs", self.lockout_secs),
            ("restart_confirm_secs", self.restart_confirm_secs),
            ("reboot_confirm_secs", self.reboot_confirm_secs),
            (
                "deployment_stage_timeout_secs",
                self.deployment_stage_timeout_secs,
            ),
            (
                "deployment_activate_timeout_secs",
                self.deployment_activate_timeout_secs,
            ),
            ("cloud_retry_max_secs", self.cloud_retry_max_secs),
        ];
        for (name, secs) in periods {
            if secs > MAX_PERIOD_SECS {
                return Err(ConfigError(format!(
                    "{name}: {secs} is more than {MAX_PERIOD_SECS} seconds (100 years)"
                )));
            }
        }
        if self.log_retention_days > MAX_RETENTION_DAYS {
            return Err(ConfigError(format!(
                "log_retention_days: {} is more than {MAX_RETENTION_DAYS} days (100 years)",
                self.log_retention_days
            )));
        }
        Ok(())
    }

    /// A replica id names a PostgreSQL channel (`store::leases`), so it is kept to characters
    /// that need no quoting; the lease must outlast a few heartbeats (a third of it each).
    fn check_replica(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.replica_id {
            let ok = !id.is_empty()
                && id.len() <= 40
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ConfigError(format!(
                    "replica_id: `{id}` must be 1-40 letters, digits, `_` or `-`"
                )));
            }
        }
        if !(3..=3600).contains(&self.presence_lease_secs) {
            return Err(ConfigError("presence_lease_secs must be 3-3600".into()));
        }
        Ok(())
    }

    /// The replica id given, or a fresh one.
    pub fn replica(&self) -> String {
        self.replica_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned())
    }

    /// The cloud URL and token, the token read from its file when one is configured.
    pub fn cloud_target(&self) -> Result<Option<(String, String)>, ConfigError> {
        let token = match (&self.cloud_token_file, &self.cloud_token) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cloud_token_file {}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            (None, token) => token.clone(),
        };
        Ok(match (&self.cloud_url, token) {
            (Some(url), Some(token)) if !token.is_empty() => {
                Some((url.trim_end_matches('/').to_owned(), token))
            }
            _ => None,
        })
    }

    /// The trusted release-signing keys, each the raw 32 bytes of an Ed25519 public key.
    pub fn firmware_keys(&self) -> Result<Vec<[u8; 32]>, ConfigError> {
        use base64::Engine;
        let Some(list) = &self.firmware_trusted_keys else {
            return Ok(Vec::new());
        };
        list.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                base64::engine::general_purpose::STANDARD
                    .decode(k)
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "firmware_trusted_keys: `{k}` is not base64 of a 32-byte Ed25519 key"
                        ))
                    })
            })
            .collect()
    }

    /// Whether an upload must be signed: signatures are required, or a key is trusted and
    /// unsigned releases were not explicitly allowed.
    pub fn signatures_required(&self) -> bool {
        self.firmware_require_signature
            || (!self.firmware_allow_unsigned
                && self.firmware_keys().is_ok_and(|keys| !keys.is_empty()))
    }

    /// The algorithm of OTA tokens; validate() has checked the name.
    pub fn ota_algorithm(&self) -> jsonwebtoken::Algorithm {
        match self.ota_jwt_algorithm.as_str() {
            "HS512" => jsonwebtoken::Algorithm::HS512,
            _ => jsonwebtoken::Algorithm::HS256,
        }
    }

    /// Who may send which command, as the settings say.
    pub fn policy(&self) -> Policy {
        // validate() has checked it builds.
        Policy::from_settings(&self.rights).expect("validated rights")
    }

    pub fn bind_addr(&self) -> SocketAddr {
        // validate() has checked it parses.
        self.bind.parse().expect("validated bind address")
    }

    pub fn database(&self) -> DatabaseTarget {
        match &self.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                DatabaseTarget::Postgres(url.clone())
            }
            Some(url) => {
                DatabaseTarget::Sqlite(PathBuf::from(url.strip_prefix("sqlite://").unwrap_or(url)))
            }
            None => DatabaseTarget::Sqlite(self.data_dir.join("factory.db")),
        }
    }
}

/// Hides a password in a database URL before it reaches a log line.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a path names a file that already exists; used for the secrets kept in the data dir.
pub fn exists(path: &Path) -> bool {
    path.try_exists().unwrap_or(false)
}

#[path = "config_cli.rs"]
mod cli;
pub use cli::Cli;

#[path = "config_tls.rs"]
mod tls_files;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
