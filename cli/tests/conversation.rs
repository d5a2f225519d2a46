//! `waconnect conversation show` on both engines: the record as stored, the lease, a
//! record from before routing beside the pair's; never a token, never the number in clear.

use serde_json::Value;
use waconnect_shared::backend::Backend;
use waconnect_shared::config::{CommonConfig, ConfigSource};
use waconnect_shared::conversation::{Conversation, ConversationState};
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
