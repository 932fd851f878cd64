//! A small circuit breaker per upstream: after `threshold` consecutive failures it opens and
//! calls fail fast for `cool_down`; then one trial call is let through (half-open): success
//! closes it, failure opens it again. A dead upstream therefore costs one quick error per call
//! instead of a full timeout and retries, and Lambda time is not burnt waiting on it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

/// Permission to make a call; report how it went with [`CircuitBreaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Closed,
    Trial,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            state: Mutex::new(State::default()),
        }
    }

    /// `None` while open: fail fast without calling.
    pub fn allow(&self) -> Option<Permit> {
        let mut s = crate::lock(&self.state);
        match s.opened_at {
            None => Some(Permit::Closed),
            Some(at) if at.elapsed() >= self.cool_down && !s.trial_in_flight => {
                s.trial_in_flight = true;
                Some(Permit::Trial)
            }
            Some(_) => None,
        }
    }

    /// Records the result of a permitted call. Only upstream failures (timeouts, 5xx, 429
    /// rate limits, connection errors) count; a 400 is the caller's fault, not the upstream's.
    pub fn record(&self, permit: Permit, upstream_ok: bool) {
        let mut s = crate::lock(&self.state);
        if permit == Permit::Trial {
            s.trial_in_flight = false;
        }
        if upstream_ok {
            *s = State::default();
            return;
        }
        s.consecutive_failures += 1;
        if permit == Permit::Trial || s.consecutive_failures >= self.threshold {
            if s.opened_at.is_none() || permit == Permit::Trial {
                tracing::warn!(failures = s.consecutive_failures, "circuit breaker open");
            }
            s.opened_at = Some(Instant::now());
        }
    }

    pub fn is_open(&self) -> bool {
        crate::lock(&self.state).opened_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_recovers_through_a_trial() {
        let b = CircuitBreaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            let p = b.allow().unwrap();
            b.record(p, false);
        }
        assert!(!b.is_open());
        let p = b.allow().unwrap();
        b.record(p, false);
        assert!(b.is_open());
        assert_eq!(b.allow(), None, "fails fast while open");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.allow(), Some(Permit::Trial));
        assert_eq!(b.allow(), None, "one trial at a time");
        b.record(Permit::Trial, false);
        assert_eq!(b.allow(), None, "a failed trial re-opens");
        std::thread::sleep(Duration::from_millis(40));
        let p = b.allow().unwrap();
        b.record(p, true);
        assert!(!b.is_open());
        assert_eq!(b.allow(), Some(Permit::Closed));
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = CircuitBreaker::new(2, Duration::from_secs(60));
        b.record(Permit::Closed, false);
        b.record(Permit::Closed, true);
        b.record(Permit::Closed, false);
        assert!(!b.is_open());
    }
}
