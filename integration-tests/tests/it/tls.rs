//! TLS on every path, with a CA made for each test: the server serves HTTPS and WSS, agents
//! verify it with the plant's CA file, the server's cloud client verifies an https cloud, and
//! firmware downloads resume over https. Without the CA an agent is refused with a one-line
//! reason; SIGHUP swaps the server's certificate while device sessions stay up.

use std::time::Duration;

use crate::agent_firmware::{deploy, online, settle, transfers};
use crate::common::artifact;
use integration_tests::cloud_sim::CloudSim;
use integration_tests::cut_proxy::CutProxy;
use integration_tests::pki::TestPki;
use integration_tests::*;
use serde_json::json;

on_both_backends!(
    enrollment_commands_firmware_and_cloud_all_run_over_tls,
    an_agent_without_the_plants_ca_is_refused_and_says_why,
    sighup_swaps_the_certificate_and_device_sessions_stay,
);

#[test]
fn unusable_tls_files_stop_both_binaries_at_start() {
    let pki = TestPki::new("plant");
    let other = TestPki::new("other");
    let (cert, stranger) = (pki.server_cert(), other.server_cert());
    let data = TempDir::new("factory-data");
    let garbage = data.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let refuse = |program: &str, args: &[&str], says: &str| {
        let out = std::process::Command::new(binary(program))
            .args(args)
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{program} {args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{program} {args:?} should say {says:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    };
    let dir = data.path().display().to_string();
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let wrong_key = stranger.key.display().to_string();
    let junk = garbage.display().to_string();
    refuse(
        "factory-server",
        &["--data-dir", &dir, "--tls-cert", &c],
        "give both",
    );
    refuse(
        "factory-server",
        &[
            "--data-dir",
            &dir,
            "--tls-cert",
            &c,
            "--tls-key",
            &wrong_key,
        ],
        "does not fit",
    );
    refuse(
        "factory-server",
        &["--data-dir", &dir, "--tls-cert", &junk, "--tls-key", &k],
        "garbage.pem",
    );
    refuse(
        "factory-server",
        &["--data-dir", &dir, "--cloud-ca-file", &junk],
        "cloud_ca_file",
    );
    refuse(
        "edge-agent",
        &[
            "--data-dir",
            &dir,
            "--server-url",
            "https://127.0.0.1:1",
            "--device-id",
            "e1",
            "--ca-file",
            &junk,
        ],
        "ca_file",
    );
}

const TOKEN: &str = "tls-cloud-token";
const WAIT: Duration = Duration::from_secs(90);

fn agent_options(pki: &TestPki, scanner: bool) -> AgentOptions {
    AgentOptions {
        args: vec!["--ca-file".into(), pki.ca_file().display().to_string()],
        scanner,
        ..AgentOptions::default()
    }
}

/// How many sessions the agent opened (its log says so once per session).
fn sessions(agent: &AgentProcess) -> usize {
    agent.log().matches("connected; waiting for hello").count()
}

fn enrollment_commands_firmware_and_cloud_all_run_over_tls(backend: Backend) {
    let pki = TestPki::new("plant");
    let sim = CloudSim::start_tls(&pki.server_cert());
    assert!(sim.url.starts_with("https://"), "{}", sim.url);
    sim.require_token(TOKEN);
    let ca_file = pki.ca_file().display().to_string();
    let server = ServerProcess::start_tls(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &pki,
        &pki.server_cert(),
        &[
            "--cloud-url",
            &sim.url,
            "--cloud-token",
            TOKEN,
            "--cloud-ca-file",
            &ca_file,
        ],
    );
    let api = Api::admin(&server);
    let body = artifact(4 * 1024 * 1024, 3);
    let release = upload_release(&server, &api, "edge", "0.7.0", body.clone());
    let release_id = release["id"].as_str().unwrap().to_owned();

    // The agent reaches the server through a proxy that cuts the first connection to carry
    // more than 1.5 MB: the firmware download, since nothing else is that large.
    let proxy = CutProxy::start_blind(&server.base_url, 1_500_000);
    let mut agent = AgentProcess::start_with(&proxy.url, "tls-edge", agent_options(&pki, true));
    assert!(agent.server_url.starts_with("https://"));
    online(&api, &[&agent]);

    // A command round trip over wss.
    let result = command(
        &api,
        "tls-edge",
        json!({"type": "pull_logs", "id": "c-tls"}),
        false,
    );
    assert_eq!(result["status"], "SUCCESS", "{result}");

    // Records go agent → factory (https) → cloud (https), and from a DIRECT_CLOUD agent
    // straight to the cloud (https), each exactly once.
    let mut direct_options = agent_options(&pki, true);
    direct_options.args.extend(
        [
            "--connection-mode",
            "DIRECT_CLOUD",
            "--cloud-url",
            &sim.url,
            "--cloud-token",
            TOKEN,
        ]
        .map(String::from),
    );
    let direct = AgentProcess::start_with(&server.base_url, "tls-direct", direct_options);
    online(&api, &[&direct]);
    agent.scan(&gs1_codes("5", 30));
    direct.scan(&gs1_codes("4", 10));
    wait_until(WAIT, "40 bottles in the https cloud", || {
        sim.accepted()
            .iter()
            .filter(|a| a.route == "bottles")
            .map(|a| a.ids.len())
            .sum::<usize>()
            >= 40
    });
    std::thread::sleep(Duration::from_secs(2));
    let counts = sim.accepted_counts();
    assert!(
        counts.values().all(|n| *n == 1),
        "a record reached the cloud twice: {counts:?}"
    );

    // A deployment over https: the cut download resumes with a Range request, stages, and the
    // agent comes back on the new version.
    let id = deploy(
        &api,
        json!({"releaseId": release_id, "deviceIds": ["tls-edge"], "soakSecs": 1}),
    );
    let done = settle(&api, &id, "COMPLETED", &mut [&mut agent]);
    assert_eq!(done["counts"]["ACTIVE"], 1, "{done}\n{}", agent.log());
    assert!(proxy.has_cut(), "the proxy never cut the download");
    assert_eq!(
        std::fs::read(agent.data_dir.path().join("staging/edge-service-0.7.0")).unwrap(),
        body
    );
    let seen = transfers(&server.log(), &release_id);
    assert!(
        seen.len() >= 2,
        "expected a cut and a resumed transfer: {seen:?}"
    );
    let &(offset, _, complete) = seen.last().unwrap();
    assert!(complete && offset > 0, "resumed from {offset}: {seen:?}");
}

fn an_agent_without_the_plants_ca_is_refused_and_says_why(backend: Backend) {
    let pki = TestPki::new("plant");
    let stranger = TestPki::new("stranger");
    // The cloud's certificate comes from a CA the server was not told to trust.
    let sim = CloudSim::start_tls(&stranger.server_cert());
    let server = ServerProcess::start_tls(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &pki,
        &pki.server_cert(),
        &[
            "--cloud-url",
            &sim.url,
            "--cloud-token",
            TOKEN,
            "--cloud-ca-file",
            &pki.ca_file().display().to_string(),
        ],
    );
    let api = Api::admin(&server);
    let agent = AgentProcess::start(&server, "no-ca");
    wait_until(WAIT, "the refused certificate in the agent's log", || {
        agent.log().matches("not signed by a trusted CA").count() >= 2
    });
    let line = agent
        .log()
        .lines()
        .find(|l| l.contains("not signed by a trusted CA"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("give the plant's CA"),
        "the line says what to do: {line}"
    );
    assert_ne!(api.device_status("no-ca").as_deref(), Some("ONLINE"));
    assert_eq!(sessions(&agent), 0, "{}", agent.log());

    // A trusting agent next to it gets in, and its records meet the untrusted cloud: they
    // wait in the queue, and the server's log says why.
    let trusting = AgentProcess::start_with(&server.base_url, "with-ca", agent_options(&pki, true));
    online(&api, &[&trusting]);
    trusting.scan(&gs1_codes("6", 3));
    wait_until(WAIT, "the cloud refusal in the server's log", || {
        server.log().contains("not signed by a trusted CA")
    });
    assert_eq!(
        sim.requests().0,
        0,
        "no request may reach an unverified cloud"
    );
}

fn sighup_swaps_the_certificate_and_device_sessions_stay(backend: Backend) {
    let pki = TestPki::new("plant");
    let first = pki.server_cert();
    let server = ServerProcess::start_tls(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &pki,
        &first,
        &[],
    );
    let api = Api::admin(&server);
    assert_eq!(api.peer_certificate(), TestPki::leaf_der(&first.cert));
    let agent = AgentProcess::start_with(&server.base_url, "hup-edge", agent_options(&pki, false));
    online(&api, &[&agent]);
    assert_eq!(sessions(&agent), 1);

    // The renewal is copied over the same files, then the server is told.
    let renewed = pki.server_cert();
    std::fs::copy(&renewed.cert, &first.cert).unwrap();
    std::fs::copy(&renewed.key, &first.key).unwrap();
    server.signal("HUP");
    let new_leaf = TestPki::leaf_der(&renewed.cert);
    wait_until(WAIT, "the renewed certificate served", || {
        api.peer_certificate() == new_leaf
    });
    let result = command(
        &api,
        "hup-edge",
        json!({"type": "pull_logs", "id": "c-hup"}),
        false,
    );
    assert_eq!(result["status"], "SUCCESS", "{result}");
    assert_eq!(
        sessions(&agent),
        1,
        "the device session was dropped:\n{}",
        agent.log()
    );

    // A broken renewal is refused and the certificate in use stays.
    std::fs::write(&first.key, "not a key").unwrap();
    server.signal("HUP");
    wait_until(WAIT, "the refused reload in the log", || {
        server.log().contains("TLS certificate not reloaded")
    });
    assert_eq!(api.peer_certificate(), new_leaf);
    assert_eq!(api.device_status("hup-edge").as_deref(), Some("ONLINE"));
}
