//! The randomized chaos run: the whole bridge as real processes (ingress, three
//! relay-workers, two outbound-senders) between both simulators, customers and agents
//! writing numbered messages both ways, while a seeded schedule SIGKILLs and restarts
//! processes, freezes them (SIGSTOP, then SIGCONT) past their leases and visibility
//! timeouts, and injects Connect and Twilio faults, and on AWS SQS, DynamoDB and S3 ones
//! ([`crate::aws_faults`]). About one message in five each way is a file (a small PDF
//! that carries its label, so the checker knows it whatever name the bridge gives it).
//! Then the faults stop and a checker asserts that every message and file arrived
//! exactly once, in order per customer, both ways, and that nothing was dead-lettered.
//!
//! `CHAOS_SEED` replays a run (the seed is printed first), `CHAOS_SECONDS` sets how long
//! the faults go on (default 45; `CHAOS_SECONDS=3600` for a soak), `CHAOS_RUST_LOG` the
//! services' log filter (default `info`). A run that fails keeps the services' logs and
//! the database, and says where.

use crate::aws_faults::{AwsFaults, Failed, Fault};
use crate::moto::Moto;
use crate::processes::{freeze, spawn_logged, thaw};
use crate::{customer, free_port};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::Mutex;
use waconnect_shared::service::config::{AwsStorageConfig, CommonConfig, ConfigSource};
use waconnect_sim::connect::{ConnectSim, DeskClient, Item, Scan};
use waconnect_sim::twilio::{InboxMessage, PhoneClient, TwilioOptions, TwilioSim};
use waconnect_sim::wiring::{Wiring, pairs};

/// Which storage the fleet runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Aws,
}

const CUSTOMERS: usize = 6;
const RELAYS: usize = 3;
const SENDERS: usize = 2;
/// Files each side sends per customer, at most: Connect takes 35 attachments per chat,
/// the customer's and the agent's together, and a soak runs for an hour.
const FILES_EACH_WAY: usize = 12;
/// One message in this many is a file, until [`FILES_EACH_WAY`].
const ONE_FILE_IN: u32 = 5;

/// A small, valid PDF that carries `label` in a comment.
fn labelled_pdf(label: &str) -> Vec<u8> {
    format!(
        "%PDF-1.4\n%label:{label}\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    )
    .into_bytes()
}

/// The label [`labelled_pdf`] put in a file.
fn label_in(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("%label:"))?;
    Some(line.to_owned())
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub customer_messages: usize,
    pub agent_messages: usize,
    /// Of those, the files.
    pub customer_files: usize,
    pub agent_files: usize,
    /// Of the customer's messages, those whose webhook Twilio gave up on (the catch-up's).
    pub caught_up: usize,
    pub kills: BTreeMap<&'static str, usize>,
    /// Processes stopped for a while and then let go on, by service.
    pub freezes: BTreeMap<&'static str, usize>,
    pub faults: BTreeMap<&'static str, usize>,
    /// On AWS: the services' calls the proxy in front of moto failed.
    pub aws_calls_failed: Failed,
    pub lost: usize,
    pub duplicated: usize,
    pub reordered: usize,
    /// Replies that landed after later ones because WhatsApp refused an earlier copy
    /// (63018) and it was sent again: explained, so counted apart.
    pub resent_out_of_order: usize,
    pub dead_letters: usize,
    /// Agents' messages whose read callback ingress took (Twilio got a 2xx), and of those
    /// the ones the agent never saw read: receipts lost inside the bridge. (A callback
    /// Twilio gave up on, or the simulator lost on purpose, is not counted.)
    pub read_receipts: usize,
    pub receipts_lost: usize,
}

/// A service process, how to start it again, and the file every start of it logs to.
struct Service {
    name: &'static str,
    binary: &'static str,
    vars: Vec<(String, String)>,
    log: PathBuf,
    child: Child,
}

impl Service {
    fn start(
        name: &'static str,
        binary: &'static str,
        vars: Vec<(String, String)>,
        log: PathBuf,
    ) -> Self {
        let child = spawn_logged(binary, &vars, &log);
        Self {
            name,
            binary,
            vars,
            log,
            child,
        }
    }

    async fn kill_and_restart(&mut self) {
        self.kill_for(Duration::ZERO).await;
    }

    /// SIGKILLs the process and starts it again after `down`.
    async fn kill_for(&mut self, down: Duration) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        tokio::time::sleep(down).await;
        self.child = spawn_logged(self.binary, &self.vars, &self.log);
    }

    /// Stops the process for `pause`, then lets it go on (SIGSTOP, SIGCONT): a VM the
    /// hypervisor froze, a container throttled to nothing, a long stall on a disk. Its
    /// leases and visibility timeouts lapse meanwhile, others take its work over, and it
    /// wakes with everything it held in memory — sockets, messages, leases — as it was.
    async fn freeze_for(&self, pause: Duration) {
        freeze(&self.child);
        tokio::time::sleep(pause).await;
        thaw(&self.child);
    }
}

/// What each side has written so far.
#[derive(Default)]
struct Written {
    customer: Vec<Vec<String>>,
    agent: Vec<Vec<String>>,
    /// Customer messages Twilio took but whose webhook it gave up on: the relays' catch-up
    /// brings each to the agent, later than what was written after it.
    late: Vec<Vec<String>>,
}

pub async fn run(engine: Engine) -> Report {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    println!(
        "chaos on {engine:?}: seed {seed} (CHAOS_SEED={seed} replays it), {seconds} s of faults"
    );
    let mut report = Report {
        seed,
        ..Report::default()
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let connect = ConnectSim::start().await;
    let ingress_port = free_port().await;
    let ingress_url = format!("http://{ingress_port}");
    let twilio = TwilioSim::start_with(TwilioOptions {
        webhook_url: Some(format!("{ingress_url}/twilio/messages#rc=5&rp=5xx,ct,rt")),
        ..TwilioOptions::default()
    })
    .await;
    let wiring = Wiring::new(&connect, &twilio, &ingress_url);
    // On AWS the services reach moto through a proxy that fails their calls as SQS,
    // DynamoDB and S3 do at scale.
    let aws = match engine {
        Engine::Sqlite => None,
        Engine::Aws => Some(AwsFaults::start(&Moto::shared().endpoint, seed ^ 5).await),
    };
    let wiring = match &aws {
        None => wiring.sqlite(&dir.path().join("waconnect.db")),
        Some(aws) => wiring.storage(Moto::env(&AwsStorageConfig {
            endpoint: Some(aws.endpoint.clone()),
            ..Moto::shared().fresh("chaos", 50).await
        })),
    };
    let log_filter = std::env::var("CHAOS_RUST_LOG").unwrap_or_else(|_| "info".into());
    let tuned = |mut v: Vec<(String, String)>, extra: &[(&str, &str)]| {
        v.extend(pairs(&[
            // Info by default: leases taken and lost, chats started and ended, what a
            // failed run needs to be explained from its logs.
            ("RUST_LOG", log_filter.as_str()),
            ("WACONNECT_MAX_ATTEMPTS", "10"),
            ("WACONNECT_QUEUE_DEPTH_INTERVAL", "5s"),
        ]));
        v.extend(pairs(extra));
        v
    };
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let mut services = vec![Service::start(
        "ingress",
        "ingress",
        tuned(wiring.ingress(&ingress_port), &[]),
        log("ingress"),
    )];
    for r in 0..RELAYS {
        // A stable identity, as a pod name is: each restart takes its leases back.
        let identity = format!("chaos-relay-{r}");
        services.push(Service::start(
            "relay-worker",
            "relay-worker",
            tuned(
                wiring.relay(),
                &[
                    ("WACONNECT_RELAY_OPS_BIND", "127.0.0.1:0"),
                    ("WACONNECT_RELAY_IDENTITY", &identity),
                    ("WACONNECT_RELAY_LEASE", "3s"),
                    ("WACONNECT_RELAY_HEARTBEAT", "1s"),
                    ("WACONNECT_RELAY_SWEEP_INTERVAL", "300ms"),
                    ("WACONNECT_RELAY_RETRY_AFTER", "200ms"),
                    ("WACONNECT_RELAY_VISIBILITY", "4s"),
                    ("WACONNECT_RELAY_CURSOR_FLUSH", "1s"),
                    ("WACONNECT_RELAY_SHUTDOWN_GRACE", "2s"),
                    // Stretches of a second, each looked at once Twilio's tries of its
                    // webhooks may still run (to 15 s): the catch-up then meets ingress's
                    // late success, and the queue's dedup sorts them out.
                    ("WACONNECT_RELAY_CATCH_UP_EVERY", "1s"),
                    ("WACONNECT_RELAY_CATCH_UP_AFTER", "2s"),
                ],
            ),
            log(&identity),
        ));
    }
    for s in 0..SENDERS {
        services.push(Service::start(
            "outbound-sender",
            "outbound-sender",
            tuned(
                wiring.sender(),
                &[
                    ("WACONNECT_SENDER_OPS_BIND", "127.0.0.1:0"),
                    ("WACONNECT_SENDER_VISIBILITY", "3s"),
                    ("WACONNECT_SENDER_MAX_BACKOFF", "1s"),
                    ("WACONNECT_SENDER_TIMEOUT", "2s"),
                ],
            ),
            log(&format!("outbound-sender-{s}")),
        ));
    }

    let written = Arc::new(Mutex::new(Written {
        customer: vec![Vec::new(); CUSTOMERS],
        agent: vec![Vec::new(); CUSTOMERS],
        late: vec![Vec::new(); CUSTOMERS],
    }));
    let contacts: Arc<Mutex<BTreeMap<usize, String>>> = Arc::default();
    let writing = Arc::new(AtomicBool::new(true));
    let phone = twilio.phone();
    let desk = connect.desk();

    // Customers write, each in turn, at a few messages a second in all.
    let customers = tokio::spawn({
        let (phone, written, writing) = (phone.clone(), written.clone(), writing.clone());
        let mut rng = StdRng::seed_from_u64(seed ^ 1);
        async move {
            let mut files = [0; CUSTOMERS];
            let mut counts = [0; CUSTOMERS];
            while writing.load(Ordering::Relaxed) {
                let c = rng.random_range(0..CUSTOMERS);
                let n = counts[c];
                counts[c] += 1;
                let text = format!("c{c} m{n}");
                let file = files[c] < FILES_EACH_WAY && rng.random_ratio(1, ONE_FILE_IN);
                let from = customer(c);
                let sent = if file {
                    // A document with its caption: the agent sees the file, then the text.
                    let pdf = labelled_pdf(&text);
                    phone
                        .send_file(from.as_str(), pdf, "application/pdf", &text)
                        .await
                } else {
                    phone.text(from.as_str(), &text).await
                };
                // Twilio's retries (the fragment) cover an ingress restart; a message whose
                // webhook still failed is Twilio's all the same, and the catch-up's to bring.
                // (Without an answer from Twilio at all, the message may not exist.)
                if let Ok((_, status)) = sent {
                    let mut written = written.lock().await;
                    let side = if status == 200 {
                        &mut written.customer[c]
                    } else {
                        &mut written.late[c]
                    };
                    if file {
                        files[c] += 1;
                        side.push(format!("file:{text}"));
                    }
                    side.push(text);
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
            }
        }
    });
    // Agents take every chat and reply.
    let agents = tokio::spawn({
        let (desk, written, writing, contacts) = (
            desk.clone(),
            written.clone(),
            writing.clone(),
            contacts.clone(),
        );
        let mut rng = StdRng::seed_from_u64(seed ^ 2);
        async move {
            let mut files = [0; CUSTOMERS];
            while writing.load(Ordering::Relaxed) {
                if let Ok(chats) = desk.chats(None).await {
                    for chat in chats {
                        let Some(c) = (0..CUSTOMERS).find(|c| {
                            chat.attributes
                                .get("CustomerNumber")
                                .and_then(|v| v.as_str())
                                == Some(customer(*c).e164())
                        }) else {
                            continue;
                        };
                        if chat.state == "waiting" {
                            let _ = desk.accept(&chat.contact_id).await;
                        }
                        contacts.lock().await.insert(c, chat.contact_id.clone());
                    }
                }
                let known: Vec<(usize, String)> = contacts
                    .lock()
                    .await
                    .iter()
                    .map(|(c, id)| (*c, id.clone()))
                    .collect();
                if !known.is_empty() {
                    let (c, contact) = &known[rng.random_range(0..known.len())];
                    let n = written.lock().await.agent[*c].len();
                    let text = format!("c{c} a{n}");
                    let file = files[*c] < FILES_EACH_WAY && rng.random_ratio(1, ONE_FILE_IN);
                    let sent = if file {
                        // Half of them scanned for a while first: the relay waits for the
                        // verdict, and what the agent writes next waits behind the file.
                        let scan = rng.random_bool(0.5).then(|| {
                            Scan::After(Duration::from_millis(rng.random_range(100..1500)))
                        });
                        let name = format!("c{c}-a{n}.pdf");
                        let pdf = labelled_pdf(&text);
                        desk.send_scanned_file(
                            contact,
                            &name,
                            "application/pdf",
                            pdf,
                            "APPROVED",
                            scan,
                        )
                        .await
                        .is_ok()
                    } else {
                        desk.send(contact, &text).await.is_ok()
                    };
                    if sent {
                        if file {
                            files[*c] += 1;
                        }
                        written.lock().await.agent[*c].push(if file {
                            format!("file:{text}")
                        } else {
                            text
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
            }
        }
    });

    // The faults, on a seeded schedule.
    let mut rng = StdRng::seed_from_u64(seed);
    // Freezes draw from their own stream, so a seed recorded before they existed still
    // replays its other faults in the same order.
    let mut freezes = StdRng::seed_from_u64(seed ^ 2);
    // Outages too, for the same reason, and AWS's faults.
    let mut outages = StdRng::seed_from_u64(seed ^ 3);
    let mut aws_rounds = StdRng::seed_from_u64(seed ^ 4);
    let mut aws_fault_ends: Option<Instant> = None;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2500))).await;
        if freezes.random_ratio(1, 6) {
            // From well within to twice the relays' 3 s lease and the senders' 3 s
            // visibility; ingress holds Twilio's webhooks (15 s timeout) meanwhile.
            let service = &services[freezes.random_range(0..services.len())];
            service
                .freeze_for(Duration::from_millis(freezes.random_range(500..6000)))
                .await;
            *report.freezes.entry(service.name).or_default() += 1;
        }
        if outages.random_ratio(1, 10) {
            // Ingress down for longer than Twilio tries a webhook (here about 3 s: the
            // fragment's five tries, 0.2 s apart and more): what it gives up on, the
            // relays' catch-up must bring. Not much longer: on one box ingress also serves
            // the agent's files, and Twilio's fetches of one fail meanwhile (63019); the
            // sender's five re-sends of it span 4.5 s here (its backoff capped at 1 s), 15.5 s
            // by default, and past them the agent is told the file was not delivered.
            services[0]
                .kill_for(Duration::from_millis(outages.random_range(3500..4500)))
                .await;
            *report.kills.entry("ingress_outage").or_default() += 1;
        }
        if let Some(aws) = &aws
            && aws_fault_ends.is_some_and(|end| Instant::now() >= end)
        {
            aws.set(Fault::None);
            aws_fault_ends = None;
        }
        if let Some(aws) = &aws
            && aws_fault_ends.is_none()
            && aws_rounds.random_ratio(1, 4)
        {
            // From now until a round ends 1–4 s on, under whatever else happens meanwhile
            // (kills, freezes, Connect's and Twilio's faults): throttling, server errors
            // (half of them after the call was applied, its answer lost), or each call
            // held up to 2 s, past the relays' 1 s heartbeat.
            let (fault, kind) = match aws_rounds.random_range(0..3) {
                0 => (
                    Fault::Throttle(aws_rounds.random_range(2..6)),
                    "aws_throttling",
                ),
                1 => (
                    Fault::ServerErrors(aws_rounds.random_range(3..10)),
                    "aws_5xx",
                ),
                _ => (
                    Fault::Slow(Duration::from_millis(aws_rounds.random_range(200..2000))),
                    "aws_slow",
                ),
            };
            aws.set(fault);
            aws_fault_ends =
                Some(Instant::now() + Duration::from_millis(aws_rounds.random_range(1000..4000)));
            *report.faults.entry(kind).or_default() += 1;
        }
        let fault = rng.random_range(0..12);
        let kind: &'static str = match fault {
            0..=2 => {
                let relays: Vec<usize> = (0..services.len())
                    .filter(|i| services[*i].name == "relay-worker")
                    .collect();
                let i = relays[rng.random_range(0..relays.len())];
                services[i].kill_and_restart().await;
                *report.kills.entry("relay-worker").or_default() += 1;
                continue;
            }
            3 => {
                let senders: Vec<usize> = (0..services.len())
                    .filter(|i| services[*i].name == "outbound-sender")
                    .collect();
                let i = senders[rng.random_range(0..senders.len())];
                services[i].kill_and_restart().await;
                *report.kills.entry("outbound-sender").or_default() += 1;
                continue;
            }
            4 => {
                services[0].kill_and_restart().await;
                *report.kills.entry("ingress").or_default() += 1;
                continue;
            }
            5 => {
                let _ = desk.throttle(rng.random_range(2..8), None).await;
                "connect_throttling"
            }
            6 => {
                let _ = desk.fail(rng.random_range(1..5), None).await;
                "connect_5xx"
            }
            7 => {
                // Slower than the relay's 4 s visibility: the keeper must hold the message.
                let _ = desk.delay(rng.random_range(1000..5000)).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(2000..6000))).await;
                let _ = desk.delay(0).await;
                "connect_slow"
            }
            8 => {
                let _ = desk.answer_heartbeats(false).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3500))).await;
                let _ = desk.answer_heartbeats(true).await;
                "connect_silent_heartbeats"
            }
            9 => {
                if rng.random_bool(0.5) {
                    let _ = desk.drop_sockets(None).await;
                    "connect_dropped_sockets"
                } else {
                    let _ = desk.expire_tokens(None).await;
                    "connect_expired_tokens"
                }
            }
            10 => {
                if rng.random_bool(0.5) {
                    let _ = phone.storm(rng.random_range(0.5..2.5)).await;
                    "twilio_429_storm"
                } else {
                    let _ = phone.fail(rng.random_range(1..4)).await;
                    let _ = phone.delay(rng.random_range(0..1500)).await;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
                    let _ = phone.delay(0).await;
                    "twilio_5xx_and_slow"
                }
            }
            _ => {
                if rng.random_bool(0.5) {
                    refuse_over_rate(&phone, &mut rng).await;
                    "twilio_async_63018"
                } else if rng.random_bool(0.5) {
                    let _ = phone.shuffle_statuses(true).await;
                    "twilio_shuffled_callbacks"
                } else {
                    // Lost until the faults are next cleared (set again after the
                    // refusals' window clears them), so some lost callbacks are refusals'.
                    let one_in = rng.random_range(2..5);
                    let _ = phone.lose_statuses(one_in).await;
                    refuse_over_rate(&phone, &mut rng).await;
                    let _ = phone.lose_statuses(one_in).await;
                    "twilio_lost_callbacks"
                }
            }
        };
        *report.faults.entry(kind).or_default() += 1;
    }
    if let Some(aws) = &aws {
        aws.set(Fault::None);
    }
    writing.store(false, Ordering::Relaxed);
    let _ = customers.await;
    let _ = agents.await;
    let _ = desk.clear_faults().await;
    let _ = phone.clear_faults().await;
    let _ = desk.answer_heartbeats(true).await;

    let written = written.lock().await;
    let contacts = contacts.lock().await.clone();
    report.customer_messages = written.customer.iter().map(Vec::len).sum::<usize>()
        + written.late.iter().map(Vec::len).sum::<usize>();
    report.caught_up = written.late.iter().map(Vec::len).sum();
    report.agent_messages = written.agent.iter().map(Vec::len).sum();
    let files = |side: &[Vec<String>]| {
        side.iter()
            .flatten()
            .filter(|m| m.starts_with("file:"))
            .count()
    };
    report.customer_files = files(&written.customer) + files(&written.late);
    report.agent_files = files(&written.agent);
    // Everything settles: every message arrives, bounded.
    let settled = tokio::time::timeout(Duration::from_secs(150), async {
        loop {
            let mut done = true;
            for c in 0..CUSTOMERS {
                // Counted, not read: the files are downloaded once, for the check below.
                let agent_has: usize = match contacts.get(&c) {
                    Some(contact) => customer_side(&desk, contact)
                        .await
                        .iter()
                        .map(|i| match i.kind.as_str() {
                            "ATTACHMENT" => i.attachments.len(),
                            _ if i
                                .content
                                .as_deref()
                                .is_some_and(|c| c.starts_with(LATE_NOTE)) =>
                            {
                                0
                            }
                            _ => 1,
                        })
                        .sum(),
                    None => 0,
                };
                done &= agent_has >= written.customer[c].len() + written.late[c].len();
                let phone_shows = delivered(&phone, c).await;
                done &= phone_shows.len() >= written.agent[c].len();
            }
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    if settled.is_err() {
        println!("chaos: not everything arrived within 150 s of the last fault");
    }
    // Late duplicates would come now, if at all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    (report.read_receipts, report.receipts_lost) =
        lost_read_receipts(&phone, &desk, &contacts).await;

    for c in 0..CUSTOMERS {
        let agent_sees = match contacts.get(&c) {
            Some(contact) => customer_items(&desk, contact).await,
            None => Vec::new(),
        };
        let phone_shows = delivered(&phone, c).await;
        let refused_first: Vec<String> = phone
            .inbox(customer(c).as_str())
            .await
            .unwrap_or_default()
            .iter()
            .filter(|m| m.error_code == Some(63018))
            .map(shown)
            .collect();
        // Every message once; those in order, the caught-up ones wherever they landed.
        let customer_all: Vec<String> = written.customer[c]
            .iter()
            .chain(&written.late[c])
            .cloned()
            .collect();
        let (lost, dup) = compare(&customer_all, &agent_sees);
        if lost + dup > 0 {
            println!(
                "chaos: customer {c} customer→agent: {lost} lost ({} of them after the last that arrived), {dup} doubled; sent {:?}, caught up {:?}, got {agent_sees:?}",
                missing_at_the_end(&written.customer[c], &agent_sees),
                written.customer[c],
                written.late[c]
            );
        }
        report.lost += lost;
        report.duplicated += dup;
        let in_order: Vec<String> = agent_sees
            .iter()
            .filter(|m| !written.late[c].contains(m))
            .cloned()
            .collect();
        for (direction, sent, got, refused) in [
            ("customer→agent", &written.customer[c], &in_order, &[][..]),
            (
                "agent→customer",
                &written.agent[c],
                &phone_shows,
                &refused_first[..],
            ),
        ] {
            // The customer's side was counted above, caught-up messages included.
            let (lost, dup) = match direction {
                "customer→agent" => (0, 0),
                _ => compare(sent, got),
            };
            let (plain, explained) = disorder(sent, got, refused);
            if lost + dup + plain > 0 {
                // The test's own numbered texts, never a real customer's: safe to print.
                println!(
                    "chaos: customer {c} {direction}: {lost} lost ({} of them after the last that arrived), {dup} doubled, {plain} reordered; sent {sent:?}, got {got:?}",
                    missing_at_the_end(sent, got)
                );
                if direction == "agent→customer" {
                    // What Twilio took for this customer, to tell which send doubled.
                    for m in phone.sent().await.unwrap_or_default() {
                        if m["to"] == customer(c).as_str() {
                            println!(
                                "chaos:   {} {} {} {} {} {}",
                                m["created_at"],
                                m["sid"],
                                m["body"],
                                m["status"],
                                m["error_code"],
                                m["status_callback"]
                            );
                        }
                    }
                }
            }
            report.lost += lost;
            report.duplicated += dup;
            report.reordered += plain;
            report.resent_out_of_order += explained;
        }
    }
    // Nothing dead-lettered.
    let common = CommonConfig::read(&mut ConfigSource::from_pairs(wiring.storage.clone()).reader());
    let backend = waconnect_shared::storage::backend::Backend::open(&common)
        .await
        .expect("open the fleet's storage");
    for queue in [backend.inbound().await, backend.outbound().await] {
        let queue = queue.expect("a queue");
        let dead = queue.dead_letters(100).await.unwrap_or_default();
        for d in &dead {
            println!("chaos: dead letter on {}: {}", queue.name(), d.reason);
        }
        report.dead_letters += dead.len();
    }
    for s in &mut services {
        let _ = s.child.start_kill();
        let _ = s.child.wait().await;
    }
    if let Some(aws) = &aws {
        report.aws_calls_failed = aws.failed();
    }
    println!("chaos on {engine:?}: {report:?}");
    if report.lost
        + report.duplicated
        + report.reordered
        + report.dead_letters
        + report.receipts_lost
        > 0
    {
        for s in &services {
            print_warnings(&s.log);
        }
        let kept = dir.keep();
        println!(
            "chaos: the services' logs and the database are kept in {}",
            kept.display()
        );
    }
    report
}

/// The last warnings, errors and other output (a panic) of a service, for a run that
/// failed; its full log stays on disk. Only the test's own numbered texts pass through:
/// safe to print.
fn print_warnings(log: &Path) {
    const LAST: usize = 40;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            !["INFO", "DEBUG", "TRACE"]
                .iter()
                .any(|level| l.contains(&format!("\"level\":\"{level}\"")))
        })
        .collect();
    println!(
        "chaos: {} logged {} lines, {} of them warnings, errors or other output; the last {}:",
        log.display(),
        text.lines().count(),
        lines.len(),
        LAST.min(lines.len())
    );
    for line in &lines[lines.len().saturating_sub(LAST)..] {
        println!("chaos:   {line}");
    }
}

/// Fails the test unless the run lost, doubled, reordered and dead-lettered nothing.
pub fn assert_clean(report: &Report) {
    assert!(
        report.customer_messages > 0 && report.agent_messages > 0,
        "nothing was written: {report:?}"
    );
    assert!(
        report.customer_files > 0 && report.agent_files > 0,
        "no file was sent one way or the other: {report:?}"
    );
    assert_eq!(
        (
            report.lost,
            report.duplicated,
            report.reordered,
            report.dead_letters,
            report.receipts_lost
        ),
        (0, 0, 0, 0, 0),
        "seed {} (replay with CHAOS_SEED={}): {report:?}",
        report.seed,
        report.seed
    );
}

/// How many agents' messages had their read callback taken by ingress, and how many of
/// those the agent still does not see read after a bounded wait. Receipts go on the first
/// part of a message only, as the relay sends them.
async fn lost_read_receipts(
    phone: &PhoneClient,
    desk: &DeskClient,
    contacts: &BTreeMap<usize, String>,
) -> (usize, usize) {
    let mut expected = std::collections::BTreeSet::new();
    for m in phone.sent().await.unwrap_or_default() {
        let Some(callback) = m["status_callback"].as_str() else {
            continue;
        };
        let query = callback.split_once('?').map_or("", |(_, q)| q);
        let query = query.split_once('#').map_or(query, |(q, _)| q);
        let fields = waconnect_shared::twilio::form::decode(query.as_bytes()).unwrap_or_default();
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let (Some(item), part) = (field("item"), field("part")) else {
            continue;
        };
        let taken = m["callbacks"].as_array().into_iter().flatten().any(|c| {
            c["status"] == "read" && (200..300).contains(&c["answered"].as_u64().unwrap_or(0))
        });
        if taken && part.is_none_or(|p| p == "0") {
            expected.insert(item);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut read = std::collections::BTreeSet::new();
        for contact in contacts.values() {
            let receipts = desk.customer_receipts(contact).await.unwrap_or_default();
            read.extend(
                receipts
                    .into_iter()
                    .filter(|(_, (_, r))| *r)
                    .map(|(id, _)| id),
            );
        }
        let lost: Vec<&String> = expected.difference(&read).collect();
        if lost.is_empty() || Instant::now() > deadline {
            if !lost.is_empty() {
                println!(
                    "chaos: read receipts taken by ingress but not shown to the agent: {lost:?}"
                );
            }
            return (expected.len(), lost.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What customer `c`'s phone shows that WhatsApp delivered (failed copies left out).
async fn delivered(phone: &PhoneClient, c: usize) -> Vec<String> {
    phone
        .inbox(customer(c).as_str())
        .await
        .unwrap_or_default()
        .iter()
        .filter(|m| m.status != "failed" && m.status != "undelivered")
        .map(shown)
        .collect()
}

/// A message on the phone as the checker labels it: a text as written; a file as `file:`
/// and its label, read from the name the agent gave it (`c1-a7.pdf` is `c1 a7`).
fn shown(m: &InboxMessage) -> String {
    if m.media_urls.is_empty() {
        return m.body.clone();
    }
    let name = m
        .files
        .first()
        .and_then(|f| f.filename())
        .map(|n| n.trim_end_matches(".pdf").replace('-', " "));
    match name {
        Some(label) => format!("file:{label}"),
        // Twilio has not fetched it (yet): the phone does not have it.
        None => format!("file never fetched ({})", m.sid),
    }
}

/// How the relay's note before a caught-up message begins.
const LATE_NOTE: &str = "[waconnect notice - not from the customer] The customer sent this at ";

/// The customer's side of a chat as the agent reads it, labelled like what was written: a
/// text as is; a file as `file:` and the label inside it.
async fn customer_items(desk: &DeskClient, contact: &str) -> Vec<String> {
    let mut items = Vec::new();
    for item in customer_side(desk, contact).await {
        match item.kind.as_str() {
            // The catch-up's word that a message comes late is the bridge's, not the
            // customer's.
            "MESSAGE" => items.extend(item.content.filter(|c| !c.starts_with(LATE_NOTE))),
            "ATTACHMENT" => {
                for a in &item.attachments {
                    let label = match desk.attachment(&a.attachment_id).await {
                        Ok((_, bytes)) => label_in(&bytes),
                        Err(_) => None,
                    };
                    items.push(format!(
                        "file:{}",
                        label.unwrap_or_else(|| format!("unreadable {}", a.attachment_name))
                    ));
                }
            }
            _ => {}
        }
    }
    items
}

/// WhatsApp takes one message a second for 1–3 s: the rest fail with 63018 in their
/// status callbacks, after Twilio took them. Clears Twilio's faults at the end.
async fn refuse_over_rate(phone: &PhoneClient, rng: &mut StdRng) {
    let _ = phone.limit_rate(1).await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
    let _ = phone.clear_faults().await;
}

/// The customer's texts and attachments in a chat, in order.
async fn customer_side(desk: &DeskClient, contact: &str) -> Vec<Item> {
    desk.transcript(contact)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.participant_role.as_deref() == Some("CUSTOMER"))
        .filter(|i| i.kind == "MESSAGE" || i.kind == "ATTACHMENT")
        .collect()
}

/// Lost and duplicated messages of `got` against `sent` (one never sent counts as a
/// duplicate: it came from nowhere).
fn compare(sent: &[String], got: &[String]) -> (usize, usize) {
    let count = |list: &[String], x: &String| list.iter().filter(|y| *y == x).count();
    let lost = sent.iter().filter(|x| count(got, x) == 0).count();
    let dup = sent
        .iter()
        .map(|x| count(got, x).saturating_sub(1))
        .sum::<usize>()
        + got.iter().filter(|x| count(sent, x) == 0).count();
    (lost, dup)
}

/// Of the messages `sent` that did not arrive, how many were sent after the last that did:
/// with nothing missing before them, a tail that may still have been on its way when the
/// checker stopped waiting (the moto runs' limit), rather than a hole.
fn missing_at_the_end(sent: &[String], got: &[String]) -> usize {
    let last = sent.iter().rposition(|x| got.contains(x));
    sent[last.map_or(0, |l| l + 1)..]
        .iter()
        .filter(|x| !got.contains(x))
        .count()
}

/// Arrivals before an earlier-sent message, split into those with no explanation and
/// those of messages WhatsApp refused once (63018, `refused`) and that were sent again.
fn disorder(sent: &[String], got: &[String], refused: &[String]) -> (usize, usize) {
    let order: Vec<(usize, &String)> = got
        .iter()
        .filter_map(|x| sent.iter().position(|y| y == x).map(|p| (p, x)))
        .collect();
    let mut plain = 0;
    let mut explained = 0;
    for w in order.windows(2) {
        if w[1].0 < w[0].0 {
            if refused.contains(w[1].1) {
                explained += 1;
            } else {
                plain += 1;
            }
        }
    }
    (plain, explained)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_counts_loss_doubling_and_disorder() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let sent = s(&["a", "b", "c", "d"]);
        assert_eq!(compare(&sent, &s(&["a", "b", "c", "d"])), (0, 0));
        assert_eq!(compare(&sent, &s(&["a", "c", "d"])), (1, 0));
        assert_eq!(compare(&sent, &s(&["a", "b", "b", "c", "d", "x"])), (0, 2));
        assert_eq!(disorder(&sent, &s(&["a", "b", "c", "d"]), &[]), (0, 0));
        assert_eq!(
            disorder(&sent, &s(&["a", "c", "b", "d"]), &s(&["b"])),
            (0, 1)
        );
        assert_eq!(disorder(&sent, &s(&["a", "c", "b", "d"]), &[]), (1, 0));
        assert_eq!(missing_at_the_end(&sent, &s(&["a", "b"])), 2);
        assert_eq!(missing_at_the_end(&sent, &s(&["a", "c"])), 1);
        assert_eq!(missing_at_the_end(&sent, &s(&[])), 4);
        assert_eq!(missing_at_the_end(&sent, &sent), 0);
    }
}
