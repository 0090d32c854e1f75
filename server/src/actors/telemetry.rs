//! The telemetry actors: log lines, scan/print/alert events and metric samples from every
//! session, gathered into groups and written one group per transaction (the rows and queries
//! are `store::telemetry`).
//!
//! Sessions hand each frame's records to the `TelemetrySink` actor in one `Records` message.
//! The sink keeps one group in flight at the `TelemetryWriter`, a one-thread `SyncArbiter`
//! that writes a group in one transaction with multi-row inserts (COPY on PostgreSQL), and
//! gathers whatever arrives from any device meanwhile into the next group: the slower the
//! commit, the larger the group, so the write rate follows the load instead of a queue of
//! small commits forming behind the database (the command writer's group commit).
//!
//! What waits is bounded by `MAX_BUFFERED` records; past it new records are dropped and
//! counted (a warning, and `factory_telemetry_dropped_total`). Device events are not
//! acknowledged on the wire (docs/contract.md, "Device WebSocket": a device sends them and
//! expects nothing back), so no device was ever told a dropped record was stored; what a
//! device must not lose goes through `POST /api/v1/sync`, which answers only after its commit.
//! Telemetry must never take the server's memory.

use std::time::Duration;

use actix::prelude::*;

use crate::store::db::Db;

use crate::store::telemetry::*;

/// A record handed to the sink.
impl Message for Telemetry {
    type Result = ();
}

/// The records of one frame (a `batch` frame's events, in order), handed over in one message
/// rather than one message each.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Records(pub Vec<Telemetry>);

/// A group smaller than `FLUSH_AT` waits at most this long for more.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// A group is written as soon as this many records wait and no other group is in flight.
pub const FLUSH_AT: usize = 500;
/// Most records in one transaction, so that one commit stays short and its rows' memory
/// small; more waiting go in the next.
pub const MAX_GROUP: usize = 20_000;
/// Most records waiting for the writer (a second at the fleet's goal rate of 50,000 events/s,
/// about 15 MB of rows); more are dropped and counted.
pub const MAX_BUFFERED: usize = 50_000;

/// A group for the writer; answers how many records were stored.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct WriteBatch(pub Vec<Telemetry>);

pub struct TelemetryWriter {
    db: Db,
}

impl TelemetryWriter {
    pub fn new(db: Db) -> Self {
        TelemetryWriter { db }
    }
}

impl Actor for TelemetryWriter {
    type Context = SyncContext<Self>;
}

impl Handler<WriteBatch> for TelemetryWriter {
    type Result = usize;

    fn handle(&mut self, msg: WriteBatch, _: &mut SyncContext<Self>) -> usize {
        match self.db.run_blocking(|conn| Ok(write_batch(conn, &msg.0)?)) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, records = msg.0.len(), "telemetry batch lost");
                0
            }
        }
    }
}

/// What waits for the writer: at most `MAX_BUFFERED` records, handed out in groups of at
/// most `MAX_GROUP`, one group out at a time.
#[derive(Debug)]
pub struct Gather<T> {
    buffer: Vec<T>,
    in_flight: bool,
}

impl<T> Default for Gather<T> {
    fn default() -> Self {
        Gather {
            buffer: Vec::with_capacity(FLUSH_AT),
            in_flight: false,
        }
    }
}

impl<T> Gather<T> {
    /// Takes as many records as there is room for; answers how many were dropped.
    pub fn take(&mut self, mut records: Vec<T>) -> u64 {
        let room = MAX_BUFFERED.saturating_sub(self.buffer.len());
        let dropped = records.len().saturating_sub(room);
        records.truncate(room);
        self.buffer.append(&mut records);
        dropped as u64
    }

    /// The next group when none is out and at least `least` records (and at least one) wait.
    pub fn next_group(&mut self, least: usize) -> Option<Vec<T>> {
        if self.in_flight || self.buffer.is_empty() || self.buffer.len() < least {
            return None;
        }
        self.in_flight = true;
        Some(if self.buffer.len() <= MAX_GROUP {
            std::mem::replace(&mut self.buffer, Vec::with_capacity(FLUSH_AT))
        } else {
            self.buffer.drain(..MAX_GROUP).collect()
        })
    }

    /// The group out was written (or lost): the next may go.
    pub fn written(&mut self) {
        self.in_flight = false;
    }

    pub fn waiting(&self) -> usize {
        self.buffer.len()
    }
}

pub struct TelemetrySink {
    writer: Addr<TelemetryWriter>,
    gather: Gather<Telemetry>,
    /// Records dropped since the last warning.
    dropped: u64,
}

impl TelemetrySink {
    pub fn new(writer: Addr<TelemetryWriter>) -> Self {
        TelemetrySink {
            writer,
            gather: Gather::default(),
            dropped: 0,
        }
    }

    /// Takes a frame's records, and starts a group when enough wait.
    fn take(&mut self, records: Vec<Telemetry>, ctx: &mut Context<Self>) {
        let dropped = self.gather.take(records);
        if dropped > 0 {
            self.dropped += dropped;
            crate::metrics::telemetry_dropped(dropped);
        }
        self.flush(ctx, FLUSH_AT);
    }

    /// Hands the next group to the writer when none is there and at least `least` records
    /// wait; when the writer is done, the next group goes at once if it is large enough.
    fn flush(&mut self, ctx: &mut Context<Self>, least: usize) {
        let Some(group) = self.gather.next_group(least) else {
            return;
        };
        self.writer
            .send(WriteBatch(group))
            .into_actor(self)
            .map(|_, act, ctx| {
                act.gather.written();
                act.flush(ctx, FLUSH_AT);
            })
            .spawn(ctx);
    }
}

impl Actor for TelemetrySink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(FLUSH_INTERVAL, |act, ctx| {
            if act.dropped > 0 {
                tracing::warn!(
                    dropped = act.dropped,
                    "telemetry records dropped: the database is behind"
                );
                act.dropped = 0;
            }
            act.flush(ctx, 1);
        });
    }
}

impl Handler<Telemetry> for TelemetrySink {
    type Result = ();

    fn handle(&mut self, msg: Telemetry, ctx: &mut Context<Self>) {
        self.take(vec![msg], ctx);
    }
}

impl Handler<Records> for TelemetrySink {
    type Result = ();

    fn handle(&mut self, msg: Records, ctx: &mut Context<Self>) {
        self.take(msg.0, ctx);
    }
}

/// Writes what is buffered now, unless a group is at the writer (then within
/// `FLUSH_INTERVAL` after it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for TelemetrySink {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush(ctx, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_is_out_at_a_time_and_the_next_holds_all_that_came_meanwhile() {
        let mut gather = Gather::default();
        assert_eq!(gather.take(vec![1; 10]), 0);
        assert_eq!(gather.next_group(FLUSH_AT), None, "too few for a group");
        assert_eq!(gather.next_group(1).map(|g| g.len()), Some(10));
        // While that group is out, frames from any device gather into the next.
        for _ in 0..30 {
            assert_eq!(gather.take(vec![2; 50]), 0);
        }
        assert_eq!(gather.next_group(1), None, "a group is still out");
        gather.written();
        assert_eq!(gather.next_group(FLUSH_AT).map(|g| g.len()), Some(1_500));
        assert_eq!(gather.waiting(), 0);
    }

    #[test]
    fn a_group_is_at_most_max_group_and_the_rest_waits_in_order() {
        let mut gather = Gather::default();
        gather.take((0..MAX_GROUP + 7).collect());
        let first = gather.next_group(1).unwrap();
        assert_eq!(first.len(), MAX_GROUP);
        assert_eq!(first[0], 0);
        gather.written();
        assert_eq!(
            gather.next_group(1),
            Some((MAX_GROUP..MAX_GROUP + 7).collect())
        );
    }

    #[test]
    fn past_the_bound_records_are_dropped_and_counted_never_queued() {
        let mut gather = Gather::default();
        gather.take(vec![0u8; MAX_BUFFERED - 3]);
        // A frame that does not fit keeps what fits; the rest is counted.
        assert_eq!(gather.take(vec![1u8; 10]), 7);
        assert_eq!(gather.waiting(), MAX_BUFFERED);
        assert_eq!(gather.take(vec![2u8; 50]), 50);
        assert_eq!(gather.waiting(), MAX_BUFFERED);
        // The writer taking a group makes room again.
        let group = gather.next_group(1).unwrap();
        assert_eq!(group.len(), MAX_GROUP);
        assert_eq!(gather.take(vec![3u8; 5]), 0);
    }
}
