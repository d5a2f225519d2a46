//! The catch-up: a customer message Twilio took but could not post to ingress (down, or
//! refusing, for longer than Twilio's 15 s of tries) still reaches the agent, about a
//! minute late and told as such ([`waconnect_shared::twilio::recovery`]).
//!
//! Time is cut into stretches of `WACONNECT_RELAY_CATCH_UP_EVERY`. When one has been over
//! for `WACONNECT_RELAY_CATCH_UP_AFTER`, the first relay of the fleet to claim it in the
//! delivery ledger asks Twilio for the customer messages sent in it and queues those the
//! relay never handled; the others see the claim and leave it, unless it stays without an
//! outcome for [`STALE_CLAIM`] (its relay died), when one of them takes it over. So each
//! stretch costs the fleet about one claim per relay, a list call per routed number and
//! per 1,000 of its messages from the stretch's start to the look (Twilio's list filters
//! by day, so it is read back from now), and one ledger read per customer message in it.
//! A relay that starts looks back over [`LOOK_BACK_STRETCHES`] stretches, and at least
//! twice [`STALE_CLAIM`], and one that fell behind catches up, both within [`HORIZON`],
//! which the queue's 5-minute dedup window still covers; further back is `waconnect
//! recover`'s. At least twice the stale time, because a stretch whose relay died while it
//! looked can be taken over only once its claim is stale: a relay that started since and
//! looked back less would never see it, and when every relay that was behind it has
//! restarted by then, nobody would. (With stretches of a minute, the default, that is the
//! whole horizon; only short ones, as in tests, look back less, to keep a start cheap.)

use crate::config::CatchUpSettings;
use chrono::{DateTime, TimeDelta, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use waconnect_shared::storage::delivery::{Claim, DeliveryLedger};
use waconnect_shared::twilio::history::HistoryError;
use waconnect_shared::twilio::recovery::{Outcome, Recovery, RecoveryError};

/// How far back a stretch may start and still be looked at.
const HORIZON: TimeDelta = TimeDelta::minutes(4);
/// Stretches a starting relay looks back over, at least (and within the horizon).
const LOOK_BACK_STRETCHES: i32 = 8;
/// Customer messages in one stretch, at most (a minute of 300 a second).
const MAX_PER_STRETCH: usize = 20_000;
/// A stretch that could not be looked at, or that another relay is looking at, is tried
/// again this soon (until the horizon).
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// A claim on a stretch this old with no outcome is taken to be a dead relay's: a look
/// takes a few list calls, each bounded by the Twilio timeout.
const STALE_CLAIM: TimeDelta = TimeDelta::seconds(30);

pub async fn run(
    recovery: Recovery,
    ledger: Arc<dyn DeliveryLedger>,
    settings: CatchUpSettings,
    shutdown: CancellationToken,
) {
    let every = TimeDelta::from_std(settings.every).expect("at most 2 minutes");
    let after = TimeDelta::from_std(settings.after).expect("at most a minute");
    // A relay that starts looks back too: what the fleet could not look at while it was
    // down, and what a relay that died left. A stretch looked at already costs a claim.
    let look_back = HORIZON.min((every * LOOK_BACK_STRETCHES).max(STALE_CLAIM * 2 + every + after));
    let mut next = stretch_start(Utc::now() - look_back, every) + every;
    loop {
        let now = Utc::now();
        let mut wait = RETRY_AFTER;
        while next + every + after <= now {
            if next < now - HORIZON {
                tracing::error!(
                    stretch_start = %next,
                    "the catch-up could not look at a stretch in time; `waconnect recover` can"
                );
            } else if !look_at(&recovery, &ledger, next, every).await {
                break;
            }
            next += every;
        }
        if next + every + after > now {
            // Stretches end together across the fleet: a little jitter spreads the claims.
            wait = (next + every + after - now).to_std().unwrap_or_default()
                + waconnect_shared::service::backoff::jittered(settings.every / 20);
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The start of the stretch `at` falls in.
fn stretch_start(at: DateTime<Utc>, every: TimeDelta) -> DateTime<Utc> {
    let ms = every.num_milliseconds().max(1);
    let start = at.timestamp_millis().div_euclid(ms) * ms;
    DateTime::from_timestamp_millis(start).unwrap_or(at)
}

/// Looks at the stretch from `start`, unless another relay has; whether it is done (by
/// this relay or another).
async fn look_at(
    recovery: &Recovery,
    ledger: &Arc<dyn DeliveryLedger>,
    start: DateTime<Utc>,
    every: TimeDelta,
) -> bool {
    let key = format!(
        "catchup#{}#{}",
        every.num_milliseconds(),
        start.timestamp_millis()
    );
    match ledger.claim(&key).await {
        Ok(Claim::Fresh { .. }) => {}
        // Another relay did.
        Ok(Claim::Sent { .. }) => return true,
        // Another relay looks at it now, or died (or froze) while it did: after a while,
        // this one takes it over, through the same fence a sender uses.
        Ok(Claim::Unknown { since }) => {
            if Utc::now() - since < STALE_CLAIM {
                return false;
            }
            match ledger.renew(&key, since).await {
                Ok(Some(_)) => {}
                Ok(None) => return false,
                Err(e) => {
                    tracing::warn!(error = %e, "the catch-up cannot take a stretch over; trying again");
                    return false;
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "the catch-up cannot claim a stretch; trying again");
            return false;
        }
    }
    let until = start + every - TimeDelta::milliseconds(1);
    let found = match recovery
        .run(None, start, until, MAX_PER_STRETCH, false)
        .await
    {
        Ok(found) => found,
        Err(RecoveryError::History(e @ HistoryError::TooMany(_))) => {
            tracing::error!(error = %e, stretch_start = %start, "the catch-up skips a stretch; `waconnect recover` with a shorter range can look at it");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, stretch_start = %start, "the catch-up could not look at a stretch; trying again");
            // Free for the next try, this relay's or another's.
            let _ = ledger.release(&key).await;
            return false;
        }
    };
    tracing::debug!(stretch_start = %start, listed = found.len(), "the catch-up looked at a stretch");
    for f in &found {
        let conversation = f
            .conversation
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        match f.outcome {
            Outcome::Queued => tracing::warn!(
                conversation,
                message_sid = %f.message.sid,
                sent_at = %f.message.sent_at,
                "a customer message whose webhook never reached ingress was put on the inbound queue"
            ),
            // SQS does not say whether it held the message already: a backlog's messages
            // are offered too, so this is no sign of a lost webhook by itself.
            Outcome::Offered => tracing::info!(
                conversation,
                message_sid = %f.message.sid,
                sent_at = %f.message.sent_at,
                "a customer message the relay has not handled yet was offered to the inbound queue"
            ),
            _ => continue,
        }
        metrics::counter!("waconnect_relay_recovered_total", "outcome" => f.outcome.as_str())
            .increment(1);
    }
    // Not waited for: the AWS ledger holds an outcome back a moment for company, which a
    // relay walking back over many short stretches would pay at each. Until it lands, the
    // others take the claim for a look in progress; if it never does, one looks again,
    // which queues nothing twice (the ledger and the queue's dedup drop what was handled
    // or queued).
    let ledger = ledger.clone();
    tokio::spawn(async move {
        if let Err(e) = ledger.sent(&key, "done").await {
            tracing::debug!(error = %e, "a looked-at stretch was not recorded as done");
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stretches_start_on_their_length() {
        let at = DateTime::parse_from_rfc3339("2026-12-04T10:02:31.5Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            stretch_start(at, TimeDelta::minutes(1)).to_rfc3339(),
            "2026-12-04T10:02:00+00:00"
        );
        assert_eq!(
            stretch_start(at, TimeDelta::seconds(2)).to_rfc3339(),
            "2026-12-04T10:02:30+00:00"
        );
    }
}
