//! The delivery ledger: which outbound parts have reached Twilio. Twilio's Messages API
//! has no idempotency key, so the sender claims a part here before posting it and records
//! the SID after; a part whose claim is older than this attempt had an unknown outcome
//! (the sender died, or the call timed out) and is reconciled against Twilio before any
//! second send.

pub mod dynamodb;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody has tried this part: send it. `since` is the claim's time, what
    /// [`DeliveryLedger::renew`] fences with.
    Fresh { since: DateTime<Utc> },
    /// An earlier attempt claimed it at `since` and never recorded an outcome.
    Unknown { since: DateTime<Utc> },
    /// Twilio accepted it already.
    Sent { sid: String },
}

/// The time (Unix milliseconds) a renewal of the claim made at `since` gives it: now, and
/// strictly later than `since`, so a renewal within the same millisecond still changes
/// the claim that another delivery's renewal is conditioned on.
fn renewed_at(since: DateTime<Utc>) -> i64 {
    crate::storage::time::now_millis().max(since.timestamp_millis() + 1)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("delivery ledger unavailable: {0}")]
    Unavailable(String),
    #[error("delivery ledger backend error: {0}")]
    Backend(String),
}

#[async_trait]
pub trait DeliveryLedger: Send + Sync + 'static {
    /// Claims `key` for a send now, or says what an earlier attempt left.
    async fn claim(&self, key: &str) -> Result<Claim, LedgerError>;

    /// Moves the claim on `key` made at `since` to now, if it is still that claim with no
    /// outcome: answers the new claim time, or `None` if the claim changed meanwhile
    /// (recorded, released, or renewed by another delivery). A sender renews its own claim
    /// before it posts, and a delivery that found a claim too old to be in flight renews
    /// it before acting on it: of two deliveries, only one can post, however long either
    /// of them was stalled in between.
    async fn renew(
        &self,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError>;

    /// What was recorded for `key` (its SID or other outcome), without claiming it.
    async fn outcome(&self, key: &str) -> Result<Option<String>, LedgerError>;

    /// Twilio accepted the part as `sid`.
    async fn sent(&self, key: &str, sid: &str) -> Result<(), LedgerError>;

    /// The attempt failed with a definite answer (nothing was sent): forget the claim.
    async fn release(&self, key: &str) -> Result<(), LedgerError>;

    /// Which of `sids` (Twilio message SIDs) are recorded as some part's, and whose (sid
    /// → key): a message found at Twilio that another part owns can never prove this
    /// one was sent.
    async fn owned(&self, sids: &[String]) -> Result<HashMap<String, String>, LedgerError>;

    /// Forgets entries older than `before` (the queue's dedup window has long passed).
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, LedgerError>;
}
