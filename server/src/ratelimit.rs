//! Failure counters for unauthenticated attempts, per key: a source address, an account, a
//! device id.
//!
//! Only failures count: a correct password is never slowed by earlier successes. Once a key
//! has `max_failures` failures inside `window`, it is refused (429 with `Retry-After`) until
//! the window that started with its first failure has passed; while refused, even a correct
//! password is refused, or a guesser could keep going until the right guess got through.
//!
//! An attempt whose outcome takes time to learn (an Argon2 verification) first takes a slot
//! with `reserve`: the check and the count are one locked step, so a burst of concurrent
//! attempts cannot all pass the check before the first failure is counted. A key admits at
//! most `max_failures - failures` attempts at once; more wait for one of them to end. A failed
//! attempt keeps its slot as a failure; a successful or abandoned one gives it back.
//!
//! Attempts refused while a key is locked are counted per key for the audit log, which gets
//! one summary row per key and period (`take_summaries`) instead of a row each. The number of
//! keys is capped: past `max_keys`, new keys share one overflow entry, so memory stays bounded
//! whatever the number of addresses or names an attacker uses.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

/// Keys tracked per limiter before new ones share the overflow entry. An entry costs about
/// 200 bytes with its key, so a full limiter stays around 2 MB.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// The shared entry of the keys past `max_keys`; also the key the audit rows name for them.
pub const OVERFLOW_KEY: &str = "*";

/// What a limiter's audit rows say: the action they belong to and what kind of key it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    pub action: &'static str,
    /// `source`, `account` or `device`.
    pub key: &'static str,
}

#[derive(Debug)]
pub struct FailureLimiter {
    label: Label,
    max_failures: u32,
    window: Duration,
    max_keys: usize,
    entries: Mutex<HashMap<String, Entry>>,
    /// Woken whenever a slot is given back or turns into a failure, for `reserve`'s waiters.
    changed: Notify,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Failures in the window that started at `since`.
    failures: u32,
    since: Instant,
    /// Reserved attempts whose outcome is not known yet.
    in_flight: u32,
    /// Attempts refused since the last summary, and when the first of them came.
    refused: u64,
    refused_since: Option<DateTime<Utc>>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Entry {
            failures: 0,
            since: now,
            in_flight: 0,
            refused: 0,
            refused_since: None,
        }
    }

    /// Forgets the failures of a window that has passed.
    fn roll(&mut self, now: Instant, window: Duration) {
        if self.failures > 0 && self.since + window <= now {
            self.failures = 0;
        }
    }

    fn locked_for(&self, max: u32, window: Duration, now: Instant) -> Option<Duration> {
        let ends = self.since + window;
        (self.failures >= max && ends > now).then(|| ends - now)
    }

    fn add_failure(&mut self, now: Instant, window: Duration) {
        self.roll(now, window);
        if self.failures == 0 {
            self.since = now;
        }
        self.failures = self.failures.saturating_add(1);
    }

    fn add_refusal(&mut self) {
        self.refused = self.refused.saturating_add(1);
        self.refused_since.get_or_insert_with(Utc::now);
    }

    /// Nothing left to remember: no live failures, no attempt in flight, nothing to report.
    fn idle(&self, now: Instant, window: Duration) -> bool {
        self.in_flight == 0
            && self.refused == 0
            && (self.failures == 0 || self.since + window <= now)
    }
}

/// Why an attempt was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The key is locked for this long.
    Locked(Duration),
    /// As many attempts of the key are in flight as it has failures left.
    Busy,
    /// The counts shared with the other replicas could not be read (`limiter.rs`): the
    /// attempt is refused rather than admitted uncounted.
    Unavailable,
}

/// A key that has just reached its limit, for the one audit row of its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    pub label: Label,
    pub key: String,
    pub failures: u32,
    pub locked_for: Duration,
}

/// Attempts of one key refused between `since` and `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub label: Label,
    pub key: String,
    pub count: u64,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// An admitted attempt's slot. `fail` keeps it as a failure, `succeed` gives it back, and
/// dropping it unresolved (an error before the verdict, a client that went away) gives it
/// back too.
#[derive(Debug)]
pub struct Reservation<'a> {
    limiter: &'a FailureLimiter,
    key: String,
    open: bool,
}

impl Reservation<'_> {
    /// The attempt failed: its slot becomes a failure. `Some` when that locked the key.
    pub fn fail(self) -> Option<Lockout> {
        self.fail_at(Instant::now())
    }

    fn fail_at(mut self, now: Instant) -> Option<Lockout> {
        let limiter = self.limiter;
        let lockout = {
            let mut entries = limiter.lock();
            let entry = entries
                .entry(self.key.clone())
                .or_insert_with(|| Entry::new(now));
            entry.in_flight = entry.in_flight.saturating_sub(1);
            entry.add_failure(now, limiter.window);
            (entry.failures == limiter.max_failures).then(|| Lockout {
                label: limiter.label,
                key: self.key.clone(),
                failures: entry.failures,
                locked_for: (entry.since + limiter.window).saturating_duration_since(now),
            })
        };
        self.open = false;
        limiter.changed.notify_waiters();
        lockout
    }

    /// The attempt succeeded: its slot is given back, and with `forget_failures` the key's
    /// earlier failures are forgotten too (an account after its owner logged in).
    pub fn succeed(mut self, forget_failures: bool) {
        self.release(forget_failures);
    }

    fn release(&mut self, forget_failures: bool) {
        if !self.open {
            return;
        }
        self.open = false;
        let limiter = self.limiter;
        {
            let now = Instant::now();
            let mut entries = limiter.lock();
            if let Some(entry) = entries.get_mut(&self.key) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                if forget_failures {
                    entry.failures = 0;
                }
                if entry.idle(now, limiter.window) {
                    entries.remove(&self.key);
                }
            }
        }
        limiter.changed.notify_waiters();
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.release(false);
    }
}

impl FailureLimiter {
    pub fn new(label: Label, max_failures: u32, window: Duration) -> Self {
        FailureLimiter {
            label,
            max_failures: max_failures.max(1),
            window,
            max_keys: DEFAULT_MAX_KEYS,
            entries: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        }
    }

    /// The same with another key cap (tests use a small one).
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    pub fn label(&self) -> Label {
        self.label
    }

    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock leaves only counters behind; keep using them.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entry `key` is counted in: its own while there is room, else the overflow entry.
    fn entry_for<'m>(
        &self,
        entries: &'m mut HashMap<String, Entry>,
        key: &str,
        now: Instant,
    ) -> (String, &'m mut Entry) {
        let key = if entries.contains_key(key) {
            key
        } else {
            if entries.len() >= self.max_keys {
                let window = self.window;
                entries.retain(|_, e| !e.idle(now, window));
            }
            if entries.len() >= self.max_keys {
                OVERFLOW_KEY
            } else {
                key
            }
        };
        let entry = entries
            .entry(key.to_owned())
            .or_insert_with(|| Entry::new(now));
        (key.to_owned(), entry)
    }

    /// Admits one attempt of `key` now, or says why not. A refusal of a locked key is counted
    /// for the audit summary.
    pub fn try_reserve(&self, key: &str) -> Result<Reservation<'_>, Refusal> {
        self.try_reserve_at(key, Instant::now())
    }

    fn try_reserve_at(&self, key: &str, now: Instant) -> Result<Reservation<'_>, Refusal> {
        let mut entries = self.lock();
        let (slot, entry) = self.entry_for(&mut entries, key, now);
        entry.roll(now, self.window);
        if let Some(wait) = entry.locked_for(self.max_failures, self.window, now) {
            entry.add_refusal();
            return Err(Refusal::Locked(wait));
        }
        if entry.failures.saturating_add(entry.in_flight) >= self.max_failures {
            return Err(Refusal::Busy);
        }
        entry.in_flight += 1;
        Ok(Reservation {
            limiter: self,
            key: slot,
            open: true,
        })
    }

    /// Admits one attempt of `key`, waiting up to `wait` while the key's remaining attempts
    /// are all in flight (their outcome decides whether this one may run at all). A key still
    /// busy after `wait` is refused as `Busy`, and that refusal is counted.
    pub async fn reserve(&self, key: &str, wait: Duration) -> Result<Reservation<'_>, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a slot given back in between still wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.try_reserve(key) {
                Err(Refusal::Busy) => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        self.note_refused(key);
                        return Err(Refusal::Busy);
                    }
                }
                other => return other,
            }
        }
    }

    /// Counts a failure that needed no reservation (a refused token, checked in microseconds).
    /// `Err(wait)` when the key was locked already: the caller answers 429, and the refusal
    /// is counted for the summary. `Ok(Some)` when this failure locked the key.
    pub fn note_failure(&self, key: &str) -> Result<Option<Lockout>, Duration> {
        self.note_failure_at(key, Instant::now())
    }

    fn note_failure_at(&self, key: &str, now: Instant) -> Result<Option<Lockout>, Duration> {
        let mut entries = self.lock();
        let (slot, entry) = self.entry_for(&mut entries, key, now);
        entry.roll(now, self.window);
        if let Some(wait) = entry.locked_for(self.max_failures, self.window, now) {
            entry.add_refusal();
            return Err(wait);
        }
        entry.add_failure(now, self.window);
        Ok((entry.failures == self.max_failures).then(|| Lockout {
            label: self.label,
            key: slot,
            failures: entry.failures,
            locked_for: (entry.since + self.window).saturating_duration_since(now),
        }))
    }

    /// Counts an attempt refused for another reason than a lock (a key that stayed busy).
    pub fn note_refused(&self, key: &str) {
        let mut entries = self.lock();
        let (_, entry) = self.entry_for(&mut entries, key, Instant::now());
        entry.add_refusal();
    }

    /// The refusals counted since the last call, one summary per key, and forgets them.
    pub fn take_summaries(&self) -> Vec<Summary> {
        let now = Instant::now();
        let until = Utc::now();
        let mut entries = self.lock();
        let mut out = Vec::new();
        for (key, entry) in entries.iter_mut() {
            if entry.refused == 0 {
                continue;
            }
            out.push(Summary {
                label: self.label,
                key: key.clone(),
                count: entry.refused,
                since: entry.refused_since.take().unwrap_or(until),
                until,
            });
            entry.refused = 0;
        }
        let window = self.window;
        entries.retain(|_, e| !e.idle(now, window));
        out
    }

    /// Drops entries with nothing left to remember; run from time to time.
    pub fn prune(&self) {
        let now = Instant::now();
        let window = self.window;
        self.lock().retain(|_, e| !e.idle(now, window));
    }

    /// How many keys are tracked (for tests and diagnostics).
    pub fn tracked_keys(&self) -> usize {
        self.lock().len()
    }
}

/// Whole seconds for a `Retry-After` header, never 0.
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: Label = Label {
        action: "auth.login",
        key: "account",
    };

    fn limiter(max: u32) -> FailureLimiter {
        FailureLimiter::new(LABEL, max, Duration::from_secs(60))
    }

    #[test]
    fn locks_after_max_failures_and_unlocks_after_the_window() {
        let limiter = limiter(3);
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(
                limiter.try_reserve_at("alice", t0).unwrap().fail_at(t0),
                None
            );
        }
        let lock = limiter.try_reserve_at("alice", t0).unwrap().fail_at(t0);
        assert_eq!(
            lock,
            Some(Lockout {
                label: LABEL,
                key: "alice".into(),
                failures: 3,
                locked_for: Duration::from_secs(60),
            }),
            "the third failure locks, and says so once"
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            limiter.try_reserve_at("alice", later).unwrap_err(),
            Refusal::Locked(Duration::from_secs(50))
        );
        assert!(
            limiter.try_reserve_at("bob", t0).is_ok(),
            "keys are independent"
        );
        // After the window a new attempt is admitted, and its failure starts a new count.
        let after = t0 + Duration::from_secs(60);
        assert_eq!(
            limiter
                .try_reserve_at("alice", after)
                .unwrap()
                .fail_at(after),
            None
        );
        assert!(limiter.try_reserve_at("alice", after).is_ok());
    }

    #[test]
    fn concurrent_attempts_never_exceed_the_failures_left() {
        let limiter = limiter(5);
        let now = Instant::now();
        let held: Vec<_> = (0..5)
            .map(|_| limiter.try_reserve_at("admin", now).unwrap())
            .collect();
        assert_eq!(
            limiter.try_reserve_at("admin", now).unwrap_err(),
            Refusal::Busy,
            "five attempts in flight use up the five failures left"
        );
        let mut locks = 0;
        for r in held {
            locks += usize::from(r.fail_at(now).is_some());
        }
        assert_eq!(locks, 1);
        assert!(matches!(
            limiter.try_reserve_at("admin", now),
            Err(Refusal::Locked(_))
        ));
    }

    #[test]
    fn success_and_abandon_give_the_slot_back() {
        let limiter = limiter(2);
        limiter.try_reserve("k").unwrap().fail();
        let a = limiter.try_reserve("k").unwrap();
        assert_eq!(limiter.try_reserve("k").unwrap_err(), Refusal::Busy);
        drop(a);
        let b = limiter.try_reserve("k").unwrap();
        b.succeed(false);
        let c = limiter.try_reserve("k").unwrap();
        c.succeed(true);
        // The failure was forgotten: two attempts fit again.
        let _d = limiter.try_reserve("k").unwrap();
        let _e = limiter.try_reserve("k").unwrap();
        assert_eq!(limiter.tracked_keys(), 1);
    }

    #[test]
    fn a_forgotten_key_leaves_no_entry() {
        let limiter = limiter(2);
        limiter.try_reserve("k").unwrap().succeed(true);
        assert_eq!(limiter.tracked_keys(), 0);
    }

    #[test]
    fn keys_past_the_cap_share_the_overflow_entry() {
        let limiter = limiter(2).with_max_keys(3);
        for i in 0..3 {
            limiter.try_reserve(&format!("k{i}")).unwrap().fail();
        }
        for i in 3..100 {
            let r = limiter.try_reserve(&format!("k{i}"));
            if let Ok(r) = r {
                r.fail();
            }
        }
        assert_eq!(limiter.tracked_keys(), 4, "three keys and the overflow");
        assert!(
            matches!(limiter.try_reserve("new"), Err(Refusal::Locked(_))),
            "new keys are limited together"
        );
        let summaries = limiter.take_summaries();
        let overflow = summaries.iter().find(|s| s.key == OVERFLOW_KEY).unwrap();
        assert_eq!(overflow.count, 96);
    }

    #[test]
    fn refusals_are_summarized_once_per_take() {
        let limiter = limiter(1);
        limiter.try_reserve("k").unwrap().fail();
        for _ in 0..1000 {
            assert!(limiter.try_reserve("k").is_err());
        }
        let summaries = limiter.take_summaries();
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].count, 1000);
        assert_eq!(summaries[0].label, LABEL);
        assert!(summaries[0].since <= summaries[0].until);
        assert!(limiter.take_summaries().is_empty(), "counts are taken once");
        assert!(limiter.try_reserve("k").is_err(), "the lock itself stays");
    }

    #[test]
    fn noted_failures_lock_and_then_refuse() {
        let limiter = limiter(3);
        assert_eq!(limiter.note_failure("ip"), Ok(None));
        assert_eq!(limiter.note_failure("ip"), Ok(None));
        assert!(limiter.note_failure("ip").unwrap().is_some());
        assert!(limiter.note_failure("ip").is_err());
        assert_eq!(limiter.take_summaries()[0].count, 1);
    }

    #[actix_rt::test]
    async fn waiters_learn_the_outcome_of_the_attempts_in_flight() {
        let limiter = limiter(2);
        let a = limiter.try_reserve("k").unwrap();
        let b = limiter.try_reserve("k").unwrap();
        let waiter = limiter.reserve("k", Duration::from_secs(10));
        let resolve = async {
            tokio::task::yield_now().await;
            a.fail();
            b.fail();
        };
        let (result, ()) = tokio::join!(waiter, resolve);
        assert!(matches!(result, Err(Refusal::Locked(_))));

        let c = limiter.try_reserve("other").unwrap();
        let d = limiter.try_reserve("other").unwrap();
        let waiter = limiter.reserve("other", Duration::from_secs(10));
        let resolve = async {
            tokio::task::yield_now().await;
            c.succeed(true);
            drop(d);
        };
        let (result, ()) = tokio::join!(waiter, resolve);
        assert!(result.is_ok(), "a success frees a slot for the waiter");
    }

    #[actix_rt::test]
    async fn a_key_that_stays_busy_is_refused_after_the_wait() {
        let limiter = limiter(1);
        let _held = limiter.try_reserve("k").unwrap();
        let result = limiter.reserve("k", Duration::from_millis(20)).await;
        assert_eq!(result.unwrap_err(), Refusal::Busy);
        assert_eq!(limiter.take_summaries()[0].count, 1);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
