//! Drains the outbound queue to Twilio: per-customer order (the FIFO group), customers in
//! parallel, a shared rate limit, retries that hold the message (the consumer keeps it
//! invisible while they last) instead of burning attempts, the delivery ledger against
//! duplicates, and permanent failures dead-lettered with the agent told why.

use crate::twilio::{ErrorKind, SendError, TwilioClient};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use waconnect_shared::message::event::{EventKind, InboundEvent};
use waconnect_shared::message::outbound::{Origin, OutboundMessage};
use waconnect_shared::message::text::split;
use waconnect_shared::service::backoff::Backoff;
use waconnect_shared::storage::consumer::{self, ConsumerSettings, Handled};
use waconnect_shared::storage::delivery::{Claim, DeliveryLedger, LedgerError};
use waconnect_shared::storage::media::{MediaError, MediaStore};
use waconnect_shared::storage::message_index::{Author, IndexedMessage, MessageIndex};
use waconnect_shared::storage::queue::{FailOutcome, NewMessage, Queue, ReceivedMessage};

/// Twilio's Body limit, in characters.
pub const MAX_BODY_CHARS: usize = 1600;

pub struct Sender {
    pub twilio: TwilioClient,
    pub outbound: Arc<dyn Queue>,
    pub inbound: Arc<dyn Queue>,
    pub ledger: Arc<dyn DeliveryLedger>,
    /// One rate per route's sender, by route name.
    pub limiters: crate::ratelimit::Limiters,
    pub max_backoff: Duration,
    /// Deliveries a message gets (the queue's attempts) before it is given up.
    pub max_attempts: u32,
    /// A message not taken by Twilio this long after the agent wrote it is given up.
    pub give_up_after: Duration,
    /// The bound on one Messages API call: a claim younger than this (and a margin) may
    /// be another delivery's send still on its way.
    pub send_timeout: Duration,
    /// How long a sent part may hold the customer's next one until Twilio has handed it
    /// to WhatsApp; zero sends without waiting (and without order across a re-send).
    pub confirm_wait: Duration,
    /// Set while Twilio refuses our credentials; readiness reports it.
    pub auth_failing: AtomicBool,
    /// Set while Twilio refuses our sender configuration; readiness reports it.
    pub config_failing: AtomicBool,
    /// Ledger outcomes being written; waited for at shutdown.
    pub outcomes: TaskTracker,
    /// The agent's files (`OutboundMessage::files`); `None` when none is configured.
    pub media: Option<Arc<dyn MediaStore>>,
    /// How long the URL Twilio gets for a file works.
    pub media_url_ttl: Duration,
    /// SIDs this process sent lately and their parts' keys, known as owned before their
    /// ledger outcome lands.
    pub recent_sids: std::sync::Mutex<std::collections::VecDeque<(String, String)>>,
    /// Which Twilio message is which chat item: a customer who quotes an agent's reply
    /// names it by SID.
    pub index: Arc<dyn MessageIndex>,
    /// How menus are shown, and the contents made for them.
    pub menus: crate::config::MenuSettings,
    pub contents: crate::content::Contents,
}

/// How many of this process's latest SIDs are remembered.
const RECENT_SIDS: usize = 1024;

impl Sender {
    /// Records that Twilio accepted `key` as `sid`, without holding up the message: the
    /// outcome only matters if the part is claimed again, and a message is only received
    /// again if its delete did not happen, which is no later than this write would be.
    /// An outcome lost with the process leaves the claim, which is reconciled with Twilio.
    fn record_sent(&self, key: String, sid: String) -> tokio::task::JoinHandle<()> {
        {
            let mut recent = self.recent_sids.lock().expect("recent SIDs lock");
            if recent.len() == RECENT_SIDS {
                recent.pop_front();
            }
            recent.push_back((sid.clone(), key.clone()));
        }
        let ledger = self.ledger.clone();
        self.outcomes.spawn(async move {
            if let Err(e) = ledger.sent(&key, &sid).await {
                tracing::warn!(error = %e, "sent, but the delivery ledger did not record it");
            }
        })
    }

    /// Indexes an agent's part Twilio took as `sid`, off the message's path, so the agent
    /// sees what a customer's reply quotes.
    fn remember(&self, message: &OutboundMessage, part: &str, sid: &str) {
        let Origin::ConnectItem { item_id, .. } = &message.origin else {
            return;
        };
        let text = if part.is_empty() && !message.files.is_empty() {
            "[a file]"
        } else {
            part
        };
        let entry = IndexedMessage::new(&message.key(), sid, item_id, Author::Agent, text);
        let index = self.index.clone();
        self.outcomes.spawn(async move {
            if let Err(e) = index.remember(entry).await {
                tracing::debug!(error = %e, "a sent part was not indexed; a reply quoting it will not show it");
            }
        });
    }

    /// Waits up to `grace` for the outcomes still being written.
    pub async fn flush_outcomes(&self, grace: Duration) {
        self.outcomes.close();
        if tokio::time::timeout(grace, self.outcomes.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "delivery outcomes still unwritten at shutdown; their claims will be reconciled with Twilio"
            );
        }
    }
}

/// A menu as a WhatsApp list or buttons (its content made or remembered), else the
/// numbered text already in its body. A content Twilio refuses for good leaves the text;
/// a passing failure retries the message.
async fn with_menu(
    s: &Sender,
    mut message: OutboundMessage,
) -> Result<OutboundMessage, (OutboundMessage, SendError)> {
    let Some(menu) = message.menu.as_ref().filter(|_| message.resend.is_none()) else {
        return Ok(message);
    };
    let shown = if s.menus.buttons {
        match s.contents.for_menu(&s.twilio, menu, &s.menus).await {
            Ok((shown, Some(content_sid))) => {
                message.template = Some(waconnect_shared::message::outbound::Template {
                    content_sid,
                    variables: None,
                });
                message.body = String::new();
                shown
            }
            Ok((shown, None)) => shown,
            Err(e) if matches!(e.kind, ErrorKind::Permanent | ErrorKind::Config) => {
                tracing::warn!(error = %e, "Twilio refused a menu's content; sending it as numbered text");
                crate::content::Shown::Text
            }
            Err(e) => return Err((message, e)),
        }
    } else {
        crate::content::Shown::Text
    };
    metrics::counter!("waconnect_sender_menus_total", "shown" => shown.label()).increment(1);
    Ok(message)
}

/// The message with a fresh URL for each of its stored files among its media: made at
/// every delivery, so Twilio always gets one that works for `media_url_ttl`.
async fn with_file_urls(
    s: &Sender,
    mut message: OutboundMessage,
) -> Result<OutboundMessage, (OutboundMessage, SendError)> {
    if message.files.is_empty() {
        return Ok(message);
    }
    let failed = |kind, why: String| SendError {
        kind,
        code: None,
        message: why,
    };
    let Some(media) = &s.media else {
        let e = failed(
            ErrorKind::Permanent,
            "no media store is configured for files (WACONNECT_MEDIA_BUCKET)".into(),
        );
        return Err((message, e));
    };
    // No look for the file first: that would be one more store call per send, and a
    // file gone by now (past its retention) fails at Twilio (63019), which the agent hears
    // once its re-sends failed too.
    // The keys stay: the status callback names them, so a re-send carries the files too.
    let mut urls = Vec::with_capacity(message.files.len());
    let mut unavailable = None;
    for key in &message.files {
        match media.url(key, s.media_url_ttl).await {
            Ok(url) => urls.push(url),
            Err(e) => {
                let kind = match e {
                    MediaError::NotFound | MediaError::InvalidKey(_) => ErrorKind::Permanent,
                    _ => ErrorKind::Transient { retry_after: None },
                };
                unavailable = Some(failed(kind, format!("the file is not available: {e}")));
                break;
            }
        }
    }
    match unavailable {
        Some(e) => Err((message, e)),
        None => {
            message.media_urls.extend(urls);
            Ok(message)
        }
    }
}

/// The pause before a message's first re-send; it doubles with every further one.
const RESEND_PAUSE: Duration = Duration::from_millis(500);

/// Sends tried within one delivery before a passing failure hands the message back to
/// the queue (an attempt), so one customer's trouble never holds a slot for long: a
/// message gets this many tries times `WACONNECT_MAX_ATTEMPTS`.
const TRIES_PER_DELIVERY: u32 = 4;

enum Done {
    Delivered,
    DeadLettered,
    /// Passing failures used this delivery's tries: back to the queue, as an attempt.
    Retry(String),
    /// Shutting down, or the delivery was taken over: leave it to the queue.
    Abandoned,
}

pub async fn consume(sender: Arc<Sender>, settings: ConsumerSettings, stop: CancellationToken) {
    let queue = sender.outbound.clone();
    consumer::consume(queue, settings, stop.clone(), move |message| {
        let (sender, stop) = (sender.clone(), stop.clone());
        async move {
            match deliver(&sender, &message, &stop).await {
                Done::Delivered | Done::DeadLettered => Handled::Settled,
                Done::Retry(reason) => {
                    let failed = sender
                        .outbound
                        .fail(&message.receipt, &reason, sender.max_backoff)
                        .await;
                    match failed {
                        Ok(FailOutcome::DeadLettered) => Handled::Settled,
                        _ => Handled::Pending,
                    }
                }
                Done::Abandoned => {
                    let _ = sender.outbound.release(&message.receipt).await;
                    Handled::Pending
                }
            }
        }
    })
    .await;
}

async fn deliver(s: &Sender, m: &ReceivedMessage, stop: &CancellationToken) -> Done {
    let message = match OutboundMessage::from_json(&m.body) {
        Ok(o) => o,
        Err(e) => {
            let reason = format!("undecodable outbound message: {e}");
            let _ = s.outbound.dead_letter(&m.receipt, &reason).await;
            metrics::counter!("waconnect_sender_failed_total", "code" => "undecodable")
                .increment(1);
            return Done::DeadLettered;
        }
    };
    let mut outcomes = Vec::new();
    // Every line about the message carries its trace id, and the hop joins its trace.
    let trace_id = message.trace_id();
    let span = tracing::info_span!(
        "outbound",
        trace_id = %trace_id,
        item_id = tracing::field::Empty
    );
    if let Origin::ConnectItem { item_id, .. } = &message.origin {
        span.record("item_id", item_id.as_str());
    }
    waconnect_shared::message::trace::follow(&span, &trace_id);
    let done = deliver_parts(s, m, message, stop, &mut outcomes)
        .instrument(span)
        .await;
    if matches!(done, Done::Abandoned) {
        // Whoever takes the message next must find the parts already sent recorded.
        for written in outcomes {
            let _ = written.await;
        }
    }
    done
}

async fn deliver_parts(
    s: &Sender,
    m: &ReceivedMessage,
    message: OutboundMessage,
    stop: &CancellationToken,
    outcomes: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Done {
    let message = match with_file_urls(s, message).await {
        Ok(m) => m,
        Err((message, e)) if e.kind == ErrorKind::Permanent => {
            return fail_permanently(s, m, &message, &e).await;
        }
        Err((message, e)) => return retry_or_give_up(s, m, &message, &e).await,
    };
    let message = match with_menu(s, message).await {
        Ok(m) => m,
        Err((message, e)) => return retry_or_give_up(s, m, &message, &e).await,
    };
    // A re-send's part may have been sent already: by this sender while it confirmed the
    // part before (see `confirm`), or by an earlier delivery. Then there is nothing to
    // fetch or pause for.
    let mut first_claim = None;
    let mut parts = match &message.resend {
        None => split(&message.body, MAX_BODY_CHARS),
        Some(_) => {
            let claim = s.ledger.claim(&format!("{}#0", message.dedup_id())).await;
            let sent = matches!(claim, Ok(Claim::Sent { .. }));
            let fresh = matches!(claim, Ok(Claim::Fresh { .. }));
            first_claim = Some(claim);
            if sent {
                vec![String::new()]
            } else {
                match resend_body(s, m, &message, stop).await {
                    Ok(body) => vec![body],
                    Err(done) => {
                        if fresh {
                            let _ = s.ledger.release(&format!("{}#0", message.dedup_id())).await;
                        }
                        return done;
                    }
                }
            }
        }
    };
    if parts.is_empty() {
        // A media-only or template message: one part without a body.
        parts.push(String::new());
    }
    for (i, part) in parts.iter().enumerate() {
        let key = format!("{}#{i}", message.dedup_id());
        let fields = form_for(s, &message, part, i);
        let mut backoff = Backoff::new(Duration::from_millis(200), s.max_backoff);
        let mut tries = 0;
        // The SID Twilio gave the part: set on every way out of the loop but a return.
        let sent: String;
        // When set, an attempt since then may have reached Twilio without us hearing so:
        // ask Twilio before sending again.
        let claim = match first_claim.take() {
            Some(claim) => claim,
            None => s.ledger.claim(&key).await,
        };
        let claim = match outcome_of_a_live_claim(s, &key, claim, stop).await {
            Ok(claim) => claim,
            Err(done) => return done,
        };
        // With the receive count, what tells a second delivery from a first.
        tracing::debug!(part = %key, receives = m.receive_count, claim = ?claim, "part claimed");
        // The claim this delivery holds (its time in the ledger), and since when here.
        let mut held: (DateTime<Utc>, Instant);
        let mut unsure_since = match claim {
            Ok(Claim::Sent { sid }) => {
                // Sent by an earlier delivery, which may not have seen it through.
                if let Err(done) = confirm(s, m, &message, i, sid, stop).await {
                    return done;
                }
                continue;
            }
            Ok(Claim::Fresh { since }) => {
                held = holding(since);
                None
            }
            Ok(Claim::Unknown { since }) => {
                // Too old to be in flight: taken over, so that a sender stalled since it
                // claimed the part can no longer post it.
                match s.ledger.renew(&key, since).await {
                    Ok(Some(now)) => held = holding(now),
                    Ok(None) => return Done::Abandoned,
                    Err(e) => {
                        tracing::warn!(error = %e, "delivery ledger unavailable; will retry");
                        return Done::Abandoned;
                    }
                }
                // Twilio is asked from when the message was queued, not from the claim's
                // time: a delivery that took the claim over and then stopped (its
                // visibility lapsed, it froze) moved that time past an earlier post, which
                // would then go unseen and be sent again.
                Some(since.min(message.created_at))
            }
            Err(e) => {
                tracing::warn!(error = %e, "delivery ledger unavailable; will retry");
                return Done::Abandoned;
            }
        };
        loop {
            if let Some(since) = unsure_since {
                match reconcile(s, &message, part, i, since).await {
                    Reconciled::Sent(sid) => {
                        outcomes.push(s.record_sent(key.clone(), sid.clone()));
                        s.remember(&message, part, &sid);
                        metrics::counter!("waconnect_sender_reconciled_total").increment(1);
                        sent = sid;
                        break;
                    }
                    Reconciled::NotSent => unsure_since = None,
                    Reconciled::CannotTell => {}
                }
            }
            if stop.is_cancelled() {
                return Done::Abandoned;
            }
            let err = if unsure_since.is_some() {
                // Twilio could not be asked: do not risk a duplicate, wait and ask again.
                SendError {
                    kind: ErrorKind::Transient { retry_after: None },
                    code: None,
                    message: "earlier attempt's outcome unknown and Twilio cannot be asked".into(),
                }
            } else {
                let waited = s.limiters.of(message.from.as_ref()).acquire().await;
                metrics::histogram!("waconnect_sender_rate_limit_wait_seconds")
                    .record(waited.as_secs_f64());
                match still_ours(s, &key, held).await {
                    Some(now) => held = now,
                    None => return Done::Abandoned,
                }
                let attempt_at = chrono::Utc::now();
                let started = Instant::now();
                let result = s.twilio.send(&fields).await;
                metrics::histogram!("waconnect_sender_send_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                match result {
                    Ok(sid) => {
                        if s.auth_failing.swap(false, Ordering::Relaxed) {
                            tracing::info!("Twilio accepts the credentials again");
                            metrics::gauge!("waconnect_sender_twilio_auth_failing").set(0.0);
                        }
                        if s.config_failing.swap(false, Ordering::Relaxed) {
                            tracing::info!("Twilio accepts the sender configuration again");
                            metrics::gauge!("waconnect_sender_twilio_config_failing").set(0.0);
                        }
                        outcomes.push(s.record_sent(key.clone(), sid.clone()));
                        s.remember(&message, part, &sid);
                        metrics::counter!("waconnect_sender_sent_total").increment(1);
                        tracing::debug!(message_sid = %sid, part = i, "sent to Twilio");
                        sent = sid;
                        break;
                    }
                    Err(e) => {
                        if e.kind == ErrorKind::Unknown {
                            unsure_since = Some(attempt_at);
                        }
                        e
                    }
                }
            };
            let code = err
                .code
                .map_or_else(|| "none".to_owned(), |c| c.to_string());
            match &err.kind {
                ErrorKind::Permanent => {
                    let _ = s.ledger.release(&key).await;
                    return fail_permanently(s, m, &message, &err).await;
                }
                ErrorKind::Auth => {
                    if !s.auth_failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %err, "Twilio refuses the credentials; holding messages until it accepts them");
                        metrics::gauge!("waconnect_sender_twilio_auth_failing").set(1.0);
                    }
                }
                ErrorKind::Config => {
                    if !s.config_failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %err, "Twilio refuses the sender configuration (TWILIO_FROM / TWILIO_MESSAGING_SERVICE_SID / a route's numbers or service / the account); holding messages until it accepts it");
                        metrics::gauge!("waconnect_sender_twilio_config_failing").set(1.0);
                    }
                }
                ErrorKind::Throttled { .. } | ErrorKind::Transient { .. } | ErrorKind::Unknown => {}
            }
            // However the failures came, a message has a bound in age and in tries.
            if age(&message) > s.give_up_after {
                if unsure_since.is_none() {
                    let _ = s.ledger.release(&key).await;
                }
                let why = format!("not taken by Twilio within {:?}", s.give_up_after);
                return give_up(s, m, &message, &err, &why).await;
            }
            tries += 1;
            if tries >= TRIES_PER_DELIVERY
                && matches!(err.kind, ErrorKind::Transient { .. } | ErrorKind::Unknown)
            {
                // A part that surely did not reach Twilio is unclaimed again, so the next
                // delivery need not ask Twilio about it.
                if unsure_since.is_none() {
                    let _ = s.ledger.release(&key).await;
                }
                metrics::counter!("waconnect_sender_retried_total", "code" => code).increment(1);
                return retry_or_give_up(s, m, &message, &err).await;
            }
            metrics::counter!("waconnect_sender_retried_total", "code" => code).increment(1);
            let wait = retry_wait(s, &err, &mut backoff);
            tracing::debug!(error = %err, ?wait, "Twilio send will be retried");
            tokio::select! {
                () = stop.cancelled() => return Done::Abandoned,
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(done) = confirm(s, m, &message, i, sent, stop).await {
            return done;
        }
    }
    if let Err(e) = s.outbound.delete(&m.receipt).await {
        tracing::warn!(error = %e, "sent, but the queue delete failed; the ledger stops a resend");
    }
    Done::Delivered
}

/// The text of a part to send again, as Twilio has it, after a pause that grows with each
/// re-send, since the reason was a rate.
async fn resend_body(
    s: &Sender,
    m: &ReceivedMessage,
    message: &OutboundMessage,
    stop: &CancellationToken,
) -> Result<String, Done> {
    let resend = message.resend.as_ref().expect("a re-send");
    if m.receive_count == 1 {
        tokio::select! {
            () = stop.cancelled() => return Err(Done::Abandoned),
            () = tokio::time::sleep(resend_pause(s, resend.attempt)) => {}
        }
    }
    match s.twilio.fetch(&resend.sid).await {
        Ok(original) => {
            if original.num_media.parse::<u32>().unwrap_or(0) > 0 && message.media_urls.is_empty() {
                tracing::warn!(message_sid = %resend.sid, "re-sending a message's text only: its media are not sent again");
            }
            Ok(original.body)
        }
        Err(e) if e.kind == ErrorKind::Permanent => Err(fail_permanently(s, m, message, &e).await),
        Err(e) => Err(retry_or_give_up(s, m, message, &e).await),
    }
}

/// How long ago the message was queued: with `give_up_after`, the bound on its tries.
fn age(message: &OutboundMessage) -> Duration {
    (chrono::Utc::now() - message.created_at)
        .to_std()
        .unwrap_or_default()
}

/// The pause before sending again after `err`: what Twilio asked for, or the next backoff
/// step, at most `max_backoff` either way.
fn retry_wait(s: &Sender, err: &SendError, backoff: &mut Backoff) -> Duration {
    let asked = match err.kind {
        ErrorKind::Throttled { retry_after } | ErrorKind::Transient { retry_after } => retry_after,
        _ => None,
    };
    asked
        .unwrap_or_else(|| backoff.next_delay())
        .min(s.max_backoff)
}

fn resend_pause(s: &Sender, attempt: u32) -> Duration {
    (RESEND_PAUSE * 2u32.saturating_pow(attempt.saturating_sub(1))).min(s.max_backoff)
}

/// Waits, up to `confirm_wait`, until Twilio has handed part `index` (sent as `sid`) to
/// WhatsApp, so that nothing after it goes first: WhatsApp refuses a message over the
/// sender's rate only after Twilio took it (63018, by status callback), and a part sent
/// again after its successors would arrive out of order. Holding the message meanwhile
/// holds the customer's FIFO group fleet-wide, which is what Twilio advises for ordered
/// sends. A part refused for a passing reason is sent again here, before anything after
/// it, as the re-send the relay would queue from the status callback (same ledger key, so
/// that one finds it sent). A re-send Twilio does not take (429, 5xx) is tried again
/// here too, as a first send is, and past its tries the message goes back to its queue,
/// still ahead of what follows, where the next delivery picks the chain up from the
/// ledger. Past the wait, when Twilio cannot be asked, or when a re-send's fate is
/// unknown, order is left to the relay's re-send.
async fn confirm(
    s: &Sender,
    m: &ReceivedMessage,
    message: &OutboundMessage,
    index: usize,
    mut sid: String,
    stop: &CancellationToken,
) -> Result<(), Done> {
    if s.confirm_wait.is_zero() {
        return Ok(());
    }
    let mut current = message.clone();
    let mut deadline = Instant::now() + s.confirm_wait;
    let mut poll = CONFIRM_FIRST_POLL;
    // Re-sends Twilio did not take, and the pause before the next try.
    let mut untaken = 0;
    let mut backoff = Backoff::new(Duration::from_millis(200), s.max_backoff);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Err(Done::Abandoned),
            () = tokio::time::sleep(poll) => {}
        }
        poll = (poll * 2).min(CONFIRM_MAX_POLL);
        let fetched = match s.twilio.fetch(&sid).await {
            Ok(f) => f,
            Err(e) if matches!(e.kind, ErrorKind::Auth | ErrorKind::Permanent) => return Ok(()),
            Err(_) if Instant::now() < deadline => continue,
            Err(_) => break,
        };
        if fetched.pending() {
            if Instant::now() < deadline {
                continue;
            }
            break;
        }
        if !fetched.failed() {
            return Ok(());
        }
        // The files go with the first part. Past its last re-send, the relay tells the
        // agent.
        let again = fetched
            .refused_for_now(index == 0 && !current.files.is_empty())
            .then(|| current.resent(&sid, index as u32))
            .flatten();
        let Some(again) = again else {
            return pass_on(s, &current, index, &sid, &fetched).await;
        };
        let key = format!("{}#0", again.dedup_id());
        let claimed = match s.ledger.claim(&key).await {
            Ok(Claim::Sent { sid: theirs }) => {
                (sid, current, poll) = (theirs, again, CONFIRM_FIRST_POLL);
                deadline = Instant::now() + s.confirm_wait;
                continue;
            }
            Ok(Claim::Fresh { since }) => since,
            // Another delivery is on it, or the ledger cannot say: not ours to send.
            _ => return pass_on(s, &current, index, &sid, &fetched).await,
        };
        let attempt = again.resend.as_ref().map_or(1, |r| r.attempt);
        tokio::select! {
            () = stop.cancelled() => {
                let _ = s.ledger.release(&key).await;
                return Err(Done::Abandoned);
            }
            () = tokio::time::sleep(resend_pause(s, attempt)) => {}
        }
        let body = if again.template.is_some() {
            // Twilio shows a template's rendered text; the template is what is sent.
            String::new()
        } else {
            fetched.body.clone()
        };
        s.limiters.of(again.from.as_ref()).acquire().await;
        if still_ours(s, &key, holding(claimed)).await.is_none() {
            return pass_on(s, &current, index, &sid, &fetched).await;
        }
        match s.twilio.send(&form_for(s, &again, &body, index)).await {
            Ok(new) => {
                tracing::info!(message_sid = %sid, code = ?fetched.error_code, attempt, "WhatsApp refused a reply for a passing reason; sent it again before the next");
                metrics::counter!("waconnect_sender_resent_in_place_total").increment(1);
                // Awaited: the relay queues this same re-send from the status callback,
                // and it should find it recorded rather than have to ask Twilio.
                let _ = s.record_sent(key, new.clone()).await;
                (sid, current, poll) = (new, again, CONFIRM_FIRST_POLL);
                deadline = Instant::now() + s.confirm_wait;
            }
            Err(e) => {
                if e.kind != ErrorKind::Unknown {
                    let _ = s.ledger.release(&key).await;
                }
                if !matches!(
                    e.kind,
                    ErrorKind::Throttled { .. } | ErrorKind::Transient { .. }
                ) {
                    // Perhaps sent: the relay's re-send from the status callback takes it
                    // from here, and its ledger key stops a second post.
                    return pass_on(s, &current, index, &sid, &fetched).await;
                }
                // Not taken. Passing it to the relay would queue it behind what the agent
                // wrote next; it is tried again here instead, within the bounds a first
                // send has: throttling costs no try (only the message's age bounds it),
                // other failures a few tries per delivery.
                if age(message) > s.give_up_after {
                    let why = format!("not taken by Twilio within {:?}", s.give_up_after);
                    return Err(give_up(s, m, &current, &e, &why).await);
                }
                if matches!(e.kind, ErrorKind::Transient { .. }) {
                    untaken += 1;
                    if untaken >= TRIES_PER_DELIVERY {
                        return Err(retry_or_give_up(s, m, &current, &e).await);
                    }
                }
                let wait = retry_wait(s, &e, &mut backoff);
                tracing::debug!(error = %e, ?wait, "a re-send Twilio did not take will be tried again");
                tokio::select! {
                    () = stop.cancelled() => return Err(Done::Abandoned),
                    () = tokio::time::sleep(wait) => {}
                }
                // The part is still failed at Twilio: the next round claims its re-send
                // again and sends it, unless another delivery did meanwhile.
                (poll, deadline) = (CONFIRM_FIRST_POLL, Instant::now() + s.confirm_wait);
            }
        }
    }
    metrics::counter!("waconnect_sender_unconfirmed_total").increment(1);
    Ok(())
}

/// A failure of part `index` (Twilio's `sid`) this delivery does not send again itself
/// goes to the relay as its status callback would: the relay tells the agent, or queues
/// the re-send. Status callbacks are best effort (and on one box, ingress may be down
/// when one comes), so without this a final failure could reach no one. When the inbound
/// queue cannot take it, the message comes back, and the next delivery finds the failure
/// again.
async fn pass_on(
    s: &Sender,
    message: &OutboundMessage,
    index: usize,
    sid: &str,
    fetched: &crate::twilio::Fetched,
) -> Result<(), Done> {
    // The bridge's own messages (a closing text, a template nudge) have no agent to tell.
    if matches!(message.origin, Origin::Bridge { .. }) {
        return Ok(());
    }
    let failure = Failure {
        sid: sid.to_owned(),
        status: if fetched.status == "undelivered" {
            "undelivered"
        } else {
            "failed"
        },
        code: fetched
            .error_code
            .map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
        why: fetched
            .error_message
            .clone()
            .unwrap_or_else(|| "no reason given".to_owned()),
    };
    match tell_relay(s, message, &failure, callback_query(message, index)).await {
        Ok(()) => {
            tracing::debug!(message_sid = %sid, code = %failure.code, "failure passed on to the relay");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot pass a failure on to the relay yet");
            Err(Done::Abandoned)
        }
    }
}

/// How soon Twilio is first asked whether a part left its queue, and the longest gap
/// between askings (it doubles in between).
const CONFIRM_FIRST_POLL: Duration = Duration::from_millis(50);
const CONFIRM_MAX_POLL: Duration = Duration::from_secs(1);

enum Reconciled {
    Sent(String),
    NotSent,
    CannotTell,
}

/// A claim held longer than this (by this process's clock) is renewed before its part is
/// posted. Another delivery waits for a claim to be `LIVE_CLAIM_MARGIN` past the send
/// timeout before it takes it over, so a younger claim is surely still this one's; an
/// older one may have been taken over while this sender stalled (a frozen VM, a long
/// rate-limit wait), and posting it then could send the part twice.
const RENEW_AFTER: Duration = Duration::from_millis(500);

/// A claim made at `since`, with the moment it was made by this process's clock: a
/// ledger slow to answer has made the claim older than its answer.
fn holding(since: DateTime<Utc>) -> (DateTime<Utc>, Instant) {
    let age = (Utc::now() - since).to_std().unwrap_or_default();
    let now = Instant::now();
    (since, now.checked_sub(age).unwrap_or(now))
}

/// The claim `held` (its time in the ledger, and since when this delivery holds it), if
/// it is still this delivery's: renewed when it is older than [`RENEW_AFTER`]. `None`
/// when another delivery took the part over, or the ledger cannot say.
async fn still_ours(
    s: &Sender,
    key: &str,
    held: (DateTime<Utc>, Instant),
) -> Option<(DateTime<Utc>, Instant)> {
    let (since, at) = held;
    if at.elapsed() < RENEW_AFTER {
        return Some(held);
    }
    match s.ledger.renew(key, since).await {
        Ok(Some(now)) => Some(holding(now)),
        Ok(None) => {
            tracing::warn!(part = %key, "another delivery took this part over while this one waited; leaving it to that one");
            metrics::counter!("waconnect_sender_claims_taken_over_total").increment(1);
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "delivery ledger unavailable; will retry");
            None
        }
    }
}

/// How soon a delivery that found another's claim in progress reads the ledger again;
/// the pause doubles up to [`LIVE_CLAIM_MAX_POLL`], so waiting out the default 10 s
/// timeout (and 2 s) costs about fifteen reads (on DynamoDB, conditional writes), not 120.
const LIVE_CLAIM_POLL: Duration = Duration::from_millis(100);
const LIVE_CLAIM_MAX_POLL: Duration = Duration::from_secs(1);
/// Beyond the send timeout: the other delivery records its outcome after the call ends.
const LIVE_CLAIM_MARGIN: Duration = Duration::from_secs(2);

/// `claim`, or once it is no longer another delivery's send in progress, what the ledger
/// then says. A claim younger than a send's timeout may be a send still on its way to
/// Twilio, which Twilio cannot list yet: reconciling now would find nothing and send the
/// part a second time. That happens when a message is delivered twice at once (SQS does
/// now and then, and a visibility timeout lapses when its keeper cannot reach the
/// queue), so such a claim is waited on until its outcome lands or it is too old to be
/// in flight. A claim left by a crash is older than that by the time its message comes
/// back; one left moments ago by a send whose answer was lost costs at most that wait.
async fn outcome_of_a_live_claim(
    s: &Sender,
    key: &str,
    mut claim: Result<Claim, LedgerError>,
    stop: &CancellationToken,
) -> Result<Result<Claim, LedgerError>, Done> {
    let in_flight = s.send_timeout + LIVE_CLAIM_MARGIN;
    let mut waited = false;
    let mut poll = LIVE_CLAIM_POLL;
    while let Ok(Claim::Unknown { since }) = &claim {
        let age = (chrono::Utc::now() - *since).to_std().unwrap_or_default();
        if age >= in_flight {
            break;
        }
        if !waited {
            waited = true;
            // Usually another delivery sending it now; else one whose send failed with
            // an unknown outcome moments ago.
            tracing::warn!(part = %key, "this part was claimed moments ago and may be on its way to Twilio; waiting for its outcome");
            metrics::counter!("waconnect_sender_recent_claims_waited_total").increment(1);
        }
        tokio::select! {
            () = stop.cancelled() => return Err(Done::Abandoned),
            () = tokio::time::sleep(poll.min(in_flight - age)) => {}
        }
        poll = (poll * 2).min(LIVE_CLAIM_MAX_POLL);
        claim = s.ledger.claim(key).await;
    }
    Ok(claim)
}

/// Whether Twilio already has this part, after an attempt whose answer was lost. A
/// customer's messages go out one at a time (their FIFO group), so a message to them
/// created since that attempt (or, for an earlier delivery's, since the message was
/// queued) that no other part owns is this part's — if it looks like
/// it: the same text, or for a part without text (a template, a file) the same number of
/// files. A SID already recorded for another part never proves this one, so an agent who
/// writes "ok" twice gets both.
async fn reconcile(
    s: &Sender,
    message: &OutboundMessage,
    part: &str,
    index: usize,
    since: chrono::DateTime<chrono::Utc>,
) -> Reconciled {
    let from = match s.twilio.sent_via(message.from.as_ref()) {
        crate::twilio::SentVia::From(from) => Some(from),
        _ => None,
    };
    let Ok(listed) = s.twilio.sent_to(message.to.as_str(), from.as_deref()).await else {
        return Reconciled::CannotTell;
    };
    // Clocks differ a little between here and Twilio.
    let since = since - chrono::Duration::seconds(2);
    let media = if index == 0 {
        message.media_urls.len()
    } else {
        0
    };
    let looks_like = |l: &crate::twilio::Listed| {
        if part.is_empty() {
            l.num_media.parse::<usize>().unwrap_or(0) == media
        } else {
            l.body == part
        }
    };
    let candidates: Vec<&crate::twilio::Listed> = listed
        .iter()
        .filter(|l| l.created().is_none_or(|c| c >= since) && looks_like(l))
        .collect();
    if candidates.is_empty() {
        return Reconciled::NotSent;
    }
    let sids: Vec<String> = candidates.iter().map(|l| l.sid.clone()).collect();
    let Ok(mut owners) = s.ledger.owned(&sids).await else {
        return Reconciled::CannotTell;
    };
    owners.extend(
        s.recent_sids
            .lock()
            .expect("recent SIDs lock")
            .iter()
            .filter(|(sid, _)| sids.contains(sid))
            .cloned(),
    );
    // Newest first, as Twilio lists them: ours came after any earlier part's. One
    // recorded as this very part's (its outcome landed since the claim) proves it too.
    let key = format!("{}#{index}", message.dedup_id());
    match candidates
        .into_iter()
        .find(|l| owners.get(&l.sid).is_none_or(|owner| *owner == key))
    {
        Some(l) => Reconciled::Sent(l.sid.clone()),
        None => Reconciled::NotSent,
    }
}

fn form_for(
    s: &Sender,
    message: &OutboundMessage,
    part: &str,
    index: usize,
) -> Vec<(String, String)> {
    let mut fields = vec![("To".to_owned(), message.to.as_str().to_owned())];
    if !part.is_empty() {
        fields.push(("Body".into(), part.to_owned()));
    }
    if index == 0 {
        for url in &message.media_urls {
            fields.push(("MediaUrl".into(), url.clone()));
        }
        if let Some(t) = &message.template {
            fields.push(("ContentSid".into(), t.content_sid.clone()));
            if let Some(v) = &t.variables {
                fields.push(("ContentVariables".into(), v.clone()));
            }
        }
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(callback_query(message, index))
        .finish();
    if let Some(callback) = s.twilio.status_callback(&query) {
        fields.push(("StatusCallback".into(), callback));
    }
    s.twilio.with_sender(fields, message.from.as_ref())
}

/// What the status callback of part `index` names, for the relay to read back. An
/// agent's item: the item and chat, so the relay tells the agent it was delivered or read
/// without any lookup table; the part, and a re-send's attempt; and on the part that
/// carries them, the files' keys, so that a re-send the relay queues from the callback (a
/// passing refusal such as 63018) sends the files again, not the text alone.
fn callback_query(message: &OutboundMessage, index: usize) -> Vec<(String, String)> {
    match &message.origin {
        Origin::ConnectItem {
            contact_id,
            item_id,
            ..
        } => {
            let (part, resend) = match &message.resend {
                Some(r) => (r.part as usize, Some(r.attempt)),
                None => (index, None),
            };
            let mut q = vec![
                ("item".to_owned(), item_id.clone()),
                ("contact".to_owned(), contact_id.clone()),
                ("part".to_owned(), part.to_string()),
            ];
            if let Some(attempt) = resend {
                q.push(("resend".into(), attempt.to_string()));
            }
            if index == 0 {
                q.extend(message.files.iter().map(|k| ("file".to_owned(), k.clone())));
            }
            q
        }
        Origin::Bridge { id, .. } => vec![("bridge".into(), id.clone())],
    }
}

/// Hands the message back to the queue as a failed attempt, or gives it up if that was
/// its last.
async fn retry_or_give_up(
    s: &Sender,
    m: &ReceivedMessage,
    message: &OutboundMessage,
    err: &SendError,
) -> Done {
    if m.attempts + 1 >= s.max_attempts {
        let why = format!("not taken by Twilio in {} deliveries", m.attempts + 1);
        return give_up(s, m, message, err, &why).await;
    }
    Done::Retry(err.to_string())
}

/// Gives a message up after passing failures outlasted its bounds: like a permanent
/// refusal, the agent is told why and the message is dead-lettered.
async fn give_up(
    s: &Sender,
    m: &ReceivedMessage,
    message: &OutboundMessage,
    last: &SendError,
    why: &str,
) -> Done {
    let err = SendError {
        kind: ErrorKind::Permanent,
        code: last.code,
        message: format!("{why}; last error: {}", last.message),
    };
    fail_permanently(s, m, message, &err).await
}

/// Dead-letters the message and puts a delivery failure on the inbound queue, so the
/// relay tells the agent in the chat.
async fn fail_permanently(
    s: &Sender,
    m: &ReceivedMessage,
    message: &OutboundMessage,
    err: &SendError,
) -> Done {
    let code = err
        .code
        .map_or_else(|| "none".to_owned(), |c| c.to_string());
    let reason = err.to_string();
    tracing::warn!(customer = %message.to, code = %code, "outbound message refused by Twilio; dead-lettering");
    metrics::counter!("waconnect_sender_failed_total", "code" => code.clone()).increment(1);
    if let Origin::ConnectItem {
        contact_id,
        item_id,
        ..
    } = &message.origin
    {
        // No status callback will come: Twilio made no message.
        let failure = Failure {
            sid: format!("refused-{item_id}"),
            status: "failed",
            code,
            why: err.message.clone(),
        };
        // Not `callback_query`: a re-send's attempt or the files' keys would have the
        // relay send again, for a passing code, what is being given up here.
        let query = vec![
            ("item".into(), item_id.clone()),
            ("contact".into(), contact_id.clone()),
            ("part".into(), "0".into()),
        ];
        if let Err(e) = tell_relay(s, message, &failure, query).await {
            // Not dead-lettered yet: the message comes back and this is tried again.
            tracing::warn!(error = %e, "cannot tell the agent about the failure yet");
            return Done::Abandoned;
        }
    }
    let _ = s.outbound.dead_letter(&m.receipt, &reason).await;
    Done::DeadLettered
}

/// A part's failure, as a status callback tells it.
struct Failure {
    sid: String,
    status: &'static str,
    code: String,
    why: String,
}

/// Puts `failure` of `message` on the inbound queue as the status callback the relay acts
/// on (it tells the agent, or queues a re-send), with `query` as the callback's URL would
/// carry it. `From` is the message's business number; a message without one belongs to a
/// conversation recorded before routing, which the relay keys by the customer alone. The
/// dedup id is the one ingress gives the real callback, so that whichever comes second
/// within the queue's window is dropped (past it, the relay's ClientToken keeps the
/// agent's notice single).
async fn tell_relay(
    s: &Sender,
    message: &OutboundMessage,
    failure: &Failure,
    query: Vec<(String, String)>,
) -> Result<(), waconnect_shared::storage::queue::QueueError> {
    let mut fields = vec![
        ("MessageSid".to_owned(), failure.sid.clone()),
        ("MessageStatus".into(), failure.status.into()),
        ("ErrorCode".into(), failure.code.clone()),
        ("ErrorMessage".into(), failure.why.clone()),
        ("To".into(), message.to.as_str().to_owned()),
    ];
    if let Some(business) = &message.from {
        fields.push(("From".into(), business.as_str().to_owned()));
    }
    let mut event = InboundEvent::new(EventKind::Status, fields);
    event.query = query;
    let dedup_id = event
        .dedup_id()
        .expect("the event names its MessageSid and MessageStatus");
    s.inbound
        .send(NewMessage {
            group_id: EventKind::Status.queue_group(&message.key()),
            dedup_id,
            body: event.to_json(),
        })
        .await
        .map(drop)
}
