//! One failure limiter of unauthenticated attempts, counted where every server process that
//! answers them sees the same count: in this process's memory on SQLite (one process), in the
//! database on PostgreSQL, where replicas share it (`store::failures`), so that a second
//! replica does not double an attacker's budget.
//!
//! On PostgreSQL the in-memory `FailureLimiter` stays as a gate in front of the database: it
//! never counts a failure there, but it lets at most `max_failures` attempts of one key per
//! process go to the database at once (the others wait on it, cheaply, for `reserve`'s wait),
//! and it counts the refused attempts for the audit summaries. Each replica writes the
//! summary rows of the refusals it answered; their counts add up to the refusals of all. The
//! `locked` row is written once: by the one failure, on whichever replica, that brought the
//! shared count to the limit.
//!
//! When the database cannot be read, an attempt is refused with 503 and `Retry-After` (fail
//! closed): a login or an enrollment needs the database right after anyway, and admitting
//! uncounted attempts is what the limit is there to prevent.

use std::time::Duration;

use chrono::NaiveDateTime;

use crate::db::Db;
use crate::ratelimit::{
    FailureLimiter, Label, Lockout, Refusal, Reservation, DEFAULT_MAX_KEYS, OVERFLOW_KEY,
};
use crate::store::failures::{self, Reserved};

/// How often an attempt whose key's remaining failures are all in flight, on this replica or
/// another, asks the database again (waiters on this replica are woken at once by the gate).
const SHARED_POLL: Duration = Duration::from_millis(50);

pub struct Limiter {
    local: FailureLimiter,
    /// The database the counts live in; `None` when they are this process's alone.
    shared: Option<Db>,
    /// The limiter's name in the shared table: `action:key`.
    name: String,
}

impl Limiter {
    /// Counts in the database when `db` is shared with other replicas, else in memory.
    pub fn new(local: FailureLimiter, db: &Db) -> Self {
        let shared = db.shared().then(|| db.clone());
        Self::with(local, shared)
    }

    /// Counts in this process's memory only, whatever the database (one replica's own
    /// counts: what a shared limiter's test compares with).
    pub fn in_memory(local: FailureLimiter) -> Self {
        Self::with(local, None)
    }

    fn with(local: FailureLimiter, shared: Option<Db>) -> Self {
        let label = local.label();
        Limiter {
            name: format!("{}:{}", label.action, label.key),
            local,
            shared,
        }
    }

    pub fn label(&self) -> Label {
        self.local.label()
    }

    /// The in-memory limiter: the counts on SQLite, the gate and the refusal counts on
    /// PostgreSQL.
    pub fn local(&self) -> &FailureLimiter {
        &self.local
    }

    fn max(&self) -> u32 {
        self.local.max_failures()
    }

    fn window_secs(&self) -> f64 {
        self.local.window().as_secs_f64()
    }

    /// Admits one attempt of `key`, waiting up to `wait` while the key's remaining attempts
    /// are all in flight, or says why not. Refusals are counted for the audit summary.
    pub async fn reserve(&self, key: &str, wait: Duration) -> Result<Slot<'_>, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        let gate = self.local.reserve(key, wait).await?;
        let Some(db) = &self.shared else {
            return Ok(Slot {
                limiter: self,
                gate: Some(gate),
                held: None,
            });
        };
        let max = i32::try_from(self.max()).unwrap_or(i32::MAX);
        loop {
            let (name, subject, window) = (self.name.clone(), key.to_owned(), self.window_secs());
            let cap = i64::try_from(DEFAULT_MAX_KEYS).unwrap_or(i64::MAX);
            let found = db
                .run(move |conn| {
                    Ok(failures::reserve(
                        conn,
                        &name,
                        &subject,
                        (max, window),
                        (cap, OVERFLOW_KEY),
                    )?)
                })
                .await;
            match found {
                Ok(Reserved::Admitted {
                    subject,
                    window_ends,
                }) => {
                    return Ok(Slot {
                        limiter: self,
                        gate: Some(gate),
                        held: Some(Held {
                            subject,
                            window_ends,
                        }),
                    })
                }
                Ok(Reserved::Full {
                    settled,
                    remaining_ms,
                    ..
                }) if settled >= max && remaining_ms > 0 => {
                    self.local.note_refused(key);
                    return Err(Refusal::Locked(millis(remaining_ms)));
                }
                Ok(Reserved::Full { .. }) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        self.local.note_refused(key);
                        return Err(Refusal::Busy);
                    }
                    tokio::time::sleep(SHARED_POLL.min(deadline - now)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, limiter = %self.name, "shared failure counts unreadable: attempt refused");
                    return Err(Refusal::Unavailable);
                }
            }
        }
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("local", &self.local)
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0).max(1))
}

/// The slot in the shared count: the key it went to (maybe the overflow key) and its window.
#[derive(Debug)]
struct Held {
    subject: String,
    window_ends: NaiveDateTime,
}

/// An admitted attempt's slot. `fail` keeps it as a failure, `succeed` gives it back, and
/// dropping it unresolved (an error before the verdict, a client that went away) gives it
/// back too.
#[derive(Debug)]
pub struct Slot<'a> {
    limiter: &'a Limiter,
    gate: Option<Reservation<'a>>,
    held: Option<Held>,
}

impl Slot<'_> {
    /// The attempt failed: its slot becomes a failure. `Some` when that locked the key; on
    /// PostgreSQL that is the one failure, of all replicas, that reached the limit.
    pub async fn fail(mut self) -> Option<Lockout> {
        let gate = self.gate.take();
        let (Some(held), Some(db)) = (self.held.take(), self.limiter.shared.clone()) else {
            return gate.and_then(Reservation::fail);
        };
        let limiter = self.limiter;
        let (name, subject, window) = (
            limiter.name.clone(),
            held.subject.clone(),
            limiter.window_secs(),
        );
        let counted = db
            .run(move |conn| {
                Ok(failures::fail(
                    conn,
                    &name,
                    &subject,
                    held.window_ends,
                    window,
                )?)
            })
            .await;
        // Given back only now, so an attempt waiting on this one reads its outcome.
        drop(gate);
        match counted {
            Ok(c) if i64::from(c.settled) == i64::from(limiter.max()) => Some(Lockout {
                label: limiter.label(),
                key: held.subject,
                failures: limiter.max(),
                locked_for: millis(c.remaining_ms),
            }),
            Ok(_) => None,
            Err(e) => {
                // The slot stays counted as a failure in flight until its window ends.
                tracing::warn!(error = %e, limiter = %limiter.name, "a failure was not settled in the shared counts");
                None
            }
        }
    }

    /// The attempt succeeded: its slot is given back, and with `forget_failures` the key's
    /// earlier failures are forgotten too (an account after its owner logged in).
    pub async fn succeed(mut self, forget_failures: bool) {
        let gate = self.gate.take();
        let (Some(held), Some(db)) = (self.held.take(), self.limiter.shared.clone()) else {
            if let Some(gate) = gate {
                gate.succeed(forget_failures);
            }
            return;
        };
        give_back(db, self.limiter.name.clone(), held, forget_failures).await;
        drop(gate);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let (Some(held), Some(db)) = (self.held.take(), self.limiter.shared.clone()) else {
            return;
        };
        // Abandoned: given back in the background; until then it counts as a failure.
        let name = self.limiter.name.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(give_back(db, name, held, false));
            }
            Err(_) => {
                tracing::warn!(limiter = %name, "an abandoned slot stays counted until its window ends")
            }
        }
    }
}

async fn give_back(db: Db, name: String, held: Held, forget: bool) {
    let limiter = name.clone();
    let result = db
        .run(move |conn| {
            Ok(failures::give_back(
                conn,
                &name,
                &held.subject,
                held.window_ends,
                forget,
            )?)
        })
        .await;
    if let Err(e) = result {
        // An over-count, which ends with the window.
        tracing::warn!(error = %e, %limiter, "a slot was not given back to the shared counts");
    }
}
