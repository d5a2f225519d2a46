//! The roster contract: which processes are alive in a group right now, so a limit that
//! holds for the whole fleet (a WhatsApp sender's messages per second) can be shared out
//! among them, however many replicas run.
//!
//! * A member is alive until its last heartbeat's `ttl` runs out, or it leaves.
//! * A heartbeat says how many members of the group are alive, itself included.
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

#[async_trait]
pub trait Roster: Send + Sync + 'static {
    /// Records `member` as alive in `group` for `ttl` from now; returns how many members
    /// of `group` are alive now, `member` included.
    async fn heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
    ) -> Result<usize, RosterError>;

    /// Takes `member` out of `group` at once (a graceful stop).
    async fn leave(&self, group: &str, member: &str) -> Result<(), RosterError>;
}
