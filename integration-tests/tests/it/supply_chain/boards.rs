//! Board identity and revocable tokens on the OTA routes: a board downloads only naming
//! itself (`X-Device-ID` or `?device_id=`, equal to its token's `sub`) and only while it is
//! listed for the project with firmware access (403 otherwise); a revoked token is 401 at once
//! and after a restart. Legacy boards (`--ota-legacy-boards`) keep the seed document's
//! behaviour; `--ota-jwt-algorithm HS512` signs and pins OTA tokens; `/favicon.ico` is served
//! from `<data dir>/www` as the seed did.

use base64::Engine;
use integration_tests::*;
use serde_json::{json, Value};

use crate::common::artifact;

on_both_backends!(board_identity_and_revocation_hold_across_a_restart);

const SECRET: &str = "boards-admin-secret-0123456789";

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

fn issue(base: &str, board: &str) -> Value {
    let reply = client()
        .post(format!("{base}/admin/generate_token"))
        .header("X-Admin-Secret", SECRET)
        .json(&json!({"device_id": board, "project": "fan"}))
        .send()
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    reply.json().unwrap()
}

fn token(issued: &Value) -> String {
    issued["token"].as_str().unwrap().to_owned()
}

/// A download of `file` with `token`, naming `named` in `X-Device-ID` when given: the status
/// and body.
fn fetch(base: &str, file: &str, token: &str, named: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = client()
        .get(format!("{base}/firmware/fan/{file}"))
        .bearer_auth(token);
    if let Some(board) = named {
        req = req.header("X-Device-ID", board);
    }
    let reply = req.send().unwrap();
    (reply.status().as_u16(), reply.bytes().unwrap().to_vec())
}

fn revoke(base: &str, body: Value) -> (u16, Value) {
    let reply = client()
        .post(format!("{base}/admin/revoke_token"))
        .header("X-Admin-Secret", SECRET)
        .json(&body)
        .send()
        .unwrap();
    (reply.status().as_u16(), reply.json().unwrap())
}

fn board_identity_and_revocation_hold_across_a_restart(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-boards"),
        &["--ota-admin-secret", SECRET],
    );
    let api = Api::admin(&server);
    let body = artifact(10_000, 3);
    let release = upload_release(&server, &api, "fan", "2.0.0", body.clone());
    let file = release["storedName"].as_str().unwrap().to_owned();
    let base = server.base_url.clone();
    for (board, access) in [("board-1", true), ("board-2", false)] {
        let put = api.put(
            &format!("/api/v1/ota/projects/fan/devices/{board}"),
            &json!({"fwAccess": access}),
        );
        assert_eq!(put.status, 200, "{}", put.body);
        assert_eq!(put.data()["fwAccess"], access);
    }
    let listed = api.get("/api/v1/ota/projects/fan/devices");
    assert_eq!(listed.data()["total"], 2, "{}", listed.body);
    let audit = api.get("/api/v1/audit?action=ota.board.put");
    assert_eq!(audit.data()["total"], 2, "{}", audit.body);

    let issued = issue(&base, "board-1");
    assert_eq!(issued["payload"]["aud"], "ota_api");
    let one = token(&issued);
    let two = token(&issue(&base, "board-2"));
    let three = token(&issue(&base, "board-3"));

    let (status, got) = fetch(&base, &file, &one, Some("board-1"));
    assert_eq!((status, got == body), (200, true));
    // `?device_id=` and a query token, on GET and HEAD.
    let by_query = format!("{base}/firmware/fan/{file}?token={one}&device_id=board-1");
    assert_eq!(client().get(&by_query).send().unwrap().status(), 200);
    assert_eq!(client().head(&by_query).send().unwrap().status(), 200);
    for (what, token, named) in [
        ("naming another board", &one, Some("board-2")),
        ("naming no board", &one, None),
        ("listed without firmware access", &two, Some("board-2")),
        ("not listed", &three, Some("board-3")),
    ] {
        let (status, got) = fetch(&base, &file, token, named);
        assert_eq!(status, 403, "{what}: {}", String::from_utf8_lossy(&got));
        println!("board {what}: 403 {}", String::from_utf8_lossy(&got).trim());
    }
    // Off the list, the board is refused at its next request; back on it, served again.
    assert_eq!(
        api.delete("/api/v1/ota/projects/fan/devices/board-1")
            .status,
        200
    );
    assert_eq!(fetch(&base, &file, &one, Some("board-1")).0, 403);
    assert_eq!(
        api.delete("/api/v1/ota/projects/fan/devices/board-1")
            .status,
        404
    );
    api.put(
        "/api/v1/ota/projects/fan/devices/board-1",
        &json!({"fwAccess": true}),
    );
    assert_eq!(fetch(&base, &file, &one, Some("board-1")).0, 200);

    // Revocation, by the token and by its jti: 401 at once; other tokens of the board live.
    let wrong = client()
        .post(format!("{base}/admin/revoke_token"))
        .header("X-Admin-Secret", "not-the-secret-at-all")
        .json(&json!({"token": one}))
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let (status, revoked) = revoke(&base, json!({"token": one}));
    assert_eq!(status, 200, "{revoked}");
    let (status, text) = fetch(&base, &file, &one, Some("board-1"));
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&text));
    let second = issue(&base, "board-1");
    let (status, _) = revoke(&base, json!({"jti": second["payload"]["jti"]}));
    assert_eq!(status, 200);
    assert_eq!(fetch(&base, &file, &token(&second), Some("board-1")).0, 401);
    let live = token(&issue(&base, "board-1"));
    assert_eq!(fetch(&base, &file, &live, Some("board-1")).0, 200);
    let audit = api.get("/api/v1/audit?action=ota.token.revoke");
    assert!(
        audit.data()["total"].as_u64().unwrap() >= 2,
        "{}",
        audit.body
    );

    // After a restart, the revocations hold and the live token still works.
    let (db, dir) = server.stop();
    let server = ServerProcess::start_with(db, dir, &["--ota-admin-secret", SECRET]);
    let base = server.base_url.clone();
    assert_eq!(fetch(&base, &file, &one, Some("board-1")).0, 401);
    assert_eq!(fetch(&base, &file, &token(&second), Some("board-1")).0, 401);
    assert_eq!(fetch(&base, &file, &live, Some("board-1")).0, 200);
    println!("revoked board tokens: 401 at once and after a restart");
}

#[test]
fn legacy_boards_hs512_tokens_and_the_favicon() {
    let server = ServerProcess::start_with(
        TestDb::new(Backend::Sqlite),
        TempDir::new("factory-legacy"),
        &[
            "--ota-admin-secret",
            SECRET,
            "--ota-legacy-boards",
            "--ota-jwt-algorithm",
            "HS512",
        ],
    );
    let api = Api::admin(&server);
    let body = artifact(5_000, 4);
    let release = upload_release(&server, &api, "fan", "1.0.0", body.clone());
    let file = release["storedName"].as_str().unwrap();
    let base = server.base_url.clone();
    let issued = issue(&base, "field-board");
    // The seed document's payload, signed with HS512.
    assert_eq!(issued["payload"]["roles"], json!(["device", "ota_client"]));
    assert!(issued["payload"]["aud"].is_null(), "{issued}");
    let ota = token(&issued);
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(ota.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "HS512");
    // No device id and no list, as before.
    let (status, got) = fetch(&base, file, &ota, None);
    assert_eq!((status, got == body), (200, true));

    let favicon = format!("{base}/favicon.ico");
    assert_eq!(client().get(&favicon).send().unwrap().status(), 404);
    let www = server.data_dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("favicon.ico"), b"\x00\x00\x01\x00icon").unwrap();
    let served = client().get(&favicon).send().unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "image/x-icon");
    assert_eq!(served.bytes().unwrap().as_ref(), b"\x00\x00\x01\x00icon");
}
