//! The queue-consuming loop both workers run: receive as many messages as there are free
//! slots, handle each group's messages in order in its own task, keep the messages being
//! worked on invisible for as long as the work lasts, and on shutdown stop receiving, hand
//! back what was just received, and give in-flight work a bounded grace period.
//!
//! Hand-backs use [`Queue::release`], which costs a message no attempt: only a handler's
//! own `fail` brings a message nearer the dead-letter queue.

use crate::storage::queue::{
    FailOutcome, MAX_RECEIVE_BATCH, Queue, QueueError, Receipt, ReceivedMessage,
};
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
    /// The longest a handler may work on one message ([`HANDLING_LIMIT`] in the
    /// services). Its calls each have a timeout and its retries a bound, so only a bug
    /// reaches this; without it, a handler stuck for good would hold its message, and its
    /// customer's every later one, invisible for as long as the worker lives.
    pub limit: Duration,
}

/// The relay's [`ConsumerSettings::limit`], and the sender's beyond the age at which it
/// gives a message up (it holds one while Twilio refuses, until then): far beyond what a
/// message's work may take (a 16 MiB file fetched, converted and uploaded through slow
/// providers, a chat restarted three times), and short enough that a customer is not
/// left for hours.
pub const HANDLING_LIMIT: Duration = Duration::from_secs(15 * 60);

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
                if let Err(e) = queue.release(&m.receipt).await {
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
                run_group(queue, group, settings, handle.as_ref()).await;
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

/// Handles a group's messages in order. While they wait or run, a keeper extends their
/// visibility every third of it, so a slow handler (a provider answering slowly, a long
/// retry) never lets another worker take the same message. A message whose extension is
/// refused as stale was already handed to someone else: its handler is stopped at its next
/// await, before it acts again, and the rest of the group goes back untouched. A handler
/// past the settings' `limit` is stopped too, and its message failed (see [`overrun`]).
async fn run_group<H, Fut>(
    queue: Arc<dyn Queue>,
    group: VecDeque<ReceivedMessage>,
    settings: ConsumerSettings,
    handle: &H,
) where
    H: Fn(ReceivedMessage) -> Fut,
    Fut: Future<Output = Handled>,
{
    let waiting: Vec<Receipt> = group.iter().map(|m| m.receipt.clone()).collect();
    let open = Arc::new(std::sync::Mutex::new(waiting));
    let stale = CancellationToken::new();
    let keeper = tokio::spawn(keep_invisible(
        queue.clone(),
        open.clone(),
        settings.visibility,
        stale.clone(),
    ));
    let mut group = group;
    while let Some(message) = group.pop_front() {
        if stale.is_cancelled() {
            break;
        }
        let (receipt, id) = (message.receipt.clone(), message.message_id.clone());
        tracing::debug!(queue = queue.name(), message_id = %id, receives = message.receive_count, "handling");
        let handled = tokio::select! {
            biased;
            () = stale.cancelled() => {
                tracing::warn!(queue = queue.name(), message_id = %id, "delivery taken over while being handled; stopped");
                metrics::counter!("waconnect_queue_stale_deliveries_total", "queue" => queue.name().to_owned()).increment(1);
                Handled::Pending
            }
            handled = tokio::time::timeout(settings.limit, handle(message)) => match handled {
                Ok(handled) => handled,
                Err(_) => overrun(queue.as_ref(), &receipt, &id, settings.limit).await,
            },
        };
        open.lock()
            .expect("receipts poisoned")
            .retain(|r| *r != receipt);
        if handled == Handled::Pending {
            break;
        }
    }
    keeper.abort();
    if !stale.is_cancelled() {
        for later in group {
            if let Err(e) = queue.release(&later.receipt).await {
                tracing::warn!(queue = queue.name(), error = %e, "cannot hand a message back");
            }
        }
    }
}

/// Fails a message whose handler ran past `limit` and was stopped: the failure spends an
/// attempt, so a message that stalls every handler ends in the dead-letter queue, with
/// this reason, instead of stalling its group for good. It may come back at once: a
/// handler that hung on a passing fault usually does not hang twice.
async fn overrun(queue: &dyn Queue, receipt: &Receipt, id: &str, limit: Duration) -> Handled {
    let reason = format!("its handling did not finish within {limit:?} and was stopped");
    tracing::error!(queue = queue.name(), message_id = %id, %reason, "handler overran");
    metrics::counter!("waconnect_queue_handling_overruns_total", "queue" => queue.name().to_owned())
        .increment(1);
    match queue.fail(receipt, &reason, Duration::ZERO).await {
        Ok(FailOutcome::DeadLettered) => {
            tracing::error!(queue = queue.name(), message_id = %id, "dead-lettered after overrunning every attempt");
            Handled::Settled
        }
        Ok(FailOutcome::WillRetry) => Handled::Pending,
        // Its visibility then lapses as after a crash, and it comes back the same way.
        Err(e) => {
            tracing::warn!(queue = queue.name(), error = %e, "cannot fail an overrun message");
            Handled::Pending
        }
    }
}

/// Extends the visibility of every receipt in `open` every third of `visibility`, until
/// aborted; cancels `stale` when one of them is no longer this worker's.
async fn keep_invisible(
    queue: Arc<dyn Queue>,
    open: Arc<std::sync::Mutex<Vec<Receipt>>>,
    visibility: Duration,
    stale: CancellationToken,
) {
    let every = (visibility / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let receipts = open.lock().expect("receipts poisoned").clone();
        for receipt in receipts {
            match queue.change_visibility(&receipt, visibility).await {
                Ok(()) => {}
                // Unless its handler settled it meanwhile.
                Err(QueueError::StaleReceipt)
                    if open.lock().expect("receipts poisoned").contains(&receipt) =>
                {
                    stale.cancel();
                    return;
                }
                Err(QueueError::StaleReceipt) => {}
                // Passing trouble: the next round tries again, well inside the timeout.
                Err(e) => {
                    tracing::warn!(queue = queue.name(), error = %e, "cannot extend a delivery's visibility")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::Synchronous;
    use crate::storage::queue::sqlite::SqliteQueue;
    use crate::storage::queue::{
        DeadLetter, FailOutcome, NewMessage, QueueError, QueueStats, Receipt,
    };
    use crate::storage::sqlite::Db;
    use async_trait::async_trait;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// The embedded queue, counting the receives that brought messages, and able to act
    /// as if every delivery had been taken over by another worker.
    struct Counted {
        inner: SqliteQueue,
        receives: AtomicUsize,
        taken_over: std::sync::atomic::AtomicBool,
    }

    impl Counted {
        async fn open(dir: &tempfile::TempDir) -> Arc<Self> {
            let db = Db::open_path(&dir.path().join("q.db"), Synchronous::Normal)
                .await
                .unwrap();
            Arc::new(Counted {
                inner: SqliteQueue::open(db, "q", crate::storage::queue::Limits::both(5))
                    .await
                    .unwrap(),
                receives: AtomicUsize::new(0),
                taken_over: Default::default(),
            })
        }
    }

    #[async_trait]
    impl Queue for Counted {
        fn name(&self) -> &str {
            self.inner.name()
        }
        async fn send(&self, m: NewMessage) -> Result<crate::storage::queue::Sent, QueueError> {
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
            if self.taken_over.load(Ordering::Relaxed) {
                return Err(QueueError::StaleReceipt);
            }
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
        async fn take_dead_letters(
            &self,
            ids: &[String],
            take: crate::storage::queue::Take,
        ) -> Result<Vec<String>, QueueError> {
            self.inner.take_dead_letters(ids, take).await
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
        let queue = Counted::open(&dir).await;
        let handled: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
        let settings = ConsumerSettings {
            concurrency: 16,
            visibility: Duration::from_secs(30),
            grace: Duration::from_secs(5),
            gather: Duration::from_secs(1),
            limit: HANDLING_LIMIT,
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

    fn settings(visibility: Duration) -> ConsumerSettings {
        ConsumerSettings {
            concurrency: 4,
            visibility,
            grace: Duration::from_secs(5),
            gather: Duration::ZERO,
            limit: HANDLING_LIMIT,
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A handler that takes four times the visibility timeout (a provider answering
    /// slowly) keeps its message: a second worker never gets it meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_handler_keeps_its_message_from_other_workers() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Counted::open(&dir).await;
        let (runs, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = CancellationToken::new();
        let visibility = Duration::from_millis(300);
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (queue, runs, done) = (queue.clone(), runs.clone(), done.clone());
                tokio::spawn(consume(
                    queue.clone(),
                    settings(visibility),
                    stop.clone(),
                    move |m| {
                        let (queue, runs, done) = (queue.clone(), runs.clone(), done.clone());
                        async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(visibility * 4).await;
                            queue.delete(&m.receipt).await.unwrap();
                            done.fetch_add(1, Ordering::SeqCst);
                            Handled::Settled
                        }
                    },
                ))
            })
            .collect();
        send(queue.as_ref(), 0).await;
        until("the slow handler to finish", || {
            done.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "handled twice at once");
        stop.cancel();
        for w in workers {
            w.await.unwrap();
        }
    }

    /// When the queue says a delivery is no longer ours, its handler is stopped before it
    /// acts again, and nothing of its group is handed back by this worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_whose_delivery_was_taken_over_is_stopped() {
        struct Dropped(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let queue = Counted::open(&dir).await;
        let (started, acted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = CancellationToken::new();
        let consumer = tokio::spawn(consume(
            queue.clone(),
            settings(Duration::from_millis(300)),
            stop.clone(),
            {
                let (started, acted, dropped) = (started.clone(), acted.clone(), dropped.clone());
                move |_m| {
                    let (started, acted, dropped) =
                        (started.clone(), acted.clone(), dropped.clone());
                    async move {
                        let _guard = Dropped(dropped);
                        started.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        acted.fetch_add(1, Ordering::SeqCst);
                        Handled::Settled
                    }
                }
            },
        ));
        send(queue.as_ref(), 0).await;
        until("the handler to start", || {
            started.load(Ordering::SeqCst) == 1
        })
        .await;
        queue.taken_over.store(true, Ordering::SeqCst);
        until("the handler to be stopped", || {
            dropped.load(Ordering::SeqCst)
        })
        .await;
        assert_eq!(acted.load(Ordering::SeqCst), 0);
        stop.cancel();
        consumer.await.unwrap();
    }

    /// A handler stuck for good (a call that never answers) is stopped at the limit and
    /// its message failed, spending an attempt: it comes back, and its group's next
    /// message goes after it, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_stuck_past_the_limit_is_stopped_and_its_message_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Counted::open(&dir).await;
        for body in ["a", "b"] {
            queue
                .send(NewMessage {
                    group_id: "g".into(),
                    dedup_id: body.into(),
                    body: body.as_bytes().to_vec(),
                })
                .await
                .unwrap();
        }
        let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
        let stop = CancellationToken::new();
        let mut settings = settings(Duration::from_millis(300));
        settings.limit = Duration::from_millis(700);
        let consumer = tokio::spawn(consume(queue.clone(), settings, stop.clone(), {
            let (queue, seen) = (queue.clone(), seen.clone());
            move |m: ReceivedMessage| {
                let (queue, seen) = (queue.clone(), seen.clone());
                async move {
                    let body = String::from_utf8_lossy(&m.body).into_owned();
                    let first = seen.lock().unwrap().is_empty();
                    seen.lock().unwrap().push((body, m.receive_count));
                    if first {
                        std::future::pending::<()>().await;
                    }
                    queue.delete(&m.receipt).await.unwrap();
                    Handled::Settled
                }
            }
        }));
        until("the stuck message to come back, then its successor", || {
            seen.lock().unwrap().len() == 3
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [("a".into(), 1), ("a".into(), 2), ("b".into(), 1)],
            "the overrun spends one attempt and keeps the group's order"
        );
        stop.cancel();
        consumer.await.unwrap();
    }
}
