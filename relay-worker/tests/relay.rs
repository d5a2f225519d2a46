//! The relay end to end over loopback: ingress or the inbound queue in, the Connect
//! simulator in the middle, the outbound queue out.

mod common;

use common::{Stack, bodies};
use reqwest::StatusCode;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waconnect_ingress::config::IngressConfig;
use waconnect_shared::message::conversation::ConversationState;
use waconnect_shared::message::event::{EventKind, InboundEvent};
use waconnect_shared::message::outbound::Origin;
use waconnect_shared::service::config::ConfigSource;
use waconnect_shared::storage::queue::NewMessage;
use waconnect_sim::connect::SimOptions;
use waconnect_tests::{customer, key, key_of, twilio, wait};

const TOKEN: &str = "twilio-auth-token";
const PUBLIC: &str = "https://wa.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_customers_fifty_messages_each_both_ways_in_order() {
    let stack = Stack::new().await;
    let config = IngressConfig::from_source(&ConfigSource::from_pairs([
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("WACONNECT_PUBLIC_BASE_URL", PUBLIC),
        ("WACONNECT_SQLITE_PATH", stack.db_path().to_str().unwrap()),
        ("WACONNECT_SQLITE_SYNCHRONOUS", "normal"),
        ("WACONNECT_INGRESS_BIND", "127.0.0.1:0"),
    ]))
    .unwrap();
    let listener = TcpListener::bind(config.bind).await.unwrap();
    let ingress = format!("http://{}/twilio/messages", listener.local_addr().unwrap());
    let stop_ingress = CancellationToken::new();
    tokio::spawn(waconnect_ingress::run(
        config,
        listener,
        stop_ingress.clone(),
    ));
    let relay = stack.relay(&[]).await;

    const CUSTOMERS: usize = 20;
    const MESSAGES: usize = 50;
    let http = reqwest::Client::new();
    let senders = (0..CUSTOMERS).map(|c| {
        let (http, ingress) = (http.clone(), ingress.clone());
        tokio::spawn(async move {
            let from = customer(c);
            for m in 0..MESSAGES {
                let fields = twilio::incoming_text(
                    &format!("SM{c:04}{m:04}"),
                    from.as_str(),
                    &format!("c{c} m{m}"),
                );
                let (body, signature) =
                    twilio::signed(TOKEN, &format!("{PUBLIC}/twilio/messages"), &fields);
                let status = wait::until("ingress to accept", Duration::from_secs(30), || async {
                    let r = http
                        .post(&ingress)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .header("x-twilio-signature", &signature)
                        .body(body.clone())
                        .send()
                        .await
                        .ok()?;
                    Some(r.status())
                })
                .await;
                assert_eq!(status, StatusCode::OK);
            }
        })
    });
    for s in senders.collect::<Vec<_>>() {
        s.await.unwrap();
    }
    // The agent sees every customer's texts, in order, once.
    let mut contacts = Vec::new();
    for c in 0..CUSTOMERS {
        let contact = stack.contact_of(&customer(c)).await;
        let expected: Vec<String> = (0..MESSAGES).map(|m| format!("c{c} m{m}")).collect();
        wait::until(
            "the agent to see every text",
            Duration::from_secs(60),
            || async {
                let texts = stack.desk.customer_texts(&contact).await.ok()?;
                assert!(
                    expected.starts_with(&texts),
                    "out of order or duplicated: {texts:?}"
                );
                (texts == expected).then_some(())
            },
        )
        .await;
        stack.desk.accept(&contact).await.unwrap();
        stack.until_held(&contact).await;
        contacts.push(contact);
    }
    // Agents answer all customers at once.
    let writers = contacts.iter().enumerate().map(|(c, contact)| {
        let (desk, contact) = (stack.desk.clone(), contact.clone());
        tokio::spawn(async move {
            for m in 0..MESSAGES {
                desk.send(&contact, &format!("a{c} r{m}")).await.unwrap();
            }
        })
    });
    for w in writers.collect::<Vec<_>>() {
        w.await.unwrap();
    }
    let got = stack
        .outbound_until(CUSTOMERS * MESSAGES, Duration::from_secs(60))
        .await;
    for c in 0..CUSTOMERS {
        let expected: Vec<String> = (0..MESSAGES).map(|m| format!("a{c} r{m}")).collect();
        let messages = &got[customer(c).as_str()];
        assert_eq!(bodies(messages), expected, "customer {c}");
        assert!(messages.iter().all(|m| matches!(&m.origin, Origin::ConnectItem { participant_role, .. } if participant_role == "AGENT")));
    }
    stack.no_more_outbound(Duration::from_millis(500)).await;
    relay.shutdown().await;
    stop_ingress.cancel();
}

#[tokio::test]
async fn an_ended_chat_restarts_rehydrated_and_nothing_is_forwarded_twice() {
    let stack = Stack::new().await;
    let relay = stack
        .relay(&[(
            "WACONNECT_RELAY_CLOSING_TEXT",
            "Thanks, the chat is closed.",
        )])
        .await;
    let ana = customer(1);
    stack.customer_says(&ana, "SM1", "hello").await;
    let first = stack.contact_of(&ana).await;
    stack.desk.accept(&first).await.unwrap();
    stack.until_held(&first).await;
    stack.desk.send(&first, "hi Ana").await.unwrap();
    stack.desk.end(&first).await.unwrap();
    let got = stack.outbound_until(2, Duration::from_secs(20)).await;
    assert_eq!(
        bodies(&got[ana.as_str()]),
        ["hi Ana", "Thanks, the chat is closed."]
    );
    wait::until(
        "the conversation to end",
        Duration::from_secs(10),
        || async {
            let s = stack.store.get(&key_of(&ana)).await.ok()??;
            (s.conversation.state == ConversationState::Ended && s.lease.owner.is_none())
                .then_some(())
        },
    )
    .await;

    stack.customer_says(&ana, "SM2", "me again").await;
    let second = wait::until("a new chat", Duration::from_secs(20), || async {
        let s = stack.store.get(&key_of(&ana)).await.ok()??;
        let c = s
            .conversation
            .contact_id
            .filter(|c| *c != first && s.conversation.state == ConversationState::Active)?;
        Some(c)
    })
    .await;
    let chats = stack.desk.chats(None).await.unwrap();
    let summary = chats.iter().find(|c| c.contact_id == second).unwrap();
    assert_eq!(
        summary.continued_from.as_deref(),
        Some(first.as_str()),
        "not a persistent chat"
    );
    // The agent sees the earlier session, then the new text.
    wait::until("the new text", Duration::from_secs(10), || async {
        let texts = stack.desk.customer_texts(&second).await.ok()?;
        (texts == ["hello", "me again"]).then_some(())
    })
    .await;
    stack.desk.accept(&second).await.unwrap();
    stack.until_held(&second).await;
    stack.desk.send(&second, "welcome back").await.unwrap();
    let got = stack.outbound_until(1, Duration::from_secs(20)).await;
    assert_eq!(bodies(&got[ana.as_str()]), ["welcome back"]);
    stack.no_more_outbound(Duration::from_millis(700)).await;
    relay.shutdown().await;
}

/// A persistent chat's transcript repeats the past session under new Ids (Connect does
/// not promise to keep them): the next session forwards only what is new, with the agent
/// cursor written lazily (a minute) so only the session's exit saves it.
#[tokio::test]
async fn a_rehydrated_chat_with_new_item_ids_forwards_nothing_twice() {
    let stack = Stack::with(SimOptions {
        renumber_rehydrated: true,
        ..SimOptions::default()
    })
    .await;
    let relay = stack
        .relay(&[("WACONNECT_RELAY_CURSOR_FLUSH", "60s")])
        .await;
    let ana = customer(12);
    stack.customer_says(&ana, "SM1", "hello").await;
    let first = stack.contact_of(&ana).await;
    stack.desk.accept(&first).await.unwrap();
    stack.until_held(&first).await;
    stack.desk.send(&first, "a1").await.unwrap();
    stack.desk.send(&first, "a2").await.unwrap();
    let got = stack.outbound_until(2, Duration::from_secs(20)).await;
    assert_eq!(bodies(&got[ana.as_str()]), ["a1", "a2"]);
    stack.desk.end(&first).await.unwrap();
    wait::until("the chat to end", Duration::from_secs(10), || async {
        let s = stack.store.get(&key_of(&ana)).await.ok()??;
        (s.conversation.state == ConversationState::Ended && s.lease.owner.is_none()).then_some(())
    })
    .await;
    stack.customer_says(&ana, "SM2", "me again").await;
    let second = wait::until("a new chat", Duration::from_secs(20), || async {
        let s = stack.store.get(&key_of(&ana)).await.ok()??;
        s.conversation
            .contact_id
            .filter(|c| *c != first && s.conversation.state == ConversationState::Active)
    })
    .await;
    stack.desk.accept(&second).await.unwrap();
    stack.until_held(&second).await;
    stack.desk.send(&second, "b1").await.unwrap();
    let got = stack.outbound_until(1, Duration::from_secs(20)).await;
    assert_eq!(bodies(&got[ana.as_str()]), ["b1"]);
    stack.no_more_outbound(Duration::from_millis(700)).await;
    relay.shutdown().await;
}

/// A captured, signed webhook replayed after the queue's dedup window, once the chat has
/// ended and with another body under the same MessageSid, reaches nobody: no new chat,
/// nothing in the customer's next chat.
#[tokio::test]
async fn a_webhook_replayed_after_the_chat_ended_is_dropped() {
    let stack = Stack::new().await;
    let relay = stack.relay(&[]).await;
    let ana = customer(11);
    stack.customer_says(&ana, "SM1", "hello").await;
    let first = stack.contact_of(&ana).await;
    wait::until("the text", Duration::from_secs(10), || async {
        let texts = stack.desk.customer_texts(&first).await.ok()?;
        (texts == ["hello"]).then_some(())
    })
    .await;
    stack.desk.end(&first).await.unwrap();
    wait::until("the chat to end", Duration::from_secs(10), || async {
        let s = stack.store.get(&key_of(&ana)).await.ok()??;
        (s.conversation.state == ConversationState::Ended).then_some(())
    })
    .await;
    // A new webhook (received now) for the old MessageSid, past the queue's dedup window.
    let replay = InboundEvent::new(
        EventKind::Message,
        twilio::incoming_text("SM1", ana.as_str(), "refund me to this account"),
    );
    stack
        .inbound
        .send(NewMessage {
            group_id: key_of(&ana).storage(),
            dedup_id: "SM1-after-the-window".into(),
            body: replay.to_json(),
        })
        .await
        .unwrap();
    stack.customer_says(&ana, "SM2", "me again").await;
    let second = wait::until("a new chat", Duration::from_secs(20), || async {
        let s = stack.store.get(&key_of(&ana)).await.ok()??;
        s.conversation
            .contact_id
            .filter(|c| *c != first && s.conversation.state == ConversationState::Active)
    })
    .await;
    wait::until("the new text", Duration::from_secs(10), || async {
        let texts = stack.desk.customer_texts(&second).await.ok()?;
        (texts == ["hello", "me again"]).then_some(())
    })
    .await;
    assert_eq!(stack.desk.chats(None).await.unwrap().len(), 2);
    relay.shutdown().await;
}

/// The agent writes through socket drops, unanswered heartbeats, expired tokens and a
/// throttling storm; the customer writes through the same storm. Nothing is lost or
/// doubled, and each side stays in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_and_double_nothing() {
    let stack = Stack::new().await;
    let relay = stack.relay(&[]).await;
    let ana = customer(7);
    stack.customer_says(&ana, "SM0", "start").await;
    let contact = stack.contact_of(&ana).await;
    stack.desk.accept(&contact).await.unwrap();
    stack.until_held(&contact).await;
    let reconnects = |stats: &waconnect_sim::connect::SimStats| stats.calls_to("WebsocketConnect");
    let mut sent = Vec::new();
    let mut say = async |text: String| {
        stack.desk.send(&contact, &text).await.unwrap();
        sent.push(text);
    };

    // 1. The socket drops: the agent's next lines arrive by backfill or the new socket.
    let before = reconnects(&stack.desk.stats().await.unwrap());
    assert_eq!(stack.desk.drop_sockets(Some(&contact)).await.unwrap(), 1);
    for i in 0..5 {
        say(format!("after drop {i}")).await;
    }
    stack.until_held(&contact).await;
    assert!(reconnects(&stack.desk.stats().await.unwrap()) > before);

    // 2. Heartbeats go unanswered: the relay must notice the half-dead socket.
    stack.desk.answer_heartbeats(false).await.unwrap();
    let before = reconnects(&stack.desk.stats().await.unwrap());
    wait::until(
        "a reconnect after silent heartbeats",
        Duration::from_secs(15),
        || async { (reconnects(&stack.desk.stats().await.ok()?) > before).then_some(()) },
    )
    .await;
    for i in 0..5 {
        say(format!("while silent {i}")).await;
    }
    stack.desk.answer_heartbeats(true).await.unwrap();

    // 3. Connection tokens expire: the customer's next message still gets through.
    stack.desk.expire_tokens(Some(&contact)).await.unwrap();
    stack.customer_says(&ana, "SM1", "after expiry").await;

    // 4. A throttling storm on every Participant call, then 500s.
    stack.desk.throttle(12, None).await.unwrap();
    for i in 0..5 {
        stack
            .customer_says(&ana, &format!("SM2{i}"), &format!("in storm {i}"))
            .await;
        say(format!("in storm {i}")).await;
    }
    stack.desk.drop_sockets(Some(&contact)).await.unwrap();
    stack.desk.fail(6, None).await.unwrap();
    for i in 0..5 {
        say(format!("after errors {i}")).await;
    }

    let got = stack
        .outbound_until(sent.len(), Duration::from_secs(60))
        .await;
    assert_eq!(bodies(&got[ana.as_str()]), sent);
    let mut expected = vec!["start".to_owned(), "after expiry".to_owned()];
    expected.extend((0..5).map(|i| format!("in storm {i}")));
    wait::until("every customer text", Duration::from_secs(30), || async {
        let texts = stack.desk.customer_texts(&contact).await.ok()?;
        assert!(
            expected.starts_with(&texts),
            "out of order or doubled: {texts:?}"
        );
        (texts == expected).then_some(())
    })
    .await;
    stack.no_more_outbound(Duration::from_millis(1500)).await;
    relay.shutdown().await;
}

/// An event the relay cannot read (here a status without `To`, which ingress would have
/// refused: only a bug or a hand-made event gets one onto the queue) is dead-lettered on
/// its first delivery with what is wrong, rather than retried while it holds up its group.
#[tokio::test]
async fn an_unreadable_event_is_dead_lettered_at_once() {
    let stack = Stack::new().await;
    let relay = stack.relay(&[]).await;
    let f = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let mut event = InboundEvent::new(
        EventKind::Status,
        vec![
            f("MessageSid", "SMx"),
            f("MessageStatus", "failed"),
            f("ErrorCode", "63016"),
            f("From", "whatsapp:+14155238886"),
        ],
    );
    event.query = vec![f("item", "item-1"), f("contact", "contact-1")];
    stack
        .inbound
        .send(NewMessage {
            group_id: "status:somewhere".into(),
            dedup_id: "SMx:failed".into(),
            body: event.to_json(),
        })
        .await
        .unwrap();
    let dead = stack.inbound_dead_letter().await;
    assert_eq!(dead.receive_count, 1);
    assert!(dead.reason.contains("To"), "{}", dead.reason);
    relay.shutdown().await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_the_stream_goes_on() {
    let stack = Stack::new().await;
    let relay = stack.relay(&[]).await;
    let ana = customer(3);
    stack.customer_says(&ana, "SM1", "first").await;
    let contact = stack.contact_of(&ana).await;
    stack.desk.reject_containing(Some("POISON")).await.unwrap();
    stack.customer_says(&ana, "SM2", "this is POISON").await;
    stack.customer_says(&ana, "SM3", "after").await;
    let dead = stack.inbound_dead_letter().await;
    assert_eq!(dead.dedup_id, "SM2");
    assert_eq!(dead.receive_count, common::MAX_ATTEMPTS);
    assert!(
        dead.reason.contains("ValidationException"),
        "{}",
        dead.reason
    );
    wait::until(
        "the rest of the stream",
        Duration::from_secs(20),
        || async {
            let texts = stack.desk.customer_texts(&contact).await.ok()?;
            (texts == ["first", "after"]).then_some(())
        },
    )
    .await;
    relay.shutdown().await;
}

/// Connect answering StartChatContact three times slower than the visibility timeout:
/// the worker keeps its message invisible while it waits, so the other worker never
/// receives it meanwhile. One call, one contact, one copy of the text (before the
/// consumer extended visibility, both workers started the chat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_chat_start_keeps_its_message_from_the_other_worker() {
    let stack = Stack::new().await;
    stack.desk.delay(1500).await.unwrap();
    let short_visibility = [("WACONNECT_RELAY_VISIBILITY", "500ms")];
    let a = stack.relay(&short_visibility).await;
    let b = stack.relay(&short_visibility).await;
    let ana = customer(9);
    stack.customer_says(&ana, "SM1", "only once").await;
    let contact = stack.contact_of(&ana).await;
    stack.desk.delay(0).await.unwrap();
    wait::until("the text", Duration::from_secs(20), || async {
        let texts = stack.desk.customer_texts(&contact).await.ok()?;
        (texts == ["only once"]).then_some(())
    })
    .await;
    let stats = stack.desk.stats().await.unwrap();
    assert_eq!(
        stats.calls_to("StartChatContact"),
        1,
        "received twice: {stats:?}"
    );
    assert_eq!(stack.desk.chats(None).await.unwrap().len(), 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn call_me_places_one_call_per_cooldown_and_still_forwards_the_text() {
    let stack = Stack::new().await;
    let relay = stack
        .relay(&[
            ("WACONNECT_CALLME_KEYWORDS", "call me,ring me"),
            ("WACONNECT_CALLME_CONTACT_FLOW_ID", "voice-flow"),
            ("WACONNECT_CALLME_SOURCE_NUMBER", "+15550001111"),
        ])
        .await;
    let ana = customer(4);
    stack.customer_says(&ana, "SM1", "Please CALL  ME").await;
    stack.customer_says(&ana, "SM2", "callme again").await;
    stack.customer_says(&ana, "SM3", "bye").await;
    let contact = stack.contact_of(&ana).await;
    wait::until("all texts", Duration::from_secs(20), || async {
        let texts = stack.desk.customer_texts(&contact).await.ok()?;
        (texts == ["Please CALL  ME", "callme again", "bye"]).then_some(())
    })
    .await;
    let calls = stack.desk.calls().await.unwrap();
    assert_eq!(calls.len(), 1, "cooldown not honoured: {calls:?}");
    assert_eq!(calls[0]["destination"], ana.e164());
    assert_eq!(calls[0]["contact_flow_id"], "voice-flow");
    assert_eq!(calls[0]["source"], "+15550001111");
    relay.shutdown().await;
}

/// Twilio's status callback for part 0 of the agent's `item` in chat `contact`, as
/// ingress queues it; `error` is its ErrorCode and ErrorMessage.
fn status_callback(
    customer: &waconnect_shared::CustomerAddress,
    contact: &str,
    sid: &str,
    item: &str,
    status: &str,
    error: Option<(&str, &str)>,
) -> waconnect_shared::storage::queue::NewMessage {
    use waconnect_shared::message::event::{EventKind, InboundEvent};
    let mut fields = twilio::status_callback(sid, customer.as_str(), status);
    if let Some((code, message)) = error {
        fields.push(("ErrorCode".into(), code.into()));
        fields.push(("ErrorMessage".into(), message.into()));
    }
    let mut event = InboundEvent::new(EventKind::Status, fields);
    event.query = vec![
        ("item".into(), item.into()),
        ("contact".into(), contact.into()),
        ("part".into(), "0".into()),
    ];
    waconnect_shared::storage::queue::NewMessage {
        group_id: key_of(customer).storage(),
        dedup_id: format!("{sid}:{status}"),
        body: event.to_json(),
    }
}

/// A connection token lasts less than a chat: a receipt or a failure that comes after
/// it expired still reaches the agent, on a new connection, as a customer's message does.
#[tokio::test]
async fn receipts_and_notices_reach_the_agent_after_the_connection_expired() {
    let stack = Stack::new().await;
    let relay = stack.relay(&[]).await;
    let ana = customer(12);
    stack.customer_says(&ana, "SM1", "hi").await;
    let contact = stack.contact_of(&ana).await;
    stack.desk.accept(&contact).await.unwrap();
    let reply = stack.desk.send(&contact, "hello Ana").await.unwrap();
    let refused = stack.desk.send(&contact, "are you there?").await.unwrap();
    stack.outbound_until(2, Duration::from_secs(10)).await;
    assert!(stack.desk.expire_tokens(Some(&contact)).await.unwrap() > 0);
    let status = |sid: &str, item: &str, status: &str| {
        let error = (status == "undelivered").then_some(("63024", "Invalid message recipient"));
        status_callback(&ana, &contact, sid, item, status, error)
    };
    for m in [
        status("SMa", &reply.id, "read"),
        status("SMb", &refused.id, "undelivered"),
    ] {
        stack.inbound.send(m).await.unwrap();
    }
    read_receipt_shown(&stack, &contact, &reply.id).await;
    wait::until("the failure notice", Duration::from_secs(20), || async {
        let texts = stack.desk.customer_texts(&contact).await.ok()?;
        texts.into_iter().find(|t| t.contains("63024"))
    })
    .await;
    relay.shutdown().await;
}

/// Waits until the agent sees `item` read by the customer.
async fn read_receipt_shown(stack: &Stack, contact: &str, item: &str) {
    wait::until("the read receipt", Duration::from_secs(20), || async {
        let receipts = stack.desk.customer_receipts(contact).await.ok()?;
        (receipts.get(item).is_some_and(|r| r.1)).then_some(())
    })
    .await;
}

/// A new connection's token can be refused too (here: expired again before its first use,
/// as chaos's back-to-back expiries did). The chat is not over — Connect would refuse a
/// new connection then — so the receipt is not dropped: the relay connects again, within
/// a bound, and past it retries the event later.
#[tokio::test]
async fn a_receipt_outlives_a_new_connection_refused_before_its_first_use() {
    let stack = Stack::new().await;
    let relay = stack.relay(&[]).await;
    let ana = customer(13);
    stack.customer_says(&ana, "SM1", "hi").await;
    let contact = stack.contact_of(&ana).await;
    stack.desk.accept(&contact).await.unwrap();
    let reply = stack.desk.send(&contact, "hello Ana").await.unwrap();
    stack.outbound_until(1, Duration::from_secs(10)).await;
    let connections = || async {
        let stats = stack.desk.stats().await.ok()?;
        Some(stats.calls_to("CreateParticipantConnection"))
    };
    let before = connections().await.unwrap();
    // Every call takes a while, and meanwhile every token expires: each new connection is
    // refused at its first use.
    stack.desk.delay(400).await.unwrap();
    let expiring = CancellationToken::new();
    let expirer = tokio::spawn({
        let (desk, contact, stop) = (stack.desk.clone(), contact.clone(), expiring.clone());
        async move {
            while !stop.is_cancelled() {
                let _ = desk.expire_tokens(Some(&contact)).await;
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    });
    stack
        .inbound
        .send(status_callback(
            &ana, &contact, "SMa", &reply.id, "read", None,
        ))
        .await
        .unwrap();
    // Until the relay has made two new connections (or for a while: one that gives up
    // after the first makes no second).
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while connections().await.is_none_or(|n| n < before + 2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    expiring.cancel();
    expirer.await.unwrap();
    stack.desk.delay(0).await.unwrap();
    read_receipt_shown(&stack, &contact, &reply.id).await;
    relay.shutdown().await;
}

/// Status callbacks (carrying the Connect item in their URL) become Connect receipts, and
/// failures a clearly marked notice for the agent; 63016 sends the window template.
#[tokio::test]
async fn receipts_and_delivery_failures_reach_the_agent() {
    let stack = Stack::new().await;
    let relay = stack
        .relay(&[("WACONNECT_WINDOW_TEMPLATE_SID", "HX123")])
        .await;
    let ana = customer(11);
    stack.customer_says(&ana, "SM1", "hi").await;
    let contact = stack.contact_of(&ana).await;
    stack.desk.accept(&contact).await.unwrap();
    let reply = stack.desk.send(&contact, "hello Ana").await.unwrap();
    let late = stack.desk.send(&contact, "still there?").await.unwrap();
    let status = |sid: &str, item: &str, status: &str, code: Option<&str>| {
        let error = code.map(|c| (c, "outside the allowed window"));
        status_callback(&ana, &contact, sid, item, status, error)
    };
    for m in [
        status("SMa", &reply.id, "sent", None),
        status("SMa", &reply.id, "delivered", None),
        status("SMa", &reply.id, "read", None),
        status("SMb", &late.id, "failed", Some("63016")),
    ] {
        stack.inbound.send(m).await.unwrap();
    }
    // Connect keeps receipts on the message they are about, not as items of their own.
    wait::until("the receipts", Duration::from_secs(20), || async {
        let receipts = stack.desk.customer_receipts(&contact).await.ok()?;
        (receipts.get(&reply.id) == Some(&(true, true))).then_some(())
    })
    .await;
    assert!(
        stack
            .desk
            .customer_events(&contact)
            .await
            .unwrap()
            .is_empty(),
        "receipts are not EVENT items"
    );
    let notice = wait::until("the failure notice", Duration::from_secs(20), || async {
        let texts = stack.desk.customer_texts(&contact).await.ok()?;
        texts.into_iter().find(|t| t.contains("not delivered"))
    })
    .await;
    assert!(
        notice.starts_with("[waconnect notice - not from the customer]"),
        "{notice}"
    );
    assert!(notice.contains("63016"), "{notice}");
    // The two agent texts, then the template asking Ana to write back.
    let got = stack.outbound_until(3, Duration::from_secs(10)).await;
    let (templates, texts): (Vec<_>, Vec<_>) = got[ana.as_str()]
        .iter()
        .cloned()
        .partition(|m| m.template.is_some());
    assert_eq!(bodies(&texts), ["hello Ana", "still there?"]);
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0].template.as_ref().unwrap().content_sid, "HX123");
    relay.shutdown().await;
}

/// A number Connect will not call: the text still reaches the agent and the customer's
/// stream goes on, without retries piling up.
#[tokio::test]
async fn a_call_connect_refuses_does_not_hold_up_the_stream() {
    let stack = Stack::new().await;
    let relay = stack
        .relay(&[
            ("WACONNECT_CALLME_KEYWORDS", "call me"),
            ("WACONNECT_CALLME_CONTACT_FLOW_ID", "voice-flow"),
        ])
        .await;
    let far = waconnect_shared::CustomerAddress::parse("whatsapp:+99912345678").unwrap();
    stack.customer_says(&far, "SM1", "call me").await;
    stack.customer_says(&far, "SM2", "hello?").await;
    let contact = stack.contact_of(&far).await;
    wait::until("both texts", Duration::from_secs(20), || async {
        let texts = stack.desk.customer_texts(&contact).await.ok()?;
        (texts == ["call me", "hello?"]).then_some(())
    })
    .await;
    assert!(stack.desk.calls().await.unwrap().is_empty());
    let stats = stack.inbound.stats().await.unwrap();
    assert_eq!((stats.dead_letters, stats.delayed), (0, 0));
    relay.shutdown().await;
}

/// The agent cursor moves in memory and reaches the record once per flush interval, and
/// at once when the lease is handed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_cursor_is_written_lazily_and_at_hand_off() {
    let stack = Stack::new().await;
    let cursor_id = async || {
        let stored = stack.store.get(&key(3)).await.unwrap().unwrap();
        stored.conversation.agent_cursor.map(|c| c.id)
    };
    let relay = stack
        .relay(&[("WACONNECT_RELAY_CURSOR_FLUSH", "60s")])
        .await;
    stack.customer_says(&customer(3), "SM0", "hello").await;
    let contact = stack.contact_of(&customer(3)).await;
    stack.desk.accept(&contact).await.unwrap();
    stack.until_held(&contact).await;
    let mut last = String::new();
    for i in 0..3 {
        last = stack
            .desk
            .send(&contact, &format!("reply {i}"))
            .await
            .unwrap()
            .id;
    }
    stack.outbound_until(3, Duration::from_secs(20)).await;
    assert_eq!(cursor_id().await, None, "written before its interval");
    relay.shutdown().await;
    assert_eq!(cursor_id().await, Some(last), "not written at hand-off");

    // A short interval: the cursor follows while the conversation is held.
    let relay = stack
        .relay(&[("WACONNECT_RELAY_CURSOR_FLUSH", "200ms")])
        .await;
    stack.until_held(&contact).await;
    let last = stack.desk.send(&contact, "reply 3").await.unwrap().id;
    stack.outbound_until(1, Duration::from_secs(20)).await;
    wait::until(
        "the cursor to reach the record",
        Duration::from_secs(5),
        || async { (cursor_id().await.as_deref() == Some(last.as_str())).then_some(()) },
    )
    .await;
    relay.shutdown().await;
    stack.no_more_outbound(Duration::from_millis(300)).await;
}

/// A chat recorded before several business numbers were supported (keyed by the customer
/// alone, no number in the record) is not lost on upgrade: the customer's next message
/// to the default route's number lands in it, no second chat starts, and the agent's
/// reply goes out in that conversation's own group from the default sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_recorded_before_routing_continues_after_the_upgrade() {
    use waconnect_shared::ConversationKey;

    let stack = Stack::new().await;
    let ana = customer(21);
    // What the earlier version left: a live chat and its record under the bare customer.
    let legacy = ConversationKey::legacy(ana.clone());
    let api = stack.connect_api().await;
    let contact = stack
        .live_record(&api, legacy.clone(), "before-routing")
        .await;

    let relay = stack.relay(&[]).await;
    stack.customer_says(&ana, "SM1", "still me").await;
    wait::until(
        "the text in the old chat",
        Duration::from_secs(20),
        || async {
            let texts = stack.desk.customer_texts(&contact).await.ok()?;
            (texts == ["still me"]).then_some(())
        },
    )
    .await;
    assert_eq!(stack.store.get(&key_of(&ana)).await.unwrap(), None);
    assert_eq!(
        stack.desk.chats(None).await.unwrap().len(),
        1,
        "a second chat"
    );
    let noted = stack.store.get(&legacy).await.unwrap().unwrap();
    assert_eq!(
        noted.conversation.last_inbound_message_sid.as_deref(),
        Some("SM1")
    );

    stack.desk.accept(&contact).await.unwrap();
    stack.until_held(&contact).await;
    stack.desk.send(&contact, "welcome back").await.unwrap();
    // The helper checks each message's group is its conversation's: here the bare one.
    let got = stack.outbound_until(1, Duration::from_secs(20)).await;
    let reply = &got[ana.as_str()];
    assert_eq!(bodies(reply), ["welcome back"]);
    assert_eq!(reply[0].from, None);
    assert_eq!(reply[0].key(), legacy);
    relay.shutdown().await;
}
