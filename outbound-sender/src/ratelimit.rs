//! The sender's pace: at most `per_second` sends in any one-second window, shared by all
//! of a process's tasks, so WhatsApp's per-sender limit (counted per second, not on
//! average) is never crossed from here. Across a fleet, each process gets its share of
//! the sender's rate ([`crate::fleet_rate`]) and sets it here.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The window WhatsApp counts a sender's rate in, plus a guard: a send is counted when it
/// arrives, which the network and the other side's queueing shift by some milliseconds,
/// so sends spaced exactly a second apart here may land inside one second there.
const WINDOW: Duration = Duration::from_millis(1050);
/// Bound on the sends remembered (and so on the rate one process can be given).
const MAX_PER_WINDOW: usize = 100_000;

pub struct RateLimiter {
    state: Mutex<State>,
}

struct State {
    per_window: usize,
    /// When the last `per_window` sends were (or are reserved to be), oldest first.
    sends: VecDeque<Instant>,
}

impl RateLimiter {
    /// A limiter whose first send waits one window: a process that replaces one that
    /// died does not know what its predecessor sent in its last second, and WhatsApp
    /// would count both.
    pub fn new(per_second: f64) -> Self {
        let per_window = Self::slots(per_second);
        Self {
            state: Mutex::new(State {
                per_window,
                sends: std::iter::repeat_n(Instant::now(), per_window).collect(),
            }),
        }
    }

    fn slots(per_second: f64) -> usize {
        (per_second.floor() as usize).clamp(1, MAX_PER_WINDOW)
    }

    /// Changes the rate from now on (the fleet's share moved).
    pub fn set_rate(&self, per_second: f64) {
        self.state.lock().expect("rate limiter lock").per_window = Self::slots(per_second);
    }

    /// Reserves one send and waits for its turn; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let wait = {
            let mut state = self.state.lock().expect("rate limiter lock");
            let now = Instant::now();
            let per_window = state.per_window;
            while state.sends.len() > per_window {
                state.sends.pop_front();
            }
            // The send `per_window` back must leave the window before this one may go.
            let at = if state.sends.len() == per_window {
                let oldest = state.sends.pop_front().expect("a full window is not empty");
                (oldest + WINDOW).max(now)
            } else {
                now
            };
            // Reservations are made in order, so the queue stays sorted.
            let at = state.sends.back().map_or(at, |last| at.max(*last));
            state.sends.push_back(at);
            at - now
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

    /// Reserved send times, as a sliding one-second window sees them.
    async fn times(limiter: &RateLimiter, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..n {
            limiter.acquire().await;
            at.push(start.elapsed());
        }
        at
    }

    fn most_in_any_window(times: &[Duration]) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| **t < times[i] + WINDOW)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_rate_in_any_second() {
        let limiter = RateLimiter::new(20.0);
        let at = times(&limiter, 65).await;
        assert_eq!(most_in_any_window(&at), 20);
        // Nothing in the first window (a predecessor's sends may still count), then 20
        // at once, 20 a window later, and so on: the 65th in the fourth window.
        assert!(at[0] >= WINDOW, "{:?}", at[0]);
        assert!(
            at[64] >= WINDOW * 4 && at[64] < WINDOW * 4 + Duration::from_millis(100),
            "{:?}",
            at[64]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_smaller_share_takes_effect_at_once() {
        let limiter = RateLimiter::new(20.0);
        times(&limiter, 20).await;
        limiter.set_rate(5.0);
        let later = times(&limiter, 10).await;
        assert!(most_in_any_window(&later) <= 5, "{later:?}");
    }
}
