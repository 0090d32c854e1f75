//! TUF's attacks against a real agent that trusts one release key, with a server that holds
//! the ADMIN token and serves anything (it trusts every key used here and takes unsigned
//! uploads): whatever the server sends, only what the agent's keys vouch for is staged.
//! Arbitrary software (unsigned, a stranger's signature), rollback (an older signed release
//! with `allowDowngrade` from the server, and a release below the accepted security floor,
//! also after a restart), freeze (an expired manifest), mix-and-match (one release's manifest
//! with another's artifact), endless data (more bytes than the manifest's size), and key
//! rotation (the old key retired, the new key accepted; replays and strangers refused). A
//! deployment whose device refuses ends FAILED with the reason and pauses itself.

use std::time::Duration;

use integration_tests::*;
use protocol::firmware::{KeyRotation, Manifest};
use protocol::signing::{generate_key, sign_manifest, sign_rotation, GeneratedKey};
use serde_json::{json, Value};

use crate::common::artifact;

on_both_backends!(every_attack_is_refused_with_its_reason_and_stages_nothing);

const DEVICE: &str = "sc-edge";

fn sha256_hex(bytes: &[u8]) -> String {
    protocol::hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// What one upload signs: `None` for unsigned.
struct Signing<'a> {
    key: &'a GeneratedKey,
    expires: chrono::DateTime<chrono::Utc>,
    allow_downgrade: bool,
    floor: Option<u64>,
}

/// Uploads `bytes` as `version`, signed as `signing` says; answers the release.
fn upload(
    server: &ServerProcess,
    api: &Api,
    version: &str,
    bytes: &[u8],
    signing: Option<Signing>,
) -> Value {
    let mut query = format!("version={version}&project=edge&filename=edge-service");
    if let Some(s) = signing {
        let manifest = Manifest {
            project: "edge".into(),
            version: version.into(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            expires_unix: s.expires.timestamp(),
            allow_downgrade: s.allow_downgrade,
            security_floor: s.floor,
        };
        let signature = sign_manifest(&s.key.private_base64, &manifest).unwrap();
        query.push_str(&format!(
            "&signatureBase64={}&signatureExpiresAt={}",
            query_escape(&signature),
            query_escape(&s.expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        ));
        if s.allow_downgrade {
            query.push_str("&allowDowngrade=true");
        }
        if let Some(floor) = s.floor {
            query.push_str(&format!("&securityFloor={floor}"));
        }
    }
    upload_release_with(server, api.token().unwrap(), &query, bytes)
}

fn signed(key: &GeneratedKey) -> Option<Signing<'_>> {
    Some(Signing {
        key,
        expires: chrono::Utc::now() + chrono::Duration::hours(1),
        allow_downgrade: false,
        floor: None,
    })
}

/// The `update_firmware` the dashboard builds from a release.
fn update_of(id: &str, release: &Value) -> Value {
    let mut command = json!({
        "type": "update_firmware", "id": id, "version": release["version"],
        "url": release["artifactUrl"], "sha256": release["sha256"], "size": release["size"],
        "project": release["project"],
    });
    for (from, to) in [
        ("signatureBase64", "signatureBase64"),
        ("signatureExpiresAt", "signatureExpiresAt"),
        ("securityFloor", "securityFloor"),
    ] {
        if !release[from].is_null() {
            command[to] = release[from].clone();
        }
    }
    if release["allowDowngrade"] == true {
        command["manifestAllowDowngrade"] = json!(true);
    }
    command
}

/// Sends a command and answers its result.
fn send(api: &Api, command: Value) -> Value {
    integration_tests::command(api, DEVICE, command, true)
}

/// Names of staged and partial releases in the agent's staging directory.
fn staged(agent: &AgentProcess) -> Vec<String> {
    let dir = agent.data_dir.path().join("staging");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("edge-service"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asserts the command failed with `reason` in its output and left the staging dir as it was.
fn refused(attack: &str, result: &Value, reason: &str, agent: &AgentProcess, before: &[String]) {
    assert_eq!(result["status"], "FAILED", "{attack}: {result}");
    let output = result["output"].as_str().unwrap_or_default();
    assert!(
        output.contains(reason),
        "{attack}: `{output}` does not say `{reason}`"
    );
    assert_eq!(staged(agent), before, "{attack}: something was staged");
    println!("{attack}: refused: {output}");
}

fn rotation(
    signer: &GeneratedKey,
    add: &[&GeneratedKey],
    retire: &[&GeneratedKey],
    sequence: u64,
    id: &str,
) -> Value {
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    let message = KeyRotation {
        add: add.iter().map(|k| k.public_base64.clone()).collect(),
        retire: retire.iter().map(|k| k.public_base64.clone()).collect(),
        sequence,
        expires_unix: expires.timestamp(),
    };
    let signature = sign_rotation(&signer.private_base64, &message).unwrap();
    json!({
        "type": "rotate_firmware_keys", "id": id, "add": message.add, "retire": message.retire,
        "sequence": sequence,
        "expiresAt": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "signatureBase64": signature,
    })
}

fn every_attack_is_refused_with_its_reason_and_stages_nothing(backend: Backend) {
    let (old, new, stranger) = (
        generate_key().unwrap(),
        generate_key().unwrap(),
        generate_key().unwrap(),
    );
    let every_key = format!(
        "{},{},{}",
        old.public_base64, new.public_base64, stranger.public_base64
    );
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-supply"),
        &[
            "--firmware-trusted-keys",
            &every_key,
            "--firmware-allow-unsigned",
        ],
    );
    let api = Api::admin(&server);
    // The agent trusts the old key only, and stages without installing (it runs 0.1.0).
    let options = AgentOptions {
        args: vec![
            "--firmware-trusted-keys".into(),
            old.public_base64.clone(),
            "--firmware-activate".into(),
            "false".into(),
        ],
        ..AgentOptions::default()
    };
    let agent = AgentProcess::start_with(&server.base_url, DEVICE, options.clone());
    crate::agent_firmware::online(&api, &[&agent]);
    let none: Vec<String> = Vec::new();

    // Arbitrary software: unsigned, then signed by a stranger.
    let r = upload(&server, &api, "0.4.0", &artifact(4096, 1), None);
    let result = send(&api, update_of("unsigned", &r));
    refused("unsigned", &result, "unsigned", &agent, &none);
    let r = upload(
        &server,
        &api,
        "0.4.1",
        &artifact(4096, 2),
        signed(&stranger),
    );
    let result = send(&api, update_of("stranger", &r));
    refused(
        "stranger-signed",
        &result,
        "no trusted key verifies",
        &agent,
        &none,
    );

    // Freeze: a manifest that was valid at upload and has expired since.
    let r = upload(
        &server,
        &api,
        "0.4.2",
        &artifact(4096, 3),
        Some(Signing {
            expires: chrono::Utc::now() + chrono::Duration::seconds(3),
            ..signed(&old).unwrap()
        }),
    );
    std::thread::sleep(Duration::from_secs(4));
    let result = send(&api, update_of("frozen", &r));
    refused(
        "freeze (expired manifest)",
        &result,
        "expired",
        &agent,
        &none,
    );

    // Mix-and-match: release A's manifest with release B's artifact (same size).
    let a = upload(&server, &api, "0.4.3", &artifact(8192, 4), signed(&old));
    let b = upload(&server, &api, "0.4.4", &artifact(8192, 5), signed(&old));
    let mut mixed = update_of("mixed", &a);
    mixed["url"] = b["artifactUrl"].clone();
    let result = send(&api, mixed);
    refused("mix-and-match", &result, "wrong hash", &agent, &none);

    // Endless data: a manifest of 8 KiB, an artifact that goes on for 1 MiB.
    let big = upload(&server, &api, "0.4.5", &artifact(1 << 20, 6), signed(&old));
    let mut endless = update_of("endless", &a);
    endless["url"] = big["artifactUrl"].clone();
    let result = send(&api, endless);
    refused("endless data", &result, "size mismatch", &agent, &none);

    // Rollback by deployment: an older release signed without a downgrade permission, and the
    // server asking for the downgrade. The device refuses, its row is FAILED with the reason,
    // and the deployment pauses itself.
    let older = upload(&server, &api, "0.0.9", &artifact(4096, 7), signed(&old));
    let id = crate::agent_firmware::deploy(
        &api,
        json!({"releaseId": older["id"], "deviceIds": [DEVICE], "allowDowngrade": true,
               "failureThresholdPercent": 0}),
    );
    let paused = crate::agent_firmware::settle(&api, &id, "PAUSED", &mut []);
    let row = &paused["devices"][0];
    assert_eq!(row["status"], "FAILED", "{paused}");
    let reason = row["reason"].as_str().unwrap();
    assert!(reason.contains("alone does not suffice"), "{paused}");
    assert!(
        paused["pausedReason"]
            .as_str()
            .unwrap()
            .contains("1 of 1 devices failed"),
        "{paused}"
    );
    assert_eq!(
        staged(&agent),
        none,
        "rollback by deployment staged something"
    );
    println!("rollback (deployment): FAILED: {reason}; paused");
    api.post(
        &format!("/api/v1/firmware/deployments/{id}/cancel"),
        &json!({}),
    );

    // A good release raises the security floor to 5; a later, higher version that carries a
    // lower floor (an old build with a known hole, renumbered) is refused, and so is an older
    // one whose manifest permits the downgrade.
    let good = upload(
        &server,
        &api,
        "0.5.0",
        &artifact(4096, 8),
        Some(Signing {
            floor: Some(5),
            ..signed(&old).unwrap()
        }),
    );
    let result = send(&api, update_of("floor-5", &good));
    assert_eq!(result["status"], "SUCCESS", "{result}\n{}", agent.log());
    assert_eq!(result["data"]["signatureVerified"], true, "{result}");
    let after_good = vec!["edge-service-0.5.0".to_owned()];
    let low = upload(
        &server,
        &api,
        "0.6.0",
        &artifact(4096, 9),
        Some(Signing {
            floor: Some(2),
            ..signed(&old).unwrap()
        }),
    );
    let result = send(&api, update_of("floor-2", &low));
    refused(
        "rollback (below the security floor)",
        &result,
        "security floor 2 is below 5",
        &agent,
        &after_good,
    );
    let permitted = upload(
        &server,
        &api,
        "0.0.8",
        &artifact(4096, 10),
        Some(Signing {
            allow_downgrade: true,
            floor: Some(1),
            ..signed(&old).unwrap()
        }),
    );
    let mut downgrade = update_of("permitted-but-low", &permitted);
    downgrade["allowDowngrade"] = json!(true);
    let result = send(&api, downgrade);
    refused(
        "rollback (signed downgrade below the floor)",
        &result,
        "below 5",
        &agent,
        &after_good,
    );
    // The floor is on disk: a restarted agent still refuses. The server may still list the
    // old process ONLINE for a moment, so the wait is for the new run's id.
    let device = format!("/api/v1/devices/{}", agent.device_id);
    let run_id = |api: &Api| api.get(&device).body["data"]["runId"].clone();
    let before = run_id(&api);
    let agent = agent.restart();
    wait_until(
        Duration::from_secs(60),
        "the restarted agent's session",
        || {
            let now = run_id(&api);
            !now.is_null() && now != before
        },
    );
    crate::agent_firmware::online(&api, &[&agent]);
    let result = send(&api, update_of("floor-2-again", &low));
    refused(
        "rollback after a restart",
        &result,
        "below 5",
        &agent,
        &after_good,
    );

    // Key rotation: a stranger cannot rotate; the old key hands over to the new one and is
    // retired; a replay of that rotation is refused.
    let result = send(
        &api,
        rotation(&stranger, &[&stranger], &[], 1, "rot-stranger"),
    );
    refused(
        "rotation by a stranger",
        &result,
        "not signed by a trusted key",
        &agent,
        &after_good,
    );
    let result = send(&api, rotation(&old, &[&new], &[&old], 1, "rot-1"));
    assert_eq!(result["status"], "SUCCESS", "{result}\n{}", agent.log());
    assert_eq!(
        result["data"]["trustedKeys"],
        json!([new.public_base64]),
        "{result}"
    );
    let result = send(&api, rotation(&old, &[&old], &[], 1, "rot-replay"));
    refused(
        "replayed rotation",
        &result,
        "replayed",
        &agent,
        &after_good,
    );
    let by_old = upload(
        &server,
        &api,
        "0.7.0",
        &artifact(4096, 11),
        Some(Signing {
            floor: Some(5),
            ..signed(&old).unwrap()
        }),
    );
    let result = send(&api, update_of("retired-key", &by_old));
    refused(
        "key rotation (old key retired)",
        &result,
        "no trusted key verifies",
        &agent,
        &after_good,
    );
    let by_new = upload(
        &server,
        &api,
        "0.7.1",
        &artifact(4096, 12),
        Some(Signing {
            floor: Some(5),
            ..signed(&new).unwrap()
        }),
    );
    let result = send(&api, update_of("new-key", &by_new));
    assert_eq!(result["status"], "SUCCESS", "{result}\n{}", agent.log());
    assert_eq!(
        staged(&agent),
        vec!["edge-service-0.5.0", "edge-service-0.7.1"],
        "the new key's release is staged"
    );
    println!("key rotation: the old key retired, the new key accepted");
}
