//! The command line of `factory-server` and the `FACTORY_*` environment: every setting
//! optional, so only what the operator gave lies over the TOML file and the defaults.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::Parser;
use serde::Serialize;

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

    /// Hours raw metric samples (every status) are kept [default: 24].
    #[arg(long, env = "FACTORY_METRICS_RAW_RETENTION_HOURS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_raw_retention_hours: Option<u32>,

    /// Days one-minute metric buckets are kept [default: 30].
    #[arg(long, env = "FACTORY_METRICS_MINUTE_RETENTION_DAYS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_minute_retention_days: Option<u32>,

    /// Days one-hour metric buckets are kept [default: 365].
    #[arg(long, env = "FACTORY_METRICS_HOUR_RETENTION_DAYS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_hour_retention_days: Option<u32>,

    /// Seconds between two metric rollups into minute and hour buckets (1-3600) [default: 60].
    #[arg(long, env = "FACTORY_METRICS_ROLLUP_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_rollup_secs: Option<u64>,

    /// Seconds a device has to come back after restart_service [default: 120].
    #[arg(long, global = true, env = "FACTORY_RESTART_CONFIRM_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_confirm_secs: Option<u64>,

    /// This replica's id among several on one PostgreSQL (letters, digits, `_`, `-`) [default: a fresh one at each start].
    #[arg(long, global = true, env = "FACTORY_REPLICA_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,

    /// Seconds a replica's hold on a device lasts without a heartbeat (3-3600) [default: 15].
    #[arg(long, global = true, env = "FACTORY_PRESENCE_LEASE_SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_lease_secs: Option<u64>,

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

    /// Take unsigned firmware uploads although trusted keys are set; warned at every start [default: false].
    #[arg(long, env = "FACTORY_FIRMWARE_ALLOW_UNSIGNED", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_allow_unsigned: Option<bool>,

    /// Artifact transfers served at once in all; more wait (429/503 with Retry-After) [default: 64].
    #[arg(long, env = "FACTORY_DOWNLOAD_SLOTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_slots: Option<usize>,

    /// Artifact transfers served at once to one production line's devices and boards [default: 16].
    #[arg(long, env = "FACTORY_DOWNLOAD_SLOTS_PER_LINE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_slots_per_line: Option<usize>,

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

    /// Boards of the seed document: OTA tokens without audience, no X-Device-ID, no registration [default: false].
    #[arg(long, env = "FACTORY_OTA_LEGACY_BOARDS", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ota_legacy_boards: Option<bool>,

    /// Algorithm of OTA tokens: HS256 or HS512 [default: HS256].
    #[arg(long, env = "FACTORY_OTA_JWT_ALGORITHM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ota_jwt_algorithm: Option<String>,

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
