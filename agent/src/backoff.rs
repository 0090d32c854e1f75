//! Exponential reconnect backoff with jitter, shared by enrollment and the WebSocket.

use std::time::Duration;

use rand::Rng;

/// First delay before jitter; the contract asks for 1 s growing to a 30 s cap.
pub const BASE_DELAY: Duration = Duration::from_secs(1);
/// Largest delay before jitter.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Doubles the delay after every failure up to a cap, and draws each actual delay from the
/// upper half of the current step ("equal jitter"), so a fleet of agents that lost the server
/// at the same moment does not come back in lockstep, yet no delay is ever close to zero and a
/// permanent failure (a wrong enrollment key) cannot turn into a hot loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BASE_DELAY, MAX_DELAY)
    }
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// The un-jittered step for the current number of failures: base · 2ⁿ, at most the cap.
    pub fn ceiling(&self) -> Duration {
        // The shift is bounded so the multiplication cannot overflow; 2^16 s is far past any cap.
        let factor = 1u32 << self.failures.min(16);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay to wait now; every call counts as one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::thread_rng().gen_range(0..=spread))
    }

    /// Starts again from the base delay, after a connection that stayed up.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_half_and_whole_of_each_step() {
        let mut backoff = Backoff::default();
        let mut ceiling = BASE_DELAY;
        for _ in 0..50 {
            let delay = backoff.next_delay();
            assert!(delay >= ceiling / 2, "{delay:?} below half of {ceiling:?}");
            assert!(delay <= ceiling, "{delay:?} above {ceiling:?}");
            ceiling = (ceiling * 2).min(MAX_DELAY);
        }
    }

    #[test]
    fn never_exceeds_the_cap_and_never_drops_below_half_a_second() {
        let mut backoff = Backoff::default();
        for _ in 0..1000 {
            let delay = backoff.next_delay();
            assert!(delay <= MAX_DELAY);
            assert!(delay >= BASE_DELAY / 2);
        }
        assert_eq!(backoff.ceiling(), MAX_DELAY);
    }

    #[test]
    fn ceiling_doubles_until_the_cap() {
        let mut backoff = Backoff::default();
        let expected = [1, 2, 4, 8, 16, 30, 30];
        for secs in expected {
            assert_eq!(backoff.ceiling(), Duration::from_secs(secs));
            backoff.next_delay();
        }
    }

    #[test]
    fn reset_returns_to_the_base_delay() {
        let mut backoff = Backoff::default();
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), BASE_DELAY);
        assert!(backoff.next_delay() <= BASE_DELAY);
    }
}
