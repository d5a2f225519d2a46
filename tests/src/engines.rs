//! How the contract suites get fresh queues and stores from each engine.

use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;
use waconnect_shared::service::config::Synchronous;
use waconnect_shared::storage::delivery::DeliveryLedger;
use waconnect_shared::storage::delivery::dynamodb::DynamoLedger;
use waconnect_shared::storage::delivery::sqlite::SqliteLedger;
use waconnect_shared::storage::media::MediaStore;
use waconnect_shared::storage::message_index::MessageIndex;
use waconnect_shared::storage::message_index::dynamodb::DynamoMessageIndex;
use waconnect_shared::storage::message_index::sqlite::SqliteMessageIndex;
use waconnect_shared::storage::queue::sqlite::SqliteQueue;
use waconnect_shared::storage::queue::{Limits, Queue};
use waconnect_shared::storage::roster::Roster;
use waconnect_shared::storage::roster::dynamodb::DynamoRoster;
use waconnect_shared::storage::roster::sqlite::SqliteRoster;
use waconnect_shared::storage::sqlite::Db;
use waconnect_shared::storage::store::ConversationStore;
use waconnect_shared::storage::store::sqlite::SqliteStore;

#[async_trait]
pub trait QueueEngine: Send + Sync {
    /// A new, empty queue allowing `max` attempts and `max` receives.
    async fn queue(&self, max: u32) -> Arc<dyn Queue> {
        self.queue_with(Limits::both(max)).await
    }

    /// A new, empty queue with these limits.
    async fn queue_with(&self, limits: Limits) -> Arc<dyn Queue> {
        self.queue_pair_with(limits).await.0
    }

    /// A new, empty queue and a second handle to it over its own connection, as another
    /// process would hold it.
    async fn queue_pair(&self, max: u32) -> (Arc<dyn Queue>, Arc<dyn Queue>) {
        self.queue_pair_with(Limits::both(max)).await
    }

    async fn queue_pair_with(&self, limits: Limits) -> (Arc<dyn Queue>, Arc<dyn Queue>);

    /// Whether `Sent::duplicate` says what happened (SQS de-duplicates silently).
    fn reports_duplicates(&self) -> bool {
        true
    }

    /// Whether `QueueStats::oldest_age` is known (on SQS it is a CloudWatch metric).
    fn reports_oldest_age(&self) -> bool {
        true
    }

    /// Whether the engine's storage deletes what expired by itself (SQS's retention
    /// period), so pruning is not its job.
    fn expires_itself(&self) -> bool {
        false
    }
}

#[async_trait]
pub trait StoreEngine: Send + Sync {
    /// A new, empty store.
    async fn store(&self) -> Arc<dyn ConversationStore>;

    /// Arguments that make `lease-contender` open the store [`StoreEngine::store`] returned
    /// last, from another process.
    fn contender_args(&self) -> Vec<String>;

    /// Whether the engine's storage deletes expired records by itself (DynamoDB's TTL).
    fn expires_itself(&self) -> bool {
        false
    }
}

#[async_trait]
pub trait LedgerEngine: Send + Sync {
    /// Two handles on a new, empty ledger, each over its own connection, as two processes
    /// would hold it.
    async fn ledgers(&self) -> (Arc<dyn DeliveryLedger>, Arc<dyn DeliveryLedger>);

    /// Whether the engine's storage deletes expired entries by itself (DynamoDB's TTL).
    fn expires_itself(&self) -> bool {
        false
    }
}

#[async_trait]
pub trait IndexEngine: Send + Sync {
    /// Two handles on a new, empty message index, each over its own connection.
    async fn indexes(&self) -> (Arc<dyn MessageIndex>, Arc<dyn MessageIndex>);

    /// Whether the engine's storage deletes expired entries by itself (DynamoDB's TTL).
    fn expires_itself(&self) -> bool {
        false
    }
}

#[async_trait]
pub trait MediaEngine: Send + Sync {
    /// A media store whose URLs this process can fetch (the embedded engine's served the
    /// way ingress serves them).
    async fn media(&self) -> Arc<dyn MediaStore>;

    /// Whether the engine's storage expires files by itself (S3's lifecycle rule).
    fn expires_itself(&self) -> bool {
        false
    }

    /// Whether what serves the URLs checks their signature and expiry. S3 does; moto
    /// serves any presigned URL of an object, so there those cases prove nothing.
    fn checks_urls(&self) -> bool {
        true
    }
}

#[async_trait]
pub trait RosterEngine: Send + Sync {
    /// Two handles on a new, empty roster, each over its own connection.
    async fn rosters(&self) -> (Arc<dyn Roster>, Arc<dyn Roster>);
}

/// The embedded engine on a file in a temporary directory.
pub struct SqliteEngine {
    dir: TempDir,
}

impl SqliteEngine {
    pub async fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("waconnect.db")
    }

    async fn db(&self) -> Db {
        Db::open_path(&self.path(), Synchronous::Normal)
            .await
            .expect("open sqlite")
    }
}

#[async_trait]
impl QueueEngine for SqliteEngine {
    async fn queue_pair_with(&self, limits: Limits) -> (Arc<dyn Queue>, Arc<dyn Queue>) {
        let name = format!("q-{}", unique_suffix());
        let a = SqliteQueue::open(self.db().await, &name, limits)
            .await
            .unwrap();
        let b = SqliteQueue::open(self.db().await, &name, limits)
            .await
            .unwrap();
        (Arc::new(a), Arc::new(b))
    }
}

#[async_trait]
impl StoreEngine for SqliteEngine {
    async fn store(&self) -> Arc<dyn ConversationStore> {
        Arc::new(SqliteStore::open(self.db().await).await.unwrap())
    }

    fn contender_args(&self) -> Vec<String> {
        vec!["--sqlite".into(), self.path().display().to_string()]
    }
}

#[async_trait]
impl LedgerEngine for SqliteEngine {
    async fn ledgers(&self) -> (Arc<dyn DeliveryLedger>, Arc<dyn DeliveryLedger>) {
        let a = SqliteLedger::open(self.db().await).await.unwrap();
        let b = SqliteLedger::open(self.db().await).await.unwrap();
        (Arc::new(a), Arc::new(b))
    }
}

#[async_trait]
impl IndexEngine for SqliteEngine {
    async fn indexes(&self) -> (Arc<dyn MessageIndex>, Arc<dyn MessageIndex>) {
        let a = SqliteMessageIndex::open(self.db().await).await.unwrap();
        let b = SqliteMessageIndex::open(self.db().await).await.unwrap();
        (Arc::new(a), Arc::new(b))
    }
}

#[async_trait]
impl MediaEngine for SqliteEngine {
    async fn media(&self) -> Arc<dyn MediaStore> {
        use waconnect_shared::storage::media::directory::{DirectoryStore, router};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let store = DirectoryStore::open(self.dir.path().join("media"), None, Some(base))
            .await
            .unwrap();
        let app = router(store.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Arc::new(store)
    }
}

/// How long the contract suites' DynamoDB ledgers keep entries.
const LEDGER_KEEP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[async_trait]
impl RosterEngine for SqliteEngine {
    async fn rosters(&self) -> (Arc<dyn Roster>, Arc<dyn Roster>) {
        let a = SqliteRoster::open(self.db().await).await.unwrap();
        let b = SqliteRoster::open(self.db().await).await.unwrap();
        (Arc::new(a), Arc::new(b))
    }
}

#[async_trait]
impl RosterEngine for AwsEngine {
    async fn rosters(&self) -> (Arc<dyn Roster>, Arc<dyn Roster>) {
        let name = self.moto.table(&format!("r-{}", unique_suffix())).await;
        let (_, a) = self.moto.clients().await;
        let (_, b) = self.moto.clients().await;
        let table = |client| waconnect_shared::storage::table::Table::new(client, name.clone());
        (
            Arc::new(DynamoRoster::new(table(a))),
            Arc::new(DynamoRoster::new(table(b))),
        )
    }
}

#[async_trait]
impl MediaEngine for AwsEngine {
    async fn media(&self) -> Arc<dyn MediaStore> {
        let bucket = self.moto.bucket(&format!("m-{}", unique_suffix())).await;
        let (_, _, s3) = waconnect_shared::storage::backend::aws_clients(
            &crate::moto::Moto::storage_at(&self.moto.endpoint),
        )
        .await;
        Arc::new(waconnect_shared::storage::media::s3::S3Store::new(
            s3, bucket,
        ))
    }

    fn expires_itself(&self) -> bool {
        true
    }

    fn checks_urls(&self) -> bool {
        false
    }
}

/// Unique within this machine: the process id and a counter.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The AWS engines (SQS FIFO, DynamoDB) on this process's moto server; every queue and
/// store is new and its own.
pub struct AwsEngine {
    moto: &'static crate::moto::Moto,
    last_table: std::sync::Mutex<String>,
}

impl AwsEngine {
    pub async fn new() -> Self {
        Self {
            moto: crate::moto::Moto::shared(),
            last_table: Default::default(),
        }
    }
}

#[async_trait]
impl QueueEngine for AwsEngine {
    async fn queue_pair_with(&self, limits: Limits) -> (Arc<dyn Queue>, Arc<dyn Queue>) {
        use waconnect_shared::storage::queue::failures::FailureLog;
        use waconnect_shared::storage::queue::sqs::SqsQueue;
        let name = format!("q-{}", unique_suffix());
        let url = self.moto.queue(&name, limits.max_receives).await;
        let table = self.moto.table(&format!("{name}-table")).await;
        let mut handles = Vec::new();
        for _ in 0..2 {
            // Each handle on clients of its own, as another process would have.
            let (sqs, dynamodb) = self.moto.clients().await;
            let failures = FailureLog::new(waconnect_shared::storage::table::Table::new(
                dynamodb, &table,
            ));
            let q = SqsQueue::open(sqs, &name, &url, failures, limits.max_attempts)
                .await
                .unwrap();
            handles.push(Arc::new(q) as Arc<dyn Queue>);
        }
        let b = handles.pop().unwrap();
        (handles.pop().unwrap(), b)
    }

    fn reports_duplicates(&self) -> bool {
        false
    }

    fn reports_oldest_age(&self) -> bool {
        false
    }

    fn expires_itself(&self) -> bool {
        true
    }
}

#[async_trait]
impl StoreEngine for AwsEngine {
    async fn store(&self) -> Arc<dyn ConversationStore> {
        let name = self.moto.table(&format!("t-{}", unique_suffix())).await;
        *self.last_table.lock().unwrap() = name.clone();
        let (_, dynamodb) = self.moto.clients().await;
        Arc::new(
            waconnect_shared::storage::store::dynamodb::DynamoStore::new(
                waconnect_shared::storage::table::Table::new(dynamodb, name),
            ),
        )
    }

    fn contender_args(&self) -> Vec<String> {
        vec![
            "--dynamodb".into(),
            self.moto.endpoint.clone(),
            "--table".into(),
            self.last_table.lock().unwrap().clone(),
        ]
    }

    fn expires_itself(&self) -> bool {
        true
    }
}

#[async_trait]
impl IndexEngine for AwsEngine {
    async fn indexes(&self) -> (Arc<dyn MessageIndex>, Arc<dyn MessageIndex>) {
        let name = self.moto.table(&format!("m-{}", unique_suffix())).await;
        let (_, a) = self.moto.clients().await;
        let (_, b) = self.moto.clients().await;
        let table = |client| waconnect_shared::storage::table::Table::new(client, name.clone());
        (
            Arc::new(DynamoMessageIndex::new(table(a), LEDGER_KEEP)),
            Arc::new(DynamoMessageIndex::new(table(b), LEDGER_KEEP)),
        )
    }

    fn expires_itself(&self) -> bool {
        true
    }
}

#[async_trait]
impl LedgerEngine for AwsEngine {
    async fn ledgers(&self) -> (Arc<dyn DeliveryLedger>, Arc<dyn DeliveryLedger>) {
        let name = self.moto.table(&format!("l-{}", unique_suffix())).await;
        let (_, a) = self.moto.clients().await;
        let (_, b) = self.moto.clients().await;
        let table = |client| waconnect_shared::storage::table::Table::new(client, name.clone());
        (
            Arc::new(DynamoLedger::new(table(a), LEDGER_KEEP)),
            Arc::new(DynamoLedger::new(table(b), LEDGER_KEEP)),
        )
    }

    fn expires_itself(&self) -> bool {
        true
    }
}
