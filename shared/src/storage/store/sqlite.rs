//! The embedded store engine: the conversation table in the shared SQLite file. The record
//! is JSON; lease columns sit beside it so conditions compare them directly.

use super::{
    ConversationStore, Lease, LeaseState, StoreError, StoredConversation, acquisition, check_fence,
    check_prefix, fence_refusal, lease_millis,
};
use crate::message::conversation::Conversation;
use crate::message::conversation::ConversationKey;
use crate::storage::sqlite::{Db, DbError};
use crate::storage::time::{from_millis, now_millis};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS conversations (
    -- The conversation key (ConversationKey::storage): `<business>|<customer>`, or the
    -- customer alone in records written before routing, which keep working as they are.
    customer TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    state TEXT NOT NULL,
    lease_owner TEXT,
    lease_expires_at INTEGER NOT NULL DEFAULT 0,
    lease_version INTEGER NOT NULL DEFAULT 0,
    ttl INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_unheld
    ON conversations (lease_expires_at) WHERE state != 'ended';
CREATE INDEX IF NOT EXISTS conversations_expiry
    ON conversations (ttl) WHERE state = 'ended';
";

#[derive(Clone)]
pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    pub async fn open(db: Db) -> Result<Self, StoreError> {
        db.migrate(SCHEMA).await?;
        Ok(Self { db })
    }

    /// Takes the lease if it is free or lapsed, or held by a name `predecessor` starts.
    async fn acquire(
        &self,
        key: &ConversationKey,
        owner: &str,
        duration: Duration,
        predecessor: Option<&str>,
    ) -> Result<Lease, StoreError> {
        let length = acquisition(owner, duration)?;
        let key = key.storage();
        let owner = owner.to_owned();
        let predecessor = predecessor.map(str::to_owned);
        self.db
            .write(move |c| {
                let now = now_millis();
                conditional(
                    c,
                    &key,
                    "UPDATE conversations SET lease_owner = ?2, lease_expires_at = ?3,
                           lease_version = lease_version + 1
                         WHERE customer = ?1 AND (lease_owner IS NULL OR lease_expires_at <= ?4
                           OR (?5 IS NOT NULL AND substr(lease_owner, 1, length(?5)) = ?5))",
                    params![key, owner, now + length, now, predecessor],
                    StoreError::LeaseHeld,
                )
                .map(|s| lease_of(&s))
            })
            .await
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Backend(e.to_string())
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::from(e).into()
    }
}

const COLUMNS: &str = "record, version, lease_owner, lease_expires_at, lease_version";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, i64, Option<String>, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn stored(row: (String, i64, Option<String>, i64, i64)) -> Result<StoredConversation, StoreError> {
    let (record, version, owner, expires_at, lease_version) = row;
    let conversation: Conversation = serde_json::from_str(&record)
        .map_err(|e| StoreError::Backend(format!("corrupt conversation record: {e}")))?;
    Ok(StoredConversation {
        conversation,
        version: version as u64,
        lease: LeaseState {
            expires_at: owner.as_ref().map(|_| from_millis(expires_at)),
            owner,
            version: lease_version as u64,
        },
    })
}

fn load(c: &Connection, customer: &str) -> Result<Option<StoredConversation>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM conversations WHERE customer = ?1"
    ))?
    .query_row(params![customer], read_row)
    .optional()?
    .map(stored)
    .transpose()
}

fn encode(conversation: &Conversation) -> Result<String, StoreError> {
    serde_json::to_string(conversation)
        .map_err(|e| StoreError::Backend(format!("cannot encode conversation: {e}")))
}

/// After a conditional update matched nothing: tells apart a missing record from a
/// failed condition.
fn missing_or(c: &Connection, customer: &str, otherwise: StoreError) -> StoreError {
    match load(c, customer) {
        Ok(None) => StoreError::NotFound,
        Ok(Some(_)) => otherwise,
        Err(e) => e,
    }
}

/// Renews one lease until `now + length`. No record read back: what a renewal changes is
/// known (version + 1, the new expiry); at idle, reading each record back (its JSON
/// parsed) was a large part of a worker's CPU.
fn renew_one(c: &Connection, lease: &Lease, now: i64, length: i64) -> Result<Lease, StoreError> {
    let key = lease.key.storage();
    let changed = c
        .prepare_cached(
            "UPDATE conversations SET lease_expires_at = ?2, lease_version = lease_version + 1
             WHERE customer = ?1 AND lease_owner = ?3 AND lease_version = ?4
               AND lease_expires_at > ?5",
        )?
        .execute(params![
            key,
            now + length,
            lease.owner,
            lease.version as i64,
            now
        ])?;
    if changed == 0 {
        return Err(missing_or(c, &key, StoreError::LeaseLost));
    }
    Ok(Lease {
        version: lease.version + 1,
        expires_at: from_millis(now + length),
        ..lease.clone()
    })
}

/// Runs a conditional UPDATE of one conversation and returns the row as it is now. When it
/// matches nothing, tells a missing record apart from a failed condition (`otherwise`).
fn conditional(
    c: &Connection,
    key: &str,
    sql: &str,
    params: impl rusqlite::Params,
    otherwise: StoreError,
) -> Result<StoredConversation, StoreError> {
    if c.prepare_cached(sql)?.execute(params)? == 0 {
        return Err(missing_or(c, key, otherwise));
    }
    load(c, key)?.ok_or(StoreError::NotFound)
}

/// Conversation keys as stored, parsed.
fn keys(rows: &[String]) -> Result<Vec<ConversationKey>, StoreError> {
    rows.iter()
        .map(|key| {
            ConversationKey::parse_storage(key)
                .map_err(|e| StoreError::Backend(format!("stored conversation key: {e}")))
        })
        .collect()
}

fn lease_of(s: &StoredConversation) -> Lease {
    Lease {
        key: s.conversation.key(),
        owner: s.lease.owner.clone().unwrap_or_default(),
        version: s.lease.version,
        expires_at: s.lease.expires_at.unwrap_or_default(),
    }
}

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn get(&self, key: &ConversationKey) -> Result<Option<StoredConversation>, StoreError> {
        let key = key.storage();
        self.db.read(move |c| load(c, &key)).await
    }

    async fn insert(&self, conversation: &Conversation) -> Result<StoredConversation, StoreError> {
        let key = conversation.key().storage();
        let record = encode(conversation)?;
        let state = conversation.state.as_str();
        let ttl = conversation.ttl;
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "INSERT INTO conversations (customer, version, record, state, ttl)
                         VALUES (?1, 1, ?2, ?3, ?4) ON CONFLICT (customer) DO NOTHING",
                    )?
                    .execute(params![key, record, state, ttl])?;
                if n == 0 {
                    return Err(StoreError::AlreadyExists);
                }
                load(c, &key)?.ok_or(StoreError::NotFound)
            })
            .await
    }

    async fn update(
        &self,
        conversation: &Conversation,
        expected_version: u64,
    ) -> Result<StoredConversation, StoreError> {
        let key = conversation.key().storage();
        let record = encode(conversation)?;
        let state = conversation.state.as_str();
        let ttl = conversation.ttl;
        self.db
            .write(move |c| {
                conditional(
                    c,
                    &key,
                    "UPDATE conversations SET record = ?2, state = ?3, ttl = ?4,
                           version = version + 1
                         WHERE customer = ?1 AND version = ?5",
                    params![key, record, state, ttl, expected_version as i64],
                    StoreError::Conflict,
                )
            })
            .await
    }

    async fn update_fenced(
        &self,
        conversation: &Conversation,
        expected_version: u64,
        lease: &Lease,
    ) -> Result<StoredConversation, StoreError> {
        check_fence(conversation, lease)?;
        let key = conversation.key().storage();
        let record = encode(conversation)?;
        let state = conversation.state.as_str();
        let ttl = conversation.ttl;
        let owner = lease.owner.clone();
        let lease_version = lease.version as i64;
        self.db
            .write(move |c| {
                let now = now_millis();
                let changed = c
                    .prepare_cached(
                        "UPDATE conversations SET record = ?2, state = ?3, ttl = ?4,
                               version = version + 1
                             WHERE customer = ?1 AND version = ?5 AND lease_owner = ?6
                               AND lease_version = ?7 AND lease_expires_at > ?8",
                    )?
                    .execute(params![
                        key,
                        record,
                        state,
                        ttl,
                        expected_version as i64,
                        owner,
                        lease_version,
                        now
                    ])?;
                match load(c, &key)? {
                    None => Err(StoreError::NotFound),
                    Some(stored) if changed == 1 => Ok(stored),
                    Some(stored) => Err(fence_refusal(&stored, &owner, lease_version as u64, now)),
                }
            })
            .await
    }

    async fn acquire_lease(
        &self,
        key: &ConversationKey,
        owner: &str,
        duration: Duration,
    ) -> Result<Lease, StoreError> {
        self.acquire(key, owner, duration, None).await
    }

    async fn take_over(
        &self,
        key: &ConversationKey,
        predecessor: &str,
        owner: &str,
        duration: Duration,
    ) -> Result<Lease, StoreError> {
        check_prefix(predecessor)?;
        self.acquire(key, owner, duration, Some(predecessor)).await
    }

    async fn held_by(
        &self,
        owner_prefix: &str,
        limit: usize,
    ) -> Result<Vec<ConversationKey>, StoreError> {
        check_prefix(owner_prefix)?;
        let prefix = owner_prefix.to_owned();
        self.db
            .read(move |c| {
                let rows = c
                    .prepare_cached(
                        "SELECT customer FROM conversations
                         WHERE state != 'ended' AND lease_expires_at > ?1
                           AND substr(lease_owner, 1, length(?2)) = ?2
                         ORDER BY lease_expires_at LIMIT ?3",
                    )?
                    .query_map(params![now_millis(), prefix, limit as i64], |r| {
                        r.get::<_, String>(0)
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                keys(&rows)
            })
            .await
    }

    async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<Lease, StoreError> {
        let mut answers = self
            .renew_leases(std::slice::from_ref(lease), duration)
            .await;
        answers.pop().unwrap_or(Err(StoreError::NotFound))
    }

    /// One job for the database thread, however many leases: a worker renews ten
    /// thousand every few seconds, and a job each (a closure, a channel send, a task woken
    /// by its answer) was a large part of its idle CPU.
    async fn renew_leases(
        &self,
        leases: &[Lease],
        duration: Duration,
    ) -> Vec<Result<Lease, StoreError>> {
        let length = match lease_millis(duration) {
            Ok(length) => length,
            Err(e) => return vec![Err(e); leases.len()],
        };
        let count = leases.len();
        let leases = leases.to_vec();
        let renewed = self
            .db
            .write(move |c| {
                let now = now_millis();
                Ok(leases
                    .iter()
                    .map(|lease| renew_one(c, lease, now, length))
                    .collect::<Vec<_>>())
            })
            .await;
        renewed.unwrap_or_else(|e: StoreError| vec![Err(e); count])
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let key = lease.key.storage();
        let owner = lease.owner.clone();
        let lease_version = lease.version as i64;
        self.db
            .write(move |c| {
                conditional(
                    c,
                    &key,
                    "UPDATE conversations SET lease_owner = NULL, lease_expires_at = 0,
                           lease_version = lease_version + 1
                         WHERE customer = ?1 AND lease_owner = ?2 AND lease_version = ?3",
                    params![key, owner, lease_version],
                    StoreError::LeaseLost,
                )
                .map(|_| ())
            })
            .await
    }

    async fn erase(&self, key: &ConversationKey) -> Result<bool, StoreError> {
        let key = key.storage();
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached("DELETE FROM conversations WHERE customer = ?1")?
                    .execute(params![key])?;
                Ok(n > 0)
            })
            .await
    }

    async fn unheld(&self, limit: usize) -> Result<Vec<ConversationKey>, StoreError> {
        self.db
            .read(move |c| {
                let rows = c
                    .prepare_cached(
                        "SELECT customer FROM conversations
                         WHERE state != 'ended' AND lease_expires_at <= ?1
                         ORDER BY lease_expires_at LIMIT ?2",
                    )?
                    .query_map(params![now_millis(), limit as i64], |r| {
                        r.get::<_, String>(0)
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                keys(&rows)
            })
            .await
    }

    async fn prune_expired(&self) -> Result<u64, StoreError> {
        self.db
            .write(move |c| {
                let now = now_millis();
                let n = c
                    .prepare_cached(
                        "DELETE FROM conversations
                         WHERE state = 'ended' AND ttl < ?1 AND lease_expires_at <= ?2",
                    )?
                    .execute(params![now / 1000, now])?;
                Ok(n as u64)
            })
            .await
    }
}
