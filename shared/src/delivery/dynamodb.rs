//! The AWS delivery ledger: `dlv#<part>` items in the DynamoDB table. A claim is one
//! conditional PutItem; a refused one carries the earlier claim back, so no read is needed.

use super::{Claim, DeliveryLedger, LedgerError};
use crate::aws::CallError;
use crate::table::{Item, KEY, TTL, Table, get_n, get_s, n, s};
use crate::time::{from_millis, now_millis};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use chrono::{DateTime, Utc};

/// Entries outlive the outbound queue's 5-minute dedup window by far; TTL then removes them.
const KEEP_SECONDS: i64 = 24 * 3600;

#[derive(Clone, Debug)]
pub struct DynamoLedger {
    table: Table,
}

impl DynamoLedger {
    pub fn new(table: Table) -> Self {
        Self { table }
    }
}

fn pk(key: &str) -> String {
    format!("dlv#{key}")
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

fn ttl() -> i64 {
    now_millis() / 1000 + KEEP_SECONDS
}

#[async_trait]
impl DeliveryLedger for DynamoLedger {
    async fn claim(&self, key: &str) -> Result<Claim, LedgerError> {
        let item = Item::from([
            (KEY.to_owned(), s(pk(key))),
            ("claimed_at".to_owned(), n(now_millis())),
            (TTL.to_owned(), n(ttl())),
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
            Ok(_) => Ok(Claim::Fresh),
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

    async fn sent(&self, key: &str, sid: &str) -> Result<(), LedgerError> {
        self.table
            .client
            .update_item()
            .table_name(&self.table.name)
            .key(KEY, s(pk(key)))
            .update_expression(
                "SET sid = :sid, claimed_at = if_not_exists(claimed_at, :now), #ttl = :ttl",
            )
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":sid", s(sid))
            .expression_attribute_values(":now", n(now_millis()))
            .expression_attribute_values(":ttl", n(ttl()))
            .send()
            .await
            .map_err(|e| LedgerError::from(CallError::from_sdk(&e)))?;
        Ok(())
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

    /// Nothing to do: every entry carries a TTL, and DynamoDB deletes expired ones itself.
    async fn prune(&self, _before: DateTime<Utc>) -> Result<u64, LedgerError> {
        Ok(0)
    }
}
