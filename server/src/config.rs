//! Server settings in four layers: built-in defaults < TOML file < environment < flags.
//!
//! clap reads flags and their `FACTORY_*` environment twins (so `--help` lists both, and a flag
//! beats its variable); figment lays what clap found over the TOML file over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::builder::BoolishValueParser;
use clap::Parser;
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
    /// Refuse a release upload that carries no valid signature.
    pub firmware_require_signature: bool,
    /// Secret for `POST /admin/generate_token` (`X-Admin-Secret`); without it the route is off.
    pub ota_admin_secret: Option<String>,
    /// Default lifetime of OTA board tokens, in minutes.
    pub ota_jwt_expiry_minutes: u64,
    /// Serve `/firmware/…` without OTA tokens.
    pub ota_no_jwt: bool,
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
            ota_admin_secret: None,
            ota_jwt_expiry_minutes: 30,
            ota_no_jwt: false,
            metrics_token: None,
            dashboard_send_timeout_secs: SEND_TIMEOUT.as_secs(),
            dashboard_max_per_user: MAX_DASHBOARDS_PER_USER,
            dashboard_max_total: MAX_DASHBOARDS,
            log_level: "info".into(),
            rights: RightsSettings::default(),
        }
    }
}

/// Command line and environment. Every field is optional so that only what the operator gave
/// overrides the lower layers.
#[derive(Debug, Default, Parser, Serialize)]
#[command(
    name = "factory-server",
    version,
    about = "The factory server: device registry, command dispatch and REST API"
)]
pub struct Cli {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, global = true, env = "FACTORY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, global = true, env = "FACTORY_BIND")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,

    /// Database URL: `postgres://…` for PostgreSQL; otherwise a SQLite file [default: <data dir>/factory.db].
    #[arg(long, global = true, env = "FACTORY_DATABASE_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,

    /// Directory for the SQLite file, the JWT secret and firmware [default: ./data].
    #[arg(long, global = true, env = "FACTORY_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// HS256 secret for user and device tokens [default: random, persisted in the data dir].
    #[arg(
        long,
        global = true,
        env = "FACTORY_JWT_SECRET",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,

    /// Shared secret devices present in `X-Enrollment-Key` [default: none, enrollment refused].
    #[arg(
        long,
        global = true,
        env = "FACTORY_ENROLLMENT_KEY",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_key: Option<String>,

    /// Password of the first admin, used only while the user table is empty [default: random, written to <data dir>/initial-admin-password].
    #[arg(
        long,
        global = true,
        env = "FACTORY_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<String>,

    /// Register unknown devices that present the enrollment key [default: false].
    #[arg(long, global = true, env = "FACTORY_ALLOW_AUTO_ENROLLMENT", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_auto_enrollment: Option<bool>,

    /// Accept `?token=` on WebSocket upgrades (compatibility with seed devices) [default: true].
    #[arg(long, global = true, env = "FACTORY_ALLOW_QUERY_TOKEN", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_query_token: Option<bool>,

    /// Lifetime of user tokens in seconds [default: 86400].
    #[arg(long, global = true, env = "FACTORY_USER_TOKEN_TTL_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_token_ttl_secs: Option<u64>,

    /// Lifetime of device tokens in seconds [default: one year].
    #[arg(long, global = true, env = "FACTORY_DEVICE_TOKEN_TTL_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_token_ttl_secs: Option<u64>,

    /// Failed logins of one account before it is locked [default: 5].
    #[arg(long, global = true, env = "FACTORY_LOGIN_MAX_FAILURES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_max_failures: Option<u32>,

    /// Failed logins (or enrollments) from one address before it is locked [default: 20].
    #[arg(long, global = true, env = "FACTORY_SOURCE_MAX_FAILURES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_max_failures: Option<u32>,

    /// Refused tokens from one address before further refused ones are answered 429 [default: 1000].
    #[arg(long, global = true, env = "FACTORY_TOKEN_MAX_FAILURES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_max_failures: Option<u32>,

    /// How long a lock lasts, counted from the first failure, in seconds [default: 900].
    #[arg(long, global = true, env = "FACTORY_LOCKOUT_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockout_secs: Option<u64>,

    /// Seconds between the audit rows that sum up attempts refused while locked [default: 60].
    #[arg(long, global = true, env = "FACTORY_AUDIT_SUMMARY_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_summary_secs: Option<u64>,

    /// Days device logs and events are kept [default: 30].
    #[arg(long, global = true, env = "FACTORY_LOG_RETENTION_DAYS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_retention_days: Option<u32>,

    /// Seconds a device has to come back after restart_service [default: 120].
    #[arg(long, global = true, env = "FACTORY_RESTART_CONFIRM_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_confirm_secs: Option<u64>,

    /// Seconds a device has to come back after reboot_os [default: 600].
    #[arg(long, global = true, env = "FACTORY_REBOOT_CONFIRM_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot_confirm_secs: Option<u64>,

    /// Seconds a deployed device has to download and stage a release [default: 1800].
    #[arg(long, global = true, env = "FACTORY_DEPLOYMENT_STAGE_TIMEOUT_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_stage_timeout_secs: Option<u64>,

    /// Seconds a device has after staging to come back on the new version [default: 600].
    #[arg(long, global = true, env = "FACTORY_DEPLOYMENT_ACTIVATE_TIMEOUT_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment_activate_timeout_secs: Option<u64>,

    /// OKTO cloud base URL, e.g. https://app.okto.ru/api [default: none, records wait].
    #[arg(long, global = true, env = "FACTORY_CLOUD_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_url: Option<String>,

    /// Bearer token for the OKTO cloud.
    #[arg(
        long,
        global = true,
        env = "FACTORY_CLOUD_TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_token: Option<String>,

    /// File with the cloud token; re-read on SIGHUP [default: none].
    #[arg(long, global = true, env = "FACTORY_CLOUD_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_token_file: Option<PathBuf>,

    /// PEM file of CAs the cloud client trusts besides the platform's roots [default: none].
    #[arg(long, global = true, env = "FACTORY_CLOUD_CA_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_ca_file: Option<PathBuf>,

    /// PEM certificate chain to serve HTTPS and WSS with; needs --tls-key [default: plain HTTP].
    #[arg(long, global = true, env = "FACTORY_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert; both files are read again on SIGHUP [default: none].
    #[arg(long, global = true, env = "FACTORY_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// Records per cloud request [default: 500].
    #[arg(long, global = true, env = "FACTORY_CLOUD_BATCH_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_batch_size: Option<usize>,

    /// Cloud requests in flight at once [default: 4].
    #[arg(long, global = true, env = "FACTORY_CLOUD_CONCURRENCY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_concurrency: Option<usize>,

    /// Failed attempts before a record is a dead letter [default: 10].
    #[arg(long, global = true, env = "FACTORY_CLOUD_MAX_ATTEMPTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_max_attempts: Option<i64>,

    /// Longest wait between two cloud attempts of a record, in seconds [default: 300].
    #[arg(long, global = true, env = "FACTORY_CLOUD_RETRY_MAX_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_retry_max_secs: Option<u64>,

    /// Largest firmware artifact accepted, in bytes [default: 536870912 (512 MiB)].
    #[arg(long, global = true, env = "FACTORY_FIRMWARE_MAX_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_max_bytes: Option<u64>,

    /// Trusted Ed25519 release-signing keys: base64 of the raw 32-byte keys, comma-separated [default: none].
    #[arg(long, global = true, env = "FACTORY_FIRMWARE_TRUSTED_KEYS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_trusted_keys: Option<String>,

    /// Refuse firmware uploads without a valid signature [default: false].
    #[arg(long, global = true, env = "FACTORY_FIRMWARE_REQUIRE_SIGNATURE", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_require_signature: Option<bool>,

    /// Secret boards' provisioning tools present in `X-Admin-Secret` to get OTA tokens [default: none, the route answers 403].
    #[arg(
        long,
        global = true,
        env = "FACTORY_OTA_ADMIN_SECRET",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ota_admin_secret: Option<String>,

    /// Default lifetime of OTA tokens in minutes [default: 30].
    #[arg(long, global = true, env = "FACTORY_OTA_JWT_EXPIRY_MINUTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ota_jwt_expiry_minutes: Option<u64>,

    /// Serve /firmware/… to boards without OTA tokens [default: false].
    #[arg(long, global = true, env = "FACTORY_OTA_NO_JWT", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ota_no_jwt: Option<bool>,

    /// Bearer token a Prometheus scraper presents on GET /metrics, at least 16 characters [default: none, the route answers 403].
    #[arg(
        long,
        global = true,
        env = "FACTORY_METRICS_TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_token: Option<String>,

    /// Seconds a dashboard socket has to take a frame before it is closed as stalled [default: 10].
    #[arg(long, global = true, env = "FACTORY_DASHBOARD_SEND_TIMEOUT_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard_send_timeout_secs: Option<u64>,

    /// Dashboard sockets one user may hold at once; more are refused with 429 [default: 16].
    #[arg(long, global = true, env = "FACTORY_DASHBOARD_MAX_PER_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard_max_per_user: Option<usize>,

    /// Dashboard sockets the server holds at once; more are refused with 429 [default: 256].
    #[arg(long, global = true, env = "FACTORY_DASHBOARD_MAX_TOTAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard_max_total: Option<usize>,

    /// Log filter, e.g. `info` or `server=debug,actix_web=info` [default: info].
    #[arg(long, global = true, env = "FACTORY_LOG_LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,

    /// Lowest role per command type, over the file's `[rights.commands]`: `exec_shell=OPERATOR,…` [default: the seed's RBAC table].
    #[arg(long, global = true, env = "FACTORY_RIGHTS_COMMANDS")]
    #[serde(skip)]
    pub rights_commands: Option<String>,

    /// Lowest role per exec_shell template, over the file's `[rights.templates]`: `disk_usage=OPERATOR,…` [default: ADMIN for every template].
    #[arg(long, global = true, env = "FACTORY_RIGHTS_TEMPLATES")]
    #[serde(skip)]
    pub rights_templates: Option<String>,
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
        if self.user_token_ttl_secs == 0 || self.device_token_ttl_secs == 0 {
            return Err(ConfigError("token lifetimes must be positive".into()));
        }
        self.check_periods()?;
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

    /// The serving certificate when TLS is configured: both files read and matching.
    pub fn server_tls(&self) -> Result<Option<std::sync::Arc<tls::ReloadingCert>>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => tls::ReloadingCert::load(cert, key)
                .map(|c| Some(std::sync::Arc::new(c)))
                .map_err(|e| ConfigError(format!("tls: {e}"))),
            _ => Err(ConfigError(
                "tls_cert and tls_key: give both (HTTPS) or neither (plain HTTP)".into(),
            )),
        }
    }

    /// What the cloud client trusts. `None` when the platform has no root certificates and no
    /// CA file is given: plain http still works, and an https cloud is refused with that reason.
    pub fn cloud_tls(&self) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, ConfigError> {
        match tls::client_config(self.cloud_ca_file.as_deref()) {
            Ok(config) => Ok(Some(std::sync::Arc::new(config))),
            Err(tls::TlsError::NoRoots) => Ok(None),
            Err(e) => Err(ConfigError(format!("cloud_ca_file: {e}"))),
        }
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

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
