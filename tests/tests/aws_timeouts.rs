//! Every SQS, DynamoDB and S3 call is bounded by WACONNECT_AWS_CALL_TIMEOUT (an upload to
//! S3 by that plus its size's time): against an endpoint that takes connections and never
//! answers, a call gives up in about four attempts' time instead of hanging (a stalled
//! lease renewal used to hold up a worker's whole renewal round until every lease lapsed;
//! a stalled S3 call held the agent's file, and every message after it in that chat).

use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use waconnect_shared::storage::media::s3::S3Store;
use waconnect_shared::storage::media::{FileMeta, MediaError, MediaStore};
use waconnect_shared::storage::store::ConversationStore;
use waconnect_shared::storage::store::StoreError;
use waconnect_shared::storage::store::dynamodb::DynamoStore;
use waconnect_shared::storage::table::Table;
use waconnect_tests::moto::Moto;

#[tokio::test]
async fn calls_to_a_stalled_endpoint_give_up_within_the_call_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Takes every connection, reads nothing, answers nothing.
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = waconnect_shared::service::config::AwsStorageConfig {
        call_timeout: Duration::from_millis(300),
        ..Moto::storage_at(&endpoint)
    };
    let (sqs, dynamodb, s3) = waconnect_shared::storage::backend::aws_clients(&config).await;
    let store = DynamoStore::new(Table::new(dynamodb, "conversations"));
    let started = Instant::now();
    let read = store.get(&waconnect_tests::key(1)).await;
    assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "DynamoDB call took {took:?}");
    let started = Instant::now();
    let sent = sqs
        .get_queue_attributes()
        .queue_url(format!("{endpoint}/123456789012/q.fifo"))
        .send()
        .await;
    assert!(sent.is_err());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "SQS call took {took:?}");
    let media = S3Store::new(s3, "media".into());
    let started = Instant::now();
    // Bounded here too: without its own bound the call would hang, not fail.
    let hung = Duration::from_secs(20);
    let found = tokio::time::timeout(hung, media.exists("c0123456789abcdef-agent-1.pdf"))
        .await
        .expect("S3 HeadObject hung");
    assert!(
        matches!(found, Err(MediaError::Unavailable(_))),
        "{found:?}"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "S3 HeadObject took {took:?}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vec![b'%'; 1024]).unwrap();
    let meta = FileMeta {
        content_type: "application/pdf".into(),
        file_name: "manual.pdf".into(),
    };
    let started = Instant::now();
    let stored = tokio::time::timeout(
        hung,
        media.put(
            "c0123456789abcdef-agent-1.pdf",
            file.into_temp_path(),
            &meta,
        ),
    )
    .await
    .expect("S3 PutObject hung");
    assert!(stored.is_err(), "{stored:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "S3 PutObject took {took:?}");
}
