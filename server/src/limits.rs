//! The failure limiters of unauthenticated attempts, and the audit rows they are summed up
//! into. Kept apart from `refusals` (which answers requests) so that the janitor, an actor,
//! can flush the summaries without reaching the handlers' shared state.
//!
//! The limiters of guessable secrets (passwords, the enrollment key, the OTA admin secret)
//! count in the database on PostgreSQL, shared by every replica (`limiter.rs`). Refused tokens
//! are counted per process: a token cannot be guessed, so that limit only bounds the audit
//! rows, and counting it in the database would add a write to every refused request.

use std::time::Duration;

use crate::config::Config;
use crate::error::ApiResult;
use crate::hashing::HashGate;
use crate::limiter::Limiter;
use crate::ratelimit::{retry_after_secs, FailureLimiter, Label, Lockout, Summary};
use crate::store::audit::{self, AuditEntry};
use crate::store::db::Db;

/// The failure counters of every unauthenticated attempt, and the gate password checks pass.
#[derive(Debug)]
pub struct Limits {
    pub login_by_account: Limiter,
    pub login_by_source: Limiter,
    pub enroll_by_source: Limiter,
    pub enroll_by_device: Limiter,
    /// Wrong `X-Admin-Secret`s on `POST /admin/generate_token`.
    pub ota_by_source: Limiter,
    /// Refused user, device and OTA tokens, on every route that takes one.
    pub token_by_source: FailureLimiter,
    pub hashing: HashGate,
}

impl Limits {
    /// The limits of `config`, counted in `db` when other replicas share it.
    pub fn from_config(config: &Config, db: &Db) -> std::io::Result<Self> {
        let window = Duration::from_secs(config.lockout_secs);
        let local = |action, key, max| FailureLimiter::new(Label { action, key }, max, window);
        let limiter = |action, key, max| Limiter::new(local(action, key, max), db);
        Ok(Limits {
            login_by_account: limiter("auth.login", "account", config.login_max_failures),
            login_by_source: limiter("auth.login", "source", config.source_max_failures),
            enroll_by_source: limiter("device.token", "source", config.source_max_failures),
            enroll_by_device: limiter("device.token", "device", config.login_max_failures),
            ota_by_source: limiter("ota.token.generate", "source", config.source_max_failures),
            token_by_source: local("auth.token", "source", config.token_max_failures),
            hashing: HashGate::per_core()?,
        })
    }

    fn all(&self) -> [&FailureLimiter; 6] {
        [
            self.login_by_account.local(),
            self.login_by_source.local(),
            self.enroll_by_source.local(),
            self.enroll_by_device.local(),
            self.ota_by_source.local(),
            &self.token_by_source,
        ]
    }

    /// Drops the in-memory entries with nothing left to remember (the shared rows are the
    /// leader's to prune, `store::failures::prune`).
    pub fn prune(&self) {
        for limiter in self.all() {
            limiter.prune();
        }
    }

    /// Every limiter's refusals since the last call, one summary per key.
    pub fn take_summaries(&self) -> Vec<Summary> {
        self.all()
            .into_iter()
            .flat_map(FailureLimiter::take_summaries)
            .collect()
    }
}

/// Puts a key into the row: an address as its source, anything else as its target.
fn keyed(entry: AuditEntry, label: Label, key: &str) -> AuditEntry {
    if label.key == "source" {
        entry.source(Some(key.to_owned()))
    } else {
        entry.target(Some(key.to_owned()))
    }
}

/// The row of a key that has just locked.
pub fn lockout_entry(lock: &Lockout) -> AuditEntry {
    let entry = AuditEntry::new(lock.label.action, "locked").params(serde_json::json!({
        "key": lock.label.key,
        "failures": lock.failures,
        "lockedForSecs": retry_after_secs(lock.locked_for),
    }));
    keyed(entry, lock.label, &lock.key)
}

/// Writes rows in one transaction; nothing when there are none.
pub async fn record_all(db: &Db, entries: Vec<AuditEntry>) -> ApiResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    db.run(move |conn| Ok(audit::record_all(conn, &entries)?))
        .await
}

/// Writes the summaries of the attempts refused since the last call; the janitor calls it
/// every `audit_summary_secs`. Returns how many rows were written.
pub async fn flush_summaries(db: &Db, limits: &Limits) -> ApiResult<usize> {
    let entries: Vec<AuditEntry> = limits
        .take_summaries()
        .into_iter()
        .map(|s| {
            let entry = AuditEntry::new(s.label.action, "refused").params(serde_json::json!({
                "key": s.label.key,
                "count": s.count,
                "since": s.since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "until": s.until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            }));
            keyed(entry, s.label, &s.key)
        })
        .collect();
    let n = entries.len();
    if let Err(e) = record_all(db, entries).await {
        // The counts are gone from memory; the log keeps them.
        tracing::warn!(error = %e, rows = n, "refused-attempt summaries not written");
        return Err(e);
    }
    Ok(n)
}
