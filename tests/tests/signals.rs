//! The small signals of a live conversation (docs/architecture.md §10), over the full loop of real
//! processes: the agent typing shows as "typing…" on the customer's phone, at most once
//! per 25 s; the agent reading the customer's messages turns them blue (or their arrival
//! does, or nothing, as configured); Connect's refusal of receipts in a supervised chat is
//! final, not a retry; a customer's reply to a specific message shows the agent which.

use std::time::Duration;
use waconnect_sim::connect::{DeskClient, Item};
use waconnect_sim::twilio::{CustomerMessage, PhoneClient, TwilioOptions};
use waconnect_tests::full_loop::{FullLoop, LoopOptions};
use waconnect_tests::{customer, wait};

/// The customer writes `texts`; the agent accepts. Returns the contact and the customer's
/// items in the chat (Connect's ids), in order.
async fn chat(lp: &FullLoop, c: usize, texts: &[&str]) -> (String, Vec<Item>) {
    let phone = lp.twilio.phone();
    let number = customer(c);
    for text in texts {
        wait::until(
            "ingress to take the webhook",
            Duration::from_secs(30),
            || async {
                let (_, status) = phone.text(number.as_str(), text).await.ok()?;
                (status == 200).then_some(())
            },
        )
        .await;
    }
    let desk = lp.connect.desk();
    let name = number.e164().to_owned();
    let (contact, items) = wait::until("the customer's chat", Duration::from_secs(60), || async {
        let chats = desk.chats(None).await.ok()?;
        let chat = chats
            .iter()
            .find(|s| s.attributes.get("CustomerNumber").and_then(|v| v.as_str()) == Some(&name))?;
        let items = customer_messages(&desk, &chat.contact_id).await;
        (items.len() == texts.len()).then(|| (chat.contact_id.clone(), items))
    })
    .await;
    desk.accept(&contact).await.unwrap();
    wait::until("the chat held", Duration::from_secs(30), || async {
        (desk.stats().await.ok()?.sockets >= 1).then_some(())
    })
    .await;
    (contact, items)
}

async fn customer_messages(desk: &DeskClient, contact: &str) -> Vec<Item> {
    desk.transcript(contact)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.kind == "MESSAGE" && i.participant_role.as_deref() == Some("CUSTOMER"))
        .collect()
}

/// Which of the customer's messages show blue ticks on their phone, in order.
async fn blue(phone: &PhoneClient, c: usize) -> Vec<bool> {
    let chat = phone.chat(customer(c).as_str()).await.unwrap();
    chat.written.iter().map(|w| w.read).collect()
}

/// The agent replies and the phone has it: whatever the relay was going to do with the
/// signals before the reply has been done by then (they never wait behind messages).
async fn reply_lands(lp: &FullLoop, contact: &str, c: usize, text: &str) {
    lp.connect.desk().send(contact, text).await.unwrap();
    let phone = lp.twilio.phone();
    wait::until(
        "the reply on the phone",
        Duration::from_secs(30),
        || async {
            let inbox = phone.inbox(customer(c).as_str()).await.ok()?;
            inbox.iter().any(|m| m.body == text).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_typing_shows_on_the_phone_once_per_window_and_ends_with_the_reply() {
    let lp = FullLoop::start(LoopOptions::default()).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let (contact, items) = chat(&lp, 0, &["my parcel is late"]).await;
    let sid = phone.chat(customer(0).as_str()).await.unwrap().written[0]
        .sid
        .clone();
    assert_eq!(items.len(), 1);
    for _ in 0..4 {
        desk.typing(&contact).await.unwrap();
    }
    wait::until("typing on the phone", Duration::from_secs(20), || async {
        phone
            .chat(customer(0).as_str())
            .await
            .ok()?
            .typing
            .then_some(())
    })
    .await;
    // Twilio's indicator also marks the message it names read.
    assert_eq!(blue(&phone, 0).await, [true]);
    reply_lands(&lp, &contact, 0, "let me check").await;
    assert!(!phone.chat(customer(0).as_str()).await.unwrap().typing);
    // Four typing events within 25 s: one indicator, on the customer's latest message.
    let calls = phone.typing_calls().await.unwrap();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].message_sid, sid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_reading_turns_the_customers_messages_blue() {
    let options = LoopOptions {
        // The phone reads the agent's replies at once; only the agent's reading matters.
        twilio: TwilioOptions::default(),
        relay_vars: vec![("WACONNECT_WHATSAPP_TYPING", "false".into())],
        ..Default::default()
    };
    let lp = FullLoop::start(options).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let (contact, items) = chat(&lp, 1, &["one", "two", "three"]).await;
    // Nothing is blue until the agent reads.
    reply_lands(&lp, &contact, 1, "hello").await;
    assert_eq!(blue(&phone, 1).await, [false, false, false]);
    // The agent reads the second message: it and the first turn blue.
    desk.read(&contact, &items[1].id).await.unwrap();
    wait::until("blue ticks", Duration::from_secs(20), || async {
        (blue(&phone, 1).await == [true, true, false]).then_some(())
    })
    .await;
    let written = phone.chat(customer(1).as_str()).await.unwrap().written;
    // A receipt for an older message tells WhatsApp nothing new: no call.
    desk.read(&contact, &items[0].id).await.unwrap();
    desk.read(&contact, &items[2].id).await.unwrap();
    wait::until("the last one blue", Duration::from_secs(20), || async {
        (blue(&phone, 1).await == [true, true, true]).then_some(())
    })
    .await;
    reply_lands(&lp, &contact, 1, "done").await;
    let calls: Vec<String> = phone
        .typing_calls()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.message_sid)
        .collect();
    assert_eq!(calls, [written[1].sid.clone(), written[2].sid.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_arrival_messages_turn_blue_as_they_reach_the_chat_and_off_means_never() {
    let arrival = FullLoop::start(LoopOptions {
        relay_vars: vec![("WACONNECT_WHATSAPP_READ_RECEIPTS", "arrival".into())],
        ..Default::default()
    })
    .await;
    let phone = arrival.twilio.phone();
    chat(&arrival, 2, &["hi there"]).await;
    wait::until("blue on arrival", Duration::from_secs(20), || async {
        (blue(&phone, 2).await == [true]).then_some(())
    })
    .await;
    drop(arrival);

    let off = FullLoop::start(LoopOptions {
        relay_vars: vec![
            ("WACONNECT_WHATSAPP_READ_RECEIPTS", "off".into()),
            ("WACONNECT_WHATSAPP_TYPING", "false".into()),
        ],
        ..Default::default()
    })
    .await;
    let (phone, desk) = (off.twilio.phone(), off.connect.desk());
    let (contact, items) = chat(&off, 3, &["hello?"]).await;
    desk.typing(&contact).await.unwrap();
    desk.read(&contact, &items[0].id).await.unwrap();
    reply_lands(&off, &contact, 3, "hi").await;
    assert_eq!(blue(&phone, 3).await, [false]);
    assert!(phone.typing_calls().await.unwrap().is_empty());
}

/// With a supervisor listening, Connect refuses receipts (409): the relay takes that as
/// final — no retry, no dead letter — and the conversation goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_supervised_chat_refuses_receipts_for_good() {
    let lp = FullLoop::start(LoopOptions::default()).await;
    let desk = lp.connect.desk();
    let (contact, _) = chat(&lp, 4, &["hello"]).await;
    desk.supervise(&contact).await.unwrap();
    // The phone reads the reply at once: Twilio reports delivered and read.
    reply_lands(&lp, &contact, 4, "a supervisor is here").await;
    let refused = wait::until("receipts refused", Duration::from_secs(30), || async {
        let text = lp.relay_metrics().await?;
        let line = text
            .lines()
            .find(|l| l.starts_with("waconnect_relay_receipts_refused_total"))?
            .to_owned();
        let n: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (n >= 2.0).then_some(text)
    })
    .await;
    assert!(
        !refused.contains("outcome=\"dead_lettered\""),
        "a refused receipt must not be dead-lettered"
    );
    // Each receipt was tried once.
    let send_events = desk.stats().await.unwrap().calls_to("SendEvent");
    assert_eq!(send_events, 2);
    assert!(desk.customer_receipts(&contact).await.unwrap().is_empty());
    // The chat goes on; nothing was retried meanwhile.
    reply_lands(&lp, &contact, 4, "still here").await;
    wait::until("the next receipts", Duration::from_secs(30), || async {
        (desk.stats().await.ok()?.calls_to("SendEvent") >= 4).then_some(())
    })
    .await;
    reply_lands(&lp, &contact, 4, "and here").await;
    wait::until("the last receipts", Duration::from_secs(30), || async {
        (desk.stats().await.ok()?.calls_to("SendEvent") >= 6).then_some(())
    })
    .await;
    assert_eq!(desk.stats().await.unwrap().calls_to("SendEvent"), 6);
}

/// WhatsApp's swipe-to-reply: the agent sees the first words of the message the customer
/// replies to, the agent's own (long ones cut) or the customer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_to_a_message_quotes_it_for_the_agent() {
    let lp = FullLoop::start(LoopOptions::default()).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let (contact, _) = chat(&lp, 5, &["order 1042 is late"]).await;
    let long = format!("It ships today. {}", "More details follow. ".repeat(10));
    reply_lands(&lp, &contact, 5, &long).await;
    let number = customer(5);
    // The customer reads it first, as a person would before replying.
    let agents = wait::until("the reply read", Duration::from_secs(30), || async {
        let inbox = phone.inbox(number.as_str()).await.ok()?;
        (inbox[0].status == "read").then(|| inbox[0].sid.clone())
    })
    .await;
    let own = phone.chat(number.as_str()).await.unwrap().written[0]
        .sid
        .clone();
    for (reply_to, body) in [(&agents, "great, thanks"), (&own, "and order 1043 too")] {
        let message = CustomerMessage {
            from: number.as_str().to_owned(),
            body: body.to_owned(),
            reply_to: Some(reply_to.clone()),
            ..Default::default()
        };
        let (_, status) = phone.send(&message).await.unwrap();
        assert_eq!(status, 200);
    }
    let texts = wait::until(
        "the replies in the chat",
        Duration::from_secs(30),
        || async {
            let texts = desk.customer_texts(&contact).await.ok()?;
            (texts.len() == 3).then_some(texts)
        },
    )
    .await;
    // Excerpts are cut at 100 characters, the last an ellipsis.
    let cut: String = long.chars().take(99).collect();
    assert_eq!(
        texts[1],
        format!("↩ In reply to the agent's message: \"{cut}…\"\ngreat, thanks")
    );
    assert_eq!(
        texts[2],
        "↩ In reply to their own message: \"order 1042 is late\"\nand order 1043 too"
    );
}
