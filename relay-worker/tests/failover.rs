//! Failover between real relay-worker processes: SIGKILL one while agents keep writing,
//! and SIGTERM one to see it hand its conversations over at once.

mod common;

use common::failover::{failover, holders, open_chats};
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
