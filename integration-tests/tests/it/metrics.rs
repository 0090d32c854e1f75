//! `GET /metrics` against the real server on SQLite and PostgreSQL: scraped before and after
//! real traffic (an enrolled agent, commands that succeed and time out, a failed login and
//! enrollment, a sync batch, a dashboard socket, a refused frame), every metric moves by what
//! the traffic should have moved it; and the route answers only the metrics token.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

on_both_backends!(
    scrapes_move_with_the_traffic,
    metrics_need_the_metrics_token
);

const TOKEN: &str = "metrics-scraper-token-0123";

/// One scrape, as the text a Prometheus server would read.
fn scrape(server: &ServerProcess) -> String {
    let reply = Api::new(server)
        .with_token(TOKEN)
        .call("GET", "/metrics", None, &[]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let kind = reply.headers["content-type"].to_str().unwrap_or_default();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    reply.body.as_str().expect("the text format").to_owned()
}

/// Splits a sample line `name{a="x",b="y"} value` into its name, labels and value.
fn parse_line(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split(',')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key, value.trim_matches('"')))
        })
        .collect();
    Some((name, labels, value.parse().ok()?))
}

/// The value of the series `name` with exactly `labels`; `None` when the scrape has none.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter_map(parse_line)
        .find(|(n, l, _)| *n == name && *l == want)
        .map(|(_, _, v)| v)
}

/// Like `sample`, with a series not yet created reading 0 (a labelled counter appears at its
/// first increment).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(text, name, labels).unwrap_or(0.0)
}

/// How much each of `series` moved between two scrapes.
fn moved(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(after, name, labels) - value(before, name, labels)
}

fn start(backend: Backend) -> ServerProcess {
    ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--metrics-token", TOKEN],
    )
}

fn dispatch(api: &Api, device: &str, command: Value, timeout_ms: u64) -> Value {
    let reply = api.post(
        &format!("/api/v1/devices/{device}/commands"),
        &json!({"command": command, "timeoutMs": timeout_ms}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.data().clone()
}

fn record(id: &str) -> Value {
    json!({"id": id, "kind": "bottle", "companyId": "company-1",
           "payload": {"code": format!("code-{id}")}, "createdAt": "2030-01-02T03:04:05Z"})
}

fn scrapes_move_with_the_traffic(backend: Backend) {
    let server = start(backend);
    let api = Api::admin(&server);
    let before = scrape(&server);
    for (name, labels) in [
        ("factory_connected_devices", vec![]),
        ("factory_dashboard_sockets", vec![]),
        ("factory_cloud_records", vec![("state", "pending")]),
        ("factory_cloud_records", vec![("state", "dead")]),
        ("factory_deployments", vec![("state", "RUNNING")]),
        ("factory_db_jobs_refused_total", vec![]),
    ] {
        assert_eq!(
            sample(&before, name, &labels),
            Some(0.0),
            "{name} {labels:?} before any traffic:\n{before}"
        );
    }
    for state in ["idle", "in_use"] {
        assert!(
            sample(&before, "factory_db_pool_connections", &[("state", state)]).is_some(),
            "no pool gauge for {state}:\n{before}"
        );
    }

    // Refused attempts: a wrong password and a wrong enrollment key.
    let login = Api::new(&server).post(
        "/api/v1/auth/login",
        &json!({"username": "admin", "password": "not-the-password"}),
    );
    assert_eq!(login.status, 401, "{}", login.body);
    let enroll = Api::new(&server).post_with_header(
        "/api/v1/devices/edge-stranger/token?name=x&companyId=company-1",
        ("X-Enrollment-Key", "not-the-enrollment-key"),
    );
    assert_eq!(enroll.status, 401, "{}", enroll.body);

    // A real agent, and a command it answers.
    let mut agent = AgentProcess::start(&server, "edge-metrics");
    wait_until(Duration::from_secs(60), "the agent ONLINE", || {
        api.device_status("edge-metrics").as_deref() == Some("ONLINE")
    });
    let ok = dispatch(
        &api,
        "edge-metrics",
        json!({"type": "force_sync", "id": "m-ok"}),
        30_000,
    );
    assert_eq!(ok["status"], "SUCCESS", "{ok}");

    // A device that never answers: its command times out. Then it sends a frame over the
    // size limit, which the session refuses and says so.
    let mut silent = FakeDevice::connect(&server, &api, "edge-silent");
    let late = dispatch(
        &api,
        "edge-silent",
        json!({"type": "pull_logs", "id": "m-late", "lines": 5}),
        300,
    );
    assert_eq!(late["status"], "TIMEOUT", "{late}");
    silent.send(&json!({"type": "log_line", "line": "y".repeat(70_000), "level": "INFO", "ts": now_rfc3339()}));
    loop {
        let frame = ws_next_json(&mut silent.socket).expect("the refusal notice");
        if frame["type"] == "error" {
            assert_eq!(frame["code"], "frame_too_large", "{frame}");
            break;
        }
    }

    // A sync batch with one duplicate: two records accepted and queued for the cloud.
    let device = Api::new(&server).with_token(&silent.token);
    let synced = device.post(
        "/api/v1/sync",
        &json!({"records": [record("s1"), record("s2"), record("s1")]}),
    );
    assert_eq!(synced.data(), &json!({"accepted": 2, "duplicates": 1}));

    let mut dashboard =
        ws_connect(&server.ws_url("/ws/dashboard"), api.token()).expect("dashboard");
    assert_eq!(
        ws_next_json(&mut dashboard).expect("hello")["type"],
        "hello"
    );

    let after = scrape(&server);
    let delta = |name: &str, labels: &[(&str, &str)]| moved(&before, &after, name, labels);
    assert_eq!(
        value(&after, "factory_connected_devices", &[]),
        2.0,
        "{after}"
    );
    assert_eq!(delta("factory_device_sessions_opened_total", &[]), 2.0);
    assert_eq!(delta("factory_device_sessions_closed_total", &[]), 0.0);
    assert_eq!(
        delta(
            "factory_commands_total",
            &[("status", "SUCCESS"), ("type", "force_sync")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "factory_commands_total",
            &[("status", "TIMEOUT"), ("type", "pull_logs")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "factory_command_round_trip_seconds_count",
            &[("type", "force_sync")]
        ),
        1.0
    );
    // The timed-out command took its whole timeout and no more than a few seconds besides.
    let late_secs = delta(
        "factory_command_round_trip_seconds_sum",
        &[("type", "pull_logs")],
    );
    assert!((0.3..10.0).contains(&late_secs), "{late_secs}");
    assert_eq!(
        delta("factory_login_failures_total", &[("reason", "credentials")]),
        1.0
    );
    assert_eq!(
        delta("factory_enrollment_failures_total", &[("reason", "key")]),
        1.0
    );
    assert_eq!(
        delta(
            "factory_ws_frames_refused_total",
            &[("reason", "too_large")]
        ),
        1.0
    );
    assert_eq!(
        delta("factory_sync_records_total", &[("outcome", "accepted")]),
        2.0
    );
    assert_eq!(
        delta("factory_sync_records_total", &[("outcome", "duplicate")]),
        1.0
    );
    assert_eq!(
        value(&after, "factory_cloud_records", &[("state", "pending")]),
        2.0
    );
    assert_eq!(value(&after, "factory_dashboard_sockets", &[]), 1.0);
    assert!(
        delta("factory_db_queue_wait_seconds_count", &[]) > 0.0,
        "{after}"
    );
    assert!(
        delta("factory_db_connection_wait_seconds_count", &[]) > 0.0,
        "{after}"
    );

    // Sessions and sockets that end are counted out.
    agent.kill();
    drop(silent);
    drop(dashboard);
    let mut last = String::new();
    wait_until(
        Duration::from_secs(30),
        "sessions and sockets to close",
        || {
            last = scrape(&server);
            value(&last, "factory_connected_devices", &[]) == 0.0
                && value(&last, "factory_dashboard_sockets", &[]) == 0.0
        },
    );
    assert_eq!(
        moved(&before, &last, "factory_device_sessions_closed_total", &[]),
        2.0
    );
}

fn metrics_need_the_metrics_token(backend: Backend) {
    let server = start(backend);
    let admin = Api::admin(&server);
    for (who, api) in [
        ("no token", Api::new(&server)),
        (
            "a wrong token",
            Api::new(&server).with_token("not-the-metrics-token"),
        ),
        (
            "an admin's token",
            Api::new(&server).with_token(admin.token().unwrap()),
        ),
    ] {
        let reply = api.call("GET", "/metrics", None, &[]);
        assert_eq!(reply.status, 401, "{who}: {}", reply.body);
        assert_eq!(reply.body["success"], false, "{who}: {}", reply.body);
    }
    assert!(scrape(&server).contains("# TYPE factory_connected_devices gauge"));

    // Without a metrics token the route is off for everyone.
    let (db, dir) = server.stop();
    let server = ServerProcess::start_with(db, dir, &[]);
    let admin = Api::admin(&server);
    for api in [Api::new(&server), admin] {
        let reply = api.call("GET", "/metrics", None, &[]);
        assert_eq!(reply.status, 403, "{}", reply.body);
        assert_eq!(reply.error_code(), "forbidden");
    }
}
