//! The `DeviceRegistry` actor: which device is connected through which session.
//!
//! It holds one entry per device. A newer session of the same device replaces the older one,
//! which is told to close; a session's disconnect only counts while it is still the current
//! one, so the older session's late goodbye never marks a connected device offline.

use std::collections::HashMap;
use std::net::IpAddr;

use actix::{Actor, Addr, Context, Handler, Message, MessageResult, Recipient};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::actors::events::{EventBus, Publish};
use crate::actors::presence::{MarkOffline, MarkOnline, PresenceWriter};
use crate::actors::session::{
    CloseSession, DeliverCommand, DeviceSession, CLOSE_REPLACED, CLOSE_TOKEN_REVOKED,
};

/// One per connected device, so kept small: the session's one address (a recipient is made
/// from it when asked for), its peer's address as an address rather than text.
struct SessionEntry {
    session_id: u64,
    token_id: String,
    connected_at: DateTime<Utc>,
    remote_addr: Option<IpAddr>,
    session: Addr<DeviceSession>,
    refused_frames: u64,
}

pub struct DeviceRegistry {
    sessions: HashMap<String, SessionEntry>,
    presence: Addr<PresenceWriter>,
    bus: Addr<EventBus>,
}

impl DeviceRegistry {
    pub fn new(presence: Addr<PresenceWriter>, bus: Addr<EventBus>) -> Self {
        DeviceRegistry {
            sessions: HashMap::new(),
            presence,
            bus,
        }
    }
}

/// A session refused a frame from its device (too large or too fast).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FrameRefused {
    pub device_id: String,
    pub session_id: u64,
}

impl Handler<FrameRefused> for DeviceRegistry {
    type Result = ();
    fn handle(&mut self, msg: FrameRefused, _: &mut Context<Self>) {
        if let Some(entry) = self.sessions.get_mut(&msg.device_id) {
            if entry.session_id == msg.session_id {
                entry.refused_frames += 1;
            }
        }
    }
}

impl Actor for DeviceRegistry {
    type Context = Context<Self>;
}

/// A session authenticated and wants to be the device's channel.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    pub device_id: String,
    pub session_id: u64,
    pub token_id: String,
    pub remote_addr: Option<IpAddr>,
    pub session: Addr<DeviceSession>,
}

/// A session ended, for whatever reason.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub device_id: String,
    pub session_id: u64,
}

/// The channel to a device, if it is connected.
#[derive(Message)]
#[rtype(result = "Option<Recipient<DeliverCommand>>")]
pub struct Lookup {
    pub device_id: String,
}

/// A new device token was issued; a session on any other token must close.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TokenRotated {
    pub device_id: String,
    pub token_id: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectedDevice {
    pub device_id: String,
    pub session_id: u64,
    pub connected_at: DateTime<Utc>,
    pub remote_addr: Option<String>,
    /// Frames refused in this session for being too large or too fast.
    pub refused_frames: u64,
}

#[derive(Message)]
#[rtype(result = "Vec<ConnectedDevice>")]
pub struct ListConnected;

impl Handler<Connect> for DeviceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) {
        let entry = SessionEntry {
            session_id: msg.session_id,
            token_id: msg.token_id,
            connected_at: Utc::now(),
            remote_addr: msg.remote_addr,
            session: msg.session,
            refused_frames: 0,
        };
        if let Some(old) = self.sessions.insert(msg.device_id.clone(), entry) {
            tracing::info!(device = %msg.device_id, old = old.session_id, new = msg.session_id, "session replaced");
            old.session.do_send(CloseSession {
                code: CLOSE_REPLACED,
                reason: "replaced by a newer session of this device".into(),
            });
        } else {
            tracing::info!(device = %msg.device_id, session = msg.session_id, "device connected");
        }
        crate::metrics::set_connected_devices(self.sessions.len());
        self.presence.do_send(MarkOnline {
            device_id: msg.device_id,
            remote_addr: msg.remote_addr.map(|a| a.to_string()),
        });
    }
}

impl Handler<Disconnect> for DeviceRegistry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        let current = self
            .sessions
            .get(&msg.device_id)
            .is_some_and(|e| e.session_id == msg.session_id);
        if current {
            self.sessions.remove(&msg.device_id);
            crate::metrics::set_connected_devices(self.sessions.len());
            tracing::info!(device = %msg.device_id, session = msg.session_id, "device disconnected");
            self.presence.do_send(MarkOffline {
                device_id: msg.device_id.clone(),
            });
            if let Some(publish) = Publish::device_offline(&msg.device_id) {
                self.bus.do_send(publish);
            }
        }
    }
}

impl Handler<Lookup> for DeviceRegistry {
    type Result = Option<Recipient<DeliverCommand>>;

    fn handle(&mut self, msg: Lookup, _: &mut Context<Self>) -> Self::Result {
        self.sessions
            .get(&msg.device_id)
            .map(|e| e.session.clone().recipient())
    }
}

impl Handler<TokenRotated> for DeviceRegistry {
    type Result = ();

    fn handle(&mut self, msg: TokenRotated, _: &mut Context<Self>) {
        if let Some(entry) = self.sessions.get(&msg.device_id) {
            if entry.token_id != msg.token_id {
                entry.session.do_send(CloseSession {
                    code: CLOSE_TOKEN_REVOKED,
                    reason: "device token was rotated".into(),
                });
            }
        }
    }
}

impl Handler<ListConnected> for DeviceRegistry {
    type Result = MessageResult<ListConnected>;

    fn handle(&mut self, _: ListConnected, _: &mut Context<Self>) -> Self::Result {
        let mut list: Vec<ConnectedDevice> = self
            .sessions
            .iter()
            .map(|(id, e)| ConnectedDevice {
                device_id: id.clone(),
                session_id: e.session_id,
                connected_at: e.connected_at,
                remote_addr: e.remote_addr.map(|a| a.to_string()),
                refused_frames: e.refused_frames,
            })
            .collect();
        list.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        MessageResult(list)
    }
}

/// Writes the presence of every connected device again: a heartbeat found fewer rows of this
/// replica than devices it holds (a lease expired while it was too slow to renew it). Sent
/// through the registry so the writes keep their order with connects and disconnects.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reclaim;

impl Handler<Reclaim> for DeviceRegistry {
    type Result = ();

    fn handle(&mut self, _: Reclaim, _: &mut Context<Self>) {
        for (device_id, entry) in &self.sessions {
            self.presence.do_send(MarkOnline {
                device_id: device_id.clone(),
                remote_addr: entry.remote_addr.map(|a| a.to_string()),
            });
        }
    }
}
