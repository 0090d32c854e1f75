//! The printer's label queue (table `labels`): one row per closed batch or pallet, written in
//! the same transaction as the batch or pallet record, and deleted only after its bytes were
//! written to the printer.
//!
//! Rows hold the label's values, not its rendered bytes; the printer renders them with the
//! template it runs with. The queue is bounded (`MAX_QUEUED_LABELS`): when it is full a new
//! label is refused (and reported by the caller as an alert) rather than an old one dropped,
//! so the labels that do print keep their order and the waiting ones are never lost silently.

use chrono::{DateTime, Utc};
use rusqlite::params;

use crate::store::{Store, StoreError};

/// Labels kept for a printer that does not answer; beyond this a new label is refused.
pub const MAX_QUEUED_LABELS: u64 = 10_000;

/// What a label is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    Batch,
    Pallet,
}

impl LabelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelKind::Batch => "batch",
            LabelKind::Pallet => "pallet",
        }
    }

    fn parse(text: &str) -> Option<LabelKind> {
        match text {
            "batch" => Some(LabelKind::Batch),
            "pallet" => Some(LabelKind::Pallet),
            _ => None,
        }
    }
}

/// A label's values as the batch or pallet had them when it closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelJob {
    pub kind: LabelKind,
    /// The batch or pallet id.
    pub code: String,
    /// Bottles in the batch, or batches on the pallet.
    pub count: u64,
    pub opened_at: DateTime<Utc>,
    pub closed_at: DateTime<Utc>,
    /// The pallet a batch went onto.
    pub pallet_id: Option<String>,
}

/// A label waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedLabel {
    /// Position in the queue; labels print in this order.
    pub seq: i64,
    pub job: LabelJob,
}

fn bad_label(reason: impl ToString) -> StoreError {
    StoreError::BadState {
        what: "label",
        reason: reason.to_string(),
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(bad_label)
}

/// Queues a label on `conn` (the caller's open transaction); `false` when the queue is full
/// and the label was not queued.
pub(crate) fn insert_in(conn: &rusqlite::Connection, job: &LabelJob) -> Result<bool, StoreError> {
    let queued: i64 = conn.query_row("SELECT COUNT(*) FROM labels", [], |row| row.get(0))?;
    if queued as u64 >= MAX_QUEUED_LABELS {
        return Ok(false);
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO labels (kind, code, count, opened_at, closed_at, pallet_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    insert.execute(params![
        job.kind.as_str(),
        job.code,
        job.count as i64,
        job.opened_at.to_rfc3339(),
        job.closed_at.to_rfc3339(),
        job.pallet_id,
    ])?;
    Ok(true)
}

impl Store {
    /// The oldest queued labels, at most `limit`, in queue order.
    pub fn next_labels(&self, limit: usize) -> Result<Vec<QueuedLabel>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, kind, code, count, opened_at, closed_at, pallet_id FROM labels
             ORDER BY seq LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, Option<String>>(6)?,
            ))
        })?;
        let mut labels = Vec::new();
        for row in rows {
            let (seq, kind, code, count, opened_at, closed_at, pallet_id) = row?;
            labels.push(QueuedLabel {
                seq,
                job: LabelJob {
                    kind: LabelKind::parse(&kind)
                        .ok_or_else(|| bad_label(format!("kind `{kind}`")))?,
                    code,
                    count: u64::try_from(count).map_err(bad_label)?,
                    opened_at: parse_time(&opened_at)?,
                    closed_at: parse_time(&closed_at)?,
                    pallet_id,
                },
            });
        }
        Ok(labels)
    }

    /// Removes a printed label; only a completed write to the printer may lead here.
    pub fn remove_label(&self, seq: i64) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM labels WHERE seq = ?1", params![seq])?
            > 0)
    }

    pub fn label_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM labels", [], |row| row.get(0))?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;

    fn job(code: &str) -> LabelJob {
        let closed_at = DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        LabelJob {
            kind: LabelKind::Batch,
            code: code.into(),
            count: 3,
            opened_at: closed_at - chrono::Duration::minutes(5),
            closed_at,
            pallet_id: Some("P1".into()),
        }
    }

    #[test]
    fn labels_survive_reopen_in_order_until_removed() {
        let dir = temp_dir();
        let store = Store::open(&dir).unwrap();
        for code in ["a", "b", "c"] {
            assert!(insert_in(&store.conn, &job(code)).unwrap());
        }
        drop(store);
        let store = Store::open(&dir).unwrap();
        let labels = store.next_labels(10).unwrap();
        let codes: Vec<&str> = labels.iter().map(|l| l.job.code.as_str()).collect();
        assert_eq!(codes, ["a", "b", "c"]);
        // Times go through RFC 3339 text, which keeps them to the nanosecond.
        assert_eq!(labels[0].job, job("a"));
        assert!(store.remove_label(labels[0].seq).unwrap());
        assert!(!store.remove_label(labels[0].seq).unwrap());
        assert_eq!(store.next_labels(1).unwrap()[0].job.code, "b");
        assert_eq!(store.label_count().unwrap(), 2);
    }

    #[test]
    fn a_full_queue_refuses_new_labels_and_keeps_the_old_ones() {
        let store = Store::open(&temp_dir()).unwrap();
        store
            .conn
            .execute_batch(&format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n
                     WHERE i < {MAX_QUEUED_LABELS})
                 INSERT INTO labels (kind, code, count, opened_at, closed_at)
                 SELECT 'batch', 'old-' || i, 1, '2024-01-01T00:00:00Z',
                        '2024-01-01T00:00:00Z' FROM n;"
            ))
            .unwrap();
        assert_eq!(store.label_count().unwrap(), MAX_QUEUED_LABELS);
        assert!(!insert_in(&store.conn, &job("new")).unwrap());
        assert_eq!(store.label_count().unwrap(), MAX_QUEUED_LABELS);
        assert_eq!(store.next_labels(1).unwrap()[0].job.code, "old-1");
        let first = store.next_labels(1).unwrap()[0].seq;
        store.remove_label(first).unwrap();
        assert!(insert_in(&store.conn, &job("new")).unwrap());
    }
}
