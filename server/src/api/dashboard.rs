//! `/ws/dashboard`: the live stream browsers subscribe to.
//!
//! A dashboard authenticates with a user JWT (header, `?token=` while allowed, or a first
//! `auth` frame), may narrow what it gets with `subscribe`, and receives device events from the
//! `EventBus` through a bounded channel. Writing to the browser waits for the socket (actix-ws
//! exposes that backpressure, which actix-web-actors' context does not), so a browser that
//! stops reading fills only its own channel; the bus then drops and counts, and the dashboard
//! hears how many it missed in a `dropped` frame once it reads again.
//!
//! Every frame the server hands to a socket (event, ping, pong, close) has a deadline: the
//! send timeout, or sooner the moment the browser has been silent for `CLIENT_TIMEOUT`. A
//! browser that takes nothing until then has its connection cut (`ConnectionSocket::abort`),
//! which is what releases what the connection held; only a reset reaches a connection whose
//! write buffer is full. Each socket holds a place in the `DashboardRegistry` until actix drops
//! its connection, which caps the sockets per user and per server, and through which a revoked
//! token closes its sockets at once with `CLOSE_TOKEN_REVOKED`.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use futures_util::StreamExt;
use protocol::dashboard::{DashboardClientFrame, DashboardNotice};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::actors::dashboard_registry::{Refusal, Revocations, Slot};
use crate::actors::events::{Filter, SetFilter, Subscribe, Unsubscribe};
use crate::actors::session::{
    AUTH_TIMEOUT, CLIENT_TIMEOUT, CLOSE_AUTH_FAILED, CLOSE_TOKEN_REVOKED, HEARTBEAT_INTERVAL,
};
use crate::auth::upgrade_token;
use crate::auth::{authenticate_user, AuthUser, Scope};
use crate::connection::{Connection, ConnectionSocket};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::refusals::count_token;
use crate::state::AppState;

/// Events buffered per dashboard before the bus starts dropping for it (and at most
/// `events::MAX_QUEUED_BYTES` of them, the bound on memory). A fleet scanning 50,000 events/s
/// fills 256 in 5 ms, less than a busy machine may take to schedule the socket's task;
/// 4,096 is 80 ms of that, about 600 KB of scan events.
pub const DASHBOARD_BUFFER: usize = 4096;
/// Most events taken from the buffer at once before they are written: one turn of the loop
/// for many frames, not one each.
const DRAIN_AT_ONCE: usize = 64;
pub use crate::config::{MAX_DASHBOARDS, MAX_DASHBOARDS_PER_USER, SEND_TIMEOUT};
/// How long a closing socket has to take its close frame and end before it is cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How often an open socket's token is checked against the database again. Revocations made
/// by this server reach their sockets at once; this catches expiry, and revocations written by
/// another server process on the same database.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Largest frame a dashboard may send.
pub const MAX_DASHBOARD_FRAME: usize = 64 * 1024;
/// Most device ids or event types in one subscribe.
pub const MAX_FILTER_ITEMS: usize = 10_000;
/// Close code: the user already holds `dashboard_max_per_user` sockets (for sockets that
/// authenticate with a first frame; an upgrade that carries its token is refused with 429).
pub const CLOSE_TOO_MANY: u16 = protocol::codes::close::TOO_MANY;

static NEXT_DASHBOARD_ID: AtomicU64 = AtomicU64::new(1);

fn notice(n: &DashboardNotice) -> String {
    serde_json::to_string(n).unwrap_or_default()
}

fn error_frame(code: &str, message: impl Into<String>) -> Frame {
    Frame::Text(notice(&DashboardNotice::Error {
        code: code.into(),
        message: message.into(),
    }))
}

/// The 429 of an upgrade past a cap. A place frees when a socket closes, and a socket left
/// behind by a dropped network goes within `CLIENT_TIMEOUT` and a ping, hence `Retry-After`.
fn refused(state: &AppState, refusal: Refusal) -> ApiError {
    let message = match refusal {
        Refusal::ServerFull => "the server holds its most dashboard sockets".to_owned(),
        Refusal::UserFull => format!(
            "at most {} dashboard sockets per user",
            state.dashboards.max_per_user()
        ),
    };
    ApiError {
        retry_after: Some((CLIENT_TIMEOUT + HEARTBEAT_INTERVAL).as_secs()),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyConnections,
            message,
        )
    }
}

/// A socket whose user is known.
struct Opened {
    user: AuthUser,
    token: String,
    revocations: Revocations,
}

/// Checks a token and binds the socket's place to its user. The place is bound from the
/// token's claims before the database check, so a revocation committed after that check
/// reaches the socket, and one committed before fails the check.
async fn authenticate(
    state: &AppState,
    slot: &Slot,
    source: Option<&str>,
    token: String,
) -> ApiResult<Opened> {
    // A refused token counts against its source address like a failed login, so guessing
    // through the dashboard socket meets the same limit as guessing through REST.
    let verified = state
        .jwt
        .verify(&token, Scope::User)
        .map_err(ApiError::from);
    let claims = count_token(state, source, verified).await?;
    let revocations = slot
        .bind(&claims.sub, &claims.jti)
        .map_err(|r| refused(state, r))?;
    let user = count_token(state, source, authenticate_user(state, &token).await).await?;
    Ok(Opened {
        user,
        token,
        revocations,
    })
}

/// `GET /ws/dashboard`.
pub async fn dashboard_socket(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let slot = Arc::new(state.dashboards.open().map_err(|r| refused(&state, r))?);
    let token = upgrade_token(&req, state.config.allow_query_token)?;
    let source = crate::auth::source_of(&req);
    let opened = match token {
        Some(token) => Some(authenticate(&state, &slot, source.as_deref(), token).await?),
        None => None,
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(MAX_DASHBOARD_FRAME)
        .aggregate_continuations();
    let held = slot.clone();
    let response = response
        .map_body(move |_, body| HeldBody { body, _slot: held })
        .map_into_boxed_body();
    let link = Link {
        session,
        connection: req
            .conn_data::<ConnectionSocket>()
            .map(ConnectionSocket::watch),
        send_timeout: Duration::from_secs(state.config.dashboard_send_timeout_secs),
        last_heard: Instant::now(),
    };
    actix_web::rt::spawn(run(state, slot, source, opened, link, stream));
    Ok(response)
}

/// The upgrade's response body. actix drops it when it is done with the connection's
/// response, so it holds the socket's registry place (with the socket's task) until then.
struct HeldBody {
    body: BoxBody,
    _slot: Arc<Slot>,
}

impl MessageBody for HeldBody {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

type Stream = actix_ws::AggregatedMessageStream;

/// Why a socket ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The browser closed the socket, or its stream ended or broke.
    ClientLeft,
    /// Nothing heard from the browser for `CLIENT_TIMEOUT`.
    Silent,
    /// The socket took no frame before the frame's deadline.
    Stalled,
    /// The token the socket opened with was revoked (or expired).
    Revoked(&'static str),
    /// No valid `auth` frame.
    AuthFailed,
    /// The user's cap was reached by an `auth` frame.
    TooMany,
}

/// A frame for the browser.
enum Frame {
    Text(String),
    Ping,
    Pong(Bytes),
}

/// The sending half of a socket, with its deadlines.
struct Link {
    session: Session,
    /// `None` on a connection that is not plain TCP: it cannot be cut.
    connection: Option<Connection>,
    send_timeout: Duration,
    last_heard: Instant,
}

impl Link {
    /// A frame must be taken by then: within the send timeout, and never later than the
    /// moment the browser will have been silent too long, so a blocked send cannot hold off
    /// the heartbeat's verdict.
    fn deadline(&self) -> Instant {
        (Instant::now() + self.send_timeout).min(self.last_heard + CLIENT_TIMEOUT)
    }

    async fn send(&mut self, frame: Frame) -> Result<(), End> {
        let deadline = self.deadline();
        let session = &mut self.session;
        let sending = async move {
            match frame {
                Frame::Text(text) => session.text(text).await,
                Frame::Ping => session.ping(b"").await,
                Frame::Pong(bytes) => session.pong(&bytes).await,
            }
        };
        match tokio::time::timeout_at(deadline, sending).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(actix_ws::Closed)) => Err(End::ClientLeft),
            Err(_) => Err(End::Stalled),
        }
    }

    /// Ends the socket: a close frame where one can still go, and the connection let go
    /// within `CLOSE_GRACE`; a reset where the frame cannot go, or the connection lingers.
    async fn finish(self, id: u64, end: End) {
        let Link {
            session,
            connection,
            ..
        } = self;
        let reason = |code: u16, description: &str| {
            Some(CloseReason {
                code: CloseCode::Other(code),
                description: Some(description.to_owned()),
            })
        };
        let close = match end {
            End::Stalled => None,
            End::ClientLeft | End::Silent => Some(None),
            End::Revoked(why) => Some(reason(CLOSE_TOKEN_REVOKED, why)),
            End::AuthFailed => Some(reason(CLOSE_AUTH_FAILED, "authentication failed")),
            End::TooMany => Some(reason(CLOSE_TOO_MANY, "too many dashboard sockets")),
        };
        let Some(connection) = connection else {
            // Without a handle the close frame is all there is; the socket's place stays
            // taken until actix drops the body.
            if let Some(reason) = close {
                let _ = tokio::time::timeout(CLOSE_GRACE, session.close(reason)).await;
            }
            tracing::info!(dashboard = id, ?end, "dashboard disconnected");
            return;
        };
        let closed = match close {
            // Closing consumes the session, the only sender of the body: once the close frame
            // is written the body ends and actix lets the connection go.
            Some(reason) => {
                tokio::time::timeout(CLOSE_GRACE, session.close(reason))
                    .await
                    .is_ok()
                    && connection.gone_within(CLOSE_GRACE).await
            }
            None => {
                drop(session);
                false
            }
        };
        if closed {
            tracing::info!(dashboard = id, ?end, "dashboard disconnected");
            return;
        }
        connection.abort();
        let gone = connection.gone_within(CLOSE_GRACE).await;
        tracing::info!(
            dashboard = id,
            ?end,
            released = gone,
            "dashboard stalled; connection cut"
        );
    }
}

/// Waits for the socket's token to be revoked.
async fn revoked(revocations: &mut Revocations) -> &'static str {
    loop {
        let current = *revocations.borrow_and_update();
        if let Some(why) = current {
            return why;
        }
        if revocations.changed().await.is_err() {
            // The registry keeps the sender while the socket holds its place, which is for
            // as long as this task runs; without it nothing can be revoked any more.
            std::future::pending::<()>().await;
        }
    }
}

async fn run(
    state: web::Data<AppState>,
    slot: Arc<Slot>,
    source: Option<String>,
    opened: Option<Opened>,
    mut link: Link,
    mut stream: Stream,
) {
    let id = NEXT_DASHBOARD_ID.fetch_add(1, Ordering::Relaxed);
    let opened = match opened {
        Some(opened) => Ok(opened),
        None => first_frame_auth(&state, &slot, source.as_deref(), &mut link, &mut stream).await,
    };
    let end = match opened {
        Ok(opened) => serve(&state, id, opened, &mut link, &mut stream).await,
        Err(end) => end,
    };
    // The incoming stream lives until the close is done: actix ends a connection whose
    // request stream is still held once the body ends, instead of waiting to drain it.
    link.finish(id, end).await;
    drop(stream);
    drop(slot);
}

/// Waits for the `auth` frame of a socket opened without a token.
async fn first_frame_auth(
    state: &AppState,
    slot: &Slot,
    source: Option<&str>,
    link: &mut Link,
    stream: &mut Stream,
) -> Result<Opened, End> {
    let frame = tokio::time::timeout(AUTH_TIMEOUT, async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                AggregatedMessage::Text(text) => return Ok(Some(text)),
                AggregatedMessage::Ping(bytes) => link.send(Frame::Pong(bytes)).await?,
                AggregatedMessage::Close(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    })
    .await;
    let text = match frame {
        Ok(Ok(Some(text))) => text,
        Ok(Ok(None)) => return Err(End::AuthFailed),
        Ok(Err(end)) => return Err(end),
        Err(_) => {
            link.send(error_frame(
                "auth_timeout",
                "no auth frame received in time",
            ))
            .await?;
            return Err(End::AuthFailed);
        }
    };
    let token = match serde_json::from_str::<DashboardClientFrame>(&text) {
        Ok(DashboardClientFrame::Auth { token }) => token,
        _ => {
            link.send(error_frame(
                protocol::codes::ws_error::UNAUTHENTICATED,
                "send an auth frame first",
            ))
            .await?;
            return Err(End::AuthFailed);
        }
    };
    match authenticate(state, slot, source, token).await {
        Ok(opened) => Ok(opened),
        Err(e) => {
            link.send(error_frame(e.code.as_str(), e.message)).await?;
            Err(match e.code {
                ErrorCode::TooManyConnections => End::TooMany,
                _ => End::AuthFailed,
            })
        }
    }
}

fn filter_from(
    device_ids: Option<Vec<String>>,
    event_types: Option<Vec<String>>,
) -> Result<Filter, String> {
    let too_many = |v: &Option<Vec<String>>| v.as_ref().is_some_and(|v| v.len() > MAX_FILTER_ITEMS);
    if too_many(&device_ids) || too_many(&event_types) {
        return Err(format!(
            "at most {MAX_FILTER_ITEMS} device ids and event types"
        ));
    }
    Ok(Filter {
        device_ids: device_ids.map(|v| v.into_iter().collect::<HashSet<_>>()),
        event_types: event_types.map(|v| v.into_iter().collect::<HashSet<_>>()),
    })
}

/// What a frame from the browser asks for.
fn answer(state: &AppState, id: u64, text: &str) -> Option<Frame> {
    match serde_json::from_str::<DashboardClientFrame>(text) {
        Ok(DashboardClientFrame::Subscribe {
            device_ids,
            event_types,
        }) => match filter_from(device_ids, event_types) {
            Ok(filter) => {
                state.bus.do_send(SetFilter { id, filter });
                None
            }
            Err(e) => Some(error_frame(protocol::codes::ws_error::INVALID_FRAME, e)),
        },
        Ok(DashboardClientFrame::Auth { .. }) => Some(error_frame(
            "already_authenticated",
            "this session is already authenticated",
        )),
        Err(e) => Some(error_frame(
            "invalid_frame",
            format!("cannot read frame: {e}"),
        )),
    }
}

/// Streams events to an authenticated socket until it ends; answers why.
async fn serve(
    state: &AppState,
    id: u64,
    opened: Opened,
    link: &mut Link,
    stream: &mut Stream,
) -> End {
    let Opened {
        user,
        token,
        mut revocations,
    } = opened;
    let (tx, mut rx) = mpsc::channel(DASHBOARD_BUFFER);
    let dropped = Arc::new(AtomicU64::new(0));
    let queued_bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    state.bus.do_send(Subscribe {
        id,
        tx,
        dropped: dropped.clone(),
        queued_bytes: queued_bytes.clone(),
        filter: Filter::default(),
    });
    tracing::info!(dashboard = id, user = %user.username, "dashboard connected");
    let hello = serde_json::json!({
        "type": "hello",
        "username": user.username,
        "role": user.role,
        "serverTime": chrono::Utc::now(),
    });
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut recheck = tokio::time::interval_at(Instant::now() + RECHECK_INTERVAL, RECHECK_INTERVAL);
    recheck.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut out = vec![Frame::Text(hello.to_string())];
    let end = loop {
        for frame in out.drain(..) {
            tokio::select! {
                biased;
                why = revoked(&mut revocations) => return unsubscribe(state, id, End::Revoked(why)),
                sent = link.send(frame) => if let Err(end) = sent {
                    return unsubscribe(state, id, end);
                },
            }
        }
        tokio::select! {
            biased;
            why = revoked(&mut revocations) => break End::Revoked(why),
            msg = stream.next() => {
                link.last_heard = Instant::now();
                match msg {
                    Some(Ok(AggregatedMessage::Text(text))) => out.extend(answer(state, id, &text)),
                    Some(Ok(AggregatedMessage::Ping(bytes))) => out.push(Frame::Pong(bytes)),
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Binary(_))) => out.push(error_frame(
                        "invalid_frame",
                        "binary frames are not part of the protocol",
                    )),
                    Some(Ok(AggregatedMessage::Close(_))) | None => break End::ClientLeft,
                    Some(Err(e)) => {
                        tracing::debug!(dashboard = id, error = %e, "dashboard protocol error");
                        break End::ClientLeft;
                    }
                }
            }
            event = rx.recv() => {
                let Some(first) = event else { break End::ClientLeft };
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(event) = next.take() {
                    queued_bytes.fetch_sub(event.len(), Ordering::Relaxed);
                    let missed = dropped.swap(0, Ordering::Relaxed);
                    if missed > 0 {
                        out.push(Frame::Text(notice(&DashboardNotice::Dropped { count: missed })));
                    }
                    out.push(Frame::Text(event.to_string()));
                    taken += 1;
                    if taken < DRAIN_AT_ONCE {
                        next = rx.try_recv().ok();
                    }
                }
            }
            _ = heartbeat.tick() => {
                if link.last_heard.elapsed() > CLIENT_TIMEOUT {
                    break End::Silent;
                }
                out.push(Frame::Ping);
            }
            _ = recheck.tick() => {
                if let Err(e) = authenticate_user(state, &token).await {
                    // A database that cannot answer says nothing about the token.
                    if e.status == StatusCode::UNAUTHORIZED {
                        break End::Revoked("token no longer valid");
                    }
                    tracing::debug!(dashboard = id, error = %e, "dashboard token re-check failed");
                }
            }
        }
    };
    unsubscribe(state, id, end)
}

fn unsubscribe(state: &AppState, id: u64, end: End) -> End {
    state.bus.do_send(Unsubscribe { id });
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_bounded() {
        assert!(filter_from(Some(vec!["a".into()]), None).is_ok());
        let many = (0..=MAX_FILTER_ITEMS).map(|i| i.to_string()).collect();
        assert!(filter_from(None, Some(many)).is_err());
    }
}
