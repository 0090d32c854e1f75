//! The agent's command-line surface: every flag with its `EDGE_…` variable (`Cli`), and the
//! value types flags share with the TOML file (`ConnectionMode`, `Secret`).
//!
//! It imports nothing from the rest of the settings code, so `config/mod.rs` can layer it
//! without the two files knowing each other.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// A value that must never reach a log: its `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// Where the agent sends its production records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionMode {
    /// Edge → factory server → OKTO cloud.
    #[value(name = "VIA_LOCAL_SERVER")]
    ViaLocalServer,
    /// Edge → OKTO cloud; the factory server only manages the device.
    #[value(name = "DIRECT_CLOUD")]
    DirectCloud,
}

impl ConnectionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionMode::ViaLocalServer => "VIA_LOCAL_SERVER",
            ConnectionMode::DirectCloud => "DIRECT_CLOUD",
        }
    }
}

/// Command-line flags, each with its environment variable. Every field is optional here
/// because defaults belong to the lowest layer, not to clap.
#[derive(Default, Parser, Serialize)]
#[command(
    name = "edge-agent",
    version,
    about = "The OKTO edge agent: keeps one WebSocket to the factory server and answers its commands.",
    long_about = None,
    after_help = "Settings are layered, lowest to highest: built-in defaults < TOML file (--config) \
                  < environment variables < command-line flags. TOML keys are the flag names with \
                  '_' for '-', e.g. server_url, status_interval_ms."
)]
pub struct Cli {
    /// Without one the agent runs; the subcommands read or set up its data dir and exit.
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<AdminCommand>,

    /// TOML file with settings; its keys are the flag names in snake_case
    #[arg(long, global = true, env = "EDGE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Directory for the agent's database [default: ./edge-data]
    #[arg(long, global = true, env = "EDGE_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// Factory server base URL, http:// or https:// (required)
    #[arg(long, global = true, env = "EDGE_SERVER_URL", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,

    /// This device's id: 1-128 characters of A-Z a-z 0-9 . _ - (required)
    #[arg(long, global = true, env = "EDGE_DEVICE_ID", value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,

    /// Shared key for enrolling with the server; needed while no device token is stored
    #[arg(
        long,
        global = true,
        env = "EDGE_ENROLLMENT_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment_key: Option<Secret>,

    /// Display name sent at enrollment [default: the device id]
    #[arg(long, global = true, env = "EDGE_NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Company stamped on every record the agent queues
    #[arg(long, global = true, env = "EDGE_COMPANY_ID", value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_id: Option<String>,

    /// Production line this device belongs to
    #[arg(
        long,
        global = true,
        env = "EDGE_PRODUCTION_LINE_ID",
        value_name = "ID"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub production_line_id: Option<String>,

    /// Where production records go [default: VIA_LOCAL_SERVER]
    #[arg(
        long,
        global = true,
        env = "EDGE_CONNECTION_MODE",
        value_enum,
        value_name = "MODE"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_mode: Option<ConnectionMode>,

    /// OKTO cloud base URL (DIRECT_CLOUD only)
    #[arg(long, global = true, env = "EDGE_CLOUD_URL", value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_url: Option<String>,

    /// OKTO cloud bearer token (DIRECT_CLOUD only)
    #[arg(
        long,
        global = true,
        env = "EDGE_CLOUD_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_token: Option<Secret>,

    /// PEM file of CAs trusted besides the platform's roots, for the server, the cloud and
    /// firmware downloads [default: platform roots only]
    #[arg(long, global = true, env = "EDGE_CA_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,

    /// Period of status frames in milliseconds, at least 100 [default: 5000]
    #[arg(
        long,
        global = true,
        env = "EDGE_STATUS_INTERVAL_MS",
        value_name = "MS"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_interval_ms: Option<u64>,

    /// Log filter, e.g. info or agent=debug,info [default: info]
    #[arg(long, global = true, env = "EDGE_LOG_LEVEL", value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,

    /// The agent's own log file, read by pull_logs [default: <data dir>/edge-agent.log]
    #[arg(long, global = true, env = "EDGE_LOG_FILE", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,

    /// TCP address the scanner listener binds, e.g. 127.0.0.1:9100 [default: no listener]
    #[arg(long, global = true, env = "EDGE_SCANNER_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scanner_listen: Option<String>,

    /// Raw TCP label printer (port-9100 protocol) as host:port, e.g. 192.168.1.50:9100; a closed batch or pallet prints its label [default: no printer]
    #[arg(
        long,
        global = true,
        env = "EDGE_PRINTER_ADDR",
        value_name = "HOST:PORT"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub printer_addr: Option<String>,

    /// Label template with placeholders {kind} {id} {count} {openedAt} {closedAt} {pallet} {line} {company} {device} [default: a small ZPL label]
    #[arg(
        long,
        global = true,
        env = "EDGE_PRINTER_TEMPLATE",
        value_name = "TEMPLATE"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub printer_template: Option<String>,

    /// Bottles per batch; 0 closes batches only on a CLOSE_BATCH line [default: 100]
    #[arg(long, global = true, env = "EDGE_BATCH_SIZE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,

    /// Batches per pallet; 0 closes pallets only on a CLOSE_PALLET line [default: 10]
    #[arg(long, global = true, env = "EDGE_PALLET_SIZE", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pallet_size: Option<u32>,

    /// Program and arguments run by reboot_os, split on spaces [default: sudo systemctl reboot]
    #[arg(long, global = true, env = "EDGE_REBOOT_COMMAND", value_name = "ARGV", num_args = 1.., value_delimiter = ' ')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot_command: Option<Vec<String>>,

    /// Program and arguments run by shutdown_os, split on spaces [default: sudo systemctl poweroff]
    #[arg(long, global = true, env = "EDGE_SHUTDOWN_COMMAND", value_name = "ARGV", num_args = 1.., value_delimiter = ' ')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_command: Option<Vec<String>>,

    /// Where update_firmware stages downloaded releases [default: <data dir>/staging]
    #[arg(
        long,
        global = true,
        env = "EDGE_FIRMWARE_STAGING_DIR",
        value_name = "DIR"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_staging_dir: Option<PathBuf>,

    /// Ed25519 public keys (base64 of 32 bytes, comma-separated) trusted for release signatures
    #[arg(
        long,
        global = true,
        env = "EDGE_FIRMWARE_TRUSTED_KEYS",
        value_name = "KEYS",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_trusted_keys: Option<Vec<String>>,

    /// Refuse unsigned releases even while no key is trusted [default: false; with a trusted key unsigned ones are refused anyway]
    #[arg(long, global = true, env = "EDGE_FIRMWARE_REQUIRE_SIGNATURE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_require_signature: Option<bool>,

    /// Stage unsigned releases although a key is trusted; warned at every start [default: false]
    #[arg(long, global = true, env = "EDGE_FIRMWARE_ALLOW_UNSIGNED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_allow_unsigned: Option<bool>,

    /// Stage releases older than the running agent too [default: false]
    #[arg(long, global = true, env = "EDGE_ALLOW_FIRMWARE_DOWNGRADE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_firmware_downgrade: Option<bool>,

    /// Install a staged release at once: point <staging dir>/current at it and restart [default: true]
    #[arg(long, global = true, env = "EDGE_FIRMWARE_ACTIVATE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_activate: Option<bool>,
}

/// `edge-agent`'s subcommands (`crate::admin` runs them), with the agent's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum AdminCommand {
    /// Prints the agent's state from its database as JSON: token stored, queue depth and
    /// drain rate, labels waiting, production state. Safe while the agent runs.
    Status,
    /// The offline queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Trades the enrollment key for a device token and stores it, then exits (the agent
    /// also enrolls by itself when it starts without one).
    Enroll,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum QueueCommand {
    /// Prints the queue's depth, oldest record, failures and drain rate as JSON.
    Stats,
}
