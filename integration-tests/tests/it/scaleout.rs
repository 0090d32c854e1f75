//! Three `factory-server` replicas on one PostgreSQL behind a round-robin TCP balancer, with
//! real agents spread over them (issue 17): a command, a bulk dispatch and a group deployment
//! sent through one replica reach devices held by the others; a dashboard on one replica sees
//! every device's events; after `kill -9` of the replica holding the most agents, they come back
//! on the others, no command is left PENDING or SENT, and every cloud record reaches the cloud
//! exactly once. A second server on one SQLite file is refused at start.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration_tests::cloud_sim::CloudSim;
use integration_tests::replicas::{Balancer, Replica};
use integration_tests::*;
use serde_json::{json, Value};

const TOKEN: &str = "scaleout-cloud-token";
const WAIT: Duration = Duration::from_secs(90);
const AGENTS: usize = 6;

/// Which replica holds each device, as the presence table says.
fn holders(url: &str) -> BTreeMap<String, String> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    client
        .query(
            "SELECT device_id, replica_id FROM device_presence WHERE expires_at > now() AT TIME ZONE 'UTC'",
            &[],
        )
        .expect("presence rows")
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn count(url: &str, sql: &str) -> i64 {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    client.query_one(sql, &[]).expect("count").get(0)
}

/// Uploads `body` as release 0.2.0 of project `edge` to the replica at `base`.
fn upload(base: &str, token: &str, body: Vec<u8>) -> Value {
    let resp = reqwest::blocking::Client::new()
        .post(format!(
            "{base}/api/v1/firmware/releases?version=0.2.0&filename=edge-service.bin&project=edge"
        ))
        .bearer_auth(token)
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .expect("upload request");
    assert_eq!(resp.status().as_u16(), 201);
    let answer: Value = resp.json().expect("upload answer");
    answer["data"].clone()
}

fn ws_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.replacen("http://", "ws://", 1))
}

#[test]
fn three_replicas_serve_one_fleet_and_survive_a_kill() {
    let db = TestDb::postgres();
    let url = db.url().expect("a PostgreSQL database");
    let data = TempDir::new("replicas-data");
    let sim = CloudSim::start();
    sim.require_token(TOKEN);
    let flags = [
        "--cloud-url",
        &sim.url,
        "--cloud-token",
        TOKEN,
        "--presence-lease-secs",
        "3",
    ];
    // The first replica creates the admin and leads; the others join it.
    let mut replicas = vec![Replica::start(&url, data.path(), "r1", &flags)];
    wait_until(Duration::from_secs(20), "r1 leading", || {
        replicas[0].log().contains("leader=true")
    });
    replicas.push(Replica::start(&url, data.path(), "r2", &flags));
    replicas.push(Replica::start(&url, data.path(), "r3", &flags));
    let balancer = Balancer::start(replicas.iter().map(|r| r.addr).collect());
    let apis: Vec<Api> = replicas
        .iter()
        .map(|r| Api::admin_at(&r.base_url))
        .collect();

    // A dashboard on r1 only, from before any agent connects.
    let mut dash = ws_connect(
        &ws_url(&replicas[0].base_url, "/ws/dashboard"),
        apis[0].token(),
    )
    .expect("dashboard");
    assert_eq!(ws_next_json(&mut dash).expect("hello")["type"], "hello");
    ws_send_json(
        &mut dash,
        &json!({"type": "subscribe", "eventTypes": ["command_result", "status"]}),
    );
    let watcher = std::thread::spawn(move || {
        let mut frames = Vec::new();
        while let Some(frame) = ws_next_json(&mut dash) {
            frames.push(frame);
            if frames.len() > 5000 {
                break;
            }
        }
        frames
    });

    let options = AgentOptions {
        scanner: true,
        launch_installed: true,
        ..AgentOptions::default()
    };
    let ids: Vec<String> = (0..AGENTS).map(|i| format!("so-{i}")).collect();
    let mut agents: Vec<AgentProcess> = ids
        .iter()
        .map(|id| AgentProcess::start_with(&balancer.url(), id, options.clone()))
        .collect();
    wait_until(WAIT, "every agent ONLINE and held", || {
        holders(&url).len() == AGENTS
            && ids
                .iter()
                .all(|id| apis[0].device_status(id).as_deref() == Some("ONLINE"))
    });
    let held = holders(&url);
    let spread: BTreeSet<&String> = held.values().collect();
    assert!(spread.len() >= 2, "agents all on one replica: {held:?}");
    let index_of = |replica: &str| replicas.iter().position(|r| r.id == replica).unwrap();

    // One command per device, each sent through a replica that does not hold it.
    for id in &ids {
        let other = (index_of(&held[id]) + 1) % replicas.len();
        let reply = apis[other].post(
            &format!("/api/v1/devices/{id}/commands"),
            &json!({"command": {"type": "force_sync", "id": format!("cross-{id}")}, "timeoutMs": 20000}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.data()["status"], "SUCCESS", "{id}: {}", reply.body);
    }

    // A bulk dispatch through r2 to the whole fleet.
    let reply = apis[1].post(
        "/api/v1/devices/commands",
        &json!({"deviceIds": ids, "command": {"type": "force_sync"}, "timeoutMs": 20000}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    for id in &ids {
        assert_eq!(
            reply.data()[id]["status"],
            "SUCCESS",
            "{id}: {}",
            reply.body
        );
    }

    // A group deployment created through r2, its release uploaded through r3: the leader's
    // passes send update_firmware to every replica's devices; each agent installs, exits 75,
    // is restarted and comes back (through the balancer, perhaps elsewhere) on 0.2.0.
    let group = apis[1].post("/api/v1/device-groups", &json!({"name": "all-lines"}));
    let group_id = group.data()["id"].as_str().unwrap().to_owned();
    apis[1].post(
        &format!("/api/v1/device-groups/{group_id}/members"),
        &json!({"deviceIds": ids}),
    );
    let body = std::fs::read(binary("edge-agent")).unwrap();
    let release = upload(&replicas[2].base_url, apis[2].token().unwrap(), body);
    let created = apis[1].post(
        "/api/v1/firmware/deployments",
        &json!({"releaseId": release["id"], "groupId": group_id, "wavePercent": 100,
                "soakSecs": 1, "failureThresholdPercent": 0}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let deployment_id = created.data()["id"].as_str().unwrap().to_owned();
    let mut last = Value::Null;
    wait_until(Duration::from_secs(180), "the deployment COMPLETED", || {
        for agent in agents.iter_mut() {
            agent.respawn_if_asked();
        }
        last = deployment(&apis[0], &deployment_id);
        last["status"] == "COMPLETED"
    });
    assert_eq!(last["counts"]["ACTIVE"], AGENTS, "{last}");
    wait_until(WAIT, "every agent back ONLINE on 0.2.0", || {
        ids.iter().all(|id| {
            let d = apis[0].get(&format!("/api/v1/devices/{id}"));
            d.data()["status"] == "ONLINE" && d.data()["version"] == "0.2.0"
        })
    });

    // Records of every agent reach the cloud through the leader's drain.
    for (i, agent) in agents.iter().enumerate() {
        agent.scan(&gs1_codes(&format!("{i}1"), 20));
    }
    let accepted = |sim: &CloudSim| -> usize { sim.accepted_counts().len() };
    wait_until(WAIT, "the first records in the cloud", || {
        accepted(&sim) >= AGENTS * 20
    });

    // Commands in flight on the replica about to die: downloads from a socket that never
    // answers, one sent there directly and one handed over from another replica.
    let held = holders(&url);
    let mut load: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (device, replica) in &held {
        load.entry(replica).or_default().push(device);
    }
    let (victim_id, victims) = load
        .iter()
        .max_by_key(|(_, devices)| devices.len())
        .map(|(r, d)| ((*r).clone(), d.clone()))
        .unwrap();
    let victim = index_of(&victim_id);
    let other = (victim + 1) % replicas.len();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/never", silent.local_addr().unwrap());
    let stuck = |api: &Api, device: &str, id: &str| {
        let reply = api.post(
            &format!("/api/v1/devices/{device}/commands"),
            &json!({"command": {"type": "update_firmware", "id": id, "version": "9.9.9",
                    "url": silent_url, "sha256": "00".repeat(32), "size": 1},
                    "timeoutMs": 8000, "confirm": true, "wait": false}),
        );
        assert_eq!(reply.status, 202, "{}", reply.body);
    };
    stuck(&apis[victim], victims[0], "inflight-local");
    stuck(&apis[other], victims[0], "inflight-handed");
    wait_until(Duration::from_secs(10), "both in flight SENT", || {
        count(
            &url,
            "SELECT count(*) FROM commands WHERE id IN ('inflight-local', 'inflight-handed') AND status = 'SENT'",
        ) == 2
    });
    let was_leader = replicas[victim].log().contains("leader=true");
    replicas[victim].kill();
    let survivors: Vec<usize> = (0..replicas.len()).filter(|i| *i != victim).collect();

    // Its agents come back on the others.
    wait_until(WAIT, "the victim's agents held by the survivors", || {
        let now = holders(&url);
        now.len() == AGENTS && now.values().all(|r| *r != victim_id)
    });
    for id in &ids {
        wait_until(WAIT, "ONLINE again", || {
            apis[survivors[0]].device_status(id).as_deref() == Some("ONLINE")
        });
    }
    // A command through a survivor reaches a device that moved.
    let moved = victims[0].as_str();
    let now_held = holders(&url);
    let not_holder = survivors
        .iter()
        .copied()
        .find(|i| replicas[*i].id != now_held[moved])
        .unwrap();
    let reply = apis[not_holder].post(
        &format!("/api/v1/devices/{moved}/commands"),
        &json!({"command": {"type": "force_sync", "id": "after-kill"}, "timeoutMs": 20000}),
    );
    assert_eq!(reply.data()["status"], "SUCCESS", "{}", reply.body);

    // No command is left PENDING or SENT; the two in flight ended TIMEOUT or FAILED.
    wait_until(Duration::from_secs(40), "nothing PENDING or SENT", || {
        count(
            &url,
            "SELECT count(*) FROM commands WHERE status IN ('PENDING', 'SENT')",
        ) == 0
    });
    for id in ["inflight-local", "inflight-handed"] {
        let row = apis[survivors[0]].get(&format!("/api/v1/devices/{}/commands/{id}", victims[0]));
        let status = row.data()["status"].as_str().unwrap_or_default().to_owned();
        assert!(
            status == "TIMEOUT" || status == "FAILED",
            "{id} ended {status}: {}",
            row.body
        );
    }

    // A leader among the survivors drains what is scanned after the kill; every record is
    // in the cloud exactly once.
    if was_leader {
        wait_until(Duration::from_secs(15), "a survivor leading", || {
            survivors
                .iter()
                .any(|i| replicas[*i].log().contains("leader=true"))
        });
    }
    for (i, agent) in agents.iter().enumerate() {
        agent.scan(&gs1_codes(&format!("{i}2"), 20));
    }
    wait_until(WAIT, "every record in the cloud", || {
        accepted(&sim) >= AGENTS * 40
    });
    std::thread::sleep(Duration::from_secs(2));
    let twice: Vec<(String, u32)> = sim
        .accepted_counts()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "records sent twice: {twice:?}");
    assert_eq!(accepted(&sim), AGENTS * 40);

    // The dashboard on r1 saw every device's command results, wherever the device was.
    replicas[0].kill();
    let frames = watcher.join().unwrap();
    for id in &ids {
        assert!(
            frames
                .iter()
                .any(|f| f["deviceId"] == id.as_str() && f["type"] == "command_result"),
            "the dashboard on r1 saw no command_result of {id}"
        );
    }
    drop(balancer);
}

/// A second server on the SQLite file of a running one is refused at start, with one line
/// and exit 2; the first keeps serving.
#[test]
fn a_second_server_on_one_sqlite_file_is_refused() {
    let first = ServerProcess::start(Backend::Sqlite);
    let db_file = first.data_dir.path().join("factory.db");
    let (code, stderr) = refused_start(&["--database-url", &db_file.display().to_string()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let refusals: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("factory-server:"))
        .collect();
    assert_eq!(refusals.len(), 1, "{stderr}");
    assert!(
        stderr.contains("another factory-server is using the SQLite database"),
        "{stderr}"
    );
    assert_eq!(Api::admin(&first).get("/api/v1/devices").status, 200);
}
