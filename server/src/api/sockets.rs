//! `GET /ws/device`: the device socket's upgrade, and where its token may come from.

use crate::actors::session::*;
use crate::refusals::count_token;
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

/// `GET /ws/device`.
pub async fn device_socket(
    state: web::Data<AppState>,
    req: HttpRequest,
    stream: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let token = crate::auth::upgrade_token(&req, state.config.allow_query_token)?;
    // A token given on the upgrade is checked before the socket opens, so a refused device
    // gets a plain 401 it can act on (re-enroll) instead of an opened-then-closed socket.
    let remote_addr = req.peer_addr().map(|a| a.ip().to_string());
    let identity = match token {
        Some(token) => {
            let checked = verify_device_token(&state, &token).await;
            Some(count_token(&state, remote_addr.as_deref(), checked).await?)
        }
        None => None,
    };
    ws::WsResponseBuilder::new(
        DeviceSession::new(state, identity, remote_addr),
        &req,
        stream,
    )
    .frame_size(MAX_FRAME_SIZE)
    .start()
}
