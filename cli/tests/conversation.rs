//! `waconnect conversation show|release|end|erase` on both engines. `show`: the record as stored, the lease, a
//! record from before routing beside the pair's; never a token, never the number in clear.

use serde_json::Value;
use waconnect_shared::message::conversation::{Conversation, ConversationState};
use waconnect_shared::service::config::{CommonConfig, ConfigSource};
use waconnect_shared::storage::backend::Backend;
use waconnect_shared::{ConversationKey, Secret};
use waconnect_tests::moto::Moto;
use waconnect_tests::{BUSINESS, customer, key};

const WACONNECT: &str = env!("CARGO_BIN_EXE_waconnect");

async fn shows_what_the_store_holds(vars: Vec<(String, String)>) {
    let common = CommonConfig::read(&mut ConfigSource::from_pairs(vars.clone()).reader());
    let store = Backend::open(&common).await.unwrap().store().await.unwrap();
    let mut c = Conversation::new(key(7));
    c.state = ConversationState::Active;
    c.contact_id = Some("contact-7".into());
    c.connection_token = Some(Secret::new("connection-secret"));
    store.insert(&c).await.unwrap();
    store
        .acquire_lease(&key(7), "relay-a/1", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let mut old = Conversation::new(ConversationKey::legacy(customer(7)));
    old.contact_id = Some("contact-before".into());
    store.insert(&old).await.unwrap();

    let run = |args: &[&str]| {
        std::process::Command::new(WACONNECT)
            .args(["conversation", "show", "--customer", customer(7).as_str()])
            .args(args)
            .env_clear()
            .envs(vars.iter().cloned())
            .output()
            .unwrap()
    };
    let out = run(&["--business", BUSINESS, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("connection-secret"), "{printed}");
    assert!(!printed.contains("15550000007"), "{printed}");
    let shown: Vec<Value> = serde_json::from_str(&printed).unwrap();
    assert_eq!(shown.len(), 2, "{printed}");
    assert_eq!(shown[0]["state"], "active");
    assert_eq!(shown[0]["contact_id"], "contact-7");
    assert_eq!(shown[0]["lease_owner"], "relay-a/1");
    assert_eq!(shown[1]["contact_id"], "contact-before");
    assert_eq!(shown[1]["from_before_routing"], true);
    // For people, and the first route's sender when no number is named.
    let out = run(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("relay-a/1 until"),
        "{text}"
    );
    // Another number: no conversation with it (the legacy record still shows).
    let out = run(&["--business", "whatsapp:+442071838750", "--json"]);
    let shown: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown.len(), 1);
}

#[tokio::test]
async fn show_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("waconnect.db").display().to_string();
    shows_what_the_store_holds(vec![
        ("WACONNECT_SQLITE_PATH".into(), db),
        ("TWILIO_FROM".into(), BUSINESS.into()),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_on_aws() {
    let storage = Moto::shared().fresh("show", 5).await;
    let mut vars = Moto::env(&storage);
    vars.push(("TWILIO_FROM".into(), BUSINESS.into()));
    shows_what_the_store_holds(vars).await;
}

/// `release`, `end` and `erase` on the store alone (no relay runs): the socket is freed
/// from its holder, the chat is ended in the store, and erasing removes the customer's
/// record, message excerpts, the agent's files and dead letters — and nobody else's.
async fn releases_ends_and_erases(vars: Vec<(String, String)>) {
    use waconnect_shared::storage::message_index::{Author, IndexedMessage};
    use waconnect_shared::storage::queue::NewMessage;
    let common = CommonConfig::read(&mut ConfigSource::from_pairs(vars.clone()).reader());
    let backend = Backend::open(&common).await.unwrap();
    let store = backend.store().await.unwrap();
    for n in [7, 8] {
        let mut c = Conversation::new(key(n));
        c.state = ConversationState::Active;
        c.contact_id = Some(format!("contact-{n}"));
        store.insert(&c).await.unwrap();
    }
    let lease = store
        .acquire_lease(&key(7), "relay-a/1", std::time::Duration::from_secs(60))
        .await
        .unwrap();
    let index = backend.message_index().await.unwrap();
    for (n, sid) in [(7, "SM7a"), (7, "SM7b"), (8, "SM8a")] {
        index
            .remember(IndexedMessage::new(
                &key(n),
                sid,
                &format!("item-{sid}"),
                Author::Customer,
                "my card number is …",
            ))
            .await
            .unwrap();
    }
    let media = backend.media().await.unwrap().expect("a media store");
    let meta = waconnect_shared::storage::media::FileMeta {
        content_type: "application/pdf".into(),
        file_name: "statement.pdf".into(),
    };
    let prefix = |n| waconnect_shared::storage::media::conversation_prefix(&key(n));
    let files = [
        format!("{}agent-a.pdf", prefix(7)),
        format!("{}agent-b.pdf", prefix(8)),
    ];
    for f in &files {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"%PDF-1.4").unwrap();
        media.put(f, file.into_temp_path(), &meta).await.unwrap();
    }
    let inbound = backend.inbound().await.unwrap();
    for n in [7, 8] {
        inbound
            .send(NewMessage {
                group_id: key(n).storage(),
                dedup_id: format!("dead-{n}"),
                body: b"{}".to_vec(),
            })
            .await
            .unwrap();
        let got = inbound
            .receive(
                1,
                std::time::Duration::from_secs(30),
                std::time::Duration::from_secs(5),
            )
            .await
            .unwrap();
        inbound
            .dead_letter(&got[0].receipt, "refused")
            .await
            .unwrap();
    }

    let run = |args: &[&str]| {
        let out = std::process::Command::new(WACONNECT)
            .arg("conversation")
            .args(args)
            .args(["--customer", customer(7).as_str(), "--json"])
            .env_clear()
            .envs(vars.iter().cloned())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let released = run(&["release"]);
    assert_eq!(released[0]["held_by"], "relay-a/1", "{released}");
    // Its holder stops at its next renewal; the sweepers may take it now.
    assert!(
        store
            .renew_lease(&lease, std::time::Duration::from_secs(60))
            .await
            .is_err()
    );
    assert!(store.unheld(100).await.unwrap().contains(&key(7)));
    assert_eq!(run(&["release"]), serde_json::json!([]));

    // No relay holds it and it has no chat token: ended here, at once.
    let ended = run(&["end", "--wait", "30s"]);
    assert_eq!(ended[0]["ended_by"], "store", "{ended}");
    let record = store.get(&key(7)).await.unwrap().unwrap();
    assert_eq!(record.conversation.state, ConversationState::Ended);
    assert_eq!(run(&["end"])[0]["ended_by"], "already");

    // A live chat recorded before routing (keyed by the customer alone) is removed too.
    let mut old = Conversation::new(ConversationKey::legacy(customer(7)));
    old.state = ConversationState::Active;
    old.contact_id = Some("contact-before".into());
    store.insert(&old).await.unwrap();
    let erased = run(&["erase", "--yes"]);
    assert_eq!(
        erased,
        serde_json::json!({"records": 2, "messages": 2, "files": 1, "dead_letters": 1})
    );
    assert_eq!(store.get(&key(7)).await.unwrap(), None);
    assert_eq!(
        store
            .get(&ConversationKey::legacy(customer(7)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(index.by_sid("SM7a").await.unwrap(), None);
    assert!(!media.exists(&files[0]).await.unwrap());
    // Nobody else's.
    assert!(store.get(&key(8)).await.unwrap().is_some());
    assert!(index.by_sid("SM8a").await.unwrap().is_some());
    assert!(media.exists(&files[1]).await.unwrap());
    let left = inbound.dead_letters(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].group_id, key(8).storage());
}

#[tokio::test]
async fn release_end_erase_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("waconnect.db").display().to_string();
    releases_ends_and_erases(vec![
        ("WACONNECT_SQLITE_PATH".into(), db),
        ("TWILIO_FROM".into(), BUSINESS.into()),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_end_erase_on_aws() {
    let storage = Moto::shared().fresh("erase", 5).await;
    let mut vars = Moto::env(&storage);
    vars.push(("TWILIO_FROM".into(), BUSINESS.into()));
    releases_ends_and_erases(vars).await;
}
