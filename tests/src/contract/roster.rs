//! The roster contract (see `waconnect_shared::roster`).

use crate::engines::RosterEngine;
use crate::wait;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

pub async fn heartbeats_count_the_living_members(e: &dyn RosterEngine) {
    let (a, b) = e.rosters().await;
    assert_eq!(a.heartbeat("g", "one", LONG).await.unwrap(), 1);
    assert_eq!(b.heartbeat("g", "two", LONG).await.unwrap(), 2);
    // Beating again is not joining again.
    assert_eq!(a.heartbeat("g", "one", LONG).await.unwrap(), 2);
    // Another group has its own members.
    assert_eq!(b.heartbeat("other", "three", LONG).await.unwrap(), 1);
}

pub async fn members_that_stop_beating_or_leave_are_gone(e: &dyn RosterEngine) {
    let (a, b) = e.rosters().await;
    a.heartbeat("g", "short", Duration::from_millis(300))
        .await
        .unwrap();
    a.heartbeat("g", "leaving", LONG).await.unwrap();
    assert_eq!(b.heartbeat("g", "stays", LONG).await.unwrap(), 3);
    a.leave("g", "leaving").await.unwrap();
    assert_eq!(b.heartbeat("g", "stays", LONG).await.unwrap(), 2);
    wait::until(
        "the silent member to lapse",
        Duration::from_secs(10),
        || async { (b.heartbeat("g", "stays", LONG).await.unwrap() == 1).then_some(()) },
    )
    .await;
    // Leaving twice, or a group nobody is in, is fine.
    a.leave("g", "leaving").await.unwrap();
    a.leave("nobody", "x").await.unwrap();
}
