//! The generated-request run: every route of `server::ROUTES`, as every kind of caller, with
//! generated requests on both databases. Each route and caller gets a valid-shaped request
//! and hostile variants of it: an empty body, wrong JSON types, huge numbers, 1 MiB strings,
//! NUL bytes (in JSON strings, as `%00` in path segments and query values), unicode, deep
//! nesting, unknown fields, a wrong content type, garbage, path ids with `..`, `/` and
//! encoded slashes, and query filters with odd values.
//!
//! No answer may be a 5xx, except a 503 with `Retry-After` (the documented overload answer);
//! every refusal carries the JSON error body (but where there is no body to carry: HEAD, the
//! socket handshakes, and the OTA board routes, whose plain-text errors boards expect); the
//! server never drops a request unanswered nor panics, and still answers `/healthz` at the
//! end. The random choices come from one seed, printed, and `FUZZ_SEED` replaces it, so a
//! failure reproduces. Requests go over a plain TCP socket so that paths reach the server
//! exactly as written (an HTTP client would normalize `..` and reject `%00` before sending).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::b64url;
use integration_tests::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const JWT_SECRET: &str = "generated-run-jwt-secret-0123456789abcdef";
const OTA_SECRET: &str = "generated-run-ota-admin-secret";
const USER_PASSWORD: &str = "generated-user-password";
/// The seed unless `FUZZ_SEED` (decimal or `0x` hex) says otherwise.
const DEFAULT_SEED: u64 = 0x15_06e4;
/// Requests per route and caller: one valid-shaped, the rest hostile variants.
const PER_CALLER: usize = 5;
/// Length of the long strings: a body with one is just past the server's 1 MiB JSON limit.
/// A debug server takes most of a second to read one on a loaded machine, so each route that
/// takes a body gets one such request from the admin (or one of half the length, within the
/// limit, where the field's own bound must refuse it); other long strings are `SHORTER`.
const LONG: usize = 1 << 20;
const SHORTER: usize = 16 * 1024;

on_both_backends!(
    generated_requests_get_no_server_error,
    a_long_id_in_an_audited_request_is_no_server_error,
);

/// Found by the generated run on PostgreSQL: the audit row of a deployment request took the
/// request's `releaseId` as its indexed `target`, and an id of some kilobytes broke the index
/// (PostgreSQL refuses entries past about 2.7 KB), failing the request with a 500. The id is
/// now cut in the audit row; the request is refused for what it is, an unknown release.
fn a_long_id_in_an_audited_request_is_no_server_error(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    admin.enroll("edge-long-id");
    // Random text, since PostgreSQL compresses index entries and a repeated one would fit.
    let mut rng = StdRng::seed_from_u64(seed());
    let long_id: String = (0..16 * 1024)
        .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
        .collect();
    let reply = admin.post(
        "/api/v1/firmware/deployments",
        &json!({"releaseId": long_id, "deviceIds": ["edge-long-id"]}),
    );
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.error_code(), "release_not_found");
    // Recorded all the same, with the id cut.
    let audit = admin.get("/api/v1/audit?action=firmware.deploy");
    let items = audit.data()["items"].as_array().expect("audit items");
    let target = items
        .iter()
        .find(|i| {
            i["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("failure"))
        })
        .and_then(|i| i["target"].as_str())
        .unwrap_or_else(|| panic!("no failed firmware.deploy in {}", audit.body));
    assert!(target.len() <= 256, "a target of {} bytes", target.len());
    assert!(
        long_id.starts_with(target.trim_end_matches('…')),
        "{target}"
    );
    assert_eq!(admin.get("/healthz").status, 200);
}

/// Found by the configuration fuzz target (`server/tests/it/fuzz.rs`): a token lifetime of 2^63
/// seconds passed the settings check, and then every login panicked the worker serving it,
/// which dropped the connection unanswered. Now it is a bad setting like any other: the server
/// stops at start with a one-line reason and exit code 2 (`contract.md`).
#[test]
fn a_token_lifetime_past_any_clock_stops_the_server_at_start() {
    let (code, stderr) = refused_start(&["--user-token-ttl-secs", "9223372036854775807"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("user_token_ttl_secs"), "{stderr}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    Anonymous,
    Admin,
    Manager,
    Operator,
    Viewer,
    Device,
    Expired,
    Tampered,
}

const CALLERS: [Caller; 8] = [
    Caller::Anonymous,
    Caller::Admin,
    Caller::Manager,
    Caller::Operator,
    Caller::Viewer,
    Caller::Device,
    Caller::Expired,
    Caller::Tampered,
];

/// What a generated request does to the valid-shaped one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Valid,
    EmptyBody,
    WrongTypes,
    HugeNumbers,
    LongStrings,
    NulInBody,
    NulInPath,
    NulInQuery,
    Unicode,
    DeepNesting,
    UnknownFields,
    WrongContentType,
    Garbage,
    OddPathId,
    OddQuery,
}

const HOSTILE: [Kind; 14] = [
    Kind::EmptyBody,
    Kind::WrongTypes,
    Kind::HugeNumbers,
    Kind::LongStrings,
    Kind::NulInBody,
    Kind::NulInPath,
    Kind::NulInQuery,
    Kind::Unicode,
    Kind::DeepNesting,
    Kind::UnknownFields,
    Kind::WrongContentType,
    Kind::Garbage,
    Kind::OddPathId,
    Kind::OddQuery,
];

/// One request as it goes on the wire.
#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    pattern: &'static str,
    caller: Caller,
    kind: Kind,
    /// Path and query, exactly as sent.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// The request as a reader of the report can resend it, long bodies cut.
    fn show(&self) -> String {
        const SHOWN: usize = 300;
        let body = String::from_utf8_lossy(&self.body);
        let mut shown: String = body.chars().take(SHOWN).collect();
        if body.chars().count() > SHOWN {
            shown.push_str(&format!("… ({} bytes)", self.body.len()));
        }
        let target: String = self.target.chars().take(SHOWN).collect();
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.chars().take(80).collect::<String>()))
            .collect();
        format!(
            "{} {target} as {:?} [{:?}] headers {headers:?} body {shown:?}",
            self.method, self.caller, self.kind
        )
    }
}

/// An answer as read off the socket.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Sends `request` on a fresh connection and reads the whole answer.
fn send(addr: &str, request: &Request, token: Option<&str>) -> Result<Answer, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(60))))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        request.method,
        request.target,
        request.body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&request.body);
    // A server may answer (413, 401) before it has read a large body and close; the answer
    // is still there to read, so a failed write is not yet a failure.
    let written = stream.write_all(&bytes);
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        return Err(format!("no answer (write: {written:?}, read: {read:?})"));
    }
    parse_answer(&raw, request.method == "HEAD")
}

fn parse_answer(raw: &[u8], head_only: bool) -> Result<Answer, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "answer without a header end: {:?}",
                String::from_utf8_lossy(raw)
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let body = if head_only {
        Vec::new()
    } else if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size without an end")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size {
            return Err("chunk cut short".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

/// What the run knows of the server: tokens, and the ids of things that exist.
struct World {
    addr: String,
    tokens: BTreeMap<Caller, String>,
    patch_target: String,
    victim_users: Vec<String>,
    group_id: String,
    victim_group: String,
    release_id: String,
    victim_release: String,
    release_file: String,
    deployment_id: String,
    ota_token: String,
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn setup(server: &ServerProcess) -> World {
    let admin = Api::admin(server);
    let admin_id = admin.get("/api/v1/auth/me").data()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut tokens = BTreeMap::new();
    tokens.insert(Caller::Admin, admin.token().unwrap().to_owned());
    for (caller, role) in [
        (Caller::Manager, "MANAGER"),
        (Caller::Operator, "OPERATOR"),
        (Caller::Viewer, "VIEWER"),
    ] {
        let name = format!("gen-{}", role.to_lowercase());
        admin.create_user(&name, USER_PASSWORD, role);
        let api = Api::login(server, &name, USER_PASSWORD);
        tokens.insert(caller, api.token().unwrap().to_owned());
    }
    tokens.insert(Caller::Device, admin.enroll("edge-g"));
    admin.enroll("edge-h");
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64| {
        json!({"sub": admin_id, "scope": "user", "role": "ADMIN", "ver": 0,
               "jti": uuid::Uuid::new_v4().to_string(), "iat": now - 7200, "exp": exp})
    };
    tokens.insert(Caller::Expired, sign(&claims(now - 3600)));
    // A viewer's signature over admin claims.
    let viewer = tokens[&Caller::Viewer].clone();
    let parts: Vec<&str> = viewer.split('.').collect();
    tokens.insert(
        Caller::Tampered,
        format!(
            "{}.{}.{}",
            parts[0],
            b64url(claims(now + 3600).to_string().as_bytes()),
            parts[2]
        ),
    );

    let patch_target = admin.create_user("gen-patch-target", USER_PASSWORD, "VIEWER");
    let victim_users = (0..3)
        .map(|i| admin.create_user(&format!("gen-victim-{i}"), USER_PASSWORD, "VIEWER"))
        .collect();
    let group = |name: &str| {
        let reply = admin.post("/api/v1/device-groups", &json!({"name": name}));
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.data()["id"].as_str().unwrap().to_owned()
    };
    let group_id = group("gen-group");
    let victim_group = group("gen-victim-group");
    let members = admin.post(
        &format!("/api/v1/device-groups/{group_id}/members"),
        &json!({"deviceIds": ["edge-g"]}),
    );
    assert_eq!(members.status, 200, "{}", members.body);
    let queued = admin.post(
        "/api/v1/devices/edge-g/commands",
        &json!({"command": {"type": "force_sync", "id": "gen-setup-cmd"}, "queueIfOffline": true}),
    );
    assert_eq!(queued.status, 200, "{}", queued.body);

    let release = upload_release(server, &admin, "gen", "0.0.1", b"gen firmware".to_vec());
    let release_id = release["id"].as_str().unwrap().to_owned();
    let release_file = release["storedName"].as_str().unwrap().to_owned();
    let victim = upload_release(server, &admin, "gen", "0.0.2", b"victim".to_vec());
    let victim_release = victim["id"].as_str().unwrap().to_owned();
    admin.enroll("edge-fw");
    let deployment = admin.post(
        "/api/v1/firmware/deployments",
        &json!({"releaseId": release_id, "deviceIds": ["edge-fw"]}),
    );
    assert_eq!(deployment.status, 201, "{}", deployment.body);
    let deployment_id = deployment.data()["id"].as_str().unwrap().to_owned();
    let ota = Api::new(server).call(
        "POST",
        "/admin/generate_token",
        Some(&json!({"device_id": "board-gen", "project": "gen"})),
        &[("X-Admin-Secret", OTA_SECRET)],
    );
    assert_eq!(ota.status, 200, "{}", ota.body);
    let listed = Api::admin(server).put(
        "/api/v1/ota/projects/gen/devices/board-gen",
        &json!({"fwAccess": true}),
    );
    assert_eq!(listed.status, 200, "{}", listed.body);
    World {
        addr: server.base_url.trim_start_matches("http://").to_owned(),
        tokens,
        patch_target,
        victim_users,
        group_id,
        victim_group,
        release_id,
        victim_release,
        release_file,
        deployment_id,
        ota_token: ota.body["token"].as_str().unwrap().to_owned(),
    }
}

/// A command of a random type with fields that fit it.
fn command(rng: &mut StdRng, n: usize) -> Value {
    let id = format!("gen-{n}");
    match rng.gen_range(0..8) {
        0 => json!({"type": "force_sync", "id": id}),
        1 => json!({"type": "pull_logs", "id": id, "lines": rng.gen_range(1..500)}),
        2 => json!({"type": "push_config", "id": id, "patch": {"statusIntervalMs": 1000}}),
        3 => {
            json!({"type": "exec_shell", "id": id, "template": "disk_usage", "args": {"path": "/"}})
        }
        4 => json!({"type": "disable_device", "id": id, "reason": "generated"}),
        5 => json!({"type": "clear_queue", "id": id, "includeCompleted": rng.gen::<bool>()}),
        6 => json!({"type": "update_firmware", "id": id, "version": "9.9.9",
                    "url": "/api/v1/firmware/releases/x/artifact", "sha256": "ab".repeat(32), "size": 10}),
        _ => json!({"type": "restart_service", "id": id}),
    }
}

impl World {
    fn token(&self, caller: Caller) -> Option<&str> {
        self.tokens.get(&caller).map(String::as_str)
    }

    /// A valid value for the path parameter `name` of the route; destructive routes get
    /// victims, so the things the other requests use stay.
    fn param(&self, method: &str, pattern: &str, name: &str, n: usize) -> String {
        let destructive = method == "DELETE" && pattern.ends_with("{id}");
        match (pattern, name) {
            (p, "id") if p.starts_with("/api/v1/users") => {
                if destructive {
                    self.victim_users[n % self.victim_users.len()].clone()
                } else {
                    self.patch_target.clone()
                }
            }
            ("/api/v1/devices/{id}/token", _) => format!("edge-enroll-{n}"),
            (p, "id") if p.starts_with("/api/v1/devices") => {
                if destructive {
                    "edge-h".into()
                } else {
                    "edge-g".into()
                }
            }
            (_, "cmd_id") => "gen-setup-cmd".into(),
            (p, "id") if p.starts_with("/api/v1/device-groups") => {
                if destructive {
                    self.victim_group.clone()
                } else {
                    self.group_id.clone()
                }
            }
            (p, "id") if p.starts_with("/api/v1/firmware/releases") => {
                if destructive {
                    self.victim_release.clone()
                } else {
                    self.release_id.clone()
                }
            }
            (p, "id") if p.starts_with("/api/v1/firmware/deployments") => {
                self.deployment_id.clone()
            }
            (_, "project") => "gen".into(),
            (_, "device_id") => format!("gen-board-{n}"),
            (_, "file") => self.release_file.clone(),
            (_, "path:.*") => "js/app.js".into(),
            _ => panic!("no value for {{{name}}} of {method} {pattern}"),
        }
    }

    /// The query a valid request of the route carries.
    fn query(&self, method: &str, pattern: &str, n: usize) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match (method, pattern) {
            ("POST", "/api/v1/firmware/releases") => vec![
                ("version", format!("1.0.{n}")),
                ("filename", "g.bin".into()),
                ("project", "gen".into()),
            ],
            ("POST", "/api/v1/devices/{id}/token") => vec![
                ("name", format!("Enrolled%20{n}")),
                ("companyId", "company-1".into()),
            ],
            (_, p) if p.starts_with("/firmware/") => vec![
                ("token", self.ota_token.clone()),
                ("device_id", "board-gen".into()),
            ],
            ("GET", p)
                if !p.contains('{')
                    || p.ends_with("/logs")
                    || p.ends_with("/events")
                    || p.ends_with("/commands") =>
            {
                vec![("limit", "10".into()), ("offset", "0".into())]
            }
            _ => vec![],
        };
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Headers a valid request of the route carries besides the bearer token.
    fn headers(&self, pattern: &str) -> Vec<(String, String)> {
        match pattern {
            "/api/v1/devices/{id}/token" => {
                vec![("X-Enrollment-Key".into(), ENROLLMENT_KEY.into())]
            }
            "/admin/generate_token" | "/admin/revoke_token" => {
                vec![("X-Admin-Secret".into(), OTA_SECRET.into())]
            }
            _ => vec![],
        }
    }

    /// A valid-shaped body for the route, if it takes one.
    fn body(&self, rng: &mut StdRng, method: &str, pattern: &str, n: usize) -> Option<Value> {
        let roles = ["ADMIN", "MANAGER", "OPERATOR", "VIEWER"];
        Some(match (method, pattern) {
            ("POST", "/api/v1/auth/login") => {
                json!({"username": "admin", "password": ADMIN_PASSWORD})
            }
            // A wrong current password: a right one would spend the caller's token.
            ("POST", "/api/v1/auth/password") => {
                json!({"currentPassword": format!("not-it-{n}"), "newPassword": format!("new-password-{n}")})
            }
            ("POST", "/api/v1/auth/logout") => json!({}),
            ("POST", "/api/v1/users") => json!({
                "username": format!("gen-created-{n}"),
                "password": USER_PASSWORD,
                "role": roles.choose(rng).unwrap(),
            }),
            ("PATCH", "/api/v1/users/{id}") => {
                json!({"role": roles[1..].choose(rng).unwrap(), "disabled": false})
            }
            ("POST", "/api/v1/devices") => json!({
                "id": format!("gen-registered-{n}"),
                "name": format!("Registered {n}"),
                "companyId": "company-1",
            }),
            ("PATCH", "/api/v1/devices/{id}") => {
                json!({"name": format!("Line PC {n}"), "companyId": "company-1", "productionLineId": null})
            }
            ("POST", "/api/v1/devices/commands") => json!({
                "deviceIds": ["edge-g", "edge-fw"],
                "command": {"type": "force_sync"},
                "timeoutMs": 1000,
                "queueIfOffline": true,
            }),
            ("POST", "/api/v1/devices/{id}/commands") => json!({
                "command": command(rng, n),
                "timeoutMs": 1000,
                "confirm": true,
                "queueIfOffline": true,
            }),
            ("POST", "/api/v1/device-groups") => {
                json!({"name": format!("gen-group-{n}"), "description": "generated"})
            }
            ("PUT", "/api/v1/device-groups/{id}") => {
                json!({"name": "gen-group", "description": format!("described {n}")})
            }
            ("POST" | "DELETE", "/api/v1/device-groups/{id}/members") => {
                json!({"deviceIds": ["edge-g"]})
            }
            ("POST", "/api/v1/device-groups/{id}/commands") => json!({
                "command": {"type": "force_sync"},
                "timeoutMs": 1000,
                "queueIfOffline": true,
            }),
            ("POST", "/api/v1/sync") => {
                let kind = ["bottle", "batch", "pallet", "batch_fixate"]
                    .choose(rng)
                    .unwrap();
                json!({"records": [{
                    "id": uuid::Uuid::new_v4().to_string(),
                    "kind": kind,
                    "companyId": "company-1",
                    "payload": {"code": "0104006381333931", "n": n},
                    "createdAt": now_rfc3339(),
                }]})
            }
            ("POST", "/api/v1/sync/dead-letters/requeue") => json!({}),
            ("PUT", "/api/v1/sync/cloud") => {
                json!({"url": "http://127.0.0.1:9", "token": format!("token-{n}")})
            }
            ("POST", "/api/v1/firmware/releases") => json!(format!("artifact {n}")),
            ("POST", "/api/v1/firmware/deployments") => json!({
                "releaseId": self.release_id,
                "deviceIds": ["edge-g"],
                "wavePercent": rng.gen_range(1..=100),
            }),
            ("POST", "/admin/generate_token") => {
                json!({"device_id": format!("board-{n}"), "project": "gen", "expires_minutes": 30})
            }
            ("POST", "/admin/revoke_token") => json!({"jti": format!("gen-jti-{n}")}),
            ("PUT", "/api/v1/ota/projects/{project}/devices/{device_id}") => {
                json!({"fwAccess": n.is_multiple_of(2), "productionLineId": "line-gen"})
            }
            _ => return None,
        })
    }
}

/// Every string of `value`, for the mutations that change text.
fn strings_mut(value: &mut Value, out: &mut dyn FnMut(&mut String)) {
    match value {
        Value::String(s) => out(s),
        Value::Array(items) => items.iter_mut().for_each(|v| strings_mut(v, out)),
        Value::Object(map) => map.values_mut().for_each(|v| strings_mut(v, out)),
        _ => {}
    }
}

/// Every leaf of `value` another type: text becomes a number, numbers text, and so on.
fn retype(value: &mut Value, rng: &mut StdRng) {
    match value {
        Value::Object(map) => {
            for v in map.values_mut() {
                if rng.gen_bool(0.6) {
                    retype(v, rng);
                }
            }
        }
        Value::String(_) => *value = json!([1, 2]),
        Value::Number(_) => *value = json!("12"),
        Value::Bool(b) => *value = json!(if *b { "true" } else { "false" }),
        Value::Null => *value = json!({}),
        Value::Array(_) => *value = json!({"0": 1}),
    }
}

fn huge_numbers(value: &mut Value, rng: &mut StdRng) {
    let huge = [
        json!(u64::MAX),
        json!(i64::MIN),
        json!(-1),
        json!(1e308),
        json!(u64::from(u32::MAX) + 1),
    ];
    match value {
        Value::Number(_) => *value = huge.choose(rng).unwrap().clone(),
        Value::Array(items) => items.iter_mut().for_each(|v| huge_numbers(v, rng)),
        Value::Object(map) => {
            map.values_mut().for_each(|v| huge_numbers(v, rng));
            for key in [
                "timeoutMs",
                "limit",
                "lines",
                "size",
                "queueTtlMs",
                "wavePercent",
            ] {
                map.entry(key).or_insert_with(|| json!(u64::MAX));
            }
        }
        _ => {}
    }
}

const ODD_PATH_IDS: [&str; 18] = [
    "..",
    "%2e%2e",
    "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "a%2Fb",
    "%2F",
    "a/b",
    "..%2F..%2Fapi%2Fv1%2Fusers",
    "%FF",
    "%C3%A9%F0%9F%98%80",
    "%20",
    "%25",
    "'%20OR%20'1'%3D'1",
    "-1",
    "null",
    "%5C..%5C",
    ".",
    "%E2%80%AE",
    "%0D%0ASet-Cookie:x",
];

const ODD_QUERY_VALUES: [&str; 18] = [
    "-1",
    "0",
    "99999999999999999999",
    "9223372036854775807",
    "1e3",
    "abc",
    "",
    "%FF",
    "2026-13-45T99:99:99Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "%2B275760-09-13T00:00:00Z",
    "%27%20OR%201%3D1",
    "%25",
    "[]",
    "true",
    "%E2%80%AE",
    "..%2F..",
];

const QUERY_NAMES: [&str; 17] = [
    "limit",
    "offset",
    "since",
    "until",
    "status",
    "type",
    "level",
    "q",
    "groupId",
    "companyId",
    "actor",
    "action",
    "project",
    "channel",
    "releaseId",
    "version",
    "token",
];

/// Builds the request of `kind` for a route and caller.
fn build(
    world: &World,
    rng: &mut StdRng,
    (method, pattern): (&'static str, &'static str),
    caller: Caller,
    kind: Kind,
    n: usize,
    long: usize,
) -> Request {
    // Path: each `{name}` replaced by a valid value, or for the path kinds a hostile one.
    let mut path = String::new();
    let mut rest = pattern;
    let mut params = 0;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|c| open + c).unwrap();
        path.push_str(&rest[..open]);
        let name = &rest[open + 1..close];
        let valid = world.param(method, pattern, name, n);
        path.push_str(&match kind {
            Kind::NulInPath => {
                if rng.gen() {
                    format!("{valid}%00")
                } else {
                    "%00".into()
                }
            }
            Kind::OddPathId => (*ODD_PATH_IDS.choose(rng).unwrap()).to_owned(),
            Kind::Unicode => "%C3%A9dge-%F0%9F%98%80".into(),
            // The 1 MiB body goes to a real thing; the others carry a long id too.
            Kind::LongStrings if long != LONG => "x".repeat(8 * 1024),
            _ => valid,
        });
        params += 1;
        rest = &rest[close + 1..];
    }
    path.push_str(rest);
    if params == 0 {
        match kind {
            Kind::NulInPath => path.push_str("%00"),
            Kind::OddPathId => path.push_str(
                ["/..", "/%2e%2e/api/v1/users", "//", "/."]
                    .choose(rng)
                    .unwrap(),
            ),
            _ => {}
        }
    }

    let mut query = world.query(method, pattern, n);
    match kind {
        Kind::NulInQuery => {
            if query.is_empty() {
                query.push(("limit".into(), "%00".into()));
                query.push(("q".into(), "a%00b".into()));
            }
            for (_, v) in &mut query {
                v.push_str("%00");
            }
        }
        Kind::OddQuery => {
            for _ in 0..rng.gen_range(1..4) {
                let name = (*QUERY_NAMES.choose(rng).unwrap()).to_owned();
                let value = (*ODD_QUERY_VALUES.choose(rng).unwrap()).to_owned();
                query.retain(|(k, _)| *k != name || rng.gen());
                query.push((name, value));
            }
        }
        Kind::HugeNumbers => {
            query.retain(|(k, _)| k != "limit" && k != "offset");
            query.push(("limit".into(), "18446744073709551616".into()));
            query.push(("offset".into(), "-9223372036854775808".into()));
        }
        _ => {}
    }
    let target = if query.is_empty() {
        path
    } else {
        let joined: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{path}?{}", joined.join("&"))
    };

    let mut headers = world.headers(pattern);
    let mut content_type = "application/json".to_owned();
    let valid_body = world.body(rng, method, pattern, n);
    let upload = pattern == "/api/v1/firmware/releases" && method == "POST";
    let body: Vec<u8> = match (kind, valid_body) {
        (Kind::EmptyBody, _) => Vec::new(),
        (Kind::Garbage, _) => {
            let len = rng.gen_range(1..256);
            (0..len).map(|_| rng.gen::<u8>()).collect()
        }
        (Kind::DeepNesting, _) => {
            let depth = [200usize, 10_000, 100_000].choose(rng).copied().unwrap();
            let inner = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            format!("{{\"command\":{inner},\"records\":{inner}}}").into_bytes()
        }
        (_, None) => match kind {
            Kind::NulInBody => br#"{"name":"a\u0000b"}"#.to_vec(),
            Kind::UnknownFields => br#"{"unknownField":1}"#.to_vec(),
            Kind::LongStrings => serde_json::to_vec(&json!({"name": "a".repeat(long)})).unwrap(),
            _ => Vec::new(),
        },
        (_, Some(mut body)) => {
            match kind {
                Kind::WrongTypes => retype(&mut body, rng),
                Kind::HugeNumbers => huge_numbers(&mut body, rng),
                Kind::LongStrings => {
                    // One string just past the body limit or well within it, where the
                    // field's own bound must refuse it.
                    let len = if long == LONG && rng.gen() {
                        LONG / 2
                    } else {
                        long
                    };
                    let mut count = 0;
                    strings_mut(&mut body, &mut |_| count += 1);
                    let chosen = rng.gen_range(0..count.max(1));
                    let mut i = 0;
                    strings_mut(&mut body, &mut |s| {
                        if i == chosen {
                            *s = "a".repeat(len);
                        }
                        i += 1;
                    });
                }
                Kind::NulInBody => strings_mut(&mut body, &mut |s| s.insert(s.len() / 2, '\0')),
                Kind::Unicode => strings_mut(&mut body, &mut |s| {
                    s.push_str("é😀\u{202E}\u{FEFF}名\u{10FFFF}")
                }),
                Kind::UnknownFields => {
                    if let Value::Object(map) = &mut body {
                        map.insert("unknownField".into(), json!({"nested": [1, "x"]}));
                        map.insert("__proto__".into(), json!({"admin": true}));
                    } else {
                        body = json!({"unknownField": body});
                    }
                }
                Kind::WrongContentType => {
                    content_type = [
                        "text/plain",
                        "application/x-www-form-urlencoded",
                        "multipart/form-data; boundary=x",
                        "application/xml",
                        "application/json; charset=latin1",
                        "",
                    ]
                    .choose(rng)
                    .unwrap()
                    .to_string();
                }
                _ => {}
            }
            match (&body, upload) {
                // The upload's body is the artifact itself.
                (Value::String(s), true) => {
                    content_type = "application/octet-stream".into();
                    s.clone().into_bytes()
                }
                _ => serde_json::to_vec(&body).unwrap(),
            }
        }
    };
    if (!body.is_empty() || kind == Kind::EmptyBody) && !content_type.is_empty() {
        headers.push(("Content-Type".into(), content_type));
    }
    Request {
        method,
        pattern,
        caller,
        kind,
        target,
        headers,
        body,
    }
}

/// Where a refusal has no JSON body to carry: HEAD, the socket handshakes, and the board
/// routes, which keep the seed's plain-text errors (`contract.md`).
fn body_exempt(request: &Request) -> bool {
    request.method == "HEAD"
        || request.pattern.starts_with("/ws/")
        || request.pattern.starts_with("/firmware/")
}

/// What is wrong with an answer, if anything.
fn judge(request: &Request, answer: &Result<Answer, String>) -> Option<String> {
    let answer = match answer {
        Err(e) => return Some(format!("no answer: {e}")),
        Ok(answer) => answer,
    };
    let status = answer.status;
    if status >= 500 {
        if status == 503 && answer.headers.contains_key("retry-after") {
            return None;
        }
        return Some(format!("{status}"));
    }
    if status >= 400 && !body_exempt(request) {
        let envelope: Option<Value> = serde_json::from_slice(&answer.body).ok();
        let ok = envelope.as_ref().is_some_and(|v| {
            v["success"] == false
                && v["error"]["code"].is_string()
                && v["error"]["message"].is_string()
        });
        if !ok {
            return Some(format!("{status} without the JSON error body"));
        }
    }
    None
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(DEFAULT_SEED)
}

fn takes_body((method, pattern): (&str, &str)) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH") || pattern.ends_with("/members")
}

/// Routes that spend the caller's token go last, so every other route still sees it valid.
fn route_order() -> Vec<(&'static str, &'static str)> {
    let mut routes = server::ROUTES.to_vec();
    routes.sort_by_key(|(_, p)| *p == "/api/v1/auth/logout");
    routes
}

fn generated_requests_get_no_server_error(backend: Backend) {
    let seed = seed();
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--jwt-secret", JWT_SECRET, "--ota-admin-secret", OTA_SECRET],
    );
    let world = setup(&server);
    let mut rng = StdRng::seed_from_u64(seed);
    println!("generated requests on {backend:?}: FUZZ_SEED={seed:#x}");

    let started = Instant::now();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    // Failure class (what, route, kind) → count and the first request that showed it.
    let mut failures: BTreeMap<(String, &str, &str, Kind), (u64, String)> = BTreeMap::new();
    let mut sent = 0u64;
    let mut n = 0usize;
    let mut slowest: BTreeMap<(&str, &str), Duration> = BTreeMap::new();
    for (r, route) in route_order().into_iter().enumerate() {
        // (caller, kind, length of long strings) of each request for this route.
        let mut plan = Vec::new();
        for (c, caller) in CALLERS.into_iter().enumerate() {
            plan.push((caller, Kind::Valid, SHORTER));
            // Every kind comes round for every route (32 hostile requests for 14 kinds), each
            // time to other callers; the seed shifts who gets which and picks the details.
            for i in 0..PER_CALLER - 1 {
                let turn = r * 3 + c * (PER_CALLER - 1) + i + (seed % 14) as usize;
                let kind = HOSTILE[turn % HOSTILE.len()];
                plan.push((caller, kind, SHORTER));
            }
        }
        if takes_body(route) {
            // The one body past 1 MiB, from the caller most likely to get past authorization.
            plan.push((Caller::Admin, Kind::LongStrings, LONG));
        }
        for (caller, kind, long) in plan {
            n += 1;
            let request = build(&world, &mut rng, route, caller, kind, n, long);
            let t0 = Instant::now();
            let answer = send(&world.addr, &request, world.token(caller));
            *slowest.entry((route.0, route.1)).or_default() += t0.elapsed();
            sent += 1;
            let status = match &answer {
                Ok(a) => a.status.to_string(),
                Err(_) => "none".to_owned(),
            };
            *by_status.entry(status).or_default() += 1;
            if let Some(what) = judge(&request, &answer) {
                let entry = failures
                    .entry((what, route.0, route.1, kind))
                    .or_insert_with(|| (0, request.show()));
                entry.0 += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let statuses: Vec<String> = by_status.iter().map(|(s, c)| format!("{s}: {c}")).collect();
    let summary = format!(
        "generated requests: {sent} sent, by status: {{{}}} on {backend:?} in {:.1} s (FUZZ_SEED={seed:#x})",
        statuses.join(", "),
        elapsed.as_secs_f64()
    );
    println!("{summary}");
    eprintln!("{summary}");
    let mut by_time: Vec<_> = slowest.into_iter().collect();
    by_time.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    for ((method, pattern), spent) in by_time.iter().take(5) {
        eprintln!(
            "generated slowest: {method} {pattern}: {:.1} s",
            spent.as_secs_f64()
        );
    }

    // Still alive, still answering, and no handler panicked on the way.
    let health = send(
        &world.addr,
        &Request {
            method: "GET",
            pattern: "/healthz",
            caller: Caller::Anonymous,
            kind: Kind::Valid,
            target: "/healthz".into(),
            headers: vec![],
            body: vec![],
        },
        None,
    );
    let alive = std::path::Path::new(&format!("/proc/{}", server.pid())).exists();
    let panics = server.log().matches("panicked").count();

    let mut report: Vec<String> = failures
        .iter()
        .map(|((what, method, pattern, kind), (count, example))| {
            format!("{what} on {method} {pattern} [{kind:?}] x{count}, e.g. {example}")
        })
        .collect();
    for line in &report {
        eprintln!("generated failure: {line}");
    }
    report.truncate(60);
    assert!(
        alive && health.as_ref().is_ok_and(|a| a.status == 200),
        "{summary}: the server no longer answers /healthz (alive: {alive}, {:?})",
        health.map(|a| a.status)
    );
    assert_eq!(panics, 0, "{summary}: the server log shows {panics} panics");
    assert!(
        failures.is_empty(),
        "{summary}: {} failure classes (first 60):\n{}",
        failures.len(),
        report.join("\n")
    );
}
