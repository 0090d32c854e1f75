//! The connection actor: one WebSocket to the factory server, kept open for the life of the
//! process.
//!
//! Each attempt reads the stored token (enrolling first when there is none), opens
//! `/ws/device` with `Authorization: Bearer`, and then answers the server's frames until the
//! socket closes, errors or goes quiet for `CLIENT_TIMEOUT`. After any of those the actor
//! waits out the backoff and tries again. An `epoch` number tags every attempt so that a
//! late answer of an abandoned attempt changes nothing.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::*;
use actix_codec::Framed;
use awc::error::{WsClientError, WsProtocolError};
use awc::http::StatusCode;
use awc::ws::{CloseCode, CloseReason, Codec, Frame, Message as WsMessage};
use awc::BoxedSocket;
use futures_util::stream::{SplitSink, StreamExt};
use protocol::commands::{Command, CommandResult};
use protocol::device::{AlertEvent, DeviceEvent, DeviceFrame, ServerFrame, TelemetryEvent};
use serde::Deserialize;

use crate::backoff::Backoff;
use crate::commands::{Answered, CommandHandler, Execute};
use crate::config::Config;
use crate::drain::Reenroll;
use crate::enroll::{self, EnrollError, Enrollment};
use crate::install;
use crate::outbox::{self, Next, Outbox};
use crate::status::{ReportNow, StatusReporter};
use crate::store::{ClearToken, GetToken, SetToken, StoreActor, StoreError};

/// How often the actor checks that the server is still talking, and pings it.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Silence from the server after which the socket counts as dead; the server pings every 5 s.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// A session that lasted this long was a working connection, so the backoff starts over.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// How long the WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame accepted from the server.
const MAX_FRAME_SIZE: usize = 1024 * 1024;
/// How long a closing socket gets to deliver its close frame (and, at shutdown, to receive
/// the server's) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Where Linux publishes the id of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

type WsSink = SplitSink<Framed<BoxedSocket, Codec>, WsMessage>;

/// Facts about this process that every status frame repeats.
#[derive(Debug, Clone)]
pub struct Identity {
    pub run_id: String,
    pub boot_id: Option<String>,
    pub started: Instant,
    /// The firmware version this process runs: the installed one (`install::begin_run`),
    /// which is the build's own version unless a staged release was activated.
    pub version: String,
}

impl Identity {
    /// Reads the boot id and makes the run id; call once per process.
    pub fn for_this_process() -> Self {
        Identity {
            run_id: uuid::Uuid::new_v4().to_string(),
            boot_id: read_boot_id(),
            started: Instant::now(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// The same identity running the given firmware version.
    pub fn running(self, version: String) -> Self {
        Identity { version, ..self }
    }
}

fn read_boot_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID_PATH)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Closes the socket with a normal close frame and stops the system.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// An event for the server: sent when a session is open, dropped otherwise (records never
/// travel as events, so nothing that must survive is lost). Telemetry is coalesced and
/// paced (`outbox`); command results and progress go out at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendEvent(pub DeviceEvent);

/// New settings after a `push_config`. The server URL is not among the settings a push may
/// change (`remote_config::REMOTE_SETTINGS`), so the session stays where it is.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConfigChanged(pub Config);

/// Why an attempt to open a session failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("store actor is gone: {0}")]
    Mailbox(#[from] MailboxError),
    #[error("no device token is stored and no enrollment key is set")]
    NoKey,
    #[error("enrollment: {0}")]
    Enroll(#[from] EnrollError),
    #[error(
        "server refused the device token ({0}); it was cleared and the device will enroll again"
    )]
    Unauthorized(StatusCode),
    #[error("WebSocket connect: {0}")]
    Connect(WsClientError),
}

/// One open socket and the timers that belong to it.
struct Session {
    sink: SinkWrite<WsMessage, WsSink>,
    stream: SpawnHandle,
    heartbeat: SpawnHandle,
    opened: Instant,
    last_heard: Instant,
}

pub struct Connection {
    config: Config,
    store: Addr<StoreActor>,
    commands: Addr<CommandHandler>,
    status: Addr<StatusReporter>,
    exit_code: Arc<AtomicU8>,
    backoff: Backoff,
    epoch: u64,
    session: Option<Session>,
    shutting_down: bool,
    /// The firmware version sent at enrollment.
    version: String,
    /// Whether a `hello` was seen since the process started; the first one commits a
    /// firmware trial.
    greeted: bool,
    /// Telemetry waiting to be sent, coalesced and paced under the server's limits.
    outbox: Outbox,
    /// The timer of the next outbox flush, while one is set.
    flush_timer: Option<SpawnHandle>,
}

impl Connection {
    pub fn new(
        config: Config,
        store: Addr<StoreActor>,
        commands: Addr<CommandHandler>,
        status: Addr<StatusReporter>,
        exit_code: Arc<AtomicU8>,
        version: String,
    ) -> Self {
        Connection {
            config,
            store,
            commands,
            status,
            exit_code,
            backoff: Backoff::default(),
            epoch: 0,
            session: None,
            shutting_down: false,
            version,
            greeted: false,
            outbox: Outbox::new(Instant::now()),
            flush_timer: None,
        }
    }

    /// The server accepted this build: a firmware trial is over. A rollback made at start is
    /// reported as an `alert` now that someone can hear it.
    fn commit_firmware(&mut self, ctx: &mut Context<Self>) {
        let dir = self.config.firmware_staging_dir.clone();
        let commit = tokio::task::spawn_blocking(move || install::commit(&dir));
        ctx.spawn(
            commit
                .into_actor(self)
                .map(|outcome, act, ctx| match outcome {
                    Ok(Ok(None)) => {}
                    Ok(Ok(Some(rolled_back))) => {
                        let message = rolled_back.message();
                        tracing::warn!("{message}");
                        act.send_event(
                            DeviceEvent::Alert(AlertEvent {
                                severity: "error".into(),
                                message,
                                ts: chrono::Utc::now(),
                            }),
                            ctx,
                        );
                    }
                    Ok(Err(e)) => tracing::error!("cannot commit the firmware trial: {e}"),
                    Err(e) => tracing::error!("cannot commit the firmware trial: {e}"),
                }),
        );
    }

    /// Starts one attempt: token (enrolling if needed), then the WebSocket handshake.
    fn attempt(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        self.epoch += 1;
        let epoch = self.epoch;
        let store = self.store.clone();
        let enrollment = Enrollment::from_config(&self.config, &self.version);
        let url = self.config.ws_url();
        tracing::info!(%url, "connecting to the factory server");

        let attempt = async move {
            let client = awc::Client::builder().timeout(CONNECT_TIMEOUT).finish();
            let token = match store.send(GetToken).await?? {
                Some(token) => token,
                None => {
                    if enrollment.key.is_none() {
                        return Err(AttemptError::NoKey);
                    }
                    tracing::info!(device_id = %enrollment.device_id, "enrolling with the server");
                    let answer = enroll::request_token(&client, &enrollment).await?;
                    store.send(SetToken(answer.token.clone())).await??;
                    tracing::info!(expires_at = %answer.expires_at, "device token received and stored");
                    answer.token
                }
            };
            match client
                .ws(url)
                .max_frame_size(MAX_FRAME_SIZE)
                .bearer_auth(token)
                .connect()
                .await
            {
                Ok((_response, framed)) => Ok(framed),
                Err(WsClientError::InvalidResponseStatus(status))
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
                {
                    store.send(ClearToken).await??;
                    Err(AttemptError::Unauthorized(status))
                }
                Err(e) => Err(AttemptError::Connect(e)),
            }
        };

        ctx.spawn(attempt.into_actor(self).map(move |outcome, act, ctx| {
            if act.epoch != epoch || act.shutting_down {
                return;
            }
            match outcome {
                Ok(framed) => act.open_session(framed, ctx),
                Err(e) => {
                    tracing::warn!("{e}");
                    act.retry_later(ctx);
                }
            }
        }));
    }

    fn retry_later(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        let delay = self.backoff.next_delay();
        tracing::info!("next connection attempt in {:.1} s", delay.as_secs_f64());
        let epoch = self.epoch;
        ctx.run_later(delay, move |act, ctx| {
            if act.epoch == epoch {
                act.attempt(ctx);
            }
        });
    }

    fn open_session(&mut self, framed: Framed<BoxedSocket, Codec>, ctx: &mut Context<Self>) {
        tracing::info!("connected; waiting for hello");
        let (sink, stream) = framed.split();
        let sink = SinkWrite::new(sink, ctx);
        let stream = ctx.add_stream(stream);
        let heartbeat = ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| act.heartbeat(ctx));
        let now = Instant::now();
        // The server's limits start afresh with each session.
        self.outbox.reset(now);
        self.session = Some(Session {
            sink,
            stream,
            heartbeat,
            opened: now,
            last_heard: now,
        });
    }

    /// Ends the current session, if any, and schedules the next attempt. With a close
    /// reason the socket first gets a close frame; without one it is simply dropped.
    fn end_session(&mut self, close: Option<CloseReason>, ctx: &mut Context<Self>) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        self.epoch += 1;
        ctx.cancel_future(session.stream);
        ctx.cancel_future(session.heartbeat);
        if let Some(timer) = self.flush_timer.take() {
            ctx.cancel_future(timer);
        }
        let unsent = self.outbox.reset(Instant::now());
        if unsent > 0 {
            tracing::debug!(unsent, "session ended; dropping telemetry not yet sent");
        }
        let writer = session.sink.handle();
        match close {
            // `SinkWrite::close` is not used: actix-codec's `Framed` shuts the socket down
            // without writing frames still in its buffer, which would swallow this one. The
            // writer flushes the frame by itself; dropping it later closes the socket.
            Some(reason) => {
                let _ = session.sink.write(WsMessage::Close(Some(reason)));
                ctx.run_later(CLOSE_GRACE, move |_, ctx| {
                    ctx.cancel_future(writer);
                });
            }
            None => {
                ctx.cancel_future(writer);
            }
        }
        if session.opened.elapsed() >= STABLE_SESSION {
            self.backoff.reset();
        }
        self.retry_later(ctx);
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Some(session) = &mut self.session else {
            return;
        };
        if session.last_heard.elapsed() > CLIENT_TIMEOUT {
            tracing::warn!(
                "nothing from the server for {} s; reconnecting",
                CLIENT_TIMEOUT.as_secs()
            );
            self.end_session(None, ctx);
            return;
        }
        let _ = session.sink.write(WsMessage::Ping(Default::default()));
    }

    /// Sends an event: command results and progress at once, telemetry through the outbox.
    fn send_event(&mut self, event: DeviceEvent, ctx: &mut Context<Self>) {
        match TelemetryEvent::try_from(event) {
            Ok(telemetry) => self.queue_telemetry(telemetry, ctx),
            Err(event) => self.send(&DeviceFrame::Event(event)),
        }
    }

    /// Queues telemetry for the next flush, which waits `COALESCE_DELAY` for more to share
    /// the frame. Without a session it is dropped, as records never travel as events.
    fn queue_telemetry(&mut self, event: TelemetryEvent, ctx: &mut Context<Self>) {
        if self.shutting_down || self.session.is_none() {
            tracing::debug!("not connected; dropping a telemetry event");
            return;
        }
        self.outbox.push(&event);
        if self.flush_timer.is_none() {
            self.flush_timer =
                Some(ctx.run_later(outbox::COALESCE_DELAY, |act, ctx| act.flush(ctx)));
        }
    }

    /// Writes every frame pacing allows now, and sets the timer for the rest.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_timer = None;
        let Some(session) = &mut self.session else {
            return;
        };
        loop {
            match self.outbox.next(Instant::now()) {
                Next::Empty => break,
                Next::Frame(text) => {
                    if session.sink.write(WsMessage::Text(text.into())).is_err() {
                        tracing::warn!("socket is closing; dropping telemetry");
                    }
                }
                Next::Wait(delay) => {
                    self.flush_timer = Some(ctx.run_later(delay, |act, ctx| act.flush(ctx)));
                    break;
                }
            }
        }
        let dropped = self.outbox.take_dropped();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                waiting = self.outbox.waiting(),
                "telemetry dropped: more than the server may take was waiting"
            );
        }
    }

    /// Sends a frame at once (an answer, never telemetry), spending from the frame budget.
    fn send(&mut self, frame: &DeviceFrame) {
        if self.shutting_down {
            tracing::debug!("shutting down; dropping a {} frame", frame_type(frame));
            return;
        }
        let Some(session) = &mut self.session else {
            // Telemetry while offline is expected to be lost; a command result is not.
            if matches!(frame, DeviceFrame::Event(DeviceEvent::CommandResult(_))) {
                tracing::warn!("not connected; dropping a command_result frame");
            } else {
                tracing::debug!("not connected; dropping a {} frame", frame_type(frame));
            }
            return;
        };
        match serde_json::to_string(frame) {
            Ok(text) => {
                self.outbox.spend_frame(Instant::now());
                if session.sink.write(WsMessage::Text(text.into())).is_err() {
                    tracing::warn!("socket is closing; dropping a {} frame", frame_type(frame));
                }
            }
            Err(e) => tracing::error!("cannot encode a {} frame: {e}", frame_type(frame)),
        }
    }

    fn on_text(&mut self, bytes: &[u8], ctx: &mut Context<Self>) {
        let frame = match serde_json::from_slice::<ServerFrame>(bytes) {
            Ok(frame) => frame,
            Err(e) => {
                self.on_unparseable(bytes, &e);
                return;
            }
        };
        match frame {
            ServerFrame::Hello {
                device_id,
                server_time,
            } => {
                tracing::info!(%device_id, %server_time, "hello from the server");
                if device_id != self.config.device_id {
                    tracing::warn!(
                        expected = %self.config.device_id,
                        got = %device_id,
                        "server greeted another device id"
                    );
                }
                self.status.do_send(ReportNow);
                if !self.greeted {
                    self.greeted = true;
                    self.commit_firmware(ctx);
                }
            }
            ServerFrame::Command {
                command,
                timeout_ms,
            } => self.on_command(command, timeout_ms, ctx),
            ServerFrame::Error { code, message } => {
                tracing::warn!(%code, %message, "server reported an error");
            }
        }
    }

    fn on_command(&mut self, command: Command, timeout_ms: u64, ctx: &mut Context<Self>) {
        tracing::info!(
            command_id = %command.id,
            command_type = %command.command_type(),
            timeout_ms,
            "command received"
        );
        ctx.spawn(
            self.commands
                .send(Execute(command.clone()))
                .into_actor(self)
                .map(move |answer, act, ctx| {
                    let Answered { result, exit } = answer.unwrap_or_else(|e| Answered {
                        result: CommandResult::failed(
                            &command.id,
                            format!("command handler unavailable: {e}"),
                        ),
                        exit: None,
                    });
                    tracing::info!(
                        command_id = %result.command_id,
                        success = result.success,
                        "command answered"
                    );
                    act.send(&DeviceFrame::Event(DeviceEvent::CommandResult(result)));
                    if let Some(code) = exit {
                        // The result frame is already queued in the writer, ahead of the
                        // close frame, so the server has the answer before the agent exits.
                        tracing::info!(code, "exiting as the server asked");
                        act.exit_code.store(code, Ordering::SeqCst);
                        act.shut_down(ctx);
                    }
                }),
        );
    }

    /// A frame that is not one the agent knows. If it is a command of a type this agent
    /// cannot even parse, the server still gets an answer instead of waiting for its timeout.
    fn on_unparseable(&mut self, bytes: &[u8], error: &serde_json::Error) {
        tracing::warn!("unreadable frame from the server ignored: {error}");
        if let Ok(UnknownCommandFrame {
            kind,
            command: CommandId { id },
        }) = serde_json::from_slice::<UnknownCommandFrame>(bytes)
        {
            if kind == "command" && !id.is_empty() {
                let result = CommandResult::failed(id, format!("command not understood: {error}"));
                self.send(&DeviceFrame::Event(DeviceEvent::CommandResult(result)));
            }
        }
    }
}

/// Just enough of a `command` frame to answer it when the command itself does not parse.
#[derive(Deserialize)]
struct UnknownCommandFrame {
    #[serde(rename = "type")]
    kind: String,
    command: CommandId,
}

#[derive(Deserialize)]
struct CommandId {
    id: String,
}

fn frame_type(frame: &DeviceFrame) -> &'static str {
    match frame {
        DeviceFrame::Auth { .. } => "auth",
        DeviceFrame::Batch { .. } => "batch",
        DeviceFrame::Event(event) => event.event_type(),
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.attempt(ctx);
    }
}

impl StreamHandler<Result<Frame, WsProtocolError>> for Connection {
    fn handle(&mut self, item: Result<Frame, WsProtocolError>, ctx: &mut Self::Context) {
        let Some(session) = &mut self.session else {
            return;
        };
        session.last_heard = Instant::now();
        if self.shutting_down {
            // Only the end of the closing handshake matters now.
            if matches!(item, Ok(Frame::Close(_)) | Err(_)) {
                System::current().stop();
            }
            return;
        }
        match item {
            Ok(Frame::Text(bytes)) => self.on_text(&bytes, ctx),
            Ok(Frame::Ping(bytes)) => {
                let _ = session.sink.write(WsMessage::Pong(bytes));
            }
            Ok(Frame::Pong(_)) => {}
            Ok(Frame::Close(reason)) => {
                tracing::info!(?reason, "server closed the socket");
                self.end_session(Some(CloseCode::Normal.into()), ctx);
            }
            Ok(Frame::Binary(_)) => tracing::warn!("binary frame from the server ignored"),
            Ok(Frame::Continuation(_)) => {
                tracing::warn!("fragmented frame from the server ignored");
            }
            Err(e) => {
                tracing::warn!("WebSocket error: {e}");
                self.end_session(None, ctx);
            }
        }
    }

    /// The read half ended without a close frame; the default would stop the actor.
    fn finished(&mut self, ctx: &mut Self::Context) {
        if self.shutting_down {
            System::current().stop();
        } else if self.session.is_some() {
            tracing::warn!("connection to the server lost");
            self.end_session(None, ctx);
        }
    }
}

impl WriteHandler<WsProtocolError> for Connection {
    /// The writer may belong to a session already closed, so a write error does not end the
    /// current one; a broken socket also ends the read half, or goes quiet until
    /// `CLIENT_TIMEOUT`.
    fn error(&mut self, err: WsProtocolError, _ctx: &mut Self::Context) -> Running {
        tracing::warn!("cannot write to the server: {err}");
        Running::Stop
    }

    /// The default would stop the actor; sessions end through the read half instead.
    fn finished(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!("socket writer finished");
    }
}

impl Handler<Shutdown> for Connection {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        self.shut_down(ctx);
    }
}

impl Handler<SendEvent> for Connection {
    type Result = ();

    fn handle(&mut self, SendEvent(event): SendEvent, ctx: &mut Self::Context) {
        self.send_event(event, ctx);
    }
}

impl Handler<Reenroll> for Connection {
    type Result = ();

    /// The token was refused elsewhere (and cleared); a fresh session enrolls first.
    fn handle(&mut self, _msg: Reenroll, ctx: &mut Self::Context) {
        if self.session.is_some() {
            tracing::warn!("device token refused by the sync route; reconnecting to enroll again");
            self.end_session(Some(CloseCode::Normal.into()), ctx);
        }
    }
}

impl Handler<ConfigChanged> for Connection {
    type Result = ();

    fn handle(&mut self, ConfigChanged(config): ConfigChanged, _ctx: &mut Self::Context) {
        self.config = config;
    }
}

impl Connection {
    /// Sends a normal close frame and waits for the server's close (or the end of the
    /// socket) before stopping the system, at most `CLOSE_GRACE`.
    fn shut_down(&mut self, ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.epoch += 1;
        let Some(session) = &mut self.session else {
            System::current().stop();
            return;
        };
        tracing::info!("closing the connection");
        ctx.cancel_future(session.heartbeat);
        let _ = session.sink.write(WsMessage::Close(Some(CloseReason {
            code: CloseCode::Normal,
            description: Some("agent shutting down".into()),
        })));
        ctx.run_later(CLOSE_GRACE, |_, _| System::current().stop());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            status_interval: Duration::from_millis(200),
            log_level: "info".into(),
            log_file: crate::store::tests::temp_dir().join("agent.log"),
            scanner_listen: None,
            batch_size: 100,
            pallet_size: 10,
            reboot_command: vec!["/bin/true".into()],
            shutdown_command: vec!["/bin/true".into()],
            firmware_staging_dir: crate::store::tests::temp_dir(),
            firmware_trusted_keys: Vec::new(),
            firmware_require_signature: false,
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

    #[test]
    fn boot_id_is_trimmed_when_present() {
        if let Some(id) = read_boot_id() {
            assert_eq!(id, id.trim());
            assert!(!id.is_empty());
        }
    }
}
