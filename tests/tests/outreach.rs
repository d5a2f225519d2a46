//! Conversations the business starts (docs/architecture.md §10), over the full loop of real
//! processes, on the embedded engine and on moto: the relay's API (bearer token) sends an
//! approved template to a customer who never wrote, opens the Connect chat with the
//! template's text for the agent, is idempotent on the caller's key, refuses a second
//! open chat, and the customer's reply lands in that chat. The command does the same.

use std::time::Duration;
use waconnect_tests::full_loop::{FullLoop, LoopOptions};
use waconnect_tests::processes::binary;
use waconnect_tests::twilio_sim::TwilioOptions;
use waconnect_tests::{customer, free_port, wait};

const TOKEN: &str = "outreach-test-token-0123456789";
const TEMPLATE: &str = "HX0123456789abcdef0123456789abcdef";

async fn started(aws: bool) -> (FullLoop, String) {
    let api = free_port().await;
    let options = LoopOptions {
        twilio: TwilioOptions {
            templates: vec![(
                TEMPLATE.into(),
                "Hello {{1}}, your order {{2}} is ready. Reply here to talk to us.".into(),
            )],
            ..Default::default()
        },
        relay_vars: vec![
            ("WACONNECT_RELAY_API_BIND", api.clone()),
            ("WACONNECT_RELAY_API_TOKEN", TOKEN.into()),
        ],
        aws,
        ..Default::default()
    };
    let lp = FullLoop::start(options).await;
    let url = format!("http://{api}/v1/conversations");
    (lp, url)
}

async fn post(url: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    wait::until("the relay's API", Duration::from_secs(30), || async {
        let r = client
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.unwrap_or_default()))
    })
    .await
}

async fn the_business_starts_a_conversation_and_the_reply_lands_in_it(aws: bool) {
    let (lp, url) = started(aws).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let ana = customer(40);
    let request = serde_json::json!({
        "customer": ana.as_str(),
        "content_sid": TEMPLATE,
        "variables": { "1": "Ana", "2": "1042" },
        "key": "order-1042-ready",
    });
    // Without the token, or with a malformed request, nothing happens.
    assert_eq!(post(&url, "wrong-token", request.clone()).await.0, 401);
    let mut bad = request.clone();
    bad["customer"] = "not-a-number".into();
    assert_eq!(post(&url, TOKEN, bad).await.0, 400);

    let (status, first) = post(&url, TOKEN, request.clone()).await;
    assert_eq!(status, 201, "{first}");
    let contact = first["contact_id"].as_str().unwrap().to_owned();
    // The same key again: the same conversation, nothing sent twice.
    let (status, again) = post(&url, TOKEN, request.clone()).await;
    assert_eq!((status, &again["contact_id"]), (200, &first["contact_id"]));

    let inbox = wait::until(
        "the template on the phone",
        Duration::from_secs(30),
        || async {
            let inbox = phone.inbox(ana.as_str()).await.ok()?;
            (!inbox.is_empty()).then_some(inbox)
        },
    )
    .await;
    assert_eq!(
        inbox[0].body,
        "Hello Ana, your order 1042 is ready. Reply here to talk to us."
    );
    assert_eq!(inbox[0].content_sid.as_deref(), Some(TEMPLATE));
    let chats = desk.chats(None).await.unwrap();
    assert_eq!(chats.len(), 1);
    assert_eq!(chats[0].attributes["InitiatedBy"], "business");
    let texts = desk.customer_texts(&contact).await.unwrap();
    assert_eq!(
        texts,
        [format!(
            "[waconnect notice - not from the customer] The business started this conversation on WhatsApp with template {TEMPLATE}:\nHello Ana, your order 1042 is ready. Reply here to talk to us."
        )]
    );

    // Another key while that chat is open: refused, naming the open chat.
    let mut other = request.clone();
    other["key"] = "order-1043-ready".into();
    let (status, refused) = post(&url, TOKEN, other).await;
    assert_eq!(
        (status, refused["contact_id"].as_str()),
        (409, Some(contact.as_str()))
    );

    // The customer answers: in that chat, not a new one.
    phone
        .text(ana.as_str(), "Great, I will pick it up")
        .await
        .unwrap();
    wait::until("the reply in the chat", Duration::from_secs(30), || async {
        let texts = desk.customer_texts(&contact).await.ok()?;
        texts
            .iter()
            .any(|t| t == "Great, I will pick it up")
            .then_some(())
    })
    .await;
    assert_eq!(desk.chats(None).await.unwrap().len(), 1);
    // The agent's answer reaches the phone through the chat the relay holds.
    desk.accept(&contact).await.unwrap();
    desk.send(&contact, "See you soon!").await.unwrap();
    wait::until(
        "the agent's reply on the phone",
        Duration::from_secs(30),
        || async {
            let inbox = phone.inbox(ana.as_str()).await.ok()?;
            inbox
                .iter()
                .any(|m| m.body == "See you soon!")
                .then_some(())
        },
    )
    .await;

    // The command does the same for another customer.
    let api = url.trim_end_matches("/v1/conversations").to_owned();
    let out = tokio::process::Command::new(binary("relay-worker"))
        .args([
            "start-conversation",
            "--customer",
            customer(41).as_str(),
            "--content-sid",
            TEMPLATE,
            "--var",
            "1=Ben",
            "--var",
            "2=77",
            "--key",
            "order-77-ready",
            "--api",
            &api,
        ])
        .env("WACONNECT_RELAY_API_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(printed["contact_id"].is_string(), "{printed}");
    wait::until("Ben's template", Duration::from_secs(30), || async {
        let inbox = phone.inbox(customer(41).as_str()).await.ok()?;
        inbox
            .iter()
            .any(|m| m.body.starts_with("Hello Ben, your order 77"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_the_business_starts_a_conversation_and_the_reply_lands_in_it() {
    the_business_starts_a_conversation_and_the_reply_lands_in_it(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aws_the_business_starts_a_conversation_and_the_reply_lands_in_it() {
    the_business_starts_a_conversation_and_the_reply_lands_in_it(true).await;
}
