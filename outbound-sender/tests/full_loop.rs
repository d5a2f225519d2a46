//! The full loop over real processes (`waconnect_tests::full_loop`), with receipts back to
//! the agent, for 50 customers at once — and the sender SIGKILLed mid-run.

mod common;

use std::path::PathBuf;
use std::time::Duration;
use waconnect_sim::twilio::TwilioOptions;
use waconnect_tests::full_loop::{FullLoop as Loop, LoopOptions};
use waconnect_tests::processes::{freeze, spawn, thaw};
use waconnect_tests::{customer, free_port, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_customers_round_trip_with_receipts_through_a_sender_crash() {
    const CUSTOMERS: usize = 50;
    const EACH: usize = 4;
    let mut lp = Loop::start(LoopOptions {
        twilio: TwilioOptions {
            auto_read: false,
            ..TwilioOptions::default()
        },
        ..LoopOptions::default()
    })
    .await;
    let contacts = lp.customers_write_and_agents_accept(CUSTOMERS, EACH).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    // Agents reply; the sender dies partway through.
    let replies = contacts.iter().enumerate().map(|(c, contact)| {
        let (desk, contact) = (desk.clone(), contact.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for m in 0..EACH {
                ids.push(
                    desk.send(&contact, &format!("agent to c{c}: {m}"))
                        .await
                        .unwrap()
                        .id,
                );
            }
            ids
        })
    });
    let mut reply_ids = Vec::new();
    for r in replies.collect::<Vec<_>>() {
        reply_ids.push(r.await.unwrap());
    }
    wait::until("sending under way", Duration::from_secs(30), || async {
        (phone.sent().await.ok()?.len() >= CUSTOMERS * EACH / 4).then_some(())
    })
    .await;
    lp.sender.start_kill().unwrap();
    lp.sender.wait().await.unwrap();
    lp.sender = spawn("outbound-sender", &lp.sender_vars);

    for c in 0..CUSTOMERS {
        let number = customer(c);
        let expected: Vec<String> = (0..EACH).map(|m| format!("agent to c{c}: {m}")).collect();
        wait::until(
            "every reply on the phone, once, in order",
            Duration::from_secs(60),
            || async {
                let inbox = phone.inbox(number.as_str()).await.ok()?;
                let bodies: Vec<String> = inbox.iter().map(|m| m.body.clone()).collect();
                assert!(expected.starts_with(&bodies), "customer {c}: {bodies:?}");
                let delivered = inbox.iter().all(|m| m.status == "delivered");
                (bodies == expected && delivered).then_some(())
            },
        )
        .await;
        phone.read_all(number.as_str()).await.unwrap();
    }
    // The customers read everything: every agent message gets its read receipt in Connect.
    for (c, contact) in contacts.iter().enumerate() {
        wait::until(
            "read receipts for the agent",
            Duration::from_secs(60),
            || async {
                let receipts = desk.customer_receipts(contact).await.ok()?;
                let read = |id: &String| receipts.get(id).is_some_and(|(_, read)| *read);
                reply_ids[c].iter().all(read).then_some(())
            },
        )
        .await;
    }
    // Every service's /metrics after real traffic: the names the dashboards and alerts
    // use must be there, and `tests/run` checks the files with promtool.
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/metrics");
    std::fs::create_dir_all(&out).unwrap();
    let http = reqwest::Client::new();
    for (service, ops, expected) in [
        (
            "ingress",
            lp.ingress_port.clone(),
            &[
                "waconnect_ingress_requests_total",
                "waconnect_queue_messages",
            ][..],
        ),
        (
            "relay-worker",
            lp.relay_ops.clone(),
            &[
                "waconnect_relay_conversations_held",
                "waconnect_connect_call_duration_seconds_bucket",
                "waconnect_queue_message_age_seconds_bucket",
                "waconnect_queue_oldest_message_age_seconds",
            ][..],
        ),
        (
            "outbound-sender",
            lp.sender_ops.clone(),
            &[
                "waconnect_sender_sent_total",
                "waconnect_sender_twilio_auth_failing",
                "waconnect_sender_send_duration_seconds_bucket",
            ][..],
        ),
    ] {
        let text = wait::until("the service's metrics", Duration::from_secs(10), || async {
            let text = http
                .get(format!("http://{ops}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            expected
                .iter()
                .all(|name| text.contains(name))
                .then_some(text)
        })
        .await;
        std::fs::write(out.join(format!("{service}.prom")), text).unwrap();
    }
}

/// WhatsApp's sender limit reached the asynchronous way Twilio reports it: Twilio takes
/// every send (201), then fails those over the rate with 63018 in their status callbacks.
/// Each is sent again until it lands, before the customer's next reply; every reply
/// reaches the phone once and in order, the agent is told of no failure, and nothing is
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_refused_over_whatsapps_rate_are_sent_again_in_order_until_they_land() {
    const CUSTOMERS: usize = 3;
    const EACH: usize = 6;
    let lp = Loop::start(LoopOptions {
        twilio: TwilioOptions {
            sender_rate: 4,
            ..TwilioOptions::default()
        },
        // Faster than the sender may go: the overflow fails at WhatsApp, asynchronously.
        sender_vars: vec![("WACONNECT_SENDER_RATE", "100".into())],
        ..LoopOptions::default()
    })
    .await;
    let contacts = lp.customers_write_and_agents_accept(CUSTOMERS, 1).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    for (c, contact) in contacts.iter().enumerate() {
        for m in 0..EACH {
            desk.send(contact, &format!("agent to c{c}: {m}"))
                .await
                .unwrap();
        }
    }
    for c in 0..CUSTOMERS {
        let expected: Vec<String> = (0..EACH).map(|m| format!("agent to c{c}: {m}")).collect();
        let delivered = wait::until("every reply delivered", Duration::from_secs(60), || async {
            let inbox = phone.inbox(customer(c).as_str()).await.ok()?;
            let delivered: Vec<String> = inbox
                .iter()
                .filter(|m| m.status != "failed")
                .map(|m| m.body.clone())
                .collect();
            (delivered.len() >= expected.len()).then_some(delivered)
        })
        .await;
        assert_eq!(
            delivered, expected,
            "customer {c}: lost, doubled or out of order"
        );
    }
    refused_over_the_rate_and_the_agent_told_nothing(&phone, &desk, &contacts).await;
}

/// The name of the file the phone received with `m`.
fn received_name(m: &waconnect_sim::twilio::InboxMessage) -> Option<String> {
    m.files.first()?.filename().map(str::to_owned)
}

/// An agent's file refused over WhatsApp's rate (63018, in the status callback) after the
/// sender stopped watching it (`WACONNECT_SENDER_CONFIRM_WAIT=0`), so the relay's re-send
/// from the status callback is what sends it again: the file itself goes again, not an
/// empty message, and every file reaches the phone once. (Without the confirm wait a
/// re-send lands after later replies; keeping order is that wait's job, tested above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_file_refused_over_the_rate_is_sent_again_with_its_file() {
    const CUSTOMERS: usize = 2;
    const EACH: usize = 4;
    let lp = Loop::start(LoopOptions {
        twilio: TwilioOptions {
            sender_rate: 2,
            ..TwilioOptions::default()
        },
        sender_vars: vec![
            ("WACONNECT_SENDER_RATE", "100".into()),
            ("WACONNECT_SENDER_CONFIRM_WAIT", "0s".into()),
        ],
        ..LoopOptions::default()
    })
    .await;
    let contacts = lp.customers_write_and_agents_accept(CUSTOMERS, 1).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let pdf =
        |name: &str| format!("%PDF-1.4\n%{name}\ntrailer<</Root 1 0 R>>\n%%EOF\n").into_bytes();
    for (c, contact) in contacts.iter().enumerate() {
        for m in 0..EACH {
            let name = format!("c{c}-{m}.pdf");
            desk.send_file(contact, &name, "application/pdf", pdf(&name), "APPROVED")
                .await
                .unwrap();
        }
    }
    for c in 0..CUSTOMERS {
        let expected: Vec<String> = (0..EACH).map(|m| format!("c{c}-{m}.pdf")).collect();
        // Every message settled (none still with Twilio), or what the phone has at the end.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let inbox = loop {
            let inbox = phone.inbox(customer(c).as_str()).await.unwrap_or_default();
            let settled = inbox
                .iter()
                .all(|m| !matches!(m.status.as_str(), "queued" | "accepted" | "sending"));
            let landed = inbox.iter().filter(|m| m.status != "failed").count();
            if (settled && landed >= EACH) || tokio::time::Instant::now() >= deadline {
                break inbox;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mut delivered: Vec<String> = inbox
            .iter()
            .filter(|m| m.status != "failed")
            .map(|m| received_name(m).unwrap_or_else(|| format!("text {:?}", m.body)))
            .collect();
        delivered.sort();
        let shown: Vec<String> = inbox
            .iter()
            .map(|m| format!("{} {:?} {:?}", m.status, m.error_code, received_name(m)))
            .collect();
        assert_eq!(
            delivered, expected,
            "customer {c}: lost, doubled or sent without its file: {shown:?}"
        );
    }
    refused_over_the_rate_and_the_agent_told_nothing(&phone, &desk, &contacts).await;
}

/// Some sends went over WhatsApp's rate (else the test proves nothing), and no agent was
/// told of a failure: every refusal was sent again.
async fn refused_over_the_rate_and_the_agent_told_nothing(
    phone: &waconnect_sim::twilio::PhoneClient,
    desk: &waconnect_sim::connect::DeskClient,
    contacts: &[String],
) {
    let refused = phone
        .sent()
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m["error_code"] == 63018)
        .count();
    assert!(
        refused > 0,
        "nothing went over the rate: the test proves nothing"
    );
    for contact in contacts {
        let texts = desk.customer_texts(contact).await.unwrap();
        assert!(
            texts.iter().all(|t| !t.contains("waconnect notice")),
            "the agent was told of a failure: {texts:?}"
        );
    }
}

/// The agent's notice about `code`, once it is in the chat.
async fn notice_about(
    desk: &waconnect_sim::connect::DeskClient,
    contact: &str,
    code: &str,
) -> Vec<String> {
    wait::until("the agent's notice", Duration::from_secs(30), || async {
        let texts = desk.customer_texts(contact).await.ok()?;
        let notices: Vec<String> = texts
            .into_iter()
            .filter(|t| t.contains("waconnect notice"))
            .collect();
        notices.iter().any(|t| t.contains(code)).then_some(notices)
    })
    .await
}

/// Twilio refuses a reply at once (the customer opted out: 21610, HTTP 400). The sender
/// dead-letters it and tells the relay through the inbound queue, which must carry all a
/// status callback would: the agent reads one notice naming the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_twilio_refuses_at_once_reaches_the_agent_as_a_notice() {
    let lp = Loop::start(LoopOptions::default()).await;
    let contacts = lp.customers_write_and_agents_accept(1, 1).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    phone.opt_out(customer(0).as_str()).await.unwrap();
    desk.send(&contacts[0], "are you still there?")
        .await
        .unwrap();
    let notices = notice_about(&desk, &contacts[0], "21610").await;
    assert_eq!(notices.len(), 1, "{notices:?}");
}

/// A reply WhatsApp refuses after Twilio took it (63016: the customer's 24-hour window
/// closed) reaches the agent as one notice, whether its status callback comes or not:
/// callbacks are best effort, and the sender, which sees the failure while it confirms the
/// part, tells the relay too.
async fn agent_told_once_of_a_refusal_after_twilio_took_it(callbacks_lost: bool) {
    let mut options = LoopOptions::default();
    if callbacks_lost {
        // Where nothing listens: every callback is lost.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nowhere = format!("http://{}/twilio/status", l.local_addr().unwrap());
        options.sender_vars = vec![("WACONNECT_STATUS_CALLBACK_URL", nowhere)];
    }
    let lp = Loop::start(options).await;
    let contacts = lp.customers_write_and_agents_accept(1, 1).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    phone.advance_clock(25 * 3600).await.unwrap();
    desk.send(&contacts[0], "sorry for the wait").await.unwrap();
    let notices = notice_about(&desk, &contacts[0], "63016").await;
    assert!(
        phone
            .inbox(customer(0).as_str())
            .await
            .unwrap()
            .iter()
            .any(|m| m.error_code == Some(63016)),
        "WhatsApp did not refuse it: the test proves nothing"
    );
    if !callbacks_lost {
        both_accounts_handled(&lp, &contacts[0]).await;
    }
    let texts = desk.customer_texts(&contacts[0]).await.unwrap();
    let told: Vec<&String> = texts
        .iter()
        .filter(|t| t.contains("waconnect notice"))
        .collect();
    assert_eq!(told.len(), 1, "{notices:?} then {told:?}");
}

/// The customer writes back and reads the agent's next reply. Its read receipt comes after
/// both accounts of the failure (statuses keep their order in the inbound queue), so once
/// the agent has it, a second notice would be in the chat.
async fn both_accounts_handled(lp: &Loop, contact: &str) {
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    phone.text(customer(0).as_str(), "I'm back").await.unwrap();
    wait::until("the customer's text", Duration::from_secs(30), || async {
        let texts = desk.customer_texts(contact).await.ok()?;
        texts.iter().any(|t| t == "I'm back").then_some(())
    })
    .await;
    let next = desk.send(contact, "welcome back").await.unwrap();
    wait::until("the read receipt", Duration::from_secs(30), || async {
        let receipts = desk.customer_receipts(contact).await.ok()?;
        (receipts.get(&next.id) == Some(&(true, true))).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_twilio_took_the_reply_reaches_the_agent_once() {
    agent_told_once_of_a_refusal_after_twilio_took_it(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_whose_status_callback_was_lost_still_reaches_the_agent() {
    agent_told_once_of_a_refusal_after_twilio_took_it(true).await;
}

/// Ingress sits behind a load balancer that turns away the first attempt at every status
/// callback with 503, as one does while ingress restarts, or as ingress does when its
/// queue cannot take the event. Twilio tries again because the callback URL the sender
/// gives it asks for that, so the agent still sees the reply delivered and read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_turned_away_once_still_reach_the_agent() {
    let lp = Loop::start(LoopOptions {
        balancer: true,
        ..LoopOptions::default()
    })
    .await;
    let balancer = lp
        .balancer
        .as_ref()
        .expect("a balancer in front of ingress");
    let contacts = lp.customers_write_and_agents_accept(1, 1).await;
    balancer.turn_away_first_callback_attempts();
    let desk = lp.connect.desk();
    let reply = desk
        .send(&contacts[0], "your order ships today")
        .await
        .unwrap();
    wait::until(
        "the reply delivered and read",
        Duration::from_secs(30),
        || async {
            let receipts = desk.customer_receipts(&contacts[0]).await.ok()?;
            (receipts.get(&reply.id) == Some(&(true, true))).then_some(())
        },
    )
    .await;
    assert!(
        balancer.turned_away() >= 2,
        "the balancer turned away {} callbacks: the test proves nothing",
        balancer.turned_away()
    );
}

/// A sender stalled between claiming a reply and posting it (a frozen VM; here SIGSTOP
/// while it waits to try Twilio again) for longer than its message's visibility: the
/// sender that takes the message over finds the claim too old to be in flight and Twilio
/// without the reply, and sends it. The stalled one, when it wakes, must not post it too:
/// Twilio's Messages API has no idempotency key, so only the ledger can stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_stalled_between_claim_and_post_does_not_send_the_reply_twice() {
    let lp = Loop::start(LoopOptions {
        sender_vars: vec![
            ("WACONNECT_SENDER_VISIBILITY", "2s".into()),
            ("WACONNECT_SENDER_TIMEOUT", "1s".into()),
            ("WACONNECT_SENDER_MAX_BACKOFF", "1s".into()),
        ],
        ..LoopOptions::default()
    })
    .await;
    let contact = lp.customers_write_and_agents_accept(1, 1).await.remove(0);
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let number = customer(0);
    let copies = |body: &'static str| {
        let (phone, number) = (phone.clone(), number.clone());
        async move {
            let inbox = phone.inbox(number.as_str()).await.unwrap_or_default();
            inbox.iter().filter(|m| m.body == body).count()
        }
    };
    desk.send(&contact, "first").await.unwrap();
    wait::until("the first reply", Duration::from_secs(30), || async {
        (copies("first").await == 1).then_some(())
    })
    .await;
    let metrics = format!("http://{}/metrics", lp.sender_ops);
    let decided = || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        let count = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Some(
            count("waconnect_sender_claims_taken_over_total")
                + count("waconnect_queue_stale_deliveries_total{queue=\"outbound\"}"),
        )
    };
    // Three rounds: when the stalled sender wakes, its queue's keeper may stop it before
    // it acts (its delivery was taken over), which hides the double in some rounds.
    for (round, reply) in ["second", "third", "fourth"].into_iter().enumerate() {
        let before = phone.api_calls().await.unwrap();
        // Twilio fails every post for now: the sender holds its claim between tries.
        phone.fail(1000).await.unwrap();
        desk.send(&contact, reply).await.unwrap();
        wait::until(
            "the sender's first try",
            Duration::from_secs(30),
            || async { (phone.api_calls().await.ok()? > before).then_some(()) },
        )
        .await;
        freeze(&lp.sender);
        phone.clear_faults().await.unwrap();
        let mut vars = lp.sender_vars.clone();
        let ops = free_port().await;
        for (k, v) in &mut vars {
            if k == "WACONNECT_SENDER_OPS_BIND" {
                v.clone_from(&ops);
            }
        }
        let mut other = spawn("outbound-sender", &vars);
        wait::until(
            "the other sender's copy",
            Duration::from_secs(30),
            || async { (copies(reply).await >= 1).then_some(()) },
        )
        .await;
        thaw(&lp.sender);
        // The stalled sender leaves the part to the other (or learns first that its
        // delivery was taken over); before the fence it posted it again.
        wait::until(
            "the stalled sender's decision",
            Duration::from_secs(30),
            || async {
                let decisions = decided().await?;
                (decisions > round as u64 || copies(reply).await > 1).then_some(())
            },
        )
        .await;
        assert_eq!(copies(reply).await, 1, "{reply}");
        other.start_kill().unwrap();
        other.wait().await.unwrap();
    }
}
