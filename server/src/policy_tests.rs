//! The policy's unit tests: the seed's table written out, what settings change of it, and the
//! rights lists agreeing with the checks.

use super::*;
use protocol::commands::CommandKind;

const ROLES: [Role; 4] = [Role::Viewer, Role::Operator, Role::Manager, Role::Admin];

/// A command of each type, with fields that fit it.
fn command_of(kind: CommandType) -> Command {
    let kind = match kind {
        CommandType::ForceSync => CommandKind::ForceSync,
        CommandType::ClearQueue => CommandKind::ClearQueue {
            include_completed: false,
        },
        CommandType::PullLogs => CommandKind::PullLogs { lines: 10 },
        CommandType::RestartService => CommandKind::RestartService,
        CommandType::RebootOs => CommandKind::RebootOs,
        CommandType::ShutdownOs => CommandKind::ShutdownOs,
        CommandType::PushConfig => CommandKind::PushConfig {
            patch: serde_json::json!({}),
        },
        CommandType::UpdateFirmware => CommandKind::UpdateFirmware {
            version: "1.0.0".into(),
            url: "/x".into(),
            sha256: "ab".repeat(32),
            size: 1,
            signature_base64: None,
            signature_expires_at: None,
            deployment_id: None,
            allow_downgrade: false,
            project: None,
            manifest_allow_downgrade: false,
            security_floor: None,
        },
        CommandType::RotateFirmwareKeys => CommandKind::RotateFirmwareKeys {
            add: vec![protocol::signing::encode_public_key(&[1; 32])],
            retire: vec![],
            sequence: 1,
            expires_at: chrono::Utc::now(),
            signature_base64: "c2ln".into(),
        },
        CommandType::ExecShell => return shell("disk_usage"),
        CommandType::EnableDevice => CommandKind::EnableDevice,
        CommandType::DisableDevice => CommandKind::DisableDevice { reason: "x".into() },
    };
    Command::new("x", kind)
}

fn shell(template: &str) -> Command {
    Command::new(
        "x",
        CommandKind::ExecShell {
            template: template.into(),
            args: Default::default(),
        },
    )
}

fn settings(commands: &[(&str, &str)], templates: &[(&str, &str)]) -> RightsSettings {
    let map = |entries: &[(&str, &str)]| {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    RightsSettings {
        commands: map(commands),
        templates: map(templates),
    }
}

#[test]
fn defaults_are_the_seed_table() {
    // Written out from `server-management.md` §7, not derived from `seed_min_role`.
    let operator = ["force_sync", "pull_logs", "enable_device"];
    let manager = [&operator[..], &["clear_queue", "push_config"]].concat();
    let policy = Policy::default();
    for kind in CommandType::ALL {
        for role in ROLES {
            let expected = match role {
                Role::Viewer => false,
                Role::Operator => operator.contains(&kind.as_str()),
                Role::Manager => manager.contains(&kind.as_str()),
                Role::Admin => true,
            };
            assert_eq!(
                policy.may_send(role, &command_of(kind)),
                expected,
                "{} sending {kind}",
                role.as_str()
            );
        }
    }
    for template in KNOWN_TEMPLATES.iter().chain(&["a_device_own"]) {
        for role in [Role::Viewer, Role::Operator, Role::Manager] {
            assert!(!policy.may_send(role, &shell(template)), "{template}");
        }
        assert!(policy.may_send(Role::Admin, &shell(template)), "{template}");
    }
}

#[test]
fn a_grant_needs_both_the_command_and_the_template() {
    let only_template = Policy::from_settings(&settings(&[], &[("disk_usage", "OPERATOR")]));
    let only_template = only_template.unwrap();
    assert!(!only_template.may_send(Role::Operator, &shell("disk_usage")));
    assert_eq!(only_template.ineffective_templates().len(), 1);

    let granted = Policy::from_settings(&settings(
        &[("exec_shell", "operator")],
        &[("disk_usage", "OPERATOR"), ("ping", "MANAGER")],
    ))
    .unwrap();
    assert!(granted.ineffective_templates().is_empty());
    assert!(granted.may_send(Role::Operator, &shell("disk_usage")));
    assert!(!granted.may_send(Role::Operator, &shell("ping")));
    assert!(granted.may_send(Role::Manager, &shell("ping")));
    assert!(!granted.may_send(Role::Manager, &shell("journal_tail")));
    assert!(!granted.may_send(Role::Viewer, &shell("disk_usage")));
    let rights = granted.rights_of(Role::Operator, vec![]);
    assert_eq!(rights.templates, ["disk_usage"]);
    assert!(rights.commands.contains(&"exec_shell".to_owned()));
    assert!(!rights.other_templates);
}

#[test]
fn settings_may_raise_a_requirement() {
    let policy = Policy::from_settings(&settings(
        &[("enable_device", "MANAGER"), ("push_config", "ADMIN")],
        &[],
    ))
    .unwrap();
    assert!(!policy.may_send(Role::Operator, &command_of(CommandType::EnableDevice)));
    assert!(policy.may_send(Role::Manager, &command_of(CommandType::EnableDevice)));
    assert!(!policy.may_send(Role::Manager, &command_of(CommandType::PushConfig)));
    assert!(policy.may_send(Role::Operator, &command_of(CommandType::ForceSync)));
}

#[test]
fn bad_entries_are_one_line_refusals() {
    let cases = [
        (
            settings(&[("exec_shel", "OPERATOR")], &[]),
            "rights.commands.exec_shel: not a command type",
        ),
        (
            settings(&[("exec_shell", "BOSS")], &[]),
            "rights.commands.exec_shell: `BOSS` is not a role",
        ),
        (
            settings(&[("force_sync", "VIEWER")], &[]),
            "rights.commands.force_sync: VIEWER is read-only",
        ),
        (
            settings(&[], &[("disk_usage", "root")]),
            "rights.templates.disk_usage: `root` is not a role",
        ),
        (
            settings(&[], &[("rm -rf", "ADMIN")]),
            "rights.templates.rm -rf: not a template name",
        ),
    ];
    for (settings, expected) in cases {
        let err = Policy::from_settings(&settings).unwrap_err();
        assert!(err.starts_with(expected), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn flags_lay_entries_over_the_file() {
    let mut rights = settings(&[("exec_shell", "MANAGER"), ("push_config", "ADMIN")], &[]);
    rights
        .overlay(
            Some("exec_shell=OPERATOR, enable_device=MANAGER"),
            Some("ping=OPERATOR"),
        )
        .unwrap();
    assert_eq!(rights.commands["exec_shell"], "OPERATOR");
    assert_eq!(rights.commands["push_config"], "ADMIN");
    assert_eq!(rights.commands["enable_device"], "MANAGER");
    assert_eq!(rights.templates["ping"], "OPERATOR");
    let err = rights.overlay(Some("exec_shell"), None).unwrap_err();
    assert!(err.starts_with("rights_commands: `exec_shell`"), "{err}");
}

#[test]
fn rights_agree_with_the_checks() {
    let policies = [
        Policy::default(),
        Policy::from_settings(&settings(
            &[("exec_shell", "OPERATOR"), ("pull_logs", "MANAGER")],
            &[("disk_usage", "OPERATOR"), ("own_tool", "MANAGER")],
        ))
        .unwrap(),
    ];
    for policy in policies {
        for role in ROLES {
            let rights = policy.rights_of(role, vec![]);
            for kind in CommandType::ALL {
                if kind != CommandType::ExecShell {
                    assert_eq!(
                        rights.commands.contains(&kind.as_str().to_owned()),
                        policy.may_send(role, &command_of(kind))
                    );
                }
            }
            for template in KNOWN_TEMPLATES.iter().chain(&["own_tool"]) {
                let listed = rights.templates.contains(&(*template).to_owned());
                let known =
                    KNOWN_TEMPLATES.contains(template) || policy.templates.contains_key(*template);
                assert_eq!(
                    listed || (!known && rights.other_templates),
                    policy.may_send(role, &shell(template)),
                    "{} running {template}",
                    role.as_str()
                );
            }
        }
    }
}
