//! `GET /ws/device`: the device socket's upgrade, with the session's peers and token check.

use std::rc::Rc;

use crate::actors::session::*;
use crate::auth::verify_device_token;
use crate::connection::ConnectionSocket;
use crate::refusals::count_token;
use crate::state::AppState;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

/// The peers every device session of one worker shares: built once per worker (`App`
/// factory), so that a session holds one `Rc` instead of its own copy of six addresses and
/// the token check, each clone of an address being two allocations of its own.
#[derive(Clone)]
pub struct SharedPeers(pub Rc<Peers>);

impl SharedPeers {
    pub fn new(state: &web::Data<AppState>) -> Self {
        let checker = state.clone();
        SharedPeers(Rc::new(Peers {
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
        }))
    }
}

/// `GET /ws/device`.
pub async fn device_socket(
    state: web::Data<AppState>,
    req: HttpRequest,
    stream: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let token = crate::auth::upgrade_token(&req, state.config.allow_query_token)?;
    // A token given on the upgrade is checked before the socket opens, so a refused device
    // gets a plain 401 it can act on (re-enroll) instead of an opened-then-closed socket.
    let remote_addr = req.peer_addr().map(|a| a.ip());
    let identity = match token {
        Some(token) => {
            let checked = verify_device_token(&state, &token).await;
            let source = remote_addr.map(|a| a.to_string());
            Some(count_token(&state, source.as_deref(), checked).await?)
        }
        None => None,
    };
    let peers = match req.app_data::<SharedPeers>() {
        Some(shared) => shared.0.clone(),
        None => SharedPeers::new(&state).0,
    };
    let response = ws::WsResponseBuilder::new(
        DeviceSession::new(peers, identity, remote_addr),
        &req,
        stream,
    )
    .frame_size(MAX_FRAME_SIZE)
    .start()?;
    // A device socket is never cut from outside (its session ends it), so once upgraded its
    // connection gives back the duplicate descriptor kept for that: one descriptor per
    // device, not two, which is what lets one process hold as many devices as its limit.
    if let Some(socket) = req.conn_data::<ConnectionSocket>() {
        socket.release();
    }
    Ok(response)
}
