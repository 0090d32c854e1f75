//! Failure counters for login and enrollment, per source address and per account.
//!
//! Only failures count: a correct password is never slowed by earlier successes. Once a key
//! has `max_failures` failures inside `window`, it is refused (429 with `Retry-After`) until
//! the window that started with its first failure has passed; while refused, even a correct
//! password is refused, or a guesser could keep going until the right guess got through.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked keys, expired entries are swept on the next failure, so a flood of
/// made-up usernames cannot grow the map without bound.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    since: Instant,
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        FailureLimiter {
            max_failures: max_failures.max(1),
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock leaves only counters behind; keep using them.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(retry_after)` while `key` is locked out.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    pub fn record_failure(&self, key: &str) {
        self.record_failure_at(key, Instant::now())
    }

    /// Forgets a key's failures (after a successful login of that account).
    pub fn reset(&self, key: &str) {
        self.lock().remove(key);
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let entries = self.lock();
        match entries.get(key) {
            Some(e) if e.failures >= self.max_failures => {
                let ends = e.since + self.window;
                if ends > now {
                    Err(ends - now)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn record_failure_at(&self, key: &str, now: Instant) {
        let mut entries = self.lock();
        if entries.len() > SWEEP_ABOVE {
            let window = self.window;
            entries.retain(|_, e| e.since + window > now);
        }
        let entry = entries.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            since: now,
        });
        if entry.since + self.window <= now {
            *entry = Entry {
                failures: 0,
                since: now,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    /// Drops entries whose window has passed; run from time to time.
    pub fn prune(&self) {
        let now = Instant::now();
        let window = self.window;
        self.lock().retain(|_, e| e.since + window > now);
    }
}

/// Whole seconds for a `Retry-After` header, never 0.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures_and_unlocks_after_the_window() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..2 {
            limiter.record_failure_at("alice", t0);
        }
        assert!(
            limiter.check_at("alice", t0).is_ok(),
            "two failures of three allowed"
        );
        limiter.record_failure_at("alice", t0);
        let wait = limiter
            .check_at("alice", t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(limiter.check_at("bob", t0).is_ok(), "keys are independent");
        assert!(limiter
            .check_at("alice", t0 + Duration::from_secs(60))
            .is_ok());
        // A new failure after the window starts a new count.
        limiter.record_failure_at("alice", t0 + Duration::from_secs(61));
        assert!(limiter
            .check_at("alice", t0 + Duration::from_secs(62))
            .is_ok());
    }

    #[test]
    fn reset_forgets_failures() {
        let limiter = FailureLimiter::new(1, Duration::from_secs(60));
        limiter.record_failure("k");
        assert!(limiter.check("k").is_err());
        limiter.reset("k");
        assert!(limiter.check("k").is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    }
}
