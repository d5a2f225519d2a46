//! A sender test stack: the Twilio simulator, ingress for its status callbacks, one
//! SQLite file, and senders in-process or as real processes.

#![allow(dead_code)] // each test file uses part of it

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use waconnect_ingress::config::IngressConfig;
use waconnect_shared::CustomerAddress;
use waconnect_shared::message::event::InboundEvent;
use waconnect_shared::message::outbound::{Origin, OutboundMessage};
use waconnect_shared::service::config::{ConfigSource, Synchronous};
use waconnect_shared::storage::queue::sqlite::SqliteQueue;
use waconnect_shared::storage::queue::{Limits, NewMessage, Queue};
use waconnect_shared::storage::sqlite::Db;
use waconnect_sim::twilio::{PhoneClient, TwilioOptions, TwilioSim};
use waconnect_sim::wiring::{Wiring, pairs};
use waconnect_tests::wait;

pub const PUBLIC: &str = "https://wa.example.test";

pub struct Stack {
    pub dir: TempDir,
    pub twilio: TwilioSim,
    pub phone: PhoneClient,
    pub inbound: Arc<dyn Queue>,
    pub outbound: Arc<dyn Queue>,
    pub status_url: String,
    wiring: Wiring,
    stop_ingress: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_ingress.cancel();
    }
}

pub struct InProcess {
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), waconnect_shared::service::worker::WorkerError>>,
    pub ops: String,
}

impl InProcess {
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

impl Stack {
    pub async fn new(options: TwilioOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("waconnect.db");
        let twilio = TwilioSim::start_with(options).await;
        // Ingress receives the status callbacks, checking Twilio's signature.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let wiring = Wiring {
            twilio: Some((&twilio).into()),
            public_url: Some(format!("http://{local}")),
            ..Wiring::default()
        }
        .sqlite(&path);
        let config = IngressConfig::from_source(&ConfigSource::from_pairs(
            wiring.ingress(&local.to_string()),
        ))
        .unwrap();
        let stop_ingress = CancellationToken::new();
        tokio::spawn(waconnect_ingress::run(
            config,
            listener,
            stop_ingress.clone(),
        ));
        let db = || async { Db::open_path(&path, Synchronous::Normal).await.unwrap() };
        let inbound = Arc::new(
            SqliteQueue::open(db().await, "inbound", Limits::both(4))
                .await
                .unwrap(),
        );
        let outbound = Arc::new(
            SqliteQueue::open(db().await, "outbound", Limits::both(4))
                .await
                .unwrap(),
        );
        let phone = twilio.phone();
        Self {
            dir,
            phone,
            twilio,
            inbound,
            outbound,
            status_url: format!("http://{local}/twilio/status"),
            wiring,
            stop_ingress,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("waconnect.db")
    }

    pub fn vars(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = self.wiring.sender();
        vars.extend(pairs(&[
            ("WACONNECT_SENDER_OPS_BIND", "127.0.0.1:0"),
            ("WACONNECT_SENDER_VISIBILITY", "3s"),
            ("WACONNECT_SENDER_MAX_BACKOFF", "2s"),
            ("WACONNECT_SENDER_SHUTDOWN_GRACE", "5s"),
            ("WACONNECT_MAX_ATTEMPTS", "4"),
            ("WACONNECT_MAX_RECEIVES", "4"),
            ("RUST_LOG", "warn"),
        ]));
        vars.extend(pairs(extra));
        vars
    }

    pub async fn sender(&self, extra: &[(&str, &str)]) -> InProcess {
        let config =
            waconnect_outbound_sender::config_from(&ConfigSource::from_pairs(self.vars(extra)))
                .unwrap();
        let listener = TcpListener::bind(config.worker.ops_bind).await.unwrap();
        let ops = listener.local_addr().unwrap().to_string();
        let stop = CancellationToken::new();
        let task = tokio::spawn(waconnect_outbound_sender::run(
            config,
            listener,
            stop.clone(),
        ));
        InProcess { stop, task, ops }
    }

    pub fn sender_process(&self, extra: &[(&str, &str)]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_outbound-sender"))
            .env_clear()
            .envs(self.vars(extra))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// An agent's message for `to`, as the relay enqueues it.
    pub async fn agent_says(&self, to: &CustomerAddress, item: &str, body: &str) {
        let message = agent_message(to, item, body);
        self.outbound
            .send(NewMessage {
                group_id: message.key().storage(),
                dedup_id: item.to_owned(),
                body: message.to_json(),
            })
            .await
            .unwrap();
    }

    /// The bodies `to` has received, once there are `n`.
    pub async fn inbox_of(
        &self,
        to: &CustomerAddress,
        n: usize,
        deadline: Duration,
    ) -> Vec<String> {
        wait::until("the customer's inbox", deadline, || async {
            let inbox = self.phone.inbox(to.as_str()).await.ok()?;
            assert!(
                inbox.len() <= n,
                "more than {n} messages: {:?}",
                inbox.iter().map(|m| &m.body).collect::<Vec<_>>()
            );
            (inbox.len() == n).then(|| inbox.into_iter().map(|m| m.body).collect())
        })
        .await
    }

    /// Status events that reached the inbound queue (through ingress), consumed.
    pub async fn statuses(&self, n: usize, deadline: Duration) -> Vec<InboundEvent> {
        let mut got = Vec::new();
        let end = tokio::time::Instant::now() + deadline;
        while got.len() < n {
            assert!(
                tokio::time::Instant::now() < end,
                "only {} of {n} status events",
                got.len()
            );
            for m in self
                .inbound
                .receive(10, Duration::from_secs(30), Duration::from_millis(200))
                .await
                .unwrap()
            {
                self.inbound.delete(&m.receipt).await.unwrap();
                got.push(InboundEvent::from_json(&m.body).unwrap());
            }
        }
        got
    }
}

/// The message the relay enqueues for an agent's text `body` (chat item `item`) to `to`.
pub fn agent_message(to: &CustomerAddress, item: &str, body: &str) -> OutboundMessage {
    OutboundMessage {
        to: to.clone(),
        from: Some(waconnect_tests::business()),
        body: body.to_owned(),
        media_urls: Vec::new(),
        files: Vec::new(),
        template: None,
        menu: None,
        origin: Origin::ConnectItem {
            contact_id: "contact-1".into(),
            item_id: item.to_owned(),
            participant_role: "AGENT".into(),
        },
        created_at: chrono::Utc::now(),
        resend: None,
    }
}
