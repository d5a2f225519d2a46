//! Every hop the bridge makes over TLS, as in production: the simulators serve HTTPS and
//! WSS with a test CA made at run time, and the services trust it through
//! `WACONNECT_EXTRA_CA_FILE` — the setting a TLS-inspecting proxy needs — never by turning
//! verification off. A relay that is not told of the CA reaches nothing.

use std::time::Duration;
use waconnect_sim::connect::SimOptions;
use waconnect_sim::twilio::TwilioOptions;
use waconnect_tests::full_loop::{FullLoop, LoopOptions};
use waconnect_tests::{customer, wait};

fn over_tls() -> LoopOptions {
    LoopOptions {
        connect: SimOptions {
            tls: true,
            ..SimOptions::default()
        },
        twilio: TwilioOptions {
            tls: true,
            ..TwilioOptions::default()
        },
        ..LoopOptions::default()
    }
}

/// A small, valid PDF.
fn pdf() -> Vec<u8> {
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
        .to_vec()
}

/// Text and files both ways: Connect's REST APIs, the participant websocket (wss), the
/// attachment upload and download URLs, Twilio's Messages API and its media URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_with_files_crosses_every_hop_over_tls() {
    let lp = FullLoop::start(over_tls()).await;
    assert!(lp.connect.endpoint().starts_with("https://"));
    assert!(lp.twilio.api_base().starts_with("https://"));
    let contact = lp.customers_write_and_agents_accept(1, 1).await.remove(0);
    let (phone, desk) = (lp.twilio.phone(), lp.connect.desk());
    let ana = customer(0);
    // The customer's file: fetched from Twilio (https), uploaded to Connect (https).
    wait::until(
        "ingress to take the file",
        Duration::from_secs(30),
        || async {
            let (_, status) = phone
                .send_file(ana.as_str(), pdf(), "application/pdf", "the invoice")
                .await
                .ok()?;
            (status == 200).then_some(())
        },
    )
    .await;
    wait::until("the file in the chat", Duration::from_secs(30), || async {
        let files = desk.customer_files(&contact).await.ok()?;
        (files.len() == 1 && files[0].1 == pdf()).then_some(())
    })
    .await;
    // The agent's text and file: over the websocket (wss), GetAttachment (https), then
    // Twilio's Messages API (https).
    desk.send(&contact, "over TLS").await.unwrap();
    desk.send_file(&contact, "Manual.pdf", "application/pdf", pdf(), "APPROVED")
        .await
        .unwrap();
    let inbox = wait::until("the agent's messages", Duration::from_secs(30), || async {
        let inbox = phone.inbox(ana.as_str()).await.ok()?;
        (inbox.len() >= 2).then_some(inbox)
    })
    .await;
    assert_eq!(inbox[0].body, "over TLS");
    // Twilio fetches a message's media after taking it.
    let bytes = wait::until(
        "Twilio to fetch the file",
        Duration::from_secs(30),
        || async { Some(phone.received_file(&inbox[1].sid, 0).await.ok()?.2) },
    )
    .await;
    assert_eq!(bytes, pdf());
}

/// Without the CA the relay trusts only the public roots: Connect's certificate is
/// refused (counted as a network error), and no chat starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_not_told_of_the_ca_refuses_the_certificate() {
    let mut options = over_tls();
    options.relay_vars = vec![("WACONNECT_EXTRA_CA_FILE", String::new())];
    let lp = FullLoop::start(options).await;
    let phone = lp.twilio.phone();
    wait::until(
        "ingress to take the webhook",
        Duration::from_secs(30),
        || async {
            let (_, status) = phone.text(customer(0).as_str(), "hello").await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await;
    wait::until(
        "the relay to count Connect's refused certificate",
        Duration::from_secs(30),
        || async {
            let text = lp.relay_metrics().await?;
            text.lines()
                .any(|l| {
                    l.starts_with("waconnect_connect_errors_total")
                        && l.contains("operation=\"StartChatContact\"")
                        && l.contains("kind=\"network\"")
                })
                .then_some(())
        },
    )
    .await;
    assert!(lp.connect.desk().chats(None).await.unwrap().is_empty());
}
