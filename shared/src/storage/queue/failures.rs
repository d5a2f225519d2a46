//! What SQS cannot hold for a message: the reason its last attempt failed, how many
//! attempts failed (SQS only counts receives, and a receive of several group-mates counts
//! them all though only the first was tried), and whether it is now waiting out a retry
//! backoff (SQS counts that as in flight). Both live in the
//! DynamoDB table as `qfail#<queue>#<message id>` items, written only when an attempt
//! fails and read only for redeliveries and depth samples, so a message that succeeds
//! first time costs nothing here.

use super::QueueError;
use crate::service::aws::CallError;
use crate::storage::table::{DUE_AT, DUE_SHARD, Due, KEY, TTL, Table, get_n, get_s, n, s};
use crate::storage::time::now_millis;
use aws_sdk_dynamodb::types::Select;
use std::collections::HashMap;

/// As long as SQS keeps a message by default (4 days); TTL then removes the record.
const KEEP_SECONDS: i64 = 4 * 24 * 3600;
const ATTEMPTS: &str = "attempts";

/// What the log knows of a message's earlier attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failures {
    pub last_error: String,
    pub attempts: u32,
}

#[derive(Clone, Debug)]
pub struct FailureLog {
    table: Table,
}

impl From<CallError> for QueueError {
    fn from(e: CallError) -> Self {
        if e.unavailable {
            QueueError::Unavailable(e.message)
        } else {
            QueueError::Backend(e.message)
        }
    }
}

impl FailureLog {
    pub fn new(table: Table) -> Self {
        Self { table }
    }

    fn pk(queue: &str, message_id: &str) -> String {
        format!("qfail#{queue}#{message_id}")
    }

    fn shard(queue: &str) -> String {
        format!("qfail#{queue}")
    }

    /// Records the message's `attempts`-th failed attempt; it is back in the queue at
    /// `until_millis`. Only the message's current holder writes, so a plain put is enough.
    pub async fn record(
        &self,
        queue: &str,
        message_id: &str,
        reason: &str,
        attempts: u32,
        until_millis: i64,
    ) -> Result<(), QueueError> {
        self.table
            .client
            .put_item()
            .table_name(&self.table.name)
            .item(KEY, s(Self::pk(queue, message_id)))
            .item("reason", s(reason))
            .item(ATTEMPTS, n(attempts))
            .item(DUE_SHARD, s(Self::shard(queue)))
            .item(DUE_AT, n(until_millis))
            .item(TTL, n(now_millis() / 1000 + KEEP_SECONDS))
            .send()
            .await
            .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?;
        Ok(())
    }

    /// The recorded failures of each of `message_ids` that has some.
    pub async fn last_errors(
        &self,
        queue: &str,
        message_ids: &[&str],
    ) -> Result<HashMap<String, Failures>, QueueError> {
        let mut found = HashMap::new();
        if message_ids.is_empty() {
            return Ok(found);
        }
        let items = self
            .table
            .batch_get(message_ids.iter().map(|id| Self::pk(queue, id)))
            .await?;
        for item in &items {
            if let (Some(pk), Some(reason)) = (get_s(item, KEY), get_s(item, "reason")) {
                let id = pk.rsplit('#').next().unwrap_or_default();
                let attempts = get_n(item, ATTEMPTS)
                    .unwrap_or(1)
                    .clamp(1, i64::from(u32::MAX));
                found.insert(
                    id.to_owned(),
                    Failures {
                        last_error: reason.to_owned(),
                        attempts: attempts as u32,
                    },
                );
            }
        }
        Ok(found)
    }

    /// How many of the queue's messages are waiting out a backoff now.
    pub async fn backing_off(&self, queue: &str) -> Result<u64, QueueError> {
        let mut total = 0;
        let mut start = None;
        loop {
            let out = self
                .table
                .query_due(Self::shard(queue), Due::After, now_millis())
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?;
            total += out.count.max(0) as u64;
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(total);
            }
        }
    }
}
