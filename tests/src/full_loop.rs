//! The full loop over real processes, for end-to-end tests: the customer's phone (Twilio
//! simulator) → ingress → relay-worker → the agent (Connect simulator) → relay-worker →
//! outbound-sender → the phone, on one SQLite file.

use crate::processes::{spawn, vars};
use crate::{customer, free_port, wait};
use std::time::Duration;
use tokio::process::Child;
use waconnect_sim::connect::{ConnectSim, SimOptions};
use waconnect_sim::twilio::{TwilioOptions, TwilioSim};

/// Both simulators and the three services as real processes on one SQLite file.
pub struct FullLoop {
    _dir: tempfile::TempDir,
    pub connect: ConnectSim,
    pub twilio: TwilioSim,
    pub ingress_port: String,
    pub relay_ops: String,
    pub sender_ops: String,
    pub relay_vars: Vec<(String, String)>,
    pub sender_vars: Vec<(String, String)>,
    pub ingress: Child,
    pub relay: Child,
    pub sender: Child,
}

/// How the loop's parts are set up.
#[derive(Default)]
pub struct LoopOptions {
    pub twilio: TwilioOptions,
    pub connect: SimOptions,
    /// More variables for the relay-worker, and for the outbound-sender.
    pub relay_vars: Vec<(&'static str, String)>,
    pub sender_vars: Vec<(&'static str, String)>,
    /// SQS, DynamoDB and S3 on moto instead of the embedded engine.
    pub aws: bool,
    /// A routing file's text (several business numbers), given to every service.
    pub routing: Option<String>,
}

impl FullLoop {
    pub async fn start(options: LoopOptions) -> Self {
        let LoopOptions {
            twilio,
            connect,
            relay_vars: relay_extra,
            sender_vars: sender_extra,
            aws,
            routing,
        } = options;
        // Later variables win: the engine's come after each process's own.
        let storage = if aws {
            let moto = crate::moto::Moto::shared();
            crate::moto::Moto::env(&moto.fresh("loop", 50).await)
        } else {
            Vec::new()
        };
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("waconnect.db").display().to_string();
        let routing_file = routing.map(|text| {
            let path = dir.path().join("routing.toml");
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        });
        let connect = ConnectSim::start_with(connect).await;
        let ingress_port = free_port().await;
        let ingress = format!("http://{ingress_port}");
        let (relay_ops, sender_ops) = (free_port().await, free_port().await);
        let twilio = TwilioSim::start_with(TwilioOptions {
            webhook_url: Some(format!("{ingress}/twilio/messages#rc=5&rp=5xx,ct")),
            ..twilio
        })
        .await;
        let o = twilio.options().clone();
        // Every process knows ingress's public URL: the agent's files are served there.
        let common = [
            ("WACONNECT_SQLITE_PATH", db.as_str()),
            ("WACONNECT_SQLITE_SYNCHRONOUS", "normal"),
            ("RUST_LOG", "warn"),
            ("WACONNECT_PUBLIC_BASE_URL", ingress.as_str()),
        ];
        let mut common = vars(&common);
        if connect.endpoint().starts_with("https") || twilio.api_base().starts_with("https") {
            // The services trust the simulators' test CA as they would a proxy's.
            let ca = waconnect_sim::tls::TestCa::shared()
                .pem_file()
                .display()
                .to_string();
            common.extend(vars(&[("WACONNECT_EXTRA_CA_FILE", ca.as_str())]));
        }
        if let Some(path) = &routing_file {
            common.extend(vars(&[("WACONNECT_ROUTING_FILE", path.as_str())]));
        }
        let mut ingress_vars = common.clone();
        ingress_vars.extend(vars(&[
            ("TWILIO_AUTH_TOKEN", &o.auth_token),
            ("WACONNECT_INGRESS_BIND", &ingress_port),
        ]));
        ingress_vars.extend(storage.iter().cloned());
        let ingress_process = spawn("ingress", &ingress_vars);
        let mut relay_vars = common.clone();
        relay_vars.extend(vars(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("WACONNECT_CONNECT_INSTANCE_ID", connect.instance_id()),
            ("WACONNECT_CONNECT_CONTACT_FLOW_ID", "flow"),
            ("WACONNECT_CONNECT_ENDPOINT", &connect.endpoint()),
            ("WACONNECT_RELAY_OPS_BIND", &relay_ops),
            ("WACONNECT_RELAY_SWEEP_INTERVAL", "300ms"),
            // The relay fetches customers' files from Twilio and shows typing there.
            ("TWILIO_ACCOUNT_SID", &o.account_sid),
            ("TWILIO_AUTH_TOKEN", &o.auth_token),
            ("WACONNECT_TWILIO_API_BASE", &twilio.api_base()),
            ("WACONNECT_TWILIO_MESSAGING_BASE", &twilio.api_base()),
            ("WACONNECT_TWILIO_CONTENT_BASE", &twilio.api_base()),
            // The number conversations the business starts are sent from.
            ("TWILIO_FROM", &o.sender),
        ]));
        relay_vars.extend(storage.iter().cloned());
        relay_vars.extend(
            relay_extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone())),
        );
        let relay = spawn("relay-worker", &relay_vars);
        let mut sender_vars = common;
        sender_vars.extend(vars(&[
            ("TWILIO_ACCOUNT_SID", &o.account_sid),
            ("TWILIO_AUTH_TOKEN", &o.auth_token),
            ("TWILIO_FROM", &o.sender),
            ("WACONNECT_TWILIO_API_BASE", &twilio.api_base()),
            ("WACONNECT_TWILIO_CONTENT_BASE", &twilio.api_base()),
            (
                "WACONNECT_STATUS_CALLBACK_URL",
                &format!("{ingress}/twilio/status"),
            ),
            ("WACONNECT_SENDER_OPS_BIND", &sender_ops),
            ("WACONNECT_SENDER_VISIBILITY", "3s"),
        ]));
        sender_vars.extend(storage.iter().cloned());
        sender_vars.extend(
            sender_extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone())),
        );
        let sender = spawn("outbound-sender", &sender_vars);
        Self {
            _dir: dir,
            connect,
            twilio,
            ingress_port,
            relay_ops,
            sender_ops,
            relay_vars,
            sender_vars,
            ingress: ingress_process,
            relay,
            sender,
        }
    }

    /// `customers` each text `each` messages through ingress (which may still be
    /// starting: the retry fragment covers it); then agents accept, having seen each
    /// customer's texts in order. Returns the contacts, held by the relay.
    pub async fn customers_write_and_agents_accept(
        &self,
        customers: usize,
        each: usize,
    ) -> Vec<String> {
        let phone = self.twilio.phone();
        let desk = self.connect.desk();
        let writers = (0..customers).map(|c| {
            let phone = phone.clone();
            tokio::spawn(async move {
                for m in 0..each {
                    let (_, status) = wait::until(
                        "ingress to take the webhook",
                        Duration::from_secs(30),
                        || async {
                            let (sid, status) = phone
                                .text(customer(c).as_str(), &format!("c{c} says {m}"))
                                .await
                                .ok()?;
                            (status == 200).then_some((sid, status))
                        },
                    )
                    .await;
                    assert_eq!(status, 200);
                }
            })
        });
        for w in writers.collect::<Vec<_>>() {
            w.await.unwrap();
        }
        let mut contacts = Vec::new();
        for c in 0..customers {
            let expected: Vec<String> = (0..each).map(|m| format!("c{c} says {m}")).collect();
            let name = customer(c).e164().to_owned();
            let contact = wait::until("the customer's chat", Duration::from_secs(60), || async {
                let chats = desk.chats(None).await.ok()?;
                let chat = chats.iter().find(|s| {
                    s.attributes.get("CustomerNumber").and_then(|v| v.as_str()) == Some(&name)
                })?;
                let texts = desk.customer_texts(&chat.contact_id).await.ok()?;
                (texts == expected).then(|| chat.contact_id.clone())
            })
            .await;
            desk.accept(&contact).await.unwrap();
            contacts.push(contact);
        }
        wait::until("every chat held", Duration::from_secs(30), || async {
            (desk.stats().await.ok()?.sockets >= customers).then_some(())
        })
        .await;
        contacts
    }
}
