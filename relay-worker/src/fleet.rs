//! The conversations this worker holds: taking leases (for a chat it just started, or one
//! whose holder died), renewing them in one loop for all sessions, sweeping for lapsed
//! ones, taking back at start what its earlier life held, handing some over when it holds
//! more than its share of the fleet's, and handing them all back on shutdown.

use crate::Relay;
use crate::session::{self, Outcome, SharedLease};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use waconnect_shared::ConversationKey;
use waconnect_shared::message::conversation::ConversationState;
use waconnect_shared::service::backoff::jittered;
use waconnect_shared::storage::roster::Members;
use waconnect_shared::storage::store::{Lease, StoreError, acquire, renew};

struct Held {
    lease: SharedLease,
    stop: CancellationToken,
}

pub struct Fleet {
    relay: Arc<Relay>,
    held: Mutex<HashMap<String, Held>>,
    /// Conversations whose lease this worker is taking right now. One take at a time per
    /// conversation lets a refused take read our own name on the record as its own
    /// earlier attempt, landed unanswered (store::acquire), never as a live session.
    taking: Takes,
    /// Conversations handed over to even out the fleet, and until when this worker
    /// leaves them to the others.
    shed: Mutex<HashMap<String, tokio::time::Instant>>,
    /// The fleet as the last roster heartbeat found it.
    fleet: Mutex<Option<Members>>,
    /// Unheld conversations the last sweep left to others; this one takes them.
    passed_over: Mutex<HashSet<String>>,
    /// Balance rounds in a row that found someone under three quarters of a fair share
    /// and two or more under it (but not under half of one).
    uneven_rounds: std::sync::atomic::AtomicU32,
    tasks: TaskTracker,
    /// Cancelled at shutdown; every session's token is a child of it.
    stop: CancellationToken,
}

/// Renewals in flight at once, so thousands of leases renew in a fraction of the period.
const RENEW_CONCURRENCY: usize = 256;
/// Leases renewed in one call to the store.
const RENEW_BATCH: usize = 64;
/// The most conversations a restarted worker takes back at once; the sweepers adopt any
/// beyond.
const RESUME_LIMIT: usize = 10_000;
/// The roster the relays share.
const ROSTER: &str = "relays";
/// Balance rounds a smaller unevenness must last before conversations are handed over.
const UNEVEN_ROUNDS: u32 = 3;

/// The conversations whose lease is being taken, one take at a time per conversation.
#[derive(Default)]
struct Takes(Mutex<HashSet<String>>);

impl Takes {
    /// Marks `key` as being taken unless it is already, or `held` (asked under the same
    /// lock, so a take that ends by starting its session cannot slip between the two).
    fn begin(&self, key: String, held: impl FnOnce() -> bool) -> Option<Taking<'_>> {
        let mut taking = self.0.lock().expect("takes lock");
        if held() || !taking.insert(key.clone()) {
            return None;
        }
        Some(Taking { takes: self, key })
    }
}

/// A conversation marked as being taken; dropping it unmarks it.
struct Taking<'a> {
    takes: &'a Takes,
    key: String,
}

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        self.takes.0.lock().expect("takes lock").remove(&self.key);
    }
}

/// Conversations per relay if the fleet's were shared out evenly.
fn fair_share(m: &Members) -> usize {
    (m.load as usize).div_ceil(m.alive.max(1))
}

impl Fleet {
    pub fn new(relay: Arc<Relay>, stop: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            relay,
            held: Mutex::default(),
            taking: Takes::default(),
            shed: Mutex::default(),
            fleet: Mutex::default(),
            passed_over: Mutex::default(),
            uneven_rounds: std::sync::atomic::AtomicU32::new(0),
            tasks: TaskTracker::new(),
            stop,
        })
    }

    pub fn held(&self) -> usize {
        self.held.lock().expect("held lock").len()
    }

    pub fn holds(&self, key: &ConversationKey) -> bool {
        self.held
            .lock()
            .expect("held lock")
            .contains_key(&key.storage())
    }

    /// Takes the conversation's lease if it is free or lapsed and starts its session.
    /// `how` labels the metric: `acquired` (a chat this worker serves) or `adopted`.
    pub async fn adopt(self: &Arc<Self>, key: &ConversationKey, how: &'static str) {
        let Some(_taking) = self.claim(key) else {
            return;
        };
        if let Some(lease) = self.take_lease(key).await {
            self.start(lease, how);
        }
    }

    /// Marks `key` as being taken, unless this worker holds it, is taking it already, or
    /// handed it over; the mark lasts until the returned guard is dropped, which comes
    /// after a successful take has started its session (and entered it in `held`).
    fn claim(&self, key: &ConversationKey) -> Option<Taking<'_>> {
        if self.stop.is_cancelled() || self.handed_over(key) {
            return None;
        }
        self.taking.begin(key.storage(), || self.holds(key))
    }

    async fn take_lease(&self, key: &ConversationKey) -> Option<Lease> {
        let config = &self.relay.config;
        match acquire(
            self.relay.store.as_ref(),
            key,
            &config.worker_id,
            config.lease,
        )
        .await
        {
            Ok(lease) => Some(lease),
            Err(StoreError::LeaseHeld) => None,
            Err(e) => {
                tracing::warn!(conversation = %key, error = %e, "cannot take a lease");
                None
            }
        }
    }

    fn start(self: &Arc<Self>, lease: Lease, how: &'static str) {
        metrics::counter!("waconnect_relay_leases_total", "event" => how).increment(1);
        let key = lease.key.clone();
        let shared: SharedLease = Arc::new(Mutex::new(lease));
        let stop = self.stop.child_token();
        {
            let mut held = self.held.lock().expect("held lock");
            held.insert(
                key.storage(),
                Held {
                    lease: shared.clone(),
                    stop: stop.clone(),
                },
            );
            metrics::gauge!("waconnect_relay_conversations_held").set(held.len() as f64);
        }
        // Hand-overs are what an operator looks for after a failure: at info.
        tracing::info!(conversation = %key, how, "holding conversation");
        let fleet = self.clone();
        self.tasks.spawn(async move {
            let outcome = session::hold(fleet.relay.clone(), shared, stop).await;
            {
                let mut held = fleet.held.lock().expect("held lock");
                held.remove(&key.storage());
                metrics::gauge!("waconnect_relay_conversations_held").set(held.len() as f64);
            }
            match outcome {
                Outcome::LeaseLost => {
                    metrics::counter!("waconnect_relay_leases_total", "event" => "lost")
                        .increment(1);
                    tracing::info!(conversation = %key, "lease lost; socket dropped");
                }
                Outcome::Stopped => {
                    metrics::counter!("waconnect_relay_leases_total", "event" => "released")
                        .increment(1);
                }
                Outcome::Ended => {
                    metrics::counter!("waconnect_relay_leases_total", "event" => "released")
                        .increment(1);
                    // The customer may already have started the next chat while this one
                    // wound down: take it at once instead of waiting for a sweep.
                    if let Ok(Some(s)) = fleet.relay.store.get(&key).await
                        && s.conversation.state != ConversationState::Ended
                    {
                        fleet.adopt(&key, "acquired").await;
                    }
                }
            }
        });
    }

    /// Renews every held lease well inside its period; a refused renewal stops that
    /// session at once. Renewals go in batches side by side, each batch bounded by the
    /// round's period, so one stalled call never delays the next round. A lease that could
    /// not be renewed before it ran out stops its session too: another worker may adopt it.
    pub async fn renew_loop(self: Arc<Self>) {
        let period = self.relay.config.lease / 3;
        let mut next = tokio::time::Instant::now() + period;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
            // Rounds start a period apart, however long the last one took.
            next = tokio::time::Instant::now() + period;
            let mut held: Vec<(String, SharedLease, CancellationToken)> = self
                .held
                .lock()
                .expect("held lock")
                .iter()
                .map(|(key, h)| (key.clone(), h.lease.clone(), h.stop.clone()))
                .collect();
            // In key order, a batch touches rows that sit side by side in SQLite's table
            // (clustered by key), so a group commit writes a few pages rather than one per
            // lease (at idle, renewals are most of its work).
            held.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let batches: Vec<Vec<(SharedLease, CancellationToken)>> = held
                .chunks(RENEW_BATCH)
                .map(|b| b.iter().map(|(_, l, s)| (l.clone(), s.clone())).collect())
                .collect();
            futures_util::stream::iter(batches)
                .for_each_concurrent(RENEW_CONCURRENCY / RENEW_BATCH, |batch| {
                    self.renew_batch(batch, period)
                })
                .await;
        }
    }

    /// Renews one batch of leases, waiting at most `within`. A batch that got no answer
    /// in time may still have landed: the next round's refusal is then checked against
    /// the record (store::renew), and the lease stays.
    async fn renew_batch(&self, batch: Vec<(SharedLease, CancellationToken)>, within: Duration) {
        let relay = &self.relay;
        let leases: Vec<Lease> = batch
            .iter()
            .map(|(shared, _)| shared.lock().expect("lease lock").clone())
            .collect();
        let answers =
            tokio::time::timeout(within, renew(&*relay.store, &leases, relay.config.lease))
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!(
                        leases = leases.len(),
                        "lease renewals got no answer in time; will retry"
                    );
                    Vec::new()
                });
        for (i, (shared, stop)) in batch.iter().enumerate() {
            let lease = &leases[i];
            match answers.get(i) {
                Some(Ok(renewed)) => *shared.lock().expect("lease lock") = renewed.clone(),
                Some(Err(StoreError::LeaseLost | StoreError::NotFound)) => stop.cancel(),
                Some(Err(e)) => {
                    tracing::warn!(conversation = %lease.key, error = %e, "lease renewal failed; will retry");
                }
                None => {}
            }
            if shared.lock().expect("lease lock").expires_at <= chrono::Utc::now() {
                tracing::warn!(conversation = %lease.key, "lease ran out before it could be renewed; letting go");
                stop.cancel();
            }
        }
    }

    /// Whether this worker handed `key` over lately, to be taken by another.
    fn handed_over(&self, key: &ConversationKey) -> bool {
        let mut shed = self.shed.lock().expect("shed lock");
        let now = tokio::time::Instant::now();
        shed.retain(|_, until| *until > now);
        shed.contains_key(&key.storage())
    }

    /// Takes back at once what this worker's earlier life held (same identity, another
    /// incarnation: it crashed and was restarted), instead of waiting out the leases.
    pub async fn resume(self: &Arc<Self>) {
        let config = &self.relay.config;
        let Some(identity) = &config.identity else {
            return;
        };
        let predecessor = format!("{identity}/");
        let mine = match self.relay.store.held_by(&predecessor, RESUME_LIMIT).await {
            Ok(mine) => mine,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list what the previous incarnation held; the sweepers will adopt it");
                return;
            }
        };
        let takes = mine.into_iter().map(|key| {
            let fleet = self.clone();
            let predecessor = predecessor.clone();
            async move {
                let Some(_taking) = fleet.claim(&key) else {
                    return;
                };
                let taken = fleet
                    .relay
                    .store
                    .take_over(
                        &key,
                        &predecessor,
                        &fleet.relay.config.worker_id,
                        fleet.relay.config.lease,
                    )
                    .await;
                match taken {
                    Ok(lease) => fleet.start(lease, "resumed"),
                    Err(e) => tracing::debug!(conversation = %key, error = %e, "not resumed"),
                }
            }
        });
        futures_util::stream::iter(takes)
            .for_each_concurrent(RENEW_CONCURRENCY, |take| take)
            .await;
    }

    /// Adopts conversations nobody holds (their worker died or let go), a bounded batch
    /// at a time, at jittered intervals so a fleet does not stampede; and every few sweeps
    /// evens out the fleet.
    pub async fn sweep_loop(self: Arc<Self>) {
        let mut next_balance = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(jittered(self.relay.config.sweep_interval)) => {}
            }
            self.sweep().await;
            if tokio::time::Instant::now() >= next_balance {
                self.balance().await;
                next_balance = tokio::time::Instant::now() + self.balance_every();
            }
        }
        let config = &self.relay.config;
        if let Err(e) = self.relay.roster.leave(ROSTER, &config.worker_id).await {
            tracing::debug!(error = %e, "cannot leave the relay roster; it lapses");
        }
    }

    fn balance_every(&self) -> Duration {
        self.relay.config.lease.max(Duration::from_secs(1))
    }

    /// Tells the roster what this worker holds and learns the fleet's total; holding more
    /// than a fair share while another relay holds under half of one (or, for three rounds,
    /// under three quarters and two or more under one), it hands the excess over: each
    /// session saves its cursor and releases its lease, and another worker's sweeper
    /// adopts it and backfills. Nothing is dropped; a new or idle worker fills up.
    pub async fn balance(&self) {
        let config = &self.relay.config;
        let held = self.held();
        // A dead relay's load counts until its entry lapses: keep that short.
        let ttl = self.balance_every() * 3 / 2;
        let members = match self
            .relay
            .roster
            .heartbeat(ROSTER, &config.worker_id, ttl, held as u64)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the relay roster; not balancing");
                return;
            }
        };
        *self.fleet.lock().expect("fleet lock") = Some(members);
        let fair = fair_share(&members);
        // Only when someone holds under half a share — a relay that just joined, or one
        // left nearly idle — since that is where the excess will go; not for the
        // ordinary spread of a fleet (one either side of fair), nor for a dead relay,
        // whose last load still counts until its entry lapses. Then only what is over
        // the fair share. Someone under three quarters of a share and two or more under
        // it (5, 5, 2 for a fair 4 would otherwise stay so for good) counts only once it
        // lasts three rounds: by then a dead relay's entry, which inflates the share, has
        // lapsed, and a failover's adoptions, which pass through such spreads, are done.
        let excess = held.saturating_sub(fair);
        let least = members.least as usize;
        let uneven = least + 2 <= fair && least * 4 < fair * 3;
        let rounds = if uneven {
            self.uneven_rounds
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1
        } else {
            self.uneven_rounds
                .store(0, std::sync::atomic::Ordering::Relaxed);
            0
        };
        if excess == 0 || !(least * 2 < fair || rounds >= UNEVEN_ROUNDS) {
            return;
        }
        self.uneven_rounds
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let quiet = tokio::time::Instant::now() + config.lease * 2;
        let handed: Vec<(String, CancellationToken)> = {
            let held = self.held.lock().expect("held lock");
            held.iter()
                .take(excess)
                .map(|(customer, h)| (customer.clone(), h.stop.clone()))
                .collect()
        };
        {
            let mut shed = self.shed.lock().expect("shed lock");
            for (customer, _) in &handed {
                shed.insert(customer.clone(), quiet);
            }
        }
        tracing::info!(
            held,
            fair,
            relays = members.alive,
            handing_over = handed.len(),
            "holding more than a fair share; handing some conversations over"
        );
        metrics::counter!("waconnect_relay_leases_total", "event" => "handed_over")
            .increment(handed.len() as u64);
        for (_, stop) in handed {
            stop.cancel();
        }
    }

    /// Adopts unheld conversations: up to what this worker lacks of a fair share first, so
    /// the least loaded fill up; what nobody took by the next sweep, whatever it holds,
    /// so nothing waits long for a holder.
    pub async fn sweep(self: &Arc<Self>) {
        let unheld = match self.relay.store.unheld(self.relay.config.sweep_batch).await {
            Ok(unheld) => unheld,
            Err(e) => {
                tracing::warn!(error = %e, "sweep could not list unheld conversations");
                return;
            }
        };
        let mut room = match *self.fleet.lock().expect("fleet lock") {
            Some(m) => (fair_share(&m) + 1).saturating_sub(self.held()),
            None => usize::MAX,
        };
        let earlier = std::mem::take(&mut *self.passed_over.lock().expect("passed-over lock"));
        let mut left = HashSet::new();
        for key in unheld {
            if room > 0 || earlier.contains(&key.storage()) {
                room = room.saturating_sub(1);
                self.adopt(&key, "adopted").await;
            } else {
                left.insert(key.storage());
            }
        }
        *self.passed_over.lock().expect("passed-over lock") = left;
    }

    /// Stops every session (each releases its lease) and waits up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                held = self.held(),
                "sessions did not stop within the grace period"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second take of a conversation while one is in flight, or while it is held, is
    /// refused: only then may a refused take read our name on the record as its own.
    #[test]
    fn a_conversation_is_taken_by_one_take_at_a_time_and_never_while_held() {
        let takes = Takes::default();
        let first = takes
            .begin("a".into(), || false)
            .expect("a free conversation");
        assert!(takes.begin("a".into(), || false).is_none(), "a second take");
        assert!(
            takes.begin("b".into(), || false).is_some(),
            "another conversation"
        );
        drop(first);
        assert!(takes.begin("a".into(), || true).is_none(), "a held one");
        assert!(
            takes.begin("a".into(), || false).is_some(),
            "taken again once done"
        );
    }
}
