//! Benchmark: a firmware deployment to many simulated devices, in waves, with a download cap.
//! Prints how long the rollout took and how long a plain write (creating a device group) took
//! while it ran, against the same write on the idle server: the deployer's passes write every
//! second, and this shows what they cost the rest of the server. Asserts only that every device
//! ended ACTIVE. Run with `bash scripts/bench-deploy.sh [--devices=N] [--db=sqlite|postgres]`.
//!
//! The devices are tokio tasks holding real WebSockets to a real `factory-server` process. Each
//! answers `update_firmware` as an agent would (success, then a status frame on the new version
//! with a new run id) and every other command with success.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use integration_tests::{fleet, Backend, ServerProcess};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Writes probed on the idle server, and at most while the rollout runs.
const PROBES: usize = 40;
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("--devices="))
        .unwrap_or("1000")
        .parse()
        .expect("--devices=N");
    let backends: Vec<Backend> = match args.iter().find_map(|a| a.strip_prefix("--db=")) {
        Some("postgres") => vec![Backend::Postgres],
        Some("sqlite") => vec![Backend::Sqlite],
        _ => vec![Backend::Sqlite, Backend::Postgres],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    for backend in backends {
        // Started outside the runtime: the test database is made with a blocking client.
        let server = ServerProcess::start_with(
            integration_tests::TestDb::new(backend),
            integration_tests::TempDir::new("bench-deploy"),
            &["--log-level", "warn"],
        );
        runtime.block_on(run(n, backend, &server));
    }
}

async fn run(n: usize, backend: Backend, server: &ServerProcess) {
    let base = server.base_url.clone();
    let ws_url = server.ws_url("/ws/device");
    let client = reqwest::Client::new();
    let ids: Vec<String> = (0..n).map(|i| format!("fw-{i:05}")).collect();
    let tasks = fleet::connect(&base, &ws_url, &ids, device).await;
    let admin = fleet::admin_token(&client, &base).await;
    fleet::wait_connected(&client, &base, &admin, n).await;

    let release = upload(&client, &base, &admin).await;
    let idle = probe_writes(&client, &base, &admin, "idle", PROBES, None).await;

    let wave_percent = 10;
    let cap = 100;
    let created: Value = client
        .post(format!("{base}/api/v1/firmware/deployments"))
        .bearer_auth(&admin)
        .json(
            &json!({"releaseId": release, "deviceIds": ids, "wavePercent": wave_percent,
                      "maxConcurrentDownloads": cap, "soakSecs": 0}),
        )
        .send()
        .await
        .expect("deploy")
        .json()
        .await
        .expect("deploy body");
    let id = created["data"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("deployment refused: {created}"))
        .to_owned();
    let start = Instant::now();
    let during = probe_writes(&client, &base, &admin, "rollout", usize::MAX, Some(&id)).await;
    let took = start.elapsed();
    let done = deployment(&client, &base, &admin, &id).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["counts"]["ACTIVE"], n, "{}", done["counts"]);
    println!(
        "[{backend:?}] deployment to {n} devices, {wave_percent} % waves, at most {cap} downloading: COMPLETED in {took:.2?} ({:.0} devices/s)",
        n as f64 / took.as_secs_f64()
    );
    for (label, latencies) in [("idle", idle), ("during the rollout", during)] {
        println!(
            "[{backend:?}] create a device group, {label}: {} writes, p50 {:?} p99 {:?} max {:?}",
            latencies.len(),
            pct(&latencies, 0.5),
            pct(&latencies, 0.99),
            pct(&latencies, 1.0)
        );
    }
    for t in tasks {
        t.abort();
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Creates device groups one after another, `PROBE_INTERVAL` apart, until `count` were made or
/// the deployment `until` finished; answers the sorted latencies.
async fn probe_writes(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    label: &str,
    count: usize,
    until: Option<&str>,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    for i in 0..count {
        if let Some(id) = until {
            let d = deployment(client, base, token, id).await;
            if d["status"] != "RUNNING" {
                break;
            }
            assert!(Instant::now() < deadline, "the rollout did not finish: {d}");
        }
        let start = Instant::now();
        let status = client
            .post(format!("{base}/api/v1/device-groups"))
            .bearer_auth(token)
            .json(&json!({"name": format!("{label}-{i}")}))
            .send()
            .await
            .expect("create group")
            .status();
        latencies.push(start.elapsed());
        assert_eq!(status, 201, "group create");
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    latencies.sort();
    latencies
}

async fn deployment(client: &reqwest::Client, base: &str, token: &str, id: &str) -> Value {
    let reply: Value = client
        .get(format!("{base}/api/v1/firmware/deployments/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("deployment")
        .json()
        .await
        .expect("deployment body");
    reply["data"].clone()
}

/// Uploads a small release 2.0.0; answers its id.
async fn upload(client: &reqwest::Client, base: &str, token: &str) -> String {
    let reply: Value = client
        .post(format!(
            "{base}/api/v1/firmware/releases?version=2.0.0&project=edge&filename=edge.bin"
        ))
        .bearer_auth(token)
        .body(vec![7u8; 64 * 1024])
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("upload body");
    reply["data"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("upload refused: {reply}"))
        .to_owned()
}

/// One simulated device on version 1.0.0 that installs whatever `update_firmware` sends.
async fn device(id: String, socket: fleet::Socket) {
    let (mut tx, mut rx) = socket.split();
    let status = |version: &str, run: u32| {
        json!({"type": "status", "status": "ONLINE", "version": version, "bootId": "boot-1",
               "runId": format!("{id}-run-{run}"), "ts": chrono::Utc::now().to_rfc3339()})
        .to_string()
    };
    if tx.send(Message::Text(status("1.0.0", 0))).await.is_err() {
        return;
    }
    let mut runs = 0;
    while let Some(Ok(msg)) = rx.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if frame["type"] != "command" {
            continue;
        }
        let command = &frame["command"];
        let reply = json!({"type": "command_result", "commandId": command["id"], "success": true,
                           "output": "ok", "data": {"activating": true}});
        if tx.send(Message::Text(reply.to_string())).await.is_err() {
            break;
        }
        if command["type"] == "update_firmware" {
            runs += 1;
            let version = command["version"].as_str().unwrap_or("0.0.0");
            if tx.send(Message::Text(status(version, runs))).await.is_err() {
                break;
            }
        }
    }
}
