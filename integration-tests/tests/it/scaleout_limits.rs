//! Login and enrollment limits shared by two `factory-server` replicas on one PostgreSQL
//! (issue 17): wrong passwords or enrollment keys sent to the replicas in turn lock the key
//! after `--login-max-failures` failures in all, not that many per replica; the other replica
//! then refuses even the right one with 429; a burst spread over both replicas gets no more
//! checks than the limit, the lock is audited once, and the refused attempts are summed up in
//! the audit log once each, by the replica that refused them.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use integration_tests::replicas::Replica;
use integration_tests::*;
use serde_json::{json, Value};

/// Failures of one account or device id before it is locked.
const MAX: usize = 3;
const LOCKOUT_SECS: u64 = 900;
const USER_PASSWORD: &str = "shared-limits-user-password";
/// Wrong logins in the burst, half to each replica.
const BURST: usize = 16;

/// Two replicas on one new database; r1 creates the admin and leads before r2 starts.
fn two_replicas(url: &str, data: &TempDir) -> Vec<Replica> {
    two_replicas_locking_for(url, data, LOCKOUT_SECS)
}

fn two_replicas_locking_for(url: &str, data: &TempDir, lockout_secs: u64) -> Vec<Replica> {
    let lockout = lockout_secs.to_string();
    let flags = [
        "--login-max-failures",
        "3",
        // High enough that the test address never locks: only the account and device count.
        "--source-max-failures",
        "1000",
        "--lockout-secs",
        &lockout,
        "--audit-summary-secs",
        "1",
    ];
    let first = Replica::start(url, data.path(), "r1", &flags);
    wait_until(Duration::from_secs(20), "r1 leading", || {
        first.log().contains("leader=true")
    });
    let second = Replica::start(url, data.path(), "r2", &flags);
    vec![first, second]
}

fn login(replica: &Replica, username: &str, password: &str) -> Reply {
    Api::with_base(&replica.base_url, None).post(
        "/api/v1/auth/login",
        &json!({"username": username, "password": password}),
    )
}

fn enroll(replica: &Replica, device: &str, key: &str) -> Reply {
    Api::with_base(&replica.base_url, None).post_with_header(
        &format!("/api/v1/devices/{device}/token"),
        ("X-Enrollment-Key", key),
    )
}

/// A 429 with the whole lock still ahead in `Retry-After`: the window of the first failure.
fn assert_locked(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 429, "{what}: {}", reply.body);
    assert_eq!(reply.error_code(), "rate_limited", "{what}");
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .expect("Retry-After text")
        .parse()
        .expect("Retry-After seconds");
    assert!(
        retry > LOCKOUT_SECS - 60 && retry <= LOCKOUT_SECS,
        "{what}: Retry-After {retry}"
    );
}

/// The audit rows of `action` with `outcome` about `target`, their params parsed.
fn audit_params(url: &str, action: &str, outcome: &str, target: &str) -> Vec<Value> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
    client
        .query(
            "SELECT params FROM audit_log WHERE action = $1 AND outcome = $2 AND target = $3",
            &[&action, &outcome, &target],
        )
        .expect("audit rows")
        .into_iter()
        .map(|row| {
            let params: Option<String> = row.get(0);
            serde_json::from_str(&params.unwrap_or_default()).unwrap_or(Value::Null)
        })
        .collect()
}

/// Creates the user `target` through `replica`.
fn create_target(replica: &Replica) {
    let token = login(replica, "admin", ADMIN_PASSWORD).data()["token"]
        .as_str()
        .expect("admin token")
        .to_owned();
    Api::with_base(&replica.base_url, None)
        .with_token(&token)
        .create_user("target", USER_PASSWORD, "VIEWER");
}

#[test]
fn two_replicas_share_login_and_enrollment_limits() {
    let db = TestDb::postgres();
    let url = db.url().expect("a PostgreSQL database");
    let data = TempDir::new("shared-limits-data");
    let replicas = two_replicas(&url, &data);
    create_target(&replicas[0]);

    // Wrong passwords in turn on r1, r2, r1: each is checked, and the third locks the
    // account for both replicas (counted per replica, r2 would still have two to go).
    for i in 0..MAX {
        let reply = login(&replicas[i % 2], "target", "wrong-password");
        assert_eq!(
            reply.status,
            401,
            "failure {} of {MAX}: {}",
            i + 1,
            reply.body
        );
    }
    let other = &replicas[MAX % 2];
    assert_locked(
        &login(other, "target", USER_PASSWORD),
        "the right password on the replica that saw the fewer failures",
    );
    assert_locked(
        &login(&replicas[(MAX - 1) % 2], "target", USER_PASSWORD),
        "the right password on the replica of the last failure",
    );
    let locked = audit_params(&url, "auth.login", "locked", "target");
    assert_eq!(locked.len(), 1, "one row for the lock: {locked:?}");
    assert_eq!(locked[0]["failures"], MAX);
    // Another account is not locked by this one's failures, on either replica.
    for replica in &replicas {
        assert_eq!(login(replica, "admin", ADMIN_PASSWORD).status, 200);
    }

    // The same for one device id's enrollment with a wrong key.
    for i in 0..MAX {
        let reply = enroll(&replicas[i % 2], "edge-shared", "wrong-key-123");
        assert_eq!(
            reply.status,
            401,
            "failure {} of {MAX}: {}",
            i + 1,
            reply.body
        );
    }
    assert_locked(
        &enroll(other, "edge-shared", ENROLLMENT_KEY),
        "the right enrollment key on the other replica",
    );
    let locked = audit_params(&url, "device.token", "locked", "edge-shared");
    assert_eq!(locked.len(), 1, "one row for the device's lock: {locked:?}");
    assert_eq!(
        enroll(other, "edge-elsewhere", ENROLLMENT_KEY).status,
        200,
        "other devices still enroll"
    );
}

#[test]
fn a_burst_over_two_replicas_gets_no_more_checks_than_the_limit() {
    let db = TestDb::postgres();
    let url = db.url().expect("a PostgreSQL database");
    let data = TempDir::new("shared-burst-data");
    let replicas = two_replicas(&url, &data);
    let bases: Vec<String> = replicas.iter().map(|r| r.base_url.clone()).collect();

    // Every guess at once, half to each replica, for an account that does not even exist
    // (its failures count all the same).
    let start = Arc::new(Barrier::new(BURST));
    let guesses: Vec<_> = (0..BURST)
        .map(|i| {
            let (base, start) = (bases[i % 2].clone(), start.clone());
            std::thread::spawn(move || {
                let api = Api::with_base(&base, None);
                start.wait();
                let reply = api.post(
                    "/api/v1/auth/login",
                    &json!({"username": "ghost", "password": format!("guess-{i}")}),
                );
                if reply.status == 429 {
                    assert!(reply.headers.contains_key("retry-after"), "{}", reply.body);
                }
                reply.status
            })
        })
        .collect();
    let statuses: Vec<u16> = guesses
        .into_iter()
        .map(|g| g.join().expect("a guess"))
        .collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    eprintln!(
        "burst of {BURST} over two replicas: {checked} checked (401), {refused} refused (429)"
    );
    assert_eq!(
        checked, MAX,
        "exactly the limit's guesses are checked, over both replicas: {statuses:?}"
    );
    assert_eq!(refused, BURST - MAX, "the others are refused: {statuses:?}");
    for replica in &replicas {
        assert_locked(&login(replica, "ghost", "one-more"), "after the burst");
    }
    let locked = audit_params(&url, "auth.login", "locked", "ghost");
    assert_eq!(locked.len(), 1, "one row for the lock: {locked:?}");

    // Each replica sums up the attempts it refused; together, every refusal once.
    let expected = (refused + replicas.len()) as u64;
    let mut summed = 0;
    wait_until(Duration::from_secs(20), "refusals summed up", || {
        summed = audit_params(&url, "auth.login", "refused", "ghost")
            .iter()
            .filter(|p| p["key"] == "account")
            .map(|p| p["count"].as_u64().unwrap_or(0))
            .sum::<u64>();
        summed >= expected
    });
    assert_eq!(summed, expected, "each refusal is counted once");
}

#[test]
fn a_shared_lock_ends_with_its_window_on_every_replica() {
    const SHORT_LOCKOUT: u64 = 3;
    let db = TestDb::postgres();
    let url = db.url().expect("a PostgreSQL database");
    let data = TempDir::new("shared-window-data");
    let replicas = two_replicas_locking_for(&url, &data, SHORT_LOCKOUT);
    create_target(&replicas[0]);
    for round in 0..2 {
        for i in 0..MAX {
            let reply = login(&replicas[i % 2], "target", "wrong-password");
            assert_eq!(
                reply.status,
                401,
                "round {round}, failure {}: {}",
                i + 1,
                reply.body
            );
        }
        let locked = login(&replicas[MAX % 2], "target", USER_PASSWORD);
        assert_eq!(locked.status, 429, "round {round}: {}", locked.body);
        let retry: u64 = locked.headers["retry-after"]
            .to_str()
            .expect("Retry-After text")
            .parse()
            .expect("Retry-After seconds");
        assert!(retry <= SHORT_LOCKOUT, "Retry-After {retry}");
        // The window ends for both replicas at once; the right password then gets in, and
        // forgets the failures, so the next round starts a count of its own.
        wait_until(Duration::from_secs(15), "the lock ends", || {
            login(&replicas[MAX % 2], "target", USER_PASSWORD).status == 200
        });
        assert_eq!(
            login(&replicas[(MAX + 1) % 2], "target", USER_PASSWORD).status,
            200
        );
    }
}

/// The keys tracked per limiter (the server's `ratelimit::DEFAULT_MAX_KEYS`).
const MAX_KEYS: i64 = 10_000;

fn count(client: &mut postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).expect("count").get(0)
}

#[test]
fn shared_counts_keep_a_bounded_number_of_keys() {
    let db = TestDb::postgres();
    let url = db.url().expect("a PostgreSQL database");
    let data = TempDir::new("shared-keys-data");
    let replica = Replica::start(
        &url,
        data.path(),
        "r1",
        &["--login-max-failures", "3", "--source-max-failures", "1000"],
    );
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    const ALL: &str = "SELECT count(*) FROM failure_counts";

    // A success gives its slots back, and a key with nothing counted keeps no row.
    assert_eq!(login(&replica, "admin", ADMIN_PASSWORD).status, 200);
    assert_eq!(count(&mut client, ALL), 0, "no row left by a success");

    // The table full of live keys, as an attacker with many names would fill it: a new name
    // is counted under the overflow key, and the table does not grow.
    client
        .execute(
            "INSERT INTO failure_counts (limiter, subject, failures, in_flight, window_ends) \
             SELECT 'auth.login:account', 'name-' || i, 1, 0, \
                    (now() AT TIME ZONE 'UTC') + interval '10 minutes' \
             FROM generate_series(1, $1::BIGINT) AS i",
            &[&MAX_KEYS],
        )
        .expect("fill the table");
    assert_eq!(login(&replica, "newcomer", "wrong-password").status, 401);
    let account = "SELECT count(*) FROM failure_counts WHERE limiter = 'auth.login:account'";
    assert_eq!(
        count(&mut client, account),
        MAX_KEYS + 1,
        "the keys and the overflow key"
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM failure_counts WHERE subject = 'newcomer'"
        ),
        0
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT failures::BIGINT FROM failure_counts \
             WHERE limiter = 'auth.login:account' AND subject = '*'"
        ),
        1,
        "the new name's failure counts under the overflow key"
    );

    // Keys whose window has passed make room: the next new name deletes them and gets its own.
    client
        .execute(
            "UPDATE failure_counts SET window_ends = (now() AT TIME ZONE 'UTC') - interval '1 second' \
             WHERE subject LIKE 'name-%' AND split_part(subject, '-', 2)::INT <= $1::INT",
            &[&((MAX_KEYS / 2) as i32)],
        )
        .expect("expire half");
    assert_eq!(login(&replica, "latecomer", "wrong-password").status, 401);
    assert_eq!(
        count(&mut client, account),
        MAX_KEYS / 2 + 2,
        "the live keys, the overflow key and the new one"
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT failures::BIGINT FROM failure_counts WHERE subject = 'latecomer'"
        ),
        1
    );
}
