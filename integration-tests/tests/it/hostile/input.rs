//! Hostile input (issue 15, findings 3, 6 and 9): NUL characters wherever input enters, sync
//! records for another company or of absurd size, error answers actix used to give in plain
//! text, a database that goes away under a sync, and the server's files on disk.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

const OTA_SECRET: &str = "hostile-input-ota-secret";

on_both_backends!(
    nul_in_every_kind_of_input_is_a_400_and_the_server_carries_on,
    a_nul_in_a_device_frame_is_an_error_frame_and_the_session_stays,
    a_device_cannot_sync_records_for_another_company,
    an_oversized_sync_record_is_refused_and_nothing_is_stored,
    every_error_answer_is_the_json_envelope,
);

fn bottle(id: &str, company: &str) -> Value {
    json!({"id": id, "kind": "bottle", "companyId": company,
           "payload": {"code": format!("code-{id}")}, "createdAt": "2026-11-25T10:00:00Z"})
}

/// Asserts a 400 refusing a NUL, with `code`, in the JSON envelope.
fn assert_nul_refused(reply: &Reply, code: &str, what: &str) {
    assert_eq!(reply.status, 400, "{what}: {} {}", reply.status, reply.body);
    assert_eq!(reply.error_code(), code, "{what}: {}", reply.body);
    let message = reply.body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("U+0000"), "{what}: {}", reply.body);
}

fn count(server: &ServerProcess, sql: &str) -> i64 {
    server.query_ints(sql)[0]
}

fn nul_in_every_kind_of_input_is_a_400_and_the_server_carries_on(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    let device = Api::new(&server).with_token(&admin.enroll("edge-nul"));
    let anonymous = Api::new(&server);

    // serde_json writes U+0000 as the escape `\u0000`, as a hostile client would.
    let login = anonymous.post(
        "/api/v1/auth/login",
        &json!({"username": "ad\u{0}min", "password": "whatever"}),
    );
    assert_nul_refused(&login, "invalid_body", "login body");

    for path in [
        "/api/v1/devices/edge%00nul",
        "/api/v1/devices/edge-nul%00/commands",
        "/api/v1/device-groups/%00",
        "/api/v1/users/%00",
    ] {
        assert_nul_refused(&admin.get(path), "invalid_parameter", path);
    }
    let enroll = anonymous.post_with_header(
        "/api/v1/devices/edge%00x/token?name=x",
        ("X-Enrollment-Key", ENROLLMENT_KEY),
    );
    assert_nul_refused(&enroll, "invalid_parameter", "device id of an enrollment");

    for query in [
        "/api/v1/devices?companyId=acme%00",
        "/api/v1/devices/edge-nul/logs?level=%00",
        "/api/v1/audit?action=user.%00",
        "/api/v1/devices/edge-nul/commands?status=%00",
    ] {
        assert_nul_refused(&admin.get(query), "invalid_parameter", query);
    }
    let enroll = anonymous.post_with_header(
        "/api/v1/devices/edge-q/token?companyId=acme%00",
        ("X-Enrollment-Key", ENROLLMENT_KEY),
    );
    assert_nul_refused(&enroll, "invalid_parameter", "companyId of an enrollment");

    let bodies = [
        (
            "/api/v1/devices/edge-nul/commands",
            json!({"command": {"type": "disable_device", "reason": "x\u{0}y"}, "confirm": true}),
        ),
        (
            "/api/v1/devices/commands",
            json!({"deviceIds": ["edge-nul"], "command": {"type": "push_config",
                   "patch": {"nested": {"deeper": ["ok", "\u{0}"]}}}}),
        ),
        ("/api/v1/device-groups", json!({"name": "line\u{0}1"})),
        (
            "/api/v1/users",
            json!({"username": "u", "password": "long-enough-password", "role": "VIEWER",
                   "extra\u{0}key": 1}),
        ),
    ];
    for (path, body) in &bodies {
        assert_nul_refused(&admin.post(path, body), "invalid_body", path);
    }
    let patch = admin.patch("/api/v1/devices/edge-nul", &json!({"name": "\u{0}"}));
    assert_nul_refused(&patch, "invalid_body", "device rename");

    for record in [
        bottle("rec-\u{0}", "company-1"),
        bottle("rec-1", "company-\u{0}"),
        json!({"id": "rec-2", "kind": "bottle", "companyId": "company-1",
               "payload": {"code": "a\u{0}b"}, "createdAt": "2026-11-25T10:00:00Z"}),
    ] {
        let reply = device.post("/api/v1/sync", &json!({"records": [record]}));
        assert_nul_refused(&reply, "invalid_body", "sync record");
    }
    assert_eq!(count(&server, "SELECT COUNT(*) FROM cloud_sync_queue"), 0);
    assert_eq!(count(&server, "SELECT COUNT(*) FROM device_groups"), 0);

    // The server answers as before, for the same callers.
    assert_eq!(Api::new(&server).get("/healthz").status, 200);
    Api::admin(&server);
    let group = admin.post("/api/v1/device-groups", &json!({"name": "line 1"}));
    assert_eq!(group.status, 201, "{}", group.body);
    let synced = device.post(
        "/api/v1/sync",
        &json!({"records": [bottle("rec-ok", "company-1")]}),
    );
    assert_eq!(synced.data()["accepted"], 1);
    assert_eq!(admin.get("/api/v1/devices/edge-nul").status, 200);
}

/// The next text frame within `timeout` (the server's pings do not count), `None` if none.
fn next_frame(socket: &mut WsClient, timeout: Duration) -> Option<Value> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(tungstenite::Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
    None
}

fn a_nul_in_a_device_frame_is_an_error_frame_and_the_session_stays(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    let mut device = FakeDevice::connect(&server, &admin, "edge-frame");

    // A NUL line and a good one right behind it: they would share a telemetry batch, which
    // PostgreSQL refused whole.
    device.send(
        &json!({"type": "log_line", "line": "bad \u{0} line", "level": "INFO",
                        "ts": now_rfc3339()}),
    );
    device.send(
        &json!({"type": "log_line", "line": "the good line", "level": "INFO",
                        "ts": now_rfc3339()}),
    );
    let error = next_frame(&mut device.socket, Duration::from_secs(15)).expect("an error frame");
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "invalid_frame", "{error}");
    assert!(
        error["message"].as_str().unwrap_or("").contains("U+0000"),
        "{error}"
    );
    device.send(
        &json!({"type": "status", "status": "ONLINE", "version": "1.0\u{0}",
                        "ts": now_rfc3339()}),
    );
    let error = next_frame(&mut device.socket, Duration::from_secs(15)).expect("an error frame");
    assert_eq!(error["code"], "invalid_frame", "{error}");

    // The session stays: its next frames are taken.
    device.send(
        &json!({"type": "status", "status": "ONLINE", "version": "1.2.3",
                        "ts": now_rfc3339()}),
    );
    wait_until(Duration::from_secs(20), "the good line stored", || {
        let logs = admin.get("/api/v1/devices/edge-frame/logs");
        logs.data()["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|l| l["line"] == "the good line"))
    });
    wait_until(Duration::from_secs(20), "the good status stored", || {
        admin.get("/api/v1/devices/edge-frame").data()["version"] == "1.2.3"
    });
    let logs = admin.get("/api/v1/devices/edge-frame/logs");
    assert_eq!(
        logs.data()["total"],
        1,
        "the NUL line is not stored: {}",
        logs.body
    );
    assert_eq!(admin.device_status("edge-frame").as_deref(), Some("ONLINE"));
}

fn a_device_cannot_sync_records_for_another_company(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    // `enroll` gives the device company-1; another device belongs to company-2.
    let device = Api::new(&server).with_token(&admin.enroll("edge-c1"));
    admin.post_with_header(
        "/api/v1/devices/edge-c2/token?companyId=company-2",
        ("X-Enrollment-Key", ENROLLMENT_KEY),
    );

    let mixed = json!({"records": [bottle("c1-a", "company-1"), bottle("c2-a", "company-2")]});
    let refused = device.post("/api/v1/sync", &mixed);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.error_code(), "company_mismatch");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("records[1]"), "{message}");
    let foreign = device.post(
        "/api/v1/sync",
        &json!({"records": [bottle("c2-b", "company-2")]}),
    );
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    assert_eq!(foreign.error_code(), "company_mismatch");

    // Nothing of either batch was stored or queued, for either company.
    for table in ["aggregated_bottles", "cloud_sync_queue"] {
        assert_eq!(count(&server, &format!("SELECT COUNT(*) FROM {table}")), 0);
    }
    let status = admin.get("/api/v1/sync/status");
    assert!(
        status.data()["companies"].get("company-2").is_none(),
        "{}",
        status.body
    );

    // A device enrolled without a company writes for none.
    let homeless = Api::new(&server).with_token(
        admin
            .post_with_header(
                "/api/v1/devices/edge-none/token",
                ("X-Enrollment-Key", ENROLLMENT_KEY),
            )
            .data()["token"]
            .as_str()
            .unwrap(),
    );
    let reply = homeless.post(
        "/api/v1/sync",
        &json!({"records": [bottle("n-a", "company-1")]}),
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.error_code(), "company_mismatch");

    // The device's own records are taken, once.
    let own = json!({"records": [bottle("c1-a", "company-1"), bottle("c1-b", "company-1")]});
    assert_eq!(device.post("/api/v1/sync", &own).data()["accepted"], 2);
    assert_eq!(
        count(
            &server,
            "SELECT COUNT(*) FROM cloud_sync_queue WHERE company_id = 'company-1'"
        ),
        2
    );
    assert_eq!(count(&server, "SELECT COUNT(*) FROM cloud_sync_queue"), 2);
}

fn an_oversized_sync_record_is_refused_and_nothing_is_stored(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    let device = Api::new(&server).with_token(&admin.enroll("edge-big"));

    let mut big = bottle("big-1", "company-1");
    big["payload"]["blob"] = json!("x".repeat(15 * 1024 * 1024));
    let reply = device.post(
        "/api/v1/sync",
        &json!({"records": [bottle("small-1", "company-1"), big]}),
    );
    assert_eq!(reply.status, 413, "{}", reply.status);
    assert_eq!(reply.error_code(), "payload_too_large");
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("records[1]") && message.contains("65536"),
        "{message}"
    );

    // A record just over 64 KiB is refused too; one well under it is taken.
    let mut over = bottle("over-1", "company-1");
    over["payload"]["blob"] = json!("x".repeat(65 * 1024));
    let reply = device.post("/api/v1/sync", &json!({"records": [over]}));
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(count(&server, "SELECT COUNT(*) FROM aggregated_bottles"), 0);
    assert_eq!(count(&server, "SELECT COUNT(*) FROM cloud_sync_queue"), 0);

    let mut fits = bottle("fits-1", "company-1");
    fits["payload"]["blob"] = json!("x".repeat(60 * 1024));
    let batch = json!({"records": [fits, bottle("small-1", "company-1")]});
    assert_eq!(device.post("/api/v1/sync", &batch).data()["accepted"], 2);
}

/// A request sent with reqwest directly, answered as (status, content type, body text).
fn raw(request: reqwest::blocking::RequestBuilder) -> (u16, String, String) {
    let resp = request.send().expect("http request");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, content_type, resp.text().unwrap_or_default())
}

fn assert_envelope(answer: &(u16, String, String), status: u16, code: &str, what: &str) {
    let (got, content_type, text) = answer;
    assert_eq!(*got, status, "{what}: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "{what}: {content_type} {text}"
    );
    let body: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("{what}: {text}"));
    assert_eq!(body["success"], false, "{what}: {text}");
    assert_eq!(body["error"]["code"], code, "{what}: {text}");
    assert!(body["error"]["message"].is_string(), "{what}: {text}");
}

fn every_error_answer_is_the_json_envelope(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--ota-admin-secret", OTA_SECRET],
    );
    let admin = Api::admin(&server);
    admin.enroll("edge-env");
    let token = admin.token().unwrap().to_owned();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = |path: &str| format!("{}{path}", server.base_url);
    let eleven_mb = format!("{{\"pad\": \"{}\"}}", "x".repeat(11 * 1024 * 1024));

    for path in [
        "/api/v1/devices/edge-env/commands",
        "/api/v1/devices/commands",
        "/api/v1/device-groups",
        "/api/v1/device-groups/some-group/commands",
    ] {
        let answer = raw(client
            .post(url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(eleven_mb.clone()));
        assert_envelope(&answer, 413, "payload_too_large", path);
    }
    let answer = raw(client
        .post(url("/admin/generate_token"))
        .header("X-Admin-Secret", OTA_SECRET)
        .header("content-type", "application/json")
        .body(eleven_mb.clone()));
    assert_envelope(&answer, 413, "payload_too_large", "generate_token");

    // The wrong content type, a body that is not JSON, a socket route without the upgrade.
    let answer = raw(client
        .post(url("/api/v1/device-groups"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("{\"name\": \"x\"}"));
    assert_envelope(&answer, 400, "invalid_body", "text/plain body");
    let answer = raw(client
        .post(url("/api/v1/devices/edge-env/commands"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json"));
    assert_envelope(&answer, 400, "invalid_body", "broken JSON");
    let answer = raw(client.get(url("/ws/device")));
    assert_envelope(
        &answer,
        400,
        "bad_request",
        "device socket without the upgrade",
    );
    let answer = raw(client.get(url("/ws/dashboard")).bearer_auth(&token));
    assert_envelope(
        &answer,
        400,
        "bad_request",
        "dashboard socket without the upgrade",
    );
    let answer = raw(client.get(url("/no/such/route")));
    assert_envelope(&answer, 404, "not_found", "unknown route");
    // A route's path under another method: 405 with the methods it has (issue 18).
    let response = client.delete(url("/healthz")).send().expect("http request");
    assert_eq!(response.headers()["allow"], "GET");
    let answer = (
        response.status().as_u16(),
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned(),
        response.text().unwrap(),
    );
    assert_envelope(&answer, 405, "method_not_allowed", "wrong method");

    // Board routes keep their plain refusals.
    let (status, content_type, _) = raw(client.get(url("/firmware/proj/latest")));
    assert_eq!(status, 401);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
}

/// A TCP proxy between the server and PostgreSQL that can cut the connection carrying a
/// given byte string (a record id in a query's parameters: the connection dies mid-query), or
/// go down: close every connection and refuse new ones until it comes back up.
struct PgProxy {
    addr: String,
    down: Arc<AtomicBool>,
    cut_marker: Arc<Mutex<Option<Vec<u8>>>>,
    cuts: Arc<AtomicU32>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl PgProxy {
    fn start(upstream: String) -> PgProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let proxy = PgProxy {
            addr: listener.local_addr().unwrap().to_string(),
            down: Arc::default(),
            cut_marker: Arc::default(),
            cuts: Arc::default(),
            live: Arc::default(),
        };
        let (down, marker, cuts, live) = (
            proxy.down.clone(),
            proxy.cut_marker.clone(),
            proxy.cuts.clone(),
            proxy.live.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                if down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut live = live.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                let (marker, cuts) = (marker.clone(), cuts.clone());
                std::thread::spawn(move || pump(client, server, &marker, &cuts));
            }
        });
        proxy
    }

    /// The next connection to send `marker` upstream is closed instead.
    fn cut_on(&self, marker: &str) {
        *self.cut_marker.lock().unwrap() = Some(marker.as_bytes().to_vec());
    }

    fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn come_up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn pump(
    mut client: TcpStream,
    mut server: TcpStream,
    marker: &Mutex<Option<Vec<u8>>>,
    cuts: &AtomicU32,
) {
    let (mut from_server, mut to_client) =
        (server.try_clone().unwrap(), client.try_clone().unwrap());
    let downward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Both);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let hit = {
            let mut marker = marker.lock().unwrap();
            let hit = marker
                .as_ref()
                .is_some_and(|m| chunk.windows(m.len()).any(|w| w == m.as_slice()));
            if hit {
                *marker = None;
            }
            hit
        };
        if hit {
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if server.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
    let _ = downward.join();
}

/// `host:port` of a `postgres://user@host:port/db` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

fn pg_count(url: &str, sql: &str) -> i64 {
    let mut client =
        ::postgres::Client::connect(url, ::postgres::NoTls).expect("connect to test db");
    client.query_one(sql, &[]).expect("query").get(0)
}

fn assert_unavailable(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 503, "{what}: {}", reply.body);
    assert_eq!(reply.error_code(), "database_unavailable", "{what}");
    let retry = reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        retry.is_some_and(|s| s > 0),
        "{what}: Retry-After {retry:?}"
    );
}

#[test]
fn postgres_lost_under_a_sync_is_503_and_the_batch_is_stored_once_later() {
    let pg = TestDb::new(Backend::Postgres);
    let direct = pg.url().unwrap();
    let proxy = PgProxy::start(host_port(&direct));
    // Without TLS, so that the proxy sees the queries' parameters.
    let via_proxy = format!(
        "{}?sslmode=disable",
        direct.replacen(&host_port(&direct), &proxy.addr, 1)
    );
    // The server's database is the proxied PostgreSQL one; its own `TestDb` stays unused.
    let server = ServerProcess::start_with(
        TestDb::new(Backend::Sqlite),
        TempDir::new("factory-data"),
        &["--database-url", &via_proxy],
    );
    let admin = Api::admin(&server);
    let device = Api::new(&server).with_token(&admin.enroll("edge-pg"));
    let first = json!({"records": [bottle("a-1", "company-1")]});
    assert_eq!(device.post("/api/v1/sync", &first).data()["accepted"], 1);

    // The connection dies in the middle of the batch's transaction.
    let batch =
        json!({"records": [bottle("lost-b-1", "company-1"), bottle("lost-b-2", "company-1")]});
    proxy.cut_on("lost-b-1");
    let reply = device.post("/api/v1/sync", &batch);
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the proxy cut a query: {} {}",
        reply.status,
        reply.body
    );
    assert_unavailable(&reply, "sync cut mid-query");
    let stored = "SELECT COUNT(*) FROM cloud_sync_queue WHERE id LIKE 'lost-b-%'";
    assert_eq!(
        pg_count(&direct, stored),
        0,
        "the cut transaction left nothing"
    );

    // PostgreSQL unreachable: every route that needs it answers 503, not only sync.
    proxy.go_down();
    assert_unavailable(&device.post("/api/v1/sync", &batch), "sync while down");
    assert_unavailable(&admin.get("/api/v1/devices"), "device list while down");

    // Back: the same batch is taken, once.
    proxy.come_up();
    wait_until(
        Duration::from_secs(30),
        "the server reaching PostgreSQL",
        || Api::new(&server).get("/healthz").status == 200,
    );
    let again = device.post("/api/v1/sync", &batch);
    assert_eq!(again.data()["accepted"], 2, "{}", again.body);
    assert_eq!(again.data()["duplicates"], 0);
    let resent = device.post("/api/v1/sync", &batch);
    assert_eq!(resent.data()["duplicates"], 2);
    assert_eq!(pg_count(&direct, stored), 2);
    assert_eq!(
        pg_count(
            &direct,
            "SELECT COUNT(*) FROM aggregated_bottles WHERE id LIKE 'lost-b-%'"
        ),
        2
    );
}

#[test]
fn the_servers_sqlite_files_and_secret_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("factory-private");
    let nested = dir.path().join("made-by-the-server").join("db");
    let db_path = nested.join("factory.db");
    let url = format!("sqlite://{}", db_path.display());
    let server = ServerProcess::start_with(
        TestDb::new(Backend::Sqlite),
        TempDir::new("factory-data"),
        &["--database-url", &url],
    );
    let admin = Api::admin(&server);
    admin.enroll("edge-files");
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let wal = nested.join("factory.db-wal");
    let shm = nested.join("factory.db-shm");
    wait_until(Duration::from_secs(10), "the WAL files", || {
        wal.exists() && shm.exists()
    });
    for path in [&db_path, &wal, &shm] {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    assert_eq!(mode(&nested), 0o700, "a directory the server created");
    assert_eq!(mode(&server.data_dir.path().join("jwt-secret")), 0o600);
}
