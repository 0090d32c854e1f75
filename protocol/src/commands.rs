//! The twelve device commands, their results and their progress reports.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A command as it travels in a REST body and in a `command` frame: always a `type` and an
/// `id`, plus the fields of its type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Command {
    pub id: String,
    #[serde(flatten)]
    pub kind: CommandKind,
}

/// The fields of each command type, tagged by `type` as `contract.md` names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandKind {
    ForceSync,
    #[serde(rename_all = "camelCase")]
    ClearQueue {
        #[serde(default)]
        include_completed: bool,
    },
    PullLogs {
        #[serde(default = "default_log_lines")]
        lines: u32,
    },
    RestartService,
    RebootOs,
    ShutdownOs,
    PushConfig {
        patch: Value,
    },
    #[serde(rename_all = "camelCase")]
    UpdateFirmware {
        version: String,
        url: String,
        sha256: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature_base64: Option<String>,
        /// The release's `signatureExpiresAt`: the signed manifest covers it, so a device
        /// cannot check `signatureBase64` without it. An addition to the contract's fields;
        /// optional, so older senders still parse.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature_expires_at: Option<chrono::DateTime<chrono::Utc>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment_id: Option<String>,
        /// Lets the device install a version older than the one it runs (a rollback the
        /// operator chose). An addition to the contract's fields; absent means no.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        allow_downgrade: bool,
        /// The release's project, which the signed manifest names; absent means the edge
        /// agent's own (`edge`), as every sender before this field meant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        project: Option<String>,
        /// The signed manifest's downgrade permission (`downgrade=allowed`); covered by the
        /// signature, unlike `allowDowngrade`, which only says the operator wants one.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        manifest_allow_downgrade: bool,
        /// The signed manifest's security floor (`security_floor=N`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        security_floor: Option<u64>,
    },
    /// A change of the keys the device trusts for releases, signed by a key it trusts already
    /// (`protocol::firmware::KeyRotation` gives the signed bytes).
    #[serde(rename_all = "camelCase")]
    RotateFirmwareKeys {
        #[serde(default)]
        add: Vec<String>,
        #[serde(default)]
        retire: Vec<String>,
        sequence: u64,
        expires_at: chrono::DateTime<chrono::Utc>,
        signature_base64: String,
    },
    ExecShell {
        template: String,
        #[serde(default)]
        args: BTreeMap<String, Value>,
    },
    EnableDevice,
    DisableDevice {
        reason: String,
    },
}

fn default_log_lines() -> u32 {
    100
}

/// The name of a command type without its fields, for tables, filters and permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CommandType {
    ForceSync,
    ClearQueue,
    PullLogs,
    RestartService,
    RebootOs,
    ShutdownOs,
    PushConfig,
    UpdateFirmware,
    ExecShell,
    EnableDevice,
    DisableDevice,
    RotateFirmwareKeys,
}

impl CommandType {
    pub const ALL: [CommandType; 12] = [
        CommandType::ForceSync,
        CommandType::ClearQueue,
        CommandType::PullLogs,
        CommandType::RestartService,
        CommandType::RebootOs,
        CommandType::ShutdownOs,
        CommandType::PushConfig,
        CommandType::UpdateFirmware,
        CommandType::ExecShell,
        CommandType::EnableDevice,
        CommandType::DisableDevice,
        CommandType::RotateFirmwareKeys,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandType::ForceSync => "force_sync",
            CommandType::ClearQueue => "clear_queue",
            CommandType::PullLogs => "pull_logs",
            CommandType::RestartService => "restart_service",
            CommandType::RebootOs => "reboot_os",
            CommandType::ShutdownOs => "shutdown_os",
            CommandType::PushConfig => "push_config",
            CommandType::UpdateFirmware => "update_firmware",
            CommandType::ExecShell => "exec_shell",
            CommandType::EnableDevice => "enable_device",
            CommandType::DisableDevice => "disable_device",
            CommandType::RotateFirmwareKeys => "rotate_firmware_keys",
        }
    }

    /// The fields a command of this type has besides `type` and `id`, as they are spelt on
    /// the wire. `Command::unknown_field` reads them; a test holds them to what serde reads.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            CommandType::ClearQueue => &["includeCompleted"],
            CommandType::PullLogs => &["lines"],
            CommandType::PushConfig => &["patch"],
            CommandType::UpdateFirmware => &[
                "version",
                "url",
                "sha256",
                "size",
                "signatureBase64",
                "signatureExpiresAt",
                "deploymentId",
                "allowDowngrade",
                "project",
                "manifestAllowDowngrade",
                "securityFloor",
            ],
            CommandType::RotateFirmwareKeys => {
                &["add", "retire", "sequence", "expiresAt", "signatureBase64"]
            }
            CommandType::ExecShell => &["template", "args"],
            CommandType::DisableDevice => &["reason"],
            CommandType::ForceSync
            | CommandType::RestartService
            | CommandType::RebootOs
            | CommandType::ShutdownOs
            | CommandType::EnableDevice => &[],
        }
    }

    /// Dangerous commands need `"confirm": true` in a REST dispatch (`contract.md`).
    pub fn is_dangerous(self) -> bool {
        matches!(
            self,
            CommandType::RebootOs
                | CommandType::ShutdownOs
                | CommandType::DisableDevice
                | CommandType::ClearQueue
                | CommandType::UpdateFirmware
        )
    }
}

impl fmt::Display for CommandType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a command type name that is not one of the twelve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownCommandType(pub String);

impl fmt::Display for UnknownCommandType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown command type `{}`", self.0)
    }
}

impl std::error::Error for UnknownCommandType {}

impl FromStr for CommandType {
    type Err = UnknownCommandType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommandType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownCommandType(s.to_owned()))
    }
}

impl CommandKind {
    pub fn command_type(&self) -> CommandType {
        match self {
            CommandKind::ForceSync => CommandType::ForceSync,
            CommandKind::ClearQueue { .. } => CommandType::ClearQueue,
            CommandKind::PullLogs { .. } => CommandType::PullLogs,
            CommandKind::RestartService => CommandType::RestartService,
            CommandKind::RebootOs => CommandType::RebootOs,
            CommandKind::ShutdownOs => CommandType::ShutdownOs,
            CommandKind::PushConfig { .. } => CommandType::PushConfig,
            CommandKind::UpdateFirmware { .. } => CommandType::UpdateFirmware,
            CommandKind::ExecShell { .. } => CommandType::ExecShell,
            CommandKind::EnableDevice => CommandType::EnableDevice,
            CommandKind::DisableDevice { .. } => CommandType::DisableDevice,
            CommandKind::RotateFirmwareKeys { .. } => CommandType::RotateFirmwareKeys,
        }
    }
}

/// Most keys one rotation may add and retire together: a keyring is a handful of keys.
pub const MAX_ROTATED_KEYS: usize = 16;

/// Largest command id accepted; ids are stored and echoed, so they are bounded.
pub const MAX_COMMAND_ID_LEN: usize = 128;

impl Command {
    pub fn new(id: impl Into<String>, kind: CommandKind) -> Self {
        Command {
            id: id.into(),
            kind,
        }
    }

    pub fn command_type(&self) -> CommandType {
        self.kind.command_type()
    }

    /// The first field of a command object that its type does not have (`type` must name a
    /// known type). REST bodies refuse such a field: serde would drop it, and `exec_shell`
    /// with `params` instead of `args` would run its template without arguments. `Command`
    /// itself stays tolerant, because it is also the `command` frame an agent reads: an agent
    /// must not lose a whole command (and its answer) to a field a newer server added.
    pub fn unknown_field(object: &serde_json::Map<String, Value>) -> Option<&str> {
        let known = object
            .get("type")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<CommandType>().ok())?
            .fields();
        object
            .keys()
            .map(String::as_str)
            .find(|key| *key != "type" && *key != "id" && !known.contains(key))
    }

    /// Checks what serde cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("command id must not be empty".into());
        }
        if self.id.len() > MAX_COMMAND_ID_LEN {
            return Err(format!(
                "command id is longer than {MAX_COMMAND_ID_LEN} bytes"
            ));
        }
        match &self.kind {
            CommandKind::DisableDevice { reason } if reason.trim().is_empty() => {
                Err("disable_device needs a non-empty reason".into())
            }
            CommandKind::PushConfig { patch } if !patch.is_object() => {
                Err("push_config patch must be a JSON object (RFC 7386 merge patch)".into())
            }
            CommandKind::ExecShell { template, .. } if template.trim().is_empty() => {
                Err("exec_shell needs a template name".into())
            }
            CommandKind::UpdateFirmware { sha256, .. }
                if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Err("update_firmware sha256 must be 64 hexadecimal characters".into())
            }
            CommandKind::RotateFirmwareKeys { add, retire, .. } => {
                if add.is_empty() && retire.is_empty() {
                    return Err("rotate_firmware_keys adds or retires at least one key".into());
                }
                if add.len() + retire.len() > MAX_ROTATED_KEYS {
                    return Err(format!(
                        "rotate_firmware_keys names at most {MAX_ROTATED_KEYS} keys"
                    ));
                }
                for key in add.iter().chain(retire) {
                    crate::signing::parse_public_key(key).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// What a device answers to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CommandResult {
    pub command_id: String,
    pub success: bool,
    #[serde(default)]
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl CommandResult {
    pub fn ok(command_id: impl Into<String>, output: impl Into<String>) -> Self {
        CommandResult {
            command_id: command_id.into(),
            success: true,
            output: output.into(),
            data: None,
        }
    }

    pub fn failed(command_id: impl Into<String>, output: impl Into<String>) -> Self {
        CommandResult {
            command_id: command_id.into(),
            success: false,
            output: output.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// A device's report of progress on a long command (firmware download, for one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandProgress {
    pub command_id: String,
    pub percent: u8,
    #[serde(default)]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One command of each type with every field set to a value serde writes out: a field
    /// added to a variant must be filled in here (the literal is exhaustive), and then this
    /// test holds `CommandType::fields` to it.
    fn every_field(command_type: CommandType) -> CommandKind {
        match command_type {
            CommandType::ForceSync => CommandKind::ForceSync,
            CommandType::ClearQueue => CommandKind::ClearQueue {
                include_completed: true,
            },
            CommandType::PullLogs => CommandKind::PullLogs { lines: 5 },
            CommandType::RestartService => CommandKind::RestartService,
            CommandType::RebootOs => CommandKind::RebootOs,
            CommandType::ShutdownOs => CommandKind::ShutdownOs,
            CommandType::PushConfig => CommandKind::PushConfig {
                patch: serde_json::json!({}),
            },
            CommandType::UpdateFirmware => CommandKind::UpdateFirmware {
                version: "1.0.0".into(),
                url: "/a".into(),
                sha256: "0".repeat(64),
                size: 1,
                signature_base64: Some("s".into()),
                signature_expires_at: Some(chrono::Utc::now()),
                deployment_id: Some("d".into()),
                allow_downgrade: true,
                project: Some("edge".into()),
                manifest_allow_downgrade: true,
                security_floor: Some(1),
            },
            CommandType::ExecShell => CommandKind::ExecShell {
                template: "ping".into(),
                args: BTreeMap::new(),
            },
            CommandType::EnableDevice => CommandKind::EnableDevice,
            CommandType::DisableDevice => CommandKind::DisableDevice { reason: "r".into() },
            CommandType::RotateFirmwareKeys => CommandKind::RotateFirmwareKeys {
                add: vec!["k".into()],
                retire: vec!["r".into()],
                sequence: 1,
                expires_at: chrono::Utc::now(),
                signature_base64: "s".into(),
            },
        }
    }

    #[test]
    fn the_field_lists_are_what_serde_writes() {
        for command_type in CommandType::ALL {
            let value = serde_json::to_value(Command::new("c", every_field(command_type))).unwrap();
            let mut written: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "type" && *k != "id")
                .collect();
            let mut listed = command_type.fields().to_vec();
            written.sort_unstable();
            listed.sort_unstable();
            assert_eq!(written, listed, "{command_type}");
        }
    }

    #[test]
    fn a_misspelt_field_is_named() {
        let command =
            serde_json::json!({"type": "exec_shell", "id": "1", "template": "ping", "params": {}});
        assert_eq!(
            Command::unknown_field(command.as_object().unwrap()),
            Some("params")
        );
        let command =
            serde_json::json!({"type": "exec_shell", "id": "1", "template": "ping", "args": {}});
        assert_eq!(Command::unknown_field(command.as_object().unwrap()), None);
        // The frame an agent reads still parses with it: agents stay tolerant.
        let command = serde_json::json!({"type": "force_sync", "id": "1", "newerField": 1});
        assert_eq!(
            Command::unknown_field(command.as_object().unwrap()),
            Some("newerField")
        );
        assert!(serde_json::from_value::<Command>(command).is_ok());
    }
}
