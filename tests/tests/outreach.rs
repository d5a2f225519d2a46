//! Conversations the business starts (docs/architecture.md §10), over the full loop of real
//! processes, on the embedded engine and on moto: the relay's API (bearer token) sends an
//! approved template to a customer who never wrote, opens the Connect chat with the
//! template's text for the agent, is idempotent on the caller's key, refuses a second
//! open chat, and the customer's reply lands in that chat. The command does the same.

use std::time::Duration;
use waconnect_sim::twilio::TwilioOptions;
use waconnect_tests::full_loop::{FullLoop, LoopOptions};
use waconnect_tests::processes::{binary, spawn};
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
            // A relay killed mid-start may have adopted the starting chat (its sweeper
            // runs every 300 ms here): its successor waits for that lease to lapse.
            // Short, so the answer is not held for the default 30 s.
            ("WACONNECT_RELAY_LEASE", "3s".into()),
            ("WACONNECT_RELAY_HEARTBEAT", "1s".into()),
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
    let out = tokio::process::Command::new(binary("waconnect"))
        .args([
            "conversation",
            "start",
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

/// The relay SIGKILLed while it starts a conversation (Connect answering slowly, so it dies
/// with the chat started and recorded but not connected): the caller repeats with the same key against the restarted relay and
/// gets one chat, with one notice, and one template on the phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_start_and_a_repeat_make_one_conversation() {
    let (mut lp, url) = started(false).await;
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let ben = customer(42);
    let request = serde_json::json!({
        "customer": ben.as_str(),
        "content_sid": TEMPLATE,
        "variables": { "1": "Ben", "2": "77" },
        "key": "order-77-ready",
    });
    // The API is up before the slow part begins.
    let mut bad = request.clone();
    bad["customer"] = "not-a-number".into();
    assert_eq!(post(&url, TOKEN, bad).await.0, 400);
    desk.delay(1500).await.unwrap();
    let first = tokio::spawn({
        let (url, request) = (url.clone(), request.clone());
        async move {
            reqwest::Client::new()
                .post(&url)
                .bearer_auth(TOKEN)
                .json(&request)
                .send()
                .await
        }
    });
    // Killed once the chat is started and recorded, while its connection is being made.
    wait::until(
        "the chat being connected",
        Duration::from_secs(30),
        || async {
            let stats = desk.stats().await.ok()?;
            (stats.calls_to("CreateParticipantConnection") >= 1).then_some(())
        },
    )
    .await;
    lp.relay.start_kill().unwrap();
    lp.relay.wait().await.unwrap();
    assert!(
        first.await.unwrap().is_err(),
        "the relay died before answering"
    );
    desk.delay(0).await.unwrap();
    lp.relay = spawn("relay-worker", &lp.relay_vars);

    let (status, started) = post(&url, TOKEN, request).await;
    assert!(status == 201 || status == 200, "{status} {started}");
    let contact = started["contact_id"].as_str().unwrap().to_owned();
    let chats = desk.chats(None).await.unwrap();
    let ours: Vec<_> = chats
        .iter()
        .filter(|c| c.attributes.get("CustomerNumber").and_then(|v| v.as_str()) == Some(ben.e164()))
        .collect();
    assert_eq!(ours.len(), 1, "one chat for the key");
    assert_eq!(ours[0].contact_id, contact);
    assert_eq!(
        desk.customer_texts(&contact).await.unwrap().len(),
        1,
        "one notice"
    );
    // The agent answers after the template: by the time the answer is on the phone, a
    // second template would be too.
    desk.accept(&contact).await.unwrap();
    desk.send(&contact, "Your parcel is at the desk")
        .await
        .unwrap();
    let inbox = wait::until("the agent's answer", Duration::from_secs(30), || async {
        let inbox = phone.inbox(ben.as_str()).await.ok()?;
        inbox
            .iter()
            .any(|m| m.body == "Your parcel is at the desk")
            .then_some(inbox)
    })
    .await;
    let templates = inbox
        .iter()
        .filter(|m| m.content_sid.as_deref() == Some(TEMPLATE))
        .count();
    assert_eq!(templates, 1, "{inbox:?}");
}
