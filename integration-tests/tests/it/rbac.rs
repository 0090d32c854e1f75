//! The seed's RBAC table (`server-management.md` §7) against the real server on SQLite and
//! PostgreSQL: every command type as every role through the REST dispatch routes, a site's
//! grant in the settings file that opens one read-only template to operators (and what
//! `GET /api/v1/auth/me` then lists), device deletion as an admin's alone, and settings that
//! name no command type or no role stopping the server at start.

use integration_tests::*;
use protocol::commands::CommandType;
use serde_json::{json, Value};

const PASSWORD: &str = "rbac-user-password";
const DEVICE: &str = "edge-rbac";
const ROLES: [&str; 4] = ["VIEWER", "OPERATOR", "MANAGER", "ADMIN"];

on_both_backends!(
    seed_table_over_every_command_type_and_role,
    a_settings_grant_opens_one_template_to_operators,
    deleting_a_device_is_for_admins_only,
);

/// The seed's table, written out here rather than read from the server under test: the
/// command types each role may send.
fn seed_allows(role: &str, kind: CommandType) -> bool {
    use CommandType::*;
    match role {
        "VIEWER" => false,
        "OPERATOR" => matches!(kind, ForceSync | PullLogs | EnableDevice),
        "MANAGER" => matches!(
            kind,
            ForceSync | PullLogs | EnableDevice | ClearQueue | PushConfig
        ),
        "ADMIN" => true,
        _ => unreachable!("{role}"),
    }
}

/// A command of `kind` with fields that fit it; the match has no catch-all, so a new command
/// type does not compile until the table covers it.
fn command_of(kind: CommandType, id: &str) -> Value {
    use CommandType::*;
    let mut command = match kind {
        ForceSync | RestartService | RebootOs | ShutdownOs | EnableDevice => json!({}),
        ClearQueue => json!({"includeCompleted": false}),
        PullLogs => json!({"lines": 10}),
        PushConfig => json!({"patch": {"statusIntervalMs": 5000}}),
        UpdateFirmware => json!({"version": "9.9.9", "url": "/api/v1/firmware/releases/x/artifact",
                                "sha256": "ab".repeat(32), "size": 10}),
        ExecShell => json!({"template": "disk_usage", "args": {"path": "/"}}),
        DisableDevice => json!({"reason": "rbac table"}),
        // The server checks only the shape; the device checks the signature.
        RotateFirmwareKeys => json!({"add": [protocol::signing::encode_public_key(&[3; 32])],
                                    "sequence": 1, "expiresAt": "2030-01-01T00:00:00Z",
                                    "signatureBase64": "c2ln"}),
    };
    command["type"] = json!(kind.as_str());
    command["id"] = json!(id);
    command
}

/// A confirmed dispatch that does not wait for the (offline) device: 202 once the command is
/// stored, so the status says only whether the role was let through.
fn body(command: Value) -> Value {
    json!({"command": command, "confirm": true, "wait": false})
}

fn shell(template: &str, id: &str) -> Value {
    json!({"type": "exec_shell", "id": id, "template": template, "args": {}})
}

/// A user of each role below ADMIN, logged in, and the admin, by role name.
fn users(server: &ServerProcess, admin: &Api) -> Vec<(&'static str, Api)> {
    ROLES
        .iter()
        .map(|role| {
            let api = if *role == "ADMIN" {
                Api::admin(server)
            } else {
                let name = format!("rbac-{}", role.to_lowercase());
                admin.create_user(&name, PASSWORD, role);
                Api::login(server, &name, PASSWORD)
            };
            (*role, api)
        })
        .collect()
}

/// Asserts a dispatch was let through (202) or refused for the role (403 `forbidden`), and
/// that a refused one left no command behind.
fn assert_outcome(api: &Api, reply: &Reply, allowed: bool, what: &str, command_id: Option<&str>) {
    if allowed {
        assert_eq!(reply.status, 202, "{what}: {}", reply.body);
        return;
    }
    assert_eq!(reply.status, 403, "{what}: {}", reply.body);
    assert_eq!(reply.error_code(), "forbidden", "{what}");
    if let Some(id) = command_id {
        let stored = api.get(&format!("/api/v1/devices/{DEVICE}/commands/{id}"));
        assert_eq!(
            stored.status, 404,
            "{what} stored a command: {}",
            stored.body
        );
    }
}

fn seed_table_over_every_command_type_and_role(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    admin.enroll(DEVICE);
    let group = admin.post("/api/v1/device-groups", &json!({"name": "rbac-line"}));
    assert_eq!(group.status, 201, "{}", group.body);
    let group_id = group.data()["id"].as_str().unwrap().to_owned();
    let members = admin.post(
        &format!("/api/v1/device-groups/{group_id}/members"),
        &json!({"deviceIds": [DEVICE]}),
    );
    assert_eq!(members.status, 200, "{}", members.body);

    for (role, api) in users(&server, &admin) {
        for kind in CommandType::ALL {
            let allowed = seed_allows(role, kind);
            let id = format!("rbac-{}-{kind}", role.to_lowercase());
            // One device, many devices, a group: each route makes the same check.
            let single = api.post(
                &format!("/api/v1/devices/{DEVICE}/commands"),
                &body(command_of(kind, &id)),
            );
            assert_outcome(
                &admin,
                &single,
                allowed,
                &format!("{role} {kind}"),
                Some(&id),
            );
            let mut bulk = body(command_of(kind, &format!("{id}-bulk")));
            bulk["deviceIds"] = json!([DEVICE]);
            let bulk = api.post("/api/v1/devices/commands", &bulk);
            assert_outcome(&admin, &bulk, allowed, &format!("{role} bulk {kind}"), None);
            let grouped = api.post(
                &format!("/api/v1/device-groups/{group_id}/commands"),
                &body(command_of(kind, &format!("{id}-group"))),
            );
            assert_outcome(
                &admin,
                &grouped,
                allowed,
                &format!("{role} group {kind}"),
                None,
            );
        }
        // No template is open below ADMIN, whatever its name.
        for template in [
            "disk_usage",
            "network_interfaces",
            "service_status",
            "ping",
            "journal_tail",
            "a_device_own",
        ] {
            let id = format!("rbac-{}-{template}", role.to_lowercase());
            let reply = api.post(
                &format!("/api/v1/devices/{DEVICE}/commands"),
                &body(shell(template, &id)),
            );
            let what = format!("{role} exec_shell {template}");
            assert_outcome(&admin, &reply, role == "ADMIN", &what, Some(&id));
        }
        // What the dashboard is told matches what the routes did.
        let me = api.get("/api/v1/auth/me");
        let rights = &me.data()["rights"];
        let expected: Vec<&str> = CommandType::ALL
            .into_iter()
            .filter(|k| seed_allows(role, *k))
            .map(|k| k.as_str())
            .collect();
        assert_eq!(rights["commands"], json!(expected), "{role}");
        let templates = rights["templates"].as_array().unwrap();
        assert_eq!(
            templates.is_empty(),
            role != "ADMIN",
            "{role}: {templates:?}"
        );
        assert_eq!(rights["otherTemplates"], role == "ADMIN", "{role}");
    }
}

/// Writes a settings file into `dir` and returns its path.
fn settings_file(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("factory-server.toml");
    std::fs::write(&path, text).expect("write settings");
    path.to_str().unwrap().to_owned()
}

const GRANT: &str = "[rights.commands]\nexec_shell = \"OPERATOR\"\n\
                     [rights.templates]\ndisk_usage = \"OPERATOR\"\n";

fn a_settings_grant_opens_one_template_to_operators(backend: Backend) {
    // Without the grant, the seed's table.
    let plain = ServerProcess::start(backend);
    let admin = Api::admin(&plain);
    admin.enroll(DEVICE);
    admin.create_user("op", PASSWORD, "OPERATOR");
    let op = Api::login(&plain, "op", PASSWORD);
    let refused = op.post(
        &format!("/api/v1/devices/{DEVICE}/commands"),
        &body(shell("disk_usage", "plain-1")),
    );
    assert_outcome(
        &admin,
        &refused,
        false,
        "operator without the grant",
        Some("plain-1"),
    );
    let rights = op.get("/api/v1/auth/me").data()["rights"].clone();
    assert!(!rights["commands"]
        .as_array()
        .unwrap()
        .contains(&json!("exec_shell")));
    assert_eq!(rights["templates"], json!([]));
    drop(plain);

    let config_dir = TempDir::new("rbac-config");
    let config = settings_file(&config_dir, GRANT);
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--config", &config],
    );
    let admin = Api::admin(&server);
    let dev = FakeDevice::connect(&server, &admin, DEVICE);
    let device = dev.respond_with(|c| vec![result_frame(c, true, "Filesystem  Size  Used")]);
    admin.create_user("op", PASSWORD, "OPERATOR");
    admin.create_user("mgr", PASSWORD, "MANAGER");
    let op = Api::login(&server, "op", PASSWORD);

    // disk_usage runs, to the device and back.
    let ran = op.post(
        &format!("/api/v1/devices/{DEVICE}/commands"),
        &json!({"command": {"type": "exec_shell", "id": "grant-1", "template": "disk_usage",
                            "args": {"path": "/"}}, "timeoutMs": 30000}),
    );
    assert_eq!(ran.status, 200, "{}", ran.body);
    assert_eq!(ran.data()["status"], "SUCCESS", "{}", ran.body);
    // Every other template stays closed to it; the grant changed no other command type.
    for (n, template) in ["ping", "journal_tail", "service_status", "a_device_own"]
        .into_iter()
        .enumerate()
    {
        let id = format!("grant-refused-{n}");
        let reply = op.post(
            &format!("/api/v1/devices/{DEVICE}/commands"),
            &body(shell(template, &id)),
        );
        assert_outcome(
            &admin,
            &reply,
            false,
            &format!("operator {template}"),
            Some(&id),
        );
    }
    let clear = op.post(
        &format!("/api/v1/devices/{DEVICE}/commands"),
        &body(command_of(CommandType::ClearQueue, "grant-clear")),
    );
    assert_outcome(
        &admin,
        &clear,
        false,
        "operator clear_queue",
        Some("grant-clear"),
    );
    // Roles are ordered: a manager has what an operator has, and no more of the templates.
    let mgr = Api::login(&server, "mgr", PASSWORD);
    let managed = mgr.post(
        &format!("/api/v1/devices/{DEVICE}/commands"),
        &body(shell("disk_usage", "grant-mgr-1")),
    );
    assert_outcome(&admin, &managed, true, "manager disk_usage", None);
    let ping = mgr.post(
        &format!("/api/v1/devices/{DEVICE}/commands"),
        &body(shell("ping", "grant-mgr-2")),
    );
    assert_outcome(&admin, &ping, false, "manager ping", Some("grant-mgr-2"));

    // `GET /api/v1/auth/me` lists the grant, which is what the dashboard draws from.
    let rights = op.get("/api/v1/auth/me").data()["rights"].clone();
    assert_eq!(
        rights["commands"],
        json!(["force_sync", "pull_logs", "exec_shell", "enable_device"])
    );
    assert_eq!(rights["templates"], json!(["disk_usage"]));
    assert_eq!(rights["otherTemplates"], false);
    let rights = admin.get("/api/v1/auth/me").data()["rights"].clone();
    assert_eq!(rights["templates"].as_array().unwrap().len(), 5, "{rights}");
    assert_eq!(rights["otherTemplates"], true);
    drop(device);
}

fn deleting_a_device_is_for_admins_only(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    admin.enroll(DEVICE);
    let all = users(&server, &admin);
    for (role, api) in &all[..3] {
        let reply = api.delete(&format!("/api/v1/devices/{DEVICE}"));
        assert_eq!(reply.status, 403, "{role}: {}", reply.body);
        assert_eq!(reply.error_code(), "forbidden", "{role}");
        assert_eq!(admin.get(&format!("/api/v1/devices/{DEVICE}")).status, 200);
        let permissions = api.get("/api/v1/auth/me").data()["rights"]["permissions"].clone();
        assert!(!permissions
            .as_array()
            .unwrap()
            .contains(&json!("devices.delete")));
    }
    // A manager still changes a device's settings (the table's "device config").
    let manager = &all[2].1;
    let renamed = manager.patch(
        &format!("/api/v1/devices/{DEVICE}"),
        &json!({"name": "Line 4 scanner"}),
    );
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    let denied = admin.get("/api/v1/audit?action=access.denied");
    assert!(
        denied.data()["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["actor"] == "rbac-manager" && r["params"]["permission"] == "devices.delete"),
        "{}",
        denied.body
    );
    let deleted = admin.delete(&format!("/api/v1/devices/{DEVICE}"));
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(admin.get(&format!("/api/v1/devices/{DEVICE}")).status, 404);
}

#[test]
fn bad_rights_settings_stop_the_server_at_start() {
    let dir = TempDir::new("rbac-config");
    let cases = [
        (
            "[rights.commands]\nexec_shel = \"OPERATOR\"\n",
            "factory-server: rights.commands.exec_shel: not a command type",
        ),
        (
            "[rights.commands]\nexec_shell = \"SUPERVISOR\"\n",
            "factory-server: rights.commands.exec_shell: `SUPERVISOR` is not a role",
        ),
        (
            "[rights.templates]\ndisk_usage = \"VIEWER\"\n",
            "factory-server: rights.templates.disk_usage: VIEWER is read-only",
        ),
    ];
    for (text, expected) in cases {
        let config = settings_file(&dir, text);
        let (code, stderr) = refused_start(&["--config", &config], &[]);
        assert_eq!(code, Some(2), "{text}: {stderr}");
        assert!(stderr.starts_with(expected), "{text}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    // The settings' other forms are checked the same way.
    let (code, stderr) = refused_start(&[], &[("FACTORY_RIGHTS_COMMANDS", "reboot_os=BOSS")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("factory-server: rights.commands.reboot_os: `BOSS` is not a role"),
        "{stderr}"
    );
    let (code, stderr) = refused_start(&["--rights-templates", "ping"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("rights_templates"), "{stderr}");
}
