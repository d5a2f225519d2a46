//! Deletes what is no longer needed, so nothing — a customer's number above all — is kept
//! forever: ended conversations once their `ttl` passed, delivery-ledger rows, the message
//! index, dead letters and the agent's files older than their retention. On DynamoDB and SQS the storage expires them itself
//! (`ttl`, the queues' retention period) and these calls do nothing; on the embedded
//! engine this job is what keeps the SQLite file bounded.

use crate::service::config::RetentionConfig;
use crate::storage::delivery::DeliveryLedger;
use crate::storage::media::MediaStore;
use crate::storage::message_index::MessageIndex;
use crate::storage::queue::Queue;
use crate::storage::store::ConversationStore;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the job runs (and once at start): retention is counted in days.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);

/// What one process can prune.
#[derive(Clone)]
pub struct Retained {
    pub store: Arc<dyn ConversationStore>,
    pub ledger: Arc<dyn DeliveryLedger>,
    pub index: Arc<dyn MessageIndex>,
    pub queues: Vec<Arc<dyn Queue>>,
    pub media: Option<Arc<dyn MediaStore>>,
}

/// How much one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub conversations: u64,
    pub ledger: u64,
    pub messages: u64,
    pub dead_letters: u64,
    pub media: u64,
}

impl Retained {
    /// One pass; a kind whose engine fails is logged and left for the next pass.
    pub async fn prune(&self, retention: &RetentionConfig) -> Pruned {
        let now = chrono::Utc::now();
        let ago =
            |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        let mut pruned = Pruned::default();
        match self.store.prune_expired().await {
            Ok(n) => pruned.conversations = n,
            Err(e) => tracing::warn!(error = %e, "cannot prune ended conversations"),
        }
        match self.ledger.prune(ago(retention.ledger)).await {
            Ok(n) => pruned.ledger = n,
            Err(e) => tracing::warn!(error = %e, "cannot prune the delivery ledger"),
        }
        match self.index.prune(ago(retention.messages)).await {
            Ok(n) => pruned.messages = n,
            Err(e) => tracing::warn!(error = %e, "cannot prune the message index"),
        }
        for queue in &self.queues {
            match queue.prune_dead_letters(ago(retention.dead_letters)).await {
                Ok(n) => pruned.dead_letters += n,
                Err(e) => {
                    tracing::warn!(queue = queue.name(), error = %e, "cannot prune dead letters")
                }
            }
        }
        if let Some(media) = &self.media {
            match media.prune(ago(retention.media)).await {
                Ok(n) => pruned.media = n,
                Err(e) => tracing::warn!(error = %e, "cannot prune the media store"),
            }
        }
        for (kind, n) in [
            ("conversations", pruned.conversations),
            ("ledger", pruned.ledger),
            ("messages", pruned.messages),
            ("dead_letters", pruned.dead_letters),
            ("media", pruned.media),
        ] {
            if n > 0 {
                metrics::counter!("waconnect_retention_pruned_total", "kind" => kind).increment(n);
            }
        }
        if pruned != Pruned::default() {
            tracing::info!(
                conversations = pruned.conversations,
                ledger = pruned.ledger,
                messages = pruned.messages,
                dead_letters = pruned.dead_letters,
                media = pruned.media,
                "expired data deleted"
            );
        }
        pruned
    }

    /// Prunes now and every [`PRUNE_EVERY`] until `stop`.
    pub fn spawn(
        self,
        retention: RetentionConfig,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                self.prune(&retention).await;
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(PRUNE_EVERY) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CustomerAddress;
    use crate::message::conversation::Conversation;
    use crate::service::config::Synchronous;
    use crate::storage::delivery::sqlite::SqliteLedger;
    use crate::storage::media::MediaStore;
    use crate::storage::message_index::sqlite::SqliteMessageIndex;
    use crate::storage::message_index::{Author, IndexedMessage};
    use crate::storage::queue::sqlite::SqliteQueue;
    use crate::storage::queue::{Limits, NewMessage};
    use crate::storage::sqlite::Db;
    use crate::storage::store::sqlite::SqliteStore;

    fn file_size(path: &std::path::Path) -> u64 {
        let with = |suffix: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(p).map_or(0, |m| m.len())
        };
        with("") + with("-wal")
    }

    /// A soak of the embedded engine: round after round of chats that end, sent parts,
    /// dead letters and the agent's files, with everything expiring at once. Pruned, the file stops growing
    /// after the first round; unpruned, it would grow by a round's worth each time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_file_stays_bounded_when_everything_expires() {
        const ROUNDS: usize = 6;
        const PER_ROUND: usize = 300;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("soak.db");
        let db = Db::open_path(&path, Synchronous::Normal).await.unwrap();
        let store = Arc::new(SqliteStore::open(db.clone()).await.unwrap());
        let ledger = Arc::new(SqliteLedger::open(db.clone()).await.unwrap());
        let index = Arc::new(SqliteMessageIndex::open(db.clone()).await.unwrap());
        let queue = Arc::new(SqliteQueue::open(db, "q", Limits::both(5)).await.unwrap());
        let media_dir = dir.path().join("media");
        let media = Arc::new(
            crate::storage::media::directory::DirectoryStore::open(media_dir.clone(), None, None)
                .await
                .unwrap(),
        );
        let sample = dir.path().join("sample.pdf");
        std::fs::write(&sample, vec![b'%'; 4096]).unwrap();
        let retained = Retained {
            store: store.clone(),
            ledger: ledger.clone(),
            index: index.clone(),
            queues: vec![queue.clone()],
            media: Some(media.clone()),
        };
        let everything_expires = RetentionConfig {
            conversations: Duration::ZERO,
            ledger: Duration::ZERO,
            dead_letters: Duration::ZERO,
            media: Duration::ZERO,
            messages: Duration::ZERO,
        };
        let mut sizes = Vec::new();
        for round in 0..ROUNDS {
            for i in 0..PER_ROUND {
                let n = round * PER_ROUND + i;
                let customer = CustomerAddress::parse(&format!("whatsapp:+1555{n:07}")).unwrap();
                let mut c = Conversation::new(crate::ConversationKey::new(
                    crate::BusinessNumber::parse("whatsapp:+14155238886").unwrap(),
                    customer.clone(),
                ));
                c.contact_id = Some(format!("contact-{n}-{}", "x".repeat(200)));
                c.end(Duration::ZERO);
                c.ttl = Some(chrono::Utc::now().timestamp() - 1);
                store.insert(&c).await.unwrap();
                ledger.sent(&format!("item-{n}#0"), "SM0000").await.unwrap();
                index
                    .remember(IndexedMessage::new(
                        &c.key(),
                        &format!("SM{n:032}"),
                        &format!("item-{n}"),
                        Author::Customer,
                        &"words ".repeat(40),
                    ))
                    .await
                    .unwrap();
                let meta = crate::storage::media::FileMeta {
                    content_type: "application/pdf".into(),
                    file_name: "invoice.pdf".into(),
                };
                let copy = dir.path().join(format!("upload-{n}"));
                std::fs::copy(&sample, &copy).unwrap();
                media
                    .put(
                        &format!("file-{n}.pdf"),
                        tempfile::TempPath::try_from_path(copy).unwrap(),
                        &meta,
                    )
                    .await
                    .unwrap();
                queue
                    .send(NewMessage {
                        group_id: customer.as_str().to_owned(),
                        dedup_id: format!("d{n}"),
                        body: vec![b'x'; 512],
                    })
                    .await
                    .unwrap();
            }
            loop {
                let got = queue
                    .receive(10, Duration::from_secs(60), Duration::ZERO)
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                for m in got {
                    queue.dead_letter(&m.receipt, "refused").await.unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let pruned = retained.prune(&everything_expires).await;
            assert_eq!(
                pruned,
                Pruned {
                    conversations: PER_ROUND as u64,
                    ledger: PER_ROUND as u64,
                    messages: PER_ROUND as u64,
                    dead_letters: PER_ROUND as u64,
                    media: PER_ROUND as u64,
                },
                "round {round}"
            );
            // Only the signing key is left in the media directory.
            assert_eq!(std::fs::read_dir(&media_dir).unwrap().count(), 1);
            sizes.push(file_size(&path));
        }
        let (first, last) = (sizes[0], *sizes.last().unwrap());
        assert!(
            last <= first + first / 2,
            "the file grew from {first} to {last} bytes over {ROUNDS} rounds: {sizes:?}"
        );
    }
}
