//! One command from REST to a real agent and back, on SQLite and on PostgreSQL, and the bad
//! input that must not break anything on the way.

use std::time::Duration;

use integration_tests::*;
use serde_json::json;

/// A device killed without a goodbye must be OFFLINE within the server's heartbeat timeout
/// (15 s); the margin covers polling and the status write.
const OFFLINE_WITHIN: Duration = Duration::from_secs(20);

on_both_backends!(
    force_sync_round_trip_through_a_real_agent,
    enrollment_refuses_a_wrong_key,
    with_auto_enrollment_off_only_registered_devices_enroll,
    device_socket_refuses_user_tokens_and_bad_tokens,
    malformed_frames_get_an_error_and_keep_the_session,
    unanswered_command_times_out_and_unknown_type_is_refused,
    newer_session_replaces_the_older_one,
    concurrent_enrollments_all_succeed,
);

fn force_sync_round_trip_through_a_real_agent(backend: Backend) {
    let server = ServerProcess::start(backend);
    let mut agent = AgentProcess::start(&server, "edge-line-1");
    let api = Api::admin(&server);

    wait_until(Duration::from_secs(30), "the agent to come ONLINE", || {
        api.device_status("edge-line-1").as_deref() == Some("ONLINE")
    });
    let connected = api.get("/api/v1/devices/connected");
    let ids: Vec<&str> = connected.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["edge-line-1"]);
    let device = api.get("/api/v1/devices/edge-line-1");
    assert_eq!(device.data()["companyId"], "company-1");

    let reply = api.post(
        "/api/v1/devices/edge-line-1/commands",
        &json!({"command": {"type": "force_sync", "id": "cmd-sync-1"}, "timeoutMs": 15000}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = reply.data();
    assert_eq!(data["commandId"], "cmd-sync-1");
    assert_eq!(data["success"], true, "agent log:\n{}", agent.log());
    assert_eq!(data["status"], "SUCCESS");
    assert!(
        data["output"]
            .as_str()
            .unwrap()
            .starts_with("Force-sync completed"),
        "{data}"
    );

    let history = api.get("/api/v1/devices/edge-line-1/commands");
    let items = history.data()["items"].as_array().unwrap();
    assert_eq!(history.data()["total"], 1);
    assert_eq!(items[0]["id"], "cmd-sync-1");
    assert_eq!(items[0]["status"], "SUCCESS");
    assert_eq!(items[0]["success"], true);
    assert_eq!(items[0]["issuedBy"], "admin");
    assert!(items[0]["sentAt"].is_string() && items[0]["completedAt"].is_string());
    let one = api.get("/api/v1/devices/edge-line-1/commands/cmd-sync-1");
    assert_eq!(one.data()["output"], data["output"]);

    agent.kill();
    let took = wait_until(OFFLINE_WITHIN, "the killed agent to go OFFLINE", || {
        api.device_status("edge-line-1").as_deref() == Some("OFFLINE")
    });
    eprintln!("OFFLINE {took:?} after kill -9");

    let reply = api.post(
        "/api/v1/devices/edge-line-1/commands",
        &json!({"command": {"type": "force_sync", "id": "cmd-sync-2"}}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.data()["success"], false);
    assert_eq!(reply.data()["status"], "FAILED");
    assert_eq!(reply.data()["output"], "Device offline");
    let stored = api.get("/api/v1/devices/edge-line-1/commands/cmd-sync-2");
    assert_eq!(stored.data()["status"], "FAILED");
    assert_eq!(stored.data()["success"], false);
    assert_eq!(
        api.get("/api/v1/devices/edge-line-1/commands").data()["total"],
        2
    );
}

fn with_auto_enrollment_off_only_registered_devices_enroll(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-register"),
        &["--allow-auto-enrollment=false"],
    );
    let admin = Api::admin(&server);
    let anonymous = Api::new(&server);
    let enroll = |id: &str| {
        anonymous.post_with_header(
            &format!("/api/v1/devices/{id}/token"),
            ("X-Enrollment-Key", ENROLLMENT_KEY),
        )
    };

    let unknown = enroll("edge-unregistered");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(unknown.error_code(), "device_not_found");
    assert_eq!(admin.get("/api/v1/devices/edge-unregistered").status, 404);

    let group = admin.post("/api/v1/device-groups", &json!({"name": "line-2"}));
    let group_id = group.data()["id"].as_str().unwrap().to_owned();
    let registered = admin.post(
        "/api/v1/devices",
        &json!({
            "id": "edge-registered",
            "name": "Line 2 PC",
            "companyId": "company-1",
            "productionLineId": "line-2",
            "groupIds": [group_id],
        }),
    );
    assert_eq!(registered.status, 201, "{}", registered.body);
    assert_eq!(registered.data()["name"], "Line 2 PC");
    assert_eq!(registered.data()["status"], "OFFLINE");
    let members = admin.get(&format!("/api/v1/device-groups/{group_id}"));
    assert_eq!(members.data()["deviceIds"], json!(["edge-registered"]));

    let again = admin.post("/api/v1/devices", &json!({"id": "edge-registered"}));
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.error_code(), "device_exists");
    let bad = admin.post("/api/v1/devices", &json!({"id": "../etc"}));
    assert_eq!(bad.status, 400, "{}", bad.body);
    let no_group = admin.post(
        "/api/v1/devices",
        &json!({"id": "edge-lost", "groupIds": ["no-such-group"]}),
    );
    assert_eq!(no_group.status, 404, "{}", no_group.body);
    assert_eq!(admin.get("/api/v1/devices/edge-lost").status, 404);

    let token = enroll("edge-registered");
    assert_eq!(token.status, 200, "{}", token.body);
    assert!(token.data()["token"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    let device = admin.get("/api/v1/devices/edge-registered");
    assert_eq!(device.data()["companyId"], "company-1");
}

fn enrollment_refuses_a_wrong_key(backend: Backend) {
    let server = ServerProcess::start(backend);
    let anonymous = Api::new(&server);
    let wrong = anonymous.post_with_header(
        "/api/v1/devices/edge-x/token",
        ("X-Enrollment-Key", "not-the-key"),
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.error_code(), "invalid_enrollment_key");
    let missing = anonymous.post("/api/v1/devices/edge-x/token", &json!({}));
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error_code(), "invalid_enrollment_key");
    let bad_id = anonymous.post_with_header(
        "/api/v1/devices/..%2Fetc/token",
        ("X-Enrollment-Key", ENROLLMENT_KEY),
    );
    assert_eq!(bad_id.status, 400, "{}", bad_id.body);
    // The refused device was not registered.
    let api = Api::admin(&server);
    assert_eq!(api.get("/api/v1/devices/edge-x").status, 404);
    assert_eq!(api.get("/api/v1/devices").data()["total"], 0);
}

fn device_socket_refuses_user_tokens_and_bad_tokens(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let user_token = api.post(
        "/api/v1/auth/login",
        &json!({"username": "admin", "password": ADMIN_PASSWORD}),
    );
    let user_token = user_token.data()["token"].as_str().unwrap().to_owned();
    assert_eq!(
        ws_connect(&server.ws_url("/ws/device"), Some(&user_token)).err(),
        Some(401),
        "a user token must be refused on /ws/device"
    );
    assert_eq!(
        ws_connect(
            &server.ws_url(&format!("/ws/device?token={user_token}")),
            None
        )
        .err(),
        Some(401),
        "a user token in ?token= must be refused"
    );
    // The same refusal by first frame: an error frame, then the socket closes.
    let mut socket = ws_connect(&server.ws_url("/ws/device"), None).unwrap();
    ws_send_json(&mut socket, &json!({"type": "auth", "token": user_token}));
    let frame = ws_next_json(&mut socket).expect("an error frame");
    assert_eq!(frame["type"], "error");
    assert!(
        ws_next_json(&mut socket).is_none(),
        "socket must close after a refused auth frame"
    );

    // A rotated device token stops working.
    let old = api.enroll("edge-rot");
    let new = api.enroll("edge-rot");
    assert_eq!(
        ws_connect(&server.ws_url("/ws/device"), Some(&old)).err(),
        Some(401),
        "a rotated token must be refused"
    );
    let mut socket = ws_connect(&server.ws_url("/ws/device"), Some(&new)).unwrap();
    let hello = ws_next_json(&mut socket).expect("hello");
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["deviceId"], "edge-rot");
}

fn malformed_frames_get_an_error_and_keep_the_session(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let token = api.enroll("edge-sim");
    // First-frame authentication, as browsers and header-less devices do it.
    let mut socket = ws_connect(&server.ws_url("/ws/device"), None).unwrap();
    ws_send_json(&mut socket, &json!({"type": "auth", "token": token}));
    let hello = ws_next_json(&mut socket).expect("hello");
    assert_eq!(hello["type"], "hello");

    for bad in [
        "this is not json",
        r#"{"type": "selfdestruct"}"#,
        r#"{"type": "status"}"#,
        "[1,2,3]",
    ] {
        socket
            .send(tungstenite::Message::Text(bad.to_owned()))
            .unwrap();
        let frame = ws_next_json(&mut socket).expect("an error frame, not a closed socket");
        assert_eq!(frame["type"], "error", "for {bad}");
        assert_eq!(frame["code"], "invalid_frame", "for {bad}");
    }
    wait_until(
        Duration::from_secs(10),
        "the simulated device ONLINE",
        || api.device_status("edge-sim").as_deref() == Some("ONLINE"),
    );

    // The session still carries commands: answer one by hand.
    let device_side = std::thread::spawn(move || {
        let frame = ws_next_json(&mut socket).expect("a command frame");
        assert_eq!(frame["type"], "command");
        assert_eq!(frame["command"]["type"], "force_sync");
        let id = frame["command"]["id"].as_str().unwrap().to_owned();
        ws_send_json(
            &mut socket,
            &json!({"type": "command_result", "commandId": id, "success": true, "output": "answered by hand", "data": {"pending": 3}}),
        );
        socket
    });
    let reply = api.post(
        "/api/v1/devices/edge-sim/commands",
        &json!({"command": {"type": "force_sync", "id": "by-hand-1"}, "timeoutMs": 10000}),
    );
    assert_eq!(reply.data()["output"], "answered by hand");
    assert_eq!(reply.data()["data"]["pending"], 3);
    assert_eq!(reply.data()["status"], "SUCCESS");
    drop(device_side.join().unwrap());
}

fn unanswered_command_times_out_and_unknown_type_is_refused(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let token = api.enroll("edge-mute");
    let _socket = ws_connect(&server.ws_url("/ws/device"), Some(&token)).unwrap();
    wait_until(Duration::from_secs(10), "the mute device ONLINE", || {
        api.device_status("edge-mute").as_deref() == Some("ONLINE")
    });
    let reply = api.post(
        "/api/v1/devices/edge-mute/commands",
        &json!({"command": {"type": "force_sync", "id": "never-answered"}, "timeoutMs": 500}),
    );
    assert_eq!(reply.data()["success"], false);
    assert_eq!(reply.data()["status"], "TIMEOUT");
    let stored = api.get("/api/v1/devices/edge-mute/commands/never-answered");
    assert_eq!(stored.data()["status"], "TIMEOUT");

    let unknown = api.post(
        "/api/v1/devices/edge-mute/commands",
        &json!({"command": {"type": "format_disk", "id": "x1"}}),
    );
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.error_code(), "unknown_command_type");
    let not_json = api.post(
        "/api/v1/devices/edge-mute/commands",
        &json!("just a string"),
    );
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.error_code(), "invalid_body");
    let dangerous = api.post(
        "/api/v1/devices/edge-mute/commands",
        &json!({"command": {"type": "reboot_os", "id": "x2"}}),
    );
    assert_eq!(dangerous.status, 422);
    assert_eq!(dangerous.error_code(), "confirmation_required");
    let duplicate = api.post(
        "/api/v1/devices/edge-mute/commands",
        &json!({"command": {"type": "force_sync", "id": "never-answered"}, "timeoutMs": 500}),
    );
    // The same id again is answered from the record, not sent again.
    assert_eq!(duplicate.status, 200);
    assert_eq!(duplicate.data()["status"], "TIMEOUT");
    let unknown_device = api.post(
        "/api/v1/devices/no-such-device/commands",
        &json!({"command": {"type": "force_sync", "id": "x3"}}),
    );
    assert_eq!(unknown_device.status, 404);
    assert_eq!(unknown_device.error_code(), "device_not_found");
    let no_token = Api::new(&server).post(
        "/api/v1/devices/edge-mute/commands",
        &json!({"command": {"type": "force_sync", "id": "x4"}}),
    );
    assert_eq!(no_token.status, 401);
    // None of the refused requests was stored.
    assert_eq!(
        api.get("/api/v1/devices/edge-mute/commands").data()["total"],
        1
    );
}

fn newer_session_replaces_the_older_one(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let token = api.enroll("edge-twice");
    let mut first = ws_connect(&server.ws_url("/ws/device"), Some(&token)).unwrap();
    assert_eq!(ws_next_json(&mut first).unwrap()["type"], "hello");
    let mut second = ws_connect(&server.ws_url("/ws/device"), Some(&token)).unwrap();
    assert_eq!(ws_next_json(&mut second).unwrap()["type"], "hello");
    // The first gets a notice and is closed with the "replaced" code.
    let notice = ws_next_json(&mut first).expect("a notice before the close");
    assert_eq!(notice["type"], "error");
    let close = loop {
        match first.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    assert_eq!(u16::from(close.expect("close frame").code), 4000);
    // The device is still ONLINE through the second session.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(api.device_status("edge-twice").as_deref(), Some("ONLINE"));
    let connected = api.get("/api/v1/devices/connected");
    assert_eq!(connected.data()["total"], 1);
    drop(second);
    wait_until(
        OFFLINE_WITHIN,
        "OFFLINE after the second session closed",
        || api.device_status("edge-twice").as_deref() == Some("OFFLINE"),
    );
}

/// Many devices enrolling at the same moment (a line powering up) must all get a token; on
/// SQLite this needs write transactions that take the lock up front.
fn concurrent_enrollments_all_succeed(backend: Backend) {
    let server = ServerProcess::start(backend);
    let base = server.base_url.clone();
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let resp = client
                    .post(format!("{base}/api/v1/devices/burst-{i}/token"))
                    .header("X-Enrollment-Key", ENROLLMENT_KEY)
                    .send()
                    .unwrap();
                (resp.status().as_u16(), resp.text().unwrap())
            })
        })
        .collect();
    for t in threads {
        let (status, body) = t.join().unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let api = Api::admin(&server);
    assert_eq!(api.get("/api/v1/devices").data()["total"], 40);
}
