//! The embedded delivery ledger: a table in the shared SQLite file.

use super::{Claim, DeliveryLedger, LedgerError};
use crate::storage::sqlite::{Db, DbError};
use crate::storage::time::{from_millis, now_millis};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY,
    sid TEXT,
    claimed_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_claimed ON deliveries (claimed_at);
CREATE INDEX IF NOT EXISTS deliveries_sid ON deliveries (sid) WHERE sid IS NOT NULL;
";

#[derive(Clone)]
pub struct SqliteLedger {
    db: Db,
}

impl SqliteLedger {
    pub async fn open(db: Db) -> Result<Self, LedgerError> {
        db.migrate(SCHEMA).await?;
        Ok(Self { db })
    }
}

impl From<DbError> for LedgerError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            LedgerError::Unavailable(e.to_string())
        } else {
            LedgerError::Backend(e.to_string())
        }
    }
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::from(e).into()
    }
}

#[async_trait]
impl DeliveryLedger for SqliteLedger {
    async fn claim(&self, key: &str) -> Result<Claim, LedgerError> {
        let key = key.to_owned();
        self.db
            .write(move |c| {
                let existing: Option<(Option<String>, i64)> = c
                    .prepare_cached("SELECT sid, claimed_at FROM deliveries WHERE key = ?1")?
                    .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                Ok(match existing {
                    Some((Some(sid), _)) => Claim::Sent { sid },
                    Some((None, at)) => Claim::Unknown {
                        since: from_millis(at),
                    },
                    None => {
                        let now = now_millis();
                        c.prepare_cached(
                            "INSERT INTO deliveries (key, claimed_at) VALUES (?1, ?2)",
                        )?
                        .execute(params![key, now])?;
                        Claim::Fresh {
                            since: from_millis(now),
                        }
                    }
                })
            })
            .await
    }

    async fn renew(
        &self,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let key = key.to_owned();
        self.db
            .write(move |c| {
                let now = super::renewed_at(since);
                let changed = c
                    .prepare_cached(
                        "UPDATE deliveries SET claimed_at = ?3
                         WHERE key = ?1 AND sid IS NULL AND claimed_at = ?2",
                    )?
                    .execute(params![key, since.timestamp_millis(), now])?;
                Ok((changed == 1).then(|| from_millis(now)))
            })
            .await
    }

    async fn outcome(&self, key: &str) -> Result<Option<String>, LedgerError> {
        let key = key.to_owned();
        self.db
            .read(move |c| {
                Ok(
                    c.prepare_cached("SELECT sid FROM deliveries WHERE key = ?1")?
                        .query_row(params![key], |r| r.get::<_, Option<String>>(0))
                        .optional()?
                        .flatten(),
                )
            })
            .await
    }

    async fn sent(&self, key: &str, sid: &str) -> Result<(), LedgerError> {
        let (key, sid) = (key.to_owned(), sid.to_owned());
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO deliveries (key, sid, claimed_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET sid = excluded.sid",
                )?
                .execute(params![key, sid, now_millis()])?;
                Ok(())
            })
            .await
    }

    async fn release(&self, key: &str) -> Result<(), LedgerError> {
        let key = key.to_owned();
        self.db
            .write(move |c| {
                c.prepare_cached("DELETE FROM deliveries WHERE key = ?1 AND sid IS NULL")?
                    .execute(params![key])?;
                Ok(())
            })
            .await
    }

    async fn owned(&self, sids: &[String]) -> Result<HashMap<String, String>, LedgerError> {
        let sids = sids.to_vec();
        self.db
            .read(move |c| {
                let mut owned = HashMap::new();
                let mut lookup =
                    c.prepare_cached("SELECT key FROM deliveries WHERE sid = ?1 LIMIT 1")?;
                for sid in &sids {
                    if let Some(key) = lookup
                        .query_row(params![sid], |r| r.get::<_, String>(0))
                        .optional()?
                    {
                        owned.insert(sid.clone(), key);
                    }
                }
                Ok(owned)
            })
            .await
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, LedgerError> {
        let before = before.timestamp_millis();
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached("DELETE FROM deliveries WHERE claimed_at < ?1")?
                    .execute(params![before])?;
                Ok(n as u64)
            })
            .await
    }
}
