//! Tests of the connection actor against a fake server that plays the server side of `/ws/device`.

use super::*;
use crate::identity::Identity;

#[test]
fn unknown_command_frames_still_yield_their_id() {
    let bytes = br#"{"type":"command","command":{"type":"teleport","id":"c-7"},"timeoutMs":1}"#;
    assert!(serde_json::from_slice::<ServerFrame>(bytes).is_err());
    let frame = serde_json::from_slice::<UnknownCommandFrame>(bytes).unwrap();
    assert_eq!(frame.kind, "command");
    assert_eq!(frame.command.id, "c-7");
}

/// Plays the server side of `/ws/device` over a plain TCP listener.
mod fake_server {
    use std::time::Duration;

    use actix_codec::Framed;
    use actix_http::ws::{hash_key, Codec, Frame, Message};
    use futures_util::{SinkExt, StreamExt};
    use protocol::device::{DeviceEvent, DeviceFrame, ServerFrame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Long enough for any backoff step the tests reach; short enough to fail fast.
    const WAIT: Duration = Duration::from_secs(10);

    pub struct Server {
        pub listener: TcpListener,
    }

    pub type Socket = Framed<TcpStream, Codec>;

    impl Server {
        pub async fn bind() -> (Server, u16) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            (Server { listener }, port)
        }

        /// The next connection and its request head (request line and headers).
        pub async fn accept(&self) -> (TcpStream, String) {
            let (mut stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
                .await
                .expect("the agent did not connect in time")
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(
                    stream.read(&mut byte).await.unwrap(),
                    1,
                    "request cut short"
                );
                head.push(byte[0]);
            }
            (stream, String::from_utf8(head).unwrap())
        }

        /// Accepts a WebSocket upgrade and returns the socket and the request head.
        pub async fn accept_ws(&self) -> (Socket, String) {
            let (mut stream, head) = self.accept().await;
            assert!(head.starts_with("GET /ws/device "), "{head}");
            let key = header(&head, "sec-websocket-key").unwrap();
            let accept = hash_key(key.as_bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                     connection: upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                std::str::from_utf8(&accept).unwrap()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
            (Framed::new(stream, Codec::new()), head)
        }

        /// Answers the next request with a complete HTTP response and closes it.
        pub async fn answer(&self, status: &str, body: &str) -> String {
            let (mut stream, head) = self.accept().await;
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            head
        }
    }

    pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    pub async fn send(socket: &mut Socket, frame: &ServerFrame) {
        let text = serde_json::to_string(frame).unwrap();
        socket.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send_text(socket: &mut Socket, text: &str) {
        socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// The next frame of any kind from the agent.
    pub async fn next_frame(socket: &mut Socket) -> Frame {
        tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("the agent sent nothing in time")
            .expect("the agent closed the socket")
            .unwrap()
    }

    thread_local! {
        /// Events of a `batch` frame not handed out yet (each test runs on its own thread
        /// with one socket at a time).
        static PENDING: std::cell::RefCell<std::collections::VecDeque<DeviceEvent>> =
            Default::default();
    }

    /// The next event the agent sends, alone or in a batch, skipping pings and pongs.
    pub async fn next_event(socket: &mut Socket) -> DeviceEvent {
        loop {
            if let Some(event) = PENDING.with(|p| p.borrow_mut().pop_front()) {
                return event;
            }
            match next_frame(socket).await {
                Frame::Text(bytes) => match serde_json::from_slice(&bytes).unwrap() {
                    DeviceFrame::Event(event) => return event,
                    DeviceFrame::Batch { events } => PENDING.with(|p| {
                        p.borrow_mut()
                            .extend(events.into_iter().map(DeviceEvent::from))
                    }),
                    DeviceFrame::Auth { .. } => panic!("unexpected auth frame"),
                },
                Frame::Ping(_) | Frame::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next command result, skipping status frames.
    pub async fn next_result(socket: &mut Socket) -> protocol::CommandResult {
        loop {
            match next_event(socket).await {
                DeviceEvent::CommandResult(result) => return result,
                DeviceEvent::Status(_) => {}
                other => panic!("unexpected event {other:?}"),
            }
        }
    }
}

fn test_config(port: u16) -> Config {
    Config {
        data_dir: crate::store::tests::temp_dir(),
        server_url: format!("http://127.0.0.1:{port}"),
        device_id: "edge-t".into(),
        enrollment_key: Some("the-key".parse().unwrap()),
        name: "edge-t".into(),
        company_id: Some("acme".into()),
        production_line_id: None,
        connection_mode: crate::config::ConnectionMode::ViaLocalServer,
        cloud_url: None,
        cloud_token: None,
        ca_file: None,
        status_interval: Duration::from_millis(200),
        log_level: "info".into(),
        log_file: crate::store::tests::temp_dir().join("agent.log"),
        scanner_listen: None,
        printer: None,
        batch_size: 100,
        pallet_size: 10,
        reboot_command: vec!["/bin/true".into()],
        shutdown_command: vec!["/bin/true".into()],
        firmware_staging_dir: crate::store::tests::temp_dir(),
        firmware_trusted_keys: Vec::new(),
        firmware_require_signature: false,
        firmware_allow_unsigned: false,
        allow_firmware_downgrade: false,
        firmware_activate: true,
    }
}

type Started = (
    Addr<StoreActor>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    Addr<Connection>,
);

/// Starts every actor of the agent on a store holding `token`, if any.
fn start_agent(config: Config, token: Option<&str>) -> Started {
    start_agent_as(config, token, env!("CARGO_PKG_VERSION"))
}

/// The same, running the given firmware version.
fn start_agent_as(config: Config, token: Option<&str>, version: &str) -> Started {
    let store = crate::store::Store::open(&config.data_dir).unwrap();
    if let Some(token) = token {
        store.set_token(token).unwrap();
    }
    let cli = <crate::config::Cli as clap::Parser>::try_parse_from([
        "edge-agent",
        "--server-url",
        &config.server_url,
        "--device-id",
        &config.device_id,
    ])
    .unwrap();
    let source = crate::config::ConfigSource::from_cli(cli).unwrap();
    let agent = crate::runtime::start(
        config,
        source,
        store,
        Identity::for_this_process().running(version.to_owned()),
        crate::logs::LogControl::detached(),
    );
    (agent.store, agent.runs, agent.connection)
}

#[actix::test]
async fn a_session_answers_hello_commands_pings_and_reconnects_after_close() {
    use actix_http::ws::{Frame as SFrame, Message as SMessage};
    use futures_util::SinkExt;
    use protocol::CommandKind;
    use std::sync::atomic::Ordering;

    let (server, port) = fake_server::Server::bind().await;
    let (_store, runs, _connection) = start_agent(test_config(port), Some("tok-1"));

    let (mut socket, head) = server.accept_ws().await;
    assert_eq!(
        fake_server::header(&head, "authorization"),
        Some("Bearer tok-1")
    );

    fake_server::send(
        &mut socket,
        &ServerFrame::Hello {
            device_id: "edge-t".into(),
            server_time: chrono::Utc::now(),
        },
    )
    .await;
    let DeviceEvent::Status(status) = fake_server::next_event(&mut socket).await else {
        panic!("the first event after hello must be a status");
    };
    assert_eq!(status.status, "ONLINE");
    assert_eq!(status.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(status.run_id.is_some());
    let metrics = status.metrics.unwrap();
    assert_eq!(metrics["connectionMode"], "VIA_LOCAL_SERVER");
    assert!(metrics["uptimeSecs"].is_u64());
    // The status period is 200 ms, so a second one follows soon.
    assert!(matches!(
        fake_server::next_event(&mut socket).await,
        DeviceEvent::Status(_)
    ));

    let force_sync = ServerFrame::Command {
        command: Command::new("c-1", CommandKind::ForceSync),
        timeout_ms: 15_000,
    };
    fake_server::send(&mut socket, &force_sync).await;
    let first = fake_server::next_result(&mut socket).await;
    assert_eq!(first.command_id, "c-1");
    assert!(first.success);

    // Garbage keeps the session; an unknown command type still gets an answer.
    fake_server::send_text(&mut socket, "not json at all").await;
    fake_server::send_text(
        &mut socket,
        r#"{"type":"command","command":{"type":"teleport","id":"c-2"},"timeoutMs":1}"#,
    )
    .await;
    let refused = fake_server::next_result(&mut socket).await;
    assert_eq!(refused.command_id, "c-2");
    assert!(!refused.success);

    fake_server::send(&mut socket, &force_sync).await;
    assert_eq!(fake_server::next_result(&mut socket).await, first);
    assert_eq!(runs.load(Ordering::Relaxed), 1);

    socket
        .send(SMessage::Ping("are you there".into()))
        .await
        .unwrap();
    loop {
        match fake_server::next_frame(&mut socket).await {
            SFrame::Pong(bytes) => {
                assert_eq!(&bytes[..], b"are you there");
                break;
            }
            SFrame::Text(_) | SFrame::Ping(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }

    socket
        .send(SMessage::Close(Some(CloseCode::Away.into())))
        .await
        .unwrap();
    loop {
        match fake_server::next_frame(&mut socket).await {
            SFrame::Close(_) => break,
            SFrame::Text(_) | SFrame::Ping(_) | SFrame::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
    drop(socket);

    let (_socket, head) = server.accept_ws().await;
    assert_eq!(
        fake_server::header(&head, "authorization"),
        Some("Bearer tok-1")
    );
}

#[actix::test]
async fn a_refused_token_is_cleared_and_the_device_enrolls_again() {
    use protocol::rest::{DeviceTokenResponse, Envelope, ErrorBody, ErrorEnvelope};

    let (server, port) = fake_server::Server::bind().await;
    let (store, _, _connection) = start_agent(test_config(port), Some("old-token"));

    let refusal = serde_json::to_string(&ErrorEnvelope {
        success: false,
        error: ErrorBody {
            code: "invalid_token".into(),
            message: "token revoked".into(),
        },
    })
    .unwrap();
    let head = server.answer("401 Unauthorized", &refusal).await;
    assert!(head.starts_with("GET /ws/device "), "{head}");

    let issued = serde_json::to_string(&Envelope::ok(DeviceTokenResponse {
        token: "new-token".into(),
        device_id: "edge-t".into(),
        expires_at: chrono::Utc::now(),
    }))
    .unwrap();
    let head = server.answer("200 OK", &issued).await;
    let request_line = head.lines().next().unwrap();
    assert_eq!(
        request_line,
        format!(
            "POST /api/v1/devices/edge-t/token?name=edge-t&companyId=acme&version={} HTTP/1.1",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(
        fake_server::header(&head, "x-enrollment-key"),
        Some("the-key")
    );

    let (_socket, head) = server.accept_ws().await;
    assert_eq!(
        fake_server::header(&head, "authorization"),
        Some("Bearer new-token")
    );
    assert_eq!(
        store.send(GetToken).await.unwrap().unwrap().as_deref(),
        Some("new-token")
    );
}

#[actix::test]
async fn shutdown_sends_a_normal_close_frame() {
    use actix_http::ws::{Frame as SFrame, Message as SMessage};
    use futures_util::SinkExt;

    let (server, port) = fake_server::Server::bind().await;
    let (_store, _, connection) = start_agent(test_config(port), Some("tok"));
    let (mut socket, _) = server.accept_ws().await;
    fake_server::send(
        &mut socket,
        &ServerFrame::Hello {
            device_id: "edge-t".into(),
            server_time: chrono::Utc::now(),
        },
    )
    .await;
    fake_server::next_event(&mut socket).await;

    connection.send(Shutdown).await.unwrap();
    let reason = loop {
        match fake_server::next_frame(&mut socket).await {
            SFrame::Close(reason) => break reason,
            SFrame::Text(_) | SFrame::Ping(_) | SFrame::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    };
    assert_eq!(reason.map(|r| r.code), Some(CloseCode::Normal));
    socket
        .send(SMessage::Close(Some(CloseCode::Normal.into())))
        .await
        .unwrap();
}

#[actix::test]
async fn the_first_hello_commits_the_trial_and_reports_a_rollback() {
    let (server, port) = fake_server::Server::bind().await;
    let config = test_config(port);
    let staging = config.firmware_staging_dir.clone();
    install::save(
        &staging,
        &install::Installed {
            active: Some("5.0.0".into()),
            previous: Some("4.0.0".into()),
            trial: Some(install::Trial {
                version: "5.0.0".into(),
                starts: 1,
            }),
            rolled_back: Some(install::RolledBack {
                from: "6.0.0".into(),
                to: "5.0.0".into(),
            }),
        },
    )
    .unwrap();
    let (_store, _, _connection) = start_agent_as(config, Some("tok"), "5.0.0");
    let (mut socket, _) = server.accept_ws().await;
    fake_server::send(
        &mut socket,
        &ServerFrame::Hello {
            device_id: "edge-t".into(),
            server_time: chrono::Utc::now(),
        },
    )
    .await;
    let alert = loop {
        match fake_server::next_event(&mut socket).await {
            DeviceEvent::Alert(alert) => break alert,
            // The installed version, not the crate's.
            DeviceEvent::Status(status) => {
                assert_eq!(status.version.as_deref(), Some("5.0.0"));
                assert_eq!(status.metrics.unwrap()["version"], "5.0.0");
            }
            other => panic!("unexpected event {other:?}"),
        }
    };
    assert_eq!(alert.severity, "error");
    assert!(
        alert
            .message
            .contains("firmware 6.0.0 was rolled back to 5.0.0"),
        "{}",
        alert.message
    );
    let state = install::load(&staging).unwrap();
    assert_eq!(state.trial, None);
    assert_eq!(state.rolled_back, None);
    assert_eq!(state.active.as_deref(), Some("5.0.0"));
    std::fs::remove_dir_all(&staging).unwrap();
}
