//! moto in server mode (`tests/moto/server.py`), started once per test process on
//! 127.0.0.1, and fresh SQS queues and DynamoDB tables in it, laid out as
//! `deploy/aws/waconnect.yaml` creates them on AWS.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use waconnect_shared::Secret;
use waconnect_shared::service::aws::{AwsConfig, StaticCredentials};
use waconnect_shared::service::config::AwsStorageConfig;
use waconnect_shared::storage::table::{
    CONVERSATION, CONVERSATION_INDEX, DUE_AT, DUE_INDEX, DUE_SHARD, KEY, TTL,
};

pub const REGION: &str = "us-east-1";

pub struct Moto {
    pub endpoint: String,
    // Held open for the life of the test process: moto exits when it closes.
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

/// The venv `tests/run` prepares (moto, boto3 and Twilio's library, tests/requirements.txt),
/// unless `WACONNECT_PYTHON` names another interpreter that has them.
pub fn python() -> PathBuf {
    std::env::var_os("WACONNECT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

impl Moto {
    /// This process's moto server, started on first use.
    pub fn shared() -> &'static Moto {
        static MOTO: OnceLock<Moto> = OnceLock::new();
        MOTO.get_or_init(Moto::start)
    }

    fn start() -> Moto {
        let python = python();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("moto/server.py");
        let log = std::env::temp_dir().join(format!("waconnect-moto-{}.log", std::process::id()));
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("moto log file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); tests/run prepares the venv with moto[server]",
                    python.display()
                )
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read moto's port");
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "moto did not start (is moto[server] in {}?); its log: {}",
                python.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            _stdin: Mutex::new(child.stdin.take().expect("piped")),
            _child: Mutex::new(child),
        }
    }

    /// The AWS part of a configuration pointing at moto, with `inbound`, `outbound` and
    /// `table` as given.
    pub fn storage(&self, inbound: String, outbound: String, table: String) -> AwsStorageConfig {
        AwsStorageConfig {
            inbound_queue_url: inbound,
            outbound_queue_url: outbound,
            table,
            ..Self::storage_at(&self.endpoint)
        }
    }

    /// The environment a service process needs to use these engines.
    pub fn env(storage: &AwsStorageConfig) -> Vec<(String, String)> {
        [
            ("WACONNECT_BACKEND", "aws"),
            ("AWS_REGION", REGION),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            (
                "WACONNECT_AWS_ENDPOINT_URL",
                storage.endpoint.as_deref().unwrap_or_default(),
            ),
            ("WACONNECT_INBOUND_QUEUE_URL", &storage.inbound_queue_url),
            ("WACONNECT_OUTBOUND_QUEUE_URL", &storage.outbound_queue_url),
            ("WACONNECT_TABLE", &storage.table),
            (
                "WACONNECT_MEDIA_BUCKET",
                storage.media_bucket.as_deref().unwrap_or_default(),
            ),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    pub async fn clients(&self) -> (aws_sdk_sqs::Client, aws_sdk_dynamodb::Client) {
        let (sqs, dynamodb, _) =
            waconnect_shared::storage::backend::aws_clients(&Self::storage_at(&self.endpoint))
                .await;
        (sqs, dynamodb)
    }

    /// A new S3 bucket `name` (for the agent's files).
    pub async fn bucket(&self, name: &str) -> String {
        let (_, _, s3) =
            waconnect_shared::storage::backend::aws_clients(&Self::storage_at(&self.endpoint))
                .await;
        s3.create_bucket()
            .bucket(name)
            .send()
            .await
            .expect("create the bucket");
        name.to_owned()
    }

    /// Settings for reaching a moto server at `endpoint` (another process's).
    pub fn storage_at(endpoint: &str) -> AwsStorageConfig {
        AwsStorageConfig {
            aws: aws_config(),
            endpoint: Some(endpoint.to_owned()),
            inbound_queue_url: String::new(),
            outbound_queue_url: String::new(),
            table: String::new(),
            media_bucket: None,
            call_timeout: waconnect_shared::service::config::AWS_CALL_TIMEOUT,
        }
    }

    /// A new FIFO queue `<name>.fifo` with its FIFO dead-letter queue, redriving after
    /// `max_receives`; returns its URL.
    pub async fn queue(&self, name: &str, max_receives: u32) -> String {
        let (sqs, _) = self.clients().await;
        let dlq = sqs
            .create_queue()
            .queue_name(format!("{name}-dlq.fifo"))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .send()
            .await
            .expect("create dead-letter queue");
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(dlq.queue_url().unwrap())
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("dead-letter queue arn")
            .attributes
            .unwrap()
            .remove(&QueueAttributeName::QueueArn)
            .unwrap();
        let policy = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": max_receives,
        });
        sqs.create_queue()
            .queue_name(format!("{name}.fifo"))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
            .send()
            .await
            .expect("create queue")
            .queue_url
            .unwrap()
    }

    /// A new table with the key, index and TTL the engines expect.
    pub async fn table(&self, name: &str) -> String {
        let (_, dynamodb) = self.clients().await;
        let attribute = |name: &str, kind| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(kind)
                .build()
                .unwrap()
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .unwrap()
        };
        dynamodb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute(KEY, ScalarAttributeType::S))
            .attribute_definitions(attribute(DUE_SHARD, ScalarAttributeType::S))
            .attribute_definitions(attribute(DUE_AT, ScalarAttributeType::N))
            .attribute_definitions(attribute(CONVERSATION, ScalarAttributeType::S))
            .key_schema(key(KEY, KeyType::Hash))
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(DUE_INDEX)
                    .key_schema(key(DUE_SHARD, KeyType::Hash))
                    .key_schema(key(DUE_AT, KeyType::Range))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::Include)
                            .non_key_attributes("lease_owner")
                            .non_key_attributes("load")
                            .build(),
                    )
                    .build()
                    .unwrap(),
            )
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(CONVERSATION_INDEX)
                    .key_schema(key(CONVERSATION, KeyType::Hash))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::KeysOnly)
                            .build(),
                    )
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("create table");
        dynamodb
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("enable TTL");
        name.to_owned()
    }

    /// Fresh inbound and outbound queues and a table, named after `prefix`.
    pub async fn fresh(&self, prefix: &str, max_receives: u32) -> AwsStorageConfig {
        let prefix = format!("{prefix}-{}", crate::engines::unique_suffix());
        let inbound = self.queue(&format!("{prefix}-inbound"), max_receives).await;
        let outbound = self
            .queue(&format!("{prefix}-outbound"), max_receives)
            .await;
        let table = self.table(&format!("{prefix}-table")).await;
        let bucket = self.bucket(&format!("{prefix}-media").to_lowercase()).await;
        AwsStorageConfig {
            media_bucket: Some(bucket),
            ..self.storage(inbound, outbound, table)
        }
    }
}

fn aws_config() -> AwsConfig {
    AwsConfig {
        region: REGION.into(),
        static_credentials: Some(StaticCredentials {
            access_key_id: "testing".into(),
            secret_access_key: Secret::new("testing"),
            session_token: None,
        }),
        tls: Default::default(),
    }
}
