//! `waconnect` as operators run it: `serve` carries a conversation both ways in one
//! process, names every bad variable at once, and stops cleanly on SIGTERM; every command
//! has its help and the shells their completions.

mod common;

use common::{Sims, WACONNECT};
use std::process::Stdio;
use std::time::Duration;
use waconnect_sim::connect::SimOptions;
use waconnect_tests::{customer, wait};

const CLOSING: &str = "Thanks for writing; this chat has ended.";

/// ... and the operator's `conversation end` and `erase` act on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_carries_a_conversation_both_ways_in_one_process() {
    let sims = Sims::start(SimOptions::default()).await;
    let mut vars = sims.vars();
    vars.push(("WACONNECT_RELAY_CLOSING_TEXT".into(), CLOSING.into()));
    let mut serve = common::serve(vars.clone(), Stdio::null());

    let (phone, desk) = (sims.twilio.phone(), sims.connect.desk());
    let ana = customer(1);
    wait::until(
        "serve to take the webhook",
        Duration::from_secs(30),
        || async {
            let (_, status) = phone.text(ana.as_str(), "hello from one box").await.ok()?;
            (status == 200).then_some(())
        },
    )
    .await;
    let contact = wait::until("the chat", Duration::from_secs(30), || async {
        let chat = desk.chats(None).await.ok()?.into_iter().next()?;
        let texts = desk.customer_texts(&chat.contact_id).await.ok()?;
        (texts == ["hello from one box"]).then_some(chat.contact_id)
    })
    .await;
    desk.accept(&contact).await.unwrap();
    wait::until("the chat held", Duration::from_secs(30), || async {
        (desk.stats().await.ok()?.sockets >= 1).then_some(())
    })
    .await;
    desk.send(&contact, "one process, both ways").await.unwrap();
    wait::until(
        "the reply on the phone",
        Duration::from_secs(30),
        || async {
            let inbox = phone.inbox(ana.as_str()).await.ok()?;
            inbox
                .iter()
                .any(|m| m.body == "one process, both ways" && m.status == "read")
                .then_some(())
        },
    )
    .await;

    // The operator ends the chat: the customer leaves it in Connect, the relay in `serve`
    // ends the conversation as any ended chat, closing text included.
    let conversation = |args: &[&str]| {
        std::process::Command::new(WACONNECT)
            .arg("conversation")
            .args(args)
            .args(["--customer", ana.as_str(), "--json"])
            .env_clear()
            .envs(vars.iter().cloned())
            .output()
            .unwrap()
    };
    let out = conversation(&["end"]);
    assert!(out.status.success(), "{out:?}");
    let ended: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ended[0]["ended_by"], "relay", "{ended}");
    assert_eq!(ended[0]["contact_id"], contact.as_str());
    let items = desk.transcript(&contact).await.unwrap();
    assert!(
        items
            .iter()
            .any(|e| e.participant_role.as_deref() == Some("CUSTOMER")
                && e.content_type == "application/vnd.amazonaws.connect.event.participant.left"),
        "{items:?}"
    );
    wait::until("the closing text", Duration::from_secs(30), || async {
        let inbox = phone.inbox(ana.as_str()).await.ok()?;
        inbox.iter().any(|m| m.body == CLOSING).then_some(())
    })
    .await;

    // Then erases what the bridge holds of the customer.
    let out = conversation(&["erase"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{out:?}"
    );
    let out = conversation(&["erase", "--yes"]);
    assert!(out.status.success(), "{out:?}");
    let erased: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(erased["records"], 1, "{erased}");
    // The customer's message, the agent's reply and the closing text.
    assert!(erased["messages"].as_u64().unwrap() >= 2, "{erased}");
    let out = conversation(&["show"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown, serde_json::json!([]));

    // SIGTERM stops all three, cleanly.
    let pid = serve.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(20), serve.wait())
        .await
        .expect("serve stops within its grace")
        .unwrap();
    assert!(exited.success(), "{exited}");
}

#[test]
fn serve_names_every_bad_variable_at_once() {
    let out = std::process::Command::new(WACONNECT)
        .arg("serve")
        .env_clear()
        .env("WACONNECT_SQLITE_PATH", "/nonexistent/waconnect.db")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    for variable in [
        "TWILIO_AUTH_TOKEN",
        "WACONNECT_PUBLIC_BASE_URL",
        "WACONNECT_CONNECT_INSTANCE_ID",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_FROM",
    ] {
        assert!(said.contains(variable), "{variable} not named:\n{said}");
    }
}

#[test]
fn every_command_has_help_and_the_shells_have_completions() {
    for command in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["ingress", "--help"],
        vec!["relay", "--help"],
        vec!["sender", "--help"],
        vec!["sandbox", "--help"],
        vec!["conversation", "start", "--help"],
        vec!["conversation", "release", "--help"],
        vec!["conversation", "end", "--help"],
        vec!["conversation", "erase", "--help"],
        vec!["dlq", "redrive", "--help"],
        vec!["dlq", "purge", "--help"],
        vec!["completions", "--help"],
    ] {
        let out = std::process::Command::new(WACONNECT)
            .args(&command)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && help.contains("Usage: waconnect"),
            "{command:?}: {help}"
        );
    }
    let out = std::process::Command::new(WACONNECT)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && script.contains("serve") && script.contains("conversation"));
}

/// One id follows each message through every service's log lines: a customer's message
/// through ingress and the relay, an agent's reply through the relay and the sender; and
/// no line shows the customer's number in clear. With an OTLP endpoint set, the same
/// hops reach the collector as spans of one trace per message, under that same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_id_follows_each_message_through_the_services() {
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncBufReadExt;
    let sims = Sims::start(SimOptions::default()).await;
    let collector = common::Collector::start().await;
    let mut vars = sims.vars();
    vars.extend(waconnect_sim::wiring::pairs(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=k-123"),
        // The SDK's batch delay, short for the test (its default is 5 s).
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]));
    vars.retain(|(k, _)| k != "RUST_LOG");
    vars.push((
        "RUST_LOG".into(),
        "warn,waconnect_ingress=debug,waconnect_relay_worker=debug,waconnect_outbound_sender=debug"
            .into(),
    ));
    vars.push(("WACONNECT_LOG_FORMAT".into(), "json".into()));
    let mut serve = common::serve(vars, Stdio::piped());
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut reader = tokio::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let kept = lines.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });

    let (phone, desk) = (sims.twilio.phone(), sims.connect.desk());
    let ana = customer(3);
    let sid = wait::until(
        "serve to take the webhook",
        Duration::from_secs(30),
        || async {
            let (sid, status) = phone.text(ana.as_str(), "follow me").await.ok()?;
            (status == 200).then_some(sid)
        },
    )
    .await;
    let contact = wait::until("the chat", Duration::from_secs(30), || async {
        let chat = desk.chats(None).await.ok()?.into_iter().next()?;
        Some(chat.contact_id)
    })
    .await;
    desk.accept(&contact).await.unwrap();
    wait::until("the chat held", Duration::from_secs(30), || async {
        (desk.stats().await.ok()?.sockets >= 1).then_some(())
    })
    .await;
    let reply = desk.send(&contact, "followed").await.unwrap();

    // A trace id's lines, by the service that wrote them.
    let services_with = |trace: String| {
        let lines = lines.clone();
        move || {
            let lines = lines.lock().unwrap();
            let mut services: Vec<&str> = [
                "waconnect_ingress",
                "waconnect_relay_worker",
                "waconnect_outbound_sender",
            ]
            .into_iter()
            .filter(|service| {
                lines
                    .iter()
                    .any(|l| l.contains(&trace) && l.contains(&format!("\"target\":\"{service}")))
            })
            .collect();
            services.sort_unstable();
            services
        }
    };
    let inbound = services_with(waconnect_shared::message::trace::of(&sid));
    wait::until(
        "the customer message's trace",
        Duration::from_secs(30),
        || async { (inbound() == ["waconnect_ingress", "waconnect_relay_worker"]).then_some(()) },
    )
    .await;
    let outbound = services_with(waconnect_shared::message::trace::of(&reply.id));
    wait::until(
        "the agent reply's trace",
        Duration::from_secs(30),
        || async {
            (outbound() == ["waconnect_outbound_sender", "waconnect_relay_worker"]).then_some(())
        },
    )
    .await;
    // The same hops as spans, each message's in its own trace: the trace id is the one
    // in the logs, and every hop's parent is the message, named alike by each service.
    let customer_trace = waconnect_shared::message::trace::of(&sid);
    let reply_trace = waconnect_shared::message::trace::of(&reply.id);
    // The reply's delivery receipts come back through ingress and the relay in its trace.
    wait::until("both messages' spans", Duration::from_secs(30), || async {
        (collector.names_in(&customer_trace) == ["inbound", "webhook"]
            && collector.names_in(&reply_trace) == ["agent_item", "inbound", "outbound", "webhook"])
        .then_some(())
    })
    .await;
    {
        let spans = collector.spans.lock().unwrap();
        for trace in [&customer_trace, &reply_trace] {
            let parents: std::collections::BTreeSet<&str> = spans
                .iter()
                .filter(|s| &s.trace_id == trace)
                .map(|s| s.parent_span_id.as_str())
                .collect();
            assert_eq!(parents.len(), 1, "{spans:?}");
            assert_eq!(parents.first().copied(), Some(&trace[16..]));
        }
        assert!(spans.iter().all(|s| s.service == "waconnect"), "{spans:?}");
    }
    assert!(
        collector
            .headers
            .lock()
            .unwrap()
            .iter()
            .any(|(k, v)| k == "x-collector-key" && v == "k-123")
    );
    let number = ana.e164().trim_start_matches('+').to_owned();
    let shown: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&number))
        .cloned()
        .collect();
    assert!(shown.is_empty(), "the number in clear: {shown:?}");
}
