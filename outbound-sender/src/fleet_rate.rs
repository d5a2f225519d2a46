//! A WhatsApp sender's rate holds for the whole fleet: `WACONNECT_SENDER_RATE` is the
//! number's limit however many outbound-senders run. Each process keeps itself on the
//! roster of its sender number and takes an equal share of the rate, re-reckoned at every
//! heartbeat; a process that dies drops off within [`TTL`], one that stops gracefully at
//! once. Cost: a heartbeat (on AWS one PutItem and one Query) per process every
//! [`HEARTBEAT`], whatever the traffic.
//!
//! While the fleet changes, those who have not yet heard keep their old share for up to
//! one heartbeat: a process that starts beside others, or a restarted one whose old self
//! is still on the roster, errs the other way (its share is smaller than it will be).
//! What slips over the limit in that moment WhatsApp refuses with 63018, which the relay
//! sends again.

use crate::ratelimit::RateLimiter;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use waconnect_shared::storage::roster::Roster;

pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A member that missed this many heartbeats' worth of time is gone.
pub const TTL: Duration = Duration::from_secs(15);

pub struct FleetRate {
    pub roster: Arc<dyn Roster>,
    /// `sender#<From or Messaging Service>`.
    pub group: String,
    pub member: String,
    /// The sender number's whole rate, messages per second.
    pub total: f64,
}

impl FleetRate {
    /// Joins the roster and sets `limiter` to this process's share; true if the roster
    /// answered (else the limiter keeps what it had).
    pub async fn beat(&self, limiter: &RateLimiter) -> bool {
        match self
            .roster
            .heartbeat(&self.group, &self.member, TTL, 0)
            .await
        {
            Ok(members) => {
                let alive = members.alive;
                let share = self.total / alive.max(1) as f64;
                limiter.set_rate(share);
                metrics::gauge!("waconnect_sender_rate_share").set(share);
                metrics::gauge!("waconnect_sender_fleet_size").set(alive as f64);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the sender roster; keeping the current share");
                false
            }
        }
    }

    /// Beats every [`HEARTBEAT`] until `stop`, then leaves the roster so the others take
    /// the share at their next beat.
    pub async fn run(self, limiter: Arc<RateLimiter>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
            self.beat(&limiter).await;
        }
        if let Err(e) = self.roster.leave(&self.group, &self.member).await {
            tracing::warn!(error = %e, "cannot leave the sender roster; the others wait for it to lapse");
        }
    }
}
