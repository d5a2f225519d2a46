//! Flows' and bots' interactive messages on WhatsApp (docs/architecture.md §10), over the full loop of
//! real processes: a ListPicker becomes a WhatsApp list and a QuickReply buttons (Twilio's
//! Content API, one content per distinct menu), a tap or a typed number goes back to the
//! chat as the choice's title, and an agent's Markdown arrives in WhatsApp's formatting.

use std::time::Duration;
use waconnect_sim::twilio::InboxMessage;
use waconnect_tests::full_loop::{FullLoop, LoopOptions};
use waconnect_tests::{customer, wait};

const INTERACTIVE: &str = "application/vnd.amazonaws.connect.message.interactive";

fn list_picker() -> String {
    serde_json::json!({
        "templateType": "ListPicker",
        "version": "1.0",
        "data": { "content": {
            "title": "What can we help with?",
            "subtitle": "Tap to choose",
            "elements": [
                { "title": "Billing", "subtitle": "Invoices and payments" },
                { "title": "Returns" },
                { "title": "Delivery" },
                { "title": "Something else entirely, please" },
            ],
        }},
    })
    .to_string()
}

fn quick_reply() -> String {
    serde_json::json!({
        "templateType": "QuickReply",
        "version": "1.0",
        "data": { "content": {
            "title": "Was this helpful?",
            "elements": [{ "title": "Yes" }, { "title": "No" }, { "title": "Not sure" }],
        }},
    })
    .to_string()
}

/// The customer writes; the chat is held. Returns its contact.
async fn chat(lp: &FullLoop, c: usize) -> String {
    let phone = lp.twilio.phone();
    let number = customer(c);
    wait::until(
        "ingress to take the webhook",
        Duration::from_secs(30),
        || async {
            let (_, status) = phone.text(number.as_str(), "hello").await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await;
    let desk = lp.connect.desk();
    let name = number.e164().to_owned();
    let contact = wait::until("the chat", Duration::from_secs(60), || async {
        let chats = desk.chats(None).await.ok()?;
        chats
            .iter()
            .find(|s| s.attributes.get("CustomerNumber").and_then(|v| v.as_str()) == Some(&name))
            .map(|s| s.contact_id.clone())
    })
    .await;
    wait::until("the chat held", Duration::from_secs(30), || async {
        (desk.stats().await.ok()?.sockets >= 1).then_some(())
    })
    .await;
    contact
}

async fn nth_on_phone(lp: &FullLoop, c: usize, n: usize) -> InboxMessage {
    let phone = lp.twilio.phone();
    wait::until(
        "the message on the phone",
        Duration::from_secs(30),
        || async {
            let inbox = phone.inbox(customer(c).as_str()).await.ok()?;
            inbox.get(n).cloned()
        },
    )
    .await
}

async fn customer_says(lp: &FullLoop, contact: &str, n: usize) -> String {
    let desk = lp.connect.desk();
    wait::until(
        "the customer's message in the chat",
        Duration::from_secs(30),
        || async {
            let texts = desk.customer_texts(contact).await.ok()?;
            texts.get(n).cloned()
        },
    )
    .await
}

async fn metric(lp: &FullLoop, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", lp.sender_ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flow_list_is_a_whatsapp_list_and_a_tap_answers_with_the_full_title() {
    let lp = FullLoop::start(LoopOptions::default()).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let contact = chat(&lp, 0).await;
    // A flow's menu (a SYSTEM message) goes to the customer even though system messages
    // are not forwarded by default.
    desk.send_content(&contact, "SYSTEM", INTERACTIVE, &list_picker())
        .await
        .unwrap();
    let shown = nth_on_phone(&lp, 0, 0).await;
    assert_eq!(shown.body, "What can we help with?\nTap to choose");
    let titles: Vec<&str> = shown.choices.iter().map(|c| c.title.as_str()).collect();
    // WhatsApp's list items hold 24 characters: the long one is cut on the phone.
    assert_eq!(
        titles,
        ["Billing", "Returns", "Delivery", "Something else entirely…"]
    );
    let (_, status) = phone
        .tap(customer(0).as_str(), &shown.sid, 3)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The chat gets the whole title, as Connect's own chat client sends a choice.
    assert_eq!(
        customer_says(&lp, &contact, 1).await,
        "Something else entirely, please"
    );

    // The same menu again: the content made the first time is used again.
    desk.send_content(&contact, "SYSTEM", INTERACTIVE, &list_picker())
        .await
        .unwrap();
    let again = nth_on_phone(&lp, 0, 1).await;
    assert_eq!(again.content_sid, shown.content_sid);
    assert_eq!(
        metric(&lp, "waconnect_sender_contents_created_total").await,
        1.0
    );

    // Quick replies are buttons; a bot's too.
    desk.send_content(&contact, "CUSTOM_BOT", INTERACTIVE, &quick_reply())
        .await
        .unwrap();
    let buttons = nth_on_phone(&lp, 0, 2).await;
    assert_eq!(buttons.choices.len(), 3);
    phone
        .tap(customer(0).as_str(), &buttons.sid, 1)
        .await
        .unwrap();
    assert_eq!(customer_says(&lp, &contact, 2).await, "No");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn as_numbered_text_a_number_answers_once_and_markdown_is_formatted() {
    let lp = FullLoop::start(LoopOptions {
        sender_vars: vec![("WACONNECT_WHATSAPP_MENUS", "text".into())],
        ..Default::default()
    })
    .await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let contact = chat(&lp, 1).await;
    desk.send_content(&contact, "SYSTEM", INTERACTIVE, &list_picker())
        .await
        .unwrap();
    let shown = nth_on_phone(&lp, 1, 0).await;
    assert!(shown.choices.is_empty());
    assert!(
        shown.body.contains("\n2. Returns\n")
            && shown
                .body
                .ends_with("Reply with the number of your choice."),
        "{}",
        shown.body
    );
    phone.text(customer(1).as_str(), "2").await.unwrap();
    assert_eq!(customer_says(&lp, &contact, 1).await, "Returns");
    // The menu is answered: a later number is just a number.
    phone.text(customer(1).as_str(), "2").await.unwrap();
    assert_eq!(customer_says(&lp, &contact, 2).await, "2");

    desk.send_content(
        &contact,
        "AGENT",
        "text/markdown",
        "**Order 1042** has _shipped_, see [tracking](https://example.com/t)",
    )
    .await
    .unwrap();
    let formatted = nth_on_phone(&lp, 1, 1).await;
    assert_eq!(
        formatted.body,
        "*Order 1042* has _shipped_, see tracking (https://example.com/t)"
    );
}
