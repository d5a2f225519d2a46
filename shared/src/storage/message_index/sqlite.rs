//! The embedded message index: a table in the shared SQLite file.

use super::{Author, IndexError, IndexedMessage, MessageIndex};
use crate::ConversationKey;
use crate::storage::sqlite::{Db, DbError};
use crate::storage::time::from_millis;
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

/// Databases from before entries named their conversation gain the column (entries
/// already there keep an empty one, and age out with the retention).
const CONVERSATION_COLUMN: &str = "
ALTER TABLE messages ADD COLUMN conversation TEXT NOT NULL DEFAULT '';
";
const CONVERSATION_INDEX: &str = "
CREATE INDEX IF NOT EXISTS messages_conversation ON messages (conversation);
";

const COLUMNS: &str = "sid, connect_id, author, excerpt, at, conversation";

#[derive(Clone)]
pub struct SqliteMessageIndex {
    db: Db,
}

impl SqliteMessageIndex {
    pub async fn open(db: Db) -> Result<Self, IndexError> {
        db.migrate(SCHEMA).await?;
        db.write(|c| {
            let has_column = c
                .prepare("SELECT 1 FROM pragma_table_info('messages') WHERE name = 'conversation'")?
                .exists([])?;
            if !has_column {
                c.execute_batch(CONVERSATION_COLUMN)?;
            }
            c.execute_batch(CONVERSATION_INDEX)?;
            Ok::<_, IndexError>(())
        })
        .await?;
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
                            conversation: r.get(5)?,
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
                    "INSERT OR REPLACE INTO messages ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ))?
                .execute(params![
                    m.sid,
                    m.connect_id,
                    m.author.as_str(),
                    m.excerpt,
                    m.at.timestamp_millis(),
                    m.conversation
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

    async fn forget_conversation(&self, conversation: &ConversationKey) -> Result<u64, IndexError> {
        let conversation = conversation.storage();
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached("DELETE FROM messages WHERE conversation = ?1")?
                    .execute(params![conversation])?;
                Ok(n as u64)
            })
            .await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::Synchronous;

    /// A database from before entries named their conversation: the column is added, the
    /// old entries read with an empty one, and new ones can be forgotten by conversation.
    #[tokio::test]
    async fn an_older_database_gains_the_conversation_column() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_path(&dir.path().join("old.db"), Synchronous::Normal)
            .await
            .unwrap();
        db.write(|c| {
            c.execute_batch(SCHEMA)?;
            c.execute(
                "INSERT INTO messages (sid, connect_id, author, excerpt, at)
                 VALUES ('SMold', 'item-old', 'customer', 'old words', 1)",
                [],
            )?;
            Ok::<_, IndexError>(())
        })
        .await
        .unwrap();
        let index = SqliteMessageIndex::open(db.clone()).await.unwrap();
        // Opening twice (every process does) finds the column there.
        SqliteMessageIndex::open(db).await.unwrap();
        let old = index.by_sid("SMold").await.unwrap().unwrap();
        assert_eq!(
            (old.excerpt.as_str(), old.conversation.as_str()),
            ("old words", "")
        );
        let key = ConversationKey::parse_storage("whatsapp:+15550000001").unwrap();
        index
            .remember(IndexedMessage::new(
                &key,
                "SMnew",
                "item-new",
                Author::Agent,
                "hi",
            ))
            .await
            .unwrap();
        assert_eq!(index.forget_conversation(&key).await.unwrap(), 1);
        assert!(index.by_sid("SMold").await.unwrap().is_some());
    }
}
