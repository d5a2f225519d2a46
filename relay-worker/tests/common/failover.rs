//! The failover scenario, shared by the SQLite run (`failover.rs`) and the AWS run on moto
//! (`failover_aws.rs`, its own test binary so that the two fleets never compete for the
//! CPU).

use super::{Stack, bodies};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use tokio::process::Child;
use waconnect_shared::CustomerAddress;
use waconnect_tests::{customer, key_of, wait};

/// Each customer's conversation's lease holder, if its lease is current.
pub async fn holders(stack: &Stack, customers: &[CustomerAddress]) -> Vec<Option<String>> {
    let now = chrono::Utc::now();
    // All at once: on DynamoDB one by one would take longer than the adoption measured.
    let keys: Vec<_> = customers.iter().map(key_of).collect();
    let reads = keys.iter().map(|k| stack.store.get(k));
    futures_util::future::join_all(reads)
        .await
        .into_iter()
        .map(|s| {
            s.unwrap().and_then(|s| {
                s.lease
                    .owner
                    .filter(|_| s.lease.expires_at.is_some_and(|t| t > now))
            })
        })
        .collect()
}

/// Starts `n` chats, accepted by agents and held by the fleet; returns their contacts.
pub async fn open_chats(stack: &Stack, customers: &[CustomerAddress]) -> Vec<String> {
    for (i, c) in customers.iter().enumerate() {
        stack.customer_says(c, &format!("SM{i:06}"), "hello").await;
    }
    let mut contacts = Vec::new();
    for c in customers {
        let contact = stack.contact_of(c).await;
        stack.desk.accept(&contact).await.unwrap();
        contacts.push(contact);
    }
    wait::until("every chat to be held", Duration::from_secs(60), || async {
        let h = holders(stack, customers).await;
        let sockets = stack.desk.stats().await.ok()?.sockets;
        (h.iter().all(Option::is_some) && sockets >= customers.len()).then_some(())
    })
    .await;
    contacts
}

pub fn count_by_worker(h: &[Option<String>]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for owner in h.iter().flatten() {
        *m.entry(owner.clone()).or_default() += 1;
    }
    m
}

/// Three relay-worker processes hold `chats` conversations; one is SIGKILLed while agents
/// write. The survivors adopt its conversations within the bound, and every agent message
/// reaches the outbound queue once and in order.
pub async fn failover(stack: Stack, chats: usize, adoption_bound: Duration) {
    const ROUNDS: usize = 6;
    let mut workers: BTreeMap<String, Child> = ["w1", "w2", "w3"]
        .into_iter()
        .map(|w| (w.to_owned(), stack.relay_process(w, &[])))
        .collect();
    let customers: Vec<CustomerAddress> = (0..chats).map(customer).collect();
    let contacts = open_chats(&stack, &customers).await;
    let spread = count_by_worker(&holders(&stack, &customers).await);
    let (victim, held) = spread
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(w, n)| (w.clone(), *n))
        .unwrap();
    assert!(
        held > 0 && spread.len() >= 2,
        "conversations not spread: {spread:?}"
    );

    // Agents write in rounds without pause; the victim dies during the third round.
    let desk = stack.desk.clone();
    let agents_contacts = contacts.clone();
    let (two_rounds_tx, two_rounds_rx) = tokio::sync::oneshot::channel::<()>();
    let mut two_rounds_tx = Some(two_rounds_tx);
    let writers = tokio::spawn(async move {
        for round in 0..ROUNDS {
            if round == 2 {
                two_rounds_tx.take().unwrap().send(()).unwrap();
            }
            for (i, contact) in agents_contacts.iter().enumerate() {
                desk.send(contact, &format!("c{i} r{round}")).await.unwrap();
            }
        }
    });
    two_rounds_rx.await.unwrap();
    let mut child = workers.remove(&victim).unwrap();
    child.start_kill().unwrap(); // SIGKILL: no release, no goodbye
    child.wait().await.unwrap();
    let killed_at = Instant::now();

    let orphaned: HashSet<usize> = holders(&stack, &customers)
        .await
        .iter()
        .enumerate()
        .filter(|(_, h)| h.as_deref() == Some(victim.as_str()))
        .map(|(i, _)| i)
        .collect();
    wait::until("survivors to adopt everything", adoption_bound, || async {
        let h = holders(&stack, &customers).await;
        h.iter()
            .all(|o| o.as_ref().is_some_and(|o| *o != victim))
            .then_some(())
    })
    .await;
    let adopted_in = killed_at.elapsed();
    writers.await.unwrap();

    let got = stack
        .outbound_until(chats * ROUNDS, Duration::from_secs(120))
        .await;
    for (i, c) in customers.iter().enumerate() {
        let expected: Vec<String> = (0..ROUNDS).map(|r| format!("c{i} r{r}")).collect();
        assert_eq!(bodies(&got[c.as_str()]), expected, "customer {i}");
    }
    stack.no_more_outbound(Duration::from_secs(2)).await;
    eprintln!(
        "failover: {victim} held {held} of {chats} ({} still held at the kill); survivors adopted them in {adopted_in:?}",
        orphaned.len()
    );
}
