//! A command for a device another replica holds: how the `CommandDispatcher` hands it over.
//!
//! The command's row is stored PENDING here (with its audit row, when it is new), then its id
//! goes to the holder's channel (`store::leases`). The holder's `Cluster` reads the row and
//! dispatches it like any other stored command, to the device's socket, and when that dispatch
//! has stored its outcome, it announces the id on the channel of ended commands; the `Cluster`
//! here hands that to the dispatcher (`RemoteEnded`), whose waiting future then answers what
//! the row says. A holder that dies meanwhile never announces: past the command's timeout and
//! a grace, the row is ended TIMEOUT here (conditional on it still being in flight), so no
//! command is left PENDING or SENT.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use protocol::commands::CommandResult;
use protocol::rest::{CommandStatus, DispatchResponse};
use tokio::sync::oneshot;

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::store::audit::AuditEntry;
use crate::store::db::Db;
use crate::store::{command_batch, commands, leases, presence};

use super::{CommandDispatcher, Ctx, Dispatch, Stored};

/// How long past its timeout a handed-over command may take to be announced: the holder's own
/// timeout ends it first, and its final write and the notification need a moment.
const ANNOUNCE_GRACE: Duration = Duration::from_secs(5);

/// How long a replica seen alive counts as alive without asking PostgreSQL again: the
/// `pg_stat_activity` query is the dearest part of the lookup, and at a thousand hand-overs a
/// second it queued in front of every one. A replica killed within this second gets the
/// commands of that second, which end TIMEOUT as for a holder that dies mid-flight; the
/// leader ends its leases within about two seconds (`actors::cluster`).
const ALIVE_FOR: Duration = Duration::from_secs(1);

/// This replica among several: its id, and when each other replica was last seen alive.
#[derive(Clone)]
pub(super) struct Member {
    id: String,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Member {
    fn recently_alive(&self, replica: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(replica).is_some_and(|t| t.elapsed() < ALIVE_FOR)
    }

    fn saw_alive(&self, replica: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(replica.to_owned(), Instant::now());
    }
}

/// The replica, other than `me`, whose lease holds `device_id` now and which is alive: a
/// killed replica's lease outlives it by up to `presence_lease_secs`, but its LISTEN
/// connection is gone at once, and a command handed to it would wait for nothing.
async fn holder(db: &Db, me: &Member, device_id: &str) -> ApiResult<Option<String>> {
    let (member, device_id) = (me.clone(), device_id.to_owned());
    let found = db
        .run(move |conn| {
            let holder = presence::holder_other_than(conn, &device_id, &member.id, Utc::now())?;
            match holder {
                Some(replica) if member.recently_alive(&replica) => Ok(Some(replica)),
                Some(replica) if leases::alive(conn, &replica)? => {
                    member.saw_alive(&replica);
                    Ok(Some(replica))
                }
                _ => Ok(None),
            }
        })
        .await?;
    Ok(found)
}

/// A command not stored yet: whom to tell it is stored, and its audit row.
struct Unstored {
    accepted: oneshot::Sender<ApiResult<()>>,
    audit: AuditEntry,
    issued_by: Option<String>,
}

/// A dispatch handed back to be run here.
type Here = (Dispatch, Stored, oneshot::Receiver<CommandResult>);

/// Runs the dispatch through the replica holding its device when that is another one (and
/// this dispatcher is one of several, and the row is not SENT already); else hands it back.
/// A failed lookup hands it back too: the store that follows reports the database's trouble.
pub(super) async fn elsewhere(
    ctx: &Ctx,
    connected_here: bool,
    msg: Dispatch,
    stored: Stored,
    rx: oneshot::Receiver<CommandResult>,
) -> Result<ApiResult<DispatchResponse>, Here> {
    let me = match (&ctx.replica, connected_here, &stored) {
        (Some(me), false, Stored::Not(_) | Stored::Waiting) => me,
        _ => return Err((msg, stored, rx)),
    };
    let Ok(Some(holder)) = holder(&ctx.db, me, &msg.device_id).await else {
        return Err((msg, stored, rx));
    };
    let unstored = match stored {
        Stored::Not(new) => Some(Unstored {
            accepted: new.accepted,
            audit: new.audit,
            issued_by: msg.issued_by.clone(),
        }),
        _ => None,
    };
    Ok(run(ctx, &holder, &msg, unstored, rx).await)
}

/// Hands `msg.command` (for a device held by `holder`) over and answers its outcome once the
/// holder announces it, or TIMEOUT when nobody does.
async fn run(
    ctx: &Ctx,
    holder: &str,
    msg: &Dispatch,
    unstored: Option<Unstored>,
    ended: oneshot::Receiver<CommandResult>,
) -> ApiResult<DispatchResponse> {
    let (command_id, began) = (msg.command.id.clone(), Instant::now());
    // The holder hears of it through the commit that stores it (or, for a row stored
    // already, through a commit of its own): no separate round trip for the NOTIFY.
    let notify = ctx.writer.notify(
        leases::commands_channel(holder),
        leases::handover_payload(&command_id, msg.queue_ttl),
    );
    if let Some(Unstored {
        accepted,
        audit,
        issued_by,
    }) = unstored
    {
        // Stored as for an offline device: PENDING, sent by the holder. Both writes are
        // queued before either is awaited, so they share one commit; when the store fails
        // the holder finds no PENDING row and only announces the id.
        let store = ctx.writer.store_new(command_batch::NewCommand {
            device_id: msg.device_id.clone(),
            command: msg.command.clone(),
            timeout_ms: msg.timeout.as_millis() as i64,
            issued_by,
            audit,
            online: false,
            watch: commands::Watch::Nothing,
        });
        let (stored, notified) = tokio::join!(store, notify);
        let _ = accepted.send(stored.as_ref().map(|_| ()).map_err(Clone::clone));
        stored?;
        notified?;
    } else {
        notify.await?;
    }
    let handed = began.elapsed();
    // The value is not read: the row is what the holder stored.
    let announced = matches!(
        tokio::time::timeout(msg.timeout + ANNOUNCE_GRACE, ended).await,
        Ok(Ok(_))
    );
    tracing::debug!(command_id = %command_id, holder, ?handed, announced, waited = ?began.elapsed(), "hand-over ended");
    outcome(&ctx.db, &command_id, !announced).await
}

/// What the row of `id` says now; `abandon` first: nobody announced it, so it is ended
/// TIMEOUT unless it has an outcome already (the write is conditional).
async fn outcome(db: &Db, id: &str, abandon: bool) -> ApiResult<DispatchResponse> {
    let id = id.to_owned();
    let row = db
        .run(move |conn| {
            if abandon {
                commands::abandon(conn, &id, Utc::now())?;
            }
            Ok(commands::find_by_id(conn, &id)?)
        })
        .await?
        .ok_or_else(|| ApiError::not_found(ErrorCode::CommandNotFound, "command vanished"))?;
    Ok(DispatchResponse {
        result: row.result(),
        status: row.status()?,
    })
}

/// This dispatcher is one of several replicas on one database, named `0`: a device it does not
/// hold may be held by another, and is reached through it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JoinCluster(pub String);

/// The replica that ran a handed-over command announced that its outcome is stored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteEnded {
    pub command_id: String,
}

impl Handler<JoinCluster> for CommandDispatcher {
    type Result = ();
    fn handle(&mut self, msg: JoinCluster, _: &mut Context<Self>) {
        self.replica = Some(Member {
            id: msg.0,
            seen: Arc::default(),
        });
    }
}

impl Handler<RemoteEnded> for CommandDispatcher {
    type Result = ();
    fn handle(&mut self, msg: RemoteEnded, _: &mut Context<Self>) {
        // Only a hand-over waits for an announcement; a local dispatch of the same id has
        // ended before its replica announces it.
        if let Some(w) = self.waiting.remove(&msg.command_id) {
            let _ = w
                .reply
                .send(CommandResult::failed(&msg.command_id, "announced"));
        }
    }
}

impl CommandDispatcher {
    /// Ends a CONFIRMING command as `status`, and tells dashboards only when this write ended
    /// it: several replicas may watch one command (the one that sent it, the one its device
    /// came back to), and only the first to end it speaks, so a confirmation is never
    /// followed by another replica's "did not come back" failure.
    pub(super) fn end_confirming(
        &self,
        device_id: String,
        result: CommandResult,
        status: CommandStatus,
        ctx: &mut Context<Self>,
    ) {
        let (writer, me) = (self.writer.clone(), ctx.address());
        actix::spawn(async move {
            if let Ok(true) = writer.complete(result.clone(), status).await {
                me.do_send(super::PublishOutcome { device_id, result });
            }
        });
    }

    /// A device that connected here may have been told to restart or reboot through another
    /// replica: its CONFIRMING commands are watched here too (the first to see the new id, or
    /// the deadline, ends them; both writes are conditional).
    pub(super) fn adopt_confirming(&mut self, device_id: &str, ctx: &mut Context<Self>) {
        if self.replica.is_none() {
            return;
        }
        let (db, device_id) = (self.db.clone(), device_id.to_owned());
        async move { db.run(|conn| Ok(commands::confirming(conn)?)).await }
            .into_actor(self)
            .map(move |rows, act, _| {
                act.watch_confirming(rows.unwrap_or_default(), Some(&device_id))
            })
            .spawn(ctx);
    }
}
