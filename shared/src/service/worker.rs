//! What the two queue workers (relay-worker, outbound-sender) share before their own
//! logic starts: both queues and the store opened from configuration, queue depth sampled
//! into metrics, and the operations endpoints served until shutdown.

use crate::service::config::WorkerConfig;
use crate::service::ops::{self, Health, Readiness};
use crate::storage::backend::{Backend, BackendError, QueuesReady};
use crate::storage::delivery::DeliveryLedger;
use crate::storage::media::MediaStore;
use crate::storage::message_index::MessageIndex;
use crate::storage::queue::{Queue, depth};
use crate::storage::retention::Retained;
use crate::storage::roster::Roster;
use crate::storage::store::ConversationStore;
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
    #[error("{0}")]
    TaskDied(String),
}

/// Spawns a task the worker cannot do without (its consumer, lease renewer, sweeper).
/// If it ends — returns or panics — before `shutdown`, the process is no longer doing its
/// work though it still answers: `/healthz` fails, shutdown begins, and [`finish`]
/// turns it into [`WorkerError::TaskDied`], so the binary exits non-zero and the
/// orchestrator restarts it.
pub fn spawn_core<F>(
    name: &'static str,
    health: &Health,
    shutdown: &CancellationToken,
    task: F,
) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    use futures_util::FutureExt;
    let (health, shutdown) = (health.clone(), shutdown.clone());
    tokio::spawn(async move {
        let ended = std::panic::AssertUnwindSafe(task).catch_unwind().await;
        if shutdown.is_cancelled() && ended.is_ok() {
            return;
        }
        let how = if ended.is_ok() { "stopped" } else { "panicked" };
        let why = format!("core task {name} {how}");
        tracing::error!(
            task = name,
            how,
            "core task ended while the process runs; shutting down"
        );
        health.fail(why);
        shutdown.cancel();
    })
}

/// What a worker's `run` returns once it has stopped: an error if a core task died.
pub fn finish(health: &Health, served: Result<(), WorkerError>) -> Result<(), WorkerError> {
    match health.failure() {
        Some(why) => Err(WorkerError::TaskDied(why.to_owned())),
        None => served,
    }
}

/// A worker's storage, opened.
pub struct WorkerBackends {
    pub inbound: Arc<dyn Queue>,
    pub outbound: Arc<dyn Queue>,
    pub store: Arc<dyn ConversationStore>,
    pub ledger: Arc<dyn DeliveryLedger>,
    /// Which Twilio message is which chat item, for receipts and quoted replies.
    pub index: Arc<dyn MessageIndex>,
    pub roster: Arc<dyn Roster>,
    /// The agent's files for Twilio; `None` on AWS without a bucket.
    pub media: Option<Arc<dyn MediaStore>>,
}

impl WorkerBackends {
    pub async fn open(config: &WorkerConfig) -> Result<Self, WorkerError> {
        let backend = Backend::open(&config.common).await?;
        Ok(Self {
            inbound: backend.inbound().await?,
            outbound: backend.outbound().await?,
            store: backend.store().await?,
            ledger: backend.ledger().await?,
            index: backend.message_index().await?,
            roster: backend.roster().await?,
            media: backend.media().await?,
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
    health: &Health,
    extra: Vec<Arc<dyn Readiness>>,
) -> Result<(), WorkerError> {
    let sampler = depth::spawn_sampler(
        backends.queues(),
        config.common.queues.depth_interval,
        shutdown.child_token(),
    );
    let pruner = Retained {
        store: backends.store.clone(),
        ledger: backends.ledger.clone(),
        index: backends.index.clone(),
        queues: backends.queues(),
        media: backends.media.clone(),
    }
    .spawn(config.common.retention, shutdown.child_token());
    tracing::info!(service = name, address = %listener.local_addr()?, "operations endpoints listening");
    let router = ops::router(
        Arc::new(AllReady {
            queues: QueuesReady(backends.queues()),
            extra,
        }),
        health.clone(),
    );
    let served = ops::serve(listener, router, shutdown.clone()).await;
    shutdown.cancel();
    let _ = sampler.await;
    let _ = pruner.await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_core_task_that_dies_makes_the_process_unhealthy_and_stop() {
        for dies in [
            Box::pin(async {}) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
            Box::pin(async { panic!("boom") }),
        ] {
            let (health, shutdown) = (Health::default(), CancellationToken::new());
            spawn_core("renewer", &health, &shutdown, dies)
                .await
                .unwrap();
            assert!(shutdown.is_cancelled(), "shutdown did not begin");
            let why = health.failure().expect("still healthy");
            assert!(why.contains("renewer"), "{why}");
            assert!(matches!(
                finish(&health, Ok(())),
                Err(WorkerError::TaskDied(_))
            ));
        }
    }

    #[tokio::test]
    async fn core_tasks_ending_at_shutdown_are_fine() {
        let (health, shutdown) = (Health::default(), CancellationToken::new());
        let stop = shutdown.clone();
        let task = spawn_core("consumer", &health, &shutdown, async move {
            stop.cancelled().await;
        });
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(health.failure(), None);
        assert!(finish(&health, Ok(())).is_ok());
    }
}
