//! The roster contract (see `waconnect_shared::storage::roster`).

use crate::engines::RosterEngine;
use crate::wait;
use std::time::Duration;
use waconnect_shared::storage::roster::Members;

const LONG: Duration = Duration::from_secs(60);

pub async fn heartbeats_count_the_living_members(e: &dyn RosterEngine) {
    let (a, b) = e.rosters().await;
    let members = |alive, load, least| Members { alive, load, least };
    assert_eq!(
        a.heartbeat("g", "one", LONG, 3).await.unwrap(),
        members(1, 3, 3)
    );
    assert_eq!(
        b.heartbeat("g", "two", LONG, 4).await.unwrap(),
        members(2, 7, 3)
    );
    // Beating again is not joining again; the load is the latest.
    assert_eq!(
        a.heartbeat("g", "one", LONG, 1).await.unwrap(),
        members(2, 5, 1)
    );
    // Another group has its own members.
    assert_eq!(
        b.heartbeat("other", "three", LONG, 0).await.unwrap(),
        members(1, 0, 0)
    );
}

pub async fn members_that_stop_beating_or_leave_are_gone(e: &dyn RosterEngine) {
    let (a, b) = e.rosters().await;
    // Long enough to outlast the four calls below on a loaded machine (300 ms did not, on
    // moto in a cold CI run), short enough to lapse within the wait.
    a.heartbeat("g", "short", Duration::from_secs(3), 0)
        .await
        .unwrap();
    a.heartbeat("g", "leaving", LONG, 0).await.unwrap();
    assert_eq!(b.heartbeat("g", "stays", LONG, 0).await.unwrap().alive, 3);
    a.leave("g", "leaving").await.unwrap();
    assert_eq!(b.heartbeat("g", "stays", LONG, 0).await.unwrap().alive, 2);
    wait::until(
        "the silent member to lapse",
        Duration::from_secs(10),
        || async { (b.heartbeat("g", "stays", LONG, 0).await.unwrap().alive == 1).then_some(()) },
    )
    .await;
    // Leaving twice, or a group nobody is in, is fine.
    a.leave("g", "leaving").await.unwrap();
    a.leave("nobody", "x").await.unwrap();
}
