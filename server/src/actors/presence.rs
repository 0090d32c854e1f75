//! Writes device presence (ONLINE/OFFLINE, last seen, version) to the database.
//!
//! It is a `SyncArbiter` actor with one thread: its mailbox keeps the order in which the
//! registry reported a device's connect and disconnect, so a quick reconnect can never leave a
//! connected device stored as OFFLINE, and no blocking query runs on an event loop.
//!
//! ONLINE and OFFLINE go with this replica's presence row (`store::presence`): a device that
//! left this replica for another is not marked OFFLINE by the one it left.

use std::time::Duration;

use actix::{Actor, Handler, Message, SyncContext};
use chrono::Utc;

use crate::store::db::Db;
use crate::store::{devices, presence};

pub struct PresenceWriter {
    db: Db,
    replica: String,
    lease: Duration,
}

impl PresenceWriter {
    pub fn new(db: Db, replica: String, lease: Duration) -> Self {
        PresenceWriter { db, replica, lease }
    }
}

impl Actor for PresenceWriter {
    type Context = SyncContext<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct MarkOnline {
    pub device_id: String,
    pub remote_addr: Option<String>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct MarkOffline {
    pub device_id: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordStatus {
    pub device_id: String,
    pub update: devices::StatusUpdate,
}

/// Answers once every message sent before it has been written; tests and shutdown use it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<MarkOnline> for PresenceWriter {
    type Result = ();
    fn handle(&mut self, msg: MarkOnline, _: &mut SyncContext<Self>) {
        let until = Utc::now() + chrono::Duration::from_std(self.lease).unwrap_or_default();
        if let Err(e) = self.db.run_blocking(|c| {
            Ok(presence::claim(
                c,
                &msg.device_id,
                &self.replica,
                msg.remote_addr.as_deref(),
                until,
            )?)
        }) {
            tracing::warn!(device = %msg.device_id, error = %e, "could not store ONLINE");
        }
    }
}

impl Handler<MarkOffline> for PresenceWriter {
    type Result = ();
    fn handle(&mut self, msg: MarkOffline, _: &mut SyncContext<Self>) {
        if let Err(e) = self
            .db
            .run_blocking(|c| Ok(presence::release(c, &msg.device_id, &self.replica)?))
        {
            tracing::warn!(device = %msg.device_id, error = %e, "could not store OFFLINE");
        }
    }
}

impl Handler<RecordStatus> for PresenceWriter {
    type Result = ();
    fn handle(&mut self, msg: RecordStatus, _: &mut SyncContext<Self>) {
        if let Err(e) = self
            .db
            .run_blocking(|c| Ok(devices::record_status(c, &msg.device_id, &msg.update)?))
        {
            tracing::warn!(device = %msg.device_id, error = %e, "could not store status");
        }
    }
}

impl Handler<Flush> for PresenceWriter {
    type Result = ();
    fn handle(&mut self, _: Flush, _: &mut SyncContext<Self>) {}
}
