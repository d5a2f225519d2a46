//! The queue contract (see `waconnect_shared::storage::queue`).

use crate::engines::QueueEngine;
use crate::wait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use waconnect_shared::storage::queue::{
    FailOutcome, Limits, MAX_BODY_BYTES, NewMessage, Queue, QueueError, ReceivedMessage, Take,
};

const LONG: Duration = Duration::from_secs(60);
const NO_WAIT: Duration = Duration::ZERO;
const DEADLINE: Duration = Duration::from_secs(10);

fn msg(group: &str, dedup: &str, body: &str) -> NewMessage {
    NewMessage {
        group_id: group.into(),
        dedup_id: dedup.into(),
        body: body.as_bytes().to_vec(),
    }
}

async fn send(q: &dyn Queue, group: &str, dedup: &str, body: &str) {
    let sent = q.send(msg(group, dedup, body)).await.unwrap();
    assert_ne!(
        sent.duplicate,
        Some(true),
        "{dedup} unexpectedly a duplicate"
    );
}

async fn receive_one(q: &dyn Queue, visibility: Duration) -> Option<ReceivedMessage> {
    let mut got = q.receive(1, visibility, NO_WAIT).await.unwrap();
    assert!(got.len() <= 1);
    got.pop()
}

/// Waits until a message is receivable and returns it.
async fn eventually_receive(q: &dyn Queue, visibility: Duration) -> ReceivedMessage {
    wait::until("a message to become visible", DEADLINE, || {
        receive_one(q, visibility)
    })
    .await
}

fn body(m: &ReceivedMessage) -> String {
    String::from_utf8(m.body.clone()).unwrap()
}

pub async fn send_and_receive_round_trip(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    let payload = "{\"hello\":\"wörld\"}";
    let sent = q.send(msg("g1", "d1", payload)).await.unwrap();
    let got = q.receive(10, LONG, NO_WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.message_id, sent.message_id);
    assert_eq!((m.group_id.as_str(), m.dedup_id.as_str()), ("g1", "d1"));
    assert_eq!(body(m), payload);
    assert_eq!(m.receive_count, 1);
    assert_eq!(m.last_error, None);
    let age = chrono::Utc::now() - m.sent_at;
    assert!(
        age.num_seconds().abs() < 60,
        "sent_at is off: {}",
        m.sent_at
    );
    q.delete(&m.receipt).await.unwrap();
    assert!(q.receive(10, LONG, NO_WAIT).await.unwrap().is_empty());
    assert_eq!(q.delete(&m.receipt).await, Err(QueueError::StaleReceipt));
}

pub async fn fifo_within_a_group_under_concurrent_consumers(e: &dyn QueueEngine) {
    const GROUPS: usize = 6;
    const PER_GROUP: usize = 30;
    let q = e.queue(5).await;
    // Interleave groups on the way in, as many customers writing at once would.
    for i in 0..PER_GROUP {
        for g in 0..GROUPS {
            send(
                q.as_ref(),
                &format!("g{g}"),
                &format!("g{g}-{i}"),
                &i.to_string(),
            )
            .await;
        }
    }
    let seen: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let holding: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let (q, seen, holding) = (q.clone(), seen.clone(), holding.clone());
        consumers.push(tokio::spawn(async move {
            let mut idle_rounds = 0;
            while idle_rounds < 3 {
                let got = q
                    .receive(3, LONG, Duration::from_millis(200))
                    .await
                    .unwrap();
                if got.is_empty() {
                    idle_rounds += 1;
                    continue;
                }
                idle_rounds = 0;
                for m in got {
                    let was_held = holding.lock().unwrap().insert(m.group_id.clone(), true);
                    assert_ne!(
                        was_held,
                        Some(true),
                        "two messages of {} in flight",
                        m.group_id
                    );
                    seen.lock()
                        .unwrap()
                        .entry(m.group_id.clone())
                        .or_default()
                        .push(body(&m).parse().unwrap());
                    // Hold the message briefly so a second delivery of the group would overlap.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    holding.lock().unwrap().insert(m.group_id.clone(), false);
                    q.delete(&m.receipt).await.unwrap();
                }
            }
        }));
    }
    for c in consumers {
        c.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), GROUPS);
    let expected: Vec<usize> = (0..PER_GROUP).collect();
    for (group, order) in seen.iter() {
        assert_eq!(order, &expected, "group {group} out of order or duplicated");
    }
}

pub async fn one_in_flight_per_group_and_groups_in_parallel(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    send(q.as_ref(), "a", "a1", "a1").await;
    send(q.as_ref(), "a", "a2", "a2").await;
    send(q.as_ref(), "b", "b1", "b1").await;
    let first = receive_one(q.as_ref(), LONG).await.unwrap();
    assert_eq!(body(&first), "a1");
    // a2 waits behind a1, but b runs in parallel.
    let got = q.receive(10, LONG, NO_WAIT).await.unwrap();
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["b1"]);
    assert!(q.receive(10, LONG, NO_WAIT).await.unwrap().is_empty());
    q.delete(&first.receipt).await.unwrap();
    let next = receive_one(q.as_ref(), LONG).await.unwrap();
    assert_eq!(body(&next), "a2");
}

pub async fn dedup_within_the_window(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    // An engine that reports duplicates must report them right; SQS does not report them
    // at all, and what is delivered below is what counts.
    let reports = e.reports_duplicates();
    let first = q.send(msg("g", "SM1", "one")).await.unwrap();
    assert_eq!(first.duplicate, reports.then_some(false));
    let again = q.send(msg("g", "SM1", "one, retried")).await.unwrap();
    assert_eq!(again.duplicate, reports.then_some(true));
    if reports {
        assert_eq!(again.message_id, first.message_id);
    }
    // Same body, different dedup id: a distinct message.
    let other = q.send(msg("g", "SM2", "one")).await.unwrap();
    assert_eq!(other.duplicate, reports.then_some(false));
    let a = receive_one(q.as_ref(), LONG).await.unwrap();
    assert_eq!(body(&a), "one");
    q.delete(&a.receipt).await.unwrap();
    // Still a duplicate after the original was consumed (the window, not the message, decides).
    assert_eq!(
        q.send(msg("g", "SM1", "late retry"))
            .await
            .unwrap()
            .duplicate,
        reports.then_some(true)
    );
    let b = receive_one(q.as_ref(), LONG).await.unwrap();
    assert_eq!(b.dedup_id, "SM2");
    q.delete(&b.receipt).await.unwrap();
    assert!(receive_one(q.as_ref(), LONG).await.is_none());
}

pub async fn visibility_expiry_redelivers_and_stales_the_old_receipt(e: &dyn QueueEngine) {
    // Two handles, as two workers: the one whose visibility ran out has not received
    // since, so only its own sense of the deadline can tell its receipt is stale.
    let (q, other) = e.queue_pair(5).await;
    send(q.as_ref(), "g", "d1", "x").await;
    let first = receive_one(q.as_ref(), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        receive_one(other.as_ref(), LONG).await.is_none(),
        "visible while in flight"
    );
    let second = eventually_receive(other.as_ref(), LONG).await;
    assert_eq!(second.message_id, first.message_id);
    assert_eq!(second.receive_count, 2);
    assert_ne!(second.receipt, first.receipt);
    assert_eq!(
        q.delete(&first.receipt).await,
        Err(QueueError::StaleReceipt)
    );
    assert_eq!(
        q.change_visibility(&first.receipt, LONG).await,
        Err(QueueError::StaleReceipt)
    );
    // The new holder still has it, and ends it.
    other.delete(&second.receipt).await.unwrap();
}

pub async fn change_visibility_extends_and_releases(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    send(q.as_ref(), "g", "d1", "x").await;
    let m = receive_one(q.as_ref(), Duration::from_millis(200))
        .await
        .unwrap();
    q.change_visibility(&m.receipt, LONG).await.unwrap();
    // Well past the original 200 ms, it is still in flight.
    let got = q
        .receive(1, LONG, Duration::from_millis(800))
        .await
        .unwrap();
    assert!(got.is_empty(), "extension ignored");
    // Zero releases it at once, with the same receive count semantics.
    q.change_visibility(&m.receipt, Duration::ZERO)
        .await
        .unwrap();
    let again = receive_one(q.as_ref(), LONG)
        .await
        .expect("released message");
    assert_eq!(again.message_id, m.message_id);
    assert_eq!(again.receive_count, 2);
}

pub async fn failures_dead_letter_after_max_receives_with_the_last_error(e: &dyn QueueEngine) {
    let q = e.queue(3).await;
    send(q.as_ref(), "g", "poison", "poison body").await;
    send(q.as_ref(), "g", "next", "next body").await;
    for attempt in 1..=3u32 {
        let m = eventually_receive(q.as_ref(), LONG).await;
        assert_eq!(body(&m), "poison body");
        assert_eq!(m.receive_count, attempt);
        if attempt > 1 {
            assert_eq!(
                m.last_error.as_deref(),
                Some(format!("boom {}", attempt - 1).as_str())
            );
        }
        let outcome = q
            .fail(&m.receipt, &format!("boom {attempt}"), Duration::ZERO)
            .await
            .unwrap();
        let expected = if attempt < 3 {
            FailOutcome::WillRetry
        } else {
            FailOutcome::DeadLettered
        };
        assert_eq!(outcome, expected, "attempt {attempt}");
    }
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        String::from_utf8(dead[0].body.clone()).unwrap(),
        "poison body"
    );
    assert_eq!(dead[0].group_id, "g");
    assert_eq!(dead[0].receive_count, 3);
    assert!(
        dead[0].reason.contains("boom 3"),
        "reason: {}",
        dead[0].reason
    );
    // The rest of the group's stream continues.
    let next = eventually_receive(q.as_ref(), LONG).await;
    assert_eq!(body(&next), "next body");
    assert_eq!(q.stats().await.unwrap().dead_letters, 1);
}

/// Waits until a receive brings something, and returns all it brought: on SQS, a
/// group's head and the group-mates behind it.
async fn eventually_receive_batch(q: &dyn Queue) -> Vec<ReceivedMessage> {
    wait::until("messages to become visible", DEADLINE, || async {
        let got = q.receive(10, LONG, NO_WAIT).await.unwrap();
        (!got.is_empty()).then_some(got)
    })
    .await
}

/// Only reported failures spend a message's attempts. SQS hands out a group's head with
/// its group-mates, counting a receive for each; when the head fails they are handed back
/// untried, and must not arrive at their own first try with their attempts used up.
pub async fn attempts_count_failures_not_hand_backs(e: &dyn QueueEngine) {
    let q = e
        .queue_with(Limits {
            max_attempts: 2,
            max_receives: 20,
        })
        .await;
    send(q.as_ref(), "g", "head", "head").await;
    send(q.as_ref(), "g", "mate", "mate").await;
    // Handed back unprocessed, again and again (shutdowns): no attempt spent.
    for _ in 0..3 {
        for m in eventually_receive_batch(q.as_ref()).await {
            assert_eq!(m.attempts, 0);
            q.release(&m.receipt).await.unwrap();
        }
    }
    let mut outcomes = Vec::new();
    for attempt in 0..2 {
        let got = eventually_receive_batch(q.as_ref()).await;
        assert_eq!(body(&got[0]), "head");
        assert_eq!(got[0].attempts, attempt);
        outcomes.push(q.fail(&got[0].receipt, "boom", NO_WAIT).await.unwrap());
        for mate in &got[1..] {
            q.release(&mate.receipt).await.unwrap();
        }
    }
    assert_eq!(
        outcomes,
        [FailOutcome::WillRetry, FailOutcome::DeadLettered]
    );
    // Received many times by now, but never tried: its first failure is retried.
    let mate = eventually_receive_batch(q.as_ref()).await.remove(0);
    assert_eq!((body(&mate).as_str(), mate.attempts), ("mate", 0));
    assert_eq!(
        q.fail(&mate.receipt, "once", NO_WAIT).await.unwrap(),
        FailOutcome::WillRetry
    );
    let mate = eventually_receive(q.as_ref(), LONG).await;
    assert_eq!(mate.attempts, 1);
    assert_eq!(mate.last_error.as_deref(), Some("once"));
    q.delete(&mate.receipt).await.unwrap();
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("failed 2 times"),
        "{}",
        dead[0].reason
    );
}

pub async fn crash_loop_is_dead_lettered_and_the_group_continues(e: &dyn QueueEngine) {
    let q = e.queue(2).await;
    send(q.as_ref(), "g", "crashy", "crashy").await;
    send(q.as_ref(), "g", "after", "after").await;
    // Two consumers take it and die without a word (their visibility just runs out).
    for count in 1..=2 {
        let m = eventually_receive(q.as_ref(), Duration::from_millis(150)).await;
        assert_eq!((body(&m).as_str(), m.receive_count), ("crashy", count));
    }
    let next = eventually_receive(q.as_ref(), LONG).await;
    assert_eq!(body(&next), "after");
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(String::from_utf8(dead[0].body.clone()).unwrap(), "crashy");
    assert!(!dead[0].reason.is_empty());
}

pub async fn explicit_dead_letter_is_immediate(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    send(q.as_ref(), "g", "bad", "bad").await;
    let m = receive_one(q.as_ref(), LONG).await.unwrap();
    q.dead_letter(&m.receipt, "21610: recipient opted out")
        .await
        .unwrap();
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "21610: recipient opted out");
    assert!(receive_one(q.as_ref(), LONG).await.is_none());
    assert_eq!(q.delete(&m.receipt).await, Err(QueueError::StaleReceipt));
}

pub async fn failure_backoff_is_delayed_and_keeps_group_order(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    send(q.as_ref(), "g", "first", "first").await;
    send(q.as_ref(), "g", "second", "second").await;
    let m = receive_one(q.as_ref(), LONG).await.unwrap();
    let outcome = q
        .fail(&m.receipt, "throttled", Duration::from_millis(400))
        .await
        .unwrap();
    assert_eq!(outcome, FailOutcome::WillRetry);
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.delayed, stats.in_flight), (1, 0), "{stats:?}");
    // "second" must not overtake "first" while it backs off.
    assert!(receive_one(q.as_ref(), LONG).await.is_none());
    let again = eventually_receive(q.as_ref(), LONG).await;
    assert_eq!(body(&again), "first");
    assert_eq!(again.last_error.as_deref(), Some("throttled"));
    assert_eq!(q.delete(&m.receipt).await, Err(QueueError::StaleReceipt));
}

pub async fn stats_count_each_state(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    let empty = q.stats().await.unwrap();
    assert_eq!(
        (
            empty.visible,
            empty.in_flight,
            empty.delayed,
            empty.dead_letters
        ),
        (0, 0, 0, 0),
        "{empty:?}"
    );
    let age_reported = e.reports_oldest_age();
    assert_eq!(
        empty.oldest_age,
        age_reported.then_some(Duration::ZERO),
        "an empty queue's oldest message"
    );
    for g in 0..4 {
        send(q.as_ref(), &format!("g{g}"), &format!("d{g}"), "x").await;
    }
    let held = q.receive(2, LONG, NO_WAIT).await.unwrap();
    assert_eq!(held.len(), 2);
    q.fail(&held[0].receipt, "later", LONG).await.unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!(
        (s.visible, s.in_flight, s.delayed, s.dead_letters),
        (2, 1, 1, 0),
        "{s:?}"
    );
    // The oldest undeleted message ages (an empty queue's is zero, checked above).
    if age_reported {
        wait::until("the oldest message to age", DEADLINE, || async {
            (q.stats().await.ok()?.oldest_age? >= Duration::from_millis(20)).then_some(())
        })
        .await;
    }
}

pub async fn refuses_oversized_bodies_and_bad_ids(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    let mut big = msg("g", "d", "");
    big.body = vec![b'x'; MAX_BODY_BYTES + 1];
    assert!(matches!(
        q.send(big).await,
        Err(QueueError::TooLarge { .. })
    ));
    let mut fits = msg("g", "d", "");
    fits.body = vec![b'x'; MAX_BODY_BYTES];
    q.send(fits).await.unwrap();
    for (group, dedup) in [
        ("", "d2"),
        ("g", ""),
        ("g h", "d3"),
        ("g", &"x".repeat(129)),
    ] {
        assert!(
            matches!(
                q.send(msg(group, dedup, "x")).await,
                Err(QueueError::InvalidArgument(_))
            ),
            "{group:?}/{dedup:?} accepted"
        );
    }
    assert!(matches!(
        q.receive(11, LONG, NO_WAIT).await,
        Err(QueueError::InvalidArgument(_))
    ));
}

pub async fn long_poll_wakes_for_a_send_on_another_connection(e: &dyn QueueEngine) {
    let (consumer, producer) = e.queue_pair(5).await;
    let waiting = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let got = consumer
            .receive(1, LONG, Duration::from_secs(20))
            .await
            .unwrap();
        (got, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(producer.as_ref(), "g", "d", "wake up").await;
    let (got, elapsed) = waiting.await.unwrap();
    assert_eq!(got.len(), 1, "long poll ended empty after {elapsed:?}");
    assert_eq!(body(&got[0]), "wake up");
    // Well under the engine's fallback re-check (1 s for SQLite): the send itself woke it.
    assert!(
        elapsed < Duration::from_millis(100) + Duration::from_millis(500),
        "long poll took {elapsed:?}"
    );
}

pub async fn long_poll_wakes_when_the_group_head_is_deleted(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    send(q.as_ref(), "g", "first", "first").await;
    send(q.as_ref(), "g", "second", "second").await;
    let head = receive_one(q.as_ref(), LONG).await.unwrap();
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.receive(1, LONG, Duration::from_secs(20)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.delete(&head.receipt).await.unwrap();
    let got = waiter.await.unwrap();
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), ["second"]);
}

/// Dead letters older than the retention are deleted — by `prune_dead_letters`, or by
/// the engine's own expiry (SQS's retention period) — and younger ones are kept.
pub async fn old_dead_letters_are_pruned(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    send(q.as_ref(), "g", "d1", "poison").await;
    let m = eventually_receive(q.as_ref(), LONG).await;
    q.dead_letter(&m.receipt, "refused").await.unwrap();
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(q.prune_dead_letters(hour_ago).await.unwrap(), 0);
    assert_eq!(q.dead_letters(10).await.unwrap().len(), 1);
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    let pruned = q.prune_dead_letters(later).await.unwrap();
    if e.expires_itself() {
        assert_eq!(pruned, 0);
    } else {
        assert_eq!(pruned, 1);
        assert!(q.dead_letters(10).await.unwrap().is_empty());
        assert_eq!(q.stats().await.unwrap().dead_letters, 0);
    }
}

/// Dead letters go back onto the queue in their group's order (whatever order they are
/// named in) and are handled again; purged ones are gone; ids not in the DLQ are skipped.
pub async fn dead_letters_are_redriven_in_order_or_purged(e: &dyn QueueEngine) {
    let q = e.queue(5).await;
    send(q.as_ref(), "g", "a", "a").await;
    send(q.as_ref(), "g", "b", "b").await;
    send(q.as_ref(), "h", "x", "x").await;
    for _ in 0..3 {
        let m = eventually_receive(q.as_ref(), LONG).await;
        q.dead_letter(&m.receipt, "refused").await.unwrap();
    }
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 3, "{dead:?}");
    let id = |b: &str| {
        dead.iter()
            .find(|d| d.body == b.as_bytes())
            .unwrap()
            .message_id
            .clone()
    };
    // Named newest first, and one that is not a dead letter.
    let ids = [id("b"), id("a"), "not-a-letter".to_owned()];
    let mut taken = q.take_dead_letters(&ids, Take::Redrive).await.unwrap();
    taken.sort();
    let mut expected = vec![id("a"), id("b")];
    expected.sort();
    assert_eq!(taken, expected);
    // Back in the queue, in the order they were first sent, within the dedup window of
    // their first sending.
    for want in ["a", "b"] {
        let m = eventually_receive(q.as_ref(), LONG).await;
        assert_eq!((body(&m).as_str(), m.group_id.as_str()), (want, "g"));
        q.delete(&m.receipt).await.unwrap();
    }
    let left = q.dead_letters(10).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].body, b"x");
    // Taking again takes nothing.
    assert!(
        q.take_dead_letters(&[id("a")], Take::Redrive)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        q.take_dead_letters(&[id("x")], Take::Purge).await.unwrap(),
        [id("x")]
    );
    assert!(q.dead_letters(10).await.unwrap().is_empty());
    assert!(receive_one(q.as_ref(), LONG).await.is_none());
    assert_eq!(q.stats().await.unwrap().dead_letters, 0);
}
