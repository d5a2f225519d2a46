//! A relay test stack: a simulated Connect, the storage (one SQLite file, or SQS queues
//! and a DynamoDB table on moto), and relay-workers run in-process or as real processes
//! against both.

#![allow(dead_code)] // each test file uses part of it

pub mod failover;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use waconnect_relay_worker::config::ConnectSettings;
use waconnect_relay_worker::connect::{ConnectApi, NewChat};
use waconnect_shared::message::conversation::Conversation;
use waconnect_shared::message::conversation::ConversationState;
use waconnect_shared::message::event::{EventKind, InboundEvent};
use waconnect_shared::message::outbound::OutboundMessage;
use waconnect_shared::service::config::{ConfigSource, Synchronous};
use waconnect_shared::storage::backend::Backend;
use waconnect_shared::storage::queue::sqlite::SqliteQueue;
use waconnect_shared::storage::queue::{Limits, NewMessage, Queue};
use waconnect_shared::storage::sqlite::Db;
use waconnect_shared::storage::store::ConversationStore;
use waconnect_shared::storage::store::sqlite::SqliteStore;
use waconnect_shared::{ConversationKey, CustomerAddress};
use waconnect_sim::connect::{ConnectSim, DeskClient, SimOptions};
use waconnect_sim::wiring::{CONTACT_FLOW, Wiring, pairs};
use waconnect_tests::moto::Moto;
use waconnect_tests::{key_of, twilio, wait};

pub const LEASE: Duration = Duration::from_secs(3);
/// Failed attempts before a message is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 4;
/// The crash backstop, well above the attempts (as deploy/ sets it).
pub const MAX_RECEIVES: u32 = 20;
pub const LIMITS: Limits = Limits {
    max_attempts: MAX_ATTEMPTS,
    max_receives: MAX_RECEIVES,
};

pub struct Stack {
    pub dir: TempDir,
    pub sim: ConnectSim,
    pub desk: DeskClient,
    pub inbound: Arc<dyn Queue>,
    pub outbound: Arc<dyn Queue>,
    pub store: Arc<dyn ConversationStore>,
    /// The variables that point a service at this stack's storage.
    storage: Vec<(String, String)>,
}

pub struct InProcess {
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), waconnect_shared::service::worker::WorkerError>>,
}

impl InProcess {
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

impl Stack {
    pub async fn new() -> Self {
        Self::with(SimOptions::default()).await
    }

    pub async fn with(options: SimOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sim = ConnectSim::start_with(options).await;
        let path = dir.path().join("waconnect.db");
        let db = || async { Db::open_path(&path, Synchronous::Normal).await.unwrap() };
        let inbound = Arc::new(
            SqliteQueue::open(db().await, "inbound", LIMITS)
                .await
                .unwrap(),
        );
        let outbound = Arc::new(
            SqliteQueue::open(db().await, "outbound", LIMITS)
                .await
                .unwrap(),
        );
        let store = Arc::new(SqliteStore::open(db().await).await.unwrap());
        let storage = Wiring::default().sqlite(&path).storage;
        Self {
            desk: sim.desk(),
            dir,
            sim,
            inbound,
            outbound,
            store,
            storage,
        }
    }

    /// The same stack on the AWS engines: fresh SQS FIFO queues and a DynamoDB table on
    /// moto, laid out as the CloudFormation stack creates them.
    pub async fn on_aws() -> Self {
        let moto = Moto::shared();
        let config = moto.fresh("relay", MAX_RECEIVES).await;
        let common = waconnect_shared::service::config::CommonConfig::read(
            &mut ConfigSource::from_pairs(Moto::env(&config)).reader(),
        );
        let backend = Backend::open(&common).await.unwrap();
        let sim = ConnectSim::start().await;
        Self {
            dir: tempfile::tempdir().unwrap(),
            desk: sim.desk(),
            sim,
            inbound: backend.inbound().await.unwrap(),
            outbound: backend.outbound().await.unwrap(),
            store: backend.store().await.unwrap(),
            storage: Moto::env(&config),
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("waconnect.db")
    }

    pub fn vars(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let wiring = Wiring {
            connect: Some((&self.sim).into()),
            storage: self.storage.clone(),
            ..Wiring::default()
        };
        let mut vars = wiring.relay();
        vars.extend(pairs(&[
            ("WACONNECT_RELAY_OPS_BIND", "127.0.0.1:0"),
            ("WACONNECT_RELAY_LEASE", "3s"),
            ("WACONNECT_RELAY_HEARTBEAT", "1s"),
            ("WACONNECT_RELAY_SWEEP_INTERVAL", "300ms"),
            ("WACONNECT_RELAY_RETRY_AFTER", "100ms"),
            ("WACONNECT_RELAY_SHUTDOWN_GRACE", "5s"),
            ("WACONNECT_MAX_ATTEMPTS", "4"),
            ("WACONNECT_MAX_RECEIVES", "20"),
            ("WACONNECT_QUEUE_DEPTH_INTERVAL", "1s"),
            ("RUST_LOG", "warn"),
        ]));
        vars.extend(pairs(extra));
        vars
    }

    pub async fn relay(&self, extra: &[(&str, &str)]) -> InProcess {
        let config =
            waconnect_relay_worker::config_from(&ConfigSource::from_pairs(self.vars(extra)))
                .unwrap();
        let listener = TcpListener::bind(config.worker.ops_bind).await.unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(waconnect_relay_worker::run(config, listener, stop.clone()));
        InProcess { stop, task }
    }

    /// The real relay-worker binary, with `name` as its worker id.
    pub fn relay_process(&self, name: &str, extra: &[(&str, &str)]) -> Child {
        let mut vars = self.vars(extra);
        vars.push(("WACONNECT_RELAY_WORKER_ID".into(), name.into()));
        Command::new(env!("CARGO_BIN_EXE_relay-worker"))
            .env_clear()
            .envs(vars)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// What ingress would enqueue for a customer's text.
    pub async fn customer_says(&self, customer: &CustomerAddress, sid: &str, text: &str) {
        let event = InboundEvent::new(
            EventKind::Message,
            twilio::incoming_text(sid, customer.as_str(), text),
        );
        self.inbound
            .send(NewMessage {
                group_id: key_of(customer).storage(),
                dedup_id: sid.to_owned(),
                body: event.to_json(),
            })
            .await
            .unwrap();
    }

    /// The customer's current Connect contact, once the relay has started one.
    pub async fn contact_of(&self, customer: &CustomerAddress) -> String {
        wait::until("the chat to start", Duration::from_secs(20), || async {
            let s = self.store.get(&key_of(customer)).await.ok()??;
            (s.conversation.state == ConversationState::Active)
                .then(|| s.conversation.contact_id.clone())
                .flatten()
        })
        .await
    }

    /// Waits until `customer`'s current chat is held (its websocket subscribed).
    pub async fn until_held(&self, contact: &str) {
        wait::until("the chat's websocket", Duration::from_secs(20), || async {
            let chats = self.desk.chats(None).await.ok()?;
            chats
                .iter()
                .any(|c| c.contact_id == contact && c.sockets > 0)
                .then_some(())
        })
        .await
    }

    /// Drains the outbound queue as the sender would, until `expected` messages in all
    /// arrived, returning each customer's bodies in queue order.
    pub async fn outbound_until(
        &self,
        expected: usize,
        deadline: Duration,
    ) -> HashMap<String, Vec<OutboundMessage>> {
        let mut got: HashMap<String, Vec<OutboundMessage>> = HashMap::new();
        let mut count = 0;
        let end = tokio::time::Instant::now() + deadline;
        while count < expected {
            assert!(
                tokio::time::Instant::now() < end,
                "only {count} of {expected} outbound messages after {deadline:?}"
            );
            let batch = self
                .outbound
                .receive(10, Duration::from_secs(30), Duration::from_millis(200))
                .await
                .unwrap();
            for m in batch {
                self.outbound.delete(&m.receipt).await.unwrap();
                let message = OutboundMessage::from_json(&m.body).unwrap();
                // Each conversation's messages share its FIFO group.
                assert_eq!(m.group_id, message.key().storage());
                got.entry(message.to.as_str().to_owned())
                    .or_default()
                    .push(message);
                count += 1;
            }
        }
        got
    }

    /// The inbound queue's first dead letter, once there is one.
    pub async fn inbound_dead_letter(&self) -> waconnect_shared::storage::queue::DeadLetter {
        wait::until("the dead letter", Duration::from_secs(20), || async {
            self.inbound.dead_letters(10).await.ok()?.into_iter().next()
        })
        .await
    }

    /// Asserts nothing more arrives on the outbound queue for a while (no duplicates).
    pub async fn no_more_outbound(&self, quiet: Duration) {
        let extra = self
            .outbound
            .receive(10, Duration::from_secs(30), quiet)
            .await
            .unwrap();
        assert!(
            extra.is_empty(),
            "unexpected outbound: {:?}",
            extra
                .iter()
                .map(|m| OutboundMessage::from_json(&m.body).unwrap().body)
                .collect::<Vec<_>>()
        );
    }

    /// A Connect API client on this stack's simulator, as the relay builds its own.
    pub async fn connect_api(&self) -> ConnectApi {
        let source = ConfigSource::from_pairs(self.vars(&[]));
        let mut r = source.reader();
        let tls = waconnect_shared::service::tls::TlsSettings::read(&mut r);
        let aws = waconnect_shared::service::aws::AwsConfig::read(&mut r, &tls);
        ConnectApi::new(
            &aws.load().await,
            ConnectSettings {
                endpoint: Some(self.sim.endpoint()),
                participant_endpoint: Some(self.sim.endpoint()),
                chat_duration_minutes: 1500,
            },
        )
    }

    /// A live chat in the simulator and its record under `key`, held by nobody: a
    /// conversation as a relay (of this version or an earlier one) left it. Returns the
    /// chat's contact.
    pub async fn live_record(&self, api: &ConnectApi, key: ConversationKey, token: &str) -> String {
        let chat = api
            .start_chat(NewChat {
                instance_id: self.sim.instance_id(),
                contact_flow_id: CONTACT_FLOW,
                display_name: "Customer",
                attributes: HashMap::new(),
                client_token: token.to_owned(),
                continue_from: None,
            })
            .await
            .unwrap();
        let connection = api
            .create_connection(&chat.participant_token)
            .await
            .unwrap();
        let mut c = Conversation::new(key);
        c.state = ConversationState::Active;
        c.contact_id = Some(chat.contact_id.clone());
        c.initial_contact_id = Some(chat.contact_id.clone());
        c.participant_id = Some(chat.participant_id);
        c.participant_token = Some(chat.participant_token.into());
        c.connection_token = Some(connection.connection_token.into());
        c.connection_expires_at = Some(connection.connection_expires_at);
        self.store.insert(&c).await.unwrap();
        chat.contact_id
    }
}

pub fn bodies(messages: &[OutboundMessage]) -> Vec<String> {
    messages.iter().map(|m| m.body.clone()).collect()
}
