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

use crate::actors::store::{ClearToken, GetToken, SetToken, StoreActor};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::enroll::{self, EnrollError, Enrollment};
use crate::install;
use crate::messages::{Answered, ConfigChanged, Execute, Reenroll, ReportNow, SendEvent, Shutdown};
use crate::outbox::{self, Next, Outbox};
use crate::store::StoreError;

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

type WsSink = SplitSink<Framed<BoxedSocket, Codec>, WsMessage>;

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
    #[error("WebSocket connect: {}", crate::http::ws_reason(.0))]
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
    commands: Recipient<Execute>,
    status: Recipient<ReportNow>,
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
        commands: Recipient<Execute>,
        status: Recipient<ReportNow>,
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
            let client = crate::http::client(Some(CONNECT_TIMEOUT));
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
mod tests;
