//! The AWS store engine: conversations in the DynamoDB table (see [`crate::storage::table`]).
//!
//! Every write is one conditional `UpdateItem`/`PutItem` that returns the new item, so no
//! write needs a read before or after it; only a refused condition reads the old item
//! (returned with the refusal) to say why. A live conversation carries `due_shard` /
//! `due_at` (its lease expiry, 0 when free) so [`ConversationStore::unheld`] is a few
//! index Queries, one per shard, never a Scan.

use super::{
    ConversationStore, Lease, LeaseState, StoreError, StoredConversation, acquisition, check_fence,
    check_prefix, fence_refusal, lease_millis,
};
use crate::message::conversation::ConversationKey;
use crate::message::conversation::{Conversation, ConversationState};
use crate::service::aws::CallError;
use crate::storage::table::{
    self, DUE_AT, DUE_SHARD, Due, Item, KEY, TTL, Table, get_n, get_s, n, s,
};
use crate::storage::time::{from_millis, now_millis};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// Index partitions the conversations spread over, so lease renewals of a large fleet do
/// not all write one index partition.
pub const SHARDS: u32 = 4;

const RECORD: &str = "record";
const VERSION: &str = "version";
const OWNER: &str = "lease_owner";
const EXPIRES: &str = "lease_expires_at";
const LEASE_VERSION: &str = "lease_version";

#[derive(Clone, Debug)]
pub struct DynamoStore {
    table: Table,
}

impl DynamoStore {
    pub fn new(table: Table) -> Self {
        Self { table }
    }
}

/// Records written before routing are keyed by the customer alone and keep that key.
fn pk(key: &ConversationKey) -> String {
    format!("conv#{}", key.storage())
}

/// A stable shard (not `DefaultHasher`'s per-process seed: every process must agree).
fn shard(key: &ConversationKey) -> String {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    key.storage().hash(&mut h);
    format!("conv#{}", h.finish() % u64::from(SHARDS))
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn stored(item: &Item) -> Result<StoredConversation, StoreError> {
    let corrupt = |what: &str| StoreError::Backend(format!("corrupt conversation item: {what}"));
    let record = get_s(item, RECORD).ok_or_else(|| corrupt("no record"))?;
    let conversation: Conversation =
        serde_json::from_str(record).map_err(|e| corrupt(&e.to_string()))?;
    let owner = get_s(item, OWNER).map(str::to_owned);
    Ok(StoredConversation {
        conversation,
        version: get_n(item, VERSION).ok_or_else(|| corrupt("no version"))? as u64,
        lease: LeaseState {
            expires_at: owner
                .as_ref()
                .map(|_| from_millis(get_n(item, EXPIRES).unwrap_or(0))),
            owner,
            version: get_n(item, LEASE_VERSION).unwrap_or(0) as u64,
        },
    })
}

/// The key of a conversation item (or of its index entry).
fn key_of(item: &Item) -> Option<ConversationKey> {
    get_s(item, KEY)
        .and_then(|k| k.strip_prefix("conv#"))
        .and_then(|c| ConversationKey::parse_storage(c).ok())
}

fn lease_of(s: &StoredConversation) -> Lease {
    Lease {
        key: s.conversation.key(),
        owner: s.lease.owner.clone().unwrap_or_default(),
        version: s.lease.version,
        expires_at: s.lease.expires_at.unwrap_or_default(),
    }
}

fn encode(c: &Conversation) -> Result<String, StoreError> {
    serde_json::to_string(c)
        .map_err(|e| StoreError::Backend(format!("cannot encode conversation: {e}")))
}

impl From<CallError> for StoreError {
    fn from(e: CallError) -> Self {
        if e.unavailable {
            StoreError::Unavailable(e.message)
        } else {
            StoreError::Backend(e.message)
        }
    }
}

/// How a conditional write ended.
enum Written {
    Done(Item),
    /// The condition failed; the item as it was, if there was one.
    Refused(Option<Item>),
}

impl DynamoStore {
    fn update(&self, key: &ConversationKey) -> UpdateItemFluentBuilder {
        self.table
            .client
            .update_item()
            .table_name(&self.table.name)
            .set_key(Some(table::key(pk(key))))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }

    async fn write(&self, request: UpdateItemFluentBuilder) -> Result<Written, StoreError> {
        match request.send().await {
            Ok(out) => Ok(Written::Done(out.attributes.unwrap_or_default())),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                let old = match e.into_err() {
                    aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c.item,
                    _ => None,
                };
                Ok(Written::Refused(old.filter(|i| !i.is_empty())))
            }
            Err(e) => Err(CallError::from_sdk(&e).into()),
        }
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
        let now = now_millis();
        // One line: moto's parser refuses a newline inside a condition.
        let condition = match predecessor {
            None => "attribute_exists(pk) AND (attribute_not_exists(#owner) OR #expires <= :now)",
            Some(_) => {
                "attribute_exists(pk) AND (attribute_not_exists(#owner) OR #expires <= :now OR begins_with(#owner, :predecessor))"
            }
        };
        let mut request = self
            .lease_write(key, Some(owner), now + length, condition)
            .expression_attribute_values(":now", n(now));
        if let Some(predecessor) = predecessor {
            request = request.expression_attribute_values(":predecessor", s(predecessor));
        }
        match self.write(request).await? {
            Written::Done(item) => Ok(lease_of(&stored(&item)?)),
            Written::Refused(None) => Err(StoreError::NotFound),
            Written::Refused(Some(_)) => Err(StoreError::LeaseHeld),
        }
    }

    /// A data write: record, state, TTL and index membership, version raised.
    fn data_write(
        &self,
        conversation: &Conversation,
        condition: &str,
    ) -> Result<UpdateItemFluentBuilder, StoreError> {
        let live = conversation.state != ConversationState::Ended;
        let mut set = vec!["#record = :record", "#version = #version + :one"];
        let mut remove = Vec::new();
        let mut request = self
            .update(&conversation.key())
            .condition_expression(condition)
            .expression_attribute_names("#record", RECORD)
            .expression_attribute_names("#version", VERSION)
            .expression_attribute_values(":record", s(encode(conversation)?))
            .expression_attribute_values(":one", n(1));
        if live {
            set.push("#shard = :shard");
            request = request.expression_attribute_values(":shard", s(shard(&conversation.key())));
        } else {
            remove.push("#shard");
        }
        request = request.expression_attribute_names("#shard", DUE_SHARD);
        match conversation.ttl {
            Some(ttl) => {
                set.push("#ttl = :ttl");
                request = request.expression_attribute_values(":ttl", n(ttl));
            }
            None => remove.push("#ttl"),
        }
        request = request.expression_attribute_names("#ttl", TTL);
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        Ok(request.update_expression(expression))
    }

    /// A lease write: owner and expiry (and the index sort key with it), fencing version raised.
    fn lease_write(
        &self,
        key: &ConversationKey,
        owner: Option<&str>,
        expires_at: i64,
        condition: &str,
    ) -> UpdateItemFluentBuilder {
        let request = self
            .update(key)
            .condition_expression(condition)
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_names("#expires", EXPIRES)
            .expression_attribute_names("#due", DUE_AT)
            .expression_attribute_names("#lv", LEASE_VERSION)
            .expression_attribute_values(":expires", n(expires_at))
            .expression_attribute_values(":one", n(1));
        match owner {
            Some(owner) => request
                .update_expression(
                    "SET #owner = :owner, #expires = :expires, #due = :expires, #lv = #lv + :one",
                )
                .expression_attribute_values(":owner", s(owner)),
            None => request.update_expression(
                "SET #expires = :expires, #due = :expires, #lv = #lv + :one REMOVE #owner",
            ),
        }
    }
}

#[async_trait]
impl ConversationStore for DynamoStore {
    async fn get(&self, key: &ConversationKey) -> Result<Option<StoredConversation>, StoreError> {
        let out = self
            .table
            .client
            .get_item()
            .table_name(&self.table.name)
            .set_key(Some(table::key(pk(key))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::from(CallError::from_sdk(&e)))?;
        out.item.as_ref().map(stored).transpose()
    }

    async fn insert(&self, conversation: &Conversation) -> Result<StoredConversation, StoreError> {
        let mut item = Item::from([
            (KEY.to_owned(), s(pk(&conversation.key()))),
            (RECORD.to_owned(), s(encode(conversation)?)),
            (VERSION.to_owned(), n(1)),
            (EXPIRES.to_owned(), n(0)),
            (LEASE_VERSION.to_owned(), n(0)),
            (DUE_AT.to_owned(), n(0)),
        ]);
        if conversation.state != ConversationState::Ended {
            item.insert(DUE_SHARD.to_owned(), s(shard(&conversation.key())));
        }
        if let Some(ttl) = conversation.ttl {
            item.insert(TTL.to_owned(), n(ttl));
        }
        let result = self
            .table
            .client
            .put_item()
            .table_name(&self.table.name)
            .set_item(Some(item.clone()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => stored(&item),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(StoreError::AlreadyExists)
            }
            Err(e) => Err(CallError::from_sdk(&e).into()),
        }
    }

    async fn update(
        &self,
        conversation: &Conversation,
        expected_version: u64,
    ) -> Result<StoredConversation, StoreError> {
        let request = self
            .data_write(conversation, "#version = :expected")?
            .expression_attribute_values(":expected", n(expected_version));
        match self.write(request).await? {
            Written::Done(item) => stored(&item),
            Written::Refused(None) => Err(StoreError::NotFound),
            Written::Refused(Some(_)) => Err(StoreError::Conflict),
        }
    }

    async fn update_fenced(
        &self,
        conversation: &Conversation,
        expected_version: u64,
        lease: &Lease,
    ) -> Result<StoredConversation, StoreError> {
        check_fence(conversation, lease)?;
        let now = now_millis();
        let request = self
            .data_write(
                conversation,
                "#version = :expected AND #owner = :owner AND #lv = :lv AND #expires > :now",
            )?
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_names("#lv", LEASE_VERSION)
            .expression_attribute_names("#expires", EXPIRES)
            .expression_attribute_values(":expected", n(expected_version))
            .expression_attribute_values(":owner", s(&lease.owner))
            .expression_attribute_values(":lv", n(lease.version))
            .expression_attribute_values(":now", n(now));
        match self.write(request).await? {
            Written::Done(item) => stored(&item),
            Written::Refused(None) => Err(StoreError::NotFound),
            Written::Refused(Some(old)) => Err(fence_refusal(
                &stored(&old)?,
                &lease.owner,
                lease.version,
                now,
            )),
        }
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

    /// Through the `due` index (which carries `lease_owner`): live leases of every shard,
    /// the holder's name compared in a filter. A worker does this once, when it starts.
    async fn held_by(
        &self,
        owner_prefix: &str,
        limit: usize,
    ) -> Result<Vec<ConversationKey>, StoreError> {
        check_prefix(owner_prefix)?;
        let now = now_millis();
        let mut found = Vec::new();
        for shard in 0..SHARDS {
            let mut start = None;
            loop {
                let out = self
                    .table
                    .query_due(format!("conv#{shard}"), Due::After, now)
                    .filter_expression("begins_with(#owner, :prefix)")
                    .expression_attribute_names("#owner", OWNER)
                    .expression_attribute_values(":prefix", s(owner_prefix))
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| StoreError::from(CallError::from_sdk(&e)))?;
                for item in out.items() {
                    if let Some(key) = key_of(item) {
                        found.push(key);
                    }
                }
                start = out.last_evaluated_key;
                if start.is_none() || found.len() >= limit {
                    break;
                }
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<Lease, StoreError> {
        let length = lease_millis(duration)?;
        let now = now_millis();
        let request = self
            .lease_write(
                &lease.key,
                Some(&lease.owner),
                now + length,
                "#owner = :owner AND #lv = :lv AND #expires > :now",
            )
            .expression_attribute_values(":lv", n(lease.version))
            .expression_attribute_values(":now", n(now));
        match self.write(request).await? {
            Written::Done(item) => Ok(lease_of(&stored(&item)?)),
            Written::Refused(None) => Err(StoreError::NotFound),
            Written::Refused(Some(_)) => Err(StoreError::LeaseLost),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let request = self
            .lease_write(&lease.key, None, 0, "#owner = :owner AND #lv = :lv")
            .expression_attribute_values(":owner", s(&lease.owner))
            .expression_attribute_values(":lv", n(lease.version));
        match self.write(request).await? {
            Written::Done(_) => Ok(()),
            Written::Refused(None) => Err(StoreError::NotFound),
            Written::Refused(Some(_)) => Err(StoreError::LeaseLost),
        }
    }

    async fn erase(&self, key: &ConversationKey) -> Result<bool, StoreError> {
        let out = self
            .table
            .client
            .delete_item()
            .table_name(&self.table.name)
            .key(KEY, s(pk(key)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| StoreError::from(CallError::from_sdk(&e)))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    /// DynamoDB's TTL deletes them (the `ttl` every ended record carries).
    async fn prune_expired(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn unheld(&self, limit: usize) -> Result<Vec<ConversationKey>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now_millis();
        let queries = (0..SHARDS).map(|shard| {
            self.table
                .query_due(format!("conv#{shard}"), Due::AtOrBefore, now)
                .limit(limit.min(1000) as i32)
                .send()
        });
        let mut found = Vec::new();
        for result in futures_util::future::join_all(queries).await {
            let out = result.map_err(|e| StoreError::from(CallError::from_sdk(&e)))?;
            for item in out.items() {
                let key = key_of(item)
                    .ok_or_else(|| StoreError::Backend("unheld item without a key".into()))?;
                found.push((get_n(item, DUE_AT).unwrap_or(0), key));
            }
        }
        found.sort_by_key(|(due, _)| *due);
        Ok(found.into_iter().take(limit).map(|(_, c)| c).collect())
    }
}
