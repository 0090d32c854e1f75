//! Benchmark: records/s that `POST /api/v1/sync` ingests on SQLite and PostgreSQL with batches
//! of 1, 100 and 1,000 records, and the rate the cloud sync drains them to a (simulated) OKTO
//! cloud. Prints figures; asserts only that every record was taken and delivered once.
//! Run with `bash scripts/bench-sync.sh`. `--table` (for `scripts/bench.sh`) sends only batches
//! of 1,000 (50,000 records, 10,000 with `--quick`), skips the drain and prints `ROW` lines.

use std::time::{Duration, Instant};

use integration_tests::cloud_sim::CloudSim;
use integration_tests::{Api, Backend, ServerProcess, TempDir, TestDb};
use serde_json::json;

/// Records sent with each batch size: enough to take a few seconds each.
const PLAN: [(usize, usize); 3] = [(1, 2_000), (100, 20_000), (1000, 50_000)];
/// Devices posting at once.
const CLIENTS: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let table = args.iter().any(|a| a == "--table");
    let plan: &[(usize, usize)] = match (table, args.iter().any(|a| a == "--quick")) {
        (false, _) => &PLAN,
        (true, false) => &[(1000, 50_000)],
        (true, true) => &[(1000, 10_000)],
    };
    for backend in [Backend::Sqlite, Backend::Postgres] {
        run(backend, plan, !table);
    }
}

fn run(backend: Backend, plan: &[(usize, usize)], drain: bool) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("bench-sync"),
        &["--log-level", "warn"],
    );
    let api = Api::admin(&server);
    let mut total = 0usize;
    for &(batch, records) in plan {
        let per_client = records / CLIENTS;
        let start = Instant::now();
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let token = api.enroll(&format!("bench-{batch}-{c}"));
                let base = server.base_url.clone();
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(120))
                        .build()
                        .expect("client");
                    let mut sent = 0;
                    while sent < per_client {
                        let n = batch.min(per_client - sent);
                        let body: Vec<_> = (0..n)
                            .map(|i| {
                                json!({"id": format!("{batch:04}-{c}-{:09}", sent + i), "kind": "bottle", "companyId": "company-1",
                                       "payload": {"code": format!("0104006381333931{:08}", sent + i)}, "createdAt": "2026-11-25T10:00:00Z"})
                            })
                            .collect();
                        let reply: serde_json::Value = client
                            .post(format!("{base}/api/v1/sync"))
                            .bearer_auth(&token)
                            .json(&json!({"records": body}))
                            .send()
                            .expect("sync")
                            .json()
                            .expect("sync body");
                        assert_eq!(reply["data"]["accepted"], n, "{reply}");
                        sent += n;
                    }
                    sent
                })
            })
            .collect();
        let sent: usize = threads.into_iter().map(|t| t.join().expect("client")).sum();
        let took = start.elapsed();
        total += sent;
        println!(
            "[{backend:?}] /api/v1/sync, batches of {batch:>4}, {CLIENTS} devices: {sent} records in {took:.2?} = {:.0} records/s",
            sent as f64 / took.as_secs_f64()
        );
        if batch == 1000 {
            let tag = if backend == Backend::Postgres {
                "pg"
            } else {
                "sqlite"
            };
            println!(
                "ROW {tag} sync {:.0} records/s",
                sent as f64 / took.as_secs_f64()
            );
        }
    }
    if !drain {
        return;
    }

    // Drain: point the server at the cloud only now, so the whole backlog is measured.
    let sim = CloudSim::start();
    let start = Instant::now();
    let put = api.call(
        "PUT",
        "/api/v1/sync/cloud",
        Some(&json!({"url": sim.url, "token": "bench"})),
        &[],
    );
    assert_eq!(put.status, 200, "{}", put.body);
    let deadline = start + Duration::from_secs(600);
    while sim.accepted_counts().len() < total {
        assert!(Instant::now() < deadline, "drain did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    let counts = sim.accepted_counts();
    assert!(
        counts.values().all(|n| *n == 1),
        "a record reached the cloud twice"
    );
    let (requests, _) = sim.requests();
    println!(
        "[{backend:?}] cloud drain: {total} records in {took:.2?} = {:.0} records/s ({requests} requests)",
        total as f64 / took.as_secs_f64()
    );
}
