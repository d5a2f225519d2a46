//! The queue, store, delivery-ledger, roster and media store contracts against the AWS engines (SQS FIFO, DynamoDB) on moto.

use waconnect_tests::engines::AwsEngine;

mod queue {
    use super::*;
    waconnect_tests::queue_contract_tests!(AwsEngine::new());
}

mod store {
    use super::*;
    waconnect_tests::store_contract_tests!(AwsEngine::new(), env!("CARGO_BIN_EXE_lease-contender"));
}

mod ledger {
    use super::*;
    waconnect_tests::ledger_contract_tests!(AwsEngine::new());
}

mod message_index {
    use super::*;
    waconnect_tests::index_contract_tests!(AwsEngine::new());
}

mod media {
    use super::*;
    waconnect_tests::media_contract_tests!(AwsEngine::new());
}

mod roster {
    use super::*;
    waconnect_tests::roster_contract_tests!(AwsEngine::new());
}

/// Where the contracts rely on SQS behaviour that moto does not have on its own
/// (tests/moto/server.py brings it in line): checked against moto directly, through the
/// SDK, so the emulator cannot drift back unnoticed.
mod moto_as_sqs {
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    use std::time::Duration;
    use waconnect_tests::moto::Moto;

    /// A delivery whose visibility ran out is no longer in flight: its receipt cannot hide
    /// the message again (SQS answers MessageNotInflight, which the SDK reports by its
    /// query-compatible code), and once the message is received again the old receipt is
    /// refused outright.
    #[tokio::test]
    async fn a_lapsed_delivery_cannot_be_extended() {
        let moto = Moto::shared();
        let url = moto.queue("moto-lapsed", 10).await;
        let (sqs, _) = moto.clients().await;
        sqs.send_message()
            .queue_url(&url)
            .message_body("x")
            .message_group_id("g")
            .message_deduplication_id("d")
            .send()
            .await
            .unwrap();
        let receive = || async {
            sqs.receive_message()
                .queue_url(&url)
                .visibility_timeout(1)
                .wait_time_seconds(3)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default()
                .pop()
                .and_then(|m| m.receipt_handle)
                .expect("the message")
        };
        let extend = |receipt: String| {
            let sqs = sqs.clone();
            let url = url.clone();
            async move {
                sqs.change_message_visibility()
                    .queue_url(url)
                    .receipt_handle(receipt)
                    .visibility_timeout(30)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.code().unwrap_or_default().to_owned())
            }
        };
        let first = receive().await;
        // The one-second visibility timeout runs out: nothing to await but the clock.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            extend(first.clone()).await,
            Err("AWS.SimpleQueueService.MessageNotInflight".to_owned())
        );
        let second = receive().await;
        assert_eq!(
            extend(first).await,
            Err("ReceiptHandleIsInvalid".to_owned())
        );
        assert_eq!(extend(second).await, Ok(()));
    }
}
