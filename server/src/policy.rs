//! Who may send which command: the lowest role per command type and per shell template, and
//! the rights a role is told it has.

use protocol::commands::{Command, CommandType};
use protocol::rest::Role;

/// The lowest role that may run each shell template the agents ship. A template not listed
/// here is for admins only, so a new template on a device is never open by accident.
pub const SHELL_TEMPLATE_ROLES: &[(&str, Role)] = &[
    ("disk_usage", Role::Operator),
    ("network_interfaces", Role::Operator),
    ("service_status", Role::Operator),
    ("ping", Role::Manager),
    ("journal_tail", Role::Manager),
];

pub fn shell_template_min_role(template: &str) -> Role {
    SHELL_TEMPLATE_ROLES
        .iter()
        .find(|(name, _)| *name == template)
        .map(|(_, role)| *role)
        .unwrap_or(Role::Admin)
}

/// Which role may send which command (`server-management.md` §7): operators run the safe
/// ones, managers add queue and config changes, admins everything; `exec_shell` goes by the
/// template's own role.
/// The least role that may send a command type; `exec_shell` also needs its template's role.
pub fn min_role(kind: CommandType) -> Role {
    use protocol::commands::CommandType::*;
    match kind {
        ForceSync | PullLogs | EnableDevice | ExecShell => Role::Operator,
        ClearQueue | PushConfig => Role::Manager,
        RestartService | RebootOs | ShutdownOs | UpdateFirmware | DisableDevice => Role::Admin,
    }
}

pub fn role_may_send(role: Role, command: &Command) -> bool {
    let template_allows = match &command.kind {
        protocol::commands::CommandKind::ExecShell { template, .. } => {
            role >= shell_template_min_role(template)
        }
        _ => true,
    };
    role >= min_role(command.kind.command_type()) && template_allows
}

/// What `role` may send: the command types and the `exec_shell` templates.
pub fn rights_of(role: Role) -> protocol::rest::Rights {
    protocol::rest::Rights {
        permissions: crate::auth::permissions_of(role),
        commands: CommandType::ALL
            .into_iter()
            .filter(|k| role >= min_role(*k))
            .map(|k| k.as_str().to_owned())
            .collect(),
        templates: SHELL_TEMPLATE_ROLES
            .iter()
            .filter(|(_, least)| role >= *least && role >= min_role(CommandType::ExecShell))
            .map(|(name, _)| (*name).to_owned())
            .collect(),
        other_templates: role >= shell_template_min_role("")
            && role >= min_role(CommandType::ExecShell),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::commands::cap_output;
    use protocol::commands::CommandKind;

    #[test]
    fn rights_list_what_each_role_may_send() {
        let viewer = rights_of(Role::Viewer);
        assert!(viewer.commands.is_empty() && viewer.templates.is_empty());
        assert!(viewer.permissions.contains(&"devices.view".to_owned()));
        assert!(!viewer.permissions.contains(&"commands.dispatch".to_owned()));
        let operator = rights_of(Role::Operator);
        assert!(operator.commands.contains(&"force_sync".to_owned()));
        assert!(!operator.commands.contains(&"clear_queue".to_owned()));
        assert_eq!(
            operator.templates,
            ["disk_usage", "network_interfaces", "service_status"]
        );
        assert!(!operator.other_templates);
        let admin = rights_of(Role::Admin);
        assert_eq!(admin.commands.len(), CommandType::ALL.len());
        assert!(admin.other_templates);
        assert!(admin.permissions.contains(&"firmware.manage".to_owned()));
        // The lists agree with the checks the routes make.
        for role in [Role::Viewer, Role::Operator, Role::Manager, Role::Admin] {
            let rights = rights_of(role);
            for (name, _) in SHELL_TEMPLATE_ROLES {
                let c = Command::new(
                    "x",
                    protocol::commands::CommandKind::ExecShell {
                        template: (*name).into(),
                        args: Default::default(),
                    },
                );
                assert_eq!(
                    rights.templates.contains(&(*name).to_owned()),
                    role_may_send(role, &c)
                );
            }
        }
    }

    #[test]
    fn roles_follow_the_spec_table() {
        let c = |kind| Command::new("x", kind);
        assert!(role_may_send(Role::Operator, &c(CommandKind::ForceSync)));
        assert!(!role_may_send(
            Role::Operator,
            &c(CommandKind::ClearQueue {
                include_completed: false
            })
        ));
        assert!(role_may_send(
            Role::Manager,
            &c(CommandKind::PushConfig {
                patch: serde_json::json!({})
            })
        ));
        assert!(!role_may_send(Role::Manager, &c(CommandKind::RebootOs)));
        assert!(role_may_send(Role::Admin, &c(CommandKind::ShutdownOs)));
        let shell = |t: &str| {
            c(CommandKind::ExecShell {
                template: t.into(),
                args: Default::default(),
            })
        };
        assert!(role_may_send(Role::Operator, &shell("disk_usage")));
        assert!(!role_may_send(Role::Operator, &shell("ping")));
        assert!(role_may_send(Role::Manager, &shell("ping")));
        assert!(!role_may_send(Role::Manager, &shell("unknown_template")));
        assert!(role_may_send(Role::Admin, &shell("unknown_template")));
        assert!(!role_may_send(Role::Viewer, &shell("disk_usage")));
    }

    #[test]
    fn output_is_capped_on_a_char_boundary() {
        let long = "é".repeat(100);
        let capped = cap_output(&long, 51);
        assert!(capped.starts_with(&"é".repeat(25)));
        assert!(capped.contains("[truncated: 50 of 200 bytes kept]"));
        assert_eq!(cap_output("short", 10), "short");
    }
}
