//! The queue-consuming loop both workers run: receive as many messages as there are free
//! slots, handle each group's messages in order in its own task, and on shutdown stop
//! receiving, hand back what was just received, and give in-flight work a bounded grace
//! period.

use crate::queue::{MAX_RECEIVE_BATCH, Queue, ReceivedMessage};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    /// Messages handled at once (each from a different FIFO group).
    pub concurrency: usize,
    pub visibility: Duration,
    /// Bound on waiting for in-flight messages at shutdown.
    pub grace: Duration,
    /// After a receive that took everything there was, wait this long before the next:
    /// later messages then share a receive (and their deletes a batch) instead of costing
    /// a call each. A message arriving into an idle queue is not delayed, since the long
    /// poll answers at once; one arriving while the consumer waits is, by at most this.
    pub gather: Duration,
}

/// What a handler did with its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Deleted or dead-lettered: the group's next message may go.
    Settled,
    /// Left in the queue (a retry, a failed acknowledgement, shutdown): it comes back
    /// first, so the group's later messages must wait for it.
    Pending,
}

/// Runs `handle` for every message received from `queue` until `stop`. The handler owns
/// the outcome (delete, fail, dead-letter); one that does not finish within the grace
/// period is aborted and its message comes back after its visibility timeout.
///
/// An SQS FIFO receive may return several messages of one group, in order: they run one
/// after another, and when one stays pending the rest are handed back at once (the queue
/// keeps them behind it).
pub async fn consume<H, Fut>(
    queue: Arc<dyn Queue>,
    settings: ConsumerSettings,
    stop: CancellationToken,
    handle: H,
) where
    H: Fn(ReceivedMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let handle = Arc::new(handle);
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let free = permits.available_permits().min(MAX_RECEIVE_BATCH);
        if free == 0 {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tasks.join_next() => continue,
            }
        }
        // Not raced against `stop`: a receive abandoned midway would leave its messages
        // invisible for a whole visibility timeout. A short poll keeps shutdown prompt.
        let received = queue
            .receive(free, settings.visibility, Duration::from_secs(1))
            .await;
        if stop.is_cancelled() {
            for m in received.iter().flatten() {
                // Straight back to the queue for another worker.
                if let Err(e) = queue.change_visibility(&m.receipt, Duration::ZERO).await {
                    tracing::warn!(queue = queue.name(), error = %e, "cannot hand a message back");
                }
            }
            break;
        }
        let messages = match received {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(queue = queue.name(), error = %e, "receive failed");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let drained = messages.len() < free;
        for group in by_group(messages) {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (handle, queue) = (handle.clone(), queue.clone());
            tasks.spawn(async move {
                run_group(queue.as_ref(), group, handle.as_ref()).await;
                drop(permit);
            });
        }
        if drained && !settings.gather.is_zero() {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(settings.gather) => {}
            }
        }
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(settings.grace, drain).await.is_err() {
        tracing::warn!(
            queue = queue.name(),
            left = tasks.len(),
            "in-flight messages left to the queue at shutdown"
        );
        tasks.abort_all();
    }
}

/// Splits a batch into its groups, each in received (queue) order.
fn by_group(messages: Vec<ReceivedMessage>) -> Vec<VecDeque<ReceivedMessage>> {
    let mut groups: Vec<VecDeque<ReceivedMessage>> = Vec::new();
    for m in messages {
        match groups.iter_mut().find(|g| g[0].group_id == m.group_id) {
            Some(g) => g.push_back(m),
            None => groups.push(VecDeque::from([m])),
        }
    }
    groups
}

async fn run_group<H, Fut>(queue: &dyn Queue, mut group: VecDeque<ReceivedMessage>, handle: &H)
where
    H: Fn(ReceivedMessage) -> Fut,
    Fut: Future<Output = Handled>,
{
    while let Some(message) = group.pop_front() {
        if handle(message).await == Handled::Pending {
            for later in group {
                if let Err(e) = queue
                    .change_visibility(&later.receipt, Duration::ZERO)
                    .await
                {
                    tracing::warn!(queue = queue.name(), error = %e, "cannot hand a message back");
                }
            }
            return;
        }
    }
}
