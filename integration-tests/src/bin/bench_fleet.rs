//! Benchmark: the fleet scenarios of issue 19 against a release `factory-server` on one
//! database, with `integration_tests::sim` devices over real WebSockets. Prints figures, and
//! `ROW <key> <value>` lines that `scripts/bench.sh` gathers into one markdown table.
//!
//! `bench_fleet --db=sqlite|postgres|bare [--quick] [--scenarios=sessions,commands,telemetry]`
//!
//! - `sessions`: idle sessions in steps (1k, 10k, then until the server refuses one: the fd
//!   limit); the server's RSS per session at each step over its RSS before the first.
//!   `--db=bare` runs it against `bare-ws-server` instead, the baseline.
//! - `commands`: 10,000 devices (2,000 quick); bulk dispatch to 1,000 and to all; then single
//!   commands at 100, 1,000 and 5,000/s, open loop (each latency counts from the moment the
//!   command was due, so queueing in the client counts too), at most `IN_FLIGHT` at once.
//! - `telemetry`: 10 dashboards subscribed to scans, then 1,000 devices (200 quick) sending
//!   50,000 scans/s in batches of 50; events stored (rows counted in the database) and
//!   received by the dashboards in a measured window.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::sim::{self, percentile_ms, rss_kib, Counters, Dashboards, Fleet, Options};
use integration_tests::{fleet, Backend, ServerProcess, TempDir, TestDb};
use serde_json::{json, Value};

/// Most single commands in flight at once: each is an HTTP connection on both sides, and
/// the fd limit is shared with 10,000 device sockets.
const IN_FLIGHT: usize = 1000;
/// More sessions than any fd limit here allows: the last step stops at the first refusal.
const PAST_THE_LIMIT: usize = 40_000;

struct Plan {
    quick: bool,
    scenarios: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| args.iter().find_map(|a| a.strip_prefix(name));
    let db = arg("--db=").unwrap_or("sqlite").to_owned();
    let plan = Plan {
        quick: args.iter().any(|a| a == "--quick"),
        scenarios: arg("--scenarios=")
            .unwrap_or("sessions,commands,telemetry")
            .split(',')
            .map(str::to_owned)
            .collect(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    if db == "bare" {
        runtime.block_on(bare_sessions(&plan));
    } else {
        let backend = match db.as_str() {
            "postgres" => Backend::Postgres,
            _ => Backend::Sqlite,
        };
        let tag = if backend == Backend::Postgres {
            "pg"
        } else {
            "sqlite"
        };
        let wants = |s: &str| plan.scenarios.iter().any(|x| x == s);
        if wants("sessions") {
            let server = start(backend);
            runtime.block_on(sessions(&plan, &server, tag));
        }
        if wants("commands") || wants("telemetry") {
            let server = start(backend);
            if wants("commands") {
                runtime.block_on(commands(&plan, &server, tag));
            }
            if wants("telemetry") {
                runtime.block_on(telemetry(&plan, &server, tag));
            }
        }
    }
    println!("[{db}] done in {:.0} s", sim::secs(started));
}

/// A release server on a fresh database. The database is made outside the runtime: the
/// PostgreSQL one is created with the blocking client, which runs a runtime of its own.
fn start(backend: Backend) -> ServerProcess {
    ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("bench-fleet"),
        &["--log-level", "warn"],
    )
}

fn row(tag: &str, key: &str, value: String) {
    println!("ROW {tag} {key} {value}");
}

/// Waits for the server's memory to settle after a step: what the connects queued (presence
/// writes, registry messages) is worked off.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// The sessions the server's registry knows, through an already open admin connection.
async fn registered(client: &reqwest::Client, base: &str, token: &str) -> Option<u64> {
    let reply: Value = client
        .get(format!("{base}/api/v1/devices/connected?limit=1"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    reply["data"]["total"].as_u64()
}

/// The steps of the sessions scenario: sessions held after each.
fn steps(plan: &Plan) -> Vec<usize> {
    if plan.quick {
        vec![1_000, 3_000]
    } else {
        vec![1_000, 10_000, PAST_THE_LIMIT]
    }
}

fn step_key(step: usize) -> &'static str {
    match step {
        1_000 => "sessions_1k",
        PAST_THE_LIMIT => "sessions_limit",
        _ => "sessions_10k",
    }
}

async fn sessions(plan: &Plan, server: &ServerProcess, tag: &str) {
    let client = reqwest::Client::new();
    let token = fleet::admin_token(&client, &server.base_url).await;
    let pid = server.pid();
    settle().await;
    let base_kib = rss_kib(pid);
    println!("[{tag}] server RSS before any session: {base_kib} KiB");
    let mut fleets = Vec::new();
    let mut held = 0usize;
    let mut first_step = None;
    for step in steps(plan) {
        let mut options = Options::idle(&server.base_url, step.saturating_sub(held));
        options.first = held;
        options.stop_on_failure = step == PAST_THE_LIMIT;
        let start = Instant::now();
        let fleet = Fleet::start(options).await;
        let c = fleet.counters.clone();
        held += Counters::get(&c.connected) as usize;
        println!(
            "[{tag}] {held} sessions open ({} connected in {:.1} s, {} enrollment and {} connect failures)",
            Counters::get(&c.connected),
            sim::secs(start),
            Counters::get(&c.enroll_failures),
            Counters::get(&c.connect_failures)
        );
        fleets.push(fleet);
        settle().await;
        let kib = rss_kib(pid);
        let per = (kib.saturating_sub(base_kib)) as f64 / held as f64;
        let dropped: u64 = fleets
            .iter()
            .map(|f| Counters::get(&f.counters.dropped))
            .sum();
        let known = registered(&client, &server.base_url, &token).await;
        println!(
            "[{tag}] {held} sessions: server RSS {kib} KiB, {per:.1} KiB per session; registry {known:?}; {dropped} dropped"
        );
        let first = *first_step.get_or_insert((held, kib));
        if step == PAST_THE_LIMIT {
            let slope = (kib.saturating_sub(first.1)) as f64 / (held - first.0).max(1) as f64;
            let health = if dropped == 0 {
                "healthy"
            } else {
                "sessions dropped"
            };
            row(
                tag,
                step_key(step),
                format!(
                    "{held} held, {health}; {per:.1} KiB each ({slope:.1} KiB marginal from {}k)",
                    first.0 / 1000
                ),
            );
        } else {
            row(tag, step_key(step), format!("{per:.1} KiB"));
        }
    }
    for fleet in fleets {
        fleet.stop().await;
    }
}

/// A `bare-ws-server` child, and the URL it listens on.
fn start_bare() -> (Child, String) {
    let mut child = Command::new(integration_tests::binary("bare-ws-server"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn bare-ws-server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("bare-ws-server prints its address");
    let url = line
        .trim()
        .strip_prefix("bare-ws-server listening on ")
        .expect("address line")
        .to_owned();
    (child, url)
}

async fn bare_sessions(plan: &Plan) {
    let (mut child, base) = start_bare();
    let pid = child.id();
    settle().await;
    let base_kib = rss_kib(pid);
    let mut fleets = Vec::new();
    let mut held = 0usize;
    for step in steps(plan) {
        let mut options = Options::idle(&base, step.saturating_sub(held));
        options.ws_path = "/ws".into();
        options.enrollment_key = None;
        options.first = held;
        options.stop_on_failure = step == PAST_THE_LIMIT;
        let fleet = Fleet::start(options).await;
        held += Counters::get(&fleet.counters.connected) as usize;
        fleets.push(fleet);
        settle().await;
        let kib = rss_kib(pid);
        let per = (kib.saturating_sub(base_kib)) as f64 / held as f64;
        println!("[bare] {held} sessions: RSS {kib} KiB, {per:.1} KiB per session");
        let value = if step == PAST_THE_LIMIT {
            format!("{held} held; {per:.1} KiB each")
        } else {
            format!("{per:.1} KiB")
        };
        row("bare", step_key(step), value);
    }
    for fleet in fleets {
        fleet.stop().await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn commands(plan: &Plan, server: &ServerProcess, tag: &str) {
    let n = if plan.quick { 2_000 } else { 10_000 };
    let base = server.base_url.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .expect("client");
    let token = fleet::admin_token(&client, &base).await;
    let start = Instant::now();
    let devices = Fleet::start(Options::idle(&base, n)).await;
    let ids = devices.ids.clone();
    // A server that cannot hold them all (its fd limit) is measured with those it holds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while registered(&client, &base, &token).await != Some(ids.len() as u64)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "[{tag}] {} of {n} devices connected in {:.1} s",
        ids.len(),
        sim::secs(start)
    );
    if ids.len() < n {
        row(tag, "devices_held", format!("{} of {n}", ids.len()));
    }
    let n = ids.len();

    for (count, key) in [(1_000.min(n), "bulk_1k"), (n, "bulk_10k")] {
        let body = json!({"deviceIds": &ids[..count], "command": {"type": "force_sync"}, "timeoutMs": 60000});
        let start = Instant::now();
        let sent = client
            .post(format!("{base}/api/v1/devices/commands"))
            .bearer_auth(&token)
            .json(&body)
            .timeout(Duration::from_secs(300))
            .send()
            .await;
        // A server out of descriptors cannot take the request at all: a figure, not a panic.
        let reply: Value = match sent {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(e) => {
                println!("[{tag}] bulk dispatch to {count} failed: {e}");
                row(tag, key, format!("failed ({e})"));
                continue;
            }
        };
        let took = sim::secs(start);
        let ok = reply["data"]
            .as_object()
            .map(|m| m.values().filter(|a| a["status"] == "SUCCESS").count())
            .unwrap_or(0);
        println!("[{tag}] bulk dispatch to {count}: {took:.2} s, {ok}/{count} SUCCESS");
        row(tag, key, format!("{took:.2} s ({ok}/{count} ok)"));
    }

    let seconds = if plan.quick { 3 } else { 10 };
    for rate in [100u64, 1_000, 5_000] {
        let (latencies, failed, took) = at_rate(&client, &base, &token, &ids, rate, seconds).await;
        let done = latencies.len();
        let value = format!(
            "{:.1} / {:.1} / {:.1} ms{}",
            percentile_ms(&latencies, 0.5),
            percentile_ms(&latencies, 0.99),
            percentile_ms(&latencies, 0.999),
            if failed > 0 || (done as f64) < 0.95 * (rate * seconds) as f64 {
                format!("; {:.0}/s done, {failed} failed", done as f64 / took)
            } else {
                String::new()
            }
        );
        println!(
            "[{tag}] commands at {rate}/s over {n} devices for {seconds} s: p50/p99/p99.9 {value}"
        );
        row(tag, &format!("cmd_{rate}"), value);
    }
    devices.stop().await;
}

/// Sends single commands at `rate` a second for `seconds`; answers the latencies of the
/// successful ones (sorted), the failures, and the seconds until the last one ended.
async fn at_rate(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    ids: &[String],
    rate: u64,
    seconds: u64,
) -> (Vec<Duration>, usize, f64) {
    let total = (rate * seconds) as usize;
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let start = tokio::time::Instant::now();
    // A server far slower than the rate would keep the run going for many times its window:
    // what is not sent by half a window past its end is counted as failed, unsent.
    let last_send = start + Duration::from_secs(seconds + seconds / 2);
    let mut pending = Vec::with_capacity(total);
    let mut unsent = 0;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
        let permit = match tokio::time::timeout_at(last_send, gate.clone().acquire_owned()).await {
            Ok(permit) => permit.expect("semaphore"),
            Err(_) => {
                unsent = total - i;
                break;
            }
        };
        let (client, url, token) = (
            client.clone(),
            format!(
                "{base}/api/v1/devices/{}/commands",
                ids[(i * 7919) % ids.len()]
            ),
            token.to_owned(),
        );
        pending.push(tokio::spawn(async move {
            let body = json!({"command": {"type": "force_sync"}});
            let ok =
                fleet::command_succeeded(&client, &url, &token, &body, Duration::from_secs(30))
                    .await;
            drop(permit);
            (due.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut failed = unsent;
    for p in pending {
        match p.await {
            Ok((latency, true)) => latencies.push(latency),
            _ => failed += 1,
        }
    }
    latencies.sort();
    (latencies, failed, start.elapsed().as_secs_f64())
}

/// Rows in `device_events`, counted on a thread of its own: the blocking PostgreSQL client
/// runs a runtime of its own, which cannot start inside this one.
async fn stored_events(server: &ServerProcess) -> i64 {
    let (db, dir) = (server.db.url(), server.data_dir.path().to_owned());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let sql = "SELECT COUNT(*) FROM device_events";
        let n = match db {
            Some(url) => postgres::Client::connect(&url, postgres::NoTls)
                .and_then(|mut c| c.query_one(sql, &[]))
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(-1),
            None => rusqlite::Connection::open(dir.join("factory.db"))
                .and_then(|c| {
                    c.busy_timeout(Duration::from_secs(10))?;
                    c.query_row(sql, [], |r| r.get::<_, i64>(0))
                })
                .unwrap_or(-1),
        };
        let _ = tx.send(n);
    });
    rx.await.unwrap_or(-1)
}

async fn telemetry(plan: &Plan, server: &ServerProcess, tag: &str) {
    let (n, window) = if plan.quick { (200, 5) } else { (1_000, 15) };
    let offered = 50_000.0;
    let base = server.base_url.clone();
    let client = reqwest::Client::new();
    let token = fleet::admin_token(&client, &base).await;
    let dashboards = Dashboards::open(&base, &token, 10, &["scan"]).await;
    let mut options = Options::idle(&base, n);
    options.id_prefix = "tel".into();
    options.scans_per_sec = offered;
    options.scan_batch = 50;
    let devices = Fleet::start(options).await;
    // Warm up, then measure a window of steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (sent0, got0, stored0) = (
        Counters::get(&devices.counters.scans),
        dashboards.received.load(Ordering::Relaxed),
        stored_events(server).await,
    );
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let (sent1, got1, stored1) = (
        Counters::get(&devices.counters.scans),
        dashboards.received.load(Ordering::Relaxed),
        stored_events(server).await,
    );
    let took = sim::secs(start);
    devices.stop().await;
    let dropped = dashboards.dropped.load(Ordering::Relaxed);
    dashboards.close();
    let sent = (sent1 - sent0) as f64 / took;
    let stored = (stored1 - stored0) as f64 / took;
    let fanned = (got1 - got0) as f64 / took / 10.0;
    println!(
        "[{tag}] telemetry from {n} devices, offered {offered:.0}/s: sent {sent:.0}/s, stored {stored:.0}/s, each of 10 dashboards got {fanned:.0}/s ({dropped} dropped)"
    );
    row(
        tag,
        "telemetry",
        format!("{stored:.0} stored, {fanned:.0} to each dashboard (sent {sent:.0})"),
    );
}
