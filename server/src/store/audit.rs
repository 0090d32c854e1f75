//! The audit log's rows: recording an entry (alone, in a batch, or with the change it
//! records in one transaction) and listing them.

use crate::store::db::DbConnection;
use crate::store::error::StoreResult;
use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use protocol::rest::{AuditRecord, Page, Role};
use schema::schema::audit_log;
use serde::Deserialize;

/// Longest `actor` and `target` stored, in bytes. Both columns are indexed, and PostgreSQL
/// refuses an index entry past about 2.7 KB: a release id of 512 KiB in a deployment request
/// failed the audit write, and with it the request, with a 500. The full value, where it
/// matters, is in `params`.
pub const MAX_INDEXED_LEN: usize = 256;

/// `text` cut to `MAX_INDEXED_LEN` bytes at a character boundary, marked with `…` if cut.
pub fn indexable(text: String) -> String {
    if text.len() <= MAX_INDEXED_LEN {
        return text;
    }
    let mut end = MAX_INDEXED_LEN - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What to record. Parameters are a summary chosen by the caller; never put a secret in them.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    actor: Option<String>,
    role: Option<Role>,
    action: String,
    target: Option<String>,
    params: Option<serde_json::Value>,
    source: Option<String>,
    outcome: String,
}

impl AuditEntry {
    pub fn new(action: &str, outcome: &str) -> Self {
        AuditEntry {
            actor: None,
            role: None,
            action: action.to_owned(),
            target: None,
            params: None,
            source: None,
            outcome: outcome.to_owned(),
        }
    }

    pub fn actor(mut self, actor: Option<String>, role: Option<Role>) -> Self {
        self.actor = actor.map(indexable);
        self.role = role;
        self
    }

    /// The thing acted on, often an id straight from the request: cut to `MAX_INDEXED_LEN`.
    pub fn target(mut self, target: Option<String>) -> Self {
        self.target = target.map(indexable);
        self
    }

    pub fn params(mut self, params: serde_json::Value) -> Self {
        self.params = Some(params);
        self
    }

    pub fn source(mut self, source: Option<String>) -> Self {
        self.source = source;
        self
    }

    pub fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = outcome.into();
        self
    }
}

pub fn record(conn: &mut DbConnection, entry: &AuditEntry) -> StoreResult<()> {
    diesel::insert_into(audit_log::table)
        .values(&row_of(entry))
        .execute(conn)?;
    Ok(())
}

/// The row `entry` becomes, stamped now with a fresh id.
pub fn row_of(entry: &AuditEntry) -> AuditRow {
    AuditRow {
        id: uuid::Uuid::new_v4().to_string(),
        ts: Utc::now().naive_utc(),
        actor: entry.actor.clone(),
        role: entry.role.map(|r| r.as_str().to_owned()),
        action: entry.action.clone(),
        target: entry.target.clone(),
        params: entry.params.as_ref().map(|p| p.to_string()),
        source: entry.source.clone(),
        outcome: entry.outcome.clone(),
    }
}

/// Writes `rows` with one multi-row statement (the caller keeps them within the backends'
/// bind-parameter limits).
pub fn insert_rows(conn: &mut DbConnection, rows: &[AuditRow]) -> diesel::QueryResult<usize> {
    crate::on_backend!(conn, |c| diesel::insert_into(audit_log::table)
        .values(rows)
        .execute(c))
}

/// Filters of `GET /api/v1/audit`. `action` matches a whole action or, ending in `.`, a family
/// (`command.` finds every command action).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

pub fn list(
    conn: &mut DbConnection,
    q: &AuditQuery,
    limit: i64,
    offset: i64,
) -> StoreResult<Page<AuditRecord>> {
    let filtered = || {
        let mut query = audit_log::table.into_boxed();
        if let Some(actor) = &q.actor {
            query = query.filter(audit_log::actor.eq(actor.clone()));
        }
        if let Some(action) = &q.action {
            query = if action.ends_with('.') {
                let escaped = action
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                query.filter(audit_log::action.like(format!("{escaped}%")).escape('\\'))
            } else {
                query.filter(audit_log::action.eq(action.clone()))
            };
        }
        if let Some(target) = &q.target {
            query = query.filter(audit_log::target.eq(target.clone()));
        }
        if let Some(since) = q.since {
            query = query.filter(audit_log::ts.ge(since.naive_utc()));
        }
        if let Some(until) = q.until {
            query = query.filter(audit_log::ts.lt(until.naive_utc()));
        }
        query
    };
    let total = filtered().count().get_result(conn)?;
    let rows: Vec<AuditRow> = filtered()
        .order((audit_log::ts.desc(), audit_log::id.desc()))
        .limit(limit)
        .offset(offset)
        .select(AuditRow::as_select())
        .load(conn)?;
    Ok(Page {
        items: rows.iter().map(AuditRow::to_api).collect(),
        total,
    })
}

#[derive(Debug, Clone, Insertable, Queryable, Selectable)]
#[diesel(table_name = audit_log)]
pub struct AuditRow {
    id: String,
    ts: NaiveDateTime,
    actor: Option<String>,
    role: Option<String>,
    action: String,
    target: Option<String>,
    params: Option<String>,
    source: Option<String>,
    outcome: String,
}

impl AuditRow {
    pub fn to_api(&self) -> AuditRecord {
        AuditRecord {
            id: self.id.clone(),
            ts: self.ts.and_utc(),
            actor: self.actor.clone(),
            role: self.role.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            params: self
                .params
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok()),
            source: self.source.clone(),
            outcome: self.outcome.clone(),
        }
    }
}

/// Writes rows in one write transaction: all of them or none.
pub fn record_all(conn: &mut DbConnection, entries: &[AuditEntry]) -> StoreResult<()> {
    crate::store::db::write_transaction(conn, |conn| {
        entries.iter().try_for_each(|e| record(conn, e))
    })
}

/// Runs a change with its audit row: the row is written first, in the same write
/// transaction, so the change never takes effect unrecorded. If the change fails, its
/// transaction is rolled back and a row with the failure's code (`code_of`) is written
/// instead. Generic in the error so the edge's closures keep their own error type.
pub fn audited<T, E, F>(
    conn: &mut DbConnection,
    entry: AuditEntry,
    f: F,
    code_of: impl Fn(&E) -> crate::store::error::ErrorCode,
) -> Result<T, E>
where
    E: From<diesel::result::Error> + From<crate::store::StoreError>,
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
{
    let success = entry.clone().outcome("success");
    let result = crate::store::db::write_transaction(conn, |conn| {
        record(conn, &success)?;
        f(conn)
    });
    if let Err(e) = &result {
        record(
            conn,
            &entry.outcome(format!("failure: {}", code_of(e).as_str())),
        )?;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_actors_and_targets_are_cut_at_a_character_boundary() {
        assert_eq!(indexable("edge-1".into()), "edge-1");
        let exact = "a".repeat(MAX_INDEXED_LEN);
        assert_eq!(indexable(exact.clone()), exact);
        let cut = indexable("é".repeat(1000));
        assert!(cut.len() <= MAX_INDEXED_LEN, "{} bytes", cut.len());
        assert!(cut.ends_with('…') && cut.starts_with("éé"));
        let entry = AuditEntry::new("firmware.deploy", "success")
            .actor(Some("u".repeat(5000)), None)
            .target(Some("r".repeat(1 << 19)));
        assert!(entry.actor.unwrap().len() <= MAX_INDEXED_LEN);
        assert!(entry.target.unwrap().len() <= MAX_INDEXED_LEN);
    }
}
