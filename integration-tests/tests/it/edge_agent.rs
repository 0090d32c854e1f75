//! The edge agent end to end, with the real `edge-agent` and `factory-server` binaries:
//! scanned codes reach the server exactly once through server outages and `kill -9`, pushed
//! configuration survives `restart_service`, shell templates keep injection attempts inert,
//! production can be switched off, the OS commands run what is configured, and
//! `DIRECT_CLOUD` mode posts to the cloud routes.

use std::time::Duration;

use integration_tests::cloud_sim::CloudSim;
use integration_tests::*;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(180);

fn scanner_agent(server_url: &str, device_id: &str, args: &[&str]) -> AgentProcess {
    AgentProcess::start_with(
        server_url,
        device_id,
        AgentOptions {
            args: args.iter().map(|a| a.to_string()).collect(),
            scanner: true,
            ..AgentOptions::default()
        },
    )
}

fn wait_status(api: &Api, agent: &AgentProcess, status: &str) {
    wait_until(
        Duration::from_secs(60),
        &format!("the agent to be {status}"),
        || api.device_status(&agent.device_id).as_deref() == Some(status),
    );
}

fn wait_online(api: &Api, agent: &AgentProcess) {
    wait_until(Duration::from_secs(60), "the agent to come online", || {
        api.device_status(&agent.device_id).as_deref() == Some("ONLINE")
    });
}

/// Rows of the agent's queue in `state`, read from its database file.
fn agent_queue(agent: &AgentProcess, state: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        agent.data_dir.path().join("agent.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open agent.db");
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM queue WHERE state = ?1",
        [state],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

fn agent_queue_total(agent: &AgentProcess) -> i64 {
    agent_queue(agent, "PENDING") + agent_queue(agent, "SENT")
}

/// Bottle rows at the server, and how many distinct payloads (codes) they hold.
fn server_bottles(server: &ServerProcess) -> (i64, i64) {
    let v = server.query_ints("SELECT COUNT(*), COUNT(DISTINCT payload) FROM aggregated_bottles");
    (v[0], v[1])
}

fn server_count(server: &ServerProcess, table: &str) -> i64 {
    server.query_ints(&format!("SELECT COUNT(*) FROM {table}"))[0]
}

#[test]
fn codes_scanned_while_the_server_is_down_arrive_exactly_once() {
    let bind = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start_on(
        &bind,
        TestDb::new(Backend::Sqlite),
        TempDir::new("factory-data"),
        &[],
    );
    let api = Api::admin(&server);
    let agent = scanner_agent(&server.base_url, "edge-offline", &[]);
    wait_online(&api, &agent);

    let (db, dir) = server.stop();
    let codes = gs1_codes("OFF", 10_000);
    agent.scan(&codes);
    wait_until(LONG, "every code in the agent's queue", || {
        agent_queue(&agent, "PENDING") >= 10_000
    });

    let server = ServerProcess::start_on(&bind, db, dir, &[]);
    wait_until(LONG, "every code at the server", || {
        server_bottles(&server).0 >= 10_000
    });
    wait_until(LONG, "the agent's queue to drain", || {
        agent_queue(&agent, "PENDING") == 0
    });
    assert_eq!(server_bottles(&server), (10_000, 10_000));
    // 100 bottles per batch and 10 batches per pallet by default.
    assert_eq!(server_count(&server, "aggregated_batches"), 100);
    assert_eq!(server_count(&server, "aggregated_batch_fixations"), 100);
    assert_eq!(server_count(&server, "aggregated_pallets"), 10);
    assert_eq!(server_count(&server, "cloud_sync_queue"), 10_210);
}

#[test]
fn kill_9_during_a_drain_still_delivers_exactly_once() {
    let bind = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start_on(
        &bind,
        TestDb::new(Backend::Sqlite),
        TempDir::new("factory-data"),
        &[],
    );
    let api = Api::admin(&server);
    let mut agent = scanner_agent(&server.base_url, "edge-crash", &["--batch-size", "0"]);
    wait_online(&api, &agent);

    // Everything is on disk before the server comes back, so the drain is one long run.
    let (db, dir) = server.stop();
    agent.scan(&gs1_codes("K", 10_000));
    wait_until(LONG, "every code in the agent's queue", || {
        agent_queue(&agent, "PENDING") >= 10_000
    });
    let server = ServerProcess::start_on(&bind, db, dir, &[]);
    let mut at_kill = 0;
    wait_until(LONG, "the drain to start", || {
        at_kill = server_bottles(&server).0;
        at_kill > 0
    });
    agent.kill();
    let at_kill = server_bottles(&server).0;
    assert!(
        at_kill > 0 && at_kill < 10_000,
        "the kill did not land during the drain ({at_kill} delivered)"
    );

    let agent = agent.restart();
    wait_until(LONG, "every code at the server", || {
        server_bottles(&server).0 >= 10_000
    });
    wait_until(LONG, "the agent's queue to drain", || {
        agent_queue(&agent, "PENDING") == 0
    });
    assert_eq!(server_bottles(&server), (10_000, 10_000));
    assert_eq!(agent_queue(&agent, "SENT"), 10_000);
}

#[test]
fn pushed_config_survives_restart_service() {
    let server = ServerProcess::start(Backend::Sqlite);
    let api = Api::admin(&server);
    let mut agent = scanner_agent(&server.base_url, "edge-config", &[]);
    wait_online(&api, &agent);
    let id = agent.device_id.clone();

    let pushed = command(
        &api,
        &id,
        json!({"type": "push_config", "id": "cfg-1",
               "patch": {"batchSize": 3, "statusIntervalMs": 700, "name": "Line 7"}}),
        false,
    );
    assert_eq!(pushed["success"], true, "{pushed}");
    let data = &pushed["data"];
    assert_eq!(
        data["config"],
        json!({"batchSize": 3, "statusIntervalMs": 700, "name": "Line 7"})
    );
    assert_eq!(data["restartRequired"], json!(["name"]));
    let mut applied: Vec<String> = serde_json::from_value(data["applied"].clone()).unwrap();
    applied.sort();
    assert_eq!(applied, ["batchSize", "statusIntervalMs"]);

    // A bad patch is refused whole and changes nothing.
    let refused = command(
        &api,
        &id,
        json!({"type": "push_config", "id": "cfg-2",
               "patch": {"batchSize": 5, "statusIntervalMs": 5}}),
        false,
    );
    assert_eq!(refused["success"], false);
    let output = refused["output"].as_str().unwrap();
    assert!(output.contains("below the minimum"), "{output}");
    let unknown = command(
        &api,
        &id,
        json!({"type": "push_config", "id": "cfg-3", "patch": {"deviceId": "x"}}),
        false,
    );
    assert!(unknown["output"]
        .as_str()
        .unwrap()
        .contains("`deviceId` can only be set in the local configuration"));

    let restart = command(
        &api,
        &id,
        json!({"type": "restart_service", "id": "restart-1"}),
        false,
    );
    assert_eq!(restart["success"], true, "{restart}");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(20)),
        Some(75),
        "restart_service exits with 75; log:\n{}",
        agent.log()
    );

    let agent = agent.restart();
    wait_online(&api, &agent);
    let shown = command(
        &api,
        &id,
        json!({"type": "push_config", "id": "cfg-4", "patch": {}}),
        false,
    );
    assert_eq!(
        shown["data"]["config"],
        json!({"batchSize": 3, "statusIntervalMs": 700, "name": "Line 7"})
    );
    // The pushed batch size rules production after the restart: three bottles, one batch.
    agent.scan(&gs1_codes("CFG", 3));
    wait_until(LONG, "the batch at the server", || {
        server_count(&server, "aggregated_batches") == 1
    });
    assert_eq!(server_bottles(&server), (3, 3));
}

#[test]
fn shell_templates_keep_injection_attempts_inert() {
    let server = ServerProcess::start(Backend::Sqlite);
    let api = Api::admin(&server);
    let agent = AgentProcess::start(&server, "edge-shell");
    wait_online(&api, &agent);
    let marker_dir = TempDir::new("shell-marker");
    let marker = marker_dir.path().join("pwned");
    let m = marker.display();
    let mut n = 0;
    let mut exec = |template: &str, args: Value| {
        n += 1;
        command(
            &api,
            "edge-shell",
            json!({"type": "exec_shell", "id": format!("sh-{n}"), "template": template, "args": args}),
            false,
        )
    };

    let ok = exec("disk_usage", json!({"path": "/"}));
    assert_eq!(ok["success"], true, "{ok}");
    assert!(
        ok["output"].as_str().unwrap().contains("Filesystem"),
        "{ok}"
    );

    // Shell syntax in a path reaches df as one argument: df names it whole, and nothing ran.
    for evil in [
        format!("/tmp/nope; touch {m}"),
        format!("/tmp/$(touch {m})"),
        format!("/tmp/`touch {m}`"),
        format!("/tmp/x && touch {m} || rm -rf /"),
    ] {
        let r = exec("disk_usage", json!({ "path": evil }));
        assert_eq!(r["success"], false, "{r}");
        let output = r["output"].as_str().unwrap();
        assert!(
            output.contains(&format!("'{evil}': No such file or directory")),
            "the value was not one argument: {output}"
        );
        assert_eq!(r["data"]["argv"], json!(["df", "-h", "--", evil]));
        assert!(!marker.exists(), "a shell ran {evil}");
    }

    // Control characters, options and bad types are refused with the reason.
    let refused = [
        (
            "disk_usage",
            json!({"path": format!("/tmp\ntouch {m}")}),
            "control characters",
        ),
        (
            "disk_usage",
            json!({"path": "--version"}),
            "must not start with `-`",
        ),
        ("disk_usage", json!({"path": "tmp"}), "absolute path"),
        ("ping", json!({"host": "127.0.0.1; rm -rf /"}), "host name"),
        ("ping", json!({"host": "$(reboot)"}), "host name"),
        (
            "bash",
            json!({"cmd": "rm -rf /"}),
            "unknown template `bash`",
        ),
        (
            "disk_usage",
            json!({"path": "/", "extra": "x"}),
            "unknown parameter `extra`",
        ),
    ];
    for (template, args, reason) in refused {
        let r = exec(template, args.clone());
        assert_eq!(r["success"], false, "{template} {args}");
        let output = r["output"].as_str().unwrap();
        assert!(output.starts_with("refused: "), "{output}");
        assert!(output.contains(reason), "{template} {args}: {output}");
    }
    assert!(!marker.exists());
}

#[test]
fn production_toggles_os_commands_logs_and_queue_commands() {
    let server = ServerProcess::start(Backend::Sqlite);
    let api = Api::admin(&server);
    let markers = TempDir::new("os-markers");
    let reboot = markers.path().join("rebooted");
    let shutdown = markers.path().join("powered-off");
    let agent = AgentProcess::start_with(
        &server.base_url,
        "edge-ops",
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
    wait_online(&api, &agent);
    let id = "edge-ops";

    let r = command(&api, id, json!({"type": "reboot_os", "id": "rb-1"}), true);
    assert_eq!(r["success"], true, "{r}");
    assert!(
        reboot.is_file(),
        "reboot_os did not run the configured command"
    );
    let r = command(&api, id, json!({"type": "shutdown_os", "id": "sd-1"}), true);
    assert_eq!(r["success"], true, "{r}");
    assert!(shutdown.is_file());

    let logs = command(
        &api,
        id,
        json!({"type": "pull_logs", "id": "logs-1", "lines": 5}),
        false,
    );
    assert_eq!(logs["success"], true, "{logs}");
    assert_eq!(logs["output"], "Sent 5 log lines");
    assert_eq!(logs["data"]["lines"], 5);
    // The lines went out as log_line events, which the server keeps.
    wait_until(
        Duration::from_secs(20),
        "the pulled lines at the server",
        || {
            api.get(&format!("/api/v1/devices/{id}/logs")).data()["total"]
                .as_i64()
                .unwrap_or(0)
                >= 5
        },
    );

    // Disabled: scans are refused and nothing is queued; the flag survives a restart.
    let r = command(
        &api,
        id,
        json!({"type": "disable_device", "id": "off-1", "reason": "line maintenance"}),
        true,
    );
    assert_eq!(r["output"], "Production disabled: line maintenance");
    wait_status(&api, &agent, "DISABLED");
    let agent = agent.restart();
    wait_until(Duration::from_secs(60), "the agent to reconnect", || {
        api.get("/api/v1/devices/connected")
            .body
            .to_string()
            .contains(id)
    });
    wait_status(&api, &agent, "DISABLED");
    agent.scan(&gs1_codes("OFF", 5));
    std::thread::sleep(Duration::from_millis(500));
    let fs = command(&api, id, json!({"type": "force_sync", "id": "fs-1"}), false);
    assert_eq!(fs["output"], "Force-sync completed. Sent: 0, Pending: 0");
    assert_eq!(agent_queue_total(&agent), 0);
    assert!(agent
        .log()
        .contains("5 scan(s) refused: production is disabled (line maintenance)"));

    let r = command(
        &api,
        id,
        json!({"type": "enable_device", "id": "on-1"}),
        false,
    );
    assert_eq!(r["output"], "Production enabled");
    wait_online(&api, &agent);
    agent.scan(&gs1_codes("ON", 5));
    wait_until(LONG, "the scans in the queue", || {
        agent_queue_total(&agent) == 5
    });
    let fs = command(&api, id, json!({"type": "force_sync", "id": "fs-2"}), false);
    assert_eq!(fs["success"], true, "{fs}");
    assert_eq!(fs["data"]["pending"], 0);
    assert_eq!(server_bottles(&server), (5, 5));

    let kept = command(&api, id, json!({"type": "clear_queue", "id": "cq-1"}), true);
    assert_eq!(kept["data"], json!({"deletedPending": 0, "deletedSent": 0}));
    let all = command(
        &api,
        id,
        json!({"type": "clear_queue", "id": "cq-2", "includeCompleted": true}),
        true,
    );
    assert_eq!(all["data"], json!({"deletedPending": 0, "deletedSent": 5}));
    assert_eq!(agent_queue_total(&agent), 0);
}

#[test]
fn direct_cloud_mode_posts_each_kind_to_its_cloud_route() {
    let server = ServerProcess::start(Backend::Sqlite);
    let api = Api::admin(&server);
    let sim = CloudSim::start();
    sim.require_token("cloud-secret");
    sim.fail_next(1);
    let cloud_url = sim.url.clone();
    let agent = scanner_agent(
        &server.base_url,
        "edge-cloud",
        &[
            "--connection-mode",
            "DIRECT_CLOUD",
            "--cloud-url",
            &cloud_url,
            "--cloud-token",
            "cloud-secret",
            "--batch-size",
            "2",
            "--pallet-size",
            "1",
        ],
    );
    wait_online(&api, &agent);
    agent.scan(&gs1_codes("CL", 2));
    wait_until(LONG, "the agent's queue to drain to the cloud", || {
        agent_queue_total(&agent) == 4 + 1 && agent_queue(&agent, "PENDING") == 0
    });
    let calls = sim.accepted();
    let paths: Vec<String> = calls
        .iter()
        .map(|c| format!("/companies/{}/{}", c.company, c.route))
        .collect();
    assert_eq!(
        paths,
        [
            "/companies/company-1/bottles",
            "/companies/company-1/batches",
            "/companies/company-1/batches/fixate",
            "/companies/company-1/pallets",
        ],
        "the first (failed) call was retried in order"
    );
    assert_eq!(
        sim.requests(),
        (5, 1),
        "one refused on purpose, then four accepted with the token"
    );
    let bottles = &calls[0].records;
    assert_eq!(bottles.len(), 2);
    assert_eq!(bottles[0]["kind"], "bottle");
    assert_eq!(bottles[0]["companyId"], "company-1");
    assert_eq!(bottles[0]["payload"]["serial"], "CL0");
    assert_eq!(calls[3].records[0]["payload"]["batchCount"], 1);
    // Nothing went to the factory server in this mode.
    assert_eq!(server_bottles(&server).0, 0);
}
