//! `waconnect dlq` on both engines: `list` and `show` give each dead letter with its
//! reason, its conversation masked and its trace id (never its body in a list; one
//! letter's body on request) and take nothing off; `redrive` puts the selected ones back
//! on their queue, `purge` deletes them, and neither acts on everything unless told.

use serde_json::Value;
use std::time::Duration;
use waconnect_shared::message::event::{EventKind, InboundEvent};
use waconnect_shared::service::config::{CommonConfig, ConfigSource};
use waconnect_shared::storage::backend::Backend;
use waconnect_shared::storage::queue::{NewMessage, Queue};
use waconnect_tests::moto::Moto;
use waconnect_tests::{customer, key, twilio};

const WACONNECT: &str = env!("CARGO_BIN_EXE_waconnect");

/// Sends `body` under `key`'s group and dead-letters it with `reason`.
async fn dead(queue: &dyn Queue, group: String, dedup: &str, body: Vec<u8>, reason: &str) {
    queue
        .send(NewMessage {
            group_id: group,
            dedup_id: dedup.into(),
            body,
        })
        .await
        .unwrap();
    let got = queue
        .receive(1, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    queue.dead_letter(&got[0].receipt, reason).await.unwrap();
}

async fn lists_and_shows(vars: Vec<(String, String)>) {
    let common = CommonConfig::read(&mut ConfigSource::from_pairs(vars.clone()).reader());
    let backend = Backend::open(&common).await.unwrap();
    let event = InboundEvent::new(
        EventKind::Message,
        twilio::incoming_text("SM5", customer(5).as_str(), "my secret words"),
    );
    let inbound = backend.inbound().await.unwrap();
    dead(
        inbound.as_ref(),
        key(5).storage(),
        "SM5",
        event.to_json(),
        "the chat refused it",
    )
    .await;
    let other = InboundEvent::new(
        EventKind::Message,
        twilio::incoming_text("SM6", customer(6).as_str(), "other words"),
    );
    dead(
        inbound.as_ref(),
        key(6).storage(),
        "SM6",
        other.to_json(),
        "undecodable",
    )
    .await;

    let run = |args: &[&str]| {
        std::process::Command::new(WACONNECT)
            .arg("dlq")
            .args(args)
            .env_clear()
            .envs(vars.iter().cloned())
            .output()
            .unwrap()
    };
    let out = run(&["list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("secret words"), "{printed}");
    assert!(!printed.contains("15550000005"), "{printed}");
    let letters: Vec<Value> = serde_json::from_str(&printed).unwrap();
    assert_eq!(letters.len(), 2, "{printed}");
    assert_eq!(letters[0]["queue"], "inbound");
    assert_eq!(letters[0]["reason"], "the chat refused it");
    assert_eq!(
        letters[0]["trace_id"],
        waconnect_shared::message::trace::of("SM5")
    );
    assert!(
        letters[0]["conversation"]
            .as_str()
            .unwrap()
            .contains("***0005")
    );

    let out = run(&["list", "--customer", customer(6).as_str(), "--json"]);
    let letters: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["reason"], "undecodable");
    let id = letters[0]["message_id"].as_str().unwrap().to_owned();
    let out = run(&["show", &id]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && shown.contains("other words"),
        "{shown}"
    );

    // Nothing was taken off: both are still there.
    assert_eq!(inbound.dead_letters(10).await.unwrap().len(), 2);

    // Redrive and purge name what they act on.
    let out = run(&["redrive"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--all"),
        "{out:?}"
    );
    let out = run(&["redrive", "--older-than", "1h", "--json"]);
    let none: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success() && none.is_empty(), "{out:?}");
    let out = run(&["redrive", "--customer", customer(5).as_str(), "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 dead letter(s) would be redriven"),
        "{out:?}"
    );
    assert_eq!(inbound.dead_letters(10).await.unwrap().len(), 2);
    let out = run(&["redrive", "--customer", customer(5).as_str(), "--json"]);
    let redriven: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(redriven.len(), 1, "{out:?}");
    assert_eq!(redriven[0]["reason"], "the chat refused it");
    // Back on the queue, in its conversation's group, to be handled again.
    let back = inbound
        .receive(1, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].group_id, key(5).storage());
    assert_eq!(back[0].body, event.to_json());
    inbound.delete(&back[0].receipt).await.unwrap();
    let out = run(&["purge", "--id", &id]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 dead letter(s) purged"),
        "{out:?}"
    );
    assert!(inbound.dead_letters(10).await.unwrap().is_empty());
    let nothing = inbound
        .receive(1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    assert!(nothing.is_empty(), "a purged letter came back: {nothing:?}");
}

#[tokio::test]
async fn dlq_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("waconnect.db").display().to_string();
    lists_and_shows(vec![("WACONNECT_SQLITE_PATH".into(), db)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_on_aws() {
    let storage = Moto::shared().fresh("dlq", 5).await;
    lists_and_shows(Moto::env(&storage)).await;
}
