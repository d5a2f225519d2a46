//! The AWS delivery ledger: `dlv#<part>` items in the DynamoDB table. A claim is one
//! conditional PutItem; a refused one carries the earlier claim back, so no read is needed.
//! Outcomes (`sent`) need no condition, so concurrent ones share one BatchWriteItem: they
//! linger up to [`OUTCOME_LINGER`] for company, since nothing on a message's path waits
//! for them (the sender records them in the background). An outcome naming a Twilio
//! message SID also writes `dlvsid#<sid>`, so a SID can be told to be some part's.

use super::{Claim, DeliveryLedger, LedgerError};
use crate::service::aws::CallError;
use crate::storage::batch::Batcher;
use crate::storage::table::{Item, KEY, MAX_BATCH_WRITE, TTL, Table, get_n, get_s, n, s};
use crate::storage::time::{from_millis, now_millis};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

pub const OUTCOME_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct DynamoLedger {
    table: Table,
    /// How long entries are kept (`WACONNECT_RETENTION_LEDGER`); TTL then removes them.
    keep_seconds: i64,
    /// `(key, sid)` outcomes on their way to the table.
    outcomes: Batcher<(String, String)>,
}

impl DynamoLedger {
    /// Starts the outcome batcher on the current tokio runtime; entries are kept `keep`.
    pub fn new(table: Table, keep: std::time::Duration) -> Self {
        let writer = table.clone();
        let keep_seconds = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
        // An outcome may take two items (its SID's owner record too).
        let outcomes = Batcher::start(
            MAX_BATCH_WRITE / 2,
            OUTCOME_LINGER,
            Box::new(move |batch| Box::pin(write_outcomes(writer.clone(), batch, keep_seconds))),
        );
        Self {
            table,
            keep_seconds,
            outcomes,
        }
    }
}

/// Writes `(key, sid)` outcomes in one BatchWriteItem, retrying what it leaves unprocessed.
async fn write_outcomes(
    table: Table,
    batch: Vec<(String, String)>,
    keep_seconds: i64,
) -> Vec<Result<(), CallError>> {
    // One request may not name an item twice; the last outcome for a key stands.
    let mut items: std::collections::HashMap<String, Item> = std::collections::HashMap::new();
    for (key, sid) in &batch {
        let item = Item::from([
            (KEY.to_owned(), s(pk(key))),
            ("sid".to_owned(), s(sid.as_str())),
            ("claimed_at".to_owned(), n(now_millis())),
            (TTL.to_owned(), n(ttl(keep_seconds))),
        ]);
        items.insert(pk(key), item);
        if is_message_sid(sid) {
            let owner = Item::from([
                (KEY.to_owned(), s(sid_pk(sid))),
                ("part".to_owned(), s(key.as_str())),
                (TTL.to_owned(), n(ttl(keep_seconds))),
            ]);
            items.insert(sid_pk(sid), owner);
        }
    }
    let left = match table.batch_put(items.into_values().collect()).await {
        Ok(left) => left,
        Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
    };
    batch
        .iter()
        .map(|(key, sid)| {
            // The owner record counts as much as the outcome: without it, another part
            // with the same text could take this SID for its own when it reconciles.
            if left.contains(pk(key).as_str()) || left.contains(sid_pk(sid).as_str()) {
                Err(CallError {
                    unavailable: true,
                    code: Some("UnprocessedItems".into()),
                    message: "DynamoDB left the outcome unprocessed (throttled)".into(),
                })
            } else {
                Ok(())
            }
        })
        .collect()
}

fn pk(key: &str) -> String {
    format!("dlv#{key}")
}

fn sid_pk(sid: &str) -> String {
    format!("dlvsid#{sid}")
}

/// A Twilio message SID (SM/MM and 32 hex digits), as opposed to the other values the
/// ledger records (the relay's webhook receipt times).
fn is_message_sid(v: &str) -> bool {
    v.len() == 34
        && (v.starts_with("SM") || v.starts_with("MM"))
        && v[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl From<CallError> for LedgerError {
    fn from(e: CallError) -> Self {
        if e.unavailable {
            LedgerError::Unavailable(e.message)
        } else {
            LedgerError::Backend(e.message)
        }
    }
}

fn ttl(keep_seconds: i64) -> i64 {
    (now_millis() / 1000).saturating_add(keep_seconds)
}

#[async_trait]
impl DeliveryLedger for DynamoLedger {
    async fn claim(&self, key: &str) -> Result<Claim, LedgerError> {
        let now = now_millis();
        let item = Item::from([
            (KEY.to_owned(), s(pk(key))),
            ("claimed_at".to_owned(), n(now)),
            (TTL.to_owned(), n(ttl(self.keep_seconds))),
        ]);
        let result = self
            .table
            .client
            .put_item()
            .table_name(&self.table.name)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Claim::Fresh {
                since: from_millis(now),
            }),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                let old = match e.into_err() {
                    PutItemError::ConditionalCheckFailedException(c) => c.item.unwrap_or_default(),
                    _ => Item::new(),
                };
                Ok(match get_s(&old, "sid") {
                    Some(sid) => Claim::Sent {
                        sid: sid.to_owned(),
                    },
                    None => Claim::Unknown {
                        since: from_millis(get_n(&old, "claimed_at").unwrap_or(0)),
                    },
                })
            }
            Err(e) => Err(CallError::from_sdk(&e).into()),
        }
    }

    async fn outcome(&self, key: &str) -> Result<Option<String>, LedgerError> {
        let item = self
            .table
            .client
            .get_item()
            .table_name(&self.table.name)
            .key(KEY, s(pk(key)))
            .consistent_read(true)
            .projection_expression("sid")
            .send()
            .await
            .map_err(|e| LedgerError::from(CallError::from_sdk(&e)))?
            .item
            .unwrap_or_default();
        Ok(get_s(&item, "sid").map(str::to_owned))
    }

    /// A put, not an update: an outcome replaces the claim whole, which is what lets
    /// concurrent ones share a BatchWriteItem.
    async fn sent(&self, key: &str, sid: &str) -> Result<(), LedgerError> {
        self.outcomes
            .call((key.to_owned(), sid.to_owned()))
            .await
            .map_err(LedgerError::from)
    }

    async fn renew(
        &self,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, LedgerError> {
        let now = super::renewed_at(since);
        let result = self
            .table
            .client
            .update_item()
            .table_name(&self.table.name)
            .key(KEY, s(pk(key)))
            .update_expression("SET claimed_at = :now")
            .condition_expression("claimed_at = :since AND attribute_not_exists(sid)")
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":since", n(since.timestamp_millis()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Some(from_millis(now))),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(None)
            }
            Err(e) => Err(CallError::from_sdk(&e).into()),
        }
    }

    async fn release(&self, key: &str) -> Result<(), LedgerError> {
        let result = self
            .table
            .client
            .delete_item()
            .table_name(&self.table.name)
            .key(KEY, s(pk(key)))
            .condition_expression("attribute_not_exists(sid)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Recorded as sent meanwhile: that outcome stands.
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(())
            }
            Err(e) => Err(CallError::from_sdk(&e).into()),
        }
    }

    async fn owned(&self, sids: &[String]) -> Result<HashMap<String, String>, LedgerError> {
        let items = self
            .table
            .batch_get(sids.iter().map(|sid| sid_pk(sid)))
            .await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let sid = get_s(item, KEY)?.strip_prefix("dlvsid#")?;
                Some((sid.to_owned(), get_s(item, "part")?.to_owned()))
            })
            .collect())
    }

    /// Nothing to do: every entry carries a TTL, and DynamoDB deletes expired ones itself.
    async fn prune(&self, _before: DateTime<Utc>) -> Result<u64, LedgerError> {
        Ok(0)
    }
}
