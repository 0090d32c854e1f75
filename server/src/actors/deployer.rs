//! `FirmwareDeployer`: the actor that rolls firmware deployments out, wave by wave.
//!
//! It keeps no state the database does not have. A *pass* runs `rollout::advance` for
//! every unfinished deployment on the blocking pool, then carries out what the pass decided:
//! `update_firmware` commands through the `CommandDispatcher`, and `deployment` events to the
//! dashboards. Passes never overlap (so the download cap holds); a pass runs every
//! `TICK_INTERVAL`, and at once when something happened: a deployment was created or
//! controlled, a download ended, or a watched device sent a status frame or an alert.
//!
//! Every write the actor makes happens inside a pass: an ended download or an alert is kept
//! until the next pass stores it, before that pass advances the deployments. Two writes on
//! the blocking pool at once could finish in either order, and the dashboards would then
//! hear a device go ACTIVE before it went STAGED.

use std::collections::HashSet;
use std::time::Duration;

use actix::prelude::*;
use protocol::dashboard::DashboardNotice;
use protocol::firmware::DeploymentStatus;
use protocol::rest::CommandStatus;
use serde_json::Value;

use crate::actors::cluster::SetLeader;
use crate::actors::dispatcher::{CommandDispatcher, Dispatch};
use crate::actors::events::{EventBus, Publish};
use crate::store::db::Db;
use crate::store::deployments;
use crate::store::rollout::{self, Carried, Effect, Timeouts};

/// How often unfinished deployments are looked at without a reason: soaks end and
/// activation deadlines pass on the clock, not on an event.
const TICK_INTERVAL: Duration = Duration::from_secs(1);

pub struct FirmwareDeployer {
    db: Db,
    dispatcher: Addr<CommandDispatcher>,
    bus: Addr<EventBus>,
    timeouts: Timeouts,
    /// How long one device may take to download and stage a release.
    stage_timeout: Duration,
    /// The `update_firmware` commands under way.
    carried: Carried,
    /// Devices with an unsettled part in a deployment, as of the last pass.
    watched: HashSet<String>,
    /// Ended downloads and error alerts the next pass stores first.
    inbox: Inbox,
    running: bool,
    again: bool,
    /// Only the leader among replicas runs passes (`actors::cluster`).
    leader: bool,
}

impl FirmwareDeployer {
    pub fn new(
        db: Db,
        dispatcher: Addr<CommandDispatcher>,
        bus: Addr<EventBus>,
        stage_timeout: Duration,
        activate_timeout: Duration,
    ) -> Self {
        FirmwareDeployer {
            db,
            dispatcher,
            bus,
            timeouts: Timeouts {
                activate: activate_timeout,
                stage: stage_timeout,
            },
            stage_timeout,
            carried: Carried::default(),
            watched: HashSet::new(),
            inbox: Inbox::default(),
            running: false,
            again: false,
            leader: false,
        }
    }

    fn pass(&mut self, ctx: &mut Context<Self>) {
        if !self.leader {
            // The leader's passes reconcile with the stored rows; what came in here is not kept.
            self.inbox = Inbox::default();
            return;
        }
        if self.running {
            self.again = true;
            return;
        }
        self.running = true;
        self.again = false;
        let db = self.db.clone();
        let carried = self.carried.clone();
        let timeouts = self.timeouts;
        let inbox = std::mem::take(&mut self.inbox);
        let taken = inbox.clone();
        async move {
            db.run(move |conn| {
                let mut effects = inbox.store(conn);
                for id in deployments::unfinished(conn)? {
                    match rollout::advance(conn, &id, &carried, timeouts) {
                        Ok(more) => effects.extend(more),
                        // One deployment's trouble must not hold up the others.
                        Err(e) => tracing::warn!(deployment = %id, error = %e.message, "deployment pass failed"),
                    }
                }
                let watched = deployments::watched_devices(conn)?;
                Ok((effects, watched))
            })
            .await
        }
        .into_actor(self)
        .map(move |outcome, act, ctx| {
            act.running = false;
            match outcome {
                Ok((effects, watched)) => {
                    // Forgotten only once the row left IN_PROGRESS, so no pass in between
                    // takes the download for one a restart lost.
                    for done in &taken.downloads {
                        act.carried.awaited.remove(&done.command_id);
                    }
                    act.watched.clear();
                    let mut under_way = HashSet::new();
                    for (device, command) in watched {
                        act.watched.insert(device);
                        under_way.extend(command);
                    }
                    // A queued command whose row moved on needs no more remembering.
                    act.carried.queued.retain(|c| under_way.contains(c));
                    for effect in effects {
                        act.apply(effect, ctx);
                    }
                }
                Err(e) => {
                    // The database was out of reach: what the inbox held is tried again by
                    // the next pass, at the latest on the next tick (not at once, which would
                    // spin while the database is down).
                    tracing::warn!(error = %e.message, "deployment pass failed");
                    act.inbox.put_back(taken);
                }
            }
            if act.again {
                act.pass(ctx);
            }
        })
        .spawn(ctx);
    }

    fn apply(&mut self, effect: Effect, ctx: &mut Context<Self>) {
        match effect {
            Effect::Dispatch {
                deployment_id,
                device_id,
                command,
                issued_by,
            } => {
                let command_id = command.id.clone();
                self.carried.awaited.insert(command_id.clone());
                // An offline device gets the command queued: it downloads when it connects,
                // or the command expires and the device fails.
                let request = self.dispatcher.send(Dispatch {
                    device_id: device_id.clone(),
                    command,
                    timeout: self.stage_timeout,
                    issued_by,
                    queue_ttl: Some(self.stage_timeout),
                });
                async move {
                    match request.await {
                        Ok(Ok(response)) => match response.status {
                            CommandStatus::Success => Outcome::Staged(response.result.output),
                            CommandStatus::Queued => Outcome::Queued,
                            status if response.result.output.is_empty() => {
                                Outcome::Failed(format!("the command ended {}", status.as_str()))
                            }
                            _ => Outcome::Failed(response.result.output),
                        },
                        Ok(Err(e)) => Outcome::Failed(e.message),
                        Err(e) => Outcome::Failed(format!("dispatcher unavailable: {e}")),
                    }
                }
                .into_actor(self)
                .map(move |outcome, act, ctx| {
                    let outcome = match outcome {
                        Outcome::Queued => {
                            // Settled from the command's record once the device answers.
                            act.carried.queued.insert(command_id.clone());
                            act.carried.awaited.remove(&command_id);
                            return;
                        }
                        Outcome::Staged(output) => Ok(output),
                        Outcome::Failed(reason) => Err(reason),
                    };
                    act.inbox.downloads.push(DownloadFinished {
                        deployment_id,
                        device_id,
                        command_id,
                        outcome,
                    });
                    act.pass(ctx);
                })
                .spawn(ctx);
            }
            Effect::Device {
                deployment_id,
                device_id,
                status,
                detail,
            } => self.publish(&deployment_id, &device_id, status.as_str(), detail),
            Effect::Deployment {
                deployment_id,
                status,
                detail,
            } => self.announce(&deployment_id, status, detail),
        }
    }

    fn publish(&self, deployment_id: &str, device_id: &str, status: &str, detail: Option<Value>) {
        tracing::info!(deployment = %deployment_id, device = %device_id, status, "deployment step");
        let notice = DashboardNotice::Deployment {
            deployment_id: deployment_id.to_owned(),
            device_id: device_id.to_owned(),
            status: status.to_owned(),
            detail,
        };
        if let Ok(json) = serde_json::to_string(&notice) {
            self.bus.do_send(Publish {
                device_id: device_id.to_owned(),
                event_type: "deployment".into(),
                json: json.into(),
            });
        }
    }

    /// A deployment-wide change goes out with `deviceId: "*"`.
    fn announce(&self, deployment_id: &str, status: DeploymentStatus, detail: Value) {
        self.publish(deployment_id, "*", status.as_str(), Some(detail));
    }
}

impl Actor for FirmwareDeployer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The first pass also settles downloads a previous run left IN_PROGRESS.
        self.pass(ctx);
        ctx.run_interval(TICK_INTERVAL, |act, ctx| act.pass(ctx));
    }
}

impl Handler<SetLeader> for FirmwareDeployer {
    type Result = ();
    fn handle(&mut self, msg: SetLeader, ctx: &mut Context<Self>) {
        let became = msg.0 && !self.leader;
        self.leader = msg.0;
        if became {
            self.pass(ctx);
        }
    }
}

/// Something changed in a deployment: look at the unfinished ones now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Poke;

impl Handler<Poke> for FirmwareDeployer {
    type Result = ();
    fn handle(&mut self, _: Poke, ctx: &mut Context<Self>) {
        self.pass(ctx);
    }
}

/// An operator changed a deployment's state; dashboards hear it from here.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Announce {
    pub deployment_id: String,
    pub status: DeploymentStatus,
    pub detail: Value,
}

impl Handler<Announce> for FirmwareDeployer {
    type Result = ();
    fn handle(&mut self, msg: Announce, _: &mut Context<Self>) {
        self.announce(&msg.deployment_id, msg.status, msg.detail);
    }
}

/// A device sent a status frame (its version and run id are stored by then, or soon).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceReported {
    pub device_id: String,
}

impl Handler<DeviceReported> for FirmwareDeployer {
    type Result = ();
    fn handle(&mut self, msg: DeviceReported, ctx: &mut Context<Self>) {
        if self.watched.contains(&msg.device_id) {
            self.pass(ctx);
        }
    }
}

/// A device raised an alert.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct DeviceAlert {
    pub device_id: String,
    pub severity: String,
    pub message: String,
}

/// Severities that fail a device soaking on new firmware.
fn is_error_severity(severity: &str) -> bool {
    matches!(
        severity.to_ascii_lowercase().as_str(),
        "error" | "critical" | "fatal"
    )
}

impl Handler<DeviceAlert> for FirmwareDeployer {
    type Result = ();
    fn handle(&mut self, msg: DeviceAlert, ctx: &mut Context<Self>) {
        if !is_error_severity(&msg.severity) || !self.watched.contains(&msg.device_id) {
            return;
        }
        self.inbox.alerts.push(msg);
        self.pass(ctx);
    }
}

/// How a dispatch of `update_firmware` came back.
enum Outcome {
    Staged(String),
    Queued,
    Failed(String),
}

/// The `update_firmware` command of one device ended.
#[derive(Debug, Clone)]
struct DownloadFinished {
    deployment_id: String,
    device_id: String,
    command_id: String,
    outcome: Result<String, String>,
}

/// What happened since the last pass, for the next one to store.
#[derive(Debug, Clone, Default)]
struct Inbox {
    downloads: Vec<DownloadFinished>,
    alerts: Vec<DeviceAlert>,
}

impl Inbox {
    /// Stores each item on its own, so one that fails does not hold up the rest.
    fn store(self, conn: &mut crate::store::db::DbConnection) -> Vec<Effect> {
        let mut effects = Vec::new();
        for d in self.downloads {
            match rollout::download_finished(
                conn,
                &d.deployment_id,
                &d.device_id,
                &d.command_id,
                d.outcome,
            ) {
                Ok(effect) => effects.extend(effect),
                Err(e) => tracing::warn!(error = %e.message, "download outcome not stored"),
            }
        }
        for a in self.alerts {
            match rollout::alert_received(conn, &a.device_id, &a.message) {
                Ok(more) => effects.extend(more),
                Err(e) => tracing::warn!(error = %e.message, "alert not applied to a deployment"),
            }
        }
        effects
    }

    /// Puts back what a failed pass took, ahead of anything that came in meanwhile.
    fn put_back(&mut self, mut taken: Inbox) {
        taken.downloads.append(&mut self.downloads);
        taken.alerts.append(&mut self.alerts);
        *self = taken;
    }
}

#[cfg(test)]
mod tests {
    use protocol::firmware::DeviceDeploymentStatus;

    use super::*;

    #[test]
    fn only_error_alerts_fail_a_soak() {
        assert!(is_error_severity("error"));
        assert!(is_error_severity("CRITICAL"));
        assert!(!is_error_severity("warning"));
        assert!(!is_error_severity("info"));
    }

    #[test]
    fn device_statuses_read_back() {
        for s in DeviceDeploymentStatus::ALL {
            assert_eq!(s.as_str().parse::<DeviceDeploymentStatus>().unwrap(), s);
        }
    }
}
