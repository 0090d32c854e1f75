//! Firmware deployments against the real server with simulated devices, on SQLite and
//! PostgreSQL: waves promoted only after a healthy soak, the download cap (online devices
//! first), auto-pause past the
//! failure threshold and resume, health failures during the soak, cancel, the refused delete of
//! a release in use, and bad requests. Real agents are in `agent_firmware.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

on_both_backends!(
    waves_are_promoted_only_after_a_healthy_soak,
    downloads_stay_within_the_cap,
    offline_devices_do_not_keep_online_ones_from_a_download_slot,
    failures_past_the_threshold_pause_and_resume_retries_them,
    unhealthy_devices_fail_during_the_soak,
    cancel_settles_the_rest_and_frees_the_release,
    a_download_orphaned_by_a_restart_is_sent_again_and_an_offline_device_gets_it_queued,
    bad_deployment_requests_are_refused,
);

const WAIT: Duration = Duration::from_secs(30);

/// A simulated device that runs `update_firmware` like an agent: it answers success, then
/// "restarts" onto the new version (a status frame with it and a new run id).
fn updating_device(
    server: &ServerProcess,
    api: &Api,
    id: &str,
) -> std::thread::JoinHandle<Vec<Value>> {
    let mut dev = FakeDevice::connect(server, api, id);
    dev.send(&status_frame("1.0.0", &format!("{id}-run-0")));
    let id = id.to_owned();
    let mut runs = 0;
    dev.respond_live(move |command, send| {
        if command["type"] == "update_firmware" {
            send(
                &json!({"type": "command_result", "commandId": command["id"], "success": true,
                         "output": "staged", "data": {"activating": true}}),
            );
            runs += 1;
            let version = command["version"].as_str().unwrap();
            send(&status_frame(version, &format!("{id}-run-{runs}")));
        }
    })
}

fn status_frame(version: &str, run_id: &str) -> Value {
    json!({"type": "status", "status": "ONLINE", "version": version, "bootId": "boot-1",
           "runId": run_id, "ts": now_rfc3339()})
}

fn deploy(api: &Api, body: Value) -> Value {
    let reply = api.post("/api/v1/firmware/deployments", &body);
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.data().clone()
}

fn wait_for_status(api: &Api, id: &str, status: &str) -> Value {
    let mut last = Value::Null;
    wait_until(WAIT, &format!("deployment {status}"), || {
        last = deployment(api, id);
        last["status"] == status
    });
    last
}

/// Waits until `device`'s update in the deployment has the command status `status` (SENT to a
/// connected device, QUEUED for an offline one); answers the command id.
fn wait_command(api: &Api, id: &str, device: &str, status: &str) -> String {
    let mut found = String::new();
    wait_until(WAIT, &format!("{device}'s update {status}"), || {
        let d = deployment(api, id);
        let Some(command) = d["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["deviceId"] == device)
            .and_then(|x| x["commandId"].as_str())
        else {
            return false;
        };
        found = command.to_owned();
        api.get(&format!("/api/v1/devices/{device}/commands/{command}"))
            .body["data"]["status"]
            == status
    });
    found
}

fn group_of(api: &Api, name: &str, devices: &[&str]) -> String {
    let group = api.post("/api/v1/device-groups", &json!({"name": name}));
    let id = group.data()["id"].as_str().unwrap().to_owned();
    let added = api.post(
        &format!("/api/v1/device-groups/{id}/members"),
        &json!({"deviceIds": devices}),
    );
    assert_eq!(added.status, 200, "{}", added.body);
    id
}

fn waves_are_promoted_only_after_a_healthy_soak(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let names = ["line-a", "line-b", "line-c", "line-d"];
    let devices: Vec<_> = names
        .iter()
        .map(|n| updating_device(&server, &api, n))
        .collect();
    let group = group_of(&api, "line", &names);
    let release = upload_release(&server, &api, "edge", "1.1.0", vec![7u8; 4096]);
    // A dashboard that watches deployment events only, until the server goes away.
    let mut dash = ws_connect(&server.ws_url("/ws/dashboard"), api.token()).expect("dashboard");
    assert_eq!(ws_next_json(&mut dash).expect("hello")["type"], "hello");
    ws_send_json(
        &mut dash,
        &json!({"type": "subscribe", "eventTypes": ["deployment"]}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let watcher = std::thread::spawn(move || {
        let mut frames = Vec::new();
        while let Some(frame) = ws_next_json(&mut dash) {
            frames.push(frame);
        }
        frames
    });
    let soak_secs = 3;
    let created = deploy(
        &api,
        json!({"releaseId": release["id"], "groupId": group, "wavePercent": 50,
               "soakSecs": soak_secs, "failureThresholdPercent": 0}),
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["waves"], 2);
    assert_eq!(created["waveSize"], 2);

    // Wave 1 comes back on the new version and soaks; wave 2 is untouched meanwhile.
    wait_until(WAIT, "wave 1 ACTIVE", || {
        let d = deployment(&api, &id);
        let s = deployment_statuses(&d);
        s["line-a"] == "ACTIVE" && s["line-b"] == "ACTIVE"
    });
    let during_soak = deployment(&api, &id);
    let s = deployment_statuses(&during_soak);
    assert_eq!(s["line-c"], "PENDING", "{during_soak}");
    assert_eq!(s["line-d"], "PENDING", "{during_soak}");
    assert_eq!(during_soak["currentWave"], 1);

    let done = wait_for_status(&api, &id, "COMPLETED");
    assert!(
        deployment_statuses(&done).values().all(|s| s == "ACTIVE"),
        "{done}"
    );
    assert_eq!(done["counts"]["ACTIVE"], 4);
    // Wave 2 started only after wave 1's soak: its first update came at least a soak later.
    let at = |d: &str, field: &str| -> chrono::DateTime<chrono::Utc> {
        let dev = done["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["deviceId"] == d)
            .unwrap();
        dev[field].as_str().unwrap().parse().unwrap()
    };
    for first in ["line-a", "line-b"] {
        for second in ["line-c", "line-d"] {
            let gap = at(second, "soakUntil") - at(first, "soakUntil");
            assert!(
                gap >= chrono::Duration::seconds(soak_secs),
                "{second} soaked only {gap} after {first}: {done}"
            );
        }
    }
    let versions = api.get("/api/v1/devices?limit=10");
    for d in versions.data()["items"].as_array().unwrap() {
        assert_eq!(d["version"], "1.1.0", "{d}");
    }
    drop(server);
    let frames = watcher.join().unwrap();
    assert!(
        frames
            .iter()
            .all(|f| f["type"] == "deployment" && f["deploymentId"] == id),
        "{frames:?}"
    );
    for name in names {
        let steps: Vec<&str> = frames
            .iter()
            .filter(|f| f["deviceId"] == name)
            .map(|f| f["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            steps,
            ["IN_PROGRESS", "STAGED", "ACTIVE", "ACTIVE"],
            "{name}: downloading, staged, back on the new version, verified after the soak"
        );
    }
    let overall: Vec<&str> = frames
        .iter()
        .filter(|f| f["deviceId"] == "*")
        .map(|f| f["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        overall,
        ["RUNNING", "COMPLETED"],
        "wave 2 promoted, then done"
    );
    for d in devices {
        let commands = d.join().unwrap();
        assert_eq!(commands.len(), 1, "one update per device: {commands:?}");
        assert_eq!(commands[0]["deploymentId"], id);
        assert_eq!(commands[0]["sha256"], release["sha256"]);
        assert_eq!(
            commands[0]["url"],
            format!(
                "/api/v1/firmware/releases/{}/artifact",
                release["id"].as_str().unwrap()
            )
        );
    }
}

fn downloads_stay_within_the_cap(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let names: Vec<String> = (0..6).map(|i| format!("cap-{i}")).collect();
    let mut threads = Vec::new();
    for name in &names {
        let mut dev = FakeDevice::connect(&server, &api, name);
        dev.send(&status_frame("1.0.0", "run-0"));
        let (now, peak) = (now.clone(), peak.clone());
        threads.push(dev.respond_live(move |command, send| {
            let running = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(running, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(400));
            // Counted down before the answer leaves, so the server cannot start the next
            // download while this one still counts.
            now.fetch_sub(1, Ordering::SeqCst);
            send(&json!({"type": "command_result", "commandId": command["id"], "success": true, "output": "staged"}));
            send(&status_frame(command["version"].as_str().unwrap(), "run-1"));
        }));
    }
    let release = upload_release(&server, &api, "edge", "1.2.0", vec![1u8; 1024]);
    let created = deploy(
        &api,
        json!({"releaseId": release["id"], "deviceIds": names, "maxConcurrentDownloads": 2,
               "soakSecs": 0}),
    );
    let id = created["id"].as_str().unwrap();
    let done = wait_for_status(&api, id, "COMPLETED");
    assert_eq!(done["counts"]["ACTIVE"], 6, "{done}");
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "at most two downloads at once, and two did run together"
    );
    drop(server);
    for t in threads {
        assert_eq!(t.join().unwrap().len(), 1);
    }
}

fn offline_devices_do_not_keep_online_ones_from_a_download_slot(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    // `a-asleep` comes first in the wave's order and is offline: had it taken the only slot,
    // its queued update would hold it until it connects or the stage timeout (minutes).
    api.enroll("a-asleep");
    let awake = updating_device(&server, &api, "b-awake");
    let release = upload_release(&server, &api, "edge", "2.0.0", vec![3u8; 512]);
    let created = deploy(
        &api,
        json!({"releaseId": release["id"], "deviceIds": ["a-asleep", "b-awake"],
               "maxConcurrentDownloads": 1, "soakSecs": 0}),
    );
    let id = created["id"].as_str().unwrap().to_owned();
    wait_until(WAIT, "the online device ACTIVE first", || {
        let s = deployment_statuses(&deployment(&api, &id));
        s["b-awake"] == "ACTIVE"
    });
    // Then the offline device gets the slot: its update waits queued for it.
    wait_command(&api, &id, "a-asleep", "QUEUED");
    let asleep = updating_device(&server, &api, "a-asleep");
    let done = wait_for_status(&api, &id, "COMPLETED");
    assert_eq!(done["counts"]["ACTIVE"], 2, "{done}");
    drop(server);
    assert_eq!(awake.join().unwrap().len(), 1);
    assert_eq!(asleep.join().unwrap().len(), 1);
}

fn failures_past_the_threshold_pause_and_resume_retries_them(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let good = ["ok-1", "ok-2", "ok-3"];
    let threads: Vec<_> = good
        .iter()
        .map(|n| updating_device(&server, &api, n))
        .collect();
    // Fails its first update, succeeds on the second.
    let attempts = Arc::new(Mutex::new(0));
    let mut flaky = FakeDevice::connect(&server, &api, "flaky");
    flaky.send(&status_frame("1.0.0", "flaky-0"));
    let seen = attempts.clone();
    let flaky = flaky.respond_live(move |command, send| {
        let mut n = seen.lock().unwrap();
        *n += 1;
        if *n == 1 {
            send(&json!({"type": "command_result", "commandId": command["id"], "success": false,
                         "output": "wrong hash: expected sha256 aa, got bb"}));
        } else {
            send(&json!({"type": "command_result", "commandId": command["id"], "success": true, "output": "staged"}));
            send(&status_frame(command["version"].as_str().unwrap(), "flaky-1"));
        }
    });
    let release = upload_release(&server, &api, "edge", "2.0.0", vec![2u8; 2048]);
    let mut targets = vec!["flaky"];
    targets.extend(good);
    let created = deploy(
        &api,
        json!({"releaseId": release["id"], "deviceIds": targets, "waveSize": 2,
               "failureThresholdPercent": 25, "soakSecs": 0}),
    );
    let id = created["id"].as_str().unwrap().to_owned();

    // Wave 1 is flaky + ok-1: one failure of two is 50 % > 25 %.
    let paused = wait_for_status(&api, &id, "PAUSED");
    let reason = paused["pausedReason"].as_str().unwrap();
    assert!(reason.contains("1 of 2 devices failed"), "{reason}");
    let s = deployment_statuses(&paused);
    assert_eq!(s["flaky"], "FAILED");
    assert_eq!(s["ok-2"], "PENDING", "wave 2 must not start: {paused}");
    assert_eq!(s["ok-3"], "PENDING");
    let flaky_row = paused["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["deviceId"] == "flaky")
        .unwrap();
    assert!(
        flaky_row["reason"].as_str().unwrap().contains("wrong hash"),
        "{flaky_row}"
    );
    // Still paused a moment later: nothing moves by itself.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(deployment(&api, &id)["status"], "PAUSED");

    let resumed = api.post(
        &format!("/api/v1/firmware/deployments/{id}/resume"),
        &json!({}),
    );
    assert_eq!(resumed.data()["status"], "RUNNING", "{}", resumed.body);
    let done = wait_for_status(&api, &id, "COMPLETED");
    assert_eq!(done["counts"]["ACTIVE"], 4, "{done}");
    assert_eq!(*attempts.lock().unwrap(), 2);
    let again = api.post(
        &format!("/api/v1/firmware/deployments/{id}/resume"),
        &json!({}),
    );
    assert_eq!(again.status, 409);
    assert_eq!(again.error_code(), "deployment_state");

    let audit = api.get("/api/v1/audit?action=firmware.deployment.resume");
    assert_eq!(audit.data()["total"], 2, "{}", audit.body);
    drop(server);
    flaky.join().unwrap();
    for t in threads {
        t.join().unwrap();
    }
}

fn unhealthy_devices_fail_during_the_soak(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let healthy = updating_device(&server, &api, "steady");
    // Comes back on the new version, then raises an error alert during the soak.
    let mut alarming = FakeDevice::connect(&server, &api, "alarming");
    alarming.send(&status_frame("1.0.0", "al-0"));
    let alarming = alarming.respond_live(|command, send| {
        send(&json!({"type": "command_result", "commandId": command["id"], "success": true, "output": "staged"}));
        send(&status_frame(command["version"].as_str().unwrap(), "al-1"));
        std::thread::sleep(Duration::from_millis(500));
        send(&json!({"type": "alert", "severity": "error", "message": "scanner driver crashed", "ts": now_rfc3339()}));
    });
    // Comes back, then restarts again (a crash loop) during the soak.
    let mut looping = FakeDevice::connect(&server, &api, "looping");
    looping.send(&status_frame("1.0.0", "lp-0"));
    let looping = looping.respond_live(|command, send| {
        let v = command["version"].as_str().unwrap();
        send(&json!({"type": "command_result", "commandId": command["id"], "success": true, "output": "staged"}));
        send(&status_frame(v, "lp-1"));
        std::thread::sleep(Duration::from_millis(1500));
        send(&status_frame(v, "lp-2"));
    });
    let release = upload_release(&server, &api, "edge", "3.0.0", vec![3u8; 512]);
    let created = deploy(
        &api,
        json!({"releaseId": release["id"], "deviceIds": ["steady", "alarming", "looping"],
               "soakSecs": 5, "failureThresholdPercent": 100}),
    );
    let id = created["id"].as_str().unwrap();
    let done = wait_for_status(&api, id, "COMPLETED");
    let rows = done["devices"].as_array().unwrap();
    let row = |d: &str| rows.iter().find(|r| r["deviceId"] == d).unwrap().clone();
    assert_eq!(row("steady")["status"], "ACTIVE", "{done}");
    assert!(row("steady")["verifiedAt"].is_string());
    assert_eq!(row("alarming")["status"], "FAILED");
    assert!(
        row("alarming")["reason"]
            .as_str()
            .unwrap()
            .contains("scanner driver crashed"),
        "{done}"
    );
    assert_eq!(row("looping")["status"], "FAILED");
    assert!(
        row("looping")["reason"]
            .as_str()
            .unwrap()
            .contains("restarted during the soak"),
        "{done}"
    );
    drop(server);
    for t in [healthy, alarming, looping] {
        t.join().unwrap();
    }
}

fn cancel_settles_the_rest_and_frees_the_release(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    // Reports progress and never answers: its download stays IN_PROGRESS at 42 %.
    let silent = FakeDevice::connect(&server, &api, "silent");
    let silent = silent.respond_with(|command| {
        vec![
            json!({"type": "command_progress", "commandId": command["id"], "percent": 42,
                    "message": "downloaded 108 of 256 bytes"}),
        ]
    });
    api.enroll("waiting");
    let release = upload_release(&server, &api, "edge", "4.0.0", vec![4u8; 256]);
    let release_id = release["id"].as_str().unwrap();
    let created = deploy(
        &api,
        json!({"releaseId": release_id, "deviceIds": ["silent", "waiting"], "waveSize": 1}),
    );
    let id = created["id"].as_str().unwrap();
    // SENT: the device has it, so a cancel cannot call it back.
    wait_command(&api, id, "silent", "SENT");
    wait_until(WAIT, "the download's progress in the deployment", || {
        let d = deployment(&api, id);
        d["devices"][0]["progress"] == 42
            && d["devices"][0]["progressMessage"] == "downloaded 108 of 256 bytes"
    });

    let refused = api.delete(&format!("/api/v1/firmware/releases/{release_id}"));
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.error_code(), "release_deployed");

    let cancelled = api.post(
        &format!("/api/v1/firmware/deployments/{id}/cancel"),
        &json!({}),
    );
    assert_eq!(
        cancelled.data()["status"],
        "CANCELLED",
        "{}",
        cancelled.body
    );
    let s = deployment_statuses(cancelled.data());
    assert_eq!(s["waiting"], "CANCELLED");
    assert_eq!(
        s["silent"], "IN_PROGRESS",
        "a running download is left to finish"
    );

    let deleted = api.delete(&format!("/api/v1/firmware/releases/{release_id}"));
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    // The history stays readable without its release.
    let kept = deployment(&api, id);
    assert_eq!(kept["version"], "4.0.0");
    let listed = api.get("/api/v1/firmware/deployments?status=CANCELLED");
    assert_eq!(listed.data()["total"], 1);
    let item = &listed.data()["items"][0];
    assert!(item.get("devices").is_none());
    assert_eq!(item["counts"]["CANCELLED"], 1, "{item}");
    assert_eq!(item["counts"]["IN_PROGRESS"], 1, "{item}");
    assert_eq!(item["counts"]["ACTIVE"], 0, "{item}");
    drop(server);
    silent.join().unwrap();
}

fn a_download_orphaned_by_a_restart_is_sent_again_and_an_offline_device_gets_it_queued(
    backend: Backend,
) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    // The first connection takes the command and never answers.
    let silent = FakeDevice::connect(&server, &api, "phoenix").respond_with(|_| vec![]);
    let release = upload_release(&server, &api, "edge", "5.0.0", vec![9u8; 1000]);
    let created = deploy(
        &api,
        json!({"releaseId": release["id"], "deviceIds": ["phoenix"], "soakSecs": 0}),
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let first_command = wait_command(&api, &id, "phoenix", "SENT");

    let (db, dir) = server.stop();
    assert!(silent.join().unwrap().len() == 1);
    let server = ServerProcess::start_with(db, dir, &[]);
    let api = Api::admin(&server);
    // The restarted server sends the update again under a new id; the device is offline, so
    // it is queued, and delivered when the device comes back, this time answering.
    wait_until(WAIT, "the update queued again", || {
        let d = deployment(&api, &id);
        let command = d["devices"][0]["commandId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        command != first_command
            && api
                .get(&format!("/api/v1/devices/phoenix/commands/{command}"))
                .body["data"]["status"]
                == "QUEUED"
    });
    let device = updating_device(&server, &api, "phoenix");
    let done = wait_for_status(&api, &id, "COMPLETED");
    assert_eq!(done["devices"][0]["status"], "ACTIVE", "{done}");
    let history = api.get("/api/v1/devices/phoenix/commands?type=update_firmware");
    assert_eq!(history.data()["total"], 2, "{}", history.body);
    drop(server);
    assert_eq!(device.join().unwrap().len(), 1);
}

fn bad_deployment_requests_are_refused(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    api.enroll("edge-1");
    let release = upload_release(&server, &api, "edge", "1.0.1", vec![5u8; 64]);
    let rid = release["id"].clone();
    let cases = [
        (json!({"releaseId": rid}), 400, "invalid_body"),
        (
            json!({"releaseId": rid, "deviceIds": ["edge-1"], "groupId": "g"}),
            400,
            "invalid_body",
        ),
        (
            json!({"releaseId": rid, "deviceIds": ["edge-1"], "waveSize": 0}),
            400,
            "invalid_body",
        ),
        (
            json!({"releaseId": rid, "deviceIds": ["edge-1"], "wavePercent": 150}),
            400,
            "invalid_body",
        ),
        (
            json!({"releaseId": rid, "deviceIds": ["edge-1"], "maxConcurrentDownloads": 0}),
            400,
            "invalid_body",
        ),
        (
            json!({"releaseId": rid, "deviceIds": ["edge-1"], "failureThresholdPercent": 101}),
            400,
            "invalid_body",
        ),
        (
            json!({"releaseId": "nope", "deviceIds": ["edge-1"]}),
            404,
            "release_not_found",
        ),
        (
            json!({"releaseId": rid, "deviceIds": ["edge-1", "ghost"]}),
            404,
            "device_not_found",
        ),
        (
            json!({"releaseId": rid, "groupId": "no-group"}),
            404,
            "group_not_found",
        ),
        (json!({"deviceIds": ["edge-1"]}), 400, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let reply = api.post("/api/v1/firmware/deployments", &body);
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.error_code(), code, "{body}");
    }
    let listed = api.get("/api/v1/firmware/deployments");
    assert_eq!(
        listed.data()["total"],
        0,
        "no refused request left a deployment"
    );
    // One rollout per device at a time (edge-1 is offline: its update waits queued).
    let first = api.post(
        "/api/v1/firmware/deployments",
        &json!({"releaseId": rid, "deviceIds": ["edge-1"]}),
    );
    assert_eq!(first.status, 201, "{}", first.body);
    let second = api.post(
        "/api/v1/firmware/deployments",
        &json!({"releaseId": rid, "deviceIds": ["edge-1"]}),
    );
    assert_eq!(second.status, 409, "{}", second.body);
    assert_eq!(second.error_code(), "device_in_deployment");
    let id = first.data()["id"].as_str().unwrap();
    let command = wait_command(&api, id, "edge-1", "QUEUED");
    let cancelled = api.post(
        &format!("/api/v1/firmware/deployments/{id}/cancel"),
        &json!({}),
    );
    // The update that waited queued for the offline device is withdrawn with it.
    assert_eq!(deployment_statuses(cancelled.data())["edge-1"], "CANCELLED");
    assert_eq!(
        cancelled.data()["devices"][0]["commandId"],
        command.as_str()
    );
    let record = api.get(&format!("/api/v1/devices/edge-1/commands/{command}"));
    assert_eq!(record.data()["status"], "CANCELLED", "{}", record.body);
    let after_cancel = api.post(
        "/api/v1/firmware/deployments",
        &json!({"releaseId": rid, "deviceIds": ["edge-1"]}),
    );
    assert_eq!(after_cancel.status, 201, "{}", after_cancel.body);
    let missing = api.get("/api/v1/firmware/deployments/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "deployment_not_found");
    let bad_filter = api.get("/api/v1/firmware/deployments?status=SOMETIMES");
    assert_eq!(bad_filter.status, 400);
}
