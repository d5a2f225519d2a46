//! The AWS message index: each entry is written twice in the DynamoDB table, as
//! `msg#<sid>` and `msgc#<item id>`, so either side's id finds it with one GetItem.
//! Nothing on a message's path waits for the write, so entries share BatchWriteItems:
//! they linger up to [`LINGER`] for company. TTL removes them after the retention; both
//! carry their conversation (`conv`), so an erasure finds them through the table's
//! conversation index.

use super::{Author, IndexError, IndexedMessage, MessageIndex};
use crate::ConversationKey;
use crate::service::aws::CallError;
use crate::storage::batch::Batcher;
use crate::storage::table::{
    CONVERSATION, Item, KEY, MAX_BATCH_WRITE, TTL, Table, get_n, get_s, key, n, s,
};
use crate::storage::time::from_millis;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

pub const LINGER: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct DynamoMessageIndex {
    table: Table,
    writes: Batcher<IndexedMessage>,
}

impl DynamoMessageIndex {
    /// Starts the write batcher on the current tokio runtime; entries are kept `keep`.
    pub fn new(table: Table, keep: Duration) -> Self {
        let writer = table.clone();
        let keep_seconds = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
        let writes = Batcher::start(
            MAX_BATCH_WRITE / 2,
            LINGER,
            Box::new(move |batch| Box::pin(write(writer.clone(), batch, keep_seconds))),
        );
        Self { table, writes }
    }

    async fn get(&self, pk: String) -> Result<Option<IndexedMessage>, IndexError> {
        let out = self
            .table
            .client
            .get_item()
            .table_name(&self.table.name)
            .set_key(Some(key(pk)))
            .send()
            .await
            .map_err(|e| CallError::from_sdk(&e))?;
        Ok(out.item.as_ref().and_then(parse))
    }
}

fn sid_pk(sid: &str) -> String {
    format!("msg#{sid}")
}

fn connect_pk(id: &str) -> String {
    format!("msgc#{id}")
}

fn parse(item: &Item) -> Option<IndexedMessage> {
    Some(IndexedMessage {
        sid: get_s(item, "sid")?.to_owned(),
        connect_id: get_s(item, "cid")?.to_owned(),
        author: Author::parse(get_s(item, "author")?)?,
        excerpt: get_s(item, "excerpt").unwrap_or_default().to_owned(),
        at: from_millis(get_n(item, "at").unwrap_or(0)),
        conversation: get_s(item, CONVERSATION).unwrap_or_default().to_owned(),
    })
}

async fn write(
    table: Table,
    batch: Vec<IndexedMessage>,
    keep_seconds: i64,
) -> Vec<Result<(), CallError>> {
    // One request may not name an item twice; the last entry for a key stands.
    let mut items = std::collections::HashMap::new();
    for m in &batch {
        let ttl = (m.at.timestamp()).saturating_add(keep_seconds);
        for pk in [sid_pk(&m.sid), connect_pk(&m.connect_id)] {
            let mut item = Item::from([
                (KEY.to_owned(), s(pk.clone())),
                ("sid".to_owned(), s(m.sid.as_str())),
                ("cid".to_owned(), s(m.connect_id.as_str())),
                ("author".to_owned(), s(m.author.as_str())),
                ("excerpt".to_owned(), s(m.excerpt.as_str())),
                ("at".to_owned(), n(m.at.timestamp_millis())),
                (TTL.to_owned(), n(ttl)),
            ]);
            // The index is sparse: an empty string may not be an index key.
            if !m.conversation.is_empty() {
                item.insert(CONVERSATION.to_owned(), s(m.conversation.as_str()));
            }
            items.insert(pk, item);
        }
    }
    let left = match table.batch_put(items.into_values().collect()).await {
        Ok(left) => left,
        Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
    };
    batch
        .iter()
        .map(|m| {
            if left.contains(&sid_pk(&m.sid)) || left.contains(&connect_pk(&m.connect_id)) {
                Err(CallError {
                    unavailable: true,
                    code: Some("UnprocessedItems".into()),
                    message: "DynamoDB left the entry unprocessed (throttled)".into(),
                })
            } else {
                Ok(())
            }
        })
        .collect()
}

impl From<CallError> for IndexError {
    fn from(e: CallError) -> Self {
        if e.unavailable {
            IndexError::Unavailable(e.message)
        } else {
            IndexError::Backend(e.message)
        }
    }
}

#[async_trait]
impl MessageIndex for DynamoMessageIndex {
    async fn remember(&self, message: IndexedMessage) -> Result<(), IndexError> {
        Ok(self.writes.call(message).await?)
    }

    async fn by_sid(&self, sid: &str) -> Result<Option<IndexedMessage>, IndexError> {
        self.get(sid_pk(sid)).await
    }

    async fn by_connect_id(&self, id: &str) -> Result<Option<IndexedMessage>, IndexError> {
        self.get(connect_pk(id)).await
    }

    async fn forget_conversation(&self, conversation: &ConversationKey) -> Result<u64, IndexError> {
        // Each entry is two items (by SID and by item Id).
        Ok(self
            .table
            .forget_conversation(&conversation.storage())
            .await?
            / 2)
    }

    /// TTL expires entries by itself.
    async fn prune(&self, _before: DateTime<Utc>) -> Result<u64, IndexError> {
        Ok(0)
    }
}
