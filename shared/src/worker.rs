//! What the two queue workers (relay-worker, outbound-sender) share before their own
//! logic starts: both queues and the store opened from configuration, queue depth sampled
//! into metrics, and the operations endpoints served until shutdown.

use crate::backend::{Backend, BackendError, QueuesReady};
use crate::config::WorkerConfig;
use crate::delivery::DeliveryLedger;
use crate::ops::{self, Readiness};
use crate::queue::{Queue, depth};
use crate::store::ConversationStore;
use async_trait::async_trait;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("operations server: {0}")]
    Ops(#[from] std::io::Error),
}

/// A worker's storage, opened.
pub struct WorkerBackends {
    pub inbound: Arc<dyn Queue>,
    pub outbound: Arc<dyn Queue>,
    pub store: Arc<dyn ConversationStore>,
    pub ledger: Arc<dyn DeliveryLedger>,
}

impl WorkerBackends {
    pub async fn open(config: &WorkerConfig) -> Result<Self, WorkerError> {
        let backend = Backend::open(&config.common.storage, &config.common.queues).await?;
        Ok(Self {
            inbound: backend.inbound().await?,
            outbound: backend.outbound().await?,
            store: backend.store().await?,
            ledger: backend.ledger().await?,
        })
    }

    fn queues(&self) -> Vec<Arc<dyn Queue>> {
        vec![self.inbound.clone(), self.outbound.clone()]
    }
}

/// Serves `/healthz`, `/readyz`, `/metrics` on `listener` and samples queue depth until
/// `shutdown`. Ready when the queues answer and every `extra` check passes.
pub async fn serve_ops(
    name: &'static str,
    config: &WorkerConfig,
    backends: &WorkerBackends,
    listener: TcpListener,
    shutdown: CancellationToken,
    extra: Vec<Arc<dyn Readiness>>,
) -> Result<(), WorkerError> {
    let sampler = depth::spawn_sampler(
        backends.queues(),
        config.common.queues.depth_interval,
        shutdown.child_token(),
    );
    tracing::info!(service = name, address = %listener.local_addr()?, "operations endpoints listening");
    let router = ops::router(Arc::new(AllReady {
        queues: QueuesReady(backends.queues()),
        extra,
    }));
    let served = ops::serve(listener, router, shutdown.clone()).await;
    shutdown.cancel();
    let _ = sampler.await;
    tracing::info!(service = name, "stopped");
    Ok(served?)
}

struct AllReady {
    queues: QueuesReady,
    extra: Vec<Arc<dyn Readiness>>,
}

#[async_trait]
impl Readiness for AllReady {
    async fn check(&self) -> Result<(), String> {
        self.queues.check().await?;
        for check in &self.extra {
            check.check().await?;
        }
        Ok(())
    }
}
