//! The drain loop of the offline queue: sends pending records upstream in batches, marks
//! them sent only after a 2xx, and retries failures with the jittered backoff.
//!
//! One pass runs at a time. A pass starts when records were queued (`Kick`), on the idle poll,
//! when a backoff delay ends, or at once on `force_sync` (`DrainNow`, which also answers the
//! counts). A crash between the upstream's 2xx and `MarkSent` only means the batch is sent
//! again with the same record ids, which the server counts as duplicates.

use std::time::Duration;

use actix::prelude::*;
use protocol::sync::SyncRecord;
use tokio::sync::{oneshot, watch};

use crate::actors::queue::{GetQueueCounts, MarkFailed, MarkSent, Pending, PruneSent, QueueActor};
use crate::actors::store::{ClearToken, GetToken, StoreActor};
use crate::backoff::Backoff;
use crate::config::{Config, ConnectionMode};
use crate::messages::Reenroll;
use crate::upstream::{self, UpstreamError};

/// Records per upstream call; the server accepts up to `MAX_SYNC_BATCH_RECORDS`.
pub const SYNC_BATCH: usize = 500;
const _: () = assert!(SYNC_BATCH <= protocol::sync::MAX_SYNC_BATCH_RECORDS);
/// How often an idle drain looks for records it was not told about.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Sent rows are kept this long for `clear_queue includeCompleted` and diagnosis.
const SENT_RETENTION: chrono::Duration = chrono::Duration::days(7);
/// How often old sent rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub sent: u64,
    pub pending: u64,
    pub error: Option<String>,
}

/// Records were queued: drain soon, unless waiting out a backoff.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

/// Drain now, whatever the backoff, and answer when the pass is over.
#[derive(Message)]
#[rtype(result = "DrainReport")]
pub struct DrainNow;

pub struct Drain {
    store: Addr<StoreActor>,
    queue: Addr<QueueActor>,
    config: watch::Receiver<Config>,
    reenroll: Recipient<Reenroll>,
    backoff: Backoff,
    running: bool,
    retry: Option<SpawnHandle>,
    waiters: Vec<oneshot::Sender<DrainReport>>,
}

impl Drain {
    pub fn new(
        store: Addr<StoreActor>,
        queue: Addr<QueueActor>,
        config: watch::Receiver<Config>,
        reenroll: Recipient<Reenroll>,
    ) -> Self {
        Drain {
            store,
            queue,
            config,
            reenroll,
            backoff: Backoff::default(),
            running: false,
            retry: None,
            waiters: Vec::new(),
        }
    }

    fn start_pass(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        if let Some(retry) = self.retry.take() {
            ctx.cancel_future(retry);
        }
        self.running = true;
        let waiters = std::mem::take(&mut self.waiters);
        let config = self.config.borrow().clone();
        let pass = drain_all(self.store.clone(), self.queue.clone(), config);
        ctx.spawn(
            pass.into_actor(self)
                .map(move |(report, refused), act, ctx| {
                    act.running = false;
                    if refused {
                        act.reenroll.do_send(Reenroll);
                    }
                    match &report.error {
                        Some(error) => {
                            let delay = act.backoff.next_delay();
                            tracing::warn!(
                                sent = report.sent,
                                pending = report.pending,
                                "sync failed: {error}; retrying in {:.1} s",
                                delay.as_secs_f64()
                            );
                            act.retry = Some(ctx.run_later(delay, |act, ctx| {
                                act.retry = None;
                                act.start_pass(ctx);
                            }));
                        }
                        None => {
                            act.backoff.reset();
                            if report.sent > 0 {
                                tracing::info!(
                                    sent = report.sent,
                                    pending = report.pending,
                                    "queue drained"
                                );
                            }
                        }
                    }
                    for waiter in waiters {
                        let _ = waiter.send(report.clone());
                    }
                    // Someone asked while this pass ran; their pass starts now.
                    if !act.waiters.is_empty() {
                        act.start_pass(ctx);
                    }
                }),
        );
    }
}

/// Sends batches until the queue is empty or a call fails. The bool says the token was
/// refused.
async fn drain_all(
    store: Addr<StoreActor>,
    queue: Addr<QueueActor>,
    config: Config,
) -> (DrainReport, bool) {
    let mut report = DrainReport::default();
    let mut refused = false;
    let client = crate::http::client(Some(upstream::REQUEST_TIMEOUT));
    loop {
        let batch = match queue.send(Pending { limit: SYNC_BATCH }).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => {
                report.error = Some(format!("queue: {e}"));
                break;
            }
            Err(e) => {
                report.error = Some(format!("queue: {e}"));
                break;
            }
        };
        if batch.is_empty() {
            break;
        }
        let outcome = send_batch(&client, &store, &config, &batch).await;
        let (done, failure) = match outcome {
            Ok(()) => (batch.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), None),
            Err((done, e)) => (done, Some(e)),
        };
        if !done.is_empty() {
            match queue.send(MarkSent(done.clone())).await {
                Ok(Ok(n)) => report.sent += n,
                Ok(Err(e)) => report.error = Some(format!("queue: {e}")),
                Err(e) => report.error = Some(format!("queue: {e}")),
            }
        }
        if let Some(e) = failure {
            let failed: Vec<String> = batch
                .iter()
                .map(|r| r.id.clone())
                .filter(|id| !done.contains(id))
                .collect();
            let _ = queue
                .send(MarkFailed {
                    ids: failed,
                    error: e.to_string(),
                })
                .await;
            if matches!(e, UpstreamError::Unauthorized(_))
                && config.connection_mode == ConnectionMode::ViaLocalServer
            {
                refused = true;
                let _ = store.send(ClearToken).await;
            }
            report.error = Some(e.to_string());
            break;
        }
        if report.error.is_some() {
            break;
        }
    }
    if let Ok(Ok(counts)) = queue.send(GetQueueCounts).await {
        report.pending = counts.pending;
    }
    (report, refused)
}

/// Sends one batch. On failure, answers the ids that did reach their target (in
/// `DIRECT_CLOUD` mode a batch is several calls).
async fn send_batch(
    client: &awc::Client,
    store: &Addr<StoreActor>,
    config: &Config,
    batch: &[SyncRecord],
) -> Result<(), (Vec<String>, UpstreamError)> {
    match config.connection_mode {
        ConnectionMode::ViaLocalServer => {
            let token = match store.send(GetToken).await {
                Ok(Ok(Some(token))) => token,
                _ => {
                    return Err((
                        Vec::new(),
                        UpstreamError::Transport(
                            "no device token yet; waiting for enrollment".into(),
                        ),
                    ))
                }
            };
            upstream::post_sync(client, &config.server_url, &token, batch)
                .await
                .map(|answer| {
                    tracing::debug!(
                        accepted = answer.accepted,
                        duplicates = answer.duplicates,
                        "sync batch acknowledged"
                    );
                })
                .map_err(|e| (Vec::new(), e))
        }
        ConnectionMode::DirectCloud => {
            let (Some(url), Some(token)) = (&config.cloud_url, &config.cloud_token) else {
                return Err((
                    Vec::new(),
                    UpstreamError::Transport("cloud_url or cloud_token is not set".into()),
                ));
            };
            let mut done = Vec::new();
            // Consecutive records of one company and kind go in one call, in queue order.
            for group in batch.chunk_by(|a, b| a.company_id == b.company_id && a.kind == b.kind) {
                let first = &group[0];
                if let Err(e) = upstream::post_cloud(
                    client,
                    url,
                    token.expose(),
                    &first.company_id,
                    first.kind,
                    group,
                )
                .await
                {
                    return Err((done, e));
                }
                done.extend(group.iter().map(|r| r.id.clone()));
            }
            Ok(())
        }
    }
}

impl Actor for Drain {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_pass(ctx);
        ctx.run_interval(IDLE_POLL, |act, ctx| {
            if !act.running && act.retry.is_none() {
                act.start_pass(ctx);
            }
        });
        ctx.run_interval(PRUNE_EVERY, |act, _| {
            act.queue.do_send(PruneSent {
                before: chrono::Utc::now() - SENT_RETENTION,
            });
        });
    }
}

impl Handler<Kick> for Drain {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Self::Context) {
        if !self.running && self.retry.is_none() {
            self.start_pass(ctx);
        }
    }
}

impl Handler<DrainNow> for Drain {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, _: DrainNow, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        self.backoff.reset();
        self.start_pass(ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| DrainReport {
                error: Some("the drain stopped".into()),
                ..DrainReport::default()
            })
        })
    }
}
