//! Failover between real relay-worker processes: SIGKILL one while agents keep writing,
//! and SIGTERM one to see it hand its conversations over at once.

mod common;

use common::failover::{count_by_worker, failover, holders, open_chats};
use common::{LEASE, Stack};
use std::time::{Duration, Instant};
use waconnect_shared::CustomerAddress;
use waconnect_tests::{customer, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_adopt_a_killed_workers_conversations_and_lose_nothing() {
    failover(Stack::new().await, 300, LEASE + Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_leases_at_once_and_exits_within_the_grace() {
    let stack = Stack::new().await;
    let mut a = stack.relay_process("a", &[]);
    let customers: Vec<CustomerAddress> = (0..20).map(|i| customer(1000 + i)).collect();
    open_chats(&stack, &customers).await;
    let mut b = stack.relay_process("b", &[]);
    let pid = a.id().unwrap().to_string();
    let started = Instant::now();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), a.wait())
        .await
        .expect("relay-worker did not exit after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let stopped_in = started.elapsed();
    // A lease that was not handed back would still name "a", unexpired, for seconds.
    let h = holders(&stack, &customers).await;
    assert!(
        h.iter().all(|o| o.as_deref() != Some("a")),
        "leases kept after shutdown: {h:?}"
    );
    wait::until(
        "the other worker to adopt them",
        Duration::from_secs(10),
        || async {
            let h = holders(&stack, &customers).await;
            h.iter().all(|o| o.as_deref() == Some("b")).then_some(())
        },
    )
    .await;
    eprintln!("sigterm: exited in {stopped_in:?}, leases handed over");
    b.start_kill().unwrap();
}

/// kill -9, then the same worker (its identity: the pod or host name) restarted at once:
/// it takes its conversations back without waiting for their leases to lapse, and what the
/// agents wrote meanwhile reaches the customers once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_after_kill_9_takes_its_conversations_back_at_once() {
    let stack = Stack::new().await;
    let identity = [("WACONNECT_RELAY_IDENTITY", "node-a")];
    let mut first = stack.relay_process("node-a/first", &identity);
    let customers: Vec<CustomerAddress> = (0..20).map(|i| customer(2000 + i)).collect();
    let contacts = open_chats(&stack, &customers).await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    for (i, contact) in contacts.iter().enumerate() {
        stack
            .desk
            .send(contact, &format!("c{i} while down"))
            .await
            .unwrap();
    }
    let restarted = Instant::now();
    let mut second = stack.relay_process("node-a/second", &identity);
    wait::until(
        "the restarted worker to hold every conversation",
        Duration::from_secs(10),
        || async {
            let h = holders(&stack, &customers).await;
            h.iter()
                .all(|o| o.as_deref() == Some("node-a/second"))
                .then_some(())
        },
    )
    .await;
    let resumed_in = restarted.elapsed();
    assert!(
        resumed_in < LEASE - Duration::from_secs(1),
        "took {resumed_in:?}: as long as waiting for the {LEASE:?} leases to lapse"
    );
    let got = stack.outbound_until(20, Duration::from_secs(20)).await;
    for (i, c) in customers.iter().enumerate() {
        assert_eq!(
            common::bodies(&got[c.as_str()]),
            [format!("c{i} while down")]
        );
    }
    stack.no_more_outbound(Duration::from_secs(1)).await;
    eprintln!("resume: 20 conversations held again {resumed_in:?} after the restart");
    second.start_kill().unwrap();
}

/// One worker holds every conversation; two more join. Each gets a fair share within a
/// few lease periods, and what agents write during the hand-overs reaches every customer
/// once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_workers_get_a_fair_share_and_nothing_is_dropped() {
    const ROUNDS: usize = 5;
    let stack = Stack::new().await;
    let mut a = stack.relay_process("a", &[]);
    let customers: Vec<CustomerAddress> = (0..12).map(|i| customer(3000 + i)).collect();
    let contacts = open_chats(&stack, &customers).await;
    let mut b = stack.relay_process("b", &[]);
    let mut c = stack.relay_process("c", &[]);
    let desk = stack.desk.clone();
    let agents_contacts = contacts.clone();
    let writers = tokio::spawn(async move {
        for round in 0..ROUNDS {
            for (i, contact) in agents_contacts.iter().enumerate() {
                desk.send(contact, &format!("c{i} r{round}")).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    });
    let started = Instant::now();
    let mut spread = count_by_worker(&holders(&stack, &customers).await);
    while !(spread.len() == 3 && spread.values().all(|n| *n >= 3)) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no fair share each after 60 s: {spread:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        spread = count_by_worker(&holders(&stack, &customers).await);
    }
    let balanced_in = started.elapsed();
    writers.await.unwrap();
    let got = stack
        .outbound_until(customers.len() * ROUNDS, Duration::from_secs(60))
        .await;
    for (i, customer) in customers.iter().enumerate() {
        let expected: Vec<String> = (0..ROUNDS).map(|r| format!("c{i} r{r}")).collect();
        assert_eq!(
            common::bodies(&got[customer.as_str()]),
            expected,
            "customer {i}"
        );
    }
    stack.no_more_outbound(Duration::from_secs(2)).await;
    eprintln!("rebalance: {spread:?} in {balanced_in:?}");
    for w in [&mut a, &mut b, &mut c] {
        w.start_kill().unwrap();
    }
}
