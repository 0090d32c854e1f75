//! The agent's settings: built-in defaults < TOML file < environment < command-line flags.
//!
//! clap reads flags and their `EDGE_…` environment variables (a flag beats its variable);
//! figment then layers what clap produced over the TOML file over the defaults. Only values
//! that were actually given reach figment, so an unset flag never hides a TOML value.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use awc::http::Uri;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use self::cli::{AdminCommand, Cli, ConnectionMode, QueueCommand, Secret};
use crate::label::LabelTemplate;

mod cli;

/// Built-in data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./edge-data";
/// Built-in status period.
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 5000;
/// Shortest status period accepted; anything faster floods the server for no gain.
pub const MIN_STATUS_INTERVAL_MS: u64 = 100;
/// Built-in log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Built-in bottles per batch: the batch closes when this many codes are in it.
pub const DEFAULT_BATCH_SIZE: u32 = 100;
/// Built-in batches per pallet: the pallet closes when this many batches are in it.
pub const DEFAULT_PALLET_SIZE: u32 = 10;
/// Name of the agent's own log file inside the data directory, unless `log_file` says
/// otherwise.
pub const DEFAULT_LOG_FILE: &str = "edge-agent.log";
/// Firmware staging directory inside the data directory.
pub const DEFAULT_STAGING_DIR: &str = "staging";
/// Built-in programs of `reboot_os` and `shutdown_os`, as `deploy/sudoers` allows them.
pub const DEFAULT_REBOOT_COMMAND: [&str; 3] = ["sudo", "systemctl", "reboot"];
pub const DEFAULT_SHUTDOWN_COMMAND: [&str; 3] = ["sudo", "systemctl", "poweroff"];

/// The lowest layer.
#[derive(Serialize)]
struct Defaults {
    data_dir: &'static str,
    connection_mode: ConnectionMode,
    status_interval_ms: u64,
    log_level: &'static str,
    batch_size: u32,
    pallet_size: u32,
    reboot_command: [&'static str; 3],
    shutdown_command: [&'static str; 3],
    firmware_trusted_keys: [&'static str; 0],
    firmware_require_signature: bool,
    firmware_allow_unsigned: bool,
    allow_firmware_downgrade: bool,
    firmware_activate: bool,
}

const DEFAULTS: Defaults = Defaults {
    data_dir: DEFAULT_DATA_DIR,
    connection_mode: ConnectionMode::ViaLocalServer,
    status_interval_ms: DEFAULT_STATUS_INTERVAL_MS,
    log_level: DEFAULT_LOG_LEVEL,
    batch_size: DEFAULT_BATCH_SIZE,
    pallet_size: DEFAULT_PALLET_SIZE,
    reboot_command: DEFAULT_REBOOT_COMMAND,
    shutdown_command: DEFAULT_SHUTDOWN_COMMAND,
    firmware_trusted_keys: [],
    firmware_require_signature: false,
    firmware_allow_unsigned: false,
    allow_firmware_downgrade: false,
    firmware_activate: true,
};

/// What the merged layers hold before validation. Unknown keys are refused so that a typo
/// in the TOML file stops the agent instead of being silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Layered {
    data_dir: PathBuf,
    server_url: Option<String>,
    device_id: Option<String>,
    enrollment_key: Option<Secret>,
    name: Option<String>,
    company_id: Option<String>,
    production_line_id: Option<String>,
    connection_mode: ConnectionMode,
    cloud_url: Option<String>,
    cloud_token: Option<Secret>,
    ca_file: Option<PathBuf>,
    status_interval_ms: u64,
    log_level: String,
    log_file: Option<PathBuf>,
    scanner_listen: Option<String>,
    printer_addr: Option<String>,
    printer_template: Option<String>,
    batch_size: u32,
    pallet_size: u32,
    reboot_command: Vec<String>,
    shutdown_command: Vec<String>,
    firmware_staging_dir: Option<PathBuf>,
    firmware_trusted_keys: Vec<String>,
    firmware_require_signature: bool,
    firmware_allow_unsigned: bool,
    allow_firmware_downgrade: bool,
    firmware_activate: bool,
}

/// A setting that is missing or wrong. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: no such file")]
    NoConfigFile(PathBuf),
    #[error("{0}")]
    Layers(String),
    #[error("{setting} is required (flag --{flag} or env {env})")]
    Missing {
        setting: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

/// The validated settings the agent runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Without a trailing slash.
    pub server_url: String,
    pub device_id: String,
    pub enrollment_key: Option<Secret>,
    pub name: String,
    pub company_id: Option<String>,
    pub production_line_id: Option<String>,
    pub connection_mode: ConnectionMode,
    pub cloud_url: Option<String>,
    pub cloud_token: Option<Secret>,
    /// CAs trusted besides the platform's roots (`crate::http`).
    pub ca_file: Option<PathBuf>,
    pub status_interval: Duration,
    pub log_level: String,
    pub log_file: PathBuf,
    pub scanner_listen: Option<SocketAddr>,
    /// The label printer; none: no labels are queued.
    pub printer: Option<PrinterConfig>,
    pub batch_size: u32,
    pub pallet_size: u32,
    pub reboot_command: Vec<String>,
    pub shutdown_command: Vec<String>,
    /// `<data dir>/staging` unless set.
    pub firmware_staging_dir: PathBuf,
    /// Ed25519 public keys that may sign firmware releases.
    pub firmware_trusted_keys: Vec<[u8; 32]>,
    /// Refuse unsigned releases even while no key is trusted (then nothing can be staged
    /// until a key is configured). With a trusted key, unsigned releases are refused anyway
    /// unless `firmware_allow_unsigned` is on.
    pub firmware_require_signature: bool,
    /// Stage unsigned releases although a key is trusted: the explicit, logged way out of
    /// the secure default.
    pub firmware_allow_unsigned: bool,
    pub allow_firmware_downgrade: bool,
    /// Install a staged release (point `current` at it, exit 75 to be restarted on it).
    pub firmware_activate: bool,
}

/// Where labels go and what they look like. Neither can be pushed (`remote_config`): they
/// decide where the machine sends data and what it sends to a device on the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterConfig {
    /// `host:port` as given; the host is resolved at each connection, so a printer that
    /// gets a new address from DNS is found again.
    pub addr: String,
    pub template: LabelTemplate,
}

/// The layers below the agent's stored configuration (defaults, TOML file, environment,
/// flags), kept so that a `push_config` overlay can be layered over them again at run time.
#[derive(Clone)]
pub struct ConfigSource {
    figment: Figment,
}

/// Not derived: the layers hold secrets.
impl fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfigSource(<layers>)")
    }
}

impl ConfigSource {
    /// Reads flags and environment as clap produced them and the TOML file they name.
    pub fn from_cli(cli: Cli) -> Result<ConfigSource, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(DEFAULTS));
        if let Some(path) = &cli.config {
            if !path.is_file() {
                return Err(ConfigError::NoConfigFile(path.clone()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Serialized::defaults(&cli));
        Ok(ConfigSource { figment })
    }

    /// The data dir alone, for the subcommands that only read the agent's database: they
    /// must work on a line PC whose other settings are incomplete.
    pub fn data_dir(&self) -> PathBuf {
        self.figment
            .extract_inner::<PathBuf>("data_dir")
            .ok()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// The validated settings with `overlay` (snake_case keys, as the TOML file has them)
    /// layered over everything else.
    pub fn resolve<T: Serialize>(&self, overlay: Option<&T>) -> Result<Config, ConfigError> {
        let figment = match overlay {
            Some(overlay) => self.figment.clone().merge(Serialized::defaults(overlay)),
            None => self.figment.clone(),
        };
        let layered: Layered = figment.extract().map_err(|e| {
            // figment chains every error it found on separate lines; the first is enough.
            let text = e.to_string();
            ConfigError::Layers(text.lines().next().unwrap_or("bad configuration").into())
        })?;
        Config::validate(layered)
    }
}

impl Config {
    /// Layers the given flags and environment (as clap produced them) over the TOML file
    /// they name, if any, over the defaults.
    #[cfg(test)]
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        ConfigSource::from_cli(cli)?.resolve::<()>(None)
    }

    fn validate(l: Layered) -> Result<Config, ConfigError> {
        let server_url = non_empty(l.server_url).ok_or(ConfigError::Missing {
            setting: "server_url",
            flag: "server-url",
            env: "EDGE_SERVER_URL",
        })?;
        let server_url = check_http_url("server_url", &server_url)?;

        let device_id = non_empty(l.device_id).ok_or(ConfigError::Missing {
            setting: "device_id",
            flag: "device-id",
            env: "EDGE_DEVICE_ID",
        })?;
        check_device_id(&device_id)?;

        if l.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if l.status_interval_ms < MIN_STATUS_INTERVAL_MS {
            return Err(invalid(
                "status_interval_ms",
                format!(
                    "{} is below the minimum of {MIN_STATUS_INTERVAL_MS}",
                    l.status_interval_ms
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&l.log_level)
            .map_err(|e| invalid("log_level", format!("`{}`: {e}", l.log_level)))?;

        let cloud_url = non_empty(l.cloud_url)
            .map(|u| check_http_url("cloud_url", &u))
            .transpose()?;
        let cloud_token = l.cloud_token.filter(|t| !t.expose().trim().is_empty());
        if l.connection_mode == ConnectionMode::DirectCloud {
            if cloud_url.is_none() {
                return Err(invalid("cloud_url", "is required in DIRECT_CLOUD mode"));
            }
            if cloud_token.is_none() {
                return Err(invalid("cloud_token", "is required in DIRECT_CLOUD mode"));
            }
        }

        let ca_file = l.ca_file.filter(|p| !p.as_os_str().is_empty());
        if let Some(path) = &ca_file {
            if !path.is_file() {
                return Err(invalid(
                    "ca_file",
                    format!("{}: no such file", path.display()),
                ));
            }
            // Read it now, so a CA file that holds no certificate stops the agent at start
            // rather than failing every connection later.
            match tls::client_config(Some(path)) {
                Ok(_) | Err(tls::TlsError::NoRoots) => {}
                Err(e) => return Err(invalid("ca_file", e.to_string())),
            }
        }

        let scanner_listen = non_empty(l.scanner_listen)
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|e| {
                    invalid(
                        "scanner_listen",
                        format!("`{a}` is not an IP address and port: {e}"),
                    )
                })
            })
            .transpose()?;
        let company_id = non_empty(l.company_id);
        if scanner_listen.is_some() && company_id.is_none() {
            return Err(invalid(
                "company_id",
                "is required when scanner_listen is set: every queued record carries it",
            ));
        }
        let printer = non_empty(l.printer_addr)
            .map(|addr| -> Result<PrinterConfig, ConfigError> {
                check_printer_addr(&addr)?;
                let template = match l.printer_template.as_deref() {
                    Some(text) if !text.trim().is_empty() => {
                        LabelTemplate::parse(text).map_err(|e| invalid("printer_template", e))?
                    }
                    _ => LabelTemplate::default(),
                };
                Ok(PrinterConfig { addr, template })
            })
            .transpose()?;
        check_argv("reboot_command", &l.reboot_command)?;
        check_argv("shutdown_command", &l.shutdown_command)?;
        let log_file = l
            .log_file
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| l.data_dir.join(DEFAULT_LOG_FILE));

        let firmware_staging_dir = l
            .firmware_staging_dir
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| l.data_dir.join(DEFAULT_STAGING_DIR));
        let firmware_trusted_keys = l
            .firmware_trusted_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(parse_public_key)
            .collect::<Result<Vec<_>, _>>()?;
        if l.firmware_require_signature && firmware_trusted_keys.is_empty() {
            return Err(invalid(
                "firmware_trusted_keys",
                "at least one key is required when firmware_require_signature is on",
            ));
        }
        if l.firmware_require_signature && l.firmware_allow_unsigned {
            return Err(invalid(
                "firmware_allow_unsigned",
                "contradicts firmware_require_signature; set one of them",
            ));
        }

        let name = non_empty(l.name).unwrap_or_else(|| device_id.clone());
        Ok(Config {
            firmware_staging_dir,
            firmware_trusted_keys,
            firmware_require_signature: l.firmware_require_signature,
            firmware_allow_unsigned: l.firmware_allow_unsigned,
            allow_firmware_downgrade: l.allow_firmware_downgrade,
            firmware_activate: l.firmware_activate,
            log_file,
            scanner_listen,
            printer,
            batch_size: l.batch_size,
            pallet_size: l.pallet_size,
            reboot_command: l.reboot_command,
            shutdown_command: l.shutdown_command,
            data_dir: l.data_dir,
            server_url,
            enrollment_key: l.enrollment_key.filter(|k| !k.expose().is_empty()),
            name,
            company_id,
            production_line_id: non_empty(l.production_line_id),
            connection_mode: l.connection_mode,
            cloud_url,
            cloud_token,
            ca_file,
            status_interval: Duration::from_millis(l.status_interval_ms),
            log_level: l.log_level,
            device_id,
        })
    }

    /// `{server_url}/ws/device` with http → ws and https → wss.
    pub fn ws_url(&self) -> String {
        let rest = self
            .server_url
            .strip_prefix("https")
            .map(|r| format!("wss{r}"))
            .or_else(|| {
                self.server_url
                    .strip_prefix("http")
                    .map(|r| format!("ws{r}"))
            })
            .unwrap_or_else(|| self.server_url.clone());
        format!("{rest}/ws/device")
    }
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// Treats a blank value (say `EDGE_COMPANY_ID=`) as not given.
fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Accepts an absolute http or https URL with a host, and drops trailing slashes so paths
/// can be appended.
fn check_http_url(setting: &'static str, url: &str) -> Result<String, ConfigError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| invalid(setting, format!("`{url}` is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(invalid(
                setting,
                format!("`{url}` must start with http:// or https://"),
            ))
        }
    }
    match uri.host() {
        Some(host) if !host.is_empty() => {}
        _ => return Err(invalid(setting, format!("`{url}` has no host"))),
    }
    if uri.query().is_some() {
        return Err(invalid(setting, format!("`{url}` must not have a query")));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A printer address: `host:port` with a port above 0 and a host that is an IPv4 address, an
/// IPv6 address in brackets or a DNS name. It is not resolved here: a line PC may start
/// before its name server answers, and the printer waits in the queue until it does.
fn check_printer_addr(addr: &str) -> Result<(), ConfigError> {
    let fail = |why: &str| {
        Err(invalid(
            "printer_addr",
            format!("`{addr}` is not host:port (e.g. 192.168.1.50:9100): {why}"),
        ))
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return fail("no port");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return fail("the port must be a number from 1 to 65535"),
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => fail("not an IPv6 address in the brackets"),
        };
    }
    if host.contains(':') {
        return fail("an IPv6 address must be in brackets, e.g. [fd00::5]:9100");
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !name_ok {
        return fail("the host must be an IP address or a DNS name");
    }
    Ok(())
}

/// A program and its arguments: at least the program, and no empty or NUL-holding element
/// (execve could not pass it).
fn check_argv(setting: &'static str, argv: &[String]) -> Result<(), ConfigError> {
    match argv.first() {
        None => Err(invalid(setting, "needs at least a program")),
        Some(_) if argv.iter().any(|a| a.is_empty() || a.contains('\0')) => Err(invalid(
            setting,
            "elements must be non-empty and hold no NUL byte",
        )),
        Some(_) => Ok(()),
    }
}

/// An Ed25519 public key: standard base64 of exactly 32 bytes.
fn parse_public_key(text: &str) -> Result<[u8; 32], ConfigError> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| {
            invalid(
                "firmware_trusted_keys",
                format!("`{text}` is not base64 of a 32-byte Ed25519 public key"),
            )
        })
}

fn check_device_id(id: &str) -> Result<(), ConfigError> {
    if protocol::device::is_valid_device_id(id) {
        return Ok(());
    }
    Err(invalid(
        "device_id",
        format!("`{id}` is refused: {}", protocol::device::DEVICE_ID_RULE),
    ))
}

#[cfg(test)]
mod tests;
