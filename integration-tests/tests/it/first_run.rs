//! A first run without traps, on the real binary: a refused start is one line and exit 2 (a
//! busy port no longer panics), an admin password that cannot apply says so, unknown fields
//! in request bodies are refused by name, and a wrong method is a 405 with `Allow`.

use integration_tests::*;
use serde_json::json;

on_both_backends!(
    an_ignored_admin_password_is_logged,
    unknown_fields_are_refused_by_name,
    a_wrong_method_is_405_with_allow,
);

#[test]
fn a_busy_port_is_one_line_and_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = taken.local_addr().unwrap().to_string();
    let data = TempDir::new("factory-data");
    let out = std::process::Command::new(binary("factory-server"))
        .args(["--bind", &bind, "--data-dir"])
        .arg(data.path())
        .output()
        .expect("run factory-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let refusal: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("factory-server:"))
        .collect();
    assert_eq!(
        refusal,
        [format!(
            "factory-server: cannot listen on {bind}: Address already in use (os error 98)"
        )],
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing else than log lines: no backtrace.
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with("factory-server:") || l.contains(" INFO ")),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_database_is_one_line_and_exit_2() {
    let data = TempDir::new("factory-data");
    let url = format!("postgres://nobody@127.0.0.1:{}/none", free_port());
    let out = std::process::Command::new(binary("factory-server"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            &url,
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .expect("run factory-server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("factory-server:"))
            .count(),
        1,
        "{stderr}"
    );
}

fn an_ignored_admin_password_is_logged(backend: Backend) {
    let server = ServerProcess::start(backend);
    let changed = Api::admin(&server).post(
        "/api/v1/auth/password",
        &json!({"currentPassword": ADMIN_PASSWORD, "newPassword": "another-password-1"}),
    );
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert!(!server.log().contains("admin password setting is ignored"));
    let (db, dir) = server.stop();
    // Started again with `--admin-password` (the harness always gives it): the admin exists,
    // so the setting does not apply, and the log says so.
    let server = ServerProcess::start_with(db, dir, &[]);
    let log = server.log();
    assert!(
        log.contains("the admin password setting is ignored: users exist already"),
        "{log}"
    );
    let refused = Api::new(&server).post(
        "/api/v1/auth/login",
        &json!({"username": "admin", "password": ADMIN_PASSWORD}),
    );
    assert_eq!(refused.status, 401, "{}", refused.body);
}

fn unknown_fields_are_refused_by_name(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let login = Api::new(&server).post(
        "/api/v1/auth/login",
        &json!({"username": "admin", "password": ADMIN_PASSWORD, "remember": true}),
    );
    assert_eq!(login.status, 400, "{}", login.body);
    assert_eq!(login.error_code(), "invalid_body");
    assert!(login.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`remember`"));

    let _device = FakeDevice::connect(&server, &api, "strict-1");
    let cases = [
        (
            "/api/v1/devices/strict-1/commands",
            json!({"command": {"type": "exec_shell", "template": "disk_usage", "params": {"path": "/"}}}),
            "params",
        ),
        (
            "/api/v1/devices/strict-1/commands",
            json!({"command": {"type": "force_sync"}, "timeout": 5000}),
            "timeout",
        ),
        (
            "/api/v1/devices/commands",
            json!({"deviceIds": ["strict-1"], "command": {"type": "force_sync"}, "queueIfOfline": true}),
            "queueIfOfline",
        ),
        (
            "/api/v1/users",
            json!({"username": "u1", "password": "password-123", "role": "VIEWER", "email": "x"}),
            "email",
        ),
        (
            "/api/v1/device-groups",
            json!({"name": "g", "colour": "red"}),
            "colour",
        ),
    ];
    for (path, body, field) in cases {
        let reply = api.post(path, &body);
        assert_eq!(reply.status, 400, "{path} {body}: {}", reply.body);
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{field}`")), "{path}: {message}");
    }
    // Nothing of them was stored or sent.
    let history = api.get("/api/v1/devices/strict-1/commands");
    assert_eq!(history.data()["total"], 0, "{}", history.body);
    assert_eq!(api.get("/api/v1/users").data()["total"], 1);
}

fn a_wrong_method_is_405_with_allow(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let reply = api.call("DELETE", "/api/v1/auth/login", None, &[]);
    assert_eq!(reply.status, 405, "{}", reply.body);
    assert_eq!(reply.error_code(), "method_not_allowed");
    assert_eq!(reply.headers["allow"], "POST");
    let reply = api.call("PUT", "/api/v1/users/some-id", Some(&json!({})), &[]);
    assert_eq!(reply.status, 405, "{}", reply.body);
    assert_eq!(reply.headers["allow"], "GET, PATCH, DELETE");
    // A path no route has stays 404.
    let reply = api.call("GET", "/api/v1/nothing-here", None, &[]);
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.error_code(), "not_found");
}
