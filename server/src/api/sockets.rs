//! `GET /ws/device`: the device socket's upgrade, with the session's peers and token check.

use std::rc::Rc;

use crate::actors::session::*;
use crate::auth::verify_device_token;
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
    let checker = state.clone();
    let peers = Peers {
        registry: state.registry.clone(),
        dispatcher: state.dispatcher.clone(),
        presence: state.presence.clone(),
        deployer: state.deployer.clone(),
        bus: state.bus.clone(),
        telemetry: state.telemetry.clone(),
        verify: Rc::new(move |token, source| {
            let state = checker.clone();
            Box::pin(async move {
                let checked = verify_device_token(&state, &token).await;
                count_token(&state, source.as_deref(), checked).await
            })
        }),
    };
    ws::WsResponseBuilder::new(
        DeviceSession::new(peers, identity, remote_addr),
        &req,
        stream,
    )
    .frame_size(MAX_FRAME_SIZE)
    .start()
}
