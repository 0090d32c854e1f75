//! The offline queue's tables: the records (table `queue`) and the production state (open batch and pallet, enabled
//! flag) that is written in the same transaction as the records it produces.
//!
//! A record is committed here (WAL, `synchronous=FULL`) before anything acknowledges its scan,
//! and it stays `PENDING` until a sync target answered 2xx for it; the drain loop reads it in
//! `seq` order. The record id is chosen once, at insert, so every resend carries the same id
//! and the server's duplicate check makes delivery exactly-once.

use chrono::{DateTime, Utc};
use protocol::sync::{RecordKind, SyncRecord};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::gs1::Gs1Code;
use crate::store::labels::{self, LabelJob, LabelKind};
use crate::store::{Store, StoreError};

pub const PENDING: &str = "PENDING";
pub const SENT: &str = "SENT";
/// The `kv` key of the production state.
const PRODUCTION_KEY: &str = "production_state";

/// An open batch: bottles are counted into it until it closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenBatch {
    pub id: String,
    pub opened_at: DateTime<Utc>,
    pub bottles: u64,
}

/// An open pallet: closed batches are collected on it until it closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenPallet {
    pub id: String,
    pub opened_at: DateTime<Utc>,
    pub batches: Vec<String>,
}

/// What production looks like now; persisted, so a restart neither re-enables a disabled
/// device nor forgets half a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductionState {
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub batch: Option<OpenBatch>,
    pub pallet: Option<OpenPallet>,
}

impl Default for ProductionState {
    fn default() -> Self {
        ProductionState {
            enabled: true,
            disabled_reason: None,
            batch: None,
            pallet: None,
        }
    }
}

/// One line from the scanner, already classified.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanItem {
    Code(Gs1Code),
    /// A `CLOSE_BATCH` control line: the open batch closes now.
    CloseBatch,
    /// A `CLOSE_PALLET` control line: the open batch, then the open pallet, close now.
    ClosePallet,
}

/// The configured rules the queue applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub company_id: String,
    /// Bottles per batch; 0: only `CLOSE_BATCH` closes one.
    pub batch_size: u32,
    /// Batches per pallet; 0: only `CLOSE_PALLET` closes one.
    pub pallet_size: u32,
    /// Queue a label for every batch and pallet that closes (a printer is configured).
    pub print_labels: bool,
}

/// What one `enqueue` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOutcome {
    /// Bottle records queued, in scan order of the accepted codes.
    pub bottles: u64,
    /// Codes refused because production is disabled.
    pub refused: u64,
    pub disabled_reason: Option<String>,
    /// All records queued (bottles, batches, fixations, pallets).
    pub records: u64,
    /// Labels queued for the printer.
    pub labels: u64,
    /// Labels not queued because the label queue was full.
    pub labels_refused: u64,
}

/// Queue sizes by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    pub pending: u64,
    pub sent: u64,
}

/// The offline queue as `Store::queue_stats` reads it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    pub pending: u64,
    pub sent: u64,
    /// Pending records that failed at least one attempt.
    pub failing: u64,
    pub oldest_pending_age_secs: Option<i64>,
    pub sent_last_minute: u64,
    pub sent_last_hour: u64,
    /// The latest pending record's last failure.
    pub last_error: Option<String>,
}

fn kind_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Bottle => "bottle",
        RecordKind::Batch => "batch",
        RecordKind::Pallet => "pallet",
        RecordKind::BatchFixate => "batch_fixate",
    }
}

fn parse_kind(name: &str) -> Option<RecordKind> {
    serde_json::from_value(Value::String(name.to_owned())).ok()
}

fn bad_state(what: &'static str, reason: impl ToString) -> StoreError {
    StoreError::BadState {
        what,
        reason: reason.to_string(),
    }
}

/// Collects the records of one transaction.
struct Batch<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    company_id: &'a str,
    now: DateTime<Utc>,
    written: u64,
    print_labels: bool,
    labels: u64,
    labels_refused: u64,
}

impl Batch<'_> {
    fn push(&mut self, kind: RecordKind, payload: Value) -> Result<(), StoreError> {
        let mut insert = self.tx.prepare_cached(
            "INSERT INTO queue (id, kind, company_id, payload, created_at, state)
             VALUES (?1, ?2, ?3, ?4, ?5, 'PENDING')",
        )?;
        insert.execute(params![
            uuid::Uuid::new_v4().to_string(),
            kind_name(kind),
            self.company_id,
            payload.to_string(),
            self.now.to_rfc3339(),
        ])?;
        self.written += 1;
        Ok(())
    }

    /// Queues the label of a batch or pallet that closed, in the transaction of its record.
    fn label(&mut self, job: LabelJob) -> Result<(), StoreError> {
        if !self.print_labels {
            return Ok(());
        }
        if labels::insert_in(self.tx, &job)? {
            self.labels += 1;
        } else {
            self.labels_refused += 1;
        }
        Ok(())
    }
}

impl ProductionState {
    fn close_batch(&mut self, out: &mut Batch<'_>, rules: &Rules) -> Result<(), StoreError> {
        let Some(batch) = self.batch.take() else {
            return Ok(());
        };
        let now = out.now;
        let pallet = self.pallet.get_or_insert_with(|| OpenPallet {
            id: uuid::Uuid::new_v4().to_string(),
            opened_at: now,
            batches: Vec::new(),
        });
        pallet.batches.push(batch.id.clone());
        let pallet_id = pallet.id.clone();
        out.push(
            RecordKind::Batch,
            json!({"batchId": batch.id, "palletId": pallet_id, "bottleCount": batch.bottles,
                   "openedAt": batch.opened_at, "closedAt": now}),
        )?;
        out.push(
            RecordKind::BatchFixate,
            json!({"batchId": batch.id, "bottleCount": batch.bottles, "fixedAt": now}),
        )?;
        out.label(LabelJob {
            kind: LabelKind::Batch,
            code: batch.id,
            count: batch.bottles,
            opened_at: batch.opened_at,
            closed_at: now,
            pallet_id: Some(pallet_id),
        })?;
        let full = rules.pallet_size > 0
            && self
                .pallet
                .as_ref()
                .is_some_and(|p| p.batches.len() as u64 >= u64::from(rules.pallet_size));
        if full {
            self.close_pallet(out)?;
        }
        Ok(())
    }

    fn close_pallet(&mut self, out: &mut Batch<'_>) -> Result<(), StoreError> {
        let Some(pallet) = self.pallet.take() else {
            return Ok(());
        };
        out.push(
            RecordKind::Pallet,
            json!({"palletId": pallet.id, "batchCount": pallet.batches.len(),
                   "batchIds": pallet.batches, "openedAt": pallet.opened_at,
                   "closedAt": out.now}),
        )?;
        out.label(LabelJob {
            kind: LabelKind::Pallet,
            code: pallet.id,
            count: pallet.batches.len() as u64,
            opened_at: pallet.opened_at,
            closed_at: out.now,
            pallet_id: None,
        })
    }

    fn add_bottle(
        &mut self,
        code: &Gs1Code,
        out: &mut Batch<'_>,
        rules: &Rules,
    ) -> Result<(), StoreError> {
        let now = out.now;
        let batch = self.batch.get_or_insert_with(|| OpenBatch {
            id: uuid::Uuid::new_v4().to_string(),
            opened_at: now,
            bottles: 0,
        });
        batch.bottles += 1;
        let batch_id = batch.id.clone();
        let full = rules.batch_size > 0 && batch.bottles >= u64::from(rules.batch_size);
        out.push(
            RecordKind::Bottle,
            json!({"code": code.code, "gtin": code.gtin, "serial": code.serial,
                   "batchId": batch_id}),
        )?;
        if full {
            self.close_batch(out, rules)?;
        }
        Ok(())
    }
}

impl Store {
    fn production_in(conn: &rusqlite::Connection) -> Result<ProductionState, StoreError> {
        use rusqlite::OptionalExtension;
        let text: Option<String> = conn
            .query_row(
                "SELECT value FROM kv WHERE key = ?1",
                params![PRODUCTION_KEY],
                |row| row.get(0),
            )
            .optional()?;
        match text {
            None => Ok(ProductionState::default()),
            Some(t) => serde_json::from_str(&t).map_err(|e| bad_state("production state", e)),
        }
    }

    fn save_production_in(
        conn: &rusqlite::Connection,
        state: &ProductionState,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(state).map_err(|e| bad_state("production state", e))?;
        conn.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![PRODUCTION_KEY, text],
        )?;
        Ok(())
    }

    pub fn production(&self) -> Result<ProductionState, StoreError> {
        Store::production_in(&self.conn)
    }

    /// Enables or disables production; answers the state before the change.
    pub fn set_production(
        &mut self,
        enabled: bool,
        reason: Option<String>,
    ) -> Result<ProductionState, StoreError> {
        let tx = self.conn.transaction()?;
        let before = Store::production_in(&tx)?;
        let mut after = before.clone();
        after.enabled = enabled;
        after.disabled_reason = if enabled { None } else { reason };
        Store::save_production_in(&tx, &after)?;
        tx.commit()?;
        Ok(before)
    }

    /// Queues the records of a run of scanner lines in one transaction, applying the batch
    /// and pallet rules. While production is disabled, codes are refused and nothing changes.
    pub fn enqueue(
        &mut self,
        items: &[ScanItem],
        rules: &Rules,
    ) -> Result<ScanOutcome, StoreError> {
        let tx = self.conn.transaction()?;
        let mut state = Store::production_in(&tx)?;
        let mut outcome = ScanOutcome::default();
        if !state.enabled {
            outcome.refused = items
                .iter()
                .filter(|i| matches!(i, ScanItem::Code(_)))
                .count() as u64;
            outcome.disabled_reason = state.disabled_reason.clone();
            return Ok(outcome);
        }
        let mut out = Batch {
            tx: &tx,
            company_id: &rules.company_id,
            now: Utc::now(),
            written: 0,
            print_labels: rules.print_labels,
            labels: 0,
            labels_refused: 0,
        };
        for item in items {
            match item {
                ScanItem::Code(code) => {
                    state.add_bottle(code, &mut out, rules)?;
                    outcome.bottles += 1;
                }
                ScanItem::CloseBatch => state.close_batch(&mut out, rules)?,
                ScanItem::ClosePallet => {
                    state.close_batch(&mut out, rules)?;
                    state.close_pallet(&mut out)?;
                }
            }
        }
        outcome.records = out.written;
        outcome.labels = out.labels;
        outcome.labels_refused = out.labels_refused;
        Store::save_production_in(&tx, &state)?;
        tx.commit()?;
        Ok(outcome)
    }

    /// The oldest pending records, at most `limit`.
    pub fn pending(&self, limit: usize) -> Result<Vec<SyncRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, kind, company_id, payload, created_at FROM queue
             WHERE state = 'PENDING' ORDER BY seq LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
            ))
        })?;
        let mut records = Vec::new();
        for row in rows {
            let (id, kind, company_id, payload, created_at) = row?;
            records.push(SyncRecord {
                kind: parse_kind(&kind).ok_or_else(|| bad_state("record kind", &kind))?,
                payload: serde_json::from_str(&payload).map_err(|e| bad_state("payload", e))?,
                created_at: DateTime::parse_from_rfc3339(&created_at)
                    .map_err(|e| bad_state("created_at", e))?
                    .with_timezone(&Utc),
                id,
                company_id,
            });
        }
        Ok(records)
    }

    /// Marks records sent; only a 2xx answer for them may lead here.
    pub fn mark_sent(&mut self, ids: &[String]) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE queue SET state = 'SENT', sent_at = ?2, attempts = attempts + 1
                 WHERE id = ?1 AND state = 'PENDING'",
            )?;
            let now = Utc::now().to_rfc3339();
            for id in ids {
                n += stmt.execute(params![id, now])? as u64;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Counts a failed attempt on records that stay pending.
    pub fn mark_failed(&mut self, ids: &[String], error: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE queue SET attempts = attempts + 1, last_error = ?2
                 WHERE id = ?1 AND state = 'PENDING'",
            )?;
            for id in ids {
                stmt.execute(params![id, error])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn queue_counts(&self) -> Result<QueueCounts, StoreError> {
        let mut counts = QueueCounts::default();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM queue GROUP BY state")?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (state, n) = row?;
            match state.as_str() {
                PENDING => counts.pending = n as u64,
                SENT => counts.sent = n as u64,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// The queue as a supervisor reads it (`edge-agent status`, `queue stats`): its depth,
    /// how old its oldest record is, how many records failed an attempt, and how many were
    /// sent in the last minute and hour (the drain rate; sent rows are kept for a while).
    pub fn queue_stats(&self, now: DateTime<Utc>) -> Result<QueueStats, StoreError> {
        let counts = self.queue_counts()?;
        let since = |secs: i64| (now - chrono::Duration::seconds(secs)).to_rfc3339();
        let sent_since = |from: String| -> Result<u64, StoreError> {
            let n: i64 = self.conn.query_row(
                "SELECT COUNT(*) FROM queue WHERE state = 'SENT' AND sent_at >= ?1",
                params![from],
                |row| row.get(0),
            )?;
            Ok(n as u64)
        };
        let (failing, oldest): (i64, Option<String>) = self.conn.query_row(
            "SELECT COUNT(CASE WHEN attempts > 0 THEN 1 END), MIN(created_at)
             FROM queue WHERE state = 'PENDING'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let last_error: Option<String> = self
            .conn
            .query_row(
                "SELECT last_error FROM queue WHERE state = 'PENDING' AND last_error IS NOT NULL
                 ORDER BY seq DESC LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let oldest_pending_age_secs = oldest
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| (now - t.with_timezone(&Utc)).num_seconds().max(0));
        Ok(QueueStats {
            pending: counts.pending,
            sent: counts.sent,
            failing: failing as u64,
            oldest_pending_age_secs,
            sent_last_minute: sent_since(since(60))?,
            sent_last_hour: sent_since(since(3600))?,
            last_error,
        })
    }

    /// Deletes pending rows, and sent ones too when asked; answers how many of each.
    pub fn clear_queue(&mut self, include_completed: bool) -> Result<QueueCounts, StoreError> {
        let tx = self.conn.transaction()?;
        let pending = tx.execute("DELETE FROM queue WHERE state = 'PENDING'", [])? as u64;
        let sent = if include_completed {
            tx.execute("DELETE FROM queue WHERE state = 'SENT'", [])? as u64
        } else {
            0
        };
        tx.commit()?;
        Ok(QueueCounts { pending, sent })
    }

    /// Deletes sent rows older than `before`, so a queue that runs for years stays small.
    pub fn prune_sent(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM queue WHERE state = 'SENT' AND sent_at < ?1",
            params![before.to_rfc3339()],
        )? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;

    fn code(serial: u32) -> ScanItem {
        ScanItem::Code(crate::gs1::parse(&format!("010400638133393121S{serial}")).unwrap())
    }

    fn rules(batch_size: u32, pallet_size: u32) -> Rules {
        Rules {
            company_id: "acme".into(),
            batch_size,
            pallet_size,
            print_labels: false,
        }
    }

    fn kinds(store: &Store) -> Vec<RecordKind> {
        store
            .pending(1000)
            .unwrap()
            .iter()
            .map(|r| r.kind)
            .collect()
    }

    #[test]
    fn records_survive_reopen_and_stay_pending_until_marked_sent() {
        let dir = temp_dir();
        let mut store = Store::open(&dir).unwrap();
        let outcome = store
            .enqueue(&[code(1), code(2), code(3)], &rules(0, 0))
            .unwrap();
        assert_eq!((outcome.bottles, outcome.records), (3, 3));
        drop(store);

        let mut store = Store::open(&dir).unwrap();
        let pending = store.pending(2).unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].payload["serial"], "S1");
        assert_eq!(pending[0].company_id, "acme");
        assert_eq!(pending[0].kind, RecordKind::Bottle);
        let ids: Vec<String> = pending.iter().map(|r| r.id.clone()).collect();
        store.mark_failed(&ids, "server down").unwrap();
        assert_eq!(
            store.pending(10).unwrap()[0].id,
            ids[0],
            "same id on resend"
        );
        assert_eq!(store.mark_sent(&ids).unwrap(), 2);
        assert_eq!(store.mark_sent(&ids).unwrap(), 0);
        let rest = store.pending(10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].payload["serial"], "S3");
        assert_eq!(
            store.queue_counts().unwrap(),
            QueueCounts {
                pending: 1,
                sent: 2
            }
        );
        assert_eq!(
            store
                .prune_sent(Utc::now() - chrono::Duration::hours(1))
                .unwrap(),
            0
        );
        assert_eq!(
            store.clear_queue(false).unwrap(),
            QueueCounts {
                pending: 1,
                sent: 0
            }
        );
        assert_eq!(
            store.clear_queue(true).unwrap(),
            QueueCounts {
                pending: 0,
                sent: 2
            }
        );
    }

    #[test]
    fn batches_and_pallets_close_by_size_and_by_control_lines() {
        let mut store = Store::open(&temp_dir()).unwrap();
        // Two bottles per batch, two batches per pallet: five bottles close two batches and
        // one pallet and leave one bottle in an open batch.
        let items: Vec<ScanItem> = (0..5).map(code).collect();
        store.enqueue(&items, &rules(2, 2)).unwrap();
        use RecordKind::*;
        assert_eq!(
            kinds(&store),
            [
                Bottle,
                Bottle,
                Batch,
                BatchFixate,
                Bottle,
                Bottle,
                Batch,
                BatchFixate,
                Pallet,
                Bottle
            ]
        );
        let records = store.pending(100).unwrap();
        let pallet = &records[8].payload;
        assert_eq!(pallet["batchCount"], 2);
        assert_eq!(pallet["batchIds"][0], records[2].payload["batchId"]);
        assert_eq!(records[0].payload["batchId"], records[2].payload["batchId"]);
        assert_eq!(records[2].payload["bottleCount"], 2);

        // CLOSE_PALLET closes the open batch, then the pallet.
        store.clear_queue(false).unwrap();
        store
            .enqueue(&[ScanItem::ClosePallet], &rules(2, 2))
            .unwrap();
        assert_eq!(kinds(&store), [Batch, BatchFixate, Pallet]);
        // Nothing open: the control lines do nothing.
        store.clear_queue(false).unwrap();
        store
            .enqueue(&[ScanItem::CloseBatch, ScanItem::ClosePallet], &rules(2, 2))
            .unwrap();
        assert!(kinds(&store).is_empty());
    }

    #[test]
    fn a_disabled_device_refuses_codes_and_the_flag_persists() {
        let dir = temp_dir();
        let mut store = Store::open(&dir).unwrap();
        let before = store
            .set_production(false, Some("maintenance".into()))
            .unwrap();
        assert!(before.enabled);
        drop(store);
        let mut store = Store::open(&dir).unwrap();
        let outcome = store.enqueue(&[code(1), code(2)], &rules(0, 0)).unwrap();
        assert_eq!(outcome.refused, 2);
        assert_eq!(outcome.disabled_reason.as_deref(), Some("maintenance"));
        assert!(kinds(&store).is_empty());
        store.set_production(true, None).unwrap();
        assert_eq!(store.enqueue(&[code(1)], &rules(0, 0)).unwrap().bottles, 1);
        assert_eq!(store.production().unwrap().disabled_reason, None);
    }

    #[test]
    fn closed_batches_and_pallets_queue_labels_only_with_a_printer() {
        let mut store = Store::open(&temp_dir()).unwrap();
        let items: Vec<ScanItem> = (0..5).map(code).collect();
        let outcome = store.enqueue(&items, &rules(2, 2)).unwrap();
        assert_eq!((outcome.labels, outcome.labels_refused), (0, 0));
        assert_eq!(store.label_count().unwrap(), 0);

        let printing = Rules {
            print_labels: true,
            ..rules(2, 2)
        };
        let items: Vec<ScanItem> = (5..9).map(code).chain([ScanItem::ClosePallet]).collect();
        let outcome = store.enqueue(&items, &printing).unwrap();
        // The open batch (1 bottle) fills up and closes the pallet; 2 more bottles and the
        // control line close a second batch and pallet.
        assert_eq!(outcome.labels, 5);
        let labels = store.next_labels(10).unwrap();
        let seen: Vec<(&str, u64)> = labels
            .iter()
            .map(|l| (l.job.kind.as_str(), l.job.count))
            .collect();
        assert_eq!(
            seen,
            [
                ("batch", 2),
                ("batch", 2),
                ("pallet", 2),
                ("batch", 1),
                ("pallet", 1)
            ]
        );
        let records = store.pending(100).unwrap();
        let batches: Vec<&Value> = records
            .iter()
            .filter(|r| r.kind == RecordKind::Batch)
            .map(|r| &r.payload["batchId"])
            .collect();
        // Two batches closed before printing was on; the third is the first label's.
        assert_eq!(batches[2], &json!(labels[0].job.code));
        assert_eq!(
            labels[0].job.pallet_id.as_deref(),
            Some(labels[2].job.code.as_str())
        );
    }
}
