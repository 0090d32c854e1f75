//! Finding 1 of issue 15: a MANAGER must not take a line PC over through `push_config`.
//!
//! Pushing `rebootCommand` and then a `serverUrl` of the attacker's own once made the agent
//! run the attacker's program and hand its device token, its enrollment key and scanned
//! records to the attacker's server. Now only the settings of the agent's allow-list may be
//! pushed; these tests push the dangerous ones through the real server to a real agent and
//! watch that they are refused, change nothing, and that nothing ever reaches the attacker.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

on_both_backends!(
    pushed_commands_and_urls_are_refused_and_never_used,
    an_allowed_setting_still_applies_live,
);

const WAIT: Duration = Duration::from_secs(60);

/// The attacker's server: a listener that records every connection made to it and the
/// first bytes each sent (a request line, a bearer token).
struct AttackerListener {
    url: String,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl AttackerListener {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind attacker listener");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, log, stopped) = (connections.clone(), received.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 2048];
                        let n = stream.read(&mut buf).unwrap_or(0);
                        log.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        AttackerListener {
            url,
            connections,
            received,
            stop,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(
            self.connections.load(Ordering::SeqCst),
            0,
            "the agent connected to the attacker's server and sent: {:?}",
            self.received.lock().unwrap()
        );
    }
}

impl Drop for AttackerListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn push(api: &Api, device: &str, id: &str, patch: Value) -> Value {
    command(
        api,
        device,
        json!({"type": "push_config", "id": id, "patch": patch}),
        false,
    )
}

/// Asserts a push_config was refused, naming `key` as local-only.
fn assert_refused(result: &Value, key: &str) {
    assert_eq!(result["status"], "FAILED", "{result}");
    let output = result["output"].as_str().unwrap_or_default();
    assert!(
        output.contains(&format!(
            "`{key}` can only be set in the local configuration"
        )),
        "{result}"
    );
}

fn server_bottles(server: &ServerProcess) -> i64 {
    server.query_ints("SELECT COUNT(*) FROM aggregated_bottles")[0]
}

fn pushed_commands_and_urls_are_refused_and_never_used(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    admin.create_user("line-manager", "line-manager-password", "MANAGER");
    let manager = Api::login(&server, "line-manager", "line-manager-password");
    let attacker = AttackerListener::start();
    let markers = TempDir::new("push-config-markers");
    let local_reboot = markers.path().join("local-reboot-ran");
    let pushed_reboot = markers.path().join("pushed-reboot-ran");
    let device = "edge-pushed";
    let mut agent = AgentProcess::start_with(
        &server.base_url,
        device,
        AgentOptions {
            scanner: true,
            env: vec![(
                "EDGE_REBOOT_COMMAND".into(),
                format!("touch {}", local_reboot.display()),
            )],
            ..AgentOptions::default()
        },
    );
    let online = || {
        wait_until(WAIT, "the agent ONLINE", || {
            admin.device_status(device).as_deref() == Some("ONLINE")
        })
    };
    online();

    // The attack, step by step, as a MANAGER and as an ADMIN.
    let touch = json!(["touch", pushed_reboot.display().to_string()]);
    assert_refused(
        &push(
            &manager,
            device,
            "evil-reboot",
            json!({"rebootCommand": touch}),
        ),
        "rebootCommand",
    );
    assert_refused(
        &push(
            &admin,
            device,
            "evil-url",
            json!({"serverUrl": attacker.url}),
        ),
        "serverUrl",
    );
    assert_refused(
        &push(
            &manager,
            device,
            "evil-shutdown",
            json!({"shutdownCommand": touch}),
        ),
        "shutdownCommand",
    );
    // An allowed key beside a forbidden one does not carry it through: refused whole.
    let mixed = push(
        &manager,
        device,
        "evil-mixed",
        json!({"statusIntervalMs": 700, "rebootCommand": touch}),
    );
    assert_refused(&mixed, "rebootCommand");
    for (key, value) in [
        ("cloudUrl", json!(attacker.url)),
        ("cloudToken", json!("attacker-token")),
        ("companyId", json!("another-company")),
        ("scannerListen", json!("0.0.0.0:9100")),
        (
            "firmwareTrustedKeys",
            json!(["AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="]),
        ),
    ] {
        let id = format!("evil-{key}");
        assert_refused(&push(&manager, device, &id, json!({ key: value })), key);
    }

    // Nothing was stored: the agent's pushed document is still empty.
    let shown = push(&manager, device, "show", json!({}));
    assert_eq!(shown["status"], "SUCCESS", "{shown}");
    assert_eq!(shown["data"]["config"], json!({}), "{shown}");

    // What would have gone to the attacker goes to the real server: scanned records...
    agent.scan(&gs1_codes("PUSH", 7));
    wait_until(WAIT, "the 7 records at the real server", || {
        server_bottles(&server) == 7
    });
    // ...and reboot_os runs the locally configured program, not the pushed one.
    let reboot = command(
        &admin,
        device,
        json!({"type": "reboot_os", "id": "reboot-after"}),
        true,
    );
    assert_eq!(reboot["success"], true, "{reboot}");
    assert!(local_reboot.is_file(), "the local reboot command ran");
    assert!(!pushed_reboot.exists(), "the pushed reboot command ran");

    // A restart reads the stored document again: still the real server.
    let restart = command(
        &admin,
        device,
        json!({"type": "restart_service", "id": "restart-after"}),
        false,
    );
    assert_eq!(restart["success"], true, "{restart}");
    assert_eq!(agent.wait_exit(WAIT), Some(75), "{}", agent.log());
    let agent = agent.restart();
    wait_until(WAIT, "the restart confirmed at the real server", || {
        admin
            .get(&format!("/api/v1/devices/{device}/commands/restart-after"))
            .data()["status"]
            == "CONFIRMED"
    });
    agent.scan(&gs1_codes("AFTER", 3));
    wait_until(WAIT, "the 3 later records at the real server", || {
        server_bottles(&server) == 10
    });
    assert!(!pushed_reboot.exists());
    attacker.assert_untouched();
}

fn an_allowed_setting_still_applies_live(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    admin.create_user("line-manager", "line-manager-password", "MANAGER");
    let manager = Api::login(&server, "line-manager", "line-manager-password");
    let device = "edge-allowed";
    let _agent = AgentProcess::start(&server, device);
    wait_until(WAIT, "the agent ONLINE", || {
        admin.device_status(device).as_deref() == Some("ONLINE")
    });

    let pushed = push(
        &manager,
        device,
        "faster",
        json!({"statusIntervalMs": 200, "logLevel": "debug"}),
    );
    assert_eq!(pushed["status"], "SUCCESS", "{pushed}");
    let mut applied: Vec<String> =
        serde_json::from_value(pushed["data"]["applied"].clone()).unwrap();
    applied.sort();
    assert_eq!(applied, ["logLevel", "statusIntervalMs"]);

    // Live: status frames now come every 200 ms instead of every 5 s, so ten of them arrive
    // within a few seconds (the server stores the last one's time as lastSeen... counted
    // here through the dashboard stream).
    let mut dash = ws_connect(&server.ws_url("/ws/dashboard"), admin.token()).expect("dashboard");
    assert_eq!(ws_next_json(&mut dash).expect("hello")["type"], "hello");
    ws_send_json(
        &mut dash,
        &json!({"type": "subscribe", "deviceIds": [device], "eventTypes": ["status"]}),
    );
    let started = std::time::Instant::now();
    let mut statuses = 0;
    while statuses < 10 {
        let frame = ws_next_json(&mut dash).expect("a status frame");
        if frame["type"] == "status" && frame["deviceId"] == device {
            statuses += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "10 status frames took {:?}; the pushed period did not apply",
        started.elapsed()
    );

    // A filter that could log secrets is not among the pushable values.
    let refused = push(&manager, device, "trace", json!({"logLevel": "trace"}));
    assert_eq!(refused["status"], "FAILED", "{refused}");
    assert!(
        refused["output"]
            .as_str()
            .unwrap()
            .contains("only one of error, warn, info, debug"),
        "{refused}"
    );
}
