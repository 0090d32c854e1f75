//! The admin command lines on the real binaries and a real database: `factory-server user`,
//! `device`, `firmware` and `backup` against a running server's settings, and `edge-agent
//! status|queue stats|enroll`. A release signed by `firmware sign` with a key from `firmware
//! keygen` is accepted and staged by a real agent that trusts only that key.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

on_both_backends!(
    users_and_device_tokens_from_the_command_line,
    a_release_signed_by_the_cli_is_staged_by_an_agent,
);

/// `factory-server <args>` with the server's own settings (data dir and database).
fn admin(server: &ServerProcess, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(binary("factory-server"));
    cmd.args(args).arg("--data-dir").arg(server.data_dir.path());
    if let Some(url) = server.db.url() {
        cmd.arg("--database-url").arg(url);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run factory-server");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("factory-server output")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn login_status(server: &ServerProcess, username: &str, password: &str) -> u16 {
    Api::new(server)
        .post(
            "/api/v1/auth/login",
            &json!({"username": username, "password": password}),
        )
        .status
}

fn users_and_device_tokens_from_the_command_line(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-cli"),
        &["--allow-auto-enrollment=false"],
    );
    let out = admin(
        &server,
        &[
            "user",
            "add",
            "alice",
            "--role",
            "OPERATOR",
            "--password-stdin",
        ],
        Some("alice-password-1\n"),
    );
    assert!(ok(&out).starts_with("added alice (OPERATOR)"));
    let alice = Api::login(&server, "alice", "alice-password-1");
    assert_eq!(alice.get("/api/v1/auth/me").data()["role"], "OPERATOR");
    // A generated password is printed once and works.
    let out = ok(&admin(&server, &["user", "add", "bob"], None));
    let generated = out
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("a generated password");
    assert_eq!(login_status(&server, "bob", generated), 200);
    // The same name twice is refused, as over REST.
    let twice = admin(&server, &["user", "add", "bob"], None);
    assert_eq!(twice.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("bob is taken"));

    let list = ok(&admin(&server, &["user", "list"], None));
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{list}");
    assert!(
        rows[1].starts_with("alice") && rows[1].contains("OPERATOR"),
        "{list}"
    );

    // A new password: the old one and alice's earlier token stop working.
    ok(&admin(
        &server,
        &["user", "passwd", "alice", "--password-stdin"],
        Some("alice-password-2\n"),
    ));
    assert_eq!(alice.get("/api/v1/auth/me").status, 401);
    assert_eq!(login_status(&server, "alice", "alice-password-1"), 401);
    assert_eq!(login_status(&server, "alice", "alice-password-2"), 200);
    ok(&admin(&server, &["user", "disable", "alice"], None));
    assert_ne!(login_status(&server, "alice", "alice-password-2"), 200);
    let listed = Api::admin(&server).get("/api/v1/users");
    let alice_row = listed.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "alice")
        .cloned()
        .unwrap();
    assert_eq!(alice_row["disabled"], true);
    // The last enabled admin stays one.
    let last = admin(&server, &["user", "disable", "admin"], None);
    assert_eq!(last.status.code(), Some(1));
    let audit = Api::admin(&server).get("/api/v1/audit?action=user.");
    assert!(
        audit.data()["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["actor"].as_str().unwrap_or("").starts_with("cli:")),
        "{}",
        audit.body
    );

    // Devices: a token for an unregistered id is refused; a registered one's token connects.
    let none = admin(&server, &["device", "token", "cli-dev-1"], None);
    assert_eq!(none.status.code(), Some(1));
    ok(&admin(
        &server,
        &[
            "device",
            "register",
            "cli-dev-1",
            "--name",
            "Line 1",
            "--company-id",
            "acme",
        ],
        None,
    ));
    let token = ok(&admin(&server, &["device", "token", "cli-dev-1"], None))
        .trim()
        .to_owned();
    let mut socket = ws_connect(&server.ws_url("/ws/device"), Some(&token))
        .unwrap_or_else(|status| panic!("the CLI's token refused with {status}"));
    assert_eq!(ws_next_json(&mut socket).unwrap()["type"], "hello");
    let device = Api::admin(&server).get("/api/v1/devices/cli-dev-1");
    assert_eq!(device.data()["name"], "Line 1");
    // A second token replaces the first for new connections.
    let second = ok(&admin(&server, &["device", "token", "cli-dev-1"], None));
    assert_ne!(second.trim(), token);
    assert!(ws_connect(&server.ws_url("/ws/device"), Some(&token)).is_err());

    // A backup of SQLite opens and holds the data; on PostgreSQL the hint names pg_dump.
    let backup = server.data_dir.path().join("copy.db");
    let out = ok(&admin(&server, &["backup", backup.to_str().unwrap()], None));
    match backend {
        Backend::Sqlite => {
            let conn = rusqlite::Connection::open(&backup).unwrap();
            let users: i64 = conn
                .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
                .unwrap();
            assert_eq!(users, 3);
            let name: String = conn
                .query_row("SELECT name FROM devices WHERE id = 'cli-dev-1'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(name, "Line 1");
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        Backend::Postgres => {
            assert!(out.contains("pg_dump"), "{out}");
            assert!(!backup.exists());
        }
    }
}

fn a_release_signed_by_the_cli_is_staged_by_an_agent(backend: Backend) {
    let keys = TempDir::new("release-keys");
    let dir = keys.path().to_str().unwrap().to_owned();
    let out = Command::new(binary("factory-server"))
        .args(["firmware", "keygen", "--out-dir", &dir])
        .output()
        .unwrap();
    let public = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(keys.path().join("firmware-signing.pub"))
            .unwrap()
            .trim(),
        public
    );
    // A second key, which the server trusts from the start and agents only after a rotation.
    let out = Command::new(binary("factory-server"))
        .args(["firmware", "keygen", "--out-dir", &dir, "--name", "next"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let next = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-cli-fw"),
        &[
            "--firmware-trusted-keys",
            &format!("{public},{next}"),
            "--firmware-require-signature",
        ],
    );
    let api = Api::admin(&server);
    let agent = AgentProcess::start_with(
        &server.base_url,
        "cli-fw-1",
        AgentOptions {
            args: vec![
                "--firmware-trusted-keys".into(),
                public.clone(),
                "--firmware-require-signature".into(),
                "--firmware-activate".into(),
                "false".into(),
            ],
            ..AgentOptions::default()
        },
    );
    wait_until(Duration::from_secs(60), "the agent ONLINE", || {
        api.device_status("cli-fw-1").as_deref() == Some("ONLINE")
    });
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let artifact = keys.path().join("edge-service");
    std::fs::write(&artifact, &body).unwrap();
    let key = keys.path().join("firmware-signing.pem");
    let art = artifact.to_str().unwrap();
    let signed = ok(&admin(
        &server,
        &[
            "firmware",
            "sign",
            "--key",
            key.to_str().unwrap(),
            "--version",
            "0.9.0",
            art,
        ],
        None,
    ));
    let signature: Value = serde_json::from_str(&signed).unwrap();
    let signature_file = keys.path().join("signature.json");
    std::fs::write(&signature_file, &signed).unwrap();
    // An unsigned upload is refused by this server; the signed one is stored.
    let refused = admin(
        &server,
        &[
            "firmware",
            "upload",
            "--version",
            "0.9.0",
            "--url",
            &server.base_url,
            art,
        ],
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("signature_required"));
    let uploaded = ok(&admin(
        &server,
        &[
            "firmware",
            "upload",
            "--version",
            "0.9.0",
            "--url",
            &server.base_url,
            "--signature-file",
            signature_file.to_str().unwrap(),
            art,
        ],
        None,
    ));
    let release: Value = serde_json::from_str(&uploaded).unwrap();
    let release = &release["data"];
    assert_eq!(release["signatureBase64"], signature["signatureBase64"]);
    assert_eq!(release["sha256"], signature["sha256"]);
    assert_eq!(release["uploadedBy"], "admin");

    let r = command(
        &api,
        "cli-fw-1",
        json!({"type": "update_firmware", "id": "cli-fw", "version": "0.9.0",
               "url": release["artifactUrl"], "sha256": release["sha256"], "size": body.len(),
               "signatureBase64": release["signatureBase64"],
               "signatureExpiresAt": release["signatureExpiresAt"]}),
        true,
    );
    assert_eq!(r["status"], "SUCCESS", "{r}\n{}", agent.log());
    let staged = agent
        .data_dir
        .path()
        .join("staging")
        .join("edge-service-0.9.0");
    assert_eq!(std::fs::read(staged).unwrap(), body);

    // The CLI signs a rotation with the key the agent trusts: the next key in, the old one out.
    let rotation = ok(&admin(
        &server,
        &[
            "firmware",
            "rotate-keys",
            "--key",
            key.to_str().unwrap(),
            "--add",
            &next,
            "--retire",
            &public,
            "--sequence",
            "1",
        ],
        None,
    ));
    let mut rotation: Value = serde_json::from_str(&rotation).unwrap();
    rotation["id"] = json!("cli-rotate");
    let r = command(&api, "cli-fw-1", rotation, false);
    assert_eq!(r["status"], "SUCCESS", "{r}\n{}", agent.log());
    // A release signed with the next key, with a security floor, is staged; one signed with
    // the retired key is refused.
    let next_key = keys.path().join("next.pem");
    let update = |version: &str, key: &std::path::Path, id: &str, floor: Option<&str>| {
        let mut args = vec![
            "firmware",
            "upload",
            "--version",
            version,
            "--url",
            &server.base_url,
            "--key",
            key.to_str().unwrap(),
        ];
        if let Some(floor) = floor {
            args.extend(["--security-floor", floor]);
        }
        args.push(art);
        let uploaded: Value = serde_json::from_str(&ok(&admin(&server, &args, None))).unwrap();
        let release = uploaded["data"].clone();
        command(
            &api,
            "cli-fw-1",
            json!({"type": "update_firmware", "id": id, "version": version,
                   "url": release["artifactUrl"], "sha256": release["sha256"],
                   "size": body.len(), "signatureBase64": release["signatureBase64"],
                   "signatureExpiresAt": release["signatureExpiresAt"],
                   "securityFloor": release["securityFloor"]}),
            true,
        )
    };
    let r = update("0.9.1", &next_key, "cli-fw-next", Some("2"));
    assert_eq!(r["status"], "SUCCESS", "{r}\n{}", agent.log());
    let r = update("0.9.2", &key, "cli-fw-retired", None);
    assert_eq!(r["status"], "FAILED", "{r}");
    assert!(
        !agent
            .data_dir
            .path()
            .join("staging/edge-service-0.9.2")
            .exists(),
        "a release of a retired key was staged"
    );

    // The agent's own command lines read the same database it runs on.
    let status = Command::new(binary("edge-agent"))
        .arg("status")
        .arg("--data-dir")
        .arg(agent.data_dir.path())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["tokenStored"], true, "{status}");
    assert_eq!(status["queue"]["pending"], 0, "{status}");
}

#[test]
fn the_agent_enrolls_and_reports_its_queue_from_the_command_line() {
    let server = ServerProcess::start(Backend::Sqlite);
    let data = TempDir::new("edge-cli");
    let agent = |args: &[&str]| {
        Command::new(binary("edge-agent"))
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .args([
                "--server-url",
                &server.base_url,
                "--device-id",
                "cli-edge-1",
            ])
            .output()
            .unwrap()
    };
    let missing = agent(&["queue", "stats"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no agent database"));
    let no_key = agent(&["enroll"]);
    assert_eq!(no_key.status.code(), Some(1), "{no_key:?}");
    let enrolled = agent(&["enroll", "--enrollment-key", ENROLLMENT_KEY]);
    assert!(
        enrolled.status.success(),
        "{}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    assert!(String::from_utf8_lossy(&enrolled.stdout).starts_with("enrolled cli-edge-1"));
    let api = Api::admin(&server);
    assert_eq!(api.device_status("cli-edge-1").as_deref(), Some("OFFLINE"));
    let stats = agent(&["queue", "stats"]);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["pending"], 0);
    assert_eq!(stats["sentLastMinute"], 0);
    // The agent then runs on the device the command line enrolled.
    let running = AgentProcess::start_in(
        &server.base_url,
        "cli-edge-1",
        AgentOptions::default(),
        data,
    );
    wait_until(Duration::from_secs(60), "the agent ONLINE", || {
        api.device_status("cli-edge-1").as_deref() == Some("ONLINE")
    });
    drop(running);
}
