//! SQS deletes through the shared [`Batcher`]: up to ten share one DeleteMessageBatch.

use super::MAX_RECEIVE_BATCH;
use crate::service::aws::CallError;
use crate::storage::batch::{Batcher, LINGER};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;

/// A queue's delete batcher.
pub type Deletes = Batcher<String>;

pub fn deletes(client: Client, url: String) -> Deletes {
    Batcher::start(
        MAX_RECEIVE_BATCH,
        LINGER,
        Box::new(move |handles| Box::pin(flush(client.clone(), url.clone(), handles))),
    )
}

async fn flush(client: Client, url: String, handles: Vec<String>) -> Vec<Result<(), CallError>> {
    let entries = handles
        .iter()
        .enumerate()
        .map(|(i, handle)| {
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
            let mut results: Vec<Result<(), CallError>> = handles.iter().map(|_| Ok(())).collect();
            for f in out.failed() {
                if let Some(slot) = f
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| results.get_mut(i))
                {
                    *slot = Err(CallError {
                        unavailable: !f.sender_fault(),
                        code: Some(f.code().to_owned()),
                        message: format!("{}: {}", f.code(), f.message().unwrap_or_default()),
                    });
                }
            }
            results
        }
        Err(e) => {
            let e = CallError::from_sdk(&e);
            handles.iter().map(|_| Err(e.clone())).collect()
        }
    }
}
