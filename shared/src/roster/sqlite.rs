//! The embedded roster: a table in the shared SQLite file.

use super::{Roster, RosterError};
use crate::sqlite::{Db, DbError};
use crate::time::now_millis;
use async_trait::async_trait;
use rusqlite::params;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS roster (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
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
    ) -> Result<usize, RosterError> {
        let (group, member) = (group.to_owned(), member.to_owned());
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.db
            .write(move |c| {
                let now = now_millis();
                // The departed go first, so the table holds only the living.
                c.prepare_cached("DELETE FROM roster WHERE grp = ?1 AND expires_at <= ?2")?
                    .execute(params![group, now])?;
                c.prepare_cached(
                    "INSERT INTO roster (grp, member, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (grp, member) DO UPDATE SET expires_at = excluded.expires_at",
                )?
                .execute(params![group, member, now.saturating_add(ttl)])?;
                let alive: i64 = c
                    .prepare_cached("SELECT COUNT(*) FROM roster WHERE grp = ?1")?
                    .query_row(params![group], |r| r.get(0))?;
                Ok(alive as usize)
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
