//! Firmware deployments through real agents, on SQLite and PostgreSQL: a good release goes
//! ACTIVE on a group in two waves (each agent stages, installs, exits 75, is restarted and comes
//! back on the new version); a wrong hash, a bad signature and a truncated download fail on the
//! device with the reason and stage nothing, and the wrong hash auto-pauses its deployment;
//! a download cut in the middle resumes where it stopped, by the server's own byte counts;
//! a new build that never reaches the server is rolled back by the agent and FAILED.

use std::path::Path;
use std::time::Duration;

use crate::common::artifact;
use base64::Engine;
use integration_tests::cut_proxy::CutProxy;
use integration_tests::*;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

on_both_backends!(
    a_good_release_goes_active_on_a_group_in_two_waves,
    broken_releases_fail_on_the_device_and_stage_nothing,
    a_cut_download_resumes_where_it_stopped,
    a_build_that_never_reaches_the_server_is_rolled_back,
);

const WAIT: Duration = Duration::from_secs(90);

pub(crate) fn online(api: &Api, agents: &[&AgentProcess]) {
    for agent in agents {
        wait_until(WAIT, "the agent ONLINE", || {
            api.device_status(&agent.device_id).as_deref() == Some("ONLINE")
        });
    }
}

pub(crate) fn deploy(api: &Api, body: Value) -> String {
    let reply = api.post("/api/v1/firmware/deployments", &body);
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.data()["id"].as_str().unwrap().to_owned()
}

/// Waits for the deployment to reach `status`, restarting agents that exit 75 meanwhile, as
/// their supervisor would.
pub(crate) fn settle(api: &Api, id: &str, status: &str, agents: &mut [&mut AgentProcess]) -> Value {
    let mut last = Value::Null;
    wait_until(WAIT, &format!("deployment {status}"), || {
        for agent in agents.iter_mut() {
            agent.respawn_if_asked();
        }
        last = deployment(api, id);
        last["status"] == status
    });
    last
}

fn row<'a>(deployment: &'a Value, device: &str) -> &'a Value {
    deployment["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["deviceId"] == device)
        .unwrap_or_else(|| panic!("{device} not in {deployment}"))
}

/// Names in the agent's staging directory, temporary ones included.
fn staged(agent: &AgentProcess) -> Vec<String> {
    let dir = agent.data_dir.path().join("staging");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
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

fn stored_file(server: &ServerProcess, release: &Value) -> std::path::PathBuf {
    server
        .data_dir
        .path()
        .join("firmware")
        .join(release["storedName"].as_str().unwrap())
}

fn a_good_release_goes_active_on_a_group_in_two_waves(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    // Started the way the systemd launcher does it, so the new build really runs after the
    // restart: `<staging dir>/current` when there is one.
    let options = AgentOptions {
        launch_installed: true,
        ..AgentOptions::default()
    };
    let mut a = AgentProcess::start_with(&server.base_url, "fw-a", options.clone());
    let mut b = AgentProcess::start_with(&server.base_url, "fw-b", options);
    online(&api, &[&a, &b]);
    let group = api.post("/api/v1/device-groups", &json!({"name": "line-1"}));
    let group_id = group.data()["id"].as_str().unwrap().to_owned();
    api.post(
        &format!("/api/v1/device-groups/{group_id}/members"),
        &json!({"deviceIds": ["fw-a", "fw-b"]}),
    );
    // The release is a real build: this very edge-agent binary, as version 0.2.0.
    let body = std::fs::read(binary("edge-agent")).unwrap();
    let release = upload_release(&server, &api, "edge", "0.2.0", body.clone());
    let soak = 2;
    let id = deploy(
        &api,
        json!({"releaseId": release["id"], "groupId": group_id, "wavePercent": 50,
               "soakSecs": soak, "failureThresholdPercent": 0}),
    );
    let done = settle(&api, &id, "COMPLETED", &mut [&mut a, &mut b]);
    assert_eq!(
        done["counts"]["ACTIVE"],
        2,
        "{done}\n{}\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(row(&done, "fw-a")["wave"], 1);
    assert_eq!(row(&done, "fw-b")["wave"], 2);
    let soaked = |d: &str| -> chrono::DateTime<chrono::Utc> {
        row(&done, d)["soakUntil"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        soaked("fw-b") - soaked("fw-a") >= chrono::Duration::seconds(soak),
        "wave 2 came back before wave 1's soak ended: {done}"
    );
    for agent in [&a, &b] {
        let staging = agent.data_dir.path().join("staging");
        assert_eq!(
            std::fs::read(staging.join("edge-service-0.2.0")).unwrap(),
            body
        );
        assert_eq!(
            std::fs::read_link(staging.join("current")).unwrap(),
            Path::new("edge-service-0.2.0"),
            "the install link names the new release"
        );
        let device = api.get(&format!("/api/v1/devices/{}", agent.device_id));
        assert_eq!(device.data()["version"], "0.2.0");
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/exe", agent.pid())).unwrap(),
            staging.join("edge-service-0.2.0"),
            "the process runs the installed build"
        );
    }
}

fn broken_releases_fail_on_the_device_and_stage_nothing(backend: Backend) {
    let signer = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let stranger = Ed25519KeyPair::from_seed_unchecked(&[9; 32]).unwrap();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    // The server trusts the signer; the agents trust someone else. Both take unsigned
    // releases: the wrong hash and the truncated download are the point here, not the
    // secure default (`supply_chain` covers that).
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-fw-broken"),
        &[
            "--firmware-trusted-keys",
            &b64(signer.public_key().as_ref()),
            "--firmware-allow-unsigned",
        ],
    );
    let api = Api::admin(&server);
    let options = AgentOptions {
        args: vec![
            "--firmware-trusted-keys".into(),
            b64(stranger.public_key().as_ref()),
            "--firmware-allow-unsigned".into(),
        ],
        ..AgentOptions::default()
    };
    let mut a = AgentProcess::start_with(&server.base_url, "fw-x", options.clone());
    let mut b = AgentProcess::start_with(&server.base_url, "fw-y", options);
    online(&api, &[&a, &b]);

    // A wrong hash: the stored file changed after upload. Wave 1 (fw-x) fails, which is past
    // a threshold of 0 %, so the deployment pauses before fw-y gets anything.
    let release = upload_release(&server, &api, "edge", "0.3.0", artifact(256 * 1024, 3));
    std::fs::write(stored_file(&server, &release), artifact(256 * 1024, 4)).unwrap();
    let id = deploy(
        &api,
        json!({"releaseId": release["id"], "deviceIds": ["fw-x", "fw-y"], "waveSize": 1,
               "failureThresholdPercent": 0, "soakSecs": 1}),
    );
    let paused = settle(&api, &id, "PAUSED", &mut [&mut a, &mut b]);
    let x = row(&paused, "fw-x");
    assert_eq!(x["status"], "FAILED", "{paused}");
    assert!(
        x["reason"].as_str().unwrap().contains("wrong hash"),
        "{paused}"
    );
    assert_eq!(row(&paused, "fw-y")["status"], "PENDING", "{paused}");
    assert!(paused["pausedReason"]
        .as_str()
        .unwrap()
        .contains("1 of 1 devices failed"));
    assert_eq!(staged(&a), Vec::<String>::new(), "nothing staged on fw-x");
    let cancelled = api.post(
        &format!("/api/v1/firmware/deployments/{id}/cancel"),
        &json!({}),
    );
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);

    // A bad signature, as far as the agent knows: signed by a key it does not trust.
    let bytes = artifact(64 * 1024, 5);
    let sha: String = ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    let manifest = format!(
        "factory-firmware-manifest-v1\nproject=edge\nversion=0.4.0\nsha256={sha}\nsize={}\nexpires={}\n",
        bytes.len(),
        expires.timestamp()
    );
    let signature = b64(signer.sign(manifest.as_bytes()).as_ref());
    let release = upload_release_with(
        &server,
        api.token().unwrap(),
        &format!(
            "version=0.4.0&project=edge&filename=edge-service.bin&signatureBase64={}&signatureExpiresAt={}",
            query_escape(&signature),
            query_escape(&expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ),
        &bytes,
    );
    let id = deploy(
        &api,
        json!({"releaseId": release["id"], "deviceIds": ["fw-x"], "failureThresholdPercent": 100}),
    );
    let done = settle(&api, &id, "COMPLETED", &mut [&mut a, &mut b]);
    let x = row(&done, "fw-x");
    assert_eq!(x["status"], "FAILED", "{done}");
    assert!(
        x["reason"].as_str().unwrap().contains("signature"),
        "{done}"
    );
    assert_eq!(staged(&a), Vec::<String>::new());

    // A truncated download: the stored file lost its second half.
    let release = upload_release(&server, &api, "edge", "0.5.0", artifact(512 * 1024, 6));
    let path = stored_file(&server, &release);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(200 * 1024).unwrap();
    let id = deploy(
        &api,
        json!({"releaseId": release["id"], "deviceIds": ["fw-y"], "failureThresholdPercent": 100}),
    );
    let done = settle(&api, &id, "COMPLETED", &mut [&mut a, &mut b]);
    let y = row(&done, "fw-y");
    assert_eq!(y["status"], "FAILED", "{done}");
    let reason = y["reason"].as_str().unwrap();
    assert!(
        reason.contains("size") || reason.contains("download"),
        "{done}"
    );
    assert_eq!(staged(&b), Vec::<String>::new(), "nothing staged on fw-y");
    // Neither agent installed anything, so both still run their own build.
    for agent in [&a, &b] {
        assert!(!agent.data_dir.path().join("staging/current").exists());
    }
}

/// `(offset, sent, complete)` of every artifact transfer of `release` in the server log.
pub(crate) fn transfers(log: &str, release: &str) -> Vec<(u64, u64, bool)> {
    let plain = strip_ansi(log);
    plain
        .lines()
        .filter(|l| l.contains("artifact transfer ended") && l.contains(release))
        .map(|l| {
            let field = |name: &str| -> String {
                let at = l.find(&format!("{name}=")).unwrap() + name.len() + 1;
                l[at..].split_whitespace().next().unwrap().to_owned()
            };
            (
                field("offset").parse().unwrap(),
                field("sent").parse().unwrap(),
                field("complete") == "true",
            )
        })
        .collect()
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn a_cut_download_resumes_where_it_stopped(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let size = 8 * 1024 * 1024;
    let body = artifact(size, 8);
    let release = upload_release(&server, &api, "edge", "0.6.0", body.clone());
    let release_id = release["id"].as_str().unwrap().to_owned();
    // Everything the agent sends goes through the proxy; the first artifact download is cut
    // after 1.5 MB.
    let proxy = CutProxy::start(&server.base_url, "/artifact", 1_500_000);
    let mut agent = AgentProcess::start_with(&proxy.url, "fw-r", AgentOptions::default());
    online(&api, &[&agent]);
    let id = deploy(
        &api,
        json!({"releaseId": release_id, "deviceIds": ["fw-r"], "soakSecs": 1}),
    );
    let done = settle(&api, &id, "COMPLETED", &mut [&mut agent]);
    assert_eq!(done["counts"]["ACTIVE"], 1, "{done}\n{}", agent.log());
    assert!(proxy.has_cut(), "the proxy never cut a download");
    assert_eq!(
        std::fs::read(agent.data_dir.path().join("staging/edge-service-0.6.0")).unwrap(),
        body
    );

    let seen = transfers(&server.log(), &release_id);
    assert!(
        seen.len() >= 2,
        "expected a cut and a resumed transfer: {seen:?}"
    );
    let (first_offset, _, first_complete) = seen[0];
    assert_eq!(first_offset, 0);
    assert!(!first_complete, "the first transfer was cut: {seen:?}");
    let &(offset, sent, complete) = seen.last().unwrap();
    assert!(complete, "{seen:?}");
    // The resumed transfer starts where the agent's bytes ended (the proxy let through at most
    // 1.5 MB, headers included) and carries only the rest.
    assert!(
        offset > 0 && offset < 1_500_000,
        "resumed from {offset}: {seen:?}"
    );
    assert_eq!(offset + sent, size as u64, "{seen:?}");
    println!(
        "cut download: first transfer cut after the proxy forwarded {} bytes; resumed at {offset} with {sent} bytes of {size}",
        proxy
            .forwarded_before_cut
            .load(std::sync::atomic::Ordering::SeqCst)
    );
}

fn a_build_that_never_reaches_the_server_is_rolled_back(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    // Started the way the systemd launcher does it: `<staging dir>/current` when there is one.
    let options = AgentOptions {
        launch_installed: true,
        ..AgentOptions::default()
    };
    let mut agent = AgentProcess::start_with(&server.base_url, "fw-rb", options.clone());
    online(&api, &[&agent]);
    // The release is a real build: this very edge-agent binary, as version 0.7.0.
    let build = std::fs::read(binary("edge-agent")).unwrap();
    let release = upload_release(&server, &api, "edge", "0.7.0", build);
    let id = deploy(
        &api,
        json!({"releaseId": release["id"], "deviceIds": ["fw-rb"], "soakSecs": 1,
               "failureThresholdPercent": 100}),
    );
    assert_eq!(
        agent.wait_exit(WAIT),
        Some(75),
        "the agent installs and asks to be restarted: {}",
        agent.log()
    );
    wait_until(WAIT, "STAGED", || {
        deployment_statuses(&deployment(&api, &id))["fw-rb"] == "STAGED"
    });
    let staging = agent.data_dir.path().join("staging");
    assert!(staging.join("current").exists());

    // The new build starts three times from the staged file and never gets through to the
    // server. First it hangs (pointed at a closed port, and killed), as a build that crashes
    // early would. Then it refuses its settings, as a build would that no longer accepts
    // what its predecessor ran on: an unknown flag, then a setting it finds invalid. Those
    // two must not exit 2, which systemd does not restart; they exit 75 to be counted.
    let mut dir = std::mem::replace(&mut agent.data_dir, TempDir::new("unused"));
    let mut dead = AgentProcess::start_in("http://127.0.0.1:9", "fw-rb", options.clone(), dir);
    std::thread::sleep(Duration::from_millis(1500));
    dead.kill();
    dir = std::mem::replace(&mut dead.data_dir, TempDir::new("unused"));
    for refused in [
        vec!["--a-setting-from-a-later-release", "1"],
        vec!["--connection-mode", "DIRECT_CLOUD"],
    ] {
        let mut refusing = options.clone();
        refusing.args = refused.iter().map(|a| a.to_string()).collect();
        let mut dead = AgentProcess::start_in(&server.base_url, "fw-rb", refusing, dir);
        assert_eq!(
            dead.wait_exit(WAIT),
            Some(75),
            "a build on trial that refuses {refused:?} asks to be started again: {}",
            dead.log()
        );
        assert!(dead.log().contains("on trial"), "{}", dead.log());
        dir = std::mem::replace(&mut dead.data_dir, TempDir::new("unused"));
    }
    // The fourth start is the staged build again: it rolls itself back and exits 75 at once,
    // so the supervisor starts the previous build, which connects and reports the rollback.
    let mut fourth = AgentProcess::start_in(&server.base_url, "fw-rb", options.clone(), dir);
    assert_eq!(
        fourth.wait_exit(WAIT),
        Some(75),
        "the rolled-back build hands over: {}",
        fourth.log()
    );
    assert!(
        !fourth.data_dir.path().join("staging/current").exists(),
        "the install link is gone: the original build runs next"
    );
    let mut agent = fourth.restart();
    let done = settle(&api, &id, "COMPLETED", &mut [&mut agent]);
    let rb = row(&done, "fw-rb");
    assert_eq!(rb["status"], "FAILED", "{done}\n{}", agent.log());
    assert!(
        rb["reason"].as_str().unwrap().contains("rolled back"),
        "{done}"
    );
    wait_until(WAIT, "the original version reported", || {
        api.get("/api/v1/devices/fw-rb").data()["version"] == env!("CARGO_PKG_VERSION")
    });
}
