//! The full loop over real processes, for end-to-end tests: the customer's phone (Twilio
//! simulator) → ingress → relay-worker → the agent (Connect simulator) → relay-worker →
//! outbound-sender → the phone, on one SQLite file.

use crate::balancer::Balancer;
use crate::processes::spawn;
use crate::{customer, free_port, wait};
use std::time::Duration;
use tokio::process::Child;
use waconnect_sim::connect::{ConnectSim, SimOptions};
use waconnect_sim::twilio::{TwilioOptions, TwilioSim};
use waconnect_sim::wiring::{Wiring, pairs};

/// Both simulators and the three services as real processes on one SQLite file.
pub struct FullLoop {
    _dir: tempfile::TempDir,
    pub connect: ConnectSim,
    pub twilio: TwilioSim,
    pub ingress_port: String,
    /// In front of ingress when [`LoopOptions::balancer`] asks for it.
    pub balancer: Option<Balancer>,
    pub relay_ops: String,
    pub sender_ops: String,
    /// Each service's variables, to start it again after a kill.
    pub ingress_vars: Vec<(String, String)>,
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
    /// `WACONNECT_SQLITE_SYNCHRONOUS` for every service, instead of the wiring's `normal`
    /// (tests need no power-cut durability): a bench measures the default, `full`.
    pub synchronous: Option<&'static str>,
    /// Ingress behind a load balancer ([`Balancer`]): the public URL is the balancer's.
    pub balancer: bool,
}

impl FullLoop {
    /// The relay's `/metrics` as it answers now; `None` while it cannot.
    pub async fn relay_metrics(&self) -> Option<String> {
        let url = format!("http://{}/metrics", self.relay_ops);
        reqwest::get(url).await.ok()?.text().await.ok()
    }

    pub async fn start(options: LoopOptions) -> Self {
        let LoopOptions {
            twilio,
            connect,
            relay_vars: relay_extra,
            sender_vars: sender_extra,
            aws,
            routing,
            synchronous,
            balancer,
        } = options;
        let dir = tempfile::tempdir().unwrap();
        let routing_file = routing.map(|text| {
            let path = dir.path().join("routing.toml");
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        });
        let connect = ConnectSim::start_with(connect).await;
        let ingress_port = free_port().await;
        let balancer = match balancer {
            true => Some(Balancer::start(&format!("http://{ingress_port}")).await),
            false => None,
        };
        // Where Twilio reaches ingress: through the balancer when there is one.
        let ingress = balancer
            .as_ref()
            .map_or_else(|| format!("http://{ingress_port}"), |b| b.url.clone());
        let (relay_ops, sender_ops) = (free_port().await, free_port().await);
        let twilio = TwilioSim::start_with(TwilioOptions {
            webhook_url: Some(format!("{ingress}/twilio/messages#rc=5&rp=5xx,ct")),
            ..twilio
        })
        .await;
        let wiring = Wiring::new(&connect, &twilio, &ingress);
        let wiring = if aws {
            let moto = crate::moto::Moto::shared();
            wiring.storage(crate::moto::Moto::env(&moto.fresh("loop", 50).await))
        } else {
            wiring.sqlite(&dir.path().join("waconnect.db"))
        };
        let mut own = pairs(&[("RUST_LOG", "warn")]);
        if let Some(path) = &routing_file {
            own.extend(pairs(&[("WACONNECT_ROUTING_FILE", path.as_str())]));
        }
        if let Some(synchronous) = synchronous {
            own.extend(pairs(&[("WACONNECT_SQLITE_SYNCHRONOUS", synchronous)]));
        }
        // A service's wiring, then the loop's own settings, then the test's: later pairs win.
        let vars_for = |wired: Vec<(String, String)>,
                        settings: &[(&str, &str)],
                        extra: &[(&'static str, String)]| {
            let mut v = wired;
            v.extend(own.iter().cloned());
            v.extend(pairs(settings));
            v.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
            v
        };
        let ingress_vars = vars_for(wiring.ingress(&ingress_port), &[], &[]);
        let ingress_process = spawn("ingress", &ingress_vars);
        let relay_vars = vars_for(
            wiring.relay(),
            &[
                ("WACONNECT_RELAY_OPS_BIND", &relay_ops),
                ("WACONNECT_RELAY_SWEEP_INTERVAL", "300ms"),
                // The tests' customers write again when a webhook fails, as they would
                // without the catch-up; the catch-up's own tests turn it on.
                ("WACONNECT_RELAY_CATCH_UP_EVERY", "0"),
            ],
            &relay_extra,
        );
        let relay = spawn("relay-worker", &relay_vars);
        let sender_vars = vars_for(
            wiring.sender(),
            &[
                ("WACONNECT_SENDER_OPS_BIND", &sender_ops),
                ("WACONNECT_SENDER_VISIBILITY", "3s"),
            ],
            &sender_extra,
        );
        let sender = spawn("outbound-sender", &sender_vars);
        Self {
            _dir: dir,
            connect,
            twilio,
            ingress_port,
            balancer,
            relay_ops,
            sender_ops,
            ingress_vars,
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
