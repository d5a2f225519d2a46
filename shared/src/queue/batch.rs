//! Deletes for SQS, batched where it pays: a delete waits up to [`LINGER`] for others to
//! share one DeleteMessageBatch (up to 10). Under load that turns ten calls into one; a
//! lone delete goes out on its own after the linger, which only delays the
//! acknowledgement, never the message's delivery.

use super::MAX_RECEIVE_BATCH;
use crate::aws::CallError;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub const LINGER: Duration = Duration::from_millis(5);

type Reply = oneshot::Sender<Result<(), CallError>>;

/// A queue's delete batcher; its task ends when the last handle is dropped.
#[derive(Clone)]
pub struct Deletes {
    tx: mpsc::UnboundedSender<(String, Reply)>,
}

impl Deletes {
    pub fn start(client: Client, url: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, url, rx));
        Self { tx }
    }

    /// Deletes the message `receipt_handle` names, with others if they come soon.
    pub async fn delete(&self, receipt_handle: &str) -> Result<(), CallError> {
        let (reply, answer) = oneshot::channel();
        let gone = || CallError {
            unavailable: true,
            code: None,
            message: "the delete batcher has stopped".into(),
        };
        self.tx
            .send((receipt_handle.to_owned(), reply))
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(client: Client, url: String, mut rx: mpsc::UnboundedReceiver<(String, Reply)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < MAX_RECEIVE_BATCH {
            tokio::select! {
                () = &mut linger => break,
                next = rx.recv() => match next {
                    Some(d) => batch.push(d),
                    None => break,
                },
            }
        }
        flush(&client, &url, batch).await;
    }
}

async fn flush(client: &Client, url: &str, batch: Vec<(String, Reply)>) {
    let entries = batch
        .iter()
        .enumerate()
        .map(|(i, (handle, _))| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(handle)
                .build()
                .expect("id and receipt are set")
        })
        .collect();
    let result = client
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await;
    match result {
        Ok(out) => {
            let mut failed: Vec<Option<CallError>> = (0..batch.len()).map(|_| None).collect();
            for f in out.failed() {
                if let Some(slot) = f.id().parse::<usize>().ok().and_then(|i| failed.get_mut(i)) {
                    *slot = Some(CallError {
                        unavailable: !f.sender_fault(),
                        code: Some(f.code().to_owned()),
                        message: format!("{}: {}", f.code(), f.message().unwrap_or_default()),
                    });
                }
            }
            for ((_, reply), failure) in batch.into_iter().zip(failed) {
                let _ = reply.send(failure.map_or(Ok(()), Err));
            }
        }
        Err(e) => {
            let e = CallError::from_sdk(&e);
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
