//! A token bucket shared by all of a sender's tasks, so the steady rate stays under
//! Twilio's per-sender limit instead of discovering it through 429s.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    /// Tokens available at `at` (may be negative: reserved by waiting callers).
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: f64) -> Self {
        let burst = per_second.clamp(1.0, 10.0);
        Self {
            per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Reserves one send and waits for its turn; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let wait = {
            let mut state = self.state.lock().expect("rate limiter lock");
            let now = Instant::now();
            let (tokens, at) = *state;
            let refilled =
                (tokens + now.duration_since(at).as_secs_f64() * self.per_second).min(self.burst);
            let left = refilled - 1.0;
            *state = (left, now);
            if left >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-left / self.per_second)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate_after_the_burst() {
        let limiter = RateLimiter::new(20.0);
        let start = Instant::now();
        for _ in 0..30 {
            limiter.acquire().await;
        }
        // 10 at once (the burst), then 20 at 20/s.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(950) && took <= Duration::from_millis(1050),
            "{took:?}"
        );
    }
}
