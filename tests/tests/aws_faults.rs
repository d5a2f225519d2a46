//! The chaos run's AWS fault proxy is test equipment: its faults must read to the real
//! SDKs as the services' own (throttling as throttling, a throttled batch as partly done,
//! a server error as one), a server error "after" must leave the call applied, reads that
//! do not ask for consistency must be as stale as DynamoDB's may be, and Twilio's
//! presigned fetches must pass.

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use waconnect_shared::service::aws::{ErrorKind, classify};
use waconnect_shared::service::config::AwsStorageConfig;
use waconnect_shared::storage::delivery::DeliveryLedger;
use waconnect_shared::storage::delivery::dynamodb::DynamoLedger;
use waconnect_shared::storage::media::s3::S3Store;
use waconnect_shared::storage::media::{FileMeta, MediaStore};
use waconnect_shared::storage::table::{KEY, Table};
use waconnect_tests::aws_faults::{AwsFaults, Fault};
use waconnect_tests::moto::Moto;
use waconnect_tests::wait;

async fn setup() -> (AwsFaults, AwsStorageConfig) {
    let moto = Moto::shared();
    let proxy = AwsFaults::start(&moto.endpoint, 7).await;
    let config = AwsStorageConfig {
        endpoint: Some(proxy.endpoint.clone()),
        ..moto.fresh("faults", 5).await
    };
    (proxy, config)
}

/// One message, always with the same dedup id.
async fn send(
    sqs: &aws_sdk_sqs::Client,
    config: &AwsStorageConfig,
) -> Result<
    aws_sdk_sqs::operation::send_message::SendMessageOutput,
    aws_sdk_sqs::error::SdkError<aws_sdk_sqs::operation::send_message::SendMessageError>,
> {
    sqs.send_message()
        .queue_url(&config.inbound_queue_url)
        .message_body("m")
        .message_group_id("g")
        .message_deduplication_id("d")
        .send()
        .await
}

#[tokio::test]
async fn throttling_reads_as_throttling_to_every_sdk() {
    let (proxy, config) = setup().await;
    let (sqs, dynamodb, s3) = waconnect_shared::storage::backend::aws_clients(&config).await;
    proxy.set(Fault::Throttle(1));

    let err = dynamodb
        .get_item()
        .table_name(&config.table)
        .key(KEY, AttributeValue::S("k".into()))
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(
        classify(&err),
        (ErrorKind::Throttled, Some("ThrottlingException".into()))
    );
    let err = send(&sqs, &config).await.expect_err("throttled");
    assert_eq!(
        classify(&err),
        (ErrorKind::Throttled, Some("RequestThrottled".into()))
    );
    let err = s3
        .head_object()
        .bucket(config.media_bucket.as_deref().unwrap())
        .key("k")
        .send()
        .await
        .expect_err("throttled");
    // HEAD answers carry no body: the status alone says so, as S3's 503 SlowDown does.
    assert_eq!(classify(&err).0, ErrorKind::Server);
    let err = s3
        .list_objects_v2()
        .bucket(config.media_bucket.as_deref().unwrap())
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(
        classify(&err),
        (ErrorKind::Throttled, Some("SlowDown".into()))
    );
    // The SDKs tried again (their standard policy) before they gave up.
    assert!(proxy.failed().throttled > 4, "{:?}", proxy.failed());
}

#[tokio::test]
async fn a_server_error_after_the_call_leaves_it_applied() {
    let (proxy, config) = setup().await;
    let (sqs, dynamodb, _) = waconnect_shared::storage::backend::aws_clients(&config).await;
    // Draws until one call failed after it was applied (half of them are): moto must
    // then hold what the caller was told had failed.
    let mut applied = 0;
    for i in 0..20 {
        proxy.set(Fault::ServerErrors(1));
        let before = proxy.failed();
        let err = dynamodb
            .put_item()
            .table_name(&config.table)
            .item(KEY, AttributeValue::S(format!("k{i}")))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .expect_err("failed");
        assert_eq!(classify(&err).0, ErrorKind::Server);
        let after = proxy.failed();
        proxy.set(Fault::None);
        let held = dynamodb
            .get_item()
            .table_name(&config.table)
            .key(KEY, AttributeValue::S(format!("k{i}")))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .is_some();
        assert_eq!(held, after.after > before.after, "{before:?} {after:?}");
        applied += usize::from(held);
        if applied >= 2 {
            break;
        }
    }
    assert!(applied >= 2, "no call was failed after it was applied");

    // An SQS send applied but answered 500: sent again with its dedup id, it is one
    // message, as on SQS.
    // As above, until one attempt was applied (each try, 7 in 8 are).
    let mut applied = false;
    for _ in 0..20 {
        proxy.set(Fault::ServerErrors(1));
        let before = proxy.failed().after;
        assert!(send(&sqs, &config).await.is_err());
        if proxy.failed().after > before {
            applied = true;
            break;
        }
    }
    assert!(applied, "no send was failed after it was applied");
    proxy.set(Fault::None);
    send(&sqs, &config).await.unwrap();
    let received = sqs
        .receive_message()
        .queue_url(&config.inbound_queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    assert_eq!(received.messages().len(), 1);
}

#[tokio::test]
async fn a_presigned_fetch_passes_whatever_the_fault() {
    let (proxy, config) = setup().await;
    let (_, _, s3) = waconnect_shared::storage::backend::aws_clients(&config).await;
    let store = S3Store::new(s3, config.media_bucket.clone().unwrap());
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"%PDF-1.4 manual").unwrap();
    let meta = FileMeta {
        content_type: "application/pdf".into(),
        file_name: "manual.pdf".into(),
    };
    store
        .put(
            "c0123456789abcdef-agent-1.pdf",
            file.into_temp_path(),
            &meta,
        )
        .await
        .unwrap();
    let url = store
        .url("c0123456789abcdef-agent-1.pdf", Duration::from_secs(300))
        .await
        .unwrap();
    assert!(url.starts_with(&proxy.endpoint), "{url}");
    proxy.set(Fault::Throttle(1));
    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), b"%PDF-1.4 manual");
    assert_eq!(proxy.failed().throttled, 0);
}

#[tokio::test]
async fn a_throttled_dynamodb_batch_does_part_and_hands_back_the_rest() {
    let (proxy, config) = setup().await;
    let (_, dynamodb, _) = waconnect_shared::storage::backend::aws_clients(&config).await;
    let keys: Vec<String> = (0..8).map(|i| format!("batch-{i}")).collect();
    let put = |k: &String| {
        WriteRequest::builder()
            .put_request(
                PutRequest::builder()
                    .item(KEY, AttributeValue::S(k.clone()))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    proxy.set(Fault::Throttle(1));
    let out = dynamodb
        .batch_write_item()
        .request_items(&config.table, keys.iter().map(put).collect())
        .send()
        .await
        .expect("a throttled batch is answered, not failed");
    let left: Vec<String> = out
        .unprocessed_items()
        .and_then(|u| u.get(&config.table))
        .into_iter()
        .flatten()
        .filter_map(|w| w.put_request()?.item().get(KEY)?.as_s().ok().cloned())
        .collect();
    assert!(!left.is_empty() && left.len() < keys.len(), "{left:?}");
    assert_eq!(proxy.failed().partial, 1);

    // What was said to be done is there; what was handed back is not.
    let get = |keys: &[String], consistent: bool| {
        let mut request = KeysAndAttributes::builder().consistent_read(consistent);
        for k in keys {
            request = request.keys(HashMap::from([(
                KEY.to_owned(),
                AttributeValue::S(k.clone()),
            )]));
        }
        dynamodb
            .batch_get_item()
            .request_items(&config.table, request.build().unwrap())
            .send()
    };
    proxy.set(Fault::None);
    let found = get(&keys, true).await.unwrap();
    let mut there: Vec<String> = found.responses().unwrap()[&config.table]
        .iter()
        .filter_map(|i| i.get(KEY)?.as_s().ok().cloned())
        .collect();
    there.sort();
    let done: Vec<String> = keys.iter().filter(|k| !left.contains(k)).cloned().collect();
    assert_eq!(there, done);

    // A throttled read likewise: its unprocessed keys keep the request's consistency.
    proxy.set(Fault::Throttle(1));
    let out = get(&done, true).await.unwrap();
    let unread = &out.unprocessed_keys().unwrap()[&config.table];
    assert_eq!(unread.consistent_read(), Some(true));
    let read = out
        .responses()
        .unwrap()
        .get(&config.table)
        .map_or(0, Vec::len);
    assert!(!unread.keys().is_empty(), "nothing was held back");
    assert_eq!(read + unread.keys().len(), done.len());
}

/// An outcome the ledger says it recorded under throttling has its SID's owner recorded
/// too: a sender that reconciles another part with the same text must not take that SID
/// for its own.
#[tokio::test]
async fn an_outcome_recorded_under_throttling_names_its_sid_owner() {
    let (proxy, config) = setup().await;
    let (_, dynamodb, _) = waconnect_shared::storage::backend::aws_clients(&config).await;
    let ledger = Arc::new(DynamoLedger::new(
        Table::new(dynamodb, config.table.clone()),
        Duration::from_secs(3600),
    ));
    proxy.set(Fault::Throttle(1));
    // At once, so they share batches: each outcome is two items (the part, the SID).
    let parts: Vec<(String, String)> = (0..12)
        .map(|i| (format!("item-{i}#0"), format!("SM{i:032x}")))
        .collect();
    let mut written = tokio::task::JoinSet::new();
    for (key, sid) in parts.clone() {
        let ledger = ledger.clone();
        written.spawn(async move { (ledger.sent(&key, &sid).await, key, sid) });
    }
    let mut recorded = Vec::new();
    while let Some(done) = written.join_next().await {
        let (result, key, sid) = done.unwrap();
        if result.is_ok() {
            recorded.push((key, sid));
        }
    }
    assert!(proxy.failed().partial > 0, "{:?}", proxy.failed());
    assert!(
        !recorded.is_empty(),
        "nothing was recorded: no case to check"
    );
    proxy.set(Fault::None);
    let sids: Vec<String> = recorded.iter().map(|(_, sid)| sid.clone()).collect();
    let owners = ledger.owned(&sids).await.unwrap();
    for (key, sid) in &recorded {
        assert_eq!(
            owners.get(sid),
            Some(key),
            "{sid} recorded for {key} without its owner"
        );
    }
}

/// DynamoDB's reads are eventually consistent unless they ask: through the proxy, a new
/// item is missed by such a read for a moment, as by a replica that has not seen it yet.
/// The ledger must read a SID's owner consistently: the owner of a part sent a moment ago
/// is what keeps another part with the same text from taking that part's message.
#[tokio::test]
async fn a_new_item_is_missed_by_an_eventually_consistent_read_for_a_moment() {
    let (proxy, config) = setup().await;
    let (_, dynamodb, _) = waconnect_shared::storage::backend::aws_clients(&config).await;
    dynamodb
        .put_item()
        .table_name(&config.table)
        .item(KEY, AttributeValue::S("new".into()))
        .send()
        .await
        .unwrap();
    let read = |consistent: bool| {
        dynamodb
            .get_item()
            .table_name(&config.table)
            .key(KEY, AttributeValue::S("new".into()))
            .consistent_read(consistent)
            .send()
    };
    assert!(read(false).await.unwrap().item.is_none());
    assert!(read(true).await.unwrap().item.is_some());
    assert_eq!(proxy.failed().stale_reads, 1);

    let ledger = DynamoLedger::new(
        Table::new(dynamodb.clone(), config.table.clone()),
        Duration::from_secs(3600),
    );
    let sid = format!("SM{:032x}", 42);
    ledger.sent("item-1#0", &sid).await.unwrap();
    let owners = ledger.owned(std::slice::from_ref(&sid)).await.unwrap();
    assert_eq!(owners.get(&sid).map(String::as_str), Some("item-1#0"));

    // Past the lag, every read sees it.
    wait::until("the replicas", Duration::from_secs(5), || async {
        read(false).await.unwrap().item.map(|_| ())
    })
    .await;
}
