//! The status reporter: a `status` frame right after each `hello` and then every status
//! period (read afresh each time, so a pushed `statusIntervalMs` applies at once).

use std::path::Path;

use actix::prelude::*;
use protocol::device::{DeviceEvent, StatusEvent};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::actors::queue::{GetLabelCount, GetProduction, GetQueueCounts, QueueActor};
use crate::config::Config;
use crate::identity::Identity;
use crate::messages::{ReportNow, SendEvent};

pub struct StatusReporter {
    queue: Addr<QueueActor>,
    events: Recipient<SendEvent>,
    identity: Identity,
    config: watch::Receiver<Config>,
}

impl StatusReporter {
    pub fn new(
        queue: Addr<QueueActor>,
        events: Recipient<SendEvent>,
        identity: Identity,
        config: watch::Receiver<Config>,
    ) -> Self {
        StatusReporter {
            queue,
            events,
            identity,
            config,
        }
    }

    fn report(&self, ctx: &mut Context<Self>) {
        let queue = self.queue.clone();
        let events = self.events.clone();
        let identity = self.identity.clone();
        let config = self.config.borrow().clone();
        ctx.spawn(
            async move {
                let counts = queue.send(GetQueueCounts).await.ok().and_then(Result::ok);
                let production = queue.send(GetProduction).await.ok().and_then(Result::ok);
                let enabled = production.as_ref().map(|p| p.enabled).unwrap_or(true);
                // Labels waiting for the printer: how an operator sees that it is off.
                let labels = match config.printer {
                    Some(_) => queue.send(GetLabelCount).await.ok().and_then(Result::ok),
                    None => None,
                };
                // statvfs is a file-system call, so it runs off the event loop.
                let dir = config.data_dir.clone();
                let free = tokio::task::spawn_blocking(move || disk_free(&dir))
                    .await
                    .ok()
                    .flatten();
                let queues = Depths {
                    records: counts.map(|c| c.pending),
                    labels,
                };
                let metrics = metrics(&identity, &config, queues, enabled, free);
                events.do_send(SendEvent(DeviceEvent::Status(StatusEvent {
                    status: if enabled { "ONLINE" } else { "DISABLED" }.into(),
                    version: Some(identity.version.clone()),
                    boot_id: identity.boot_id.clone(),
                    run_id: Some(identity.run_id.clone()),
                    metrics: Some(metrics),
                    ts: chrono::Utc::now(),
                })));
            }
            .into_actor(self),
        );
    }

    fn schedule(&self, ctx: &mut Context<Self>) {
        let period = self.config.borrow().status_interval;
        ctx.run_later(period, |act, ctx| {
            act.report(ctx);
            act.schedule(ctx);
        });
    }
}

/// Rows waiting in the agent's queues; `None` when unknown or (labels) without a printer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Depths {
    pub records: Option<u64>,
    pub labels: Option<u64>,
}

/// The `metrics` object of a status frame.
pub fn metrics(
    identity: &Identity,
    config: &Config,
    queues: Depths,
    production_enabled: bool,
    disk_free: Option<u64>,
) -> Value {
    json!({
        "queueDepth": queues.records,
        "labelQueueDepth": queues.labels,
        "uptimeSecs": identity.started.elapsed().as_secs(),
        "version": identity.version,
        "connectionMode": config.connection_mode.as_str(),
        "productionEnabled": production_enabled,
        "diskFreeBytes": disk_free,
        "shellTemplates": crate::shell::names(),
    })
}

/// Bytes available to the agent on the file system of `dir`.
pub fn disk_free(dir: &Path) -> Option<u64> {
    rustix::fs::statvfs(dir)
        .ok()
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
}

impl Actor for StatusReporter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.schedule(ctx);
    }
}

impl Handler<ReportNow> for StatusReporter {
    type Result = ();

    fn handle(&mut self, _: ReportNow, ctx: &mut Self::Context) {
        self.report(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_free_of_the_temp_dir_is_known() {
        assert!(disk_free(&std::env::temp_dir()).unwrap() > 0);
        assert_eq!(disk_free(Path::new("/nonexistent/dir")), None);
    }
}
