//! The one retry policy: exponential backoff with jitter, so a fleet retrying the same
//! throttled API spreads out (Connect calls, a session's reconnects, Twilio sends).

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next wait: half of the exponential step fixed, half random ("equal jitter").
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt += 1;
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `period` moved randomly by up to a fifth either way, so periodic work across a fleet
/// (sweeps, heartbeats) does not line up.
pub fn jittered(period: Duration) -> Duration {
    let fifth = period / 5;
    period - fifth + rand::rng().random_range(Duration::ZERO..=fifth * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(
            (Duration::from_millis(500)..=Duration::from_secs(1)).contains(&late),
            "{late:?}"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        let j = jittered(Duration::from_secs(10));
        assert!((Duration::from_secs(8)..=Duration::from_secs(12)).contains(&j));
    }
}
