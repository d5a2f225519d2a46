//! Opens the engines the configuration names.

use crate::service::aws::CallCounter;
use crate::service::config::{
    AwsStorageConfig, CommonConfig, EmbeddedConfig, QueuesConfig, RetentionConfig, StorageConfig,
};
use crate::service::ops::Readiness;
use crate::storage::delivery::dynamodb::DynamoLedger;
use crate::storage::delivery::sqlite::SqliteLedger;
use crate::storage::delivery::{DeliveryLedger, LedgerError};
use crate::storage::media::directory::DirectoryStore;
use crate::storage::media::s3::S3Store;
use crate::storage::media::{MediaError, MediaStore};
use crate::storage::message_index::dynamodb::DynamoMessageIndex;
use crate::storage::message_index::sqlite::SqliteMessageIndex;
use crate::storage::message_index::{IndexError, MessageIndex};
use crate::storage::queue::failures::FailureLog;
use crate::storage::queue::sqlite::SqliteQueue;
use crate::storage::queue::sqs::SqsQueue;
use crate::storage::queue::{Queue, QueueError};
use crate::storage::roster::dynamodb::DynamoRoster;
use crate::storage::roster::sqlite::SqliteRoster;
use crate::storage::roster::{Roster, RosterError};
use crate::storage::sqlite::{Db, DbError};
use crate::storage::store::dynamodb::DynamoStore;
use crate::storage::store::sqlite::SqliteStore;
use crate::storage::store::{ConversationStore, StoreError};
use crate::storage::table::Table;
use async_trait::async_trait;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot open the embedded database: {0}")]
    Db(#[from] DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Roster(#[from] RosterError),
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// The storage a process uses.
#[derive(Clone)]
pub struct Backend {
    engine: Engine,
    queues: QueuesConfig,
    retention: RetentionConfig,
    /// The embedded engine's media directory and how its URLs are made.
    embedded_media: Option<EmbeddedConfig>,
}

#[derive(Clone)]
enum Engine {
    /// One connection shared by the process's queues, store and ledger.
    Embedded(Db),
    Aws(Box<AwsEngines>),
}

#[derive(Clone)]
struct AwsEngines {
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
    table: Table,
    config: AwsStorageConfig,
}

impl Backend {
    pub async fn open(common: &CommonConfig) -> Result<Self, BackendError> {
        let (engine, embedded_media) = match &common.storage {
            StorageConfig::Embedded(embedded) => (
                Engine::Embedded(Db::open(embedded).await?),
                Some(embedded.clone()),
            ),
            StorageConfig::Aws(config) => {
                let (sqs, dynamodb, s3) = aws_clients(config).await;
                let engines = AwsEngines {
                    sqs,
                    s3,
                    table: Table::new(dynamodb, &config.table),
                    config: config.clone(),
                };
                (Engine::Aws(Box::new(engines)), None)
            }
        };
        Ok(Self {
            engine,
            queues: common.queues.clone(),
            retention: common.retention,
            embedded_media,
        })
    }

    pub async fn inbound(&self) -> Result<Arc<dyn Queue>, BackendError> {
        self.queue(&self.queues.inbound, |c| &c.inbound_queue_url)
            .await
    }

    pub async fn outbound(&self) -> Result<Arc<dyn Queue>, BackendError> {
        self.queue(&self.queues.outbound, |c| &c.outbound_queue_url)
            .await
    }

    async fn queue(
        &self,
        name: &str,
        url: impl Fn(&AwsStorageConfig) -> &String,
    ) -> Result<Arc<dyn Queue>, BackendError> {
        Ok(match &self.engine {
            Engine::Embedded(db) => {
                Arc::new(SqliteQueue::open(db.clone(), name, self.queues.limits).await?)
            }
            Engine::Aws(aws) => Arc::new(
                SqsQueue::open(
                    aws.sqs.clone(),
                    name,
                    url(&aws.config),
                    FailureLog::new(aws.table.clone()),
                    self.queues.limits.max_attempts,
                )
                .await?,
            ),
        })
    }

    pub async fn ledger(&self) -> Result<Arc<dyn DeliveryLedger>, BackendError> {
        Ok(match &self.engine {
            Engine::Embedded(db) => Arc::new(SqliteLedger::open(db.clone()).await?),
            Engine::Aws(aws) => {
                Arc::new(DynamoLedger::new(aws.table.clone(), self.retention.ledger))
            }
        })
    }

    pub async fn message_index(&self) -> Result<Arc<dyn MessageIndex>, BackendError> {
        Ok(match &self.engine {
            Engine::Embedded(db) => Arc::new(SqliteMessageIndex::open(db.clone()).await?),
            Engine::Aws(aws) => Arc::new(DynamoMessageIndex::new(
                aws.table.clone(),
                self.retention.messages,
            )),
        })
    }

    pub async fn roster(&self) -> Result<Arc<dyn Roster>, BackendError> {
        Ok(match &self.engine {
            Engine::Embedded(db) => Arc::new(SqliteRoster::open(db.clone()).await?),
            Engine::Aws(aws) => Arc::new(DynamoRoster::new(aws.table.clone())),
        })
    }

    /// The media store, or `None` on AWS without a bucket configured.
    pub async fn media(&self) -> Result<Option<Arc<dyn MediaStore>>, BackendError> {
        if let Some(directory) = self.media_directory().await? {
            return Ok(Some(Arc::new(directory)));
        }
        Ok(match &self.engine {
            Engine::Aws(aws) => aws.config.media_bucket.as_ref().map(|bucket| {
                Arc::new(S3Store::new(aws.s3.clone(), bucket.clone())) as Arc<dyn MediaStore>
            }),
            Engine::Embedded(_) => None,
        })
    }

    /// The embedded engine's media directory, which ingress serves; `None` on AWS.
    pub async fn media_directory(&self) -> Result<Option<DirectoryStore>, BackendError> {
        let Some(e) = &self.embedded_media else {
            return Ok(None);
        };
        Ok(Some(
            DirectoryStore::open(
                e.media_dir.clone(),
                e.media_signing_key.clone(),
                e.public_base_url.clone(),
            )
            .await?
            .synchronous(e.synchronous),
        ))
    }

    pub async fn store(&self) -> Result<Arc<dyn ConversationStore>, BackendError> {
        Ok(match &self.engine {
            Engine::Embedded(db) => Arc::new(SqliteStore::open(db.clone()).await?),
            Engine::Aws(aws) => Arc::new(DynamoStore::new(aws.table.clone())),
        })
    }
}

/// SQS, DynamoDB and S3 clients on the shared AWS configuration, at the override endpoint
/// if one is set, every request bounded by [`AwsStorageConfig::call_timeout`].
pub async fn aws_clients(
    config: &AwsStorageConfig,
) -> (
    aws_sdk_sqs::Client,
    aws_sdk_dynamodb::Client,
    aws_sdk_s3::Client,
) {
    let sdk = config.aws.load().await;
    let timeouts = crate::service::aws::timeouts(config.call_timeout);
    let mut sqs = aws_sdk_sqs::config::Builder::from(&sdk)
        .interceptor(CallCounter)
        .timeout_config(timeouts.clone());
    let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .interceptor(CallCounter)
        .timeout_config(timeouts.clone());
    // A file's upload gets longer, by its size (`S3Store::put`).
    let mut s3 = aws_sdk_s3::config::Builder::from(&sdk)
        .interceptor(CallCounter)
        .timeout_config(timeouts);
    if let Some(endpoint) = &config.endpoint {
        sqs = sqs.endpoint_url(endpoint);
        dynamodb = dynamodb.endpoint_url(endpoint);
        // A private endpoint (a VPC endpoint, moto) names the bucket in the path.
        s3 = s3.endpoint_url(endpoint).force_path_style(true);
    }
    (
        aws_sdk_sqs::Client::from_conf(sqs.build()),
        aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
        aws_sdk_s3::Client::from_conf(s3.build()),
    )
}

/// Ready when every queue answers a depth query.
pub struct QueuesReady(pub Vec<Arc<dyn Queue>>);

#[async_trait]
impl Readiness for QueuesReady {
    async fn check(&self) -> Result<(), String> {
        for q in &self.0 {
            q.stats()
                .await
                .map_err(|e| format!("queue {}: {e}", q.name()))?;
        }
        Ok(())
    }
}
