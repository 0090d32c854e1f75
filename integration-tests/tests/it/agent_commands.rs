//! Every one of the eleven command types, sent through the real server to a real agent, on
//! both databases. reboot_os and shutdown_os run a harmless `touch` configured for the test,
//! never the real thing.

use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

on_both_backends!(every_command_type_through_a_real_agent);

fn send(api: &Api, device: &str, command: Value, confirm: bool) -> Value {
    let reply = api.post(
        &format!("/api/v1/devices/{device}/commands"),
        &json!({"command": command, "timeoutMs": 30000, "confirm": confirm}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.data().clone()
}

fn final_status(api: &Api, device: &str, id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    wait_until(
        Duration::from_secs(30),
        &format!("{id} to end {want}"),
        || {
            let r = api.get(&format!("/api/v1/devices/{device}/commands/{id}"));
            last = r.data().clone();
            last["status"] == want
        },
    );
    last
}

fn every_command_type_through_a_real_agent(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--reboot-confirm-secs", "3"],
    );
    let api = Api::admin(&server);
    let markers = TempDir::new("os-markers");
    let reboot = markers.path().join("rebooted");
    let shutdown = markers.path().join("powered-off");
    let device = "edge-all";
    let mut agent = AgentProcess::start_with(
        &server.base_url,
        device,
        AgentOptions {
            scanner: true,
            env: vec![
                (
                    "EDGE_REBOOT_COMMAND".into(),
                    format!("touch {}", reboot.display()),
                ),
                (
                    "EDGE_SHUTDOWN_COMMAND".into(),
                    format!("touch {}", shutdown.display()),
                ),
            ],
            ..AgentOptions::default()
        },
    );
    let online = |api: &Api| {
        wait_until(Duration::from_secs(60), "the agent ONLINE", || {
            api.device_status(device).as_deref() == Some("ONLINE")
        })
    };
    online(&api);
    let mut seen = std::collections::BTreeSet::new();

    // force_sync, with a few scanned codes in the queue.
    agent.scan(&gs1_codes("0", 3));
    let r = send(
        &api,
        device,
        json!({"type": "force_sync", "id": "c-force"}),
        false,
    );
    assert_eq!(r["status"], "SUCCESS", "{r}");
    seen.insert("force_sync");

    // push_config: a live setting.
    let r = send(
        &api,
        device,
        json!({"type": "push_config", "id": "c-config", "patch": {"statusIntervalMs": 1000}}),
        false,
    );
    assert_eq!(r["status"], "SUCCESS", "{r}");
    seen.insert("push_config");

    // exec_shell: the contract's disk_usage template runs df.
    let r = send(
        &api,
        device,
        json!({"type": "exec_shell", "id": "c-shell", "template": "disk_usage", "args": {"path": "/"}}),
        false,
    );
    assert_eq!(r["status"], "SUCCESS", "{r}");
    assert!(r["output"].as_str().unwrap().contains("Filesystem"), "{r}");
    seen.insert("exec_shell");

    // pull_logs: lines reach the server's log route.
    let r = send(
        &api,
        device,
        json!({"type": "pull_logs", "id": "c-logs", "lines": 5}),
        false,
    );
    assert_eq!(r["status"], "SUCCESS", "{r}");
    wait_until(Duration::from_secs(10), "pulled log lines stored", || {
        api.get(&format!("/api/v1/devices/{device}/logs")).data()["total"]
            .as_i64()
            .unwrap_or(0)
            > 0
    });
    seen.insert("pull_logs");

    // disable_device and enable_device, seen in the device's status.
    let r = send(
        &api,
        device,
        json!({"type": "disable_device", "id": "c-disable", "reason": "line stop"}),
        true,
    );
    assert_eq!(r["status"], "SUCCESS", "{r}");
    wait_until(Duration::from_secs(15), "DISABLED", || {
        api.device_status(device).as_deref() == Some("DISABLED")
    });
    seen.insert("disable_device");
    let r = send(
        &api,
        device,
        json!({"type": "enable_device", "id": "c-enable"}),
        false,
    );
    assert_eq!(r["status"], "SUCCESS", "{r}");
    online(&api);
    seen.insert("enable_device");

    // clear_queue.
    let r = send(
        &api,
        device,
        json!({"type": "clear_queue", "id": "c-clear", "includeCompleted": true}),
        true,
    );
    assert_eq!(r["status"], "SUCCESS", "{r}");
    seen.insert("clear_queue");

    // shutdown_os runs the configured harmless command.
    let r = send(
        &api,
        device,
        json!({"type": "shutdown_os", "id": "c-shutdown"}),
        true,
    );
    assert_eq!(r["success"], true, "{r}");
    assert!(shutdown.is_file(), "the configured shutdown command ran");
    seen.insert("shutdown_os");

    // reboot_os: the harmless command runs, but the machine's boot id does not change, so the
    // server does not take the device's word for it.
    let r = send(
        &api,
        device,
        json!({"type": "reboot_os", "id": "c-reboot"}),
        true,
    );
    assert_eq!(r["status"], "CONFIRMING", "{r}");
    assert!(reboot.is_file(), "the configured reboot command ran");
    let ended = final_status(&api, device, "c-reboot", "FAILED");
    assert!(
        ended["output"].as_str().unwrap().contains("boot id"),
        "{ended}"
    );
    seen.insert("reboot_os");

    // update_firmware: the URL serves nothing, so the agent's updater answers with the download
    // error (the `updater` module stages real releases).
    let r = send(
        &api,
        device,
        json!({"type": "update_firmware", "id": "c-fw", "version": "9.9.9", "url": format!("{}/nothing", server.base_url),
               "sha256": "00".repeat(32), "size": 1}),
        true,
    );
    assert_eq!(r["commandId"], "c-fw");
    assert_eq!(r["status"], "FAILED", "{r}");
    assert!(
        r["output"].as_str().unwrap().starts_with("download error"),
        "{r}"
    );
    seen.insert("update_firmware");

    // restart_service: the agent answers, exits, is started again (by systemd in the field,
    // by the test here) with a new run id, and only then is the command CONFIRMED.
    let r = send(
        &api,
        device,
        json!({"type": "restart_service", "id": "c-restart"}),
        true,
    );
    assert_eq!(r["status"], "CONFIRMING", "{r}");
    let code = agent.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(75), "the agent exits with the restart code");
    let _agent = agent.restart();
    final_status(&api, device, "c-restart", "CONFIRMED");
    seen.insert("restart_service");

    // The same id again runs nothing on the agent and answers from the record.
    let again = send(
        &api,
        device,
        json!({"type": "force_sync", "id": "c-force"}),
        false,
    );
    assert_eq!(again["status"], "SUCCESS");

    assert_eq!(seen.len(), 11, "all eleven command types: {seen:?}");
    let history = api.get(&format!("/api/v1/devices/{device}/commands?limit=50"));
    assert_eq!(history.data()["total"], 11);
}
