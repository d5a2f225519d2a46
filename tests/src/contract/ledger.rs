//! The delivery-ledger contract (see `waconnect_shared::storage::delivery`).

use crate::engines::LedgerEngine;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Barrier;
use waconnect_shared::storage::delivery::Claim;

fn key(i: usize) -> String {
    format!("item-{i}#0")
}

pub async fn first_claim_is_fresh_and_a_second_is_unknown_since_it(e: &dyn LedgerEngine) {
    let (ledger, _) = e.ledgers().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    assert!(matches!(
        ledger.claim(&key(1)).await.unwrap(),
        Claim::Fresh { .. }
    ));
    match ledger.claim(&key(1)).await.unwrap() {
        Claim::Unknown { since } => {
            assert!(
                since >= before && since <= chrono::Utc::now(),
                "claimed at {since}"
            );
        }
        other => panic!("a second claim must report the first, got {other:?}"),
    }
    // Keys are independent.
    assert!(matches!(
        ledger.claim(&key(2)).await.unwrap(),
        Claim::Fresh { .. }
    ));
}

/// Renewing fences a claim: of a stalled sender and the delivery that found its claim too
/// old, only the one whose renewal lands first may post.
pub async fn a_claim_renewed_by_another_delivery_is_no_longer_ours(e: &dyn LedgerEngine) {
    let (ledger, other) = e.ledgers().await;
    let Claim::Fresh { since: mine } = ledger.claim(&key(1)).await.unwrap() else {
        panic!("a first claim is fresh");
    };
    let renewed = ledger
        .renew(&key(1), mine)
        .await
        .unwrap()
        .expect("still ours");
    assert!(renewed > mine, "{renewed} after {mine}");
    // The old claim time no longer names the claim.
    assert_eq!(ledger.renew(&key(1), mine).await.unwrap(), None);
    // Another delivery finds the claim and takes it over: the first cannot renew it.
    let Claim::Unknown { since } = other.claim(&key(1)).await.unwrap() else {
        panic!("a second claim reports the first");
    };
    assert_eq!(since, renewed);
    let theirs = other
        .renew(&key(1), since)
        .await
        .unwrap()
        .expect("taken over");
    assert_eq!(ledger.renew(&key(1), renewed).await.unwrap(), None);
    // Nor can anyone once the part is recorded, or released.
    other.sent(&key(1), "SM1").await.unwrap();
    assert_eq!(other.renew(&key(1), theirs).await.unwrap(), None);
    let Claim::Fresh { since } = ledger.claim(&key(2)).await.unwrap() else {
        panic!("keys are independent");
    };
    ledger.release(&key(2)).await.unwrap();
    assert_eq!(ledger.renew(&key(2), since).await.unwrap(), None);
}

pub async fn a_sent_part_is_reported_with_its_sid(e: &dyn LedgerEngine) {
    let (ledger, other) = e.ledgers().await;
    assert!(matches!(
        ledger.claim(&key(1)).await.unwrap(),
        Claim::Fresh { .. }
    ));
    ledger.sent(&key(1), "SM1").await.unwrap();
    let sent = Claim::Sent { sid: "SM1".into() };
    assert_eq!(ledger.claim(&key(1)).await.unwrap(), sent);
    // Another process sees it too.
    assert_eq!(other.claim(&key(1)).await.unwrap(), sent);
}

pub async fn an_outcome_is_read_without_claiming(e: &dyn LedgerEngine) {
    let (ledger, other) = e.ledgers().await;
    assert_eq!(ledger.outcome(&key(1)).await.unwrap(), None);
    // Reading claims nothing: the first claim is still fresh.
    assert!(matches!(
        ledger.claim(&key(1)).await.unwrap(),
        Claim::Fresh { .. }
    ));
    assert_eq!(ledger.outcome(&key(1)).await.unwrap(), None, "claimed only");
    ledger.sent(&key(1), "withheld").await.unwrap();
    assert_eq!(
        other.outcome(&key(1)).await.unwrap().as_deref(),
        Some("withheld")
    );
    // An outcome recorded without a claim reads the same.
    ledger.sent(&key(2), "SM2").await.unwrap();
    assert_eq!(
        ledger.outcome(&key(2)).await.unwrap().as_deref(),
        Some("SM2")
    );
}

pub async fn release_forgets_an_unsent_claim_only(e: &dyn LedgerEngine) {
    let (ledger, _) = e.ledgers().await;
    ledger.claim(&key(1)).await.unwrap();
    ledger.release(&key(1)).await.unwrap();
    assert!(matches!(
        ledger.claim(&key(1)).await.unwrap(),
        Claim::Fresh { .. }
    ));

    ledger.claim(&key(2)).await.unwrap();
    ledger.sent(&key(2), "SM2").await.unwrap();
    ledger.release(&key(2)).await.unwrap();
    assert_eq!(
        ledger.claim(&key(2)).await.unwrap(),
        Claim::Sent { sid: "SM2".into() }
    );
}

pub async fn racing_claims_have_exactly_one_fresh_winner(e: &dyn LedgerEngine) {
    let (a, b) = e.ledgers().await;
    const RACERS: usize = 16;
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let ledger = if i % 2 == 0 { a.clone() } else { b.clone() };
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                ledger.claim(&key(7)).await.unwrap()
            })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        match t.await.unwrap() {
            Claim::Fresh { .. } => fresh += 1,
            Claim::Unknown { .. } => {}
            Claim::Sent { .. } => panic!("nothing was sent"),
        }
    }
    assert_eq!(fresh, 1, "exactly one racer may send");
}

/// Outcomes recorded at once (an engine may batch them) are each kept, with their own sid.
pub async fn many_outcomes_at_once_are_all_kept(e: &dyn LedgerEngine) {
    let (ledger, _) = e.ledgers().await;
    const PARTS: usize = 60;
    for i in 0..PARTS {
        assert!(matches!(
            ledger.claim(&key(i)).await.unwrap(),
            Claim::Fresh { .. }
        ));
    }
    let writes = (0..PARTS).map(|i| {
        let ledger = ledger.clone();
        async move { ledger.sent(&key(i), &format!("SM{i}")).await }
    });
    for result in futures_util::future::join_all(writes).await {
        result.unwrap();
    }
    let mut sids = HashSet::new();
    for i in 0..PARTS {
        match ledger.claim(&key(i)).await.unwrap() {
            Claim::Sent { sid } => {
                assert_eq!(sid, format!("SM{i}"));
                sids.insert(sid);
            }
            other => panic!("part {i}: {other:?}"),
        }
    }
    assert_eq!(sids.len(), PARTS);
}

/// Entries older than the retention are deleted — by `prune`, or by the engine's own
/// expiry (DynamoDB's TTL) — and younger ones are kept.
pub async fn old_entries_are_pruned(e: &dyn LedgerEngine) {
    let (ledger, _) = e.ledgers().await;
    assert!(matches!(
        ledger.claim(&key(1)).await.unwrap(),
        Claim::Fresh { .. }
    ));
    ledger.sent(&key(2), "SM2").await.unwrap();
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(ledger.prune(hour_ago).await.unwrap(), 0);
    assert_eq!(
        ledger.claim(&key(2)).await.unwrap(),
        Claim::Sent { sid: "SM2".into() }
    );
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    let pruned = ledger.prune(later).await.unwrap();
    if e.expires_itself() {
        assert_eq!(pruned, 0);
    } else {
        assert_eq!(pruned, 2);
        assert!(matches!(
            ledger.claim(&key(2)).await.unwrap(),
            Claim::Fresh { .. }
        ));
    }
}

/// A Twilio SID recorded for one part is known as that part's, so it can never prove
/// that another part (the same text sent twice) was sent, and does prove its own.
pub async fn a_recorded_sid_is_known_as_owned(e: &dyn LedgerEngine) {
    let (ledger, other) = e.ledgers().await;
    let first = "SM0123456789abcdef0123456789abcdef".to_owned();
    let unknown = "SMfedcba9876543210fedcba9876543210".to_owned();
    ledger.claim(&key(1)).await.unwrap();
    ledger.sent(&key(1), &first).await.unwrap();
    let owned = other
        .owned(&[first.clone(), unknown.clone()])
        .await
        .unwrap();
    assert_eq!(owned, HashMap::from([(first, key(1))]));
    assert!(other.owned(&[]).await.unwrap().is_empty());
}
