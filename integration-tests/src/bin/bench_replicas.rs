//! Benchmark (issue 17): the round trip of a command sent through the replica that holds its
//! device beside one sent through another replica (handed over by LISTEN/NOTIFY), at 100 and
//! 1,000 commands per second. Prints p50/p99; counts the commands that did not succeed rather
//! than stopping at the first. Run with `bash scripts/bench-replicas.sh`.
//!
//! Two `factory-server` processes share a fresh PostgreSQL database; the simulated devices
//! (tokio tasks on real WebSockets, answering every command at once) all connect to the second,
//! so a command through the first always crosses.
//!
//! `BENCH_LOG_LEVEL` sets the replicas' log filter (default `warn`); with
//! `server::actors::dispatcher=debug,server::actors::cluster=debug` each hand-over logs its
//! phases on both sides, and `BENCH_LOG_DIR` keeps both replicas' logs there.

use std::time::{Duration, Instant};

use integration_tests::replicas::Replica;
use integration_tests::{fleet, TempDir, TestDb};
use serde_json::json;

const DEVICES: usize = 200;
const DURATION: Duration = Duration::from_secs(5);

fn main() {
    let rates: Vec<u64> = std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix("--rates=").map(str::to_owned))
        .unwrap_or_else(|| "100,1000".into())
        .split(',')
        .map(|s| s.parse().expect("--rates=N,M"))
        .collect();
    let db = TestDb::postgres();
    let url = db.url().expect("PostgreSQL");
    let data = TempDir::new("bench-replicas");
    let level = std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into());
    let quiet = ["--log-level", level.as_str()];
    let sender = Replica::start(&url, data.path(), "bench-a", &quiet);
    let holder = Replica::start(&url, data.path(), "bench-b", &quiet);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(&sender, &holder, &rates));
    if let Ok(dir) = std::env::var("BENCH_LOG_DIR") {
        for r in [&sender, &holder] {
            let _ = std::fs::write(format!("{dir}/{}.log", r.id), r.log());
        }
    }
}

async fn run(sender: &Replica, holder: &Replica, rates: &[u64]) {
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("rep-{i:04}")).collect();
    let ws_url = format!(
        "{}/ws/device",
        holder.base_url.replacen("http://", "ws://", 1)
    );
    let tasks = fleet::connect(&holder.base_url, &ws_url, &ids, |_, socket| {
        fleet::answer_every_command(socket, None)
    })
    .await;
    let client = reqwest::Client::new();
    let token = fleet::admin_token(&client, &holder.base_url).await;
    fleet::wait_connected(&client, &holder.base_url, &token, DEVICES).await;
    println!("{DEVICES} devices connected to replica {}", holder.id);
    for &rate in rates {
        for (label, replica) in [("same-replica ", holder), ("cross-replica", sender)] {
            let (latencies, failed) =
                round_trips(&client, &replica.base_url, &token, &ids, rate).await;
            let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
            println!(
                "{label} at {rate:>4}/s for {DURATION:?}: p50 {:>9.2?} p99 {:>9.2?} max {:>9.2?} ({} commands, {failed} not SUCCESS)",
                pct(0.5),
                pct(0.99),
                pct(1.0),
                latencies.len()
            );
        }
    }
    for t in tasks {
        t.abort();
    }
}

/// Sends single commands through `base` at `rate` per second for `DURATION`; answers each
/// one's round trip (REST request to stored outcome) and how many did not succeed.
async fn round_trips(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    ids: &[String],
    rate: u64,
) -> (Vec<Duration>, usize) {
    let total = (DURATION.as_secs() * rate) as usize;
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut pending = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let (client, base, token) = (client.clone(), base.to_owned(), token.to_owned());
        let device = ids[(i * 7919) % ids.len()].clone();
        pending.push(tokio::spawn(async move {
            let start = Instant::now();
            let url = format!("{base}/api/v1/devices/{device}/commands");
            let body = json!({"command": {"type": "force_sync"}, "timeoutMs": 30000});
            let ok =
                fleet::command_succeeded(&client, &url, &token, &body, Duration::from_secs(60))
                    .await;
            (start.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failed = 0;
    for p in pending {
        let (latency, ok) = p.await.expect("a round trip");
        if !ok {
            failed += 1;
        }
        latencies.push(latency);
    }
    latencies.sort();
    (latencies, failed)
}
