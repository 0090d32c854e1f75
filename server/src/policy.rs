//! Who may send which command: the lowest role per command type and per shell template, the
//! seed's RBAC table by default and whatever the `[rights]` settings change of it, and the
//! rights a role is told it has.
//!
//! The policy is a value built once from the settings and held in `AppState`, so the checks of
//! every dispatch route and the lists `GET /api/v1/auth/me` gives the dashboard come from the
//! same table. It imports nothing of the server, so `config` can check it at start.

use std::collections::{BTreeMap, BTreeSet};

use protocol::commands::{Command, CommandKind, CommandType};
use protocol::rest::Role;
use serde::{Deserialize, Serialize};

/// The templates the edge agent ships (`agent/src/shell.rs`), named here so that
/// `GET /api/v1/auth/me` can list them; a device may report others of its own.
pub const KNOWN_TEMPLATES: &[&str] = &[
    "disk_usage",
    "network_interfaces",
    "service_status",
    "ping",
    "journal_tail",
];

/// The lowest role of a template no setting names: an admin's, so a new template on a device
/// is never open by accident.
pub const TEMPLATE_DEFAULT_ROLE: Role = Role::Admin;

/// The seed's RBAC table (`server-management.md` §7), roles ordered VIEWER < OPERATOR <
/// MANAGER < ADMIN: operators dispatch force_sync, pull_logs and enable_device; managers add
/// the device's config and clear_queue; everything else, `exec_shell` included, is the
/// admin's. `rotate_firmware_keys` (not in the seed) changes whom a device trusts, so it is
/// the admin's too (and signed, so not even an admin can forge one).
pub fn seed_min_role(kind: CommandType) -> Role {
    use protocol::commands::CommandType::*;
    match kind {
        ForceSync | PullLogs | EnableDevice => Role::Operator,
        ClearQueue | PushConfig => Role::Manager,
        RestartService | RebootOs | ShutdownOs | UpdateFirmware | DisableDevice | ExecShell
        | RotateFirmwareKeys => Role::Admin,
    }
}

/// The `[rights]` section of the settings as written (`[rights.commands]` and
/// `[rights.templates]`, a role name per entry); `Policy::from_settings` checks it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RightsSettings {
    pub commands: BTreeMap<String, String>,
    pub templates: BTreeMap<String, String>,
}

impl RightsSettings {
    /// Lays `name=ROLE,name=ROLE` lists (a flag or its variable) over the file's entries: an
    /// entry named again replaces the file's, the others stay.
    pub fn overlay(
        &mut self,
        commands: Option<&str>,
        templates: Option<&str>,
    ) -> Result<(), String> {
        for (setting, list, target) in [
            ("rights_commands", commands, &mut self.commands),
            ("rights_templates", templates, &mut self.templates),
        ] {
            let Some(list) = list else { continue };
            for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (name, role) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("{setting}: `{pair}` is not name=ROLE"))?;
                target.insert(name.trim().to_owned(), role.trim().to_owned());
            }
        }
        Ok(())
    }
}

/// Which role may send which command, after the settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    commands: BTreeMap<CommandType, Role>,
    templates: BTreeMap<String, Role>,
}

impl Default for Policy {
    /// The seed's table, no template below an admin.
    fn default() -> Self {
        Policy {
            commands: CommandType::ALL
                .into_iter()
                .map(|k| (k, seed_min_role(k)))
                .collect(),
            templates: BTreeMap::new(),
        }
    }
}

/// A role a setting names: any case, but not VIEWER, which is read-only in the seed's table
/// and whose grant the dispatch routes would refuse anyway.
fn parse_role(setting: &str, value: &str) -> Result<Role, String> {
    match Role::parse(&value.trim().to_ascii_uppercase()) {
        Some(Role::Viewer) => Err(format!(
            "{setting}: VIEWER is read-only and sends no command; use OPERATOR, MANAGER or ADMIN"
        )),
        Some(role) => Ok(role),
        None => Err(format!(
            "{setting}: `{value}` is not a role; use OPERATOR, MANAGER or ADMIN"
        )),
    }
}

/// A template name as the agent spells them; anything else cannot name a template.
fn is_template_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Policy {
    /// The seed's table with the settings' entries in place of its own. An entry may lower or
    /// raise a requirement; an unknown command type, a malformed template name or a name that
    /// is no role is refused with a one-line reason.
    pub fn from_settings(settings: &RightsSettings) -> Result<Policy, String> {
        let mut policy = Policy::default();
        for (name, role) in &settings.commands {
            let setting = format!("rights.commands.{name}");
            let kind: CommandType = name.parse().map_err(|_| {
                let known: Vec<&str> = CommandType::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "{setting}: not a command type; use one of {}",
                    known.join(", ")
                )
            })?;
            policy.commands.insert(kind, parse_role(&setting, role)?);
        }
        for (name, role) in &settings.templates {
            let setting = format!("rights.templates.{name}");
            if !is_template_name(name) {
                return Err(format!(
                    "{setting}: not a template name (letters, digits, `_` and `-`, at most 64)"
                ));
            }
            policy
                .templates
                .insert(name.clone(), parse_role(&setting, role)?);
        }
        Ok(policy)
    }

    /// The lowest role that may send a command type; `exec_shell` also needs its template's.
    pub fn min_role(&self, kind: CommandType) -> Role {
        self.commands
            .get(&kind)
            .copied()
            .unwrap_or_else(|| seed_min_role(kind))
    }

    /// The lowest role the template itself asks for; running it also needs `exec_shell`'s.
    pub fn template_min_role(&self, template: &str) -> Role {
        self.templates
            .get(template)
            .copied()
            .unwrap_or(TEMPLATE_DEFAULT_ROLE)
    }

    pub fn may_run_template(&self, role: Role, template: &str) -> bool {
        role >= self.min_role(CommandType::ExecShell) && role >= self.template_min_role(template)
    }

    pub fn may_send(&self, role: Role, command: &Command) -> bool {
        match &command.kind {
            CommandKind::ExecShell { template, .. } => self.may_run_template(role, template),
            kind => role >= self.min_role(kind.command_type()),
        }
    }

    /// Template entries that open nothing: below `exec_shell`'s role, a role that passes the
    /// template still cannot send `exec_shell`. Worth a line in the log at start.
    pub fn ineffective_templates(&self) -> Vec<String> {
        let shell = self.min_role(CommandType::ExecShell);
        self.templates
            .iter()
            .filter(|(_, role)| **role < shell)
            .map(|(name, role)| {
                format!(
                    "rights.templates.{name} = {} opens nothing below exec_shell's {}",
                    role.as_str(),
                    shell.as_str()
                )
            })
            .collect()
    }

    /// What `role` may send, with the route permissions (`auth::permissions_of`) it holds.
    pub fn rights_of(&self, role: Role, permissions: Vec<String>) -> protocol::rest::Rights {
        let names: BTreeSet<&str> = KNOWN_TEMPLATES
            .iter()
            .copied()
            .chain(self.templates.keys().map(String::as_str))
            .collect();
        protocol::rest::Rights {
            permissions,
            commands: CommandType::ALL
                .into_iter()
                .filter(|k| role >= self.min_role(*k))
                .map(|k| k.as_str().to_owned())
                .collect(),
            templates: names
                .into_iter()
                .filter(|t| self.may_run_template(role, t))
                .map(str::to_owned)
                .collect(),
            // A template no setting names needs the default template role.
            other_templates: role >= TEMPLATE_DEFAULT_ROLE
                && role >= self.min_role(CommandType::ExecShell),
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
