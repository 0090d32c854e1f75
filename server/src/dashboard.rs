//! `/ws/dashboard`: the live stream browsers subscribe to.
//!
//! A dashboard authenticates with a user JWT (header, `?token=` while allowed, or a first
//! `auth` frame), may narrow what it gets with `subscribe`, and receives device events from the
//! `EventBus` through a bounded channel. Writing to the browser waits for the socket (actix-ws
//! exposes that backpressure, which actix-web-actors' context does not), so a browser that
//! stops reading fills only its own channel; the bus then drops and counts, and the dashboard
//! hears how many it missed in a `dropped` frame once it reads again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, Session};
use futures_util::StreamExt;
use protocol::dashboard::{DashboardClientFrame, DashboardNotice};
use tokio::sync::mpsc;

use crate::auth::{authenticate_user, AuthUser};
use crate::events::{Filter, SetFilter, Subscribe, Unsubscribe};
use crate::refusals::count_token;
use crate::session::{upgrade_token, AUTH_TIMEOUT, CLIENT_TIMEOUT, HEARTBEAT_INTERVAL};
use crate::state::AppState;

/// Events buffered per dashboard before the bus starts dropping for it (and at most
/// `events::MAX_QUEUED_BYTES` of them).
pub const DASHBOARD_BUFFER: usize = 256;
/// A dashboard whose socket accepts nothing for this long is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame a dashboard may send.
pub const MAX_DASHBOARD_FRAME: usize = 64 * 1024;
/// Most device ids or event types in one subscribe.
pub const MAX_FILTER_ITEMS: usize = 10_000;

static NEXT_DASHBOARD_ID: AtomicU64 = AtomicU64::new(1);

fn notice(n: &DashboardNotice) -> String {
    serde_json::to_string(n).unwrap_or_default()
}

fn error_frame(code: &str, message: impl Into<String>) -> String {
    notice(&DashboardNotice::Error {
        code: code.into(),
        message: message.into(),
    })
}

/// `GET /ws/dashboard`.
pub async fn dashboard_socket(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let token = upgrade_token(&req, state.config.allow_query_token)?;
    let source = crate::audit::source_of(&req);
    let user = match token {
        Some(token) => {
            let checked = authenticate_user(&state, &token).await;
            Some(count_token(&state, source.as_deref(), checked).await?)
        }
        None => None,
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(MAX_DASHBOARD_FRAME)
        .aggregate_continuations();
    actix_web::rt::spawn(run(state, source, user, session, stream));
    Ok(response)
}

type Stream = actix_ws::AggregatedMessageStream;

/// Waits for the `auth` frame of a socket opened without a token.
async fn first_frame_auth(
    state: &AppState,
    source: Option<&str>,
    session: &mut Session,
    stream: &mut Stream,
) -> Option<AuthUser> {
    let frame = tokio::time::timeout(AUTH_TIMEOUT, async {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                AggregatedMessage::Text(text) => return Some(text),
                AggregatedMessage::Ping(bytes) => {
                    let _ = session.pong(&bytes).await;
                }
                AggregatedMessage::Close(_) => return None,
                _ => {}
            }
        }
        None
    })
    .await;
    let text = match frame {
        Ok(Some(text)) => text,
        Ok(None) => return None,
        Err(_) => {
            let _ = session
                .text(error_frame(
                    "auth_timeout",
                    "no auth frame received in time",
                ))
                .await;
            return None;
        }
    };
    match serde_json::from_str::<DashboardClientFrame>(&text) {
        Ok(DashboardClientFrame::Auth { token }) => {
            match count_token(state, source, authenticate_user(state, &token).await).await {
                Ok(user) => Some(user),
                Err(e) => {
                    let _ = session.text(error_frame(&e.code.name(), e.message)).await;
                    None
                }
            }
        }
        _ => {
            let _ = session
                .text(error_frame("unauthenticated", "send an auth frame first"))
                .await;
            None
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

async fn run(
    state: web::Data<AppState>,
    source: Option<String>,
    user: Option<AuthUser>,
    mut session: Session,
    mut stream: Stream,
) {
    let user = match user {
        Some(user) => user,
        None => {
            match first_frame_auth(&state, source.as_deref(), &mut session, &mut stream).await {
                Some(user) => user,
                None => {
                    let _ = session
                        .close(Some(actix_ws::CloseReason {
                            code: actix_ws::CloseCode::Other(crate::session::CLOSE_AUTH_FAILED),
                            description: Some("authentication failed".into()),
                        }))
                        .await;
                    return;
                }
            }
        }
    };
    let id = NEXT_DASHBOARD_ID.fetch_add(1, Ordering::Relaxed);
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
    let mut alive = session.text(hello.to_string()).await.is_ok();
    let mut last_heard = Instant::now();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    while alive {
        tokio::select! {
            msg = stream.next() => {
                last_heard = Instant::now();
                alive = match msg {
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        let reply = match serde_json::from_str::<DashboardClientFrame>(&text) {
                            Ok(DashboardClientFrame::Subscribe { device_ids, event_types }) => {
                                match filter_from(device_ids, event_types) {
                                    Ok(filter) => {
                                        state.bus.do_send(SetFilter { id, filter });
                                        None
                                    }
                                    Err(e) => Some(error_frame("invalid_frame", e)),
                                }
                            }
                            Ok(DashboardClientFrame::Auth { .. }) => {
                                Some(error_frame("already_authenticated", "this session is already authenticated"))
                            }
                            Err(e) => Some(error_frame("invalid_frame", format!("cannot read frame: {e}"))),
                        };
                        match reply {
                            Some(frame) => send(&mut session, frame).await,
                            None => true,
                        }
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => session.pong(&bytes).await.is_ok(),
                    Some(Ok(AggregatedMessage::Pong(_))) => true,
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        send(&mut session, error_frame("invalid_frame", "binary frames are not part of the protocol")).await
                    }
                    Some(Ok(AggregatedMessage::Close(_))) | None => false,
                    Some(Err(e)) => {
                        tracing::debug!(dashboard = id, error = %e, "dashboard protocol error");
                        false
                    }
                };
            }
            event = rx.recv() => {
                let Some(event) = event else { break };
                queued_bytes.fetch_sub(event.len(), Ordering::Relaxed);
                let missed = dropped.swap(0, Ordering::Relaxed);
                if missed > 0 {
                    alive = send(&mut session, notice(&DashboardNotice::Dropped { count: missed })).await;
                }
                if alive {
                    alive = send(&mut session, event.to_string()).await;
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > CLIENT_TIMEOUT {
                    tracing::info!(dashboard = id, "dashboard heartbeat timed out");
                    break;
                }
                alive = session.ping(b"").await.is_ok();
            }
        }
    }
    state.bus.do_send(Unsubscribe { id });
    let _ = session.close(None).await;
    tracing::info!(dashboard = id, "dashboard disconnected");
}

/// Sends one frame, giving up on a socket that takes nothing for `SEND_TIMEOUT`.
async fn send(session: &mut Session, text: String) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, session.text(text)).await,
        Ok(Ok(()))
    )
}
