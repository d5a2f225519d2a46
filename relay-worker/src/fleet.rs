//! The conversations this worker holds: taking leases (for a chat it just started, or one
//! whose holder died), renewing them in one loop for all sessions, sweeping for lapsed
//! ones, and handing them all back on shutdown.

use crate::Relay;
use crate::backoff::jittered;
use crate::session::{self, Outcome, SharedLease};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use waconnect_shared::CustomerAddress;
use waconnect_shared::conversation::ConversationState;
use waconnect_shared::store::{Lease, StoreError};

struct Held {
    lease: SharedLease,
    stop: CancellationToken,
}

pub struct Fleet {
    relay: Arc<Relay>,
    held: Mutex<HashMap<String, Held>>,
    tasks: TaskTracker,
    /// Cancelled at shutdown; every session's token is a child of it.
    stop: CancellationToken,
}

/// Renewals in flight at once, so thousands of leases renew in a fraction of the period.
const RENEW_CONCURRENCY: usize = 256;

impl Fleet {
    pub fn new(relay: Arc<Relay>, stop: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            relay,
            held: Mutex::default(),
            tasks: TaskTracker::new(),
            stop,
        })
    }

    pub fn held(&self) -> usize {
        self.held.lock().expect("held lock").len()
    }

    pub fn holds(&self, customer: &CustomerAddress) -> bool {
        self.held
            .lock()
            .expect("held lock")
            .contains_key(customer.as_str())
    }

    /// Takes the conversation's lease if it is free or lapsed and starts its session.
    /// `how` labels the metric: `acquired` (a chat this worker serves) or `adopted`.
    pub async fn adopt(self: &Arc<Self>, customer: &CustomerAddress, how: &'static str) {
        if let Some(lease) = self.take_lease(customer).await {
            self.start(lease, how);
        }
    }

    async fn take_lease(&self, customer: &CustomerAddress) -> Option<Lease> {
        if self.stop.is_cancelled() || self.holds(customer) {
            return None;
        }
        let config = &self.relay.config;
        match self
            .relay
            .store
            .acquire_lease(customer, &config.worker_id, config.lease)
            .await
        {
            Ok(lease) => Some(lease),
            Err(StoreError::LeaseHeld) => None,
            Err(e) => {
                tracing::warn!(customer = %customer, error = %e, "cannot take a lease");
                None
            }
        }
    }

    fn start(self: &Arc<Self>, lease: Lease, how: &'static str) {
        metrics::counter!("waconnect_relay_leases_total", "event" => how).increment(1);
        let customer = lease.customer.clone();
        let shared: SharedLease = Arc::new(Mutex::new(lease));
        let stop = self.stop.child_token();
        {
            let mut held = self.held.lock().expect("held lock");
            held.insert(
                customer.as_str().to_owned(),
                Held {
                    lease: shared.clone(),
                    stop: stop.clone(),
                },
            );
            metrics::gauge!("waconnect_relay_conversations_held").set(held.len() as f64);
        }
        // Hand-overs are what an operator looks for after a failure: at info.
        tracing::info!(customer = %customer, how, "holding conversation");
        let fleet = self.clone();
        self.tasks.spawn(async move {
            let outcome = session::hold(fleet.relay.clone(), shared, stop).await;
            {
                let mut held = fleet.held.lock().expect("held lock");
                held.remove(customer.as_str());
                metrics::gauge!("waconnect_relay_conversations_held").set(held.len() as f64);
            }
            match outcome {
                Outcome::LeaseLost => {
                    metrics::counter!("waconnect_relay_leases_total", "event" => "lost")
                        .increment(1);
                    tracing::info!(customer = %customer, "lease lost; socket dropped");
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
                    if let Ok(Some(s)) = fleet.relay.store.get(&customer).await
                        && s.conversation.state != ConversationState::Ended
                        && let Some(lease) = fleet.take_lease(&customer).await
                    {
                        fleet.start(lease, "acquired");
                    }
                }
            }
        });
    }

    /// Renews every held lease well inside its period; a refused renewal stops that
    /// session at once. Renewals run side by side, each bounded by the round's period, so
    /// one stalled call never delays the others or the next round. A lease that could not
    /// be renewed before it ran out stops its session too: another worker may adopt it.
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
            let leases: Vec<(SharedLease, CancellationToken)> = self
                .held
                .lock()
                .expect("held lock")
                .values()
                .map(|h| (h.lease.clone(), h.stop.clone()))
                .collect();
            futures_util::stream::iter(leases)
                .for_each_concurrent(RENEW_CONCURRENCY, |(shared, stop)| {
                    let relay = self.relay.clone();
                    async move {
                        let lease = shared.lock().expect("lease lock").clone();
                        let renewal = relay.store.renew_lease(&lease, relay.config.lease);
                        match tokio::time::timeout(period, renewal).await {
                            Ok(Ok(renewed)) => *shared.lock().expect("lease lock") = renewed,
                            Ok(Err(StoreError::LeaseLost | StoreError::NotFound)) => stop.cancel(),
                            Ok(Err(e)) => {
                                tracing::warn!(customer = %lease.customer, error = %e, "lease renewal failed; will retry");
                            }
                            Err(_) => {
                                tracing::warn!(customer = %lease.customer, "lease renewal got no answer in time; will retry");
                            }
                        }
                        if shared.lock().expect("lease lock").expires_at <= chrono::Utc::now() {
                            tracing::warn!(customer = %lease.customer, "lease ran out before it could be renewed; letting go");
                            stop.cancel();
                        }
                    }
                })
                .await;
        }
    }

    /// Adopts conversations nobody holds (their worker died or let go), a bounded batch
    /// at a time, at jittered intervals so a fleet does not stampede.
    pub async fn sweep_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(jittered(self.relay.config.sweep_interval)) => {}
            }
            self.sweep().await;
        }
    }

    pub async fn sweep(self: &Arc<Self>) {
        match self.relay.store.unheld(self.relay.config.sweep_batch).await {
            Ok(unheld) => {
                for customer in unheld {
                    self.adopt(&customer, "adopted").await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweep could not list unheld conversations"),
        }
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
