//! The outbound-sender against the Twilio simulator over loopback, with ingress taking
//! the signed status callbacks.

mod common;

use common::Stack;
use std::collections::BTreeMap;
use std::time::Duration;
use waconnect_shared::message::event::EventKind;
use waconnect_shared::service::config::Synchronous;
use waconnect_shared::storage::queue::NewMessage;
use waconnect_shared::storage::sqlite::{Db, DbError};
use waconnect_sim::twilio::TwilioOptions;
use waconnect_tests::{customer, wait};

fn open_window() -> TwilioOptions {
    TwilioOptions {
        window_always_open: true,
        ..TwilioOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_in_order_per_customer_and_receipts_come_back_signed() {
    let stack = Stack::new(open_window()).await;
    let sender = stack.sender(&[]).await;
    for m in 0..10 {
        for c in 0..5 {
            stack
                .agent_says(
                    &customer(c),
                    &format!("item-{c}-{m}"),
                    &format!("c{c} m{m}"),
                )
                .await;
        }
    }
    let long: String = (0..500).map(|i| format!("w{i} ")).collect();
    stack.agent_says(&customer(9), "item-long", &long).await;
    for c in 0..5 {
        let expected: Vec<String> = (0..10).map(|m| format!("c{c} m{m}")).collect();
        assert_eq!(
            stack
                .inbox_of(&customer(c), 10, Duration::from_secs(20))
                .await,
            expected
        );
    }
    let parts = stack
        .inbox_of(&customer(9), 2, Duration::from_secs(20))
        .await;
    assert_eq!(parts.concat(), long, "split out of order or lossy");
    assert!(parts.iter().all(|p| p.chars().count() <= 1600));
    // delivered and read for each of 52 parts, through ingress's signature check ("sent"
    // is acknowledged there and not queued: nothing acts on it).
    let events = stack.statuses(52 * 2, Duration::from_secs(20)).await;
    let mut by_item: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e.kind, EventKind::Status);
        let item = e
            .query_param("item")
            .expect("the status callback names the item")
            .to_owned();
        assert_eq!(e.query_param("contact"), Some("contact-1"));
        by_item
            .entry(item)
            .or_default()
            .push(e.message_status().unwrap().to_owned());
    }
    assert_eq!(by_item.len(), 51);
    assert!(by_item.values().all(|s| s.contains(&"read".to_owned())));
    sender.shutdown().await;
}

/// Twilio answers 429 to everything for longer than several visibility timeouts and
/// more receives than the dead-letter limit would allow: the sender holds the messages
/// and sends them all, in order, once it lets up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_delays_but_loses_nothing() {
    let stack = Stack::new(open_window()).await;
    stack.phone.storm(60.0).await.unwrap();
    let sender = stack.sender(&[]).await;
    for m in 0..5 {
        for c in 0..3 {
            stack
                .agent_says(&customer(c), &format!("i-{c}-{m}"), &format!("c{c} m{m}"))
                .await;
        }
    }
    wait::until("the storm to be felt", Duration::from_secs(5), || async {
        (stack.phone.api_calls().await.ok()? > 10).then_some(())
    })
    .await;
    assert!(
        stack.phone.sent().await.unwrap().is_empty(),
        "sent through the storm"
    );
    for c in 0..3 {
        let expected: Vec<String> = (0..5).map(|m| format!("c{c} m{m}")).collect();
        assert_eq!(
            stack
                .inbox_of(&customer(c), 5, Duration::from_secs(100))
                .await,
            expected
        );
    }
    assert_eq!(stack.outbound.stats().await.unwrap().dead_letters, 0);
    sender.shutdown().await;
}

#[tokio::test]
async fn permanent_refusals_are_dead_lettered_and_reported_for_the_agent() {
    let stack = Stack::new(open_window()).await;
    let gone = customer(1);
    stack.phone.opt_out(gone.as_str()).await.unwrap();
    let sender = stack.sender(&[]).await;
    stack.agent_says(&gone, "item-x", "are you there?").await;
    stack.agent_says(&customer(2), "item-y", "hello").await;
    let dead = wait::until("the dead letter", Duration::from_secs(10), || async {
        stack
            .outbound
            .dead_letters(10)
            .await
            .ok()?
            .into_iter()
            .next()
    })
    .await;
    assert!(dead.reason.contains("21610"), "{}", dead.reason);
    assert_eq!(
        stack
            .inbox_of(&customer(2), 1, Duration::from_secs(10))
            .await,
        ["hello"]
    );
    // The relay learns of it through the inbound queue, like a failed status callback.
    // item-y's delivered and read, and item-x's failure.
    let events = stack.statuses(3, Duration::from_secs(10)).await;
    let refused = events
        .iter()
        .find(|e| e.query_param("item") == Some("item-x"))
        .expect("a failure notice for the agent");
    assert_eq!(refused.message_status(), Some("failed"));
    assert_eq!(refused.error_code(), Some("21610"));
    sender.shutdown().await;
}

#[tokio::test]
async fn outside_the_24_hour_window_the_failure_arrives_by_status_callback() {
    let stack = Stack::new(TwilioOptions::default()).await;
    let sender = stack.sender(&[]).await;
    stack
        .agent_says(&customer(5), "item-late", "sorry for the wait")
        .await;
    let events = stack.statuses(1, Duration::from_secs(10)).await;
    let failed = events
        .iter()
        .find(|e| e.message_status() == Some("failed"))
        .unwrap();
    assert_eq!(failed.error_code(), Some("63016"));
    assert_eq!(failed.query_param("item"), Some("item-late"));
    sender.shutdown().await;
}

#[tokio::test]
async fn bad_credentials_fail_readiness_and_keep_every_message() {
    let stack = Stack::new(open_window()).await;
    let sender = stack.sender(&[("TWILIO_AUTH_TOKEN", "wrong")]).await;
    for m in 0..3 {
        stack
            .agent_says(&customer(1), &format!("i{m}"), &format!("m{m}"))
            .await;
    }
    let http = reqwest::Client::new();
    let ready = format!("http://{}/readyz", sender.ops);
    let body = wait::until("readiness to fail", Duration::from_secs(10), || async {
        let r = http.get(&ready).send().await.ok()?;
        (r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(r.text().await.ok()?)
    })
    .await;
    assert!(body.contains("credentials"), "{body}");
    let metrics = http
        .get(format!("http://{}/metrics", sender.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("waconnect_sender_twilio_auth_failing 1"),
        "{metrics}"
    );
    let stats = stack.outbound.stats().await.unwrap();
    assert_eq!(
        (stats.visible + stats.in_flight, stats.dead_letters),
        (3, 0)
    );
    sender.shutdown().await;
    // Fixed credentials: everything goes out, in order.
    let fixed = stack.sender(&[]).await;
    assert_eq!(
        stack
            .inbox_of(&customer(1), 3, Duration::from_secs(20))
            .await,
        ["m0", "m1", "m2"]
    );
    fixed.shutdown().await;
}

/// A From that is not the account's WhatsApp sender (63007) is a configuration error:
/// every message is held, nothing dead-lettered, readiness fails; fixed, all go out.
#[tokio::test]
async fn a_misconfigured_sender_holds_every_message_and_fails_readiness() {
    let stack = Stack::new(open_window()).await;
    let sender = stack
        .sender(&[("TWILIO_FROM", "whatsapp:+15550009999")])
        .await;
    for m in 0..3 {
        stack
            .agent_says(&customer(1), &format!("i{m}"), &format!("m{m}"))
            .await;
    }
    let http = reqwest::Client::new();
    let ready = format!("http://{}/readyz", sender.ops);
    let body = wait::until("readiness to fail", Duration::from_secs(10), || async {
        let r = http.get(&ready).send().await.ok()?;
        (r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(r.text().await.ok()?)
    })
    .await;
    assert!(body.contains("sender configuration"), "{body}");
    let stats = stack.outbound.stats().await.unwrap();
    assert_eq!(
        (stats.visible + stats.in_flight, stats.dead_letters),
        (3, 0)
    );
    sender.shutdown().await;
    let fixed = stack.sender(&[]).await;
    assert_eq!(
        stack
            .inbox_of(&customer(1), 3, Duration::from_secs(20))
            .await,
        ["m0", "m1", "m2"]
    );
    fixed.shutdown().await;
}

/// Twilio failing a message again and again (5xx) does not hold a slot for ever: each
/// delivery tries a few times, then hands it back as an attempt; after the last attempt
/// it is dead-lettered and the agent told, and the customer's next message goes out.
#[tokio::test]
async fn passing_failures_give_a_message_up_after_its_attempts() {
    let stack = Stack::new(open_window()).await;
    stack.phone.fail(8).await.unwrap();
    let sender = stack
        .sender(&[
            ("WACONNECT_MAX_ATTEMPTS", "2"),
            ("WACONNECT_SENDER_MAX_BACKOFF", "100ms"),
        ])
        .await;
    stack.agent_says(&customer(1), "item-1", "lost cause").await;
    let dead = wait::until("the dead letter", Duration::from_secs(20), || async {
        stack
            .outbound
            .dead_letters(10)
            .await
            .ok()?
            .into_iter()
            .next()
    })
    .await;
    assert!(dead.reason.contains("2 deliveries"), "{}", dead.reason);
    let events = stack.statuses(1, Duration::from_secs(10)).await;
    let notice = events
        .iter()
        .find(|e| e.query_param("item") == Some("item-1"))
        .expect("the agent is told");
    assert_eq!(notice.message_status(), Some("failed"));
    stack.agent_says(&customer(1), "item-2", "next one").await;
    assert_eq!(
        stack
            .inbox_of(&customer(1), 1, Duration::from_secs(10))
            .await,
        ["next one"]
    );
    sender.shutdown().await;
}

/// A message Twilio keeps refusing for longer than WACONNECT_SENDER_GIVE_UP_AFTER is
/// given up, whatever attempts it has left, and the agent told.
#[tokio::test]
async fn a_message_is_given_up_once_too_old() {
    let stack = Stack::new(open_window()).await;
    stack.phone.storm(30.0).await.unwrap();
    let sender = stack
        .sender(&[
            ("WACONNECT_SENDER_GIVE_UP_AFTER", "1s"),
            ("WACONNECT_SENDER_MAX_BACKOFF", "200ms"),
        ])
        .await;
    stack.agent_says(&customer(1), "item-old", "too late").await;
    let dead = wait::until("the dead letter", Duration::from_secs(20), || async {
        stack
            .outbound
            .dead_letters(10)
            .await
            .ok()?
            .into_iter()
            .next()
    })
    .await;
    assert!(
        dead.reason.contains("not taken by Twilio within"),
        "{}",
        dead.reason
    );
    assert!(dead.reason.contains("20429"), "{}", dead.reason);
    sender.shutdown().await;
}

/// SIGKILL the sender mid-run; a new one finishes. The ledger, reconciled against
/// Twilio, keeps anything from going out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sender_loses_and_doubles_nothing() {
    let stack = Stack::new(open_window()).await;
    stack.phone.delay(5).await.unwrap();
    const CUSTOMERS: usize = 20;
    const EACH: usize = 20;
    for m in 0..EACH {
        for c in 0..CUSTOMERS {
            stack
                .agent_says(&customer(c), &format!("k-{c}-{m}"), &format!("c{c} m{m}"))
                .await;
        }
    }
    let mut first = stack.sender_process(&[]);
    wait::until("sending under way", Duration::from_secs(20), || async {
        (stack.phone.sent().await.ok()?.len() >= CUSTOMERS * EACH / 3).then_some(())
    })
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let at_kill = stack.phone.sent().await.unwrap().len();
    assert!(at_kill < CUSTOMERS * EACH, "finished before the kill");
    let mut second = stack.sender_process(&[]);
    for c in 0..CUSTOMERS {
        let expected: Vec<String> = (0..EACH).map(|m| format!("c{c} m{m}")).collect();
        assert_eq!(
            stack
                .inbox_of(&customer(c), EACH, Duration::from_secs(60))
                .await,
            expected,
            "customer {c}"
        );
    }
    second.start_kill().unwrap();
    eprintln!("killed after {at_kill} of {} sends", CUSTOMERS * EACH);
}

/// Three senders for one WhatsApp number keep, together, to the number's rate: each takes
/// a third of WACONNECT_SENDER_RATE once the roster has them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_senders_keep_together_to_the_numbers_rate() {
    const RATE: usize = 12;
    const MESSAGES: usize = 72;
    let stack = Stack::new(TwilioOptions {
        sender_rate: RATE as u32,
        ..open_window()
    })
    .await;
    let rate = RATE.to_string();
    // Processes of their own, as a fleet runs: each with its own metrics.
    let mut senders = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let port = waconnect_tests::free_port().await;
        senders.push(stack.sender_process(&[
            ("WACONNECT_SENDER_RATE", &rate),
            ("WACONNECT_SENDER_OPS_BIND", &port),
        ]));
        ports.push(port);
    }
    let http = reqwest::Client::new();
    for port in &ports {
        let url = format!("http://{port}/metrics");
        wait::until(
            "every sender to see the fleet",
            Duration::from_secs(15),
            || async {
                let text = http.get(&url).send().await.ok()?.text().await.ok()?;
                text.contains("waconnect_sender_fleet_size 3").then_some(())
            },
        )
        .await;
    }
    let started = std::time::Instant::now();
    for m in 0..MESSAGES {
        stack
            .agent_says(&customer(m % 24), &format!("item-{m}"), &format!("m{m}"))
            .await;
    }
    let sent = wait::until("every message sent", Duration::from_secs(60), || async {
        let sent = stack.phone.sent().await.ok()?;
        (sent.len() >= MESSAGES).then_some(sent)
    })
    .await;
    let took = started.elapsed();
    let refused = sent.iter().filter(|m| m["error_code"] == 63018).count();
    assert_eq!(refused, 0, "the fleet went over the number's rate");
    let mut at: Vec<chrono::DateTime<chrono::Utc>> = sent
        .iter()
        .map(|m| m["created_at"].as_str().unwrap().parse().unwrap())
        .collect();
    at.sort();
    let most = (0..at.len())
        .map(|i| {
            at[i..]
                .iter()
                .take_while(|t| **t < at[i] + chrono::Duration::seconds(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(most <= RATE, "{most} sends in one second");
    println!(
        "fleet rate: 3 senders, {MESSAGES} messages in {:.1} s ({:.1}/s), at most {most} in any second, limit {RATE}/s",
        took.as_secs_f64(),
        MESSAGES as f64 / took.as_secs_f64()
    );
    for mut s in senders {
        s.start_kill().unwrap();
        s.wait().await.unwrap();
    }
}

/// Sends whose answer is lost are looked up at Twilio before any second send. An agent
/// who writes "ok" twice gets both to the phone (the first "ok" at Twilio is the first
/// message's, not proof of the second), and a template — whose text Twilio renders, so
/// no body to compare — goes out once.
#[tokio::test]
async fn lost_answers_are_reconciled_without_losing_or_doubling() {
    let stack = Stack::new(open_window()).await;
    let sender = stack.sender(&[("WACONNECT_SENDER_TIMEOUT", "300ms")]).await;
    let ana = customer(1);
    stack.agent_says(&ana, "item-1", "ok").await;
    assert_eq!(
        stack.inbox_of(&ana, 1, Duration::from_secs(10)).await,
        ["ok"]
    );
    // The next send never reaches Twilio, and the sender cannot know.
    stack.phone.hang(1).await.unwrap();
    stack.agent_says(&ana, "item-2", "ok").await;
    assert_eq!(
        stack.inbox_of(&ana, 2, Duration::from_secs(10)).await,
        ["ok", "ok"]
    );
    // A template reaches Twilio, but its answer comes too late.
    stack.phone.delay(800).await.unwrap();
    let template = waconnect_shared::message::outbound::OutboundMessage {
        to: ana.clone(),
        from: Some(waconnect_tests::business()),
        body: String::new(),
        media_urls: Vec::new(),
        files: Vec::new(),
        template: Some(waconnect_shared::message::outbound::Template {
            content_sid: "HX0123456789abcdef0123456789abcdef".into(),
            variables: None,
        }),
        menu: None,
        origin: waconnect_shared::message::outbound::Origin::Bridge {
            reason: "window".into(),
            id: "window-1".into(),
        },
        created_at: chrono::Utc::now(),
        resend: None,
    };
    stack
        .outbound
        .send(waconnect_shared::storage::queue::NewMessage {
            group_id: template.key().storage(),
            dedup_id: template.dedup_id(),
            body: template.to_json(),
        })
        .await
        .unwrap();
    let inbox = stack.inbox_of(&ana, 3, Duration::from_secs(10)).await;
    assert!(inbox[2].starts_with("Template HX"), "{inbox:?}");
    stack.phone.delay(0).await.unwrap();
    // Nothing more comes: the template was not sent twice.
    stack.agent_says(&ana, "item-3", "done").await;
    assert_eq!(
        stack.inbox_of(&ana, 4, Duration::from_secs(10)).await[3],
        "done"
    );
    sender.shutdown().await;
}

/// A message delivered again while its first delivery's send is still on its way to
/// Twilio (SQS hands a message out twice now and then): Twilio does not list that send
/// yet, so asking it proves nothing. The second delivery waits for the first's outcome in
/// the ledger instead of sending again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_delivery_waits_for_a_send_still_on_its_way() {
    let stack = Stack::new(open_window()).await;
    // A request takes a second to reach Twilio, as over a slow network.
    stack.phone.lag(1000).await.unwrap();
    let sender = stack.sender(&[]).await;
    let ana = customer(1);
    stack.agent_says(&ana, "item-1", "once").await;
    let db = Db::open_path(&stack.db_path(), Synchronous::Normal)
        .await
        .unwrap();
    wait::until(
        "the first delivery's claim",
        Duration::from_secs(10),
        || async {
            let claimed: i64 = db
                .read(|c| {
                    c.query_row(
                        "SELECT count(*) FROM deliveries WHERE key = 'item-1#0' AND sid IS NULL",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(DbError::from)
                })
                .await
                .ok()?;
            (claimed == 1).then_some(())
        },
    )
    .await;
    // The same message again, beside the first rather than behind it: a second delivery
    // while the first still works.
    stack
        .outbound
        .send(NewMessage {
            group_id: "another-group".into(),
            dedup_id: "item-1-again".into(),
            body: common::agent_message(&ana, "item-1", "once").to_json(),
        })
        .await
        .unwrap();
    wait::until(
        "both deliveries to end",
        Duration::from_secs(20),
        || async {
            let stats = stack.outbound.stats().await.ok()?;
            (stats.visible + stats.in_flight + stats.delayed == 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        stack.inbox_of(&ana, 1, Duration::from_secs(10)).await,
        ["once"]
    );
    sender.shutdown().await;
}

/// A part posted to Twilio whose answer never came back, and whose claim another delivery
/// then took over (renewed) and left before asking Twilio — stopped as its visibility
/// lapsed, or frozen: the claim's time is now later than the post. The next delivery must
/// still find the post at Twilio rather than send the part again. (The chaos run on moto
/// doubled a reply this way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_taken_over_and_left_still_finds_the_first_post_at_twilio() {
    use waconnect_shared::storage::delivery::sqlite::SqliteLedger;
    use waconnect_shared::storage::delivery::{Claim, DeliveryLedger};
    let stack = Stack::new(open_window()).await;
    let ana = customer(1);
    let message = common::agent_message(&ana, "item-1", "posted once");
    let db = Db::open_path(&stack.db_path(), Synchronous::Normal)
        .await
        .unwrap();
    let ledger = SqliteLedger::open(db).await.unwrap();
    // The first delivery claimed the part and posted it; its answer was lost.
    let Ok(Claim::Fresh { since }) = ledger.claim("item-1#0").await else {
        panic!("a fresh claim");
    };
    let o = stack.twilio.options().clone();
    let posted = reqwest::Client::new()
        .post(format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            stack.twilio.api_base(),
            o.account_sid
        ))
        .basic_auth(&o.account_sid, Some(&o.auth_token))
        .form(&[
            ("To", ana.as_str()),
            ("From", o.sender.as_str()),
            ("Body", "posted once"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    // Time passes (Twilio's dates are to the second, and reconciling allows clocks 2 s),
    // then a second delivery takes the claim over and stops before asking Twilio.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    ledger.renew("item-1#0", since).await.unwrap().unwrap();

    let sender = stack.sender(&[("WACONNECT_SENDER_TIMEOUT", "300ms")]).await;
    stack
        .outbound
        .send(NewMessage {
            group_id: message.key().storage(),
            dedup_id: "item-1".into(),
            body: message.to_json(),
        })
        .await
        .unwrap();
    wait::until("the delivery to end", Duration::from_secs(20), || async {
        let stats = stack.outbound.stats().await.ok()?;
        (stats.visible + stats.in_flight + stats.delayed == 0).then_some(())
    })
    .await;
    assert_eq!(
        stack.inbox_of(&ana, 1, Duration::from_secs(5)).await,
        ["posted once"]
    );
    sender.shutdown().await;
}
