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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::queue::sqlite::SqliteQueue;
    use crate::queue::{DeadLetter, FailOutcome, NewMessage, QueueError, QueueStats, Receipt};
    use crate::sqlite::Db;
    use async_trait::async_trait;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// The embedded queue, counting the receives that brought messages.
    struct Counted {
        inner: SqliteQueue,
        receives: AtomicUsize,
    }

    #[async_trait]
    impl Queue for Counted {
        fn name(&self) -> &str {
            self.inner.name()
        }
        async fn send(&self, m: NewMessage) -> Result<crate::queue::Sent, QueueError> {
            self.inner.send(m).await
        }
        async fn receive(
            &self,
            max: usize,
            visibility: Duration,
            wait: Duration,
        ) -> Result<Vec<ReceivedMessage>, QueueError> {
            let got = self.inner.receive(max, visibility, wait).await?;
            if !got.is_empty() {
                self.receives.fetch_add(1, Ordering::Relaxed);
            }
            Ok(got)
        }
        async fn delete(&self, r: &Receipt) -> Result<(), QueueError> {
            self.inner.delete(r).await
        }
        async fn change_visibility(&self, r: &Receipt, t: Duration) -> Result<(), QueueError> {
            self.inner.change_visibility(r, t).await
        }
        async fn fail(
            &self,
            r: &Receipt,
            reason: &str,
            after: Duration,
        ) -> Result<FailOutcome, QueueError> {
            self.inner.fail(r, reason, after).await
        }
        async fn dead_letter(&self, r: &Receipt, reason: &str) -> Result<(), QueueError> {
            self.inner.dead_letter(r, reason).await
        }
        async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
            self.inner.dead_letters(limit).await
        }
        async fn stats(&self) -> Result<QueueStats, QueueError> {
            self.inner.stats().await
        }
    }

    async fn send(q: &dyn Queue, i: usize) {
        q.send(NewMessage {
            group_id: format!("g{i}"),
            dedup_id: format!("d{i}"),
            body: i.to_string().into_bytes(),
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_draining_the_queue_later_messages_share_a_receive() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_path(&dir.path().join("q.db"), Synchronous::Normal)
            .await
            .unwrap();
        let queue = Arc::new(Counted {
            inner: SqliteQueue::open(db, "q", 5).await.unwrap(),
            receives: AtomicUsize::new(0),
        });
        let handled: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
        let settings = ConsumerSettings {
            concurrency: 16,
            visibility: Duration::from_secs(30),
            grace: Duration::from_secs(5),
            gather: Duration::from_secs(1),
        };
        let stop = CancellationToken::new();
        let consumer = tokio::spawn(consume(queue.clone(), settings, stop.clone(), {
            let (queue, handled) = (queue.clone(), handled.clone());
            move |m: ReceivedMessage| {
                let (queue, handled) = (queue.clone(), handled.clone());
                async move {
                    queue.delete(&m.receipt).await.unwrap();
                    handled.lock().unwrap().push((
                        String::from_utf8_lossy(&m.body).parse().unwrap(),
                        Instant::now(),
                    ));
                    Handled::Settled
                }
            }
        }));
        let count = || handled.lock().unwrap().len();
        let until = async |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while count() < n {
                assert!(Instant::now() < deadline, "only {} of {n} handled", count());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };

        // Into an idle queue: taken at once, the gather does not delay it.
        let sent = Instant::now();
        send(queue.as_ref(), 0).await;
        until(1).await;
        let waited = handled.lock().unwrap()[0].1 - sent;
        assert!(waited < Duration::from_millis(500), "waited {waited:?}");

        // Ten more, 30 ms apart, while the consumer gathers: they share receives.
        for i in 1..=10 {
            send(queue.as_ref(), i).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        until(11).await;
        let receives = queue.receives.load(Ordering::Relaxed);
        assert!(
            receives <= 4,
            "11 messages took {receives} receives; gathering should share them"
        );
        stop.cancel();
        consumer.await.unwrap();
    }
}
