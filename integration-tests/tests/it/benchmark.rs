//! Throughput of the edge agent, printed: codes per second accepted from the scanner port
//! with the queue on disk (WAL, `synchronous=FULL`), and records per second drained to the
//! factory server. It asserts only correctness (every code arrives once), never speed.
//!
//! `BENCH_CODES` sets the number of codes (default 20000). For release figures:
//! `cargo build --release --workspace --bins && cargo test --release -p integration-tests
//! --test it -- benchmark:: --nocapture`.

use std::time::{Duration, Instant};

use integration_tests::*;

fn pending(agent: &AgentProcess) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        agent.data_dir.path().join("agent.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open agent.db");
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM queue WHERE state = 'PENDING'",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

#[test]
fn scanner_intake_and_drain_rates() {
    let n: usize = std::env::var("BENCH_CODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let bind = format!("127.0.0.1:{}", free_port());
    // The agent starts while the server is down, so intake and drain are measured apart.
    let agent = AgentProcess::start_with(
        &format!("http://{bind}"),
        "edge-bench",
        AgentOptions {
            scanner: true,
            args: vec!["--batch-size".into(), "0".into()],
            ..AgentOptions::default()
        },
    );
    let codes = gs1_codes("B", n);
    let started = Instant::now();
    agent.scan(&codes);
    wait_until(Duration::from_secs(600), "every code on disk", || {
        pending(&agent) >= n as i64
    });
    let intake = started.elapsed();

    let server = ServerProcess::start_on(
        &bind,
        TestDb::new(Backend::Sqlite),
        TempDir::new("factory-data"),
        &[],
    );
    // The clock starts with the first record at the server: the wait for the agent's next
    // retry and its enrollment are not drain time.
    let count = || server.query_ints("SELECT COUNT(*) FROM aggregated_bottles")[0];
    let mut first = 0;
    wait_until(
        Duration::from_secs(120),
        "the first record at the server",
        || {
            first = count();
            first > 0
        },
    );
    let started = Instant::now();
    wait_until(Duration::from_secs(600), "every code at the server", || {
        pending(&agent) == 0
    });
    let drain = started.elapsed();
    let drained = n as i64 - first;
    let stored =
        server.query_ints("SELECT COUNT(*), COUNT(DISTINCT payload) FROM aggregated_bottles");
    assert_eq!(stored, [n as i64, n as i64]);

    println!(
        "scanner intake: {n} codes in {:.2} s = {:.0} codes/s (queue on disk, synchronous=FULL)",
        intake.as_secs_f64(),
        n as f64 / intake.as_secs_f64()
    );
    println!(
        "drain to the server: {drained} records in {:.2} s = {:.0} records/s \
         (batches of 500, each marked sent after the server's 2xx)",
        drain.as_secs_f64(),
        drained as f64 / drain.as_secs_f64()
    );
}
