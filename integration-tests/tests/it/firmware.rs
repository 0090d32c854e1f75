//! Firmware releases and the OTA board routes against the real server on SQLite and
//! PostgreSQL: upload, list, get, download whole and by range, ETag and HEAD; the size limit
//! and unsafe names leaving nothing on disk; release signatures; OTA tokens and board
//! downloads with and without tokens.

use std::path::Path;
use std::time::Duration;

use crate::common::{artifact, b64};
use integration_tests::*;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

const JWT_SECRET: &str = "firmware-test-secret-0123456789abcdef";
const OTA_SECRET: &str = "ota-admin-secret-for-tests";

on_both_backends!(
    releases_upload_list_download_and_delete,
    the_seeds_upload_command_line_works_as_written,
    oversized_and_unsafe_uploads_leave_nothing,
    signatures_are_checked_against_trusted_keys,
    ota_tokens_and_board_downloads,
    ota_without_tokens_and_without_admin_secret,
);

fn start(backend: Backend, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--jwt-secret", JWT_SECRET];
    args.extend_from_slice(extra);
    ServerProcess::start_with(TestDb::new(backend), TempDir::new("factory-fw"), &args)
}

/// Raw HTTP: firmware bodies are bytes, and board routes answer plain text.
struct Http {
    base: String,
    client: reqwest::blocking::Client,
}

struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    bytes: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

impl Http {
    fn new(server: &ServerProcess) -> Self {
        Http {
            base: server.base_url.clone(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> Raw {
        let resp = req.send().expect("http request");
        Raw {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            bytes: resp.bytes().expect("body").to_vec(),
        }
    }

    fn get(&self, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Raw {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req)
    }

    fn upload(&self, token: &str, query: &str, body: Vec<u8>) -> Raw {
        self.send(
            self.client
                .post(format!("{}/api/v1/firmware/releases?{query}", self.base))
                .bearer_auth(token)
                .header("Content-Type", "application/octet-stream")
                .body(body),
        )
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Files in `<data dir>/firmware`, temporary ones included.
fn firmware_files(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("firmware"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `server-management.md`'s upload, verbatim: it names no `project`, so its release is the
/// edge agent's (`edge`), and its `channel` is stored and listed.
fn the_seeds_upload_command_line_works_as_written(backend: Backend) {
    let server = start(backend, &[]);
    let admin = Api::admin(&server);
    let token = admin.token().unwrap().to_owned();
    let http = Http::new(&server);
    let body = artifact(4096, 3);
    let created = http.upload(
        &token,
        "version=1.2.3&channel=stable&filename=edge-service.jar",
        body.clone(),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.bytes)
    );
    let release = created.json()["data"].clone();
    assert_eq!(release["project"], "edge");
    assert_eq!(release["channel"], "stable");
    assert_eq!(release["sha256"], sha256_hex(&body));

    let listed = http.get(
        "/api/v1/firmware/releases?project=edge&channel=stable",
        Some(&token),
        &[],
    );
    assert_eq!(listed.status, 200);
    let items = listed.json()["data"]["items"].clone();
    assert_eq!(items.as_array().map(Vec::len), Some(1), "{items}");
    assert_eq!(items[0]["id"], release["id"]);
    let other_channel = http.get("/api/v1/firmware/releases?channel=beta", Some(&token), &[]);
    assert_eq!(other_channel.json()["data"]["items"], json!([]));
}

fn releases_upload_list_download_and_delete(backend: Backend) {
    let server = start(backend, &[]);
    let admin = Api::admin(&server);
    let token = admin.token().unwrap().to_owned();
    let http = Http::new(&server);
    // Larger than the 1 MiB body limit of the JSON routes: uploads stream past it.
    let body = artifact(1_500_000, 7);

    let created = http.upload(
        &token,
        "version=1.2.3&channel=stable&filename=edge-service.jar&project=line",
        body.clone(),
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.bytes)
    );
    let release = created.json()["data"].clone();
    let id = release["id"].as_str().unwrap().to_owned();
    assert_eq!(release["sha256"], sha256_hex(&body));
    assert_eq!(release["size"], body.len());
    assert_eq!(release["storedName"], "1.2.3-edge-service.jar");
    assert_eq!(release["channel"], "stable");
    assert_eq!(release["uploadedBy"], "admin");
    assert_eq!(
        firmware_files(server.data_dir.path()),
        vec!["1.2.3-edge-service.jar"]
    );
    let on_disk = std::fs::read(
        server
            .data_dir
            .path()
            .join("firmware/1.2.3-edge-service.jar"),
    )
    .unwrap();
    assert_eq!(on_disk, body);

    let again = http.upload(
        &token,
        "version=1.2.3&filename=edge-service.jar&project=line",
        artifact(10, 1),
    );
    assert_eq!(again.status, 409);
    assert_eq!(again.code(), "release_exists");
    assert_eq!(firmware_files(server.data_dir.path()).len(), 1);

    // Upload is for admins only.
    admin.create_user("fw-viewer", "viewer-password", "VIEWER");
    let viewer = Api::login(&server, "fw-viewer", "viewer-password");
    let refused = http.upload(
        viewer.token().unwrap(),
        "version=2.0.0&filename=x.bin&project=line",
        artifact(10, 1),
    );
    assert_eq!(refused.status, 403);

    let list = viewer.get("/api/v1/firmware/releases?limit=10");
    assert_eq!(list.data()["total"], 1);
    assert_eq!(list.data()["items"][0]["id"], id.as_str());
    let one = viewer.get(&format!("/api/v1/firmware/releases/{id}"));
    assert_eq!(one.data()["version"], "1.2.3");
    assert_eq!(
        viewer.get("/api/v1/firmware/releases/nope").error_code(),
        "release_not_found"
    );

    // Whole download, as a user and as a device.
    let url = format!("/api/v1/firmware/releases/{id}/artifact");
    let etag = format!("\"{}\"", sha256_hex(&body));
    let whole = http.get(&url, viewer.token(), &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.bytes, body);
    assert_eq!(whole.header("etag"), etag);
    assert_eq!(whole.header("accept-ranges"), "bytes");
    let device_token = admin.enroll("edge-fw");
    let by_device = http.get(&url, Some(&device_token), &[]);
    assert_eq!(by_device.status, 200);
    assert_eq!(by_device.bytes, body);
    assert_eq!(http.get(&url, None, &[]).status, 401);

    // Resume from an offset, and a middle slice.
    let rest = http.get(&url, Some(&device_token), &[("Range", "bytes=123456-")]);
    assert_eq!(rest.status, 206);
    assert_eq!(
        rest.header("content-range"),
        format!("bytes 123456-{}/{}", body.len() - 1, body.len())
    );
    assert_eq!(rest.bytes, body[123456..]);
    let slice = http.get(&url, viewer.token(), &[("Range", "bytes=100-199")]);
    assert_eq!(slice.status, 206);
    assert_eq!(slice.bytes, body[100..200]);
    let beyond = http.get(&url, viewer.token(), &[("Range", "bytes=999999999-")]);
    assert_eq!(beyond.status, 416);
    assert_eq!(
        beyond.header("content-range"),
        format!("bytes */{}", body.len())
    );

    // ETag and If-None-Match.
    let cached = http.get(&url, viewer.token(), &[("If-None-Match", &etag)]);
    assert_eq!(cached.status, 304);
    assert!(cached.bytes.is_empty());
    let stale = http.get(&url, viewer.token(), &[("If-None-Match", "\"other\"")]);
    assert_eq!(stale.status, 200);

    // HEAD: the headers of the download, no body.
    let head = http.send(
        http.client
            .head(format!("{}{url}", http.base))
            .bearer_auth(viewer.token().unwrap()),
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), body.len().to_string());
    assert_eq!(head.header("etag"), etag);
    assert!(head.bytes.is_empty());

    // Delete: admin only; the row and the file go.
    let denied = viewer.delete(&format!("/api/v1/firmware/releases/{id}"));
    assert_eq!(denied.status, 403);
    let deleted = admin.delete(&format!("/api/v1/firmware/releases/{id}"));
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(
        admin.get(&format!("/api/v1/firmware/releases/{id}")).status,
        404
    );
    assert!(firmware_files(server.data_dir.path()).is_empty());
    let audit = admin.get("/api/v1/audit?action=firmware.");
    let actions: Vec<&str> = audit.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"firmware.upload") && actions.contains(&"firmware.delete"));
}

fn oversized_and_unsafe_uploads_leave_nothing(backend: Backend) {
    let server = start(backend, &["--firmware-max-bytes", "4096"]);
    let admin = Api::admin(&server);
    let token = admin.token().unwrap().to_owned();
    let http = Http::new(&server);

    let big = http.upload(
        &token,
        "version=1.0.0&filename=big.bin&project=p",
        artifact(10_000, 3),
    );
    assert_eq!(big.status, 413);
    assert_eq!(big.code(), "payload_too_large");
    // Without a Content-Length the limit is found while streaming.
    let streamed = http.send(
        http.client
            .post(format!(
                "{}/api/v1/firmware/releases?version=1.0.0&filename=big.bin&project=p",
                http.base
            ))
            .bearer_auth(&token)
            .body(reqwest::blocking::Body::new(std::io::Cursor::new(
                artifact(10_000, 4),
            ))),
    );
    assert_eq!(streamed.status, 413);
    assert_eq!(streamed.code(), "payload_too_large");
    assert!(
        firmware_files(server.data_dir.path()).is_empty(),
        "{:?}",
        firmware_files(server.data_dir.path())
    );

    // A client that goes away mid-upload leaves no temporary file behind.
    {
        use std::io::Write;
        let addr = http.base.trim_start_matches("http://").to_owned();
        let mut socket = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            socket,
            "POST /api/v1/firmware/releases?version=1.0.0&filename=cut.bin&project=p HTTP/1.1\r\n\
             Host: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 4000\r\n\r\n"
        )
        .unwrap();
        socket.write_all(&artifact(1000, 8)).unwrap();
        socket.flush().unwrap();
        wait_until(Duration::from_secs(10), "the upload to begin", || {
            !firmware_files(server.data_dir.path()).is_empty()
        });
        drop(socket);
        wait_until(Duration::from_secs(10), "the temporary file to go", || {
            firmware_files(server.data_dir.path()).is_empty()
        });
    }

    for filename in ["..%2Fx", "%2Fetc%2Fpasswd", "a%00b", "a%2Fb", "..", "a%5Cb"] {
        let r = http.upload(
            &token,
            &format!("version=1.0.0&filename={filename}&project=p"),
            artifact(100, 5),
        );
        assert_eq!(r.status, 400, "{filename}");
        assert_eq!(r.code(), "invalid_parameter", "{filename}");
    }
    for (what, query) in [
        ("project", "version=1.0.0&filename=f.bin&project=..%2Fp"),
        ("version", "version=..%2F1&filename=f.bin&project=p"),
    ] {
        let r = http.upload(&token, query, artifact(100, 5));
        assert_eq!(r.status, 400, "{what}");
        assert_eq!(r.code(), "invalid_parameter");
    }
    assert!(firmware_files(server.data_dir.path()).is_empty());
    assert_eq!(admin.get("/api/v1/firmware/releases").data()["total"], 0);

    // Within the limit it is taken.
    let fits = http.upload(
        &token,
        "version=1.0.0&filename=fits.bin&project=p",
        artifact(4096, 6),
    );
    assert_eq!(fits.status, 201);
    assert_eq!(
        firmware_files(server.data_dir.path()),
        vec!["1.0.0-fits.bin"]
    );
}

/// The signed manifest as the README documents it.
fn manifest(project: &str, version: &str, body: &[u8], expires: i64) -> Vec<u8> {
    format!(
        "factory-firmware-manifest-v1\nproject={project}\nversion={version}\nsha256={}\nsize={}\nexpires={expires}\n",
        sha256_hex(body),
        body.len()
    )
    .into_bytes()
}

fn key_pair() -> Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap()
}

/// Query-string form of a base64 value.
fn q(value: &str) -> String {
    value
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn signatures_are_checked_against_trusted_keys(backend: Backend) {
    let signer = key_pair();
    let stranger = key_pair();
    let trusted = b64(signer.public_key().as_ref());
    let server = start(
        backend,
        &[
            "--firmware-trusted-keys",
            &trusted,
            "--firmware-require-signature",
        ],
    );
    let admin = Api::admin(&server);
    let token = admin.token().unwrap().to_owned();
    let http = Http::new(&server);
    let body = artifact(5000, 9);
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    let expires_q = q(&expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let base = "version=3.1.4&filename=signed.bin&project=fan";

    let unsigned = http.upload(&token, base, body.clone());
    assert_eq!(unsigned.status, 422);
    assert_eq!(unsigned.code(), "signature_required");

    let sign = |key: &Ed25519KeyPair, m: &[u8]| q(&b64(key.sign(m).as_ref()));
    let good_manifest = manifest("fan", "3.1.4", &body, expires.timestamp());
    let cases = [
        (
            "a stranger's key",
            sign(&stranger, &good_manifest),
            expires_q.clone(),
            422,
            "invalid_signature",
        ),
        (
            "another size",
            sign(
                &signer,
                &manifest("fan", "3.1.4", &body[..10], expires.timestamp()),
            ),
            expires_q.clone(),
            422,
            "invalid_signature",
        ),
        (
            "another project",
            sign(
                &signer,
                &manifest("pump", "3.1.4", &body, expires.timestamp()),
            ),
            expires_q.clone(),
            422,
            "invalid_signature",
        ),
        (
            "not base64",
            "%21%21%21".to_owned(),
            expires_q.clone(),
            400,
            "invalid_signature",
        ),
        (
            "expired",
            sign(
                &signer,
                &manifest("fan", "3.1.4", &body, expires.timestamp() - 7200),
            ),
            q(&(expires - chrono::Duration::hours(2))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            422,
            "signature_expired",
        ),
    ];
    for (what, signature, expires_at, status, code) in cases {
        let r = http.upload(
            &token,
            &format!("{base}&signatureBase64={signature}&signatureExpiresAt={expires_at}"),
            body.clone(),
        );
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.bytes)
        );
        assert_eq!(r.code(), code, "{what}");
        assert!(firmware_files(server.data_dir.path()).is_empty(), "{what}");
    }

    let signature = b64(signer.sign(&good_manifest).as_ref());
    let accepted = http.upload(
        &token,
        &format!(
            "{base}&signatureBase64={}&signatureExpiresAt={expires_q}",
            q(&signature)
        ),
        body.clone(),
    );
    assert_eq!(
        accepted.status,
        201,
        "{}",
        String::from_utf8_lossy(&accepted.bytes)
    );
    let release = &accepted.json()["data"];
    assert_eq!(release["signatureBase64"], signature.as_str());
    assert!(release["signatureExpiresAt"].is_string());
    assert_eq!(
        firmware_files(server.data_dir.path()),
        vec!["3.1.4-signed.bin"]
    );
}

fn generate(http: &Http, secret: Option<&str>, body: &Value) -> Raw {
    let mut req = http
        .client
        .post(format!("{}/admin/generate_token", http.base))
        .json(body);
    if let Some(s) = secret {
        req = req.header("X-Admin-Secret", s);
    }
    http.send(req)
}

fn ota_tokens_and_board_downloads(backend: Backend) {
    let server = start(backend, &["--ota-admin-secret", OTA_SECRET]);
    let admin = Api::admin(&server);
    let token = admin.token().unwrap().to_owned();
    let http = Http::new(&server);
    let mut bodies = Vec::new();
    for (i, version) in ["1.9.0", "1.10.0", "1.2.0", "1.10.0-rc.1"]
        .iter()
        .enumerate()
    {
        let body = artifact(20_000 + i * 1000, i as u8);
        let r = http.upload(
            &token,
            &format!("version={version}&filename=fan.bin&project=fan"),
            body.clone(),
        );
        assert_eq!(r.status, 201);
        bodies.push((version.to_string(), body));
    }
    let other = http.upload(
        &token,
        "version=9.0.0&filename=pump.bin&project=pump",
        artifact(100, 1),
    );
    assert_eq!(other.status, 201);

    // Token generation.
    let request = json!({"device_id": "board-1", "project": "fan", "current_fw": "1.2.0"});
    let missing = generate(&http, None, &request);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.code(), "invalid_admin_secret");
    let wrong = generate(&http, Some("not-the-secret-at-all"), &request);
    assert_eq!(wrong.status, 401);
    let issued = generate(&http, Some(OTA_SECRET), &request);
    assert_eq!(issued.status, 200);
    let issued = issued.json();
    let ota = issued["token"].as_str().unwrap().to_owned();
    assert!(issued["expires_at"].as_str().unwrap().ends_with("+00:00"));
    let payload = &issued["payload"];
    assert_eq!(payload["sub"], "board-1");
    assert_eq!(payload["project"], "fan");
    assert_eq!(payload["roles"], json!(["device", "fw_download"]));
    assert_eq!(payload["aud"], "ota_api");
    assert_eq!(payload["iss"], "factory-server");
    assert_eq!(payload["fw_version"], "1.2.0");
    let (iat, exp) = (
        payload["iat"].as_i64().unwrap(),
        payload["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 30 * 60, "the default lifetime is 30 minutes");
    assert!(payload["jti"].as_str().unwrap().starts_with("board-1-"));
    let audit = admin.get("/api/v1/audit?action=ota.token.generate");
    let outcomes: Vec<&str> = audit.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.contains(&"success") && outcomes.contains(&"denied"),
        "{outcomes:?}"
    );
    let audit_text = audit.body.to_string();
    assert!(!audit_text.contains(OTA_SECRET) && !audit_text.contains(&ota));

    // Versions in semantic order, and the latest.
    let versions = http.get("/firmware/fan/versions", Some(&ota), &[]);
    assert_eq!(versions.status, 200);
    assert_eq!(
        versions.json()["versions"],
        json!(["1.2.0", "1.9.0", "1.10.0-rc.1", "1.10.0"])
    );
    let latest = http.get("/firmware/fan/latest", Some(&ota), &[]).json();
    assert_eq!(latest["version"], "1.10.0");
    assert_eq!(latest["file"], "1.10.0-fan.bin");
    assert_eq!(latest["url"], "/firmware/fan/1.10.0-fan.bin");

    // Downloads: header token, query token, resumed; the board names itself and is listed.
    let listed = admin.put(
        "/api/v1/ota/projects/fan/devices/board-1",
        &json!({"fwAccess": true}),
    );
    assert_eq!(listed.status, 200, "{}", listed.body);
    let (_, newest) = bodies.iter().find(|(v, _)| v == "1.10.0").unwrap();
    let board = [("X-Device-ID", "board-1")];
    let by_header = http.get("/firmware/fan/1.10.0-fan.bin", Some(&ota), &board);
    assert_eq!(by_header.status, 200);
    assert_eq!(&by_header.bytes, newest);
    assert_eq!(latest["sha256"], sha256_hex(newest));
    let by_query = http.get(
        &format!("/firmware/fan/1.10.0-fan.bin?token={ota}&device_id=board-1"),
        None,
        &[],
    );
    assert_eq!(by_query.status, 200);
    assert_eq!(&by_query.bytes, newest);
    let resumed = http.get(
        &format!("/firmware/fan/1.10.0-fan.bin?token={ota}"),
        None,
        &[("Range", "bytes=5000-"), ("X-Device-ID", "board-1")],
    );
    assert_eq!(resumed.status, 206);
    assert_eq!(resumed.bytes, newest[5000..]);

    // Refusals, in plain text.
    let none = http.get("/firmware/fan/1.10.0-fan.bin", None, &[]);
    assert_eq!(none.status, 401);
    assert!(none.header("content-type").starts_with("text/plain"));
    let mismatch = http.get("/firmware/pump/9.0.0-pump.bin", Some(&ota), &[]);
    assert_eq!(mismatch.status, 403);
    assert_eq!(
        http.get("/firmware/pump/versions", Some(&ota), &[]).status,
        403
    );
    assert_eq!(
        http.get("/firmware/fan/missing.bin", Some(&ota), &board)
            .status,
        404
    );
    let user_token = http.get("/firmware/fan/1.10.0-fan.bin", Some(&token), &[]);
    assert_eq!(user_token.status, 401, "a user token is not an OTA token");
    let forged = http.get("/firmware/fan/1.10.0-fan.bin?token=abc.def.ghi", None, &[]);
    assert_eq!(forged.status, 401);

    // An OTA token is neither a user token nor a device token.
    let as_user = Api::new(&server).with_token(&ota).get("/api/v1/auth/me");
    assert_eq!(as_user.status, 401);
    let id = admin.get("/api/v1/firmware/releases?project=fan").data()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let as_reader = http.get(
        &format!("/api/v1/firmware/releases/{id}/artifact"),
        Some(&ota),
        &[],
    );
    assert_eq!(as_reader.status, 401);
    let sync = Api::new(&server)
        .with_token(&ota)
        .post("/api/v1/sync", &json!({"records": []}));
    assert_eq!(sync.status, 401);

    let status = http.get("/status", None, &[]).json();
    assert_eq!(status["status"], "ok");
    assert_eq!(status["jwt"], true);

    // Query tokens are hidden in the access log.
    let log = server.log();
    assert!(
        log.contains("/firmware/fan/1.10.0-fan.bin?token=REDACTED&device_id=board-1"),
        "{log}"
    );
    assert!(!log.contains(&ota), "the server log contains an OTA token");
}

fn ota_without_tokens_and_without_admin_secret(backend: Backend) {
    let server = start(backend, &["--ota-no-jwt"]);
    let admin = Api::admin(&server);
    let http = Http::new(&server);
    let body = artifact(3000, 2);
    let r = http.upload(
        admin.token().unwrap(),
        "version=0.1.0&filename=open.bin&project=open",
        body.clone(),
    );
    assert_eq!(r.status, 201);
    // The rollback fields belong to a signed manifest: without a signature they vouch for
    // nothing, so they are refused rather than stored.
    for field in ["securityFloor=3", "allowDowngrade=true"] {
        let unsigned = http.upload(
            admin.token().unwrap(),
            &format!("version=0.1.1&filename=open.bin&project=open&{field}"),
            body.clone(),
        );
        assert_eq!(unsigned.status, 400, "{field}");
        assert_eq!(unsigned.code(), "invalid_parameter", "{field}");
    }
    let open = http.get("/firmware/open/0.1.0-open.bin", None, &[]);
    assert_eq!(open.status, 200);
    assert_eq!(open.bytes, body);
    assert_eq!(
        http.get("/firmware/open/latest", None, &[]).json()["version"],
        "0.1.0"
    );
    assert_eq!(http.get("/status", None, &[]).json()["jwt"], false);
    let disabled = generate(
        &http,
        Some(OTA_SECRET),
        &json!({"device_id": "board-1", "project": "open"}),
    );
    assert_eq!(disabled.status, 403);
    assert_eq!(disabled.code(), "forbidden");
}
