//! `Cluster`: this replica among the others on one PostgreSQL database.
//!
//! - Presence: every third of the lease it renews the leases of the devices it holds
//!   (`store::presence`), and writes again any row that went missing.
//! - Leadership: a thread of its own keeps one connection outside the pool (`store::leases`),
//!   LISTENs on it and tries the leader's advisory lock every `LEAD_RETRY` while it does not
//!   hold it. Whether this replica leads goes by `SetLeader` to the actors whose work must run
//!   once (deployer, cloud drain, janitor); the leader also expires the leases of dead
//!   replicas. A killed leader's connection closes, PostgreSQL frees the lock, and another
//!   replica's next try takes it.
//! - Commands: an id on this replica's channel is a command another replica handed over
//!   (`dispatcher_forward.rs`); it is dispatched here like any stored command and its id
//!   announced once its outcome is stored. Announcements from the others go to the dispatcher
//!   as `RemoteEnded`.
//! - Dashboard events: what the bus publishes here (`Relay`) goes out in batches on the
//!   events channel; what the others send arrives as `PublishRemote` to the local bus.
//!
//! On SQLite there is one process: it leads from the start and no thread is started.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use protocol::dashboard::DashboardEvent;
use protocol::device::DeviceEvent;
use protocol::rest::CommandStatus;

use crate::actors::deployer::{DeviceAlert, DeviceReported, FirmwareDeployer};
use crate::actors::dispatcher::{CommandDispatcher, Dispatch, JoinCluster, RemoteEnded};
use crate::actors::events::{EventBus, Publish, PublishRemote, Relay, SetRelay};
use crate::actors::registry::{DeviceRegistry, ListConnected, Reclaim};
use crate::store::db::Db;
use crate::store::{commands, leases, presence};

/// How often a replica that does not lead tries the leader's lock, and how often the leader
/// checks that its connection (and so the lock) is still there.
pub const LEAD_RETRY: Duration = Duration::from_secs(2);
/// How long the listening thread sleeps when no notification came; a cross-replica command
/// waits this long at most to be seen.
const POLL_IDLE: Duration = Duration::from_millis(2);
/// How often the leader looks for replicas whose LISTEN connection is gone. One silent at two
/// looks in a row is dead (a connection being replaced is back well within one), and its
/// devices go OFFLINE then, not when their leases pass.
const DEAD_CHECK: Duration = Duration::from_secs(1);
/// Events waiting to go to the other replicas; past this, new ones are dropped (and counted
/// as dropped dashboard events), so a database that cannot keep up costs bounded memory.
const MAX_OUTGOING: usize = 10_000;

/// Whether this replica is the one that runs the work that must run once.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct SetLeader(pub bool);

/// What the listening thread received.
#[derive(Message)]
#[rtype(result = "()")]
struct Notified {
    channel: String,
    payload: String,
}

/// The listening thread took or lost the leader's lock.
#[derive(Message)]
#[rtype(result = "()")]
struct Leadership(bool);

/// The actors this one talks to.
pub struct Peers {
    pub dispatcher: Addr<CommandDispatcher>,
    pub registry: Addr<DeviceRegistry>,
    pub bus: Addr<EventBus>,
    /// Hears the alerts and status reports of devices held by the other replicas, which only
    /// the leader's deployer acts on (an error alert during a soak fails the device).
    pub deployer: Addr<FirmwareDeployer>,
    /// Told by `SetLeader` whether they lead.
    pub followers: Vec<Recipient<SetLeader>>,
}

pub struct Cluster {
    db: Db,
    replica: String,
    lease: Duration,
    peers: Peers,
    leader: bool,
    outgoing: Vec<Publish>,
    flushing: bool,
    beating: bool,
    /// The replicas holding devices whose LISTEN connection was gone at the last look.
    silent: HashSet<String>,
    checking: bool,
    /// Whether another replica listens, so that dashboard events are worth relaying: a
    /// single replica on PostgreSQL sends none (a `NOTIFY` a command, and most of the
    /// database's work under telemetry). Looked up every `DEAD_CHECK`, and set at once by a
    /// replica's hello or any batch from another replica.
    others: bool,
    /// When another replica was last heard from, so that a look that began before its hello
    /// does not undo it.
    heard: Instant,
    looking: bool,
    /// The SQLite file's lock (`lib.rs`), held as long as this actor lives: the whole run.
    _sqlite_lock: Option<std::fs::File>,
}

impl Cluster {
    pub fn new(
        db: Db,
        replica: String,
        lease: Duration,
        peers: Peers,
        sqlite_lock: Option<std::fs::File>,
    ) -> Self {
        Cluster {
            db,
            replica,
            lease,
            peers,
            leader: false,
            outgoing: Vec::new(),
            flushing: false,
            beating: false,
            silent: HashSet::new(),
            checking: false,
            others: true,
            heard: Instant::now(),
            looking: false,
            _sqlite_lock: sqlite_lock,
        }
    }

    fn set_leader(&mut self, leader: bool) {
        if leader != self.leader {
            tracing::info!(replica = %self.replica, leader, "leadership changed");
        }
        self.leader = leader;
        for follower in &self.peers.followers {
            follower.do_send(SetLeader(leader));
        }
    }
}

impl Actor for Cluster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        match self.db.postgres_url() {
            Some(url) if self.db.shared() => {
                self.peers
                    .dispatcher
                    .do_send(JoinCluster(self.replica.clone()));
                self.peers.bus.do_send(SetRelay(ctx.address().recipient()));
                let (replica, me) = (self.replica.clone(), ctx.address());
                let spawned = std::thread::Builder::new()
                    .name("cluster-listen".into())
                    .spawn(move || listen(&url, &replica, &me));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start the LISTEN thread: this replica never leads");
                }
                self.look_for_others(ctx);
                ctx.run_interval(DEAD_CHECK, |act, ctx| {
                    act.find_dead(ctx);
                    act.look_for_others(ctx);
                });
            }
            _ => self.set_leader(true),
        }
        ctx.run_interval(self.lease / 3, |act, ctx| act.heartbeat(ctx));
    }
}

/// The LISTEN connection's thread: receives notifications and holds or tries the lock, and
/// starts over on a new connection when the old one fails. It ends with the actor.
fn listen(url: &str, replica: &str, me: &Addr<Cluster>) {
    let channels = vec![
        leases::commands_channel(replica),
        leases::ENDED_CHANNEL.to_owned(),
        leases::EVENTS_CHANNEL.to_owned(),
    ];
    while me.connected() {
        let mut conn = match leases::connect(url, replica, &channels) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e.message, "LISTEN connection failed; trying again");
                std::thread::sleep(LEAD_RETRY);
                continue;
            }
        };
        let mut leading = false;
        let mut checked = Instant::now() - LEAD_RETRY;
        let failure = loop {
            if !me.connected() {
                return;
            }
            let got = match leases::notifications(&mut conn) {
                Ok(got) => got,
                Err(e) => break e,
            };
            let idle = got.is_empty();
            for (channel, payload) in got {
                me.do_send(Notified { channel, payload });
            }
            if checked.elapsed() >= LEAD_RETRY {
                checked = Instant::now();
                let step = if leading {
                    leases::ping(&mut conn).map(|()| true)
                } else {
                    leases::try_lead(&mut conn)
                };
                match step {
                    Ok(now) if now != leading => {
                        leading = now;
                        me.do_send(Leadership(now));
                    }
                    Ok(_) => {}
                    Err(e) => break e,
                }
            }
            if idle {
                std::thread::sleep(POLL_IDLE);
            }
        };
        tracing::warn!(error = %failure.message, "LISTEN connection lost; reconnecting");
        if leading {
            me.do_send(Leadership(false));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Handler<Leadership> for Cluster {
    type Result = ();
    fn handle(&mut self, msg: Leadership, _: &mut Context<Self>) {
        self.set_leader(msg.0);
    }
}

impl Handler<Notified> for Cluster {
    type Result = ();
    fn handle(&mut self, msg: Notified, _: &mut Context<Self>) {
        if msg.channel == leases::ENDED_CHANNEL {
            self.peers.dispatcher.do_send(RemoteEnded {
                command_id: msg.payload,
            });
        } else if msg.channel == leases::EVENTS_CHANNEL {
            self.receive_events(&msg.payload);
        } else if msg.channel == leases::commands_channel(&self.replica) {
            self.run_handed(&msg.payload);
        }
    }
}

impl Cluster {
    /// Dispatches a command another replica handed over, then announces that its outcome is
    /// stored (whatever it is: even one that was no longer PENDING has an outcome to read).
    fn run_handed(&self, payload: &str) {
        let (command_id, queue_ttl) = leases::parse_handover(payload);
        let (db, dispatcher) = (self.db.clone(), self.peers.dispatcher.clone());
        actix::spawn(async move {
            let began = Instant::now();
            let id = command_id.clone();
            let row = db
                .run(move |conn| Ok(commands::find_by_id(conn, &id)?))
                .await;
            if let Ok(Some(row)) = row {
                let pending = row.status().ok() == Some(CommandStatus::Pending);
                if let (true, Ok(command)) = (pending, row.command()) {
                    // With the queue time the request asked for: a device that left this
                    // replica meanwhile gets the command queued (or handed on to the replica
                    // it went to), not failed.
                    let _ = dispatcher
                        .send(Dispatch {
                            device_id: row.device_id.clone(),
                            command,
                            timeout: Duration::from_millis(row.timeout_ms.max(1) as u64),
                            issued_by: row.issued_by.clone(),
                            queue_ttl,
                        })
                        .await;
                }
            }
            let dispatched = began.elapsed();
            let id = command_id.clone();
            let announced = db
                .run(move |conn| Ok(leases::notify(conn, leases::ENDED_CHANNEL, &id)?))
                .await;
            match announced {
                Ok(()) => {
                    tracing::debug!(command_id = %command_id, ?dispatched, announced = ?began.elapsed(), "handed-over command ended")
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "a handed-over command's end was not announced")
                }
            }
        });
    }

    /// A batch from another replica: its first line names the sender, each further line is
    /// `device id TAB event type TAB json`.
    fn receive_events(&mut self, payload: &str) {
        let mut lines = payload.split('\n');
        if lines.next() == Some(self.replica.as_str()) {
            return; // PostgreSQL tells the sender too.
        }
        self.others = true;
        self.heard = Instant::now();
        for line in lines {
            let mut parts = line.splitn(3, '\t');
            if let (Some(device_id), Some(event_type), Some(json)) =
                (parts.next(), parts.next(), parts.next())
            {
                self.to_deployer(device_id, event_type, json);
                self.peers.bus.do_send(PublishRemote(Publish {
                    device_id: device_id.to_owned(),
                    event_type: event_type.to_owned(),
                    json: json.into(),
                }));
            }
        }
    }

    /// The deployer runs on the leader only, but a device's alerts and status reports reach
    /// the replica that holds it: those of the others come here with the dashboard events.
    /// A replica that does not lead watches no device, and its deployer drops them.
    fn to_deployer(&self, device_id: &str, event_type: &str, json: &str) {
        match event_type {
            "alert" => {
                if let Ok(DashboardEvent {
                    event: DeviceEvent::Alert(alert),
                    ..
                }) = serde_json::from_str::<DashboardEvent>(json)
                {
                    self.peers.deployer.do_send(DeviceAlert {
                        device_id: device_id.to_owned(),
                        severity: alert.severity,
                        message: alert.message,
                    });
                }
            }
            "status" => self.peers.deployer.do_send(DeviceReported {
                device_id: device_id.to_owned(),
            }),
            _ => {}
        }
    }

    /// Sends what `Relay` collected, in payloads PostgreSQL takes, one batch at a time (so
    /// they leave in the order they were published); what came meanwhile goes next.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.outgoing.is_empty() {
            return;
        }
        self.flushing = true;
        let header = format!("{}\n", self.replica);
        let mut payloads: Vec<String> = Vec::new();
        let mut current = header.clone();
        for event in std::mem::take(&mut self.outgoing) {
            let line = format!("{}\t{}\t{}", event.device_id, event.event_type, event.json);
            if header.len() + line.len() > leases::MAX_PAYLOAD {
                crate::metrics::dashboard_event_dropped();
                tracing::debug!(device = %event.device_id, "event too large for the other replicas");
                continue;
            }
            if current.len() + line.len() + 1 > leases::MAX_PAYLOAD {
                payloads.push(std::mem::replace(&mut current, header.clone()));
            }
            if current.len() > header.len() {
                current.push('\n');
            }
            current.push_str(&line);
        }
        if current.len() > header.len() {
            payloads.push(current);
        }
        let db = self.db.clone();
        async move {
            db.run(move |conn| Ok(leases::notify_all(conn, leases::EVENTS_CHANNEL, &payloads)?))
                .await
        }
        .into_actor(self)
        .map(|sent, act, ctx| {
            if let Err(e) = sent {
                tracing::warn!(error = %e.message, "events not sent to the other replicas");
            }
            act.flushing = false;
            act.flush(ctx);
        })
        .spawn(ctx);
    }

    /// Renews this replica's leases and writes any row that went missing (a lease that
    /// expired while this replica was too slow to renew it); the leader also expires the rows
    /// of dead replicas and tells dashboards that their devices went OFFLINE.
    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.beating {
            return;
        }
        self.beating = true;
        let (db, replica, lease, leader) = (
            self.db.clone(),
            self.replica.clone(),
            self.lease,
            self.leader,
        );
        let registry = self.peers.registry.clone();
        async move {
            let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
            let renewed = db
                .run(move |conn| Ok(presence::renew(conn, &replica, until)?))
                .await;
            let held = registry.send(ListConnected).await.unwrap_or_default();
            let missing = matches!(renewed, Ok(n) if n < held.len());
            let expired = if leader {
                db.run(|conn| Ok(presence::expire(conn, Utc::now())?))
                    .await
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            (missing, expired)
        }
        .into_actor(self)
        .map(|(missing, expired), act, _| {
            act.beating = false;
            if missing {
                tracing::warn!("leases of this replica went missing; writing them again");
                act.peers.registry.do_send(Reclaim);
            }
            act.went_offline(expired, "lease of a dead replica expired: OFFLINE");
        })
        .spawn(ctx);
    }

    /// Tells dashboards that `devices`, held by a dead replica, are OFFLINE.
    fn went_offline(&self, devices: Vec<String>, why: &str) {
        for device_id in devices {
            tracing::info!(device = %device_id, "{why}");
            if let Some(publish) = Publish::device_offline(&device_id) {
                self.peers.bus.do_send(publish);
            }
        }
    }

    /// The leader's look for dead replicas: one whose LISTEN connection PostgreSQL no longer
    /// lists at two looks in a row has its devices' leases ended at once (a killed process's
    /// connection goes with it, long before its leases pass).
    fn find_dead(&mut self, ctx: &mut Context<Self>) {
        if !self.leader {
            self.silent.clear();
            return;
        }
        if self.checking {
            return;
        }
        self.checking = true;
        let (db, me) = (self.db.clone(), self.replica.clone());
        async move {
            let silent: HashSet<String> = db
                .run(move |conn| Ok(presence::silent_holders(conn, &me)?))
                .await
                .unwrap_or_default()
                .into_iter()
                .collect();
            silent
        }
        .into_actor(self)
        .then(|silent, act, _| {
            let dead: Vec<String> = silent.intersection(&act.silent).cloned().collect();
            act.silent = silent;
            let db = act.db.clone();
            async move {
                if dead.is_empty() {
                    return (dead, Vec::new());
                }
                let d = dead.clone();
                let expired = db
                    .run(move |conn| Ok(presence::expire_replicas(conn, &d)?))
                    .await
                    .unwrap_or_default();
                (dead, expired)
            }
            .into_actor(act)
        })
        .map(|(dead, expired), act, _| {
            act.checking = false;
            if !dead.is_empty() {
                tracing::warn!(replicas = ?dead, devices = expired.len(), "replicas gone from the database: their devices OFFLINE");
            }
            act.went_offline(expired, "its replica is gone: OFFLINE");
        })
        .spawn(ctx);
    }
}

impl Cluster {
    /// Asks PostgreSQL whether another replica listens (`others`).
    fn look_for_others(&mut self, ctx: &mut Context<Self>) {
        if self.looking {
            return;
        }
        self.looking = true;
        let (db, me, began) = (self.db.clone(), self.replica.clone(), Instant::now());
        async move {
            db.run(move |conn| Ok(leases::others_listening(conn, &me)?))
                .await
        }
        .into_actor(self)
        .map(move |others, act, _| {
            act.looking = false;
            match others {
                Ok(true) => act.others = true,
                // A replica heard from since the look began is there, whatever it found.
                Ok(false) if act.heard < began => act.others = false,
                Ok(false) => {}
                // Unknown: keep relaying, as a replica that cannot tell must.
                Err(_) => act.others = true,
            }
        })
        .spawn(ctx);
    }
}

impl Handler<Relay> for Cluster {
    type Result = ();
    fn handle(&mut self, msg: Relay, ctx: &mut Context<Self>) {
        if !self.others {
            return;
        }
        if self.outgoing.len() >= MAX_OUTGOING {
            crate::metrics::dashboard_event_dropped();
            return;
        }
        self.outgoing.push(msg.0);
        self.flush(ctx);
    }
}
