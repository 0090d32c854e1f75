//! The offline-queue actor: queues scanned records with the production state they change,
//! hands the drain its pending records and marks them sent or failed, hands the printer its
//! queued labels and removes the printed ones, and answers the queue and production
//! questions of the status reporter and the command handler.
//!
//! Every message is one blocking rusqlite call or transaction (`store/queue.rs`), so the actor
//! runs on a `SyncArbiter` thread, beside the store actor on the same connection.

use actix::{Actor, Handler, Message, SyncContext};
use chrono::{DateTime, Utc};
use protocol::sync::SyncRecord;

use crate::store::labels::QueuedLabel;
use crate::store::queue::{ProductionState, QueueCounts, Rules, ScanItem, ScanOutcome};
use crate::store::{Shared, StoreError};

/// The offline queue as an actor on its own thread.
pub struct QueueActor {
    store: Shared,
}

impl QueueActor {
    /// Hands the shared store to a `SyncArbiter` factory, which runs once per thread.
    pub fn factory(store: Shared) -> impl Fn() -> QueueActor + Send + Sync + 'static {
        move || QueueActor {
            store: store.clone(),
        }
    }
}

impl Actor for QueueActor {
    type Context = SyncContext<Self>;
}

/// Queues scanner lines (see `Store::enqueue`).
#[derive(Message)]
#[rtype(result = "Result<ScanOutcome, StoreError>")]
pub struct Enqueue {
    pub items: Vec<ScanItem>,
    pub rules: Rules,
}

#[derive(Message)]
#[rtype(result = "Result<Vec<SyncRecord>, StoreError>")]
pub struct Pending {
    pub limit: usize,
}

#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct MarkSent(pub Vec<String>);

#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct MarkFailed {
    pub ids: Vec<String>,
    pub error: String,
}

#[derive(Message)]
#[rtype(result = "Result<QueueCounts, StoreError>")]
pub struct GetQueueCounts;

#[derive(Message)]
#[rtype(result = "Result<QueueCounts, StoreError>")]
pub struct ClearQueue {
    pub include_completed: bool,
}

#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct PruneSent {
    pub before: DateTime<Utc>,
}

#[derive(Message)]
#[rtype(result = "Result<ProductionState, StoreError>")]
pub struct GetProduction;

/// The oldest queued labels, in print order.
#[derive(Message)]
#[rtype(result = "Result<Vec<QueuedLabel>, StoreError>")]
pub struct NextLabels {
    pub limit: usize,
}

/// Removes a label whose bytes the printer took.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct RemoveLabel(pub i64);

#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct GetLabelCount;

/// Answers the state before the change.
#[derive(Message)]
#[rtype(result = "Result<ProductionState, StoreError>")]
pub struct SetProduction {
    pub enabled: bool,
    pub reason: Option<String>,
}

impl Handler<Enqueue> for QueueActor {
    type Result = Result<ScanOutcome, StoreError>;
    fn handle(&mut self, msg: Enqueue, _: &mut Self::Context) -> Self::Result {
        self.store.lock().enqueue(&msg.items, &msg.rules)
    }
}

impl Handler<Pending> for QueueActor {
    type Result = Result<Vec<SyncRecord>, StoreError>;
    fn handle(&mut self, msg: Pending, _: &mut Self::Context) -> Self::Result {
        self.store.lock().pending(msg.limit)
    }
}

impl Handler<MarkSent> for QueueActor {
    type Result = Result<u64, StoreError>;
    fn handle(&mut self, msg: MarkSent, _: &mut Self::Context) -> Self::Result {
        self.store.lock().mark_sent(&msg.0)
    }
}

impl Handler<MarkFailed> for QueueActor {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: MarkFailed, _: &mut Self::Context) -> Self::Result {
        self.store.lock().mark_failed(&msg.ids, &msg.error)
    }
}

impl Handler<GetQueueCounts> for QueueActor {
    type Result = Result<QueueCounts, StoreError>;
    fn handle(&mut self, _: GetQueueCounts, _: &mut Self::Context) -> Self::Result {
        self.store.lock().queue_counts()
    }
}

impl Handler<ClearQueue> for QueueActor {
    type Result = Result<QueueCounts, StoreError>;
    fn handle(&mut self, msg: ClearQueue, _: &mut Self::Context) -> Self::Result {
        self.store.lock().clear_queue(msg.include_completed)
    }
}

impl Handler<PruneSent> for QueueActor {
    type Result = Result<u64, StoreError>;
    fn handle(&mut self, msg: PruneSent, _: &mut Self::Context) -> Self::Result {
        self.store.lock().prune_sent(msg.before)
    }
}

impl Handler<GetProduction> for QueueActor {
    type Result = Result<ProductionState, StoreError>;
    fn handle(&mut self, _: GetProduction, _: &mut Self::Context) -> Self::Result {
        self.store.lock().production()
    }
}

impl Handler<SetProduction> for QueueActor {
    type Result = Result<ProductionState, StoreError>;
    fn handle(&mut self, msg: SetProduction, _: &mut Self::Context) -> Self::Result {
        self.store.lock().set_production(msg.enabled, msg.reason)
    }
}

impl Handler<NextLabels> for QueueActor {
    type Result = Result<Vec<QueuedLabel>, StoreError>;
    fn handle(&mut self, msg: NextLabels, _: &mut Self::Context) -> Self::Result {
        self.store.lock().next_labels(msg.limit)
    }
}

impl Handler<RemoveLabel> for QueueActor {
    type Result = Result<bool, StoreError>;
    fn handle(&mut self, msg: RemoveLabel, _: &mut Self::Context) -> Self::Result {
        self.store.lock().remove_label(msg.0)
    }
}

impl Handler<GetLabelCount> for QueueActor {
    type Result = Result<u64, StoreError>;
    fn handle(&mut self, _: GetLabelCount, _: &mut Self::Context) -> Self::Result {
        self.store.lock().label_count()
    }
}
