//! `/ws/device`: one `DeviceSession` actor per socket.
//!
//! A device authenticates by `Authorization: Bearer` on the upgrade, by `?token=` while the
//! compatibility setting allows it, or by a first `auth` frame within `AUTH_TIMEOUT`. Only then
//! is the session registered with the `DeviceRegistry`. A frame that cannot be read gets an
//! `error` frame back and the session stays open.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use chrono::Utc;
use protocol::codes::ws_error;
use protocol::device::{DeviceEvent, DeviceFrame, ServerFrame, TelemetryEvent};
use protocol::rest::DeviceStatus;

use std::rc::Rc;

use futures_util::future::LocalBoxFuture;

use crate::actors::deployer::{DeviceAlert, DeviceReported, FirmwareDeployer};
use crate::actors::dispatcher::{
    CommandDispatcher, DeviceConnected, ProgressReceived, ResultReceived, StatusSeen,
};
use crate::actors::events::{EventBus, Publish, PublishMany};
use crate::actors::presence::{PresenceWriter, RecordStatus};
use crate::actors::registry::{Connect, DeviceRegistry, Disconnect, FrameRefused};
use crate::actors::telemetry::{Records, TelemetrySink};
use crate::error::ApiResult;
use crate::store::devices::StatusUpdate;
use crate::store::metrics::samples_of;
use crate::store::telemetry::Telemetry;

/// How often the server pings a device.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A device silent for this long (no frame, no pong) is considered gone.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an unauthenticated socket may wait before sending its `auth` frame.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest text frame, frame rate and event budget of a device: shared with the agent, which
/// paces itself below them (`protocol::limits`). A frame past them is refused with an
/// `error` frame and counted, and the session stays.
pub use protocol::limits::{
    EVENT_BURST, EVENT_RATE_PER_SEC, FRAME_BURST, FRAME_RATE_PER_SEC, MAX_BATCH_EVENTS,
    MAX_TEXT_FRAME,
};
/// Largest frame the WebSocket codec reads at all; past it the stream is unusable and closed.
pub const MAX_FRAME_SIZE: usize = 1024 * 1024;
/// A batch refused for the event budget counts one refusal per this many of its events (the
/// share of the event budget one frame of the frame rate carries), so a device flooding
/// with full batches is cut off as soon as one flooding with single frames would be, and
/// is not tolerated 200 times longer for packing 200 events into each frame.
pub const EVENTS_PER_REFUSAL: f64 = EVENT_RATE_PER_SEC / FRAME_RATE_PER_SEC;
/// Refused frames (too large, too fast, a batch too large or over the event budget)
/// tolerated per `REFUSAL_WINDOW`; past it the device is disconnected with `CLOSE_FLOOD`.
pub const MAX_REFUSALS_PER_WINDOW: u32 = 1000;
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(10);
/// The device is told about refused frames at most this often, so refusals cannot be used to
/// make the server amplify a flood.
pub const REFUSAL_NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// Close code: a newer session of the same device took over.
pub const CLOSE_REPLACED: u16 = protocol::codes::close::REPLACED;
/// Close code: the token this session authenticated with was revoked.
pub const CLOSE_TOKEN_REVOKED: u16 = protocol::codes::close::TOKEN_REVOKED;
/// Close code: no valid authentication (also used for a user token on the device route).
pub const CLOSE_AUTH_FAILED: u16 = protocol::codes::close::AUTH_FAILED;
/// Close code: no `auth` frame within `AUTH_TIMEOUT`.
pub const CLOSE_AUTH_TIMEOUT: u16 = protocol::codes::close::AUTH_TIMEOUT;
/// Close code: too many refused frames (oversized or over a rate).
pub const CLOSE_FLOOD: u16 = protocol::codes::close::FLOOD;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Who a verified device token belongs to.
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    pub device_id: String,
    pub token_id: String,
}

/// Checks the token of an `auth` frame, given the token and the peer's address; a refusal
/// counts against that address. The REST side supplies it, so a session needs no keys.
pub type TokenCheck =
    Rc<dyn Fn(String, Option<String>) -> LocalBoxFuture<'static, ApiResult<DeviceIdentity>>>;

/// The actors a device session sends to, and its token check: all it knows of the server.
/// One per worker, shared by its sessions (`api::sockets::SharedPeers`).
pub struct Peers {
    pub registry: Addr<DeviceRegistry>,
    pub dispatcher: Addr<CommandDispatcher>,
    pub presence: Addr<PresenceWriter>,
    pub deployer: Addr<FirmwareDeployer>,
    pub bus: Addr<EventBus>,
    pub telemetry: Addr<TelemetrySink>,
    pub verify: TokenCheck,
}

/// A frame for the device.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverCommand(pub ServerFrame);

/// Close the socket with a code and reason.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub code: u16,
    pub reason: String,
}

/// What one frame hands on, gathered while its events are handled.
#[derive(Default)]
struct Outgoing {
    records: Vec<Telemetry>,
    events: Vec<Publish>,
}

pub struct DeviceSession {
    session_id: u64,
    identity: Option<DeviceIdentity>,
    /// An address, not its text: the text is made only where it is written or checked.
    remote_addr: Option<IpAddr>,
    last_heard: Instant,
    opened: Instant,
    peers: Rc<Peers>,
    /// An `auth` frame is being verified; further frames wait for the answer.
    authenticating: bool,
    limiter: FrameLimiter,
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `MAX_TEXT_FRAME` bytes.
    TooLarge,
    /// Over the frame rate.
    TooFast,
    /// A `batch` of more than `MAX_BATCH_EVENTS` events.
    BatchTooLarge,
    /// Over the event budget.
    TooManyEvents,
}

impl Refusal {
    /// The refusal's name, the `reason` label of the refused-frames metric.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::TooFast => "too_fast",
            Refusal::BatchTooLarge => "batch_too_large",
            Refusal::TooManyEvents => "too_many_events",
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    refilled: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    fn full(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            refilled: now,
            rate,
            burst,
        }
    }

    /// Takes `n` tokens if there are that many; otherwise takes none.
    fn take(&mut self, n: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }
}

/// Token buckets for the frame rate and the event budget, and the count of refusals in the
/// current window.
#[derive(Debug)]
pub struct FrameLimiter {
    frames: TokenBucket,
    events: TokenBucket,
    window_start: Instant,
    refusals_in_window: u32,
    last_notice: Option<Instant>,
    pub refused_total: u64,
}

impl FrameLimiter {
    pub fn new(now: Instant) -> Self {
        FrameLimiter {
            frames: TokenBucket::full(FRAME_RATE_PER_SEC, FRAME_BURST, now),
            events: TokenBucket::full(EVENT_RATE_PER_SEC, EVENT_BURST, now),
            window_start: now,
            refusals_in_window: 0,
            last_notice: None,
            refused_total: 0,
        }
    }

    /// Takes a frame of `len` bytes: `Ok` to read it, `Err` to refuse it.
    pub fn admit(&mut self, len: usize, now: Instant) -> Result<(), Refusal> {
        if len > MAX_TEXT_FRAME {
            return Err(self.refuse(Refusal::TooLarge, 1, now));
        }
        if !self.frames.take(1.0, now) {
            return Err(self.refuse(Refusal::TooFast, 1, now));
        }
        Ok(())
    }

    /// Takes `count` telemetry events of one frame from the event budget, all or none: a
    /// refused batch is refused whole, and weighs `EVENTS_PER_REFUSAL` events a refusal.
    pub fn admit_events(&mut self, count: usize, now: Instant) -> Result<(), Refusal> {
        if count > MAX_BATCH_EVENTS {
            return Err(self.refuse(Refusal::BatchTooLarge, 1, now));
        }
        if !self.events.take(count as f64, now) {
            let weight = (count as f64 / EVENTS_PER_REFUSAL).ceil().max(1.0) as u32;
            return Err(self.refuse(Refusal::TooManyEvents, weight, now));
        }
        Ok(())
    }

    /// Counts one refused frame, weighing `weight` refusals in the window.
    fn refuse(&mut self, refusal: Refusal, weight: u32, now: Instant) -> Refusal {
        if now.saturating_duration_since(self.window_start) > REFUSAL_WINDOW {
            self.window_start = now;
            self.refusals_in_window = 0;
        }
        self.refusals_in_window = self.refusals_in_window.saturating_add(weight);
        self.refused_total += 1;
        refusal
    }

    /// Past the tolerated number of refusals in the window.
    pub fn flooding(&self) -> bool {
        self.refusals_in_window > MAX_REFUSALS_PER_WINDOW
    }

    /// Whether to tell the device about this refusal (rate-limited notices).
    pub fn should_notify(&mut self, now: Instant) -> bool {
        match self.last_notice {
            Some(t) if now.duration_since(t) < REFUSAL_NOTICE_INTERVAL => false,
            _ => {
                self.last_notice = Some(now);
                true
            }
        }
    }
}

/// Just enough of a frame to count a batch's events without parsing them (about a sixth
/// of the cost), so that a batch over the budget is refused cheaply.
#[derive(serde::Deserialize)]
struct BatchPeek {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Option<Vec<serde::de::IgnoredAny>>,
}

/// The number of events of a `batch` frame; `None` for any other frame, or one this cheap
/// reading cannot make sense of (the full parse then says why).
fn batch_len(text: &str) -> Option<usize> {
    let peek: BatchPeek = serde_json::from_str(text).ok()?;
    if peek.kind != "batch" {
        return None;
    }
    peek.events.map(|events| events.len())
}

impl DeviceSession {
    pub fn new(
        peers: Rc<Peers>,
        identity: Option<DeviceIdentity>,
        remote_addr: Option<IpAddr>,
    ) -> Self {
        DeviceSession {
            session_id: NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed),
            identity,
            remote_addr,
            last_heard: Instant::now(),
            opened: Instant::now(),
            peers,
            authenticating: false,
            limiter: FrameLimiter::new(Instant::now()),
        }
    }

    fn send_frame(ctx: &mut ws::WebsocketContext<Self>, frame: &ServerFrame) {
        match serde_json::to_string(frame) {
            Ok(text) => ctx.text(text),
            Err(e) => tracing::error!(error = %e, "cannot serialize a server frame"),
        }
    }

    fn send_error(ctx: &mut ws::WebsocketContext<Self>, code: &str, message: impl Into<String>) {
        Self::send_frame(
            ctx,
            &ServerFrame::Error {
                code: code.to_owned(),
                message: message.into(),
            },
        );
    }

    fn close(ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Other(code),
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    /// Registers with the registry and greets the device.
    fn on_authenticated(&mut self, ctx: &mut ws::WebsocketContext<Self>, identity: DeviceIdentity) {
        let addr = ctx.address();
        crate::metrics::session_opened();
        self.peers.registry.do_send(Connect {
            device_id: identity.device_id.clone(),
            session_id: self.session_id,
            token_id: identity.token_id.clone(),
            remote_addr: self.remote_addr,
            session: addr,
        });
        // Sent after Connect, so the dispatcher's lookup finds this session registered.
        self.peers.dispatcher.do_send(DeviceConnected {
            device_id: identity.device_id.clone(),
        });
        Self::send_frame(
            ctx,
            &ServerFrame::Hello {
                device_id: identity.device_id.clone(),
                server_time: Utc::now(),
            },
        );
        self.identity = Some(identity);
    }

    fn heartbeat(&self, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if Instant::now().duration_since(act.last_heard) > CLIENT_TIMEOUT {
                tracing::info!(
                    device = act
                        .identity
                        .as_ref()
                        .map(|i| i.device_id.as_str())
                        .unwrap_or("-"),
                    "heartbeat timed out"
                );
                ctx.stop();
                return;
            }
            ctx.ping(b"");
        });
    }

    fn handle_text(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: &str) {
        // A NUL would reach the database through the telemetry, presence or command writers,
        // which PostgreSQL refuses (failing the whole batch of other devices' lines with it).
        if crate::input::has_nul(text.as_bytes()) {
            Self::send_error(
                ctx,
                ws_error::INVALID_FRAME,
                format!("cannot read frame: {}", crate::input::NUL_REFUSED),
            );
            return;
        }
        // A batch is counted against the event budget before its events are parsed: a
        // refused batch must cost little to refuse, or refusing would be the flood.
        let mut admitted = None;
        if self.identity.is_some() {
            if let Some(count) = batch_len(text) {
                if !self.admit_batch(ctx, count) {
                    return;
                }
                admitted = Some(count);
            }
        }
        let frame: DeviceFrame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                Self::send_error(
                    ctx,
                    ws_error::INVALID_FRAME,
                    format!("cannot read frame: {e}"),
                );
                return;
            }
        };
        match (frame, self.identity.clone()) {
            (DeviceFrame::Auth { .. }, Some(_)) => {
                Self::send_error(
                    ctx,
                    "already_authenticated",
                    "this session is already authenticated",
                );
            }
            (DeviceFrame::Auth { token }, None) => {
                if self.authenticating {
                    Self::send_error(
                        ctx,
                        ws_error::AUTH_IN_PROGRESS,
                        "an auth frame is already being checked",
                    );
                    return;
                }
                self.authenticating = true;
                let source = self.remote_addr.map(|a| a.to_string());
                let fut = (self.peers.verify)(token, source);
                ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
                    act.authenticating = false;
                    match result {
                        Ok(identity) => act.on_authenticated(ctx, identity),
                        Err(e) => {
                            Self::send_error(ctx, e.code.as_str(), e.message.clone());
                            Self::close(ctx, CLOSE_AUTH_FAILED, &e.message);
                        }
                    }
                }));
            }
            (DeviceFrame::Event(_) | DeviceFrame::Batch { .. }, None) => {
                Self::send_error(ctx, ws_error::UNAUTHENTICATED, "send an auth frame first");
                Self::close(ctx, CLOSE_AUTH_FAILED, "not authenticated");
            }
            (DeviceFrame::Event(event), Some(identity)) => {
                // Command results and progress are not telemetry and never wait for the
                // event budget; the frame rate bounds them.
                let telemetry = !matches!(
                    event,
                    DeviceEvent::CommandResult(_) | DeviceEvent::CommandProgress(_)
                );
                if telemetry && !self.admit_events(ctx, 1) {
                    return;
                }
                let mut out = Outgoing::default();
                self.handle_event(ctx, identity, event, &mut out);
                self.hand_over(out);
            }
            (DeviceFrame::Batch { events }, Some(identity)) => {
                // Counted already, unless the cheap count could not read the frame.
                if admitted != Some(events.len()) && !self.admit_batch(ctx, events.len()) {
                    return;
                }
                self.handle_batch(ctx, identity, events)
            }
        }
    }

    /// Admits a batch of `count` events: one frame against the frame rate (already taken),
    /// each of its events against the event budget. A batch that is empty, too large or
    /// over the budget is refused whole.
    fn admit_batch(&mut self, ctx: &mut ws::WebsocketContext<Self>, count: usize) -> bool {
        if count == 0 {
            Self::send_error(
                ctx,
                ws_error::INVALID_FRAME,
                "a batch needs at least one event",
            );
            return false;
        }
        self.admit_events(ctx, count)
    }

    /// An admitted `batch`: each event handled exactly as a frame of its own, in order. A
    /// batch that does not parse never gets here (an `error` frame, nothing of it stored).
    fn handle_batch(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        identity: DeviceIdentity,
        events: Vec<TelemetryEvent>,
    ) {
        let mut out = Outgoing::default();
        for event in events {
            self.handle_event(ctx, identity.clone(), event.into(), &mut out);
        }
        self.hand_over(out);
    }

    /// A frame's telemetry records go to the sink, and its events to the dashboards, in one
    /// message each rather than one per event: a `batch` of 50 is two messages, not 100.
    fn hand_over(&self, out: Outgoing) {
        if !out.records.is_empty() {
            self.peers.telemetry.do_send(Records(out.records));
        }
        if !out.events.is_empty() {
            self.peers.bus.do_send(PublishMany(out.events));
        }
    }

    /// Handles one event; its telemetry record and dashboard event are added to `out`.
    fn handle_event(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        identity: DeviceIdentity,
        event: DeviceEvent,
        out: &mut Outgoing,
    ) {
        let records = &mut out.records;
        let device_id = identity.device_id;
        match &event {
            DeviceEvent::CommandResult(result) => {
                self.peers.dispatcher.do_send(ResultReceived {
                    device_id: device_id.clone(),
                    result: result.clone(),
                });
            }
            DeviceEvent::CommandProgress(progress) => {
                if progress.percent > 100 {
                    Self::send_error(
                        ctx,
                        ws_error::INVALID_FRAME,
                        "percent must be between 0 and 100",
                    );
                    return;
                }
                self.peers.dispatcher.do_send(ProgressReceived {
                    device_id: device_id.clone(),
                    progress: progress.clone(),
                });
            }
            DeviceEvent::Status(status) => {
                let word = match status.status.as_str() {
                    "ONLINE" => Some(DeviceStatus::Online),
                    "DISABLED" => Some(DeviceStatus::Disabled),
                    _ => None,
                };
                let metrics = status.metrics.as_ref().map(|m| m.to_string());
                if metrics
                    .as_ref()
                    .is_some_and(|m| m.len() > MAX_TEXT_FRAME / 2)
                {
                    Self::send_error(ctx, ws_error::INVALID_FRAME, "status metrics are too large");
                    return;
                }
                // The numeric metrics also become samples of the device's time series.
                if let Some(all) = &status.metrics {
                    let samples = samples_of(&device_id, status.ts, Utc::now(), all);
                    if !samples.is_empty() {
                        records.push(Telemetry::Metrics(samples));
                    }
                }
                let connection_mode = status
                    .metrics
                    .as_ref()
                    .and_then(|m| m.get("connectionMode"))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                self.peers.dispatcher.do_send(StatusSeen {
                    device_id: device_id.clone(),
                    boot_id: status.boot_id.clone(),
                    run_id: status.run_id.clone(),
                });
                self.peers.presence.do_send(RecordStatus {
                    device_id: device_id.clone(),
                    update: StatusUpdate {
                        status: word,
                        version: status.version.clone(),
                        boot_id: status.boot_id.clone(),
                        run_id: status.run_id.clone(),
                        connection_mode,
                        metrics,
                    },
                });
                // After the presence writer was asked to store it; the deployer's pass reads
                // the stored version, and a pass a moment early is repeated on the next tick.
                self.peers.deployer.do_send(DeviceReported {
                    device_id: device_id.clone(),
                });
            }
            DeviceEvent::LogLine(log) => {
                records.push(Telemetry::log(&device_id, log.ts, &log.level, &log.line));
            }
            DeviceEvent::Scan(scan) => {
                let payload = serde_json::json!({"code": scan.code, "valid": scan.valid});
                records.push(Telemetry::event(&device_id, scan.ts, "scan", &payload));
            }
            DeviceEvent::Print(print) => {
                let payload = serde_json::json!({"code": print.code});
                records.push(Telemetry::event(&device_id, print.ts, "print", &payload));
            }
            DeviceEvent::Alert(alert) => {
                let payload =
                    serde_json::json!({"severity": alert.severity, "message": alert.message});
                records.push(Telemetry::event(&device_id, alert.ts, "alert", &payload));
                self.peers.deployer.do_send(DeviceAlert {
                    device_id: device_id.clone(),
                    severity: alert.severity.clone(),
                    message: alert.message.clone(),
                });
            }
        }
        out.events.extend(Publish::device_event(&device_id, event));
    }

    /// Applies the frame limits; `false` when the frame must not be handled.
    fn admit(&mut self, ctx: &mut ws::WebsocketContext<Self>, len: usize) -> bool {
        let now = Instant::now();
        match self.limiter.admit(len, now) {
            Ok(()) => true,
            Err(refusal) => {
                self.refused(ctx, refusal, now);
                false
            }
        }
    }

    /// Applies the event budget to a frame's `count` telemetry events; `false` when none of
    /// them must be handled.
    fn admit_events(&mut self, ctx: &mut ws::WebsocketContext<Self>, count: usize) -> bool {
        let now = Instant::now();
        match self.limiter.admit_events(count, now) {
            Ok(()) => true,
            Err(refusal) => {
                self.refused(ctx, refusal, now);
                false
            }
        }
    }

    /// Counts a refusal with the registry, cuts a flooding device off, and otherwise tells
    /// the device why (at most once per `REFUSAL_NOTICE_INTERVAL`).
    fn refused(&mut self, ctx: &mut ws::WebsocketContext<Self>, refusal: Refusal, now: Instant) {
        crate::metrics::frame_refused(refusal.name());
        if let Some(identity) = &self.identity {
            self.peers.registry.do_send(FrameRefused {
                device_id: identity.device_id.clone(),
                session_id: self.session_id,
            });
        }
        if self.limiter.flooding() {
            tracing::warn!(
                device = self
                    .identity
                    .as_ref()
                    .map(|i| i.device_id.as_str())
                    .unwrap_or("-"),
                refused = self.limiter.refused_total,
                "disconnecting a flooding device"
            );
            Self::send_error(
                ctx,
                ws_error::FLOOD,
                "too many refused frames; disconnecting",
            );
            Self::close(ctx, CLOSE_FLOOD, "too many refused frames");
            return;
        }
        if self.limiter.should_notify(now) {
            let (code, message) = match refusal {
                Refusal::TooLarge => (ws_error::FRAME_TOO_LARGE, format!("frames over {MAX_TEXT_FRAME} bytes are refused")),
                Refusal::TooFast => (
                    ws_error::RATE_LIMITED,
                    format!("more than {FRAME_RATE_PER_SEC} frames per second; frames are being dropped"),
                ),
                Refusal::BatchTooLarge => (
                    "batch_too_large",
                    format!("a batch may carry at most {MAX_BATCH_EVENTS} events; the batch was dropped"),
                ),
                Refusal::TooManyEvents => (
                    ws_error::RATE_LIMITED,
                    format!("more than {EVENT_RATE_PER_SEC} events per second; events are being dropped"),
                ),
            };
            Self::send_error(
                ctx,
                code,
                format!("{message} ({} refused so far)", self.limiter.refused_total),
            );
        }
    }
}

impl Actor for DeviceSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.heartbeat(ctx);
        match self.identity.clone() {
            Some(identity) => self.on_authenticated(ctx, identity),
            None => {
                ctx.run_later(AUTH_TIMEOUT, |act, ctx| {
                    if act.identity.is_none() {
                        Self::send_error(
                            ctx,
                            ws_error::AUTH_TIMEOUT,
                            "no auth frame received in time",
                        );
                        Self::close(ctx, CLOSE_AUTH_TIMEOUT, "authentication timed out");
                    }
                });
            }
        }
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Some(identity) = &self.identity {
            crate::metrics::session_closed();
            tracing::debug!(
                device = %identity.device_id,
                session = self.session_id,
                open_for = ?self.opened.elapsed(),
                "session stopping"
            );
            self.peers.registry.do_send(Disconnect {
                device_id: identity.device_id.clone(),
                session_id: self.session_id,
            });
        }
        Running::Stop
    }
}

impl Handler<DeliverCommand> for DeviceSession {
    type Result = ();
    fn handle(&mut self, msg: DeliverCommand, ctx: &mut Self::Context) {
        Self::send_frame(ctx, &msg.0);
    }
}

impl Handler<CloseSession> for DeviceSession {
    type Result = ();
    fn handle(&mut self, msg: CloseSession, ctx: &mut Self::Context) {
        Self::send_error(ctx, ws_error::SESSION_CLOSED, msg.reason.clone());
        Self::close(ctx, msg.code, &msg.reason);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for DeviceSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                // Oversized or malformed at the WebSocket layer: the stream cannot be trusted.
                tracing::warn!(error = %e, "device socket protocol error");
                Self::close(ctx, 1009, "protocol error or frame too large");
                return;
            }
        };
        self.last_heard = Instant::now();
        match msg {
            ws::Message::Ping(bytes) => ctx.pong(&bytes),
            ws::Message::Pong(_) => {}
            ws::Message::Text(text) => {
                if self.admit(ctx, text.len()) {
                    self.handle_text(ctx, &text);
                }
            }
            ws::Message::Binary(bytes) => {
                if !self.admit(ctx, bytes.len()) {
                    return;
                }
                Self::send_error(
                    ctx,
                    ws_error::INVALID_FRAME,
                    "binary frames are not part of the protocol",
                );
            }
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
            ws::Message::Continuation(_) => {
                Self::send_error(
                    ctx,
                    ws_error::INVALID_FRAME,
                    "fragmented frames are not supported",
                );
            }
            ws::Message::Nop => {}
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
