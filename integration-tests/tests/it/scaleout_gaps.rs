//! Two `factory-server` replicas on one PostgreSQL, each test on one gap of the hand-over
//! between them (issue 17): a command handed to a replica that no longer holds its device is
//! queued when the request asked for it; a restart confirmed on one replica is not then
//! reported failed by another that watched it too; an error alert raised on a replica that
//! does not lead reaches the leader's deployer; a killed replica's devices go OFFLINE as soon
//! as the leader sees its database connection gone, not when their leases pass.

use std::time::{Duration, Instant};

use integration_tests::replicas::Replica;
use integration_tests::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// Replica `r1`, leading once it says so, then `r2`, both with `flags`.
fn two_replicas(url: &str, data: &TempDir, flags: &[&str]) -> (Replica, Replica) {
    let r1 = Replica::start(url, data.path(), "r1", flags);
    wait_until(Duration::from_secs(20), "r1 leading", || {
        r1.log().contains("leader=true")
    });
    let r2 = Replica::start(url, data.path(), "r2", flags);
    // A replica answers HTTP before its LISTEN connection is up, and until it is, the others
    // count it as gone and handle its devices' commands themselves.
    wait_until(Duration::from_secs(20), "r2 listening", || {
        listening(url, "r2")
    });
    (r1, r2)
}

/// Whether `replica`'s LISTEN connection is open on this database.
fn listening(url: &str, replica: &str) -> bool {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database()",
            &[&server::store::leases::session_name(replica)],
        )
        .expect("pg_stat_activity");
    row.get::<_, i64>(0) > 0
}

/// A device socket on `replica` with `token` (enrolled already), its `hello` read.
fn device_on(replica: &Replica, id: &str, token: &str) -> FakeDevice {
    let url = format!(
        "{}/ws/device",
        replica.base_url.replacen("http://", "ws://", 1)
    );
    let mut socket = ws_connect(&url, Some(token))
        .unwrap_or_else(|status| panic!("device {id} refused with {status}"));
    assert_eq!(ws_next_json(&mut socket).expect("hello")["type"], "hello");
    FakeDevice {
        id: id.to_owned(),
        token: token.to_owned(),
        socket,
    }
}

fn execute(url: &str, sql: &str) {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    client.batch_execute(sql).expect("statement");
}

fn command_row(api: &Api, device: &str, id: &str) -> Value {
    api.get(&format!("/api/v1/devices/{device}/commands/{id}"))
        .data()
        .clone()
}

fn status_frame(version: &str, run_id: &str) -> Value {
    json!({"type": "status", "status": "ONLINE", "version": version, "bootId": "boot-1",
           "runId": run_id, "ts": now_rfc3339()})
}

/// The presence table says r2 holds `gone` (its device left a moment ago and r2 has not yet
/// deleted the row): a command sent through r1 is handed to r2, which finds no socket. With
/// `queueIfOffline` it is QUEUED there, and delivered when the device comes back to r1;
/// without, it fails as offline.
#[test]
fn a_command_handed_to_a_replica_that_lost_its_device_is_queued_when_asked() {
    let db = TestDb::postgres();
    let url = db.url().expect("a PostgreSQL database");
    let data = TempDir::new("gaps-queue");
    let (r1, r2) = two_replicas(&url, &data, &[]);
    let api = Api::admin_at(&r1.base_url);
    let token = api.enroll("gone");
    execute(
        &url,
        "INSERT INTO device_presence (device_id, replica_id, expires_at) \
         VALUES ('gone', 'r2', now() AT TIME ZONE 'UTC' + interval '1 hour')",
    );
    let queued = api.post(
        "/api/v1/devices/gone/commands",
        &json!({"command": {"type": "force_sync", "id": "handed-q"}, "timeoutMs": 10000,
                "queueIfOffline": true, "queueTtlMs": 60000}),
    );
    assert_eq!(queued.status, 200, "{}", queued.body);
    assert_eq!(queued.data()["status"], "QUEUED", "{}", queued.body);
    assert!(
        r2_log_has_handed(&r2, "handed-q"),
        "the command did not go through r2: {}",
        queued.body
    );
    let failed = api.post(
        "/api/v1/devices/gone/commands",
        &json!({"command": {"type": "force_sync", "id": "handed-f"}, "timeoutMs": 10000}),
    );
    assert_eq!(failed.data()["status"], "FAILED", "{}", failed.body);
    assert!(
        failed.data()["output"]
            .as_str()
            .unwrap_or_default()
            .contains("Device offline"),
        "{}",
        failed.body
    );

    // The device comes back, to r1: what was queued for it is delivered.
    let answering = device_on(&r1, "gone", &token).answer_commands();
    wait_until(WAIT, "the queued command delivered", || {
        command_row(&api, "gone", "handed-q")["status"] == "SUCCESS"
    });
    drop(r1);
    drop(r2);
    answering.join().unwrap();
}

/// r2 ran the hand-over of `id` (its debug log names every handed-over command it ended).
fn r2_log_has_handed(r2: &Replica, id: &str) -> bool {
    let mut found = false;
    wait_until(Duration::from_secs(10), "r2's log of the hand-over", || {
        found = r2
            .log()
            .lines()
            .any(|l| l.contains("handed-over command ended") && l.contains(id));
        found
    });
    found
}

/// A restart sent through r1 to a device on r2 is watched by r2; the device comes back on r1
/// with a new run id, and r1 confirms it. When r2's window passes, r2 must not tell the
/// dashboards that the restart failed: only the replica whose write ended the command speaks.
#[test]
fn a_confirmed_restart_is_not_reported_failed_by_another_replica() {
    let db = TestDb::postgres();
    let url = db.url().expect("a PostgreSQL database");
    let data = TempDir::new("gaps-confirm");
    let window = 2;
    let flags = ["--restart-confirm-secs", "2"];
    let (r1, r2) = two_replicas(&url, &data, &flags);
    let api = Api::admin_at(&r1.base_url);

    let mut dash = ws_connect(
        &format!(
            "{}/ws/dashboard",
            r1.base_url.replacen("http://", "ws://", 1)
        ),
        api.token(),
    )
    .expect("dashboard");
    assert_eq!(ws_next_json(&mut dash).expect("hello")["type"], "hello");
    ws_send_json(
        &mut dash,
        &json!({"type": "subscribe", "eventTypes": ["command_result"]}),
    );
    let watcher = std::thread::spawn(move || {
        let mut frames = Vec::new();
        while let Some(frame) = ws_next_json(&mut dash) {
            frames.push(frame);
        }
        frames
    });

    let token = api.enroll("restarter");
    let mut dev = device_on(&r2, "restarter", &token);
    dev.send(&status_frame("1.0.0", "run-1"));
    wait_until(WAIT, "restarter ONLINE", || {
        api.device_status("restarter").as_deref() == Some("ONLINE")
    });
    // Its run id stored before the restart reads it.
    std::thread::sleep(Duration::from_millis(300));
    // Answers the restart; the socket closes once the answer is stored (closed at once, with
    // a frame of the server's unread, it would be reset and the answer could be lost).
    let handle = std::thread::spawn(move || {
        while let Some(frame) = ws_next_json(&mut dev.socket) {
            if frame["type"] == "command" {
                ws_send_json(
                    &mut dev.socket,
                    &result_frame(&frame["command"], true, "restarting"),
                );
                break;
            }
        }
        dev
    });
    let reply = command(
        &api,
        "restarter",
        json!({"type": "restart_service", "id": "restart-1"}),
        false,
    );
    assert_eq!(reply["status"], "CONFIRMING", "{reply}");
    drop(handle.join().unwrap()); // r2 sees the device leave, as after a real restart
    let mut back = device_on(&r1, "restarter", &token);
    back.send(&status_frame("1.0.0", "run-2"));
    let mut row = Value::Null;
    wait_until(WAIT, "the restart CONFIRMED", || {
        // Again a moment later, in case the first came before r1 read the command's row.
        back.send(&status_frame("1.0.0", "run-2"));
        row = command_row(&api, "restarter", "restart-1");
        row["status"] == "CONFIRMED"
    });
    // r2's window (and its sweep after it) passes: nothing more may be said of the command.
    std::thread::sleep(Duration::from_secs(window + 2));
    drop(r1);
    drop(r2);
    let frames = watcher.join().unwrap();
    let about: Vec<&Value> = frames
        .iter()
        .filter(|f| f["commandId"] == "restart-1")
        .collect();
    assert!(
        about
            .iter()
            .any(|f| f["success"] == true
                && f["output"].as_str().unwrap_or("").contains("confirmed")),
        "no confirmation reached the dashboard: {about:?}"
    );
    let failures: Vec<&&Value> = about.iter().filter(|f| f["success"] == false).collect();
    assert!(
        failures.is_empty(),
        "a confirmed restart reported failed: {failures:?}"
    );
    assert_eq!(
        command_row_status_after(&url, "restart-1"),
        "CONFIRMED",
        "the row stays CONFIRMED"
    );
    drop(back);
}

fn command_row_status_after(url: &str, id: &str) -> String {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    client
        .query_one("SELECT status FROM commands WHERE id = $1", &[&id])
        .expect("command row")
        .get(0)
}

/// r1 leads and runs the deployer; the soaking device is on r2 and raises an error alert
/// there. The alert reaches r1's deployer through the database, and the device FAILS the soak.
#[test]
fn an_alert_raised_on_another_replica_fails_a_soaking_device() {
    let db = TestDb::postgres();
    let url = db.url().expect("a PostgreSQL database");
    let data = TempDir::new("gaps-alert");
    let (r1, r2) = two_replicas(&url, &data, &[]);
    let api = Api::admin_at(&r1.base_url);
    let token = api.enroll("alarming");
    let mut dev = device_on(&r2, "alarming", &token);
    dev.send(&status_frame("1.0.0", "al-0"));
    let alarming = dev.respond_live(|command, send| {
        send(
            &json!({"type": "command_result", "commandId": command["id"], "success": true,
                     "output": "staged", "data": {"activating": true}}),
        );
        send(&status_frame(command["version"].as_str().unwrap(), "al-1"));
        std::thread::sleep(Duration::from_millis(500));
        send(
            &json!({"type": "alert", "severity": "error", "message": "scanner driver crashed",
                     "ts": now_rfc3339()}),
        );
    });
    wait_until(WAIT, "alarming ONLINE", || {
        api.device_status("alarming").as_deref() == Some("ONLINE")
    });
    let upload = reqwest::blocking::Client::new()
        .post(format!(
            "{}/api/v1/firmware/releases?version=3.0.0&filename=edge.bin&project=edge",
            r1.base_url
        ))
        .bearer_auth(api.token().unwrap())
        .header("Content-Type", "application/octet-stream")
        .body(vec![3u8; 512])
        .send()
        .expect("upload");
    assert_eq!(upload.status().as_u16(), 201);
    let release: Value = upload.json().expect("upload answer");
    let created = api.post(
        "/api/v1/firmware/deployments",
        &json!({"releaseId": release["data"]["id"], "deviceIds": ["alarming"],
                "soakSecs": 5, "failureThresholdPercent": 100}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.data()["id"].as_str().unwrap().to_owned();
    let mut last = Value::Null;
    wait_until(WAIT, "the deployment ended", || {
        last = deployment(&api, &id);
        last["status"] == "COMPLETED" || last["status"] == "PAUSED"
    });
    let row = &last["devices"][0];
    assert_eq!(row["status"], "FAILED", "{last}");
    assert!(
        row["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("scanner driver crashed"),
        "{last}"
    );
    drop(r1);
    drop(r2);
    alarming.join().unwrap();
}

/// `kill -9` of r2, whose device does not come back anywhere: r1, leading, sees r2's
/// connection gone from the database and ends its leases at once, so the device is OFFLINE
/// well before the presence lease (15 s) would have passed.
#[test]
fn a_killed_replicas_devices_go_offline_before_its_lease_passes() {
    let db = TestDb::postgres();
    let url = db.url().expect("a PostgreSQL database");
    let data = TempDir::new("gaps-dead");
    let (r1, mut r2) = two_replicas(&url, &data, &["--presence-lease-secs", "15"]);
    let api = Api::admin_at(&r1.base_url);
    let token = api.enroll("stranded");
    let mut dev = device_on(&r2, "stranded", &token);
    dev.send(&status_frame("1.0.0", "st-0"));
    wait_until(WAIT, "stranded ONLINE", || {
        api.device_status("stranded").as_deref() == Some("ONLINE")
    });
    let killed = Instant::now();
    r2.kill();
    wait_until(
        Duration::from_secs(8),
        "stranded OFFLINE long before 15 s",
        || api.device_status("stranded").as_deref() == Some("OFFLINE"),
    );
    assert!(killed.elapsed() < Duration::from_secs(10));
    assert!(
        r1.log().contains("replicas gone from the database"),
        "{}",
        r1.log()
    );
    drop(dev);
}

/// The notifications on `factory_events` a test's own LISTEN connection received within
/// `wait`: (sender, number of events).
fn relayed(listener: &mut postgres::Client, wait: Duration) -> Vec<(String, usize)> {
    use postgres::fallible_iterator::FallibleIterator;
    let mut got = Vec::new();
    let mut notifications = listener.notifications();
    let mut iter = notifications.timeout_iter(wait);
    while let Ok(Some(n)) = iter.next() {
        let mut lines = n.payload().split('\n');
        let sender = lines.next().unwrap_or_default().to_owned();
        got.push((sender, lines.count()));
    }
    got
}

/// A replica alone on its database sends its dashboard events to nobody: no `NOTIFY` for
/// each (one a command, and most of the database's work under telemetry). Once a second
/// replica listens, which it says with a hello, the first relays again.
#[test]
fn dashboard_events_are_relayed_only_while_another_replica_listens() {
    let db = TestDb::postgres();
    let url = db.url().expect("a PostgreSQL database");
    let data = TempDir::new("gaps-alone");
    let r1 = Replica::start(&url, data.path(), "r1", &[]);
    wait_until(Duration::from_secs(20), "r1 listening", || {
        listening(&url, "r1")
    });
    let api = Api::admin_at(&r1.base_url);
    let token = api.enroll("alone");
    let mut device = device_on(&r1, "alone", &token);
    // This connection is no replica's (its name is not a replica's), so r1 stays alone.
    let mut listener = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    listener
        .batch_execute("LISTEN factory_events")
        .expect("LISTEN");
    // r1 looks every second; give it two looks after the device's own connect events.
    std::thread::sleep(Duration::from_millis(2_500));
    relayed(&mut listener, Duration::from_millis(10));
    device.send(&status_frame("1.0.0", "run-1"));
    let alone = relayed(&mut listener, Duration::from_secs(2));
    assert!(
        alone.is_empty(),
        "r1 relayed with nobody listening: {alone:?}"
    );

    let r2 = Replica::start(&url, data.path(), "r2", &[]);
    wait_until(Duration::from_secs(20), "r2 listening", || {
        listening(&url, "r2")
    });
    let hello = relayed(&mut listener, Duration::from_secs(2));
    assert!(
        hello.contains(&("r2".to_owned(), 0)),
        "no hello from r2: {hello:?}"
    );
    device.send(&status_frame("1.0.0", "run-1"));
    let mut from_r1 = Vec::new();
    wait_until(Duration::from_secs(10), "r1 relaying the status", || {
        from_r1.extend(relayed(&mut listener, Duration::from_millis(200)));
        from_r1
            .iter()
            .any(|(sender, events)| sender == "r1" && *events > 0)
    });
    drop(device);
    drop(r2);
    drop(r1);
}
