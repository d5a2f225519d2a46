//! The roster contract: which processes are alive in a group right now, so a limit that
//! holds for the whole fleet (a WhatsApp sender's messages per second) can be shared out
//! among them, however many replicas run.
//!
//! * A member is alive until its last heartbeat's `ttl` runs out, or it leaves.
//! * A heartbeat carries the member's load (what it holds: conversations, say) and says
//!   how many members of the group are alive, itself included, and their total load.
//!
//! Engines: [`sqlite::SqliteRoster`] and [`dynamodb::DynamoRoster`]; one contract suite in
//! `waconnect-tests` runs against both.

pub mod dynamodb;
pub mod sqlite;

use async_trait::async_trait;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    #[error("roster unavailable: {0}")]
    Unavailable(String),
    #[error("roster backend error: {0}")]
    Backend(String),
}

/// A group as a heartbeat finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Members {
    /// Members alive, the one beating included.
    pub alive: usize,
    /// Their loads, added up.
    pub load: u64,
    /// The smallest load among them.
    pub least: u64,
}

#[async_trait]
pub trait Roster: Send + Sync + 'static {
    /// Records `member` as alive in `group` for `ttl` from now, carrying `load`; returns
    /// the group's living members.
    async fn heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
        load: u64,
    ) -> Result<Members, RosterError>;

    /// Takes `member` out of `group` at once (a graceful stop).
    async fn leave(&self, group: &str, member: &str) -> Result<(), RosterError>;
}
