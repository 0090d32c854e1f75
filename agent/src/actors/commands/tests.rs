//! Tests of the command handler: one run per command id, and each command type's answer.

use clap::Parser;
use serde_json::json;

use super::*;
use crate::config::Cli;
use crate::identity::Identity;
use crate::logs::LogControl;
use crate::store::tests::temp_dir;
use crate::store::Store;

/// Every actor of an agent whose server does not answer (port 9 is discard).
fn agent(extra: &[&str]) -> crate::runtime::Agent {
    agent_in(&temp_dir(), extra)
}

/// The same, with its data in `dir` and a device token stored (downloads need one).
fn agent_in(dir: &std::path::Path, extra: &[&str]) -> crate::runtime::Agent {
    let dir = dir.to_owned();
    let dir_text = dir.display().to_string();
    let mut args = vec![
        "edge-agent",
        "--server-url",
        "http://127.0.0.1:9",
        "--device-id",
        "edge-u",
        "--company-id",
        "acme",
        "--data-dir",
        &dir_text,
    ];
    args.extend_from_slice(extra);
    let source = ConfigSource::from_cli(Cli::try_parse_from(args).unwrap()).unwrap();
    let config = source.resolve::<()>(None).unwrap();
    let store = Store::open(&dir).unwrap();
    store.set_token("device-token").unwrap();
    crate::runtime::start(
        config,
        source,
        store,
        Identity::for_this_process(),
        LogControl::detached(),
    )
}

async fn exec(agent: &crate::runtime::Agent, id: &str, kind: CommandKind) -> Answered {
    agent
        .commands
        .send(Execute(Command::new(id, kind)))
        .await
        .unwrap()
}

#[actix::test]
async fn the_same_id_runs_once_even_when_delivered_concurrently() {
    let agent = agent(&[]);
    let enable = || CommandKind::EnableDevice;
    let first = exec(&agent, "en-1", enable()).await;
    let second = exec(&agent, "en-1", enable()).await;
    assert_eq!(first, second);
    assert_eq!(agent.runs.load(Ordering::Relaxed), 1);

    let command = Command::new("en-2", enable());
    let (a, b) = futures_util::future::join(
        agent.commands.send(Execute(command.clone())),
        agent.commands.send(Execute(command)),
    )
    .await;
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(agent.runs.load(Ordering::Relaxed), 2);
}

#[actix::test]
async fn restart_asks_for_the_exit_code_once() {
    let agent = agent(&[]);
    let first = exec(&agent, "rs-1", CommandKind::RestartService).await;
    assert!(first.result.success);
    assert_eq!(first.exit, Some(EXIT_RESTART));
    // Answered from the store: the result again, but no second restart.
    let again = exec(&agent, "rs-1", CommandKind::RestartService).await;
    assert_eq!(again.result, first.result);
    assert_eq!(again.exit, None);
}

#[actix::test]
async fn invalid_and_unsupported_commands_are_refused_with_the_reason() {
    let agent = agent(&[]);
    let r = exec(
        &agent,
        "dd-1",
        CommandKind::DisableDevice { reason: " ".into() },
    )
    .await;
    assert!(!r.result.success);
    assert!(
        r.result.output.starts_with("invalid command:"),
        "{}",
        r.result.output
    );
    let r = exec(
        &agent,
        "sh-1",
        CommandKind::ExecShell {
            template: "format_disk".into(),
            args: Default::default(),
        },
    )
    .await;
    assert!(
        r.result.output.starts_with("refused: unknown template"),
        "{}",
        r.result.output
    );
    let r = exec(
        &agent,
        "pc-1",
        CommandKind::PushConfig {
            patch: json!({"statusIntervalMs": 1}),
        },
    )
    .await;
    assert!(!r.result.success);
    assert!(
        r.result.output.contains("below the minimum"),
        "{}",
        r.result.output
    );
}

#[actix::test]
async fn force_sync_reports_failure_and_counts_when_the_server_is_away() {
    let agent = agent(&[]);
    let codes: Vec<String> = (0..3).map(|i| format!("010400638133393121U{i}")).collect();
    let outcome = agent
        .production
        .send(crate::actors::production::ScanLines(codes))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.bottles, 3);
    let r = exec(&agent, "fs-1", CommandKind::ForceSync).await;
    assert!(!r.result.success, "{}", r.result.output);
    assert_eq!(r.result.data.as_ref().unwrap()["pending"], 3);
    let r = exec(
        &agent,
        "cq-1",
        CommandKind::ClearQueue {
            include_completed: false,
        },
    )
    .await;
    assert_eq!(r.result.output, "Cleared 3 pending and 0 sent records");
}

/// Serves one download: the head and the first half of `body` at once, the rest only
/// after the returned sender is used, so the download is in flight until then.
fn held_download(body: Vec<u8>) -> (String, std::sync::mpsc::Sender<()>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/artifact", listener.local_addr().unwrap());
    let (release, released) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        let half = body.len() / 2;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body[..half]).unwrap();
        stream.flush().unwrap();
        // A dropped sender (a failed test) releases too.
        let _ = released.recv();
        stream.write_all(&body[half..]).unwrap();
    });
    (url, release)
}

fn update(version: &str, url: &str, body: &[u8]) -> CommandKind {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    CommandKind::UpdateFirmware {
        version: version.into(),
        url: url.into(),
        sha256: protocol::hex::encode(digest.as_ref()),
        size: body.len() as u64,
        signature_base64: None,
        signature_expires_at: None,
        deployment_id: Some("dep-1".into()),
        allow_downgrade: false,
        project: None,
        manifest_allow_downgrade: false,
        security_floor: None,
    }
}

#[actix::test]
async fn other_commands_are_answered_while_a_download_runs_and_activation_restarts() {
    let dir = temp_dir();
    let agent = agent_in(&dir, &[]);
    let body = vec![7u8; 64 * 1024];
    let (url, release) = held_download(body.clone());
    let first = agent
        .commands
        .send(Execute(Command::new("up-1", update("99.0.0", &url, &body))));
    // The same id again while it runs: answered with the first run's result.
    let repeat = agent
        .commands
        .send(Execute(Command::new("up-1", update("99.0.0", &url, &body))));

    let sync = tokio::time::timeout(
        Duration::from_secs(10),
        exec(&agent, "fs-1", CommandKind::ForceSync),
    )
    .await
    .expect("force_sync waited for the download");
    assert_eq!(sync.result.command_id, "fs-1");
    // A restart would cut the download off: refused with the reason, and no exit. (The
    // first half is on disk by then, so the download has surely begun.)
    let part = crate::firmware::part_path(&dir.join("staging"), "99.0.0");
    for _ in 0..200 {
        if part.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(part.exists(), "the download never began");
    let restart = exec(&agent, "rs-during", CommandKind::RestartService).await;
    assert!(!restart.result.success);
    assert!(
        restart
            .result
            .output
            .contains("firmware 99.0.0 is downloading"),
        "{}",
        restart.result.output
    );
    assert_eq!(restart.exit, None);
    let staging = dir.join("staging");
    assert!(!staging.join(install::CURRENT_LINK).exists());

    release.send(()).unwrap();
    let first = first.await.unwrap();
    assert!(first.result.success, "{}", first.result.output);
    assert_eq!(first.exit, Some(EXIT_RESTART));
    let data = first.result.data.clone().unwrap();
    assert_eq!(data["activating"], true);
    assert_eq!(data["previousVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(data["version"], "99.0.0");
    assert_eq!(data["size"], body.len());
    let repeat = repeat.await.unwrap();
    assert_eq!(repeat.result, first.result);
    assert_eq!(repeat.exit, None);
    // up-1 (once, for both deliveries), fs-1 and rs-during.
    assert_eq!(agent.runs.load(Ordering::Relaxed), 3);

    assert_eq!(
        std::fs::read_link(staging.join(install::CURRENT_LINK)).unwrap(),
        std::path::PathBuf::from("edge-service-99.0.0")
    );
    let state = install::load(&staging).unwrap();
    assert_eq!(state.active.as_deref(), Some("99.0.0"));
    assert_eq!(state.previous.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(state.trial.map(|t| t.starts), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[actix::test]
async fn no_activation_when_it_is_off_or_the_version_already_runs() {
    let dir = temp_dir();
    let agent = agent_in(&dir, &["--firmware-activate", "false"]);
    let body = b"new build".to_vec();
    let (url, release) = held_download(body.clone());
    release.send(()).unwrap();
    let r = exec(&agent, "up-2", update("99.0.0", &url, &body)).await;
    assert!(r.result.success, "{}", r.result.output);
    assert_eq!(r.exit, None);
    let data = r.result.data.unwrap();
    assert_eq!(data["activating"], false);
    assert!(data.get("previousVersion").is_none());
    let staging = dir.join("staging");
    assert!(staging.join("edge-service-99.0.0").is_file());
    assert!(!staging.join(install::CURRENT_LINK).exists());
    assert!(!staging.join(install::STATE_FILE).exists());
    // The download ended, so a restart is no longer refused.
    let restart = exec(&agent, "rs-after", CommandKind::RestartService).await;
    assert!(restart.result.success, "{}", restart.result.output);
    assert_eq!(restart.exit, Some(EXIT_RESTART));

    let dir = temp_dir();
    let agent = agent_in(&dir, &[]);
    let (url, release) = held_download(body.clone());
    release.send(()).unwrap();
    let own = env!("CARGO_PKG_VERSION");
    let r = exec(&agent, "up-3", update(own, &url, &body)).await;
    assert!(r.result.success, "{}", r.result.output);
    assert_eq!(r.exit, None);
    assert_eq!(r.result.data.unwrap()["activating"], false);
    let staging = dir.join("staging");
    assert!(!staging.join(install::CURRENT_LINK).exists());
    assert!(!staging.join(install::STATE_FILE).exists());
}
