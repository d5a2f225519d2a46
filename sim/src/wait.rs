//! Waiting for conditions with a deadline instead of sleeping.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Polls `check` every few milliseconds until it yields `Some`, or panics naming `what`
/// once `deadline` has passed.
pub async fn until<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    until_every(what, deadline, Duration::from_millis(5), check).await
}

/// [`until`], polling every `interval`: for a check that costs enough to load what it
/// watches (a bench's results).
pub async fn until_every<T, F, Fut>(
    what: &str,
    deadline: Duration,
    interval: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(interval).await;
    }
}
