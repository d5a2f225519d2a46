//! The conversation-store contract (see `waconnect_shared::storage::store`).

use crate::engines::StoreEngine;
use crate::key;
use crate::wait;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Barrier;
use waconnect_shared::message::conversation::{AgentCursor, Conversation, ConversationState};
use waconnect_shared::storage::store::{ConversationStore, StoreError};
use waconnect_shared::{ConversationKey, Secret};

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(200);
const DEADLINE: Duration = Duration::from_secs(10);

fn conversation(i: usize) -> Conversation {
    let mut c = Conversation::new(key(i));
    c.contact_id = Some(format!("contact-{i}"));
    c.participant_token = Some(Secret::new(format!("ptoken-{i}")));
    c
}

async fn inserted(store: &dyn ConversationStore, i: usize) -> Conversation {
    let c = conversation(i);
    store.insert(&c).await.unwrap();
    c
}

/// Waits until `customer`'s lease has lapsed (by the store's own account).
async fn until_lapsed(store: &dyn ConversationStore, customer: &ConversationKey) {
    wait::until("the lease to lapse", DEADLINE, || async {
        let unheld = store.unheld(1000).await.unwrap();
        unheld.contains(customer).then_some(())
    })
    .await
}

pub async fn insert_get_round_trip(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    assert_eq!(store.get(&key(1)).await.unwrap(), None);
    let c = conversation(1);
    let stored = store.insert(&c).await.unwrap();
    assert_eq!(stored.conversation, c);
    assert_eq!(stored.version, 1);
    assert_eq!(stored.lease.owner, None);
    let got = store.get(&key(1)).await.unwrap().unwrap();
    assert_eq!(got, stored);
    assert_eq!(
        got.conversation.participant_token.unwrap().expose(),
        "ptoken-1"
    );
}

pub async fn insert_twice_is_refused(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    let first = inserted(store.as_ref(), 1).await;
    let mut rival = conversation(1);
    rival.contact_id = Some("another-contact".into());
    assert_eq!(store.insert(&rival).await, Err(StoreError::AlreadyExists));
    let kept = store.get(&key(1)).await.unwrap().unwrap();
    assert_eq!(kept.conversation, first, "the loser overwrote the winner");
}

pub async fn update_compares_the_version(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    let mut c = inserted(store.as_ref(), 1).await;
    c.state = ConversationState::Active;
    let v2 = store.update(&c, 1).await.unwrap();
    assert_eq!(v2.version, 2);
    let mut stale = c.clone();
    stale.state = ConversationState::Ended;
    assert_eq!(store.update(&stale, 1).await, Err(StoreError::Conflict));
    let now = store.get(&key(1)).await.unwrap().unwrap();
    assert_eq!(now.conversation.state, ConversationState::Active);
    assert_eq!(now.version, 2);
}

pub async fn update_of_a_missing_record_is_not_found(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    assert_eq!(
        store.update(&conversation(9), 1).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store.acquire_lease(&key(9), "w1", LONG).await,
        Err(StoreError::NotFound)
    );
}

pub async fn lease_is_exclusive_until_it_lapses(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    inserted(store.as_ref(), 1).await;
    let a = store
        .acquire_lease(&key(1), "worker-a", SHORT)
        .await
        .unwrap();
    assert_eq!(a.owner, "worker-a");
    assert_eq!(
        store.acquire_lease(&key(1), "worker-b", LONG).await,
        Err(StoreError::LeaseHeld)
    );
    // Not even the holder re-acquires a live lease: it renews.
    assert_eq!(
        store.acquire_lease(&key(1), "worker-a", LONG).await,
        Err(StoreError::LeaseHeld)
    );
    until_lapsed(store.as_ref(), &key(1)).await;
    let b = store
        .acquire_lease(&key(1), "worker-b", LONG)
        .await
        .unwrap();
    assert_eq!(b.owner, "worker-b");
    assert!(b.version > a.version, "fencing version did not rise");
    let seen = store.get(&key(1)).await.unwrap().unwrap().lease;
    assert_eq!(seen.owner.as_deref(), Some("worker-b"));
    assert_eq!(seen.version, b.version);
}

pub async fn many_tasks_race_for_a_lease_and_one_wins(e: &dyn StoreEngine, _: &Path) {
    const TASKS: usize = 24;
    let store = e.store().await;
    for round in 0..5 {
        inserted(store.as_ref(), round).await;
        let barrier = Arc::new(Barrier::new(TASKS));
        let racers: Vec<_> = (0..TASKS)
            .map(|t| {
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .acquire_lease(&key(round), &format!("task-{t}"), LONG)
                        .await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for r in racers {
            match r.await.unwrap() {
                Ok(lease) => winners.push(lease),
                Err(StoreError::LeaseHeld) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let held = store.get(&key(round)).await.unwrap().unwrap().lease;
        assert_eq!(held.owner.as_deref(), Some(winners[0].owner.as_str()));
    }
}

pub async fn two_processes_race_for_leases_and_one_wins_each(
    e: &dyn StoreEngine,
    contender: &Path,
) {
    const KEYS: usize = 60;
    let store = e.store().await;
    for i in 0..KEYS {
        inserted(store.as_ref(), i).await;
    }
    let mut children = Vec::new();
    for owner in ["process-a", "process-b"] {
        let mut child = tokio::process::Command::new(contender)
            .args(e.contender_args())
            .args(["--owner", owner, "--keys", &KEYS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn lease-contender");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next_line().await.unwrap();
        assert_eq!(ready.as_deref(), Some("ready"), "{owner} did not start");
        children.push((owner, child, lines));
    }
    // Both are connected and waiting; release them together.
    for (_, child, _) in &mut children {
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .await
            .unwrap();
    }
    let mut won: Vec<BTreeSet<usize>> = Vec::new();
    for (owner, mut child, mut lines) in children {
        let mut mine = BTreeSet::new();
        let mut answered = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            let (verdict, key) = line.split_once(' ').expect("verdict line");
            let key: usize = key.parse().unwrap();
            match verdict {
                "won" => assert!(mine.insert(key)),
                "lost" => {}
                other => panic!("{owner}: {other} {key}"),
            }
            answered += 1;
        }
        assert!(child.wait().await.unwrap().success(), "{owner} failed");
        assert_eq!(answered, KEYS, "{owner} did not try every key");
        won.push(mine);
    }
    assert!(
        won[0].is_disjoint(&won[1]),
        "both processes won {:?}",
        won[0].intersection(&won[1]).collect::<Vec<_>>()
    );
    assert_eq!(
        won[0].len() + won[1].len(),
        KEYS,
        "some lease had no winner"
    );
    for i in 0..KEYS {
        let owner = store
            .get(&key(i))
            .await
            .unwrap()
            .unwrap()
            .lease
            .owner
            .unwrap();
        let expected = if won[0].contains(&i) {
            "process-a"
        } else {
            "process-b"
        };
        assert_eq!(owner, expected, "key {i}");
    }
}

pub async fn stale_holder_is_refused_everything(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    let mut c = inserted(store.as_ref(), 1).await;
    let old = store
        .acquire_lease(&key(1), "worker-a", SHORT)
        .await
        .unwrap();
    until_lapsed(store.as_ref(), &key(1)).await;
    let new = store
        .acquire_lease(&key(1), "worker-b", LONG)
        .await
        .unwrap();
    assert_eq!(
        store.renew_lease(&old, LONG).await,
        Err(StoreError::LeaseLost)
    );
    assert_eq!(store.release_lease(&old).await, Err(StoreError::LeaseLost));
    c.state = ConversationState::Ended;
    assert_eq!(
        store.update_fenced(&c, 1, &old).await,
        Err(StoreError::LeaseLost)
    );
    let now = store.get(&key(1)).await.unwrap().unwrap();
    assert_eq!(now.lease.owner.as_deref(), Some("worker-b"));
    assert_eq!(now.lease.version, new.version);
    assert_ne!(now.conversation.state, ConversationState::Ended);
}

pub async fn renewal_extends_and_raises_the_fencing_version(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    inserted(store.as_ref(), 1).await;
    let first = store
        .acquire_lease(&key(1), "w", Duration::from_millis(500))
        .await
        .unwrap();
    let renewed = store.renew_lease(&first, LONG).await.unwrap();
    assert!(renewed.version > first.version);
    assert!(renewed.expires_at > first.expires_at);
    // The proof it returns is what the store now holds.
    let stored = store.get(&key(1)).await.unwrap().unwrap().lease;
    assert_eq!(stored.owner.as_deref(), Some("w"));
    assert_eq!(stored.version, renewed.version);
    assert_eq!(stored.expires_at, Some(renewed.expires_at));
    // The pre-renewal proof is stale now, even for the same owner.
    assert_eq!(
        store.renew_lease(&first, LONG).await,
        Err(StoreError::LeaseLost)
    );
    // Well past the original expiry, nobody can take it.
    let unheld = store.unheld(10).await.unwrap();
    assert!(unheld.is_empty(), "renewed lease listed as unheld");
    assert_eq!(
        store.acquire_lease(&key(1), "other", LONG).await,
        Err(StoreError::LeaseHeld)
    );
    store.renew_lease(&renewed, LONG).await.unwrap();
}

pub async fn renewals_in_a_batch_are_answered_each_in_order(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    let mut leases = Vec::new();
    for n in 1..=3 {
        inserted(store.as_ref(), n).await;
        leases.push(store.acquire_lease(&key(n), "w", LONG).await.unwrap());
    }
    // The second lease is stale (renewed since), the third's record is gone.
    let current = store.renew_lease(&leases[1], LONG).await.unwrap();
    assert!(store.erase(&key(3)).await.unwrap());
    let answers = store.renew_leases(&leases, LONG).await;
    assert_eq!(answers.len(), 3);
    let first = answers[0].clone().unwrap();
    assert!(first.version > leases[0].version);
    let stored = store.get(&key(1)).await.unwrap().unwrap().lease;
    assert_eq!(
        (stored.version, stored.expires_at),
        (first.version, Some(first.expires_at))
    );
    assert_eq!(answers[1], Err(StoreError::LeaseLost));
    assert_eq!(answers[2], Err(StoreError::NotFound));
    // The refused one was left as it was.
    let second = store.get(&key(2)).await.unwrap().unwrap().lease;
    assert_eq!(second.version, current.version);
    assert!(store.renew_leases(&[], LONG).await.is_empty());
}

pub async fn release_frees_the_conversation_at_once(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    inserted(store.as_ref(), 1).await;
    let lease = store.acquire_lease(&key(1), "leaving", LONG).await.unwrap();
    store.release_lease(&lease).await.unwrap();
    assert_eq!(store.unheld(10).await.unwrap(), [key(1)]);
    let released_now = store.get(&key(1)).await.unwrap().unwrap();
    assert_eq!(released_now.lease.owner, None);
    let adopted = store.acquire_lease(&key(1), "adopter", LONG).await.unwrap();
    assert!(adopted.version > lease.version);
    assert_eq!(
        store.release_lease(&lease).await,
        Err(StoreError::LeaseLost)
    );
}

pub async fn unheld_lists_lapsed_and_released_live_conversations(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    for i in 0..5 {
        inserted(store.as_ref(), i).await;
    }
    // 0: held for long; 1: lapses; 2: ended and lapsed; 3: never leased; 4: released.
    store.acquire_lease(&key(0), "w", LONG).await.unwrap();
    store.acquire_lease(&key(1), "w", SHORT).await.unwrap();
    let ended = store.acquire_lease(&key(2), "w", SHORT).await.unwrap();
    let mut c2 = conversation(2);
    c2.state = ConversationState::Ended;
    store.update_fenced(&c2, 1, &ended).await.unwrap();
    let released = store.acquire_lease(&key(4), "w", LONG).await.unwrap();
    store.release_lease(&released).await.unwrap();
    until_lapsed(store.as_ref(), &key(1)).await;
    let listed: BTreeSet<String> = store
        .unheld(100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.storage().to_owned())
        .collect();
    let expected: BTreeSet<String> = [1, 3, 4]
        .iter()
        .map(|&i| key(i).storage().to_owned())
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(store.unheld(2).await.unwrap().len(), 2, "limit ignored");
}

pub async fn fenced_update_needs_the_current_lease(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    let mut c = inserted(store.as_ref(), 1).await;
    let lease = store.acquire_lease(&key(1), "w", LONG).await.unwrap();
    c.agent_cursor = Some(AgentCursor {
        id: "item-7".into(),
        absolute_time: "2026-11-24T10:00:00.000Z".into(),
        contact_id: Some("contact-1".into()),
    });
    let stored = store.update_fenced(&c, 1, &lease).await.unwrap();
    assert_eq!(stored.conversation.agent_cursor, c.agent_cursor);
    assert_eq!(stored.version, 2);
    // The holder's copy is stale once someone else wrote the record: it must re-read.
    assert_eq!(
        store.update_fenced(&c, 1, &lease).await,
        Err(StoreError::Conflict)
    );
    let renewed = store.renew_lease(&lease, LONG).await.unwrap();
    // A lost lease is reported as such even when the version is stale as well.
    for version in [1, 2] {
        assert_eq!(
            store.update_fenced(&c, version, &lease).await,
            Err(StoreError::LeaseLost)
        );
    }
    let stored = store.update_fenced(&c, 2, &renewed).await.unwrap();
    assert_eq!(stored.version, 3);
    let mut other = conversation(2);
    store.insert(&other).await.unwrap();
    other.state = ConversationState::Active;
    assert!(matches!(
        store.update_fenced(&other, 1, &renewed).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

pub async fn lease_changes_and_data_writes_do_not_interfere(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    let mut c = inserted(store.as_ref(), 1).await;
    let lease = store.acquire_lease(&key(1), "w", LONG).await.unwrap();
    let renewed = store.renew_lease(&lease, LONG).await.unwrap();
    // A worker that read version 1 before the lease moved can still write its data.
    c.last_inbound_message_sid = Some("SM42".into());
    let stored = store.update(&c, 1).await.unwrap();
    assert_eq!(stored.version, 2);
    // And the data write left the lease alone.
    assert_eq!(stored.lease.owner.as_deref(), Some("w"));
    assert_eq!(stored.lease.version, renewed.version);
    store.renew_lease(&renewed, LONG).await.unwrap();
}

/// An ended conversation is deleted once its `ttl` passed — by the engine's own expiry
/// (DynamoDB's TTL, so the record carries a past `ttl`) or by `prune_expired` — and never
/// a live one, one whose `ttl` is still ahead, or one a worker holds.
pub async fn ended_conversations_expire_after_their_retention(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    let past = chrono::Utc::now().timestamp() - 10;
    let ended = |i: usize, ttl: i64| {
        let mut c = conversation(i);
        c.end(Duration::ZERO);
        c.ttl = Some(ttl);
        c
    };
    for c in [
        ended(1, past),
        ended(2, past + 3600),
        conversation(3),
        ended(4, past),
    ] {
        store.insert(&c).await.unwrap();
    }
    let held = store.acquire_lease(&key(4), "w", LONG).await.unwrap();
    let pruned = store.prune_expired().await.unwrap();
    let expired = store.get(&key(1)).await.unwrap();
    if e.expires_itself() {
        assert_eq!(pruned, 0);
        let ttl = expired
            .expect("left to the engine's expiry")
            .conversation
            .ttl;
        assert!(ttl.is_some_and(|t| t <= past), "ttl {ttl:?}");
    } else {
        assert_eq!(pruned, 1);
        assert!(expired.is_none(), "an expired conversation was kept");
    }
    for kept in [2, 3, 4] {
        assert!(
            store.get(&key(kept)).await.unwrap().is_some(),
            "conversation {kept} was deleted"
        );
    }
    store.release_lease(&held).await.unwrap();
}

/// A worker that restarts under the same identity finds the leases its earlier life held
/// and takes them back at once, though they have not lapsed; the earlier life's proof is
/// stale from then on, and nobody else's lease can be taken that way.
pub async fn a_restarted_worker_takes_its_own_leases_back_at_once(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    for i in 1..=4 {
        inserted(store.as_ref(), i).await;
    }
    let before = store
        .acquire_lease(&key(1), "node-a/old", LONG)
        .await
        .unwrap();
    store
        .acquire_lease(&key(2), "node-a/old", LONG)
        .await
        .unwrap();
    store
        .acquire_lease(&key(3), "node-b/x", LONG)
        .await
        .unwrap();
    // 4: never leased.
    let mut mine = store.held_by("node-a/", 100).await.unwrap();
    mine.sort_by_key(ConversationKey::storage);
    assert_eq!(mine, [key(1), key(2)]);
    let back = store
        .take_over(&key(1), "node-a/", "node-a/new", LONG)
        .await
        .unwrap();
    assert_eq!(back.owner, "node-a/new");
    assert!(back.version > before.version);
    assert_eq!(
        store.renew_lease(&before, LONG).await,
        Err(StoreError::LeaseLost)
    );
    assert_eq!(
        store
            .take_over(&key(3), "node-a/", "node-a/new", LONG)
            .await,
        Err(StoreError::LeaseHeld)
    );
    // Free ones are taken as acquire_lease would; a missing one is not found.
    store
        .take_over(&key(4), "node-a/", "node-a/new", LONG)
        .await
        .unwrap();
    assert_eq!(
        store
            .take_over(&key(9), "node-a/", "node-a/new", LONG)
            .await,
        Err(StoreError::NotFound)
    );
    assert!(matches!(
        store.held_by("", 10).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

pub async fn one_customer_with_two_numbers_has_two_conversations(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    let other = ConversationKey::new(
        waconnect_shared::BusinessNumber::parse("whatsapp:+442071838750").unwrap(),
        key(1).customer,
    );
    inserted(store.as_ref(), 1).await;
    let mut second = Conversation::new(other.clone());
    second.contact_id = Some("contact-other".into());
    store.insert(&second).await.unwrap();
    assert_eq!(
        store
            .get(&other)
            .await
            .unwrap()
            .unwrap()
            .conversation
            .contact_id
            .as_deref(),
        Some("contact-other")
    );
    assert_eq!(
        store
            .get(&key(1))
            .await
            .unwrap()
            .unwrap()
            .conversation
            .contact_id
            .as_deref(),
        Some("contact-1")
    );
    // Their leases are independent: two workers may hold them at once.
    let a = store
        .acquire_lease(&key(1), "worker-a", LONG)
        .await
        .unwrap();
    let b = store.acquire_lease(&other, "worker-b", LONG).await.unwrap();
    assert_eq!((a.key.clone(), b.key.clone()), (key(1), other.clone()));
    // Ending one leaves the other live.
    let mut ended = second.clone();
    ended.state = ConversationState::Ended;
    store.update_fenced(&ended, 1, &b).await.unwrap();
    store.release_lease(&b).await.unwrap();
    store.release_lease(&a).await.unwrap();
    assert_eq!(store.unheld(10).await.unwrap(), [key(1)]);
}

/// A record as the bridge wrote it before several numbers were supported: keyed by the
/// customer alone, with no business number in it. Written here through the contract
/// (which stores a key without a business number exactly as that version did), then read,
/// leased, listed and changed as before.
pub async fn records_from_before_routing_keep_working(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    let legacy = ConversationKey::legacy(key(2).customer);
    let mut old = Conversation::new(legacy.clone());
    old.contact_id = Some("contact-old".into());
    store.insert(&old).await.unwrap();
    let got = store.get(&legacy).await.unwrap().unwrap();
    assert_eq!(got.conversation.business, None);
    assert_eq!(got.conversation.key(), legacy);
    // Not the pair's record: the pair is another key.
    assert_eq!(store.get(&key(2)).await.unwrap(), None);
    assert_eq!(
        store.unheld(10).await.unwrap(),
        std::slice::from_ref(&legacy)
    );
    let lease = store
        .acquire_lease(&legacy, "worker-a", LONG)
        .await
        .unwrap();
    assert_eq!(lease.key, legacy);
    let mut moved = got.conversation.clone();
    moved.last_inbound_message_sid = Some("SM1".into());
    let written = store
        .update_fenced(&moved, got.version, &lease)
        .await
        .unwrap();
    assert_eq!(
        written.conversation.last_inbound_message_sid.as_deref(),
        Some("SM1")
    );
    assert_eq!(store.held_by("worker-a", 10).await.unwrap(), [legacy]);
}

/// An erased record is gone whatever held it: its holder's renewal fails, the sweepers do
/// not list it, other conversations stay; erasing nothing says so.
pub async fn an_erased_record_is_gone_and_its_holder_stops(e: &dyn StoreEngine, _: &Path) {
    let store = e.store().await;
    inserted(store.as_ref(), 1).await;
    inserted(store.as_ref(), 2).await;
    let lease = store.acquire_lease(&key(1), "w1", LONG).await.unwrap();
    assert!(store.erase(&key(1)).await.unwrap());
    assert_eq!(store.get(&key(1)).await.unwrap(), None);
    assert!(
        matches!(
            store.renew_lease(&lease, LONG).await,
            Err(StoreError::LeaseLost | StoreError::NotFound)
        ),
        "a holder of an erased record must stop"
    );
    assert!(!store.unheld(1000).await.unwrap().contains(&key(1)));
    assert!(store.get(&key(2)).await.unwrap().is_some());
    assert!(!store.erase(&key(1)).await.unwrap());
}
