//! The AWS roster: `roster#<group>#<member>` items in the DynamoDB table, listed through
//! the sparse `due` index (shard `roster#<group>`, sorted by expiry; the index carries
//! `load`), so finding the living is one Query of a few small items. A heartbeat is a
//! PutItem and that Query.

use super::{Members, Roster, RosterError};
use crate::service::aws::CallError;
use crate::storage::table::{DUE_AT, DUE_SHARD, Due, KEY, LOAD, TTL, Table, get_n, key, n, s};
use crate::storage::time::now_millis;
use async_trait::async_trait;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct DynamoRoster {
    table: Table,
}

impl DynamoRoster {
    pub fn new(table: Table) -> Self {
        Self { table }
    }
}

impl From<CallError> for RosterError {
    fn from(e: CallError) -> Self {
        if e.unavailable {
            RosterError::Unavailable(e.message)
        } else {
            RosterError::Backend(e.message)
        }
    }
}

fn pk(group: &str, member: &str) -> String {
    format!("roster#{group}#{member}")
}

fn shard(group: &str) -> String {
    format!("roster#{group}")
}

#[async_trait]
impl Roster for DynamoRoster {
    async fn heartbeat(
        &self,
        group: &str,
        member: &str,
        ttl: Duration,
        load: u64,
    ) -> Result<Members, RosterError> {
        let now = now_millis();
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        self.table
            .client
            .put_item()
            .table_name(&self.table.name)
            .item(KEY, s(pk(group, member)))
            .item(DUE_SHARD, s(shard(group)))
            .item(DUE_AT, n(expires))
            .item(LOAD, n(load))
            .item(TTL, n(expires / 1000 + 3600))
            .send()
            .await
            .map_err(|e| RosterError::from(CallError::from_sdk(&e)))?;
        let mut found = Members {
            alive: 0,
            load: 0,
            least: u64::MAX,
        };
        let mut mine_listed = false;
        let mut start = None;
        loop {
            let out = self
                .table
                .query_due(shard(group), Due::After, now)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| RosterError::from(CallError::from_sdk(&e)))?;
            for item in out.items() {
                let theirs = get_n(item, LOAD).unwrap_or(0).max(0) as u64;
                found.alive += 1;
                found.load += theirs;
                found.least = found.least.min(theirs);
                mine_listed |= item.get(KEY) == Some(&s(pk(group, member)));
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                // Our own write may not have reached the index yet (it is eventually
                // consistent): we are alive, with our load, whatever it says.
                if !mine_listed {
                    found.alive += 1;
                    found.load += load;
                    found.least = found.least.min(load);
                }
                return Ok(found);
            }
        }
    }

    async fn leave(&self, group: &str, member: &str) -> Result<(), RosterError> {
        self.table
            .client
            .delete_item()
            .table_name(&self.table.name)
            .set_key(Some(key(pk(group, member))))
            .send()
            .await
            .map_err(|e| RosterError::from(CallError::from_sdk(&e)))?;
        Ok(())
    }
}
