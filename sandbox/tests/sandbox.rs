//! The sandbox's whole loop through its own page API: the customer writes, the agent
//! accepts and replies, the customer reads, and the agent sees the receipts.

use serde_json::{Value, json};
use std::time::Duration;
use waconnect_sandbox::{Options, Sandbox};
use waconnect_shared::service::config::{LogFormat, TelemetryConfig};
use waconnect_tests::wait;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_to_agent_and_back_with_receipts() {
    let sandbox = Sandbox::start(Options {
        telemetry: TelemetryConfig {
            log_format: LogFormat::Json,
            log_filter: "warn".into(),
            traces: None,
        },
        sender_rate: 80,
        ..Options::headless(Vec::new())
    })
    .await
    .unwrap();
    let base = sandbox.url().to_owned();
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move { http.get(url).send().await.ok()?.json::<Value>().await.ok() }
    };
    let post = |path: &str, body: Value| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            http.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let page = http.get(&base).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("waconnect sandbox") && page.contains("phone-send"));

    let number = "whatsapp:+15551230009";
    let sent = post(
        "/api/phone/send",
        json!({ "from": number, "body": "hello" }),
    )
    .await;
    assert_eq!(sent["status"], 200, "ingress refused the webhook: {sent}");
    let contact = wait::until(
        "the chat to reach the agent",
        Duration::from_secs(20),
        || async {
            let chats = get("/api/agent/chats").await?;
            chats.as_array()?.first()?["contact_id"]
                .as_str()
                .map(str::to_owned)
        },
    )
    .await;
    post(&format!("/api/agent/chats/{contact}/accept"), json!({})).await;
    let reply = post(
        &format!("/api/agent/chats/{contact}/messages"),
        json!({ "content": "hi, how can I help?" }),
    )
    .await;
    let reply_id = reply["Id"].as_str().unwrap().to_owned();
    wait::until(
        "the reply on the phone",
        Duration::from_secs(20),
        || async {
            let inbox = get(&format!(
                "/api/phone/inbox?number={}",
                number.replace('+', "%2B")
            ))
            .await?;
            let first = inbox.as_array()?.first()?.clone();
            (first["body"] == "hi, how can I help?" && first["status"] == "delivered").then_some(())
        },
    )
    .await;
    post("/api/phone/read", json!({ "number": number })).await;
    wait::until(
        "the read receipt at the agent",
        Duration::from_secs(20),
        || async {
            let items = get(&format!("/api/agent/chats/{contact}/transcript")).await?;
            items
                .as_array()?
                .iter()
                .any(|i| {
                    i["Id"] == reply_id.as_str()
                        && i["MessageMetadata"]["Receipts"][0]["ReadTimestamp"].is_string()
                })
                .then_some(())
        },
    )
    .await;
    let stats = get("/api/stats").await.unwrap();
    assert_eq!(stats["chats"]["active"], 1);
    sandbox.stop().await;
}
