//! The telemetry actors: log lines and scan/print/alert events, buffered and written in
//! batches (the rows and queries are `store::telemetry`).
//!
//! Sessions hand records to the `TelemetrySink` actor, which buffers them and flushes a batch
//! every `FLUSH_INTERVAL` or at `FLUSH_AT` records to the `TelemetryWriter`, a one-thread
//! `SyncArbiter` that writes a whole batch in one transaction. While the writer is behind by
//! more than `MAX_BATCHES_IN_FLIGHT`, new records are dropped and counted rather than queued
//! without bound: telemetry must never take the server's memory.

use std::time::Duration;

use actix::prelude::*;

use crate::store::db::Db;

use crate::store::telemetry::*;

/// A record handed to the sink.
impl Message for Telemetry {
    type Result = ();
}

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);
pub const FLUSH_AT: usize = 500;
pub const MAX_BATCHES_IN_FLIGHT: usize = 8;

/// A batch for the writer.
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

pub struct TelemetrySink {
    writer: Addr<TelemetryWriter>,
    buffer: Vec<Telemetry>,
    in_flight: usize,
    dropped: u64,
}

impl TelemetrySink {
    pub fn new(writer: Addr<TelemetryWriter>) -> Self {
        TelemetrySink {
            writer,
            buffer: Vec::with_capacity(FLUSH_AT),
            in_flight: 0,
            dropped: 0,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.buffer.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.buffer, Vec::with_capacity(FLUSH_AT));
        self.in_flight += 1;
        self.writer
            .send(WriteBatch(batch))
            .into_actor(self)
            .map(|_, act, _| act.in_flight -= 1)
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
            act.flush(ctx);
        });
    }
}

impl Handler<Telemetry> for TelemetrySink {
    type Result = ();

    fn handle(&mut self, msg: Telemetry, ctx: &mut Context<Self>) {
        if self.in_flight >= MAX_BATCHES_IN_FLIGHT && self.buffer.len() >= FLUSH_AT {
            self.dropped += 1;
            return;
        }
        self.buffer.push(msg);
        if self.buffer.len() >= FLUSH_AT && self.in_flight < MAX_BATCHES_IN_FLIGHT {
            self.flush(ctx);
        }
    }
}

/// Writes what is buffered now; answers when the batch is handed to the writer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

impl Handler<Flush> for TelemetrySink {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}
