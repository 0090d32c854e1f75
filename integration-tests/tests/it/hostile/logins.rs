//! Bursts of wrong logins, wrong OTA admin secrets and refused tokens (issue 15, findings 2
//! and 7): each gets no more checks than its limit, the server's memory stays bounded while
//! hundreds arrive at once, and the audit log gets a bounded number of rows with the count of
//! what was refused instead of a row each.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use integration_tests::*;
use serde_json::{json, Value};

const USER_PASSWORD: &str = "other-user-password";
const OTA_SECRET: &str = "logins-suite-ota-admin-secret";

/// Concurrent requests per burst, as in the report: 256 from one address.
const BURST: usize = 256;

/// Memory one Argon2 verification holds (the crate's default `m = 19456 KiB`).
const ARGON2_BYTES: u64 = 19 * 1024 * 1024;

/// What the burst may add to the server's memory besides its password checks: 1024 open
/// connections with their buffers and parsed bodies, the waiting requests, allocator slack.
const BURST_SLACK_BYTES: u64 = 96 * 1024 * 1024;

on_both_backends!(
    a_burst_of_wrong_passwords_gets_no_more_checks_than_the_limit,
    bursts_from_four_addresses_are_limited_per_address,
    locked_out_logins_are_summed_up_in_the_audit_log,
    wrong_ota_admin_secrets_are_limited_and_summed_up,
    refused_tokens_are_limited_per_address,
);

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

/// The most the server's peak memory may reach after a burst: what it held before, one
/// Argon2 verification per password thread (one per core, which this process sees too), and
/// the slack. Without the bound on verifications, 256 of them in flight reached 925 MB.
fn memory_bound(before: u64) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    before + cores * ARGON2_BYTES + BURST_SLACK_BYTES
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Sends every `(from, body)` login at once, each from its own connection bound to the
/// address `from` (loopback accepts any 127.x.y.z), and returns the statuses by address, with
/// every answer checked to be the JSON envelope and every 429 or 503 to carry `Retry-After`.
fn login_burst(server: &ServerProcess, attempts: Vec<(Ipv4Addr, Value)>) -> Vec<(Ipv4Addr, u16)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("{}/api/v1/auth/login", server.base_url);
    runtime.block_on(async move {
        let mut clients = BTreeMap::new();
        for (from, _) in &attempts {
            clients.entry(*from).or_insert_with(|| {
                reqwest::Client::builder()
                    .local_address(IpAddr::V4(*from))
                    .timeout(Duration::from_secs(120))
                    .build()
                    .expect("http client")
            });
        }
        let requests = attempts.into_iter().map(|(from, body)| {
            let request = clients[&from].post(&url).json(&body).send();
            async move {
                let response = request.await.expect("login request");
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let body: Value = response.json().await.expect("a JSON body");
                assert_eq!(body["success"], false, "{status} {body}");
                assert!(body["error"]["code"].is_string(), "{status} {body}");
                if status == 429 || status == 503 {
                    assert!(retry_after, "{status} without Retry-After: {body}");
                }
                (from, status)
            }
        });
        futures_util::future::join_all(requests).await
    })
}

/// Statuses counted by status.
fn tally(statuses: impl Iterator<Item = u16>) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for status in statuses {
        *counts.entry(status).or_insert(0) += 1;
    }
    counts
}

/// A login from one address, on a connection bound to it.
fn login_from(server: &ServerProcess, from: Ipv4Addr, username: &str, password: &str) -> u16 {
    reqwest::blocking::Client::builder()
        .local_address(IpAddr::V4(from))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
        .post(format!("{}/api/v1/auth/login", server.base_url))
        .json(&json!({"username": username, "password": password}))
        .send()
        .expect("login")
        .status()
        .as_u16()
}

/// Every audit row of `action` (at most 500: the tests check `total` first).
fn audit_rows(admin: &Api, action: &str) -> (i64, Vec<Value>) {
    let page = admin.get(&format!("/api/v1/audit?action={action}&limit=500"));
    let total = page.data()["total"].as_i64().expect("total");
    let items = page.data()["items"].as_array().expect("items").clone();
    (total, items)
}

fn with_outcome<'a>(rows: &'a [Value], outcome: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| r["outcome"] == outcome).collect()
}

/// The sum of `params.count` over the `refused` summary rows of `action`.
fn refused_count(admin: &Api, action: &str) -> u64 {
    let (_, rows) = audit_rows(admin, action);
    with_outcome(&rows, "refused")
        .iter()
        .map(|r| r["params"]["count"].as_u64().expect("a count"))
        .sum()
}

const LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

fn a_burst_of_wrong_passwords_gets_no_more_checks_than_the_limit(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    admin.create_user("bystander", USER_PASSWORD, "VIEWER");
    let before = proc_status_bytes(server.pid(), "VmRSS");

    let attempts = (0..BURST)
        .map(|i| {
            let body = json!({"username": "admin", "password": format!("wrong-guess-{i}")});
            (LOOPBACK, body)
        })
        .collect();
    let started = Instant::now();
    let statuses = login_burst(&server, attempts);
    let counts = tally(statuses.iter().map(|(_, s)| *s));
    let peak = proc_status_bytes(server.pid(), "VmHWM");
    let bound = memory_bound(before);
    println!(
        "{BURST} wrong passwords at once in {:?}: {counts:?}; server memory {:.0} MiB before, \
         peak {:.0} MiB, bound {:.0} MiB",
        started.elapsed(),
        mib(before),
        mib(peak),
        mib(bound)
    );

    let checked = counts.get(&401).copied().unwrap_or(0);
    assert!(
        (1..=5).contains(&checked),
        "at most the limit of 5 passwords may be checked: {counts:?}"
    );
    for status in counts.keys() {
        assert!(
            matches!(status, 401 | 429 | 503),
            "unexpected status {status}: {counts:?}"
        );
    }
    assert!(
        peak <= bound,
        "server peak memory {:.0} MiB is over {:.0} MiB",
        mib(peak),
        mib(bound)
    );

    // The account is locked, so even its password is refused; others are not.
    assert_eq!(
        login_from(&server, LOOPBACK, "admin", ADMIN_PASSWORD),
        429,
        "the right password is refused while the account is locked"
    );
    assert_eq!(
        login_from(&server, LOOPBACK, "bystander", USER_PASSWORD),
        200
    );
    assert_eq!(
        admin.get("/api/v1/auth/me").status,
        200,
        "tokens still work"
    );
}

fn bursts_from_four_addresses_are_limited_per_address(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--source-max-failures", "5"],
    );
    let admin = Api::admin(&server);
    let before = proc_status_bytes(server.pid(), "VmRSS");

    let sources: Vec<Ipv4Addr> = (2..=5).map(|d| Ipv4Addr::new(127, 0, 0, d)).collect();
    // Each request names another account, so only the per-address count can stop them.
    let attempts = sources
        .iter()
        .flat_map(|from| {
            (0..BURST).map(move |i| {
                let body =
                    json!({"username": format!("guess-{from}-{i}"), "password": "wrong-guess"});
                (*from, body)
            })
        })
        .collect();
    let started = Instant::now();
    let statuses = login_burst(&server, attempts);
    let peak = proc_status_bytes(server.pid(), "VmHWM");
    let bound = memory_bound(before);
    let mut by_source: BTreeMap<Ipv4Addr, Vec<u16>> = BTreeMap::new();
    for (from, status) in statuses {
        by_source.entry(from).or_default().push(status);
    }
    let by_source: BTreeMap<Ipv4Addr, BTreeMap<u16, usize>> = by_source
        .into_iter()
        .map(|(from, s)| (from, tally(s.into_iter())))
        .collect();
    println!(
        "4 × {BURST} wrong logins at once in {:?}: {by_source:?}; server memory {:.0} MiB \
         before, peak {:.0} MiB, bound {:.0} MiB",
        started.elapsed(),
        mib(before),
        mib(peak),
        mib(bound)
    );

    for (from, counts) in &by_source {
        let checked = counts.get(&401).copied().unwrap_or(0);
        assert!(
            (1..=5).contains(&checked),
            "{from}: at most the limit of 5 checks per address: {counts:?}"
        );
        for status in counts.keys() {
            assert!(
                matches!(status, 401 | 429 | 503),
                "{from}: unexpected status {status}: {counts:?}"
            );
        }
    }
    assert!(
        peak <= bound,
        "server peak memory {:.0} MiB is over {:.0} MiB",
        mib(peak),
        mib(bound)
    );

    // A locked address is refused even the right password; another address is not.
    assert_eq!(
        login_from(&server, sources[0], "admin", ADMIN_PASSWORD),
        429
    );
    assert_eq!(
        login_from(
            &server,
            Ipv4Addr::new(127, 0, 0, 6),
            "admin",
            ADMIN_PASSWORD
        ),
        200
    );
    assert_eq!(admin.get("/api/v1/auth/me").status, 200);
}

/// Runs `n` calls of `call` on `threads` threads and returns their statuses; a call that
/// gets no answer fails the test with the server's log.
fn hammer(
    server: &ServerProcess,
    n: usize,
    threads: usize,
    call: impl Fn(usize) -> Result<u16, String> + Sync,
) -> Vec<u16> {
    let call = &call;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || (t..n).step_by(threads).map(call).collect::<Vec<_>>()))
            .collect();
        let results: Vec<Result<u16, String>> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("caller thread"))
            .collect();
        let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        let log = server.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        assert!(
            errors.is_empty(),
            "{} requests got no answer, first {:?}; server log ends:\n{}",
            errors.len(),
            errors.first(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        results.into_iter().flatten().collect()
    })
}

fn locked_out_logins_are_summed_up_in_the_audit_log(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--audit-summary-secs", "3"],
    );
    let admin = Api::admin(&server);
    admin.create_user("target", USER_PASSWORD, "VIEWER");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client");
    let url = format!("{}/api/v1/auth/login", server.base_url);

    let started = Instant::now();
    let statuses = hammer(&server, 3000, 8, |i| {
        let r = client
            .post(&url)
            .json(&json!({"username": "target", "password": format!("wrong-{i}")}))
            .send()
            .map_err(|e| format!("{e:?}"))?;
        let status = r.status().as_u16();
        let retry_after = r.headers().contains_key("retry-after");
        let body: Value = r.json().map_err(|e| format!("{e:?}"))?;
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited");
            assert!(retry_after);
        }
        Ok(status)
    });
    let elapsed = started.elapsed();
    let counts = tally(statuses.into_iter());
    let refused = counts.get(&429).copied().unwrap_or(0) as u64;
    println!("3000 wrong logins in {elapsed:?}: {counts:?}");
    assert!(counts.get(&401).copied().unwrap_or(0) <= 5, "{counts:?}");
    assert!(
        counts.keys().all(|s| matches!(s, 401 | 429)),
        "only checked failures and refusals: {counts:?}"
    );

    // The refusals arrive as summaries, one per key every 3 s.
    wait_until(
        Duration::from_secs(30),
        "the refused logins to be summed up",
        || refused_count(&admin, "auth.login") == refused,
    );
    let (total, rows) = audit_rows(&admin, "auth.login");
    let failures = with_outcome(&rows, "failure");
    let locked = with_outcome(&rows, "locked");
    let summaries = with_outcome(&rows, "refused");
    println!(
        "audit rows of auth.login: {total} ({} failure, {} locked, {} refused summaries)",
        failures.len(),
        locked.len(),
        summaries.len()
    );
    assert!(failures.len() <= 5, "one row per counted failure");
    assert_eq!(locked.len(), 1, "one row for the lock: {locked:?}");
    assert_eq!(locked[0]["target"], "target");
    assert_eq!(locked[0]["params"]["key"], "account");
    // One summary per 3 s while refusals come, plus the last partial period.
    let periods = elapsed.as_secs() / 3 + 2;
    assert!(
        summaries.len() as u64 <= periods,
        "{} summaries in {elapsed:?}",
        summaries.len()
    );
    for row in &summaries {
        assert_eq!(row["target"], "target");
        assert_eq!(row["params"]["key"], "account");
        assert!(row["params"]["since"].is_string() && row["params"]["until"].is_string());
    }
    // Besides the admin's own login, nothing else was written.
    assert!(
        total <= 1 + 5 + 1 + periods as i64,
        "{total} audit rows for 3000 attempts"
    );
}

fn wrong_ota_admin_secrets_are_limited_and_summed_up(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &[
            "--ota-admin-secret",
            OTA_SECRET,
            "--audit-summary-secs",
            "3",
        ],
    );
    let admin = Api::admin(&server);
    let anonymous = Api::new(&server);
    let body = json!({"device_id": "board-1", "project": "fan"});
    let generate = |secret: &str| {
        anonymous.call(
            "POST",
            "/admin/generate_token",
            Some(&body),
            &[("X-Admin-Secret", secret)],
        )
    };

    let started = Instant::now();
    let mut counts = BTreeMap::new();
    for i in 0..300 {
        let r = generate(&format!("wrong-secret-guess-{i}"));
        if i < 20 {
            assert_eq!(r.status, 401, "guess {i}: {}", r.body);
            assert_eq!(r.error_code(), "invalid_admin_secret");
        } else {
            assert_eq!(r.status, 429, "guess {i} is past the limit: {}", r.body);
            assert_eq!(r.error_code(), "rate_limited");
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry > 0 && retry <= 900, "Retry-After {retry}");
        }
        *counts.entry(r.status).or_insert(0usize) += 1;
    }
    let elapsed = started.elapsed();
    println!("300 wrong admin secrets in {elapsed:?}: {counts:?}");
    assert_eq!(
        generate(OTA_SECRET).status,
        429,
        "the right secret is refused while the address is locked"
    );
    let other = reqwest::blocking::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)))
        .build()
        .unwrap()
        .post(format!("{}/admin/generate_token", server.base_url))
        .header("X-Admin-Secret", OTA_SECRET)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(
        other.status().as_u16(),
        200,
        "another address is not locked"
    );

    wait_until(
        Duration::from_secs(30),
        "the refused requests to be summed up",
        || refused_count(&admin, "ota.token.generate") == 281,
    );
    let (total, rows) = audit_rows(&admin, "ota.token.generate");
    let summaries = with_outcome(&rows, "refused");
    println!(
        "audit rows of ota.token.generate: {total} ({} summaries)",
        summaries.len()
    );
    assert_eq!(with_outcome(&rows, "denied").len(), 20);
    let locked = with_outcome(&rows, "locked");
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0]["source"], "127.0.0.1");
    assert_eq!(with_outcome(&rows, "success").len(), 1);
    let periods = elapsed.as_secs() / 3 + 2;
    assert!(summaries.len() as u64 <= periods, "{total} rows");
    assert!(total <= 20 + 1 + 1 + periods as i64, "{total} rows");
}

fn refused_tokens_are_limited_per_address(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--token-max-failures", "10", "--audit-summary-secs", "3"],
    );
    let admin = Api::admin(&server);
    let device_token = admin.enroll("edge-good");
    let forged = Api::new(&server).with_token("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl");

    for i in 0..10 {
        let r = forged.get("/api/v1/devices");
        assert_eq!(r.status, 401, "refusal {i}: {}", r.body);
        assert_eq!(r.error_code(), "invalid_token");
    }
    for _ in 0..190 {
        let r = forged.get("/api/v1/devices");
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(r.error_code(), "rate_limited");
        assert!(r.headers.contains_key("retry-after"));
    }
    let url = server.ws_url("/ws/device");
    assert_eq!(
        ws_connect(&url, Some("not-a-device-token")).err(),
        Some(429),
        "the device socket counts the same address"
    );
    assert!(
        Api::new(&server).get("/api/v1/devices").status == 401,
        "a missing token is no refused token"
    );

    // Valid tokens from the same address still work: a token cannot be guessed.
    assert_eq!(admin.get("/api/v1/devices").status, 200);
    let mut device = ws_connect(&url, Some(&device_token)).expect("device socket");
    let hello = ws_next_json(&mut device).expect("hello");
    assert_eq!(hello["type"], "hello");

    wait_until(
        Duration::from_secs(30),
        "the refused tokens to be summed up",
        || refused_count(&admin, "auth.token") == 191,
    );
    let (total, rows) = audit_rows(&admin, "auth.token");
    let locked = with_outcome(&rows, "locked");
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0]["source"], "127.0.0.1");
    assert!(total <= 12, "{total} rows for 201 refused tokens");
}
