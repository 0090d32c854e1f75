//! `update_firmware` end to end: a release uploaded to the real server, the command sent
//! through it, and the real agent downloading, checking and staging the artifact. SQLite only:
//! the agent's side does not depend on the server's database.

use std::path::Path;
use std::time::Duration;

use crate::common::{artifact, b64};
use integration_tests::*;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

/// Names in the staging directory, temporary ones included.
fn staged_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn update_firmware_stages_good_releases_and_refuses_bad_ones() {
    let signer = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let stranger = Ed25519KeyPair::from_seed_unchecked(&[8; 32]).unwrap();
    let trusted = b64(signer.public_key().as_ref());
    let server = ServerProcess::start_with(
        TestDb::new(Backend::Sqlite),
        TempDir::new("factory-upd"),
        // Unsigned releases too: this test is about staging, not about the secure default
        // (`supply_chain` is).
        &[
            "--firmware-trusted-keys",
            &trusted,
            "--firmware-allow-unsigned",
        ],
    );
    let api = Api::admin(&server);
    let token = api.token().unwrap().to_owned();
    let device = "edge-upd";
    let agent = AgentProcess::start_with(
        &server.base_url,
        device,
        AgentOptions {
            // Staging only: installing (and the exit that goes with it) is tested with
            // deployments in agent_firmware.rs.
            args: vec![
                "--firmware-trusted-keys".into(),
                trusted.clone(),
                "--firmware-allow-unsigned".into(),
                "--firmware-activate".into(),
                "false".into(),
            ],
            ..AgentOptions::default()
        },
    );
    wait_until(Duration::from_secs(60), "the agent ONLINE", || {
        api.device_status(device).as_deref() == Some("ONLINE")
    });
    let staging = agent.data_dir.path().join("staging");
    let url = |id: &Value| {
        format!(
            "{}/api/v1/firmware/releases/{}/artifact",
            server.base_url,
            id.as_str().unwrap()
        )
    };

    // A good release, large enough to take several writes and progress steps.
    let body = artifact(3 * 1024 * 1024 + 17, 1);
    let release = upload_release_with(
        &server,
        &token,
        "version=0.2.0&project=edge&filename=edge-service",
        &body,
    );
    let r = command(
        &api,
        device,
        json!({"type": "update_firmware", "id": "fw-good", "version": "0.2.0",
               "url": url(&release["id"]), "sha256": release["sha256"], "size": body.len()}),
        true,
    );
    assert_eq!(r["status"], "SUCCESS", "{r}\n{}", agent.log());
    let staged = staging.join("edge-service-0.2.0");
    assert_eq!(r["data"]["stagedPath"], staged.display().to_string(), "{r}");
    assert_eq!(r["data"]["sha256"], release["sha256"]);
    assert_eq!(r["data"]["size"], body.len());
    assert!(
        std::fs::read(&staged).unwrap() == body,
        "staged bytes differ"
    );

    // A wrong hash: refused, nothing new staged, no partial file left.
    let other = artifact(4096, 2);
    let release = upload_release_with(
        &server,
        &token,
        "version=0.3.0&project=edge&filename=edge-service",
        &other,
    );
    let r = command(
        &api,
        device,
        json!({"type": "update_firmware", "id": "fw-hash", "version": "0.3.0",
               "url": url(&release["id"]), "sha256": "00".repeat(32), "size": other.len()}),
        true,
    );
    assert_eq!(r["status"], "FAILED", "{r}");
    assert!(r["output"].as_str().unwrap().contains("wrong hash"), "{r}");
    assert_eq!(staged_files(&staging), vec!["edge-service-0.2.0"]);

    // A version below the agent's (0.1.0): refused before any download.
    let old = artifact(1000, 3);
    let release = upload_release_with(
        &server,
        &token,
        "version=0.0.9&project=edge&filename=edge-service",
        &old,
    );
    let r = command(
        &api,
        device,
        json!({"type": "update_firmware", "id": "fw-down", "version": "0.0.9",
               "url": url(&release["id"]), "sha256": release["sha256"], "size": old.len()}),
        true,
    );
    assert_eq!(r["status"], "FAILED", "{r}");
    assert!(r["output"].as_str().unwrap().contains("downgrade"), "{r}");
    assert_eq!(staged_files(&staging), vec!["edge-service-0.2.0"]);

    // A signed release: the agent checks the manifest against its trusted key; the earlier
    // staged version stays for rollback.
    let signed = artifact(20_000, 4);
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    let sha = ring::digest::digest(&ring::digest::SHA256, &signed)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let manifest = format!(
        "factory-firmware-manifest-v1\nproject=edge\nversion=0.4.0\nsha256={sha}\nsize={}\nexpires={}\n",
        signed.len(),
        expires.timestamp()
    );
    let signature = b64(signer.sign(manifest.as_bytes()).as_ref());
    let expires_text = expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let release = upload_release_with(
        &server,
        &token,
        &format!(
            "version=0.4.0&project=edge&filename=edge-service&signatureBase64={}&signatureExpiresAt={}",
            query_escape(&signature),
            query_escape(&expires_text)
        ),
        &signed,
    );
    let r = command(
        &api,
        device,
        json!({"type": "update_firmware", "id": "fw-signed", "version": "0.4.0",
               "url": url(&release["id"]), "sha256": sha, "size": signed.len(),
               "signatureBase64": signature, "signatureExpiresAt": expires_text}),
        true,
    );
    assert_eq!(r["status"], "SUCCESS", "{r}\n{}", agent.log());
    assert_eq!(r["data"]["signatureVerified"], true, "{r}");
    assert_eq!(
        staged_files(&staging),
        vec!["edge-service-0.2.0", "edge-service-0.4.0"]
    );

    // The same release with a stranger's signature: refused.
    let forged = b64(stranger.sign(manifest.as_bytes()).as_ref());
    let r = command(
        &api,
        device,
        json!({"type": "update_firmware", "id": "fw-forged", "version": "0.4.0",
               "url": url(&release["id"]), "sha256": sha, "size": signed.len(),
               "signatureBase64": forged, "signatureExpiresAt": expires_text}),
        true,
    );
    assert_eq!(r["status"], "FAILED", "{r}");
    assert!(
        r["output"].as_str().unwrap().contains("bad signature"),
        "{r}"
    );
}
