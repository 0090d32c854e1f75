//! Factory sync and the OKTO cloud: codes from an agent going through the factory and from an
//! agent in DIRECT_CLOUD mode all reach the (simulated) cloud exactly once, through random
//! failures and an outage; dead letters are listed and requeued; the cloud token changes
//! without a restart.

use std::time::Duration;

use integration_tests::cloud_sim::CloudSim;
use integration_tests::*;
use serde_json::json;

on_both_backends!(
    codes_reach_the_cloud_exactly_once_through_failures_and_an_outage,
    dead_letters_and_token_changes_without_a_restart,
);

const TOKEN: &str = "cloud-token-1";

fn scanner(server: &ServerProcess, id: &str, args: &[&str]) -> AgentProcess {
    AgentProcess::start_with(
        &server.base_url,
        id,
        AgentOptions {
            args: args.iter().map(|a| a.to_string()).collect(),
            scanner: true,
            ..AgentOptions::default()
        },
    )
}

fn codes_reach_the_cloud_exactly_once_through_failures_and_an_outage(backend: Backend) {
    let sim = CloudSim::start();
    sim.require_token(TOKEN);
    sim.set_fail_rate(0.3);
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &[
            "--cloud-url",
            &sim.url,
            "--cloud-token",
            TOKEN,
            "--cloud-retry-max-secs",
            "4",
            "--cloud-batch-size",
            "50",
        ],
    );
    let api = Api::admin(&server);
    let via_factory = scanner(&server, "edge-factory", &[]);
    let direct = scanner(
        &server,
        "edge-direct",
        &[
            "--connection-mode",
            "DIRECT_CLOUD",
            "--cloud-url",
            &sim.url,
            "--cloud-token",
            TOKEN,
        ],
    );
    for id in ["edge-factory", "edge-direct"] {
        wait_until(Duration::from_secs(60), "agents online", || {
            api.device_status(id).as_deref() == Some("ONLINE")
        });
    }
    let a = gs1_codes("7", 300);
    let b = gs1_codes("8", 300);
    via_factory.scan(&a[..150]);
    direct.scan(&b[..150]);
    std::thread::sleep(Duration::from_secs(2));
    // The cloud goes down for a while in the middle.
    sim.set_down(true);
    via_factory.scan(&a[150..]);
    direct.scan(&b[150..]);
    std::thread::sleep(Duration::from_secs(4));
    sim.set_down(false);
    // Then it cuts connections without answering for a moment.
    sim.set_dropping(true);
    std::thread::sleep(Duration::from_secs(2));
    sim.set_dropping(false);

    let bottles = |sim: &CloudSim| -> usize {
        sim.accepted()
            .iter()
            .filter(|x| x.route == "bottles")
            .map(|x| x.ids.len())
            .sum()
    };
    // Both paths back off while the cloud fails (the agent up to 30 s a wait), so this can take
    // a while; the deadline is generous so the test fails only when a record is truly stuck.
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(240);
    let from = |sim: &CloudSim, prefix: &str| -> usize {
        let tag = format!("21{prefix}");
        sim.accepted()
            .iter()
            .flat_map(|x| x.codes.clone())
            .filter(|c| c.contains(&tag))
            .count()
    };
    let (mut factory_done, mut direct_done) = (None, None);
    while bottles(&sim) < 600 {
        if factory_done.is_none() && from(&sim, "7") >= 300 {
            factory_done = Some(started.elapsed());
        }
        if direct_done.is_none() && from(&sim, "8") >= 300 {
            direct_done = Some(started.elapsed());
        }
        if std::time::Instant::now() > deadline {
            let status = api.get("/api/v1/sync/status");
            let tail = |log: String| log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
            panic!(
                "only {} of 600 bottles reached the cloud; factory sync status {}\nfactory agent log:\n{}\ndirect agent log:\n{}\nserver log:\n{}",
                bottles(&sim),
                status.body,
                tail(via_factory.log()),
                tail(direct.log()),
                tail(server.log()),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "after the outage: via the factory complete at {factory_done:?}, direct at {direct_done:?}, all at {:?}",
        started.elapsed()
    );
    // Let any straggling duplicate show itself.
    std::thread::sleep(Duration::from_secs(2));
    let counts = sim.accepted_counts();
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "records accepted more than once: {twice:?}"
    );
    assert_eq!(bottles(&sim), 600, "every code exactly once");
    let (requests, refused) = sim.requests();
    eprintln!("cloud saw {requests} requests, refused {refused} on purpose; {} records accepted once each", counts.len());
    assert!(refused > 0, "the failures must have happened");
    assert!(sim.accepted().iter().all(|x| x.company == "company-1"));

    // The factory's queue is drained and says so.
    wait_until(Duration::from_secs(30), "the factory queue drained", || {
        let s = api.get("/api/v1/sync/status");
        s.data()["pending"] == 0
    });
    let status = api.get("/api/v1/sync/status");
    let s = status.data();
    assert_eq!(s["cloudConfigured"], true);
    assert_eq!(s["dead"], 0);
    assert!(s["sent"].as_i64().unwrap() >= 300, "{s}");
    assert!(
        s["companies"]["company-1"]["lastSuccess"].is_string(),
        "{s}"
    );
    assert!(
        s["companies"]["company-1"]["lastError"].is_string(),
        "the failures are reported: {s}"
    );
}

fn dead_letters_and_token_changes_without_a_restart(backend: Backend) {
    let sim = CloudSim::start();
    sim.require_token("new-token");
    let dir = TempDir::new("factory-data");
    let token_file = dir.path().join("cloud-token");
    std::fs::write(&token_file, "old-token\n").unwrap();
    let token_path = token_file.to_str().unwrap().to_owned();
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        dir,
        &[
            "--cloud-url",
            &sim.url,
            "--cloud-token-file",
            &token_path,
            "--cloud-max-attempts",
            "2",
        ],
    );
    let api = Api::admin(&server);
    let device = Api::new(&server).with_token(&api.enroll("edge-sync"));
    let record = |i: u32| {
        json!({"id": format!("00000000-0000-4000-8000-{i:012}"), "kind": "bottle", "companyId": "company-1",
               "payload": {"code": format!("code-{i}")}, "createdAt": "2026-11-25T10:00:00Z"})
    };
    let r = device.post(
        "/api/v1/sync",
        &json!({"records": [record(1), record(2), record(3)]}),
    );
    assert_eq!(r.data()["accepted"], 3);

    // The old token is refused; after two attempts the records are dead letters.
    wait_until(Duration::from_secs(20), "three dead letters", || {
        api.get("/api/v1/sync/dead-letters").data()["total"] == 3
    });
    let dead = api.get("/api/v1/sync/dead-letters");
    assert_eq!(dead.data()["items"][0]["attempts"], 2);
    assert!(
        dead.data()["items"][0]["lastError"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{}",
        dead.body
    );
    let status = api.get("/api/v1/sync/status");
    assert_eq!(status.data()["dead"], 3);
    assert_eq!(status.data()["companies"]["company-1"]["dead"], 3);

    // A new token in the file, SIGHUP, requeue: delivered, once each.
    std::fs::write(&token_file, "new-token\n").unwrap();
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let requeued = api.post("/api/v1/sync/dead-letters/requeue", &json!({}));
    assert_eq!(requeued.data()["requeued"], 3);
    wait_until(
        Duration::from_secs(20),
        "the requeued records at the cloud",
        || sim.accepted_counts().len() == 3,
    );
    assert!(sim.accepted_counts().values().all(|n| *n == 1));
    assert!(sim
        .accepted()
        .iter()
        .all(|x| x.company == "company-1" && x.route == "bottles"));
    wait_until(Duration::from_secs(10), "nothing dead or pending", || {
        let s = api.get("/api/v1/sync/status");
        s.data()["dead"] == 0 && s.data()["pending"] == 0 && s.data()["sent"] == 3
    });

    // The same through the API: a third token, set by an admin, in force at once.
    sim.require_token("third-token");
    let put = api.call(
        "PUT",
        "/api/v1/sync/cloud",
        Some(&json!({"token": "third-token"})),
        &[],
    );
    assert_eq!(put.status, 200, "{}", put.body);
    assert!(
        !put.body.to_string().contains("third-token"),
        "the token is never echoed"
    );
    let r = device.post("/api/v1/sync", &json!({"records": [record(4)]}));
    assert_eq!(r.data()["accepted"], 1);
    wait_until(
        Duration::from_secs(20),
        "the fourth record at the cloud",
        || sim.accepted_counts().len() == 4,
    );
    let audit = api.get("/api/v1/audit?action=sync.");
    assert!(
        !audit.body.to_string().contains("third-token"),
        "the token is never audited"
    );
    assert_eq!(
        api.call(
            "PUT",
            "/api/v1/sync/cloud",
            Some(&json!({"url": "ftp://x"})),
            &[]
        )
        .status,
        400
    );
    // A partial requeue of ids that are not dead changes nothing.
    let none = api.post(
        "/api/v1/sync/dead-letters/requeue",
        &json!({"ids": ["nope"]}),
    );
    assert_eq!(none.data()["requeued"], 0);
}
