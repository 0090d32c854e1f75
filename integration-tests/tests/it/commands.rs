//! The command lifecycle against simulated devices over real sockets, on both databases:
//! waiting and not, queueing, expiry, cancel, duplicate ids, bulk and group dispatch,
//! confirmation of restarts, progress, and shell-template roles.

use std::time::{Duration, Instant};

use integration_tests::*;
use serde_json::{json, Value};

on_both_backends!(
    wait_false_answers_at_once_and_history_filters,
    queued_commands_are_delivered_in_order_expire_or_cancel,
    a_duplicate_id_never_runs_twice,
    bulk_dispatch_is_concurrent_with_half_the_devices_offline,
    a_group_of_fifty_devices,
    restarts_are_confirmed_only_by_a_new_run_id,
    progress_is_stored_and_streamed,
    shell_templates_have_their_own_roles,
);

fn command(api: &Api, device: &str, body: Value) -> Reply {
    api.post(&format!("/api/v1/devices/{device}/commands"), &body)
}

fn wait_for_status(api: &Api, device: &str, id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    wait_until(
        Duration::from_secs(10),
        &format!("{id} to be {want}"),
        || {
            let r = api.get(&format!("/api/v1/devices/{device}/commands/{id}"));
            if r.status != 200 {
                return false;
            }
            last = r.data().clone();
            last["status"] == want
        },
    );
    last
}

fn wait_false_answers_at_once_and_history_filters(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let dev = FakeDevice::connect(&server, &api, "edge-w");
    let device = dev.respond_with(|c| {
        std::thread::sleep(Duration::from_millis(700));
        vec![result_frame(c, c["type"] == "force_sync", "done")]
    });
    let start = Instant::now();
    let r = command(
        &api,
        "edge-w",
        json!({"command": {"type": "force_sync", "id": "nw-1"}, "wait": false}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        start.elapsed() < Duration::from_millis(600),
        "wait:false must not wait for the device"
    );
    assert_eq!(r.data()["commandId"], "nw-1");
    // The command exists at once and ends SUCCESS in the background.
    assert_eq!(api.get("/api/v1/devices/edge-w/commands/nw-1").status, 200);
    wait_for_status(&api, "edge-w", "nw-1", "SUCCESS");

    let r = command(
        &api,
        "edge-w",
        json!({"command": {"type": "pull_logs", "id": "pl-1", "lines": 5}}),
    );
    assert_eq!(r.data()["status"], "FAILED");
    let h = api.get("/api/v1/devices/edge-w/commands?status=SUCCESS");
    assert_eq!(h.data()["total"], 1);
    let h = api.get("/api/v1/devices/edge-w/commands?type=pull_logs");
    assert_eq!(h.data()["total"], 1);
    assert_eq!(h.data()["items"][0]["id"], "pl-1");
    assert_eq!(
        api.get("/api/v1/devices/edge-w/commands?status=SLEEPING")
            .status,
        400
    );
    assert_eq!(
        api.get("/api/v1/devices/edge-w/commands?type=nuke").status,
        400
    );
    drop(device);
}

fn queued_commands_are_delivered_in_order_expire_or_cancel(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let token = api.enroll("edge-q");
    let queue = |id: &str, ttl: u64| {
        let r = command(
            &api,
            "edge-q",
            json!({"command": {"type": "force_sync", "id": id}, "queueIfOffline": true, "queueTtlMs": ttl}),
        );
        assert_eq!(r.data()["status"], "QUEUED", "{}", r.body);
    };
    queue("q-1", 60_000);
    queue("q-short", 300);
    queue("q-2", 60_000);
    queue("q-cancelled", 60_000);
    let cancelled = api.post(
        "/api/v1/devices/edge-q/commands/q-cancelled/cancel",
        &json!({}),
    );
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.data()["status"], "CANCELLED");
    // Without queueIfOffline an offline device fails at once, as before.
    let r = command(
        &api,
        "edge-q",
        json!({"command": {"type": "force_sync", "id": "q-now"}}),
    );
    assert_eq!(r.data()["status"], "FAILED");

    let expired = wait_for_status(&api, "edge-q", "q-short", "EXPIRED");
    assert_eq!(expired["success"], false);

    let mut socket = ws_connect(&server.ws_url("/ws/device"), Some(&token)).unwrap();
    assert_eq!(ws_next_json(&mut socket).unwrap()["type"], "hello");
    let device = FakeDevice {
        id: "edge-q".into(),
        token,
        socket,
    }
    .respond_with(|c| vec![result_frame(c, true, "ran")]);
    wait_for_status(&api, "edge-q", "q-2", "SUCCESS");
    wait_for_status(&api, "edge-q", "q-1", "SUCCESS");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        api.get("/api/v1/devices/edge-q/commands/q-cancelled")
            .data()["status"],
        "CANCELLED"
    );
    // A sent or finished command cannot be cancelled.
    let late = api.post("/api/v1/devices/edge-q/commands/q-1/cancel", &json!({}));
    assert_eq!(late.status, 409);
    assert_eq!(late.error_code(), "command_not_cancellable");
    assert_eq!(
        api.post("/api/v1/devices/edge-q/commands/nope/cancel", &json!({}))
            .status,
        404
    );
    drop(api);
    drop(server);
    let seen: Vec<String> = device
        .join()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        seen,
        ["q-1", "q-2"],
        "delivered once each, in order; cancelled and expired never"
    );
}

fn a_duplicate_id_never_runs_twice(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let dev = FakeDevice::connect(&server, &api, "edge-d");
    let device = dev.respond_with(|c| {
        if c["id"] == "slow" {
            std::thread::sleep(Duration::from_millis(1500));
        }
        vec![result_frame(c, true, &format!("ran {}", c["id"]))]
    });
    let first = command(
        &api,
        "edge-d",
        json!({"command": {"type": "force_sync", "id": "dup-1"}}),
    );
    let again = command(
        &api,
        "edge-d",
        json!({"command": {"type": "force_sync", "id": "dup-1"}}),
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.data()["output"], first.data()["output"]);
    assert_eq!(again.data()["status"], "SUCCESS");
    // In flight: the second request is refused, not sent.
    let api2 = Api::new(&server).with_token(api.token().unwrap());
    let slow = std::thread::spawn(move || {
        command(
            &api2,
            "edge-d",
            json!({"command": {"type": "force_sync", "id": "slow"}}),
        )
    });
    std::thread::sleep(Duration::from_millis(400));
    let during = command(
        &api,
        "edge-d",
        json!({"command": {"type": "force_sync", "id": "slow"}}),
    );
    assert_eq!(during.status, 409);
    assert_eq!(during.error_code(), "command_in_flight");
    assert_eq!(slow.join().unwrap().data()["status"], "SUCCESS");
    // The same id for another device is a conflict.
    api.enroll("edge-other");
    let other = command(
        &api,
        "edge-other",
        json!({"command": {"type": "force_sync", "id": "dup-1"}}),
    );
    assert_eq!(other.error_code(), "duplicate_command_id");
    drop(server);
    let seen = device.join().unwrap();
    assert_eq!(seen.len(), 2, "each id reached the device once: {seen:?}");
}

fn bulk_dispatch_is_concurrent_with_half_the_devices_offline(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let mut ids = Vec::new();
    let mut devices = Vec::new();
    for i in 0..10 {
        let id = format!("bulk-{i}");
        if i % 2 == 0 {
            let dev = FakeDevice::connect(&server, &api, &id);
            devices.push(dev.respond_with(|c| {
                std::thread::sleep(Duration::from_millis(500));
                vec![result_frame(c, true, "synced")]
            }));
        } else {
            api.enroll(&id);
        }
        ids.push(id);
    }
    ids.push("no-such-device".into());
    let start = Instant::now();
    let r = api.post(
        "/api/v1/devices/commands",
        &json!({"deviceIds": ids, "command": {"type": "force_sync", "id": "ignored"}, "timeoutMs": 5000}),
    );
    let took = start.elapsed();
    let map = r.data().as_object().unwrap().clone();
    assert_eq!(map.len(), 11);
    let mut command_ids = std::collections::HashSet::new();
    for i in 0..10 {
        let answer = &map[&format!("bulk-{i}")];
        if i % 2 == 0 {
            assert_eq!(answer["status"], "SUCCESS", "{answer}");
            assert_eq!(answer["output"], "synced");
        } else {
            assert_eq!(answer["status"], "FAILED");
            assert_eq!(answer["output"], "Device offline");
            assert_eq!(answer["success"], false);
        }
        assert!(
            command_ids.insert(answer["commandId"].as_str().unwrap().to_owned()),
            "ids must be fresh"
        );
    }
    assert!(!command_ids.contains("ignored"));
    assert_eq!(map["no-such-device"]["success"], false);
    eprintln!("bulk to 5 online devices that answer in 500 ms each took {took:?}");
    assert!(
        took < Duration::from_millis(2000),
        "devices were served one after another ({took:?})"
    );
    // Each target's command is in its own history and in the audit log.
    assert_eq!(
        api.get("/api/v1/devices/bulk-1/commands").data()["total"],
        1
    );
    let audit = api.get("/api/v1/audit?action=command.dispatch&limit=50");
    assert_eq!(audit.data()["total"], 10);
    // wait:false answers with the ids at once.
    let r = api.post("/api/v1/devices/commands", &json!({"deviceIds": ["bulk-0", "bulk-2"], "command": {"type": "force_sync"}, "wait": false}));
    assert_eq!(r.status, 202);
    assert_eq!(r.data()["bulk-0"]["status"], "PENDING");
    let empty = api.post(
        "/api/v1/devices/commands",
        &json!({"deviceIds": [], "command": {"type": "force_sync"}}),
    );
    assert_eq!(empty.status, 400);
    drop(devices);
}

fn a_group_of_fifty_devices(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let group = api.post(
        "/api/v1/device-groups",
        &json!({"name": "Hall 2", "description": "packing"}),
    );
    assert_eq!(group.status, 201);
    let gid = group.data()["id"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    let mut devices = Vec::new();
    for i in 0..50 {
        let id = format!("hall2-{i:02}");
        let dev = FakeDevice::connect(&server, &api, &id);
        devices.push(dev.respond_with(|c| vec![result_frame(c, true, "ok")]));
        ids.push(id);
    }
    let added = api.post(
        &format!("/api/v1/device-groups/{gid}/members"),
        &json!({"deviceIds": ids}),
    );
    assert_eq!(added.data()["memberCount"], 50);
    let again = api.post(
        &format!("/api/v1/device-groups/{gid}/members"),
        &json!({"deviceIds": ["hall2-00"]}),
    );
    assert_eq!(
        again.data()["memberCount"],
        50,
        "adding a member twice keeps it once"
    );
    let unknown = api.post(
        &format!("/api/v1/device-groups/{gid}/members"),
        &json!({"deviceIds": ["ghost"]}),
    );
    assert_eq!(unknown.status, 400);
    assert_eq!(
        api.post("/api/v1/device-groups", &json!({"name": "Hall 2"}))
            .status,
        409
    );
    assert_eq!(
        api.get(&format!("/api/v1/devices?groupId={gid}")).data()["total"],
        50
    );

    let start = Instant::now();
    let r = api.post(
        &format!("/api/v1/device-groups/{gid}/commands"),
        &json!({"command": {"type": "force_sync"}}),
    );
    let took = start.elapsed();
    let map = r.data().as_object().unwrap();
    assert_eq!(map.len(), 50);
    assert!(map.values().all(|a| a["status"] == "SUCCESS"), "{map:?}");
    eprintln!("group dispatch to 50 simulated devices took {took:?}");

    let removed = api.call(
        "DELETE",
        &format!("/api/v1/device-groups/{gid}/members"),
        Some(&json!({"deviceIds": ["hall2-00", "hall2-01"]})),
        &[],
    );
    assert_eq!(removed.data()["memberCount"], 48);
    let renamed = api.call(
        "PUT",
        &format!("/api/v1/device-groups/{gid}"),
        Some(&json!({"name": "Hall 2B"})),
        &[],
    );
    assert_eq!(renamed.data()["name"], "Hall 2B");
    assert_eq!(renamed.data()["description"], "packing");
    assert_eq!(api.get("/api/v1/device-groups").data()["total"], 1);
    assert_eq!(
        api.delete(&format!("/api/v1/device-groups/{gid}")).status,
        200
    );
    assert_eq!(api.get(&format!("/api/v1/device-groups/{gid}")).status, 404);
    assert_eq!(
        api.get("/api/v1/devices/hall2-00").status,
        200,
        "deleting a group keeps its devices"
    );
    drop(devices);
}

fn restarts_are_confirmed_only_by_a_new_run_id(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--restart-confirm-secs", "3"],
    );
    let api = Api::admin(&server);
    let status = |run: &str| json!({"type": "status", "status": "ONLINE", "bootId": "boot-1", "runId": run, "ts": now_rfc3339()});

    // A device that restarts: answers, goes away, comes back with a new run id.
    let mut dev = FakeDevice::connect(&server, &api, "edge-r");
    dev.send(&status("run-1"));
    std::thread::sleep(Duration::from_millis(300));
    let token = dev.token.clone();
    let handle = dev.respond_with(|c| vec![result_frame(c, true, "restarting")]);
    let r = command(
        &api,
        "edge-r",
        json!({"command": {"type": "restart_service", "id": "rs-1"}}),
    );
    assert_eq!(r.data()["status"], "CONFIRMING", "{}", r.body);
    drop(handle);
    let mut back = ws_connect(&server.ws_url("/ws/device"), Some(&token)).unwrap();
    assert_eq!(ws_next_json(&mut back).unwrap()["type"], "hello");
    ws_send_json(&mut back, &status("run-2"));
    let done = wait_for_status(&api, "edge-r", "rs-1", "CONFIRMED");
    assert!(done["output"].as_str().unwrap().contains("new run id"));

    // A device that answers but never restarts: FAILED when the window ends.
    let dev = FakeDevice {
        id: "edge-r".into(),
        token: token.clone(),
        socket: back,
    };
    let handle = dev.respond_with(|c| vec![result_frame(c, true, "sure")]);
    let r = command(
        &api,
        "edge-r",
        json!({"command": {"type": "restart_service", "id": "rs-2"}}),
    );
    assert_eq!(r.data()["status"], "CONFIRMING");
    let failed = wait_for_status(&api, "edge-r", "rs-2", "FAILED");
    assert!(
        failed["output"]
            .as_str()
            .unwrap()
            .contains("did not come back"),
        "{failed}"
    );
    drop(handle);
}

fn progress_is_stored_and_streamed(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let mut dash = ws_connect(&server.ws_url("/ws/dashboard"), api.token()).unwrap();
    assert_eq!(ws_next_json(&mut dash).unwrap()["type"], "hello");
    ws_send_json(
        &mut dash,
        &json!({"type": "subscribe", "eventTypes": ["command_progress", "command_result"]}),
    );
    std::thread::sleep(Duration::from_millis(200));
    let dev = FakeDevice::connect(&server, &api, "edge-p");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = std::sync::Mutex::new(rx);
    let device = dev.respond_live(move |c, send| {
        // Progress first; the result only once the test has looked at the stored progress.
        send(&json!({"type": "command_progress", "commandId": c["id"], "percent": 40, "message": "downloading"}));
        let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
        send(&result_frame(c, true, "done"));
    });
    let api2 = Api::new(&server).with_token(api.token().unwrap());
    let waiting = std::thread::spawn(move || {
        command(
            &api2,
            "edge-p",
            json!({"command": {"type": "force_sync", "id": "pr-1"}}),
        )
    });
    let stored = wait_for_status(&api, "edge-p", "pr-1", "SENT");
    let _ = stored;
    wait_until(Duration::from_secs(5), "progress stored", || {
        api.get("/api/v1/devices/edge-p/commands/pr-1").data()["progress"] == 40
    });
    tx.send(()).unwrap();
    assert_eq!(waiting.join().unwrap().data()["status"], "SUCCESS");
    let mut got_progress = false;
    let mut got_result = false;
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && !(got_progress && got_result) {
        let Some(f) = ws_next_json(&mut dash) else {
            break;
        };
        got_progress |=
            f["type"] == "command_progress" && f["deviceId"] == "edge-p" && f["percent"] == 40;
        got_result |= f["type"] == "command_result" && f["commandId"] == "pr-1";
    }
    assert!(
        got_progress && got_result,
        "the dashboard saw progress {got_progress} and result {got_result}"
    );
    drop(device);
}

/// A site's grant, given as flags (the settings file's `[rights]` in another form): operators
/// run `disk_usage` and no other template, admins any.
fn shell_templates_have_their_own_roles(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &[
            "--rights-commands",
            "exec_shell=OPERATOR",
            "--rights-templates",
            "disk_usage=OPERATOR",
        ],
    );
    let api = Api::admin(&server);
    let dev = FakeDevice::connect(&server, &api, "edge-s");
    let device = dev.respond_with(|c| vec![result_frame(c, true, "Filesystem ...")]);
    api.create_user("op", "operator-password", "OPERATOR");
    let op = Api::login(&server, "op", "operator-password");
    let ok = command(
        &op,
        "edge-s",
        json!({"command": {"type": "exec_shell", "id": "sh-1", "template": "disk_usage", "args": {"path": "/var"}}}),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let refused = command(
        &op,
        "edge-s",
        json!({"command": {"type": "exec_shell", "id": "sh-2", "template": "ping", "args": {"host": "10.0.0.1"}}}),
    );
    assert_eq!(refused.status, 403);
    let unknown = command(
        &api,
        "edge-s",
        json!({"command": {"type": "exec_shell", "id": "sh-3", "template": "custom_thing", "args": {}}}),
    );
    assert_eq!(
        unknown.status, 200,
        "admins may run templates the server does not list"
    );
    let audit = api.get("/api/v1/audit?action=command.dispatch&target=edge-s");
    let row = audit.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["params"]["commandId"] == "sh-1")
        .cloned()
        .expect("audit row of sh-1");
    assert_eq!(row["params"]["template"], "disk_usage");
    assert_eq!(row["params"]["args"]["path"], "/var");
    assert_eq!(row["actor"], "op");
    drop(device);
}

/// The pool hands out its connections without a `SELECT 1` before each (that test was a round
/// trip, and on PostgreSQL a transaction, for every connection a request took). A connection
/// the database ended (a restart, a failover, an idle cut) must then cost at most the one
/// request that finds it dead, and never be handed out again.
#[test]
fn connections_the_database_ended_fail_once_and_are_replaced() {
    let server = ServerProcess::start(Backend::Postgres);
    let api = Api::admin(&server);
    for _ in 0..5 {
        assert_eq!(api.get("/api/v1/devices").status, 200);
    }
    let url = server.db.url().expect("a PostgreSQL URL");
    let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).expect("connect");
    // The pool's connections carry no application name; the replica's LISTEN connection,
    // outside the pool, does, and is left alone.
    let ended = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND application_name = ''",
            &[],
        )
        .expect("end the server's pooled connections")
        .len();
    assert!(ended >= 1, "no pooled connection of the server was found");
    let (mut failed, mut in_a_row, mut tries) = (0, 0, 0);
    while in_a_row < 30 {
        tries += 1;
        assert!(
            tries < 200,
            "{failed} of {tries} requests failed after {ended} connections were ended: \
             a dead connection is handed out again"
        );
        let r = api.get("/api/v1/devices");
        if r.status == 200 {
            in_a_row += 1;
        } else {
            assert_eq!(r.status, 503, "{}", r.body);
            (failed, in_a_row) = (failed + 1, 0);
        }
    }
    assert!(
        failed <= ended,
        "{failed} requests failed for {ended} ended connections"
    );
}
