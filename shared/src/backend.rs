//! Opens the engines the configuration names.

use crate::config::{QueuesConfig, StorageConfig};
use crate::delivery::sqlite::SqliteLedger;
use crate::delivery::{DeliveryLedger, LedgerError};
use crate::ops::Readiness;
use crate::queue::sqlite::SqliteQueue;
use crate::queue::{Queue, QueueError};
use crate::sqlite::{Db, DbError};
use crate::store::sqlite::SqliteStore;
use crate::store::{ConversationStore, StoreError};
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot open the embedded database: {0}")]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// The storage a process uses: one connection shared by its queues and its store.
#[derive(Clone)]
pub struct Backend {
    db: Db,
    queues: QueuesConfig,
}

impl Backend {
    pub async fn open(
        storage: &StorageConfig,
        queues: &QueuesConfig,
    ) -> Result<Self, BackendError> {
        let StorageConfig::Embedded(embedded) = storage;
        Ok(Self {
            db: Db::open(embedded).await?,
            queues: queues.clone(),
        })
    }

    pub async fn inbound(&self) -> Result<Arc<dyn Queue>, BackendError> {
        self.queue(&self.queues.inbound).await
    }

    pub async fn outbound(&self) -> Result<Arc<dyn Queue>, BackendError> {
        self.queue(&self.queues.outbound).await
    }

    async fn queue(&self, name: &str) -> Result<Arc<dyn Queue>, BackendError> {
        let q = SqliteQueue::open(self.db.clone(), name, self.queues.max_receives).await?;
        Ok(Arc::new(q))
    }

    pub async fn ledger(&self) -> Result<Arc<dyn DeliveryLedger>, BackendError> {
        Ok(Arc::new(SqliteLedger::open(self.db.clone()).await?))
    }

    pub async fn store(&self) -> Result<Arc<dyn ConversationStore>, BackendError> {
        Ok(Arc::new(SqliteStore::open(self.db.clone()).await?))
    }
}

/// Ready when every queue answers a depth query.
pub struct QueuesReady(pub Vec<Arc<dyn Queue>>);

#[async_trait]
impl Readiness for QueuesReady {
    async fn check(&self) -> Result<(), String> {
        for q in &self.0 {
            q.stats()
                .await
                .map_err(|e| format!("queue {}: {e}", q.name()))?;
        }
        Ok(())
    }
}
