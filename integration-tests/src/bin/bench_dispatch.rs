//! Benchmark: bulk dispatch to 1,000 and 10,000 connected simulated devices, and the round
//! trip of single commands at a fixed rate. Prints figures; asserts only that every command
//! succeeded. Run with `bash scripts/bench-dispatch.sh` (release build, raised fd limit).
//!
//! The devices are tokio tasks holding real WebSockets to a real `factory-server` process;
//! each answers every command at once. On PostgreSQL it also prints how many database
//! transactions a command costs, from the server's own counts (exact under any load).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{fleet, Backend, ServerProcess};
use serde_json::{json, Value};

/// Single commands per second unless `--rate=N` says otherwise.
const SINGLE_RATE_PER_SEC: u64 = 50;
const SINGLE_DURATION: Duration = Duration::from_secs(10);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = args
        .iter()
        .find_map(|a| a.strip_prefix("--devices="))
        .unwrap_or("1000,10000")
        .split(',')
        .map(|s| s.parse().expect("--devices=N,M"))
        .collect();
    let backend = match args
        .iter()
        .find_map(|a| a.strip_prefix("--db="))
        .unwrap_or("sqlite")
    {
        "postgres" => Backend::Postgres,
        _ => Backend::Sqlite,
    };
    let rate: u64 = args
        .iter()
        .find_map(|a| a.strip_prefix("--rate="))
        .map(|r| r.parse().expect("--rate=N"))
        .unwrap_or(SINGLE_RATE_PER_SEC);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    for n in sizes {
        // The database is made and dropped outside the runtime: the PostgreSQL test database
        // is created with the blocking client, which runs a runtime of its own.
        let server = ServerProcess::start_with(
            integration_tests::TestDb::new(backend),
            integration_tests::TempDir::new("bench-data"),
            &["--log-level", "warn"],
        );
        runtime.block_on(run(n, rate, backend, &server));
    }
}

async fn run(n: usize, rate: u64, backend: Backend, server: &ServerProcess) {
    let base = server.base_url.clone();
    let ws_url = server.ws_url("/ws/device");
    let answered = Arc::new(AtomicU64::new(0));

    // Enroll and connect n devices.
    let start = Instant::now();
    let ids: Vec<String> = (0..n).map(|i| format!("sim-{i:05}")).collect();
    let client = reqwest::Client::new();
    let tasks = fleet::connect(&base, &ws_url, &ids, |_, socket| {
        fleet::answer_every_command(socket, Some(answered.clone()))
    })
    .await;
    let connect_time = start.elapsed();
    let admin_token = fleet::admin_token(&client, &base).await;
    fleet::wait_connected(&client, &base, &admin_token, n).await;
    println!("[{backend:?}] {n} devices enrolled and connected in {connect_time:?}");

    let db_url = server.db.url();
    let before_bulk = transactions(db_url.clone()).await;
    // Bulk dispatch to all of them.
    let body = json!({"deviceIds": ids, "command": {"type": "force_sync"}, "timeoutMs": 60000});
    let start = Instant::now();
    let reply: Value = client
        .post(format!("{base}/api/v1/devices/commands"))
        .bearer_auth(&admin_token)
        .json(&body)
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .expect("bulk dispatch")
        .json()
        .await
        .expect("bulk body");
    let bulk_time = start.elapsed();
    let map = reply["data"].as_object().expect("per-device map");
    let ok = map.values().filter(|a| a["status"] == "SUCCESS").count();
    println!(
        "[{backend:?}] bulk dispatch of force_sync to {n} connected devices: {bulk_time:?} wall, {ok}/{n} SUCCESS ({:.0} commands/s)",
        n as f64 / bulk_time.as_secs_f64()
    );
    assert_eq!(ok, n, "every device must answer");

    let before_single = transactions(db_url.clone()).await;
    if let (Some(a), Some(b)) = (before_bulk, before_single) {
        println!(
            "[{backend:?}] bulk dispatch: {:.2} database transactions per command",
            (b - a) as f64 / n as f64
        );
    }
    // Single commands at a fixed rate.
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let total = (SINGLE_DURATION.as_secs() * rate.max(1)) as usize;
    let mut ticker = tokio::time::interval(interval);
    let mut pending = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let (client, base, token) = (client.clone(), base.clone(), admin_token.clone());
        let device = ids[(i * 7919) % n].clone();
        pending.push(tokio::spawn(async move {
            let start = Instant::now();
            let reply: Value = client
                .post(format!("{base}/api/v1/devices/{device}/commands"))
                .bearer_auth(token)
                .json(&json!({"command": {"type": "force_sync"}}))
                .send()
                .await
                .expect("dispatch")
                .json()
                .await
                .expect("dispatch body");
            (start.elapsed(), reply["data"]["status"] == "SUCCESS")
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for p in pending {
        let (latency, ok) = p.await.expect("single dispatch");
        assert!(ok, "a single command failed");
        latencies.push(latency);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "[{backend:?}] single commands at {rate}/s for {SINGLE_DURATION:?} over {n} devices: p50 {:?} p99 {:?} max {:?}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    if let (Some(a), Some(b)) = (before_single, transactions(db_url).await) {
        println!(
            "[{backend:?}] single commands: {:.2} database transactions per command",
            (b - a) as f64 / total as f64
        );
    }
    println!(
        "[{backend:?}] commands answered by the simulated devices: {}",
        answered.load(Ordering::Relaxed)
    );
    for t in tasks {
        t.abort();
    }
}

/// Transactions the server's PostgreSQL database has ended so far (committed or rolled back),
/// from `pg_stat_database`; `None` on SQLite, which keeps no such count. A server process
/// reports its counts at most once a second, and an idle one within ten seconds, so this
/// waits that long first: the count is then exact whatever the machine's load.
async fn transactions(url: Option<String>) -> Option<i64> {
    let url = url?;
    tokio::time::sleep(Duration::from_secs(11)).await;
    // The blocking client runs a runtime of its own, so it gets a thread of its own.
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).ok()?;
        let row = client
            .query_one(
                "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
                 WHERE datname = current_database()",
                &[],
            )
            .ok()?;
        Some(row.get::<_, i64>(0))
    })
    .await
    .ok()
    .flatten()
}
