//! The sandbox: ingress, relay-worker and outbound-sender — the production services, in
//! this process — on the embedded SQLite engine, with the Twilio and Connect simulators
//! as the only stand-ins, and a web page to drive both ends.

mod ui;

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use waconnect_ingress::config::IngressConfig;
use waconnect_shared::service::config::{
    CommonConfig, ConfigSource, LogFormat, Synchronous, TelemetryConfig,
};
use waconnect_shared::storage::backend::Backend;
use waconnect_shared::storage::queue::sqlite::SqliteQueue;
use waconnect_shared::storage::queue::{Limits, Queue};
use waconnect_shared::storage::sqlite::Db;
use waconnect_sim::connect::{self, DeskClient, SimOptions};
use waconnect_sim::twilio::{self, PhoneClient, TwilioOptions};
use waconnect_sim::wiring::{ConnectEnd, TwilioEnd, Vars, Wiring, pairs};

pub struct Options {
    /// Where the page is served (`WACONNECT_SANDBOX_BIND`, default 127.0.0.1:8700; port 0
    /// picks a free one).
    pub bind: SocketAddr,
    pub telemetry: TelemetryConfig,
    /// The WhatsApp sender's rate (Twilio's and the sender's limit), messages per second.
    pub sender_rate: u32,
    /// Variables that replace the embedded engine (e.g. `WACONNECT_BACKEND=aws` and its
    /// queues and table, as the benches set for moto); empty for the embedded default.
    pub storage: Vec<(String, String)>,
    /// How long the simulated Twilio waits before each status callback (a phone's
    /// `sent`, `delivered`, `read`); the sender holds a customer's next part until `sent`.
    pub status_delay: std::time::Duration,
    /// The simulators speak HTTPS and WSS (a test CA the services trust through
    /// `WACONNECT_EXTRA_CA_FILE`), as Twilio and Connect do: for the benches.
    pub tls: bool,
}

impl Options {
    /// For benches and tests: the page on a free loopback port, errors logged only, a
    /// sender allowed 1,000 messages/s, and Twilio's statuses 10 ms after each message;
    /// `storage` as in [`Options::storage`].
    pub fn headless(storage: Vec<(String, String)>) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            telemetry: TelemetryConfig {
                log_format: LogFormat::Json,
                log_filter: "error".into(),
                traces: None,
            },
            sender_rate: 1000,
            storage,
            status_delay: std::time::Duration::from_millis(10),
            tls: false,
        }
    }

    pub fn from_env() -> anyhow::Result<Self> {
        let source = ConfigSource::from_env()?;
        let mut r = source.reader();
        let bind = r.optional(
            "WACONNECT_SANDBOX_BIND",
            SocketAddr::from(([127, 0, 0, 1], 8700)),
            "a loopback address like 127.0.0.1:8700",
        );
        if !bind.ip().is_loopback() {
            r.error(
                "WACONNECT_SANDBOX_BIND",
                "the sandbox only listens on loopback",
            );
        }
        let common = waconnect_shared::service::config::CommonConfig::read(&mut r);
        r.finish()?;
        Ok(Self {
            bind,
            telemetry: common.telemetry,
            sender_rate: 80,
            storage: Vec::new(),
            // Slow enough to watch the ticks turn grey, then blue.
            status_delay: std::time::Duration::from_millis(150),
            tls: false,
        })
    }
}

pub struct Sandbox {
    url: String,
    phone: PhoneClient,
    desk: DeskClient,
    dir: tempfile::TempDir,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// What the page's API talks to.
pub(crate) struct Parts {
    pub phone: PhoneClient,
    pub desk: DeskClient,
    pub inbound: Arc<dyn Queue>,
    pub outbound: Arc<dyn Queue>,
    /// The relay's conversation-start API and its token.
    pub outreach_url: String,
    pub outreach_token: String,
}

/// The sandbox's approved template, for conversations the agent starts.
pub const TEMPLATE: &str = "HX5a4dbc0c000000000000000000000001";

/// The two businesses the sandbox serves, each its own WhatsApp number and route: the
/// phone can write to either, and each has its own chat.
pub const BUSINESSES: [(&str, &str); 2] = [
    ("Acme", "whatsapp:+14155238886"),
    ("Globex", "whatsapp:+442071838750"),
];

/// The sandbox's routing file: both numbers on the one simulated instance, each with its
/// own flow, brand attribute and closing text.
fn routing() -> String {
    BUSINESSES
        .iter()
        .map(|(name, number)| {
            format!(
                "[[route]]\nname = \"{}\"\nnumbers = [\"{number}\"]\ncontact_flow_id = \"sandbox-{}-flow\"\nclosing_text = \"{name} has closed this chat. Write again any time.\"\n[route.attributes]\nbrand = \"{name}\"\n\n",
                name.to_lowercase(),
                name.to_lowercase(),
            )
        })
        .collect()
}
const TEMPLATE_BODY: &str =
    "Hi {{1}}, this is the support team about your recent order. Reply here to chat with us.";

async fn listen() -> anyhow::Result<(TcpListener, String)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let a = l.local_addr()?.to_string();
    Ok((l, a))
}

/// A service's variables: the wiring to the simulators, what every sandbox service
/// shares (the routing file beside the database, quick queue-depth readings for the
/// page), then the service's own.
fn source(wired: Vars, db: &Path, own: &[(&str, &str)]) -> ConfigSource {
    let mut vars = wired;
    let routing = db.with_file_name("routing.toml");
    vars.extend(pairs(&[
        (
            waconnect_shared::service::routing::ROUTING_FILE_VAR,
            &routing.display().to_string(),
        ),
        ("WACONNECT_QUEUE_DEPTH_INTERVAL", "1s"),
    ]));
    vars.extend(pairs(own));
    ConfigSource::from_pairs(vars)
}

impl Sandbox {
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("waconnect.db");
        std::fs::write(dir.path().join("routing.toml"), routing())?;
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();

        // The two simulators.
        let (connect_listener, connect_addr) = listen().await?;
        let sim = SimOptions {
            tls: options.tls,
            ..SimOptions::default()
        };
        let instance = sim.instance_id.clone();
        let scheme = if options.tls { "https" } else { "http" };
        let connect = format!("{scheme}://{connect_addr}");
        tasks.push(tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = connect::serve(connect_listener, sim, stop).await;
            }
        }));
        let (ingress_listener, ingress_addr) = listen().await?;
        let ingress = format!("http://{ingress_addr}");
        let twilio_options = TwilioOptions {
            webhook_url: Some(format!("{ingress}/twilio/messages#rc=3&rp=5xx,ct,rt")),
            // The phone reads what it shows, like a customer opening the chat.
            auto_read: false,
            status_delay: options.status_delay,
            sender_rate: options.sender_rate,
            templates: vec![(TEMPLATE.into(), TEMPLATE_BODY.into())],
            sender: BUSINESSES[0].1.into(),
            other_senders: BUSINESSES[1..].iter().map(|(_, n)| (*n).into()).collect(),
            tls: options.tls,
            ..TwilioOptions::default()
        };
        // The relay binds its API itself: a port free now, on loopback.
        let outreach_addr = listen().await?.1;
        let outreach_token = uuid::Uuid::new_v4().simple().to_string();
        let (twilio_listener, twilio_addr) = listen().await?;
        let twilio = format!("{scheme}://{twilio_addr}");
        tasks.push(tokio::spawn({
            let (stop, o) = (stop.clone(), twilio_options.clone());
            async move {
                let _ = twilio::serve(twilio_listener, o, stop).await;
            }
        }));

        // The three services, exactly as in production but for their endpoints; the
        // storage given in the options replaces the embedded engine.
        let mut wiring = Wiring {
            connect: Some(ConnectEnd {
                endpoint: connect.clone(),
                instance_id: instance,
            }),
            twilio: Some(TwilioEnd {
                api_base: twilio.clone(),
                account_sid: twilio_options.account_sid.clone(),
                auth_token: twilio_options.auth_token.clone(),
                sender: twilio_options.sender.clone(),
            }),
            public_url: Some(ingress.clone()),
            storage: Vars::new(),
        }
        .sqlite(&db);
        wiring.storage.extend(options.storage.iter().cloned());
        let ingress_config =
            IngressConfig::from_source(&source(wiring.ingress(&ingress_addr), &db, &[]))?;
        tasks.push(tokio::spawn({
            let stop = stop.clone();
            async move {
                if let Err(e) = waconnect_ingress::run(ingress_config, ingress_listener, stop).await
                {
                    tracing::error!(error = %e, "ingress stopped");
                }
            }
        }));
        let relay_config = waconnect_relay_worker::config_from(&source(
            wiring.relay(),
            &db,
            &[
                // Each route names its own flow and closing text (the routing file).
                ("WACONNECT_RELAY_SWEEP_INTERVAL", "1s"),
                // The desk's "Start" button: a conversation from the agent's side.
                ("WACONNECT_RELAY_API_BIND", &outreach_addr),
                ("WACONNECT_RELAY_API_TOKEN", &outreach_token),
            ],
        ))?;
        let (relay_ops, _) = listen().await?;
        tasks.push(tokio::spawn({
            let stop = stop.clone();
            async move {
                if let Err(e) = waconnect_relay_worker::run(relay_config, relay_ops, stop).await {
                    tracing::error!(error = %e, "relay-worker stopped");
                }
            }
        }));
        let sender_config = waconnect_outbound_sender::config_from(&source(
            wiring.sender(),
            &db,
            &[("WACONNECT_SENDER_RATE", &options.sender_rate.to_string())],
        ))?;
        let (sender_ops, _) = listen().await?;
        tasks.push(tokio::spawn({
            let stop = stop.clone();
            async move {
                if let Err(e) =
                    waconnect_outbound_sender::run(sender_config, sender_ops, stop).await
                {
                    tracing::error!(error = %e, "outbound-sender stopped");
                }
            }
        }));

        // The page.
        // One connection (and one database thread) for the page's depth readings.
        let (inbound, outbound): (Arc<dyn Queue>, Arc<dyn Queue>) = if options.storage.is_empty() {
            let page_db = Db::open_path(&db, Synchronous::Normal).await?;
            (
                Arc::new(SqliteQueue::open(page_db.clone(), "inbound", Limits::both(5)).await?),
                Arc::new(SqliteQueue::open(page_db, "outbound", Limits::both(5)).await?),
            )
        } else {
            let common =
                CommonConfig::read(&mut ConfigSource::from_pairs(wiring.storage.clone()).reader());
            let backend = Backend::open(&common).await?;
            (backend.inbound().await?, backend.outbound().await?)
        };
        let (phone, desk) = (PhoneClient::new(twilio), DeskClient::new(connect));
        let parts = Parts {
            phone: phone.clone(),
            desk: desk.clone(),
            inbound,
            outbound,
            outreach_url: format!("http://{outreach_addr}/v1/conversations"),
            outreach_token,
        };
        let listener = TcpListener::bind(options.bind).await.with_context(|| {
            format!("WACONNECT_SANDBOX_BIND: cannot listen on {}", options.bind)
        })?;
        let url = format!("http://{}", listener.local_addr()?);
        tasks.push(tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = axum::serve(listener, ui::router(Arc::new(parts)))
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            }
        }));
        Ok(Self {
            url,
            phone,
            desk,
            dir,
            stop,
            tasks,
        })
    }

    /// The customer's phone (Twilio simulator).
    pub fn phone(&self) -> PhoneClient {
        self.phone.clone()
    }

    /// The agent desk (Connect simulator).
    pub fn desk(&self) -> DeskClient {
        self.desk.clone()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `customers` each write once; agents accept every chat, and this waits until the
    /// relay holds them all. Returns their contacts, by customer. Panics after `deadline`
    /// (for the benches and tests that drive the sandbox).
    pub async fn open_chats(
        &self,
        customers: &[waconnect_shared::CustomerAddress],
        deadline: std::time::Duration,
    ) -> Vec<String> {
        use waconnect_sim::wait;
        for c in customers {
            self.phone.text(c.as_str(), "warm").await.unwrap();
        }
        let mut contacts = Vec::new();
        for c in customers {
            let number = c.e164().to_owned();
            let contact = wait::until("the warm-up chat", deadline, || async {
                let chats = self.desk.chats(None).await.ok()?;
                chats
                    .iter()
                    .find(|s| {
                        s.attributes.get("CustomerNumber").and_then(|v| v.as_str()) == Some(&number)
                    })
                    .map(|s| s.contact_id.clone())
            })
            .await;
            self.desk.accept(&contact).await.unwrap();
            contacts.push(contact);
        }
        wait::until("every chat held", deadline, || async {
            (self.desk.stats().await.ok()?.sockets >= customers.len()).then_some(())
        })
        .await;
        contacts
    }

    pub fn database(&self) -> PathBuf {
        self.dir.path().join("waconnect.db")
    }

    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Runs the sandbox as `waconnect sandbox` does: configured by the environment, until
/// Ctrl-C or SIGTERM, printing its URL.
pub async fn run_from_env() -> anyhow::Result<()> {
    let options = Options::from_env()?;
    waconnect_shared::service::telemetry::init_logging(&options.telemetry, "sandbox")?;
    let sandbox = Sandbox::start(options).await?;
    println!(
        "\nwaconnect sandbox is running: {url}\n\n\
         Open it in a browser. On the left is a WhatsApp customer's phone, on the right an\n\
         Amazon Connect agent desk. Type as the customer, accept the chat as the agent,\n\
         reply, and watch the ticks and the queues. Ingress, relay-worker and\n\
         outbound-sender are the real services on the embedded SQLite engine\n\
         ({db}); only Twilio and Connect are simulated. Ctrl-C stops it.\n",
        url = sandbox.url(),
        db = sandbox.database().display(),
    );
    waconnect_shared::service::shutdown::on_signals()
        .cancelled()
        .await;
    sandbox.stop().await;
    Ok(())
}
