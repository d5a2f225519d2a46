//! The sender's pace: at most `per_second` sends in any one-second window, shared by all
//! of a process's tasks, so WhatsApp's per-sender limit (counted per second, not on
//! average) is never crossed from here. Across a fleet, each process gets its share of
//! the sender's rate ([`crate::fleet_rate`]) and sets it here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use waconnect_shared::BusinessNumber;
use waconnect_shared::service::routing::{Route, Routing};

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

/// One limiter per sender (WhatsApp counts each number's rate on its own): a route's
/// replies wait only for their own sender's pace.
pub struct Limiters {
    routing: Routing,
    /// By [`Route::sender_key`]: routes sharing a Messaging Service share its rate.
    by_sender: HashMap<String, Arc<RateLimiter>>,
}

/// A sender's whole rate across the fleet, and the limiter that takes this process's share.
pub struct SenderRate {
    pub sender_key: String,
    pub total: f64,
    pub limiter: Arc<RateLimiter>,
}

impl Limiters {
    /// `default_rate` for routes that do not name theirs (the first route naming a shared
    /// sender sets its rate).
    pub fn new(routing: &Routing, default_rate: f64) -> (Self, Vec<SenderRate>) {
        let mut by_sender = HashMap::new();
        let mut rates = Vec::new();
        for route in routing.routes() {
            let key = route.sender_key();
            if by_sender.contains_key(&key) {
                continue;
            }
            let total = route.rate.unwrap_or(default_rate);
            let limiter = Arc::new(RateLimiter::new(total));
            by_sender.insert(key.clone(), limiter.clone());
            rates.push(SenderRate {
                sender_key: key,
                total,
                limiter,
            });
        }
        let limiters = Self {
            routing: routing.clone(),
            by_sender,
        };
        (limiters, rates)
    }

    /// The limiter of the conversation on `business`.
    pub fn of(&self, business: Option<&BusinessNumber>) -> &RateLimiter {
        let route: &Route = self.routing.route_of(business);
        &self.by_sender[&route.sender_key()]
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

    #[test]
    fn each_sender_has_its_own_rate_and_shared_services_share_one() {
        let routing = Routing::parse(
            r#"
[[route]]
name = "acme"
numbers = ["whatsapp:+14155238886"]
rate = 40
[[route]]
name = "globex"
numbers = ["whatsapp:+442071838750"]
messaging_service_sid = "MG1"
[[route]]
name = "initech"
numbers = ["whatsapp:+442071838751"]
messaging_service_sid = "MG1"
rate = 5
"#,
        )
        .unwrap();
        let (limiters, rates) = Limiters::new(&routing, 80.0);
        let totals: Vec<_> = rates
            .iter()
            .map(|r| (r.sender_key.as_str(), r.total))
            .collect();
        // The first route naming a shared service sets its rate.
        assert_eq!(totals, [("whatsapp:+14155238886", 40.0), ("MG1", 80.0)]);
        let number = |n: &str| BusinessNumber::parse(n).unwrap();
        let acme = limiters.of(Some(&number("whatsapp:+14155238886")));
        let globex = limiters.of(Some(&number("whatsapp:+442071838750")));
        let initech = limiters.of(Some(&number("whatsapp:+442071838751")));
        assert!(!std::ptr::eq(acme, globex));
        assert!(std::ptr::eq(globex, initech));
        // A conversation from before routing goes at the first route's pace.
        assert!(std::ptr::eq(limiters.of(None), acme));
    }
}
