//! Device sessions, telemetry and the dashboard stream over real sockets, on both databases.

use std::time::{Duration, Instant};

use crate::common::scan;
use integration_tests::*;
use serde_json::{json, Value};

on_both_backends!(
    dashboard_gets_only_the_devices_it_subscribed_to,
    a_stalled_dashboard_does_not_delay_other_devices,
    telemetry_is_stored_and_listed,
    oversized_frames_and_floods_are_refused,
    devices_can_be_renamed_moved_and_deleted,
    query_tokens_can_be_turned_off,
);

fn dashboard(server: &ServerProcess, api: &Api) -> WsClient {
    let mut socket = ws_connect(&server.ws_url("/ws/dashboard"), api.token()).expect("dashboard");
    let hello = ws_next_json(&mut socket).expect("hello");
    assert_eq!(hello["type"], "hello");
    socket
}

/// Frames that arrive within `window`, answering pings on the way.
fn collect(socket: &mut WsClient, window: Duration) -> Vec<Value> {
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_mut() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
    }
    let end = Instant::now() + window;
    let mut frames = Vec::new();
    while Instant::now() < end {
        match socket.read() {
            Ok(tungstenite::Message::Text(t)) => frames.push(serde_json::from_str(&t).unwrap()),
            Ok(tungstenite::Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    frames
}

fn dashboard_gets_only_the_devices_it_subscribed_to(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let mut a = FakeDevice::connect(&server, &api, "dev-a");
    let mut b = FakeDevice::connect(&server, &api, "dev-b");
    let viewer_id = api.create_user("watcher", "watcher-password", "VIEWER");
    assert!(!viewer_id.is_empty());
    let viewer = Api::login(&server, "watcher", "watcher-password");
    let mut dash = dashboard(&server, &viewer);
    ws_send_json(
        &mut dash,
        &json!({"type": "subscribe", "deviceIds": ["dev-a"], "eventTypes": ["scan", "log_line"]}),
    );
    std::thread::sleep(Duration::from_millis(300));

    for i in 0..5 {
        a.send(&scan(&format!("A{i}")));
        b.send(&scan(&format!("B{i}")));
    }
    a.send(&json!({"type": "alert", "severity": "warning", "message": "filtered by type", "ts": now_rfc3339()}));
    a.send(
        &json!({"type": "log_line", "line": "hello from a", "level": "INFO", "ts": now_rfc3339()}),
    );
    let frames = collect(&mut dash, Duration::from_millis(1500));
    let events: Vec<&Value> = frames.iter().filter(|f| f["type"] != "dropped").collect();
    assert!(
        events.iter().all(|f| f["deviceId"] == "dev-a"),
        "got another device's event: {frames:?}"
    );
    let codes: Vec<&str> = events
        .iter()
        .filter(|f| f["type"] == "scan")
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["A0", "A1", "A2", "A3", "A4"]);
    assert!(events
        .iter()
        .any(|f| f["type"] == "log_line" && f["line"] == "hello from a"));
    assert!(
        !events.iter().any(|f| f["type"] == "alert"),
        "alert was not subscribed"
    );

    // A later subscribe replaces the earlier: now only dev-b, every type.
    ws_send_json(
        &mut dash,
        &json!({"type": "subscribe", "deviceIds": ["dev-b"]}),
    );
    std::thread::sleep(Duration::from_millis(300));
    a.send(&scan("A-late"));
    b.send(&scan("B-late"));
    let frames = collect(&mut dash, Duration::from_millis(1000));
    let codes: Vec<&str> = frames.iter().filter_map(|f| f["code"].as_str()).collect();
    assert_eq!(codes, ["B-late"]);

    // A bad frame gets an error, and the stream goes on.
    dash.send(tungstenite::Message::Text("{not json".into()))
        .unwrap();
    let frames = collect(&mut dash, Duration::from_millis(500));
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "error" && f["code"] == "invalid_frame"),
        "{frames:?}"
    );
    // A disconnect reaches dashboards as an OFFLINE status.
    drop(b);
    let frames = collect(&mut dash, Duration::from_millis(1500));
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "status" && f["deviceId"] == "dev-b" && f["status"] == "OFFLINE"),
        "{frames:?}"
    );
    // Devices' tokens are refused on the dashboard socket.
    let device_token = api.enroll("dev-c");
    assert_eq!(
        ws_connect(&server.ws_url("/ws/dashboard"), Some(&device_token)).err(),
        Some(401)
    );
}

fn round_trips(api: &Api, device: &str, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            let reply = api.post(
                &format!("/api/v1/devices/{device}/commands"),
                &json!({"command": {"type": "force_sync"}, "timeoutMs": 10000}),
            );
            assert_eq!(reply.data()["status"], "SUCCESS", "{}", reply.body);
            start.elapsed()
        })
        .collect()
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Every round trip, with or without a stalled dashboard, stays under this.
const ROUND_TRIP_BOUND: Duration = Duration::from_millis(2000);

fn a_stalled_dashboard_does_not_delay_other_devices(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let quiet = FakeDevice::connect(&server, &api, "quiet").answer_commands();
    let baseline = round_trips(&api, "quiet", 30);

    // A dashboard that subscribes to everything and then never reads.
    let mut stalled = dashboard(&server, &api);
    ws_send_json(&mut stalled, &json!({"type": "subscribe"}));
    std::thread::sleep(Duration::from_millis(200));

    // Noisy devices push large log lines fast enough to fill the stalled socket many times.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let line = "x".repeat(30_000);
    let noisy: Vec<_> = (0..3)
        .map(|i| {
            let mut dev = FakeDevice::connect(&server, &api, &format!("noisy-{i}"));
            let (stop, line) = (stop.clone(), line.clone());
            std::thread::spawn(move || {
                let mut sent = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    dev.send(&json!({"type": "log_line", "line": line, "level": "INFO", "ts": now_rfc3339()}));
                    sent += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                (sent, dev)
            })
        })
        .collect();
    // Connected now: the REST client is busy with the round trips below, and left idle it
    // could meet a keep-alive connection the server is closing.
    let mut trigger = FakeDevice::connect(&server, &api, "trigger");
    let noise_started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    // The round trips run beside the noise, so that the dashboard reads again at 6 s however
    // long they take: a dashboard that takes nothing for 10 s is cut
    // (`dashboard::SEND_TIMEOUT`), and then it would hear nothing of what it missed.
    let trips = {
        let api = Api::new(&server).with_token(api.token().unwrap());
        std::thread::spawn(move || round_trips(&api, "quiet", 30))
    };
    // Enough noise, whatever the round trips took, to overflow the stalled socket's buffers.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(noise_started.elapsed()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total_sent = 0;
    let _devices: Vec<FakeDevice> = noisy
        .into_iter()
        .map(|h| {
            let (sent, dev) = h.join().unwrap();
            total_sent += sent;
            dev
        })
        .collect();

    // Reading again, the dashboard learns how much it missed.
    let reader = std::thread::spawn(move || {
        let mut dropped = 0u64;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && dropped == 0 {
            for f in collect(&mut stalled, Duration::from_millis(500)) {
                if f["type"] == "dropped" {
                    dropped += f["count"].as_u64().unwrap();
                }
            }
        }
        dropped
    });
    for i in 0..20 {
        trigger.send(&scan(&format!("after-{i}")));
        std::thread::sleep(Duration::from_millis(200));
    }
    let dropped = reader.join().unwrap();
    let stalled_trips = trips.join().unwrap();

    eprintln!(
        "round trip without stalled dashboard: p50 {:?} max {:?}; with it ({} x 30 KB events in flight): p50 {:?} max {:?}",
        percentile(&baseline, 0.5),
        percentile(&baseline, 1.0),
        total_sent,
        percentile(&stalled_trips, 0.5),
        percentile(&stalled_trips, 1.0),
    );
    eprintln!("the stalled dashboard was told it missed {dropped} events");
    assert!(
        total_sent > 200,
        "the noise must be large enough to fill the stalled socket"
    );
    for trips in [&baseline, &stalled_trips] {
        assert!(
            percentile(trips, 1.0) < ROUND_TRIP_BOUND,
            "a round trip took {:?}",
            percentile(trips, 1.0)
        );
    }
    assert!(dropped > 0);
    drop(quiet);
}

fn telemetry_is_stored_and_listed(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let mut dev = FakeDevice::connect(&server, &api, "edge-tel");
    dev.send(&json!({"type": "status", "status": "ONLINE", "version": "9.9.9", "bootId": "boot-1", "runId": "run-1",
                     "metrics": {"cpu": 12, "connectionMode": "VIA_LOCAL_SERVER", "queueDepth": 4}, "ts": now_rfc3339()}));
    dev.send(&json!({"type": "log_line", "line": "disk almost full", "level": "ERROR", "ts": now_rfc3339()}));
    dev.send(&json!({"type": "log_line", "line": "started", "level": "INFO", "ts": now_rfc3339()}));
    dev.send(&scan("0104601234567893"));
    dev.send(&json!({"type": "print", "code": "0104601234567893", "ts": now_rfc3339()}));
    dev.send(&json!({"type": "alert", "severity": "error", "message": "printer jam", "ts": now_rfc3339()}));

    wait_until(Duration::from_secs(5), "logs and events stored", || {
        let logs = api.get("/api/v1/devices/edge-tel/logs");
        let events = api.get("/api/v1/devices/edge-tel/events");
        logs.data()["total"] == 2 && events.data()["total"] == 3
    });
    let errors = api.get("/api/v1/devices/edge-tel/logs?level=error");
    assert_eq!(errors.data()["total"], 1);
    assert_eq!(errors.data()["items"][0]["line"], "disk almost full");
    let alerts = api.get("/api/v1/devices/edge-tel/events?type=alert");
    assert_eq!(
        alerts.data()["items"][0]["payload"]["message"],
        "printer jam"
    );
    let future = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        api.get(&format!("/api/v1/devices/edge-tel/logs?since={future}"))
            .data()["total"],
        0
    );
    assert_eq!(
        api.get("/api/v1/devices/edge-tel/logs?limit=1").data()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(api.get("/api/v1/devices/nobody/logs").status, 404);

    let device = api.get("/api/v1/devices/edge-tel");
    let d = device.data();
    assert_eq!(d["version"], "9.9.9");
    assert_eq!(d["bootId"], "boot-1");
    assert_eq!(d["runId"], "run-1");
    assert_eq!(d["connectionMode"], "VIA_LOCAL_SERVER");
    assert_eq!(d["metrics"]["queueDepth"], 4);
    assert_eq!(d["remoteAddr"], "127.0.0.1");

    // A device with production off reports DISABLED; back on, ONLINE; gone, OFFLINE.
    dev.send(&json!({"type": "status", "status": "DISABLED", "ts": now_rfc3339()}));
    wait_until(Duration::from_secs(5), "DISABLED", || {
        api.device_status("edge-tel").as_deref() == Some("DISABLED")
    });
    assert_eq!(
        api.get("/api/v1/devices?status=DISABLED").data()["total"],
        1
    );
    // A status without a version keeps the stored one.
    assert_eq!(
        api.get("/api/v1/devices/edge-tel").data()["version"],
        "9.9.9"
    );
    dev.send(&json!({"type": "status", "status": "ONLINE", "ts": now_rfc3339()}));
    wait_until(Duration::from_secs(5), "ONLINE", || {
        api.device_status("edge-tel").as_deref() == Some("ONLINE")
    });
    drop(dev);
    wait_until(Duration::from_secs(5), "OFFLINE", || {
        api.device_status("edge-tel").as_deref() == Some("OFFLINE")
    });
}

fn oversized_frames_and_floods_are_refused(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let bystander = FakeDevice::connect(&server, &api, "bystander").answer_commands();
    let mut dev = FakeDevice::connect(&server, &api, "flooder");

    // Too large: refused with the reason, and the session stays.
    let big = json!({"type": "log_line", "line": "y".repeat(70_000), "level": "INFO", "ts": now_rfc3339()});
    dev.send(&big);
    let err = ws_next_json(&mut dev.socket).expect("an error frame");
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "frame_too_large");
    let connected = api.get("/api/v1/devices/connected");
    let me = connected.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["deviceId"] == "flooder")
        .cloned()
        .unwrap();
    assert_eq!(me["refusedFrames"], 1);

    // A flood: past the rate the device hears why, and past the limit it is cut off.
    let mut sent = 0;
    let close_code = loop {
        if sent < 5000 {
            dev.send(&scan("flood"));
            sent += 1;
            continue;
        }
        match dev.socket.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("expected the server to close the flooding socket, got {e}"),
        }
    };
    assert_eq!(close_code, Some(4429));
    // The other device was not affected.
    assert!(percentile(&round_trips(&api, "bystander", 10), 1.0) < ROUND_TRIP_BOUND);
    wait_until(Duration::from_secs(5), "the flooder OFFLINE", || {
        api.device_status("flooder").as_deref() == Some("OFFLINE")
    });
    drop(bystander);
}

fn devices_can_be_renamed_moved_and_deleted(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let mut dev = FakeDevice::connect(&server, &api, "edge-mv");
    let patched = api.patch(
        "/api/v1/devices/edge-mv",
        &json!({"name": "Capper 3", "productionLineId": "line-9"}),
    );
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.data()["name"], "Capper 3");
    let found = api.get("/api/v1/devices?productionLineId=line-9&q=capper");
    assert_eq!(found.data()["total"], 1);
    let cleared = api.patch(
        "/api/v1/devices/edge-mv",
        &json!({"productionLineId": null}),
    );
    assert!(cleared.data()["productionLineId"].is_null());
    assert_eq!(cleared.data()["name"], "Capper 3", "absent fields stay");
    let bad = api.patch("/api/v1/devices/edge-mv", &json!({"name": ""}));
    assert_eq!(bad.status, 400);
    let unknown_field = api.patch("/api/v1/devices/edge-mv", &json!({"status": "ONLINE"}));
    assert_eq!(unknown_field.status, 400);
    assert_eq!(api.get("/api/v1/devices?status=SLEEPING").status, 400);

    let operator_id = api.create_user("op", "operator-password", "OPERATOR");
    assert!(!operator_id.is_empty());
    let op = Api::login(&server, "op", "operator-password");
    assert_eq!(op.delete("/api/v1/devices/edge-mv").status, 403);
    assert_eq!(api.delete("/api/v1/devices/edge-mv").status, 200);
    assert_eq!(api.get("/api/v1/devices/edge-mv").status, 404);
    // Its session is closed and its token no longer opens one.
    let closed = loop {
        match dev.socket.read() {
            Ok(tungstenite::Message::Close(_)) | Err(_) => break true,
            Ok(_) => {}
        }
    };
    assert!(closed);
    let audit = api.get("/api/v1/audit?action=device.");
    let actions: Vec<&str> = audit.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"device.update") && actions.contains(&"device.delete"),
        "{actions:?}"
    );
}

fn query_tokens_can_be_turned_off(backend: Backend) {
    // On by default: a seed device's `?token=` works.
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let token = api.enroll("edge-q");
    let mut socket = ws_connect(&server.ws_url(&format!("/ws/device?token={token}")), None)
        .expect("query token accepted");
    assert_eq!(ws_next_json(&mut socket).unwrap()["type"], "hello");
    drop(socket);
    let (db, dir) = server.stop();

    let server = ServerProcess::start_with(db, dir, &["--allow-query-token=false"]);
    assert_eq!(
        ws_connect(&server.ws_url(&format!("/ws/device?token={token}")), None).err(),
        Some(401)
    );
    let user = Api::admin(&server);
    let user_token = user.token().unwrap().to_owned();
    assert_eq!(
        ws_connect(
            &server.ws_url(&format!("/ws/dashboard?token={user_token}")),
            None
        )
        .err(),
        Some(401)
    );
    // The header still works.
    let mut socket =
        ws_connect(&server.ws_url("/ws/device"), Some(&token)).expect("header accepted");
    assert_eq!(ws_next_json(&mut socket).unwrap()["type"], "hello");
}
