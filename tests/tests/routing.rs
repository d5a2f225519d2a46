//! Several business numbers (README "Several business numbers"), over the full loop of
//! real processes with a routing file: one customer writing to two brands has two
//! conversations, each on its route's flow with its attributes, answered from the number
//! it was written to, with its own closing text; on SQLite and on SQS/DynamoDB (moto).

use std::time::Duration;
use waconnect_sim::connect::ChatSummary;
use waconnect_sim::twilio::{CustomerMessage, PhoneClient, TwilioOptions};
use waconnect_tests::full_loop::{FullLoop, LoopOptions};
use waconnect_tests::{BUSINESS, customer, wait};

const GLOBEX: &str = "whatsapp:+442071838750";

fn routing() -> String {
    format!(
        r#"
[[route]]
name = "acme"
numbers = ["{BUSINESS}"]
contact_flow_id = "flow-acme"
[route.attributes]
brand = "acme"

[[route]]
name = "globex"
numbers = ["{GLOBEX}"]
contact_flow_id = "flow-globex"
closing_text = "Thanks for writing to Globex."
rate = 40
[route.attributes]
brand = "globex"
"#
    )
}

/// Ana writes `body` to `to` (ingress may still be starting: retried until it takes it).
async fn write(phone: &PhoneClient, to: &str, body: &str) {
    let message = CustomerMessage {
        from: customer(1).as_str().to_owned(),
        to: Some(to.to_owned()),
        body: body.to_owned(),
        ..CustomerMessage::default()
    };
    wait::until(
        "ingress to take the webhook",
        Duration::from_secs(30),
        || async {
            let (_, status) = phone.send(&message).await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await;
}

fn attribute<'a>(chat: &'a ChatSummary, name: &str) -> Option<&'a str> {
    chat.attributes.get(name).and_then(|v| v.as_str())
}

/// The texts the phone received from `from`, oldest first.
async fn received_from(phone: &PhoneClient, from: &str) -> Vec<String> {
    let inbox = phone.inbox(customer(1).as_str()).await.unwrap_or_default();
    inbox
        .into_iter()
        .filter(|m| m.from == from)
        .map(|m| m.body)
        .collect()
}

async fn two_numbers_two_conversations(aws: bool) {
    let lp = FullLoop::start(LoopOptions {
        twilio: TwilioOptions {
            other_senders: vec![GLOBEX.to_owned()],
            ..TwilioOptions::default()
        },
        routing: Some(routing()),
        aws,
        ..LoopOptions::default()
    })
    .await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    write(&phone, BUSINESS, "hello acme").await;
    write(&phone, GLOBEX, "hello globex").await;

    // Two chats, each on its route's flow, with its attributes and its number.
    let chats = wait::until("two chats", Duration::from_secs(60), || async {
        let chats = desk.chats(None).await.ok()?;
        (chats.len() == 2).then_some(chats)
    })
    .await;
    let on = |flow: &str| {
        chats
            .iter()
            .find(|c| c.contact_flow_id == flow)
            .unwrap_or_else(|| panic!("no chat on {flow}: {chats:?}"))
            .clone()
    };
    let (acme, globex) = (on("flow-acme"), on("flow-globex"));
    assert_eq!(attribute(&acme, "brand"), Some("acme"));
    assert_eq!(attribute(&acme, "BusinessNumber"), Some(BUSINESS));
    assert_eq!(attribute(&globex, "brand"), Some("globex"));
    assert_eq!(attribute(&globex, "BusinessNumber"), Some(GLOBEX));
    for (chat, text) in [(&acme, "hello acme"), (&globex, "hello globex")] {
        wait::until("the customer's text", Duration::from_secs(30), || async {
            let texts = desk.customer_texts(&chat.contact_id).await.ok()?;
            (texts == [text]).then_some(())
        })
        .await;
        desk.accept(&chat.contact_id).await.unwrap();
    }

    // Each agent's reply comes from the number its conversation was written to.
    desk.send(&acme.contact_id, "Acme here").await.unwrap();
    desk.send(&globex.contact_id, "Globex here").await.unwrap();
    wait::until("both replies", Duration::from_secs(30), || async {
        let from_acme = received_from(&phone, BUSINESS).await;
        let from_globex = received_from(&phone, GLOBEX).await;
        (from_acme == ["Acme here"] && from_globex == ["Globex here"]).then_some(())
    })
    .await;

    // Ending Globex's chat says Globex's goodbye, from Globex, and leaves Acme's open.
    desk.end(&globex.contact_id).await.unwrap();
    wait::until("Globex's closing text", Duration::from_secs(30), || async {
        let from_globex = received_from(&phone, GLOBEX).await;
        (from_globex == ["Globex here", "Thanks for writing to Globex."]).then_some(())
    })
    .await;
    write(&phone, BUSINESS, "still there?").await;
    wait::until(
        "the text in Acme's chat",
        Duration::from_secs(30),
        || async {
            let texts = desk.customer_texts(&acme.contact_id).await.ok()?;
            (texts == ["hello acme", "still there?"]).then_some(())
        },
    )
    .await;
    assert_eq!(received_from(&phone, BUSINESS).await, ["Acme here"]);
    assert_eq!(desk.chats(None).await.unwrap().len(), 2, "no third chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_writing_to_two_numbers_has_two_conversations() {
    two_numbers_two_conversations(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_writing_to_two_numbers_has_two_conversations_on_aws() {
    two_numbers_two_conversations(true).await;
}
