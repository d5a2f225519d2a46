//! The embedded message index: a table in the shared SQLite file.

use super::{Author, IndexError, IndexedMessage, MessageIndex};
use crate::sqlite::{Db, DbError};
use crate::time::from_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    sid TEXT NOT NULL,
    connect_id TEXT NOT NULL,
    author TEXT NOT NULL,
    excerpt TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (sid, connect_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_connect_id ON messages (connect_id);
CREATE INDEX IF NOT EXISTS messages_at ON messages (at);
";

const COLUMNS: &str = "sid, connect_id, author, excerpt, at";

#[derive(Clone)]
pub struct SqliteMessageIndex {
    db: Db,
}

impl SqliteMessageIndex {
    pub async fn open(db: Db) -> Result<Self, IndexError> {
        db.migrate(SCHEMA).await?;
        Ok(Self { db })
    }

    async fn one(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<IndexedMessage>, IndexError> {
        let value = value.to_owned();
        self.db
            .read(move |c| {
                let found = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM messages WHERE {column} = ?1 ORDER BY at DESC LIMIT 1"
                    ))?
                    .query_row(params![value], |r| {
                        Ok(IndexedMessage {
                            sid: r.get(0)?,
                            connect_id: r.get(1)?,
                            author: Author::parse(&r.get::<_, String>(2)?)
                                .unwrap_or(Author::Customer),
                            excerpt: r.get(3)?,
                            at: from_millis(r.get(4)?),
                        })
                    })
                    .optional()?;
                Ok(found)
            })
            .await
    }
}

impl From<DbError> for IndexError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            IndexError::Unavailable(e.to_string())
        } else {
            IndexError::Backend(e.to_string())
        }
    }
}

impl From<rusqlite::Error> for IndexError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::from(e).into()
    }
}

#[async_trait]
impl MessageIndex for SqliteMessageIndex {
    async fn remember(&self, m: IndexedMessage) -> Result<(), IndexError> {
        self.db
            .write(move |c| {
                c.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO messages ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
                ))?
                .execute(params![
                    m.sid,
                    m.connect_id,
                    m.author.as_str(),
                    m.excerpt,
                    m.at.timestamp_millis()
                ])?;
                Ok(())
            })
            .await
    }

    async fn by_sid(&self, sid: &str) -> Result<Option<IndexedMessage>, IndexError> {
        self.one("sid", sid).await
    }

    async fn by_connect_id(&self, id: &str) -> Result<Option<IndexedMessage>, IndexError> {
        self.one("connect_id", id).await
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, IndexError> {
        let before = before.timestamp_millis();
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached("DELETE FROM messages WHERE at < ?1")?
                    .execute(params![before])?;
                Ok(n as u64)
            })
            .await
    }
}
