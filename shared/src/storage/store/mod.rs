//! The conversation-store contract: the conversation table with conditional writes and
//! leases.
//!
//! * Every data write bumps the record's `version`; [`ConversationStore::update`] succeeds
//!   only against the version the caller read (optimistic concurrency). Lease changes do
//!   not touch it, so renewals never make other workers' data writes conflict.
//! * A lease names the one worker that holds a conversation's websocket. It is acquired
//!   only if free or lapsed, renewed and released only by its holder presenting the
//!   current fencing `lease.version`, which rises on every lease change. A worker whose
//!   renewal is refused has lost the lease and must stop acting for the conversation.
//! * [`ConversationStore::unheld`] lists live conversations nobody holds (lapsed or
//!   released leases) for the sweepers to adopt. Expiry is always compared in the
//!   condition itself; nothing relies on TTL deletion.

pub mod dynamodb;
pub mod modify;
pub mod sqlite;

pub use modify::{Fence, Modified, acquire, modify, release, renew};

use crate::message::conversation::{Conversation, ConversationKey};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// A conversation as stored: the record plus its version and lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConversation {
    pub conversation: Conversation,
    pub version: u64,
    pub lease: LeaseState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    pub owner: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Fencing version: rises on every acquire, renew and release.
    pub version: u64,
}

/// Proof of holding a conversation's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: ConversationKey,
    pub owner: String,
    pub version: u64,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("conversation already exists")]
    AlreadyExists,
    #[error("conversation not found")]
    NotFound,
    /// The record changed since it was read.
    #[error("version conflict")]
    Conflict,
    /// Someone else holds the lease (or it was never acquired).
    #[error("lease is held by another worker")]
    LeaseHeld,
    /// The presented lease is no longer current: it lapsed, or another worker took it.
    #[error("lease lost")]
    LeaseLost,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store backend error: {0}")]
    Backend(String),
}

#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    async fn get(&self, key: &ConversationKey) -> Result<Option<StoredConversation>, StoreError>;

    /// Creates the record; [`StoreError::AlreadyExists`] if the key has one (a lost
    /// race: read it and use the winner's).
    async fn insert(&self, conversation: &Conversation) -> Result<StoredConversation, StoreError>;

    /// Replaces the record if its version is still `expected_version`. The lease is untouched.
    async fn update(
        &self,
        conversation: &Conversation,
        expected_version: u64,
    ) -> Result<StoredConversation, StoreError>;

    /// Replaces the record if `lease` is still the current, unexpired lease and the
    /// version is still `expected_version`: the write a lease holder makes (e.g. advancing
    /// the agent cursor) and a deposed one cannot. A lost lease is reported as
    /// [`StoreError::LeaseLost`] even when the version moved too.
    async fn update_fenced(
        &self,
        conversation: &Conversation,
        expected_version: u64,
        lease: &Lease,
    ) -> Result<StoredConversation, StoreError>;

    /// Takes the lease for `owner` if it is free or lapsed.
    async fn acquire_lease(
        &self,
        key: &ConversationKey,
        owner: &str,
        duration: Duration,
    ) -> Result<Lease, StoreError>;

    /// Extends a lease still held; returns it with its new fencing version.
    async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<Lease, StoreError>;

    /// Renews each of `leases` as [`ConversationStore::renew_lease`] does, answering for
    /// each in order. An engine that can do many in one round trip does (SQLite: one job
    /// for its database thread); the default renews them side by side.
    async fn renew_leases(
        &self,
        leases: &[Lease],
        duration: Duration,
    ) -> Vec<Result<Lease, StoreError>> {
        futures_util::future::join_all(leases.iter().map(|l| self.renew_lease(l, duration))).await
    }

    /// Gives the lease up so another worker can adopt the conversation at once.
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Deletes the record whatever its state and lease (an erasure request): a holder's
    /// next write or renewal finds it gone and stops. True if there was one.
    async fn erase(&self, key: &ConversationKey) -> Result<bool, StoreError>;

    /// The keys of live (not ended) conversations whose lease is free or lapsed,
    /// oldest expiry first: keys only, so the index behind it need not copy the records
    /// (and their tokens) on every renewal.
    async fn unheld(&self, limit: usize) -> Result<Vec<ConversationKey>, StoreError>;

    /// Live conversations whose lease holder's name starts with `owner_prefix`, however
    /// long their leases still run: what a restarted worker with the same identity held
    /// before it died.
    async fn held_by(
        &self,
        owner_prefix: &str,
        limit: usize,
    ) -> Result<Vec<ConversationKey>, StoreError>;

    /// Takes the lease as [`ConversationStore::acquire_lease`] does, and also — at once,
    /// whatever its expiry — from a holder whose name starts with `predecessor` (this
    /// worker's earlier life). The fencing version rises, so a predecessor that still
    /// lives loses it at its next renewal.
    async fn take_over(
        &self,
        key: &ConversationKey,
        predecessor: &str,
        owner: &str,
        duration: Duration,
    ) -> Result<Lease, StoreError>;

    /// Deletes ended conversations whose `ttl` has passed and that nobody holds; returns
    /// how many. An engine whose storage deletes expired items itself (DynamoDB's TTL)
    /// does nothing here.
    async fn prune_expired(&self) -> Result<u64, StoreError>;
}

pub(crate) fn lease_millis(duration: Duration) -> Result<i64, StoreError> {
    if duration.is_zero() || duration > Duration::from_secs(24 * 3600) {
        return Err(StoreError::InvalidArgument(
            "lease duration must be between 1 ms and 24 h".into(),
        ));
    }
    Ok(duration.as_millis() as i64)
}

/// An owner prefix must name someone: an empty one would match every holder.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Err(StoreError::InvalidArgument("owner prefix is empty".into()));
    }
    Ok(())
}

/// The lease length in milliseconds, if `owner` may take a lease for `duration`.
pub(crate) fn acquisition(owner: &str, duration: Duration) -> Result<i64, StoreError> {
    let length = lease_millis(duration)?;
    if owner.is_empty() {
        return Err(StoreError::InvalidArgument("lease owner is empty".into()));
    }
    Ok(length)
}

/// A fenced write names its own conversation's lease.
pub(crate) fn check_fence(conversation: &Conversation, lease: &Lease) -> Result<(), StoreError> {
    if conversation.key() != lease.key {
        return Err(StoreError::InvalidArgument(
            "the lease is for another conversation".into(),
        ));
    }
    Ok(())
}

/// Why a fenced write was refused: a lost lease outranks a stale read, because the caller
/// must stop rather than retry.
pub(crate) fn fence_refusal(
    stored: &StoredConversation,
    owner: &str,
    version: u64,
    now: i64,
) -> StoreError {
    let lost = stored.lease.owner.as_deref() != Some(owner)
        || stored.lease.version != version
        || stored
            .lease
            .expires_at
            .is_none_or(|at| at.timestamp_millis() <= now);
    if lost {
        StoreError::LeaseLost
    } else {
        StoreError::Conflict
    }
}
