//! The one DynamoDB table the AWS engines share (`WACONNECT_TABLE`, created by
//! `deploy/aws/waconnect.yaml`). Items of every kind live side by side, told apart by the
//! prefix of their key `pk`:
//!
//! * `conv#<customer>`: a conversation ([`crate::storage::store::dynamodb`]);
//! * `dlv#<part>`: a delivery-ledger entry ([`crate::storage::delivery::dynamodb`]);
//! * `qfail#<queue>#<message id>`: a queue message's last failure
//!   ([`crate::storage::queue::failures`]);
//! * `roster#<group>#<member>`: a live process of a fleet ([`crate::storage::roster::dynamodb`]);
//! * `msg#<sid>` and `msgc#<item id>`: the message index ([`crate::storage::message_index::dynamodb`]).
//!
//! The sparse global secondary index [`CONVERSATION_INDEX`] (partition `conv`, keys only)
//! finds what the table holds of one conversation — the message index's entries, with the
//! customer's words — for an erasure request.
//!
//! The sparse global secondary index [`DUE_INDEX`] (partition `due_shard`, sort `due_at`)
//! finds what is due without a Scan: live conversations by lease expiry, for the sweepers,
//! and messages waiting out a retry backoff, for the depth gauges. TTL (`ttl`, epoch
//! seconds) only tidies up; every condition compares times itself.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

pub const KEY: &str = "pk";
pub const DUE_INDEX: &str = "due";
pub const DUE_SHARD: &str = "due_shard";
pub const DUE_AT: &str = "due_at";
pub const TTL: &str = "ttl";
pub const CONVERSATION_INDEX: &str = "conversation";
/// The conversation (its storage key) an item belongs to, for [`CONVERSATION_INDEX`].
pub const CONVERSATION: &str = "conv";
/// What a roster member holds; projected into [`DUE_INDEX`] beside the keys.
pub const LOAD: &str = "load";

pub type Item = HashMap<String, AttributeValue>;

/// BatchWriteItem's limit.
pub const MAX_BATCH_WRITE: usize = 25;
/// Attempts at the items a BatchWriteItem or BatchGetItem left unprocessed (throttling)
/// before giving up.
const UNPROCESSED_ATTEMPTS: u32 = 4;

/// Which side of a time [`Table::query_due`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    After,
    AtOrBefore,
}

/// A handle on the table.
#[derive(Clone, Debug)]
pub struct Table {
    pub(crate) client: Client,
    pub(crate) name: String,
}

impl Table {
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A Query of [`DUE_INDEX`]: the entries of `shard` due after `at` (live leases,
    /// backoffs still running, roster members alive), or at or before it (lapsed leases).
    pub(crate) fn query_due(
        &self,
        shard: String,
        due: Due,
        at: i64,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        let condition = match due {
            Due::After => "#shard = :shard AND #due > :at",
            Due::AtOrBefore => "#shard = :shard AND #due <= :at",
        };
        self.client
            .query()
            .table_name(&self.name)
            .index_name(DUE_INDEX)
            .key_condition_expression(condition)
            .expression_attribute_names("#shard", DUE_SHARD)
            .expression_attribute_names("#due", DUE_AT)
            .expression_attribute_values(":shard", s(shard))
            .expression_attribute_values(":at", n(at))
    }

    /// Puts `items` (distinct keys, at most [`MAX_BATCH_WRITE`]) in one BatchWriteItem,
    /// asking again (with a doubling pause) for what DynamoDB leaves unprocessed under
    /// load. Answers the keys still unwritten after [`UNPROCESSED_ATTEMPTS`].
    pub(crate) async fn batch_put(
        &self,
        items: Vec<Item>,
    ) -> Result<std::collections::HashSet<String>, crate::service::aws::CallError> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        let requests = items
            .into_iter()
            .map(|item| {
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item))
                            .build()
                            .expect("the item is set"),
                    )
                    .build()
            })
            .collect();
        self.batch_write(requests).await
    }

    /// Deletes the items with these keys (distinct, at most [`MAX_BATCH_WRITE`]) as
    /// [`Table::batch_put`] puts; answers the keys still there.
    pub(crate) async fn batch_delete(
        &self,
        pks: Vec<String>,
    ) -> Result<std::collections::HashSet<String>, crate::service::aws::CallError> {
        use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
        let requests = pks
            .into_iter()
            .map(|pk| {
                WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .set_key(Some(key(pk)))
                            .build()
                            .expect("the key is set"),
                    )
                    .build()
            })
            .collect();
        self.batch_write(requests).await
    }

    async fn batch_write(
        &self,
        mut pending: Vec<aws_sdk_dynamodb::types::WriteRequest>,
    ) -> Result<std::collections::HashSet<String>, crate::service::aws::CallError> {
        let mut delay = std::time::Duration::from_millis(25);
        for attempt in 1..=UNPROCESSED_ATTEMPTS {
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.name, pending)
                .send()
                .await
                .map_err(|e| crate::service::aws::CallError::from_sdk(&e))?;
            pending = out
                .unprocessed_items
                .and_then(|mut u| u.remove(&self.name))
                .unwrap_or_default();
            if pending.is_empty() {
                return Ok(Default::default());
            }
            if attempt < UNPROCESSED_ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Ok(pending
            .iter()
            .filter_map(|w| {
                w.put_request()
                    .map(|p| p.item())
                    .or(w.delete_request().map(|d| d.key()))
                    .and_then(|item| get_s(item, KEY))
            })
            .map(str::to_owned)
            .collect())
    }

    /// Deletes every item that carries [`CONVERSATION`] = `conversation` (found through
    /// [`CONVERSATION_INDEX`]); answers how many. The index is eventually consistent: an
    /// item written a moment ago may be left, so erase a conversation once it has ended.
    pub(crate) async fn forget_conversation(
        &self,
        conversation: &str,
    ) -> Result<u64, crate::service::aws::CallError> {
        let mut pks = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.name)
                .index_name(CONVERSATION_INDEX)
                .key_condition_expression("#conv = :conv")
                .expression_attribute_names("#conv", CONVERSATION)
                .expression_attribute_values(":conv", s(conversation))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| crate::service::aws::CallError::from_sdk(&e))?;
            pks.extend(
                out.items()
                    .iter()
                    .filter_map(|i| get_s(i, KEY))
                    .map(str::to_owned),
            );
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        pks.sort();
        pks.dedup();
        let mut deleted = 0;
        for chunk in pks.chunks(MAX_BATCH_WRITE) {
            let left = self.batch_delete(chunk.to_vec()).await?;
            if !left.is_empty() {
                return Err(crate::service::aws::CallError {
                    unavailable: true,
                    code: Some("UnprocessedItems".into()),
                    message: format!("DynamoDB left {} deletes unprocessed", left.len()),
                });
            }
            deleted += chunk.len() as u64;
        }
        Ok(deleted)
    }

    /// The items with these keys (`pk` values) that exist: one BatchGetItem per 100 keys,
    /// asking again (with a doubling pause, [`UNPROCESSED_ATTEMPTS`] times at most) for
    /// what DynamoDB leaves unprocessed under load. Strongly consistent: every caller
    /// reads what was written moments before (a SID's owner recorded just after the send,
    /// a failure recorded before its message reappears), which an eventually consistent
    /// read may not show yet.
    pub(crate) async fn batch_get(
        &self,
        pks: impl IntoIterator<Item = String>,
    ) -> Result<Vec<Item>, crate::service::aws::CallError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let pks: Vec<String> = pks.into_iter().collect();
        let mut found = Vec::new();
        for chunk in pks.chunks(100) {
            let mut keys = KeysAndAttributes::builder().consistent_read(true);
            for pk in chunk {
                keys = keys.keys(key(pk.clone()));
            }
            let keys = keys.build().map_err(|e| crate::service::aws::CallError {
                unavailable: false,
                code: None,
                message: e.to_string(),
            })?;
            let mut request = HashMap::from([(self.name.clone(), keys)]);
            let mut delay = std::time::Duration::from_millis(25);
            for attempt in 1.. {
                let out = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(|e| crate::service::aws::CallError::from_sdk(&e))?;
                if let Some(mut responses) = out.responses {
                    found.extend(responses.remove(&self.name).unwrap_or_default());
                }
                request = out.unprocessed_keys.unwrap_or_default();
                let left = request.get(&self.name).map_or(0, |k| k.keys().len());
                if left == 0 {
                    break;
                }
                if attempt == UNPROCESSED_ATTEMPTS {
                    return Err(crate::service::aws::CallError {
                        unavailable: true,
                        code: Some("UnprocessedKeys".into()),
                        message: format!("DynamoDB left {left} reads unprocessed (throttled)"),
                    });
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Ok(found)
    }
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

pub(crate) fn get_n(item: &Item, name: &str) -> Option<i64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

pub(crate) fn key(pk: String) -> Item {
    HashMap::from([(KEY.to_owned(), s(pk))])
}
