//! The embedded roster: a table in the shared SQLite file.

use super::{Members, Roster, RosterError};
use crate::storage::sqlite::{Db, DbError};
use crate::storage::time::now_millis;
use async_trait::async_trait;
use rusqlite::params;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS roster (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    load INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, member)
) WITHOUT ROWID;
";

#[derive(Clone)]
pub struct SqliteRoster {
    db: Db,
}

impl SqliteRoster {
    pub async fn open(db: Db) -> Result<Self, RosterError> {
        db.migrate(SCHEMA).await?;
        Ok(Self { db })
    }
}

impl From<DbError> for RosterError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            RosterError::Unavailable(e.to_string())
        } else {
            RosterError::Backend(e.to_string())
        }
    }
}

impl From<rusqlite::Error> for RosterError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::from(e).into()
    }
}

#[async_trait]
impl Roster for SqliteRoster {
    async fn heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
        load: u64,
    ) -> Result<Members, RosterError> {
        let (group, member) = (group.to_owned(), member.to_owned());
        let load = i64::try_from(load).unwrap_or(i64::MAX);
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.db
            .write(move |c| {
                let now = now_millis();
                // The departed go first, so the table holds only the living.
                c.prepare_cached("DELETE FROM roster WHERE grp = ?1 AND expires_at <= ?2")?
                    .execute(params![group, now])?;
                c.prepare_cached(
                    "INSERT INTO roster (grp, member, expires_at, load) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (grp, member)
                     DO UPDATE SET expires_at = excluded.expires_at, load = excluded.load",
                )?
                .execute(params![group, member, now.saturating_add(ttl), load])?;
                let (alive, load, least): (i64, i64, i64) = c
                    .prepare_cached(
                        "SELECT COUNT(*), COALESCE(SUM(load), 0), COALESCE(MIN(load), 0)
                         FROM roster WHERE grp = ?1",
                    )?
                    .query_row(params![group], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(Members {
                    alive: alive as usize,
                    load: load.max(0) as u64,
                    least: least.max(0) as u64,
                })
            })
            .await
    }

    async fn leave(&self, group: &str, member: &str) -> Result<(), RosterError> {
        let (group, member) = (group.to_owned(), member.to_owned());
        self.db
            .write(move |c| {
                c.prepare_cached("DELETE FROM roster WHERE grp = ?1 AND member = ?2")?
                    .execute(params![group, member])?;
                Ok(())
            })
            .await
    }
}
