//! AWS calls batched where it pays: a request waits up to a short linger for others to
//! share one batch call (SQS DeleteMessageBatch, DynamoDB BatchWriteItem). Under load that
//! turns many calls into one; a lone request goes out on its own after the linger, which
//! only delays its acknowledgement by that much.

use crate::service::aws::CallError;
use futures_util::future::BoxFuture;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// For requests someone waits on: long enough for concurrent work to meet, short next to
/// one AWS round trip.
pub const LINGER: Duration = Duration::from_millis(5);

/// Requests waiting for a batch, at most; beyond that a caller waits for room. The batching
/// task takes them as fast as they come (calls go out without being awaited), so this
/// only fills when the task is starved.
const WAITING: usize = 1024;

type Reply = oneshot::Sender<Result<(), CallError>>;

/// Sends one batch; answers one result per request, in the order given.
pub type Flush<T> = Box<dyn Fn(Vec<T>) -> BoxFuture<'static, Vec<Result<(), CallError>>> + Send>;

/// A batcher's handle; its task ends when the last handle is dropped.
pub struct Batcher<T> {
    tx: mpsc::Sender<(T, Reply)>,
}

impl<T> Clone for Batcher<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Batcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the batching task (on the current tokio runtime): batches of at most `max`,
    /// sent at most `linger` after their first request.
    pub fn start(max: usize, linger: Duration, flush: Flush<T>) -> Self {
        let (tx, rx) = mpsc::channel(WAITING);
        tokio::spawn(run(max.max(1), linger, flush, rx));
        Self { tx }
    }

    /// Does `request` with others that come within the linger.
    pub async fn call(&self, request: T) -> Result<(), CallError> {
        let (reply, answer) = oneshot::channel();
        let gone = || CallError {
            unavailable: true,
            code: None,
            message: "the batching task has stopped".into(),
        };
        self.tx.send((request, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run<T: Send + 'static>(
    max: usize,
    linger: Duration,
    flush: Flush<T>,
    mut rx: mpsc::Receiver<(T, Reply)>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(linger);
        tokio::pin!(linger);
        while batch.len() < max {
            tokio::select! {
                () = &mut linger => break,
                next = rx.recv() => match next {
                    Some(r) => batch.push(r),
                    None => break,
                },
            }
        }
        let (requests, replies): (Vec<T>, Vec<Reply>) = batch.into_iter().unzip();
        // Not awaited here: the next batch gathers while this one's call is out, so one
        // handle's throughput is not one batch per round trip.
        let call = flush(requests);
        tokio::spawn(async move {
            let mut results = call.await.into_iter();
            for reply in replies {
                let result = results.next().unwrap_or_else(|| {
                    Err(CallError {
                        unavailable: true,
                        code: None,
                        message: "the batch call gave no result for this request".into(),
                    })
                });
                let _ = reply.send(result);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn concurrent_requests_share_a_call_and_each_gets_its_own_answer() {
        let calls: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let seen = calls.clone();
        let batcher: Batcher<u32> = Batcher::start(
            3,
            LINGER,
            Box::new(move |batch: Vec<u32>| {
                seen.lock().unwrap().push(batch.clone());
                Box::pin(async move {
                    batch
                        .iter()
                        .map(|n| {
                            if n % 2 == 0 {
                                Ok(())
                            } else {
                                Err(CallError {
                                    unavailable: false,
                                    code: None,
                                    message: format!("odd {n}"),
                                })
                            }
                        })
                        .collect()
                })
            }),
        );
        let answers = futures_util::future::join_all((0..7).map(|n| batcher.call(n))).await;
        for (n, answer) in answers.iter().enumerate() {
            match answer {
                Ok(()) => assert_eq!(n % 2, 0),
                Err(e) => assert_eq!(e.message, format!("odd {n}")),
            }
        }
        let calls = calls.lock().unwrap();
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 7);
        assert!(calls.iter().all(|c| c.len() <= 3));
        assert!(
            calls.len() <= 4,
            "7 concurrent requests took {} calls",
            calls.len()
        );
    }

    #[tokio::test]
    async fn the_next_batch_does_not_wait_for_the_last_call() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (out, most): (Arc<AtomicUsize>, Arc<AtomicUsize>) = Default::default();
        let (o, m) = (out.clone(), most.clone());
        let batcher: Batcher<u32> = Batcher::start(
            2,
            LINGER,
            Box::new(move |batch: Vec<u32>| {
                let (o, m) = (o.clone(), m.clone());
                Box::pin(async move {
                    m.fetch_max(o.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    o.fetch_sub(1, Ordering::SeqCst);
                    batch.iter().map(|_| Ok(())).collect()
                })
            }),
        );
        let answers = futures_util::future::join_all((0..8).map(|n| batcher.call(n))).await;
        assert!(answers.iter().all(Result::is_ok));
        assert!(
            most.load(Ordering::SeqCst) > 1,
            "batch calls went out one at a time"
        );
    }
}
