//! The `EventBus` actor: fans device events out to dashboards.
//!
//! Each dashboard registers a bounded channel. The bus never waits on a dashboard: when a
//! channel is full the event is dropped for that dashboard alone and counted, and the
//! dashboard later reports the count in a `dropped` frame. So one slow browser can neither
//! slow a device nor grow the server's memory.
//!
//! With several replicas, every event published here is also handed to the relay
//! (`actors::cluster`), which sends it to the other replicas' buses; what they send arrives as
//! `PublishRemote`, which reaches this replica's dashboards alone, through the same filters and
//! bounded channels, and is never relayed again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use chrono::Utc;
use protocol::dashboard::DashboardEvent;
use protocol::device::{DeviceEvent, StatusEvent};
use protocol::rest::DeviceStatus;
use tokio::sync::mpsc;

/// Which events a dashboard wants; `None` means all.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub device_ids: Option<HashSet<String>>,
    pub event_types: Option<HashSet<String>>,
}

impl Filter {
    pub fn matches(&self, device_id: &str, event_type: &str) -> bool {
        self.device_ids
            .as_ref()
            .is_none_or(|ids| ids.contains(device_id))
            && self
                .event_types
                .as_ref()
                .is_none_or(|types| types.contains(event_type))
    }
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Arc<str>>,
    dropped: Arc<AtomicU64>,
    queued_bytes: Arc<AtomicUsize>,
}

/// Most bytes of events waiting for one dashboard; with the channel's event count this bounds
/// what a stalled browser can hold on the server whatever the events' size.
pub const MAX_QUEUED_BYTES: usize = 1024 * 1024;

#[derive(Default)]
pub struct EventBus {
    subscribers: HashMap<u64, Subscriber>,
    /// Where events published here go to reach other replicas' dashboards.
    relay: Option<Recipient<Relay>>,
}

/// An event published on this replica, for the other replicas.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Relay(pub Publish);

/// From now on, hand every event published here to `0` too.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetRelay(pub Recipient<Relay>);

/// An event another replica published: for this replica's dashboards only.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PublishRemote(pub Publish);

impl Handler<SetRelay> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: SetRelay, _: &mut Context<Self>) {
        self.relay = Some(msg.0);
    }
}

impl Handler<PublishRemote> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: PublishRemote, _: &mut Context<Self>) {
        self.fan_out(&msg.0);
    }
}

impl Actor for EventBus {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub id: u64,
    pub tx: mpsc::Sender<Arc<str>>,
    pub dropped: Arc<AtomicU64>,
    /// Bytes sent to `tx` and not yet taken; the dashboard subtracts what it takes.
    pub queued_bytes: Arc<AtomicUsize>,
    pub filter: Filter,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetFilter {
    pub id: u64,
    pub filter: Filter,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub id: u64,
}

/// An event already serialized once for every dashboard that wants it.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Publish {
    pub device_id: String,
    pub event_type: String,
    pub json: Arc<str>,
}

impl Publish {
    /// A device event as dashboards see it: the device's frame with `deviceId` added.
    pub fn device_event(device_id: &str, event: DeviceEvent) -> Option<Publish> {
        let event_type = event.event_type().to_owned();
        let frame = DashboardEvent {
            device_id: device_id.to_owned(),
            event,
        };
        let json = serde_json::to_string(&frame).ok()?;
        Some(Publish {
            device_id: device_id.to_owned(),
            event_type,
            json: json.into(),
        })
    }

    /// The `status: OFFLINE` event dashboards get when a device is gone: the server tells
    /// them, since a device that has left cannot.
    pub fn device_offline(device_id: &str) -> Option<Publish> {
        let offline = DeviceEvent::Status(StatusEvent {
            status: DeviceStatus::Offline.as_str().to_owned(),
            version: None,
            boot_id: None,
            run_id: None,
            metrics: None,
            ts: Utc::now(),
        });
        Publish::device_event(device_id, offline)
    }
}

impl Handler<Subscribe> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.subscribers.insert(
            msg.id,
            Subscriber {
                filter: msg.filter,
                tx: msg.tx,
                dropped: msg.dropped,
                queued_bytes: msg.queued_bytes,
            },
        );
    }
}

impl Handler<SetFilter> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: SetFilter, _: &mut Context<Self>) {
        if let Some(sub) = self.subscribers.get_mut(&msg.id) {
            sub.filter = msg.filter;
        }
    }
}

impl Handler<Unsubscribe> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.subscribers.remove(&msg.id);
    }
}

impl Handler<Publish> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        self.fan_out(&msg);
        if let Some(relay) = &self.relay {
            relay.do_send(Relay(msg));
        }
    }
}

/// The events of one device frame (a `batch`), in order: one message for all of them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PublishMany(pub Vec<Publish>);

impl Handler<PublishMany> for EventBus {
    type Result = ();
    fn handle(&mut self, msg: PublishMany, _: &mut Context<Self>) {
        for publish in msg.0 {
            self.fan_out(&publish);
            if let Some(relay) = &self.relay {
                relay.do_send(Relay(publish));
            }
        }
    }
}

impl EventBus {
    /// Hands `msg` to every local dashboard whose filter wants it, without waiting on any.
    fn fan_out(&mut self, msg: &Publish) {
        let mut closed = Vec::new();
        for (id, sub) in &self.subscribers {
            if !sub.filter.matches(&msg.device_id, &msg.event_type) {
                continue;
            }
            let len = msg.json.len();
            if sub.queued_bytes.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
                sub.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::dashboard_event_dropped();
                continue;
            }
            match sub.tx.try_send(msg.json.clone()) {
                Ok(()) => {
                    sub.queued_bytes.fetch_add(len, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.dropped.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::dashboard_event_dropped();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed.push(*id),
            }
        }
        for id in closed {
            self.subscribers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_devices_and_types() {
        let all = Filter::default();
        assert!(all.matches("a", "scan"));
        let some = Filter {
            device_ids: Some(["a".to_string()].into()),
            event_types: Some(["scan".to_string(), "status".to_string()].into()),
        };
        assert!(some.matches("a", "scan"));
        assert!(!some.matches("b", "scan"));
        assert!(!some.matches("a", "log_line"));
    }

    #[actix_rt::test]
    async fn a_full_dashboard_drops_and_counts_without_blocking_others() {
        let bus = EventBus::default().start();
        let (slow_tx, _slow_rx) = mpsc::channel(2);
        let (fast_tx, mut fast_rx) = mpsc::channel(100);
        let slow_dropped = Arc::new(AtomicU64::new(0));
        bus.send(Subscribe {
            id: 1,
            tx: slow_tx,
            dropped: slow_dropped.clone(),
            queued_bytes: Default::default(),
            filter: Filter::default(),
        })
        .await
        .unwrap();
        bus.send(Subscribe {
            id: 2,
            tx: fast_tx,
            dropped: Arc::new(AtomicU64::new(0)),
            queued_bytes: Default::default(),
            filter: Filter::default(),
        })
        .await
        .unwrap();
        for i in 0..10 {
            bus.send(Publish {
                device_id: "d".into(),
                event_type: "scan".into(),
                json: format!("{i}").into(),
            })
            .await
            .unwrap();
        }
        assert_eq!(slow_dropped.load(Ordering::Relaxed), 8);
        let mut got = 0;
        while fast_rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, 10);
    }

    #[actix_rt::test]
    async fn a_dashboard_holds_at_most_the_byte_limit() {
        let bus = EventBus::default().start();
        let (tx, _rx) = mpsc::channel(1000);
        let dropped = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        bus.send(Subscribe {
            id: 1,
            tx,
            dropped: dropped.clone(),
            queued_bytes: queued.clone(),
            filter: Filter::default(),
        })
        .await
        .unwrap();
        let big: Arc<str> = "x".repeat(100 * 1024).into();
        for _ in 0..20 {
            bus.send(Publish {
                device_id: "d".into(),
                event_type: "log_line".into(),
                json: big.clone(),
            })
            .await
            .unwrap();
        }
        assert!(queued.load(Ordering::Relaxed) <= MAX_QUEUED_BYTES);
        assert_eq!(queued.load(Ordering::Relaxed), 10 * 100 * 1024);
        assert_eq!(dropped.load(Ordering::Relaxed), 10);
    }
}
