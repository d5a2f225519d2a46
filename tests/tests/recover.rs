//! Messages Twilio took while ingress could not (its webhooks given up on) over the full
//! loop of real processes: the relay's catch-up queues them a moment later, and
//! `waconnect recover` does over a range it is given. Each reaches the agent once, text and
//! file alike, with a note of when it was sent; what the relay handled is left, and doing
//! it again changes nothing.

use std::time::Duration;
use waconnect_shared::service::config::{CommonConfig, ConfigSource};
use waconnect_shared::storage::backend::Backend;
use waconnect_shared::storage::delivery::Claim;
use waconnect_sim::connect::DeskClient;
use waconnect_sim::twilio::{CustomerMessage, PhoneClient};
use waconnect_tests::full_loop::{FullLoop, LoopOptions};
use waconnect_tests::processes::{binary, spawn};
use waconnect_tests::{customer, free_port, wait};

/// A text the phone sends; its SID and what Twilio's webhook got (0: no answer).
async fn text(phone: &PhoneClient, body: &str) -> (String, u16) {
    phone
        .send(&CustomerMessage {
            from: customer(0).as_str().to_owned(),
            body: body.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Twilio's webhooks find nobody: it gives up on them, as on an ingress down for longer
/// than its tries last.
async fn webhooks_find_nobody(phone: &PhoneClient) {
    phone
        .set_webhook(&format!(
            "http://{}/twilio/messages#rc=2&rp=ct",
            free_port().await
        ))
        .await
        .unwrap();
}

async fn recover(lp: &FullLoop) -> Vec<serde_json::Value> {
    recover_with(lp, &[]).await
}

async fn command(lp: &FullLoop, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(binary("waconnect"))
        .arg("recover")
        .args(args)
        .envs(lp.relay_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .unwrap()
}

async fn recover_with(lp: &FullLoop, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["--since", "10m", "--json"];
    args.extend(extra);
    let out = command(lp, &args).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn outcome_of<'a>(rows: &'a [serde_json::Value], sid: &str) -> &'a str {
    rows.iter()
        .find(|r| r["message_sid"] == sid)
        .and_then(|r| r["outcome"].as_str())
        .unwrap_or("(not listed)")
}

async fn messages_twilio_took_while_ingress_was_away_reach_the_agent_once(aws: bool) {
    // The loop's relay runs without the catch-up: the command is what is tested here.
    let lp = FullLoop::start(LoopOptions {
        aws,
        ..Default::default()
    })
    .await;
    let contact = lp.customers_write_and_agents_accept(1, 1).await.remove(0);
    let phone = lp.twilio.phone();
    let desk = lp.connect.desk();
    let webhook = lp
        .twilio
        .options()
        .webhook_url
        .clone()
        .expect("the loop sets Twilio's webhook");

    webhooks_find_nobody(&phone).await;
    let (lost_text, status) = text(&phone, "did my refund go through?").await;
    assert_eq!(status, 0, "nobody should have answered the webhook");
    let (lost_file, status) = phone
        .send_file(
            customer(0).as_str(),
            b"%PDF-1.4 the receipt".to_vec(),
            "application/pdf",
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 0);
    phone.set_webhook(&webhook).await.unwrap();
    let (after, status) = text(&phone, "hello?").await;
    assert_eq!(status, 200);
    wait::until("the message after", Duration::from_secs(30), || async {
        let texts = desk.customer_texts(&contact).await.ok()?;
        texts.iter().any(|t| t == "hello?").then_some(())
    })
    .await;

    // Further back than the ledger remembers what the relay handled, it refuses.
    let out = command(&lp, &["--since", "8d"]).await;
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("WACONNECT_RETENTION_LEDGER"), "{said}");

    // The relay records what it handled just after: once it has, a dry run tells.
    let rows = wait::until(
        "the message after to be recorded",
        Duration::from_secs(10),
        || async {
            let rows = recover_with(&lp, &["--dry-run"]).await;
            (outcome_of(&rows, &after) == "handled").then_some(rows)
        },
    )
    .await;
    assert_eq!(outcome_of(&rows, &lost_text), "would_queue", "{rows:#?}");
    assert_eq!(outcome_of(&rows, &lost_file), "would_queue", "{rows:#?}");
    let rows = recover(&lp).await;
    // SQS does not say whether it held a message already.
    let queued = if aws { "offered" } else { "queued" };
    assert_eq!(outcome_of(&rows, &lost_text), queued, "{rows:#?}");
    assert_eq!(outcome_of(&rows, &lost_file), queued, "{rows:#?}");
    assert_eq!(outcome_of(&rows, &after), "handled", "{rows:#?}");
    assert!(
        rows.iter().all(|r| r["message_sid"] == lost_text.as_str()
            || r["message_sid"] == lost_file.as_str()
            || r["outcome"] != queued),
        "only the lost messages are queued again: {rows:#?}"
    );
    // Nothing in clear: the numbers are masked.
    let printed = serde_json::to_string(&rows).unwrap();
    assert!(!printed.contains(customer(0).e164()), "{printed}");

    // Each recovered message after what came through meanwhile, in the order the customer
    // sent them, and each told as late before anything of it.
    let late = "[waconnect notice - not from the customer] The customer sent this at ";
    let shown = || async {
        desk.transcript(&contact)
            .await
            .unwrap()
            .into_iter()
            .filter(|i| i.participant_role.as_deref() == Some("CUSTOMER"))
            .filter_map(|i| match i.kind.as_str() {
                "ATTACHMENT" => Some("file".to_owned()),
                "MESSAGE" => i.content.filter(|c| !c.starts_with("c0 says")).map(|c| {
                    if c.starts_with(late) {
                        "late".to_owned()
                    } else {
                        c
                    }
                }),
                _ => None,
            })
            .collect::<Vec<String>>()
    };
    let order = wait::until(
        "the recovered messages",
        Duration::from_secs(30),
        || async { Some(shown().await).filter(|o| o.len() >= 5) },
    )
    .await;
    assert_eq!(
        order,
        [
            "hello?",
            "late",
            "did my refund go through?",
            "late",
            "file"
        ],
        "{order:#?}"
    );
    let files = desk.customer_files(&contact).await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].1, b"%PDF-1.4 the receipt");

    // Again: every message is handled now (or, for a moment, still on the queue).
    let again = wait::until(
        "the relay to record what it handled",
        Duration::from_secs(10),
        || async {
            let rows = recover(&lp).await;
            (outcome_of(&rows, &lost_text) == "handled"
                && outcome_of(&rows, &lost_file) == "handled")
                .then_some(rows)
        },
    )
    .await;
    assert!(again.iter().all(|r| r["outcome"] != queued), "{again:#?}");
    assert_eq!(shown().await, order);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_twilio_took_while_ingress_was_away_reach_the_agent_once_embedded() {
    messages_twilio_took_while_ingress_was_away_reach_the_agent_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_twilio_took_while_ingress_was_away_reach_the_agent_once_on_aws() {
    messages_twilio_took_while_ingress_was_away_reach_the_agent_once(true).await;
}

/// The full loop with the catch-up on, over stretches of a second.
async fn with_catch_up(aws: bool) -> FullLoop {
    FullLoop::start(LoopOptions {
        aws,
        relay_vars: vec![
            ("WACONNECT_RELAY_CATCH_UP_EVERY", "1s".into()),
            ("WACONNECT_RELAY_CATCH_UP_AFTER", "1s".into()),
        ],
        ..Default::default()
    })
    .await
}

/// The customer's texts in the agent's chat once the one ingress missed is among them.
async fn missed_message(desk: &DeskClient, contact: &str, within: Duration) -> Vec<String> {
    wait::until("the missed message", within, || async {
        let texts = desk.customer_texts(contact).await.ok()?;
        texts
            .iter()
            .any(|t| t == "is anyone there?")
            .then_some(texts)
    })
    .await
}

/// The catch-up, on: a message whose webhook Twilio gave up on reaches the agent without
/// anyone's word, once, told as late; the messages around it that came through stay as
/// they were.
async fn the_catch_up_queues_what_ingress_missed(aws: bool) {
    let lp = with_catch_up(aws).await;
    let contact = lp.customers_write_and_agents_accept(1, 1).await.remove(0);
    let phone = lp.twilio.phone();
    let desk = lp.connect.desk();
    let webhook = lp.twilio.options().webhook_url.clone().unwrap();
    webhooks_find_nobody(&phone).await;
    let (_, status) = text(&phone, "is anyone there?").await;
    assert_eq!(status, 0);
    phone.set_webhook(&webhook).await.unwrap();
    let (_, status) = text(&phone, "hello?").await;
    assert_eq!(status, 200);

    let late = "[waconnect notice - not from the customer] The customer sent this at ";
    let texts = missed_message(&desk, &contact, Duration::from_secs(30)).await;
    let at = texts.iter().position(|t| t == "is anyone there?").unwrap();
    assert!(texts[at - 1].starts_with(late), "{texts:#?}");
    let metrics = wait::until("the catch-up counted", Duration::from_secs(10), || async {
        let m = lp.relay_metrics().await?;
        m.lines()
            .any(|l| l.starts_with("waconnect_relay_recovered_total"))
            .then_some(m)
    })
    .await;
    let queued = if aws { "offered" } else { "queued" };
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("waconnect_relay_recovered_total")
                && l.contains(&format!("outcome=\"{queued}\""))),
        "{metrics}"
    );
    let texts = desk.customer_texts(&contact).await.unwrap();
    assert_eq!(
        texts.iter().filter(|t| *t == "is anyone there?").count(),
        1,
        "{texts:#?}"
    );
    assert_eq!(texts.iter().filter(|t| *t == "hello?").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_catch_up_queues_what_ingress_missed_embedded() {
    the_catch_up_queues_what_ingress_missed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_catch_up_queues_what_ingress_missed_on_aws() {
    the_catch_up_queues_what_ingress_missed(true).await;
}

/// A relay that died while it looked at a stretch leaves a claim nobody can take over for
/// 30 s; a relay that starts after that stretch has fallen out of a few stretches' view
/// must still come back to it, or the message in it is lost for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stretch_left_by_a_relay_that_died_is_looked_at_by_one_that_starts_later() {
    let mut lp = with_catch_up(false).await;
    let contact = lp.customers_write_and_agents_accept(1, 1).await.remove(0);
    let phone = lp.twilio.phone();
    let desk = lp.connect.desk();
    let webhook = lp.twilio.options().webhook_url.clone().unwrap();
    lp.relay.start_kill().unwrap();
    lp.relay.wait().await.unwrap();
    webhooks_find_nobody(&phone).await;
    let before = chrono::Utc::now();
    let (_, status) = text(&phone, "is anyone there?").await;
    assert_eq!(status, 0);
    let after = chrono::Utc::now();
    phone.set_webhook(&webhook).await.unwrap();
    // The stretches the message may fall in, claimed as by a relay that then died.
    let common = CommonConfig::read(&mut ConfigSource::from_pairs(lp.relay_vars.clone()).reader());
    let ledger = Backend::open(&common)
        .await
        .unwrap()
        .ledger()
        .await
        .unwrap();
    for second in before.timestamp()..=after.timestamp() {
        let key = format!("catchup#1000#{}", second * 1000);
        assert!(
            matches!(ledger.claim(&key).await, Ok(Claim::Fresh { .. })),
            "{key}"
        );
    }
    let claimed = std::time::Instant::now();
    // The next relay starts once those stretches are further back than a few short
    // stretches (here, 1 s each) reach: the passing of time is the case itself.
    tokio::time::sleep(Duration::from_secs(12)).await;
    lp.relay = spawn("relay-worker", &lp.relay_vars);
    // Once the claims are stale (30 s), the new relay takes them over.
    let texts = missed_message(&desk, &contact, Duration::from_secs(60)).await;
    // Not before: the claims held (the test names the catch-up's ledger keys right).
    assert!(
        claimed.elapsed() >= Duration::from_secs(29),
        "{:?}",
        claimed.elapsed()
    );
    assert_eq!(
        texts.iter().filter(|t| *t == "is anyone there?").count(),
        1,
        "{texts:#?}"
    );
}
