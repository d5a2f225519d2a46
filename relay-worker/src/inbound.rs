//! The inbound queue consumer: each customer message becomes Participant API calls on
//! the customer's chat, started (or restarted, rehydrated) as needed (docs/architecture.md §4).

use crate::NOTICE_PREFIX;
use crate::Relay;
use crate::attachment::{self, Attached, Prepared, ReadyFile};
use crate::config::{CallMe, RelayRoute};
use crate::connect::{ConnectError, ErrorKind, NewChat, OutboundCall};
use crate::fleet::Fleet;
use crate::indicator::{ReadReceipts, Target, Why};
use crate::legacy;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use waconnect_shared::ConversationKey;
use waconnect_shared::message::conversation::{Conversation, ConversationState};
use waconnect_shared::message::event::{EventError, EventKind, InboundEvent};
use waconnect_shared::message::outbound::{Origin, OutboundMessage, Resend, Template};
use waconnect_shared::message::text::split;
use waconnect_shared::storage::consumer::{self, ConsumerSettings, Handled};
use waconnect_shared::storage::delivery::Claim;
use waconnect_shared::storage::message_index::{Author, IndexedMessage};
use waconnect_shared::storage::queue::{FailOutcome, NewMessage, QueueError, ReceivedMessage};
use waconnect_shared::storage::store::{Fence, Modified, StoreError, StoredConversation, modify};

/// Connect's SendMessage limit, in characters.
pub const MAX_PART_CHARS: usize = 1024;
/// How often one message may find its chat ended and start another before giving up.
const MAX_CHAT_RESTARTS: usize = 3;
/// How many new connections one event may make when Connect refuses their tokens. A
/// refused new token is not an ended chat (Connect refuses the new connection itself
/// then), so past the bound the event is retried later, never dropped.
const MAX_NEW_CONNECTIONS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("conversation store: {0}")]
    Store(#[from] StoreError),
    #[error("inbound event: {0}")]
    Event(#[from] EventError),
    #[error("the chat kept ending while this message was relayed")]
    ChatKeepsEnding,
    #[error("outbound queue: {0}")]
    Queue(String),
    #[error("media: {0}")]
    Media(String),
}

/// Receives and relays until `stop`, then lets in-flight messages finish within the grace
/// period. Whatever does not finish is redelivered after its visibility timeout; every
/// Connect call it made carries a ClientToken, so nothing doubles.
pub async fn consume(relay: Arc<Relay>, fleet: Arc<Fleet>, stop: CancellationToken) {
    let settings = ConsumerSettings {
        concurrency: relay.config.concurrency,
        visibility: relay.config.visibility,
        grace: relay.config.shutdown_grace,
        gather: relay.config.worker.receive_gather,
        limit: consumer::HANDLING_LIMIT,
    };
    consumer::consume(relay.inbound.clone(), settings, stop, move |message| {
        let (relay, fleet) = (relay.clone(), fleet.clone());
        async move { process(&relay, &fleet, message).await }
    })
    .await;
}

async fn process(relay: &Relay, fleet: &Arc<Fleet>, message: ReceivedMessage) -> Handled {
    let queue = &relay.inbound;
    let event = match InboundEvent::from_json(&message.body) {
        Ok(e) => e,
        Err(e) => {
            let reason = format!("undecodable inbound event: {e}");
            tracing::error!(message_id = %message.message_id, %reason, "dead-lettering");
            log_queue_error(queue.dead_letter(&message.receipt, &reason).await.err());
            metrics::counter!("waconnect_relay_inbound_total", "outcome" => "dead_lettered")
                .increment(1);
            return Handled::Settled;
        }
    };
    // Every line about the event carries its trace id and MessageSid.
    let trace_id = event.trace_id();
    let span = tracing::info_span!(
        "inbound",
        trace_id = %trace_id,
        message_sid = event.field("MessageSid").unwrap_or_default(),
        kind = ?event.kind,
    );
    waconnect_shared::message::trace::follow(&span, &trace_id);
    settle(relay, fleet, &event, message).instrument(span).await
}

/// Relays `event` and settles its queue message: deleted, retried later, or dead-lettered.
async fn settle(
    relay: &Relay,
    fleet: &Arc<Fleet>,
    event: &InboundEvent,
    message: ReceivedMessage,
) -> Handled {
    let queue = &relay.inbound;
    let result = match event.kind {
        EventKind::Message => relay_message(relay, fleet, event, &message).await,
        EventKind::Status => relay_status(relay, event).await,
    };
    match result {
        Ok(()) => {
            tracing::debug!("relayed");
            let deleted = queue.delete(&message.receipt).await;
            metrics::counter!("waconnect_relay_inbound_total", "outcome" => "relayed").increment(1);
            match deleted {
                Ok(()) => Handled::Settled,
                Err(e) => {
                    log_queue_error(Some(e));
                    Handled::Pending
                }
            }
        }
        Err(e) => {
            let reason = e.to_string();
            // An event that cannot be read now never will be: retrying it only holds up
            // the conversation's next events.
            let outcome = if matches!(e, RelayError::Event(_)) {
                queue
                    .dead_letter(&message.receipt, &reason)
                    .await
                    .map(|()| FailOutcome::DeadLettered)
            } else {
                queue
                    .fail(&message.receipt, &reason, relay.config.retry_after)
                    .await
            };
            match outcome {
                Ok(FailOutcome::DeadLettered) => {
                    tracing::error!(message_id = %message.message_id, %reason, receives = message.receive_count, "inbound message dead-lettered");
                    metrics::counter!("waconnect_relay_inbound_total", "outcome" => "dead_lettered").increment(1);
                    Handled::Settled
                }
                Ok(FailOutcome::WillRetry) => {
                    tracing::warn!(message_id = %message.message_id, %reason, receives = message.receive_count, "inbound message will be retried");
                    metrics::counter!("waconnect_relay_inbound_total", "outcome" => "retried")
                        .increment(1);
                    Handled::Pending
                }
                Err(q) => {
                    log_queue_error(Some(q));
                    Handled::Pending
                }
            }
        }
    }
}

fn log_queue_error(e: Option<QueueError>) {
    if let Some(e) = e {
        // The message comes back after its visibility timeout; nothing is lost.
        tracing::warn!(error = %e, "inbound queue acknowledgement failed");
    }
}

fn record_status(event: &InboundEvent) {
    let status = event.message_status().unwrap_or("unknown");
    // A fixed label set, whatever Twilio sends.
    let status: &'static str = [
        "queued",
        "sending",
        "sent",
        "delivered",
        "read",
        "failed",
        "undelivered",
        "accepted",
        "scheduled",
        "canceled",
        "receiving",
        "received",
    ]
    .into_iter()
    .find(|s| *s == status)
    .unwrap_or("other");
    metrics::counter!("waconnect_relay_status_callbacks_total", "status" => status).increment(1);
    tracing::debug!(
        message_sid = event.message_sid().unwrap_or_default(),
        status,
        error_code = event.error_code().unwrap_or_default(),
        "status callback recorded"
    );
}

/// Tells the agent what became of their message: Connect's delivered / read receipts,
/// or a clearly marked notice in the chat when it could not be delivered.
async fn relay_status(relay: &Relay, event: &InboundEvent) -> Result<(), RelayError> {
    record_status(event);
    let (Some(item), Some(contact)) = (event.query_param("item"), event.query_param("contact"))
    else {
        return Ok(());
    };
    let status = event.message_status().unwrap_or_default();
    // The rest (queued, sending, sent…) need no record read.
    if !event.is_relayed_status() {
        return Ok(());
    }
    let key = event.key()?;
    let failed = matches!(status, "failed" | "undelivered");
    let code = event.error_code().unwrap_or("unknown");
    if failed && resend(relay, event, &key, item, contact, code).await? {
        return Ok(());
    }
    // The record to use: the remembered one first, then the stored one, then the stored
    // one with a new connection (a bounded number of times).
    let (mut use_cache, mut reconnected) = (true, None::<StoredConversation>);
    let mut new_connections = 0;
    loop {
        let (stored, from_cache) = match reconnected.take() {
            Some(s) => (s, false),
            None => {
                let cached = use_cache
                    .then(|| legacy::cached(relay, &key))
                    .flatten()
                    .filter(|s| s.conversation.contact_id.as_deref() == Some(contact));
                match cached {
                    Some(s) => (s, true),
                    None => match legacy::find(relay, &key).await? {
                        Some(s) => {
                            relay.records.keep(&s);
                            (s, false)
                        }
                        None => {
                            nobody_to_tell(&key, status, "no conversation");
                            return Ok(());
                        }
                    },
                }
            }
        };
        let conversation = &stored.conversation;
        // Receipts belong to the chat the message came from, while it lasts.
        if conversation.contact_id.as_deref() != Some(contact)
            || conversation.state != ConversationState::Active
        {
            nobody_to_tell(&key, status, "the chat is over");
            return Ok(());
        }
        let token = conversation.connection_token_value();
        match tell_agent(relay, event, &token, item, status).await {
            // A remembered token Connect refuses may just be stale: read the record.
            Err(e) if e.kind == ErrorKind::AccessDenied && from_cache => {
                relay.records.forget(&conversation.key());
                use_cache = false;
            }
            // The stored token expired while the chat goes on (connections do not last
            // as long as chats): a new connection, as for a customer's message. Connect
            // refusing a new connection means the chat is over: nobody is left to tell.
            Err(e)
                if e.kind == ErrorKind::AccessDenied && new_connections < MAX_NEW_CONNECTIONS =>
            {
                new_connections += 1;
                match reconnect(relay, stored).await? {
                    Some(fresh) => {
                        relay.records.keep(&fresh);
                        reconnected = Some(fresh);
                    }
                    None => {
                        nobody_to_tell(&key, status, "the chat ended");
                        return Ok(());
                    }
                }
            }
            // Connect takes no receipts while a third participant (a supervisor) is in
            // the chat: final, not worth a retry.
            Err(e) if e.code == "ConflictException" && !failed => {
                metrics::counter!("waconnect_relay_receipts_refused_total").increment(1);
                tracing::debug!(conversation = %key, status, "Connect refused a receipt (more than two participants)");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
            Ok(()) => break,
        }
    }
    if failed {
        metrics::counter!("waconnect_relay_delivery_failures_total", "code" => failure_label(code))
            .increment(1);
        if code == "63016"
            && let Some(template) = &relay
                .config
                .routes
                .of(key.business.as_ref())
                .window_template
        {
            nudge(relay, &key, contact, template).await;
        }
    }
    Ok(())
}

/// A status that has no chat left to reach: said, as an operator looking for a missing
/// receipt would want to find it.
fn nobody_to_tell(key: &ConversationKey, status: &str, why: &'static str) {
    metrics::counter!("waconnect_relay_statuses_unrelayed_total", "why" => why).increment(1);
    tracing::info!(conversation = %key, status, why, "status not relayed: nobody to tell");
}

/// Sends a part again that WhatsApp refused for a passing reason, through the outbound
/// queue in the customer's order; the agent hears nothing unless it is finally given up.
/// True when a re-send was queued.
async fn resend(
    relay: &Relay,
    event: &InboundEvent,
    key: &ConversationKey,
    item: &str,
    contact: &str,
    code: &str,
) -> Result<bool, RelayError> {
    let done = event
        .query_param("resend")
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    // The refused part's files, as the sender named them in the callback's URL (signed by
    // Twilio): the text comes from Twilio's copy, the files from the media store.
    let files: Vec<String> = event
        .query_values("file")
        .filter(|k| waconnect_shared::storage::media::check_key(k).is_ok())
        .take(waconnect_shared::message::event::MAX_MEDIA)
        .map(str::to_owned)
        .collect();
    let passing = code
        .parse()
        .is_ok_and(|code| Resend::is_passing_for(code, !files.is_empty()));
    if !passing || done >= Resend::MAX {
        return Ok(false);
    }
    let key = legacy::group_key(relay, key);
    let message = OutboundMessage {
        to: key.customer.clone(),
        from: key.business.clone(),
        body: String::new(),
        media_urls: Vec::new(),
        files,
        template: None,
        menu: None,
        origin: Origin::ConnectItem {
            contact_id: contact.to_owned(),
            item_id: item.to_owned(),
            participant_role: "AGENT".to_owned(),
        },
        created_at: chrono::Utc::now(),
        resend: Some(Resend {
            sid: event.message_sid()?.to_owned(),
            part: event
                .query_param("part")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            attempt: done + 1,
        }),
    };
    let new = NewMessage {
        group_id: key.storage(),
        dedup_id: message.dedup_id(),
        body: message.to_json(),
    };
    relay
        .outbound
        .send(new)
        .await
        .map_err(|e| RelayError::Queue(e.to_string()))?;
    tracing::info!(conversation = %key, code, attempt = done + 1, "WhatsApp refused a reply for a passing reason; sending it again");
    metrics::counter!("waconnect_relay_resends_total", "code" => failure_label(code)).increment(1);
    Ok(true)
}

/// The Connect call that tells the agent about `status` of their item.
async fn tell_agent(
    relay: &Relay,
    event: &InboundEvent,
    token: &str,
    item: &str,
    status: &str,
) -> Result<(), ConnectError> {
    let first_part = event.query_param("part").is_none_or(|p| p == "0");
    match status {
        "delivered" | "read" if first_part => {
            let content = serde_json::json!({ "messageId": item }).to_string();
            relay
                .api
                .send_event(
                    token,
                    &format!("{}message.{status}", crate::item::EVENT_PREFIX),
                    &content,
                    &client_token(&["receipt", item, status]),
                )
                .await
        }
        "failed" | "undelivered" => {
            let code = event.error_code().unwrap_or("unknown");
            let why = event.field("ErrorMessage").unwrap_or("no reason given");
            // Sent on the customer's side of the chat, so it must not read like them.
            let notice = format!(
                "{NOTICE_PREFIX} Your message was not delivered on WhatsApp (Twilio error {code}: {why})."
            );
            relay
                .api
                .send_message(
                    token,
                    &notice,
                    &client_token(&["notice", item, event.query_param("part").unwrap_or("0")]),
                )
                .await
                .map(drop)
        }
        _ => Ok(()),
    }
}

fn failure_label(code: &str) -> &'static str {
    [
        "63016", "21211", "21610", "21617", "63018", "30001", "11751", "63019", "12300",
    ]
    .into_iter()
    .find(|c| *c == code)
    .unwrap_or("other")
}

/// After 63016 (the 24-hour window closed), the configured template asks the customer
/// to write back; once per chat within the queue's dedup window.
async fn nudge(relay: &Relay, key: &ConversationKey, contact: &str, template: &Template) {
    let key = legacy::group_key(relay, key);
    let message = OutboundMessage {
        to: key.customer.clone(),
        from: key.business.clone(),
        body: String::new(),
        media_urls: Vec::new(),
        files: Vec::new(),
        template: Some(template.clone()),
        menu: None,
        origin: Origin::Bridge {
            reason: "window".into(),
            id: format!("window-{contact}"),
        },
        created_at: chrono::Utc::now(),
        resend: None,
    };
    let new = NewMessage {
        group_id: key.storage(),
        dedup_id: message.dedup_id().to_owned(),
        body: message.to_json(),
    };
    if let Err(e) = relay.outbound.send(new).await {
        tracing::warn!(error = %e, "cannot queue the 24-hour-window template");
    }
}

async fn relay_message(
    relay: &Relay,
    fleet: &Arc<Fleet>,
    event: &InboundEvent,
    message: &ReceivedMessage,
) -> Result<(), RelayError> {
    let key = event.key()?;
    let sid = event.message_sid()?.to_owned();
    if replayed(relay, &sid, event).await {
        tracing::warn!(conversation = %key, message_sid = %sid, "replayed webhook dropped: this message was handled already");
        metrics::counter!("waconnect_relay_inbound_total", "outcome" => "replay").increment(1);
        return Ok(());
    }
    let text = render(event);
    // An answer to the last menu offered goes to the chat as the choice's title.
    let answered = answer_to_menu(relay, &key, event, &text).await?;
    let text = answered.as_ref().map_or(text, |a| a.title.clone());
    // What the agent reads: the message it replies to first, if any.
    let shown = match quote(relay, event).await {
        Some(quote) if text.is_empty() => quote,
        Some(quote) => format!("{quote}\n{text}"),
        None => text.clone(),
    };
    // The files first, in the order the customer sent them, then the caption (WhatsApp
    // shows it under the file) and any location.
    // A message recovered late is told as such before anything of it.
    let mut parts: Vec<Part> = late_note(event).map(Part::Late).into_iter().collect();
    for (i, m) in event.media().iter().enumerate() {
        let content_type = m.content_type.unwrap_or("application/octet-stream");
        let prepared = attachment::prepare(
            &relay.media,
            relay.ledger.as_ref(),
            &sid,
            i,
            m.url,
            content_type,
        )
        .await
        .map_err(|e| RelayError::Media(e.to_string()))?;
        parts.push(Part::Media(i, prepared));
    }
    if !shown.is_empty() {
        parts.extend(
            split(&shown, MAX_PART_CHARS)
                .into_iter()
                .enumerate()
                .map(|(i, t)| Part::Text(i, t)),
        );
    }
    let mut use_cache = true;
    let (mut restarts, mut new_connections) = (0, 0);
    'chat: loop {
        if restarts == MAX_CHAT_RESTARTS {
            return Err(RelayError::ChatKeepsEnding);
        }
        let (mut stored, cached) =
            active_conversation(relay, &key, event, std::mem::take(&mut use_cache)).await?;
        // The record's own key: a legacy record's, when that is the live chat.
        let key = stored.conversation.key();
        // A remembered record's lease may be long out of date; the sweepers see to
        // conversations whose holder died.
        if !cached
            && (stored.lease.owner.is_none()
                || stored
                    .lease
                    .expires_at
                    .is_some_and(|t| t <= chrono::Utc::now()))
        {
            fleet.adopt(&key, "acquired").await;
        }
        for part in &parts {
            loop {
                let contact = stored.conversation.contact_id.clone().unwrap_or_default();
                let token = stored.conversation.connection_token_value();
                match relay_part(relay, &token, &contact, &sid, part).await {
                    Ok(item) => {
                        if let (Some(item), Part::Text(..)) = (item, part) {
                            // The customer's own words, for a later quote of this message.
                            remember(
                                relay,
                                IndexedMessage::new(&key, &sid, &item, Author::Customer, &text),
                            );
                        }
                        break;
                    }
                    // A remembered token Connect refuses may just be stale: read the record.
                    Err(e) if e.kind == ErrorKind::AccessDenied && cached => {
                        relay.records.forget(&key);
                        continue 'chat;
                    }
                    Err(e)
                        if e.kind == ErrorKind::AccessDenied
                            && new_connections < MAX_NEW_CONNECTIONS =>
                    {
                        new_connections += 1;
                        match reconnect(relay, stored).await? {
                            Some(fresh) => {
                                relay.records.keep(&fresh);
                                stored = fresh;
                            }
                            None => {
                                restarts += 1;
                                continue 'chat;
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for part in &parts {
            if let Part::Media(i, prepared) = part {
                media_settled(relay, &sid, *i, prepared).await;
            }
        }
        let lag = (chrono::Utc::now() - message.sent_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!("waconnect_relay_inbound_lag_seconds").record(lag.as_secs_f64());
        if let Some(answer) = answered {
            menu_answered(relay, answer).await?;
        }
        note_inbound(relay, stored, &sid, event).await?;
        if relay.indicators.read_receipts() == ReadReceipts::OnArrival {
            relay.indicators.show(Target::Sid(sid.clone()), Why::Read);
        }
        if let Some(call_me) = &relay.config.routes.of(key.business.as_ref()).call_me
            && call_me.phrases.requested(&text)
        {
            call_customer(relay, &key, call_me, &sid).await?;
        }
        return Ok(());
    }
}

/// Records a message in the index, off the message's path (nothing waits for it, and on
/// DynamoDB the write lingers for company).
pub fn remember(relay: &Relay, message: IndexedMessage) {
    let index = relay.index.clone();
    tokio::spawn(async move {
        if let Err(e) = index.remember(message).await {
            tracing::debug!(error = %e, "a message was not indexed; its receipts and quotes will be missing");
        }
    });
}

/// A customer's answer to the last menu offered, and that menu.
struct Answer {
    title: String,
    menu: Vec<String>,
    /// The conversation whose menu it answers.
    key: ConversationKey,
}

/// The choice a message names in the last menu offered the customer: a button's id, a
/// number in reply to the text menu, or a title typed out. Only such a message costs a
/// read, fresh from the store: the session that offered the menu may run on another
/// worker, after this one cached the record.
async fn answer_to_menu(
    relay: &Relay,
    key: &ConversationKey,
    event: &InboundEvent,
    text: &str,
) -> Result<Option<Answer>, RelayError> {
    let payload = event
        .field("ButtonPayload")
        .filter(|p| !p.trim().is_empty());
    let numeric = text
        .trim()
        .trim_end_matches(['.', ')'])
        .parse::<usize>()
        .is_ok();
    if payload.is_none() && !numeric {
        return Ok(None);
    }
    let Some(stored) = legacy::find(relay, key).await? else {
        return Ok(None);
    };
    let key = stored.conversation.key();
    let Some(menu) = stored.conversation.menu else {
        return Ok(None);
    };
    let title = waconnect_shared::message::menu::chosen(&menu, payload, text).map(str::to_owned);
    let outcome = if title.is_some() { "chosen" } else { "other" };
    metrics::counter!("waconnect_relay_menu_replies_total", "outcome" => outcome).increment(1);
    Ok(title.map(|title| Answer { title, menu, key }))
}

/// The menu is answered once the answer is in the chat (a redelivery before this maps the
/// number again): a later number is just a number. A newer menu stays.
async fn menu_answered(relay: &Relay, answer: Answer) -> Result<(), RelayError> {
    let cleared = modify(&*relay.store, &answer.key, None, Fence::None, |c| {
        if c.menu.as_ref() != Some(&answer.menu) {
            return false;
        }
        c.menu = None;
        true
    })
    .await?;
    if let Modified::Written(written) = cleared {
        relay.records.keep(&written);
    }
    Ok(())
}

/// The line that shows the agent which message the customer's reply is to (WhatsApp's
/// reply, `OriginalRepliedMessageSid`): the first words of the agent's message or of the
/// customer's own, from the message index; one the index no longer has is still named as
/// a reply.
async fn quote(relay: &Relay, event: &InboundEvent) -> Option<String> {
    let replied = event
        .field("OriginalRepliedMessageSid")
        .map(str::trim)
        .filter(|s| !s.is_empty())?;
    let found = match relay.index.by_sid(replied).await {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(error = %e, "message index unavailable for a quoted reply");
            None
        }
    };
    let outcome = if found.is_some() { "quoted" } else { "unknown" };
    metrics::counter!("waconnect_relay_quoted_replies_total", "outcome" => outcome).increment(1);
    Some(match found {
        Some(m) => {
            let whose = match m.author {
                Author::Agent => "the agent's message",
                Author::Customer => "their own message",
            };
            format!("↩ In reply to {whose}: \"{}\"", m.excerpt)
        }
        None => "↩ In reply to an earlier message".to_owned(),
    })
}

/// One piece of a customer's message in the chat.
enum Part {
    /// The note that a recovered message comes late. Its ClientToken is its own, so the
    /// parts after it keep theirs: a recovered copy of a message the relay did handle
    /// (one that slipped past the ledger) repeats them harmlessly.
    Late(String),
    /// The `n`th text part (caption, location, or the text itself).
    Text(usize, String),
    /// The message's `n`th file.
    Media(usize, Prepared),
}

/// Puts one part in the chat; answers the chat item a text part became. Each Connect call
/// carries a ClientToken derived from the message and the contact, so a redelivery
/// repeats it harmlessly and a new chat (after the old one ended) gets it again.
async fn relay_part(
    relay: &Relay,
    token: &str,
    contact: &str,
    sid: &str,
    part: &Part,
) -> Result<Option<String>, ConnectError> {
    let send = |text: &str, kind: &str, n: usize| {
        let client_token = client_token(&[kind, sid, contact, &n.to_string()]);
        let text = text.to_owned();
        async move {
            relay
                .api
                .send_message(token, &text, &client_token)
                .await
                .map(drop)
        }
    };
    if let Part::Text(i, text) = part {
        let client_token = client_token(&["message", sid, contact, &i.to_string()]);
        let item = relay.api.send_message(token, text, &client_token).await?;
        return Ok(Some(item).filter(|i| !i.is_empty()));
    }
    let settled = match part {
        Part::Text(..) => Ok(()),
        Part::Late(note) => send(note, "late", 0).await,
        Part::Media(_, Prepared::Done) => Ok(()),
        Part::Media(i, Prepared::Refused(notice)) => {
            metrics::counter!("waconnect_relay_media_total", "outcome" => "refused").increment(1);
            send(notice, "media-notice", *i).await
        }
        Part::Media(i, Prepared::File(file)) => {
            match attach(relay, token, contact, sid, *i, file).await? {
                Attached::Done => Ok(()),
                Attached::Refused(notice) => send(&notice, "media-notice", *i).await,
            }
        }
        Part::Media(i, Prepared::Card { summary, file, .. }) => {
            if let Some(file) = file
                && let Attached::Refused(notice) =
                    attach(relay, token, contact, sid, *i, file).await?
            {
                send(&notice, "media-notice", *i).await?;
            }
            send(summary, "media-text", *i).await
        }
    };
    settled.map(|()| None)
}

/// Attaches one file; Connect's refusal comes back as the agent's notice.
async fn attach(
    relay: &Relay,
    token: &str,
    contact: &str,
    sid: &str,
    index: usize,
    file: &ReadyFile,
) -> Result<Attached, ConnectError> {
    let n = index.to_string();
    let tokens = (
        client_token(&["attach-start", sid, contact, &n]),
        client_token(&["attach-complete", sid, contact, &n]),
    );
    let attached = attachment::attach(
        &relay.api,
        &relay.media,
        token,
        (&tokens.0, &tokens.1),
        file,
    )
    .await?;
    let outcome = match attached {
        Attached::Done => "attached",
        Attached::Refused(_) => "refused",
    };
    metrics::counter!("waconnect_relay_media_total", "outcome" => outcome).increment(1);
    Ok(attached)
}

/// Records a file as handled, so a redelivery neither fetches nor attaches it again, and
/// deletes Twilio's copy if the operator asked.
async fn media_settled(relay: &Relay, sid: &str, index: usize, prepared: &Prepared) {
    // A file the agent could not get stays at Twilio: it is the only copy.
    let url = match prepared {
        Prepared::Done => return,
        Prepared::File(ReadyFile { media_url, .. }) | Prepared::Card { media_url, .. } => {
            Some(media_url.as_str())
        }
        Prepared::Refused(_) => None,
    };
    if let Err(e) = relay
        .ledger
        .sent(&attachment::ledger_key(sid, index), "handled")
        .await
    {
        // The ClientTokens still keep Connect from attaching it twice.
        tracing::warn!(error = %e, "a file's outcome was not recorded");
    }
    if let Some(url) = url {
        attachment::forget_at_twilio(&relay.media, url).await;
    }
}

/// Whether this message was handled before from another webhook: a captured, signed
/// webhook replayed after the queue's 5-minute dedup window, perhaps once the chat has
/// ended. The ledger remembers each MessageSid with the time ingress received the webhook
/// that carried it: a redelivery of that same queued event (a retry, a crash) carries the
/// same time and goes on; a replay is a new webhook, received later. One conditional
/// write per message; the time is recorded off the message's path. If the ledger cannot
/// answer, the message goes on: a replay is rare, a customer's message is not.
async fn replayed(relay: &Relay, sid: &str, event: &InboundEvent) -> bool {
    let key = format!("in#{sid}");
    let received = event.received_at.timestamp_millis().to_string();
    let first = match relay.ledger.claim(&key).await {
        Ok(Claim::Sent { sid: seen }) => return seen != received,
        Ok(Claim::Fresh { .. } | Claim::Unknown { .. }) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check for a replayed webhook; relaying");
            false
        }
    };
    if first {
        let ledger = relay.ledger.clone();
        tokio::spawn(async move {
            if let Err(e) = ledger.sent(&key, &received).await {
                tracing::warn!(error = %e, "cannot record a handled message; a replay of it would not be recognised");
            }
        });
    }
    false
}

/// The customer's conversation with a live chat and a connection token, started (or
/// restarted from the ended one) if need be, and whether it came from the cache (only if
/// `use_cache`). Every step is a conditional write: a worker that loses a race reads the
/// winner's record and goes on with it.
async fn active_conversation(
    relay: &Relay,
    key: &ConversationKey,
    event: &InboundEvent,
    use_cache: bool,
) -> Result<(StoredConversation, bool), RelayError> {
    if use_cache && let Some(stored) = legacy::cached(relay, key) {
        return Ok((stored, true));
    }
    let sid = event.message_sid()?;
    let route = relay.config.routes.of(key.business.as_ref());
    // The first read may find a live legacy record: its key is then the one used.
    let mut found = Some(legacy::find(relay, key).await?);
    let key = found
        .as_ref()
        .and_then(|f| f.as_ref())
        .map_or_else(|| key.clone(), |s| s.conversation.key());
    let key = &key;
    loop {
        let stored = match found.take() {
            Some(found) => found,
            None => relay.store.get(key).await?,
        };
        let Some(stored) = stored else {
            let started = relay
                .api
                .start_chat(new_chat(
                    route,
                    key,
                    event,
                    client_token(&["start", sid]),
                    None,
                ))
                .await?;
            let mut conversation = Conversation::new(key.clone());
            started.record_on(&mut conversation);
            match relay.store.insert(&conversation).await {
                Ok(_) | Err(StoreError::AlreadyExists) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        relay.records.keep(&stored);
        let contact = stored.conversation.contact_id.clone();
        match stored.conversation.state {
            ConversationState::Active => return Ok((stored, false)),
            ConversationState::Ended => {
                let previous = contact.clone().unwrap_or_default();
                let token = client_token(&["restart", sid, &previous]);
                let started = match relay
                    .api
                    .start_chat(new_chat(route, key, event, token.clone(), Some(&previous)))
                    .await
                {
                    Ok(s) => s,
                    // Connect would not rehydrate (the old contact is gone or too old):
                    // a fresh chat is better than none.
                    Err(e) if e.kind == ErrorKind::Invalid => {
                        tracing::warn!(conversation = %key, code = %e.code, "persistent chat refused; starting a fresh one");
                        relay
                            .api
                            .start_chat(new_chat(route, key, event, format!("{token}-fresh"), None))
                            .await?
                    }
                    Err(e) => return Err(e.into()),
                };
                // Unless another worker restarted it meanwhile: then theirs is used.
                let restarted = modify(&*relay.store, key, Some(stored), Fence::None, |c| {
                    if c.state != ConversationState::Ended || c.contact_id != contact {
                        return false;
                    }
                    c.restart();
                    started.record_on(c);
                    true
                })
                .await?;
                if matches!(restarted, Modified::Written(_)) {
                    metrics::counter!("waconnect_relay_chats_restarted_total").increment(1);
                }
            }
            ConversationState::Starting => {
                let participant = stored
                    .conversation
                    .participant_token
                    .clone()
                    .unwrap_or_default();
                match relay.api.create_connection(participant.expose()).await {
                    Ok(connection) => {
                        let activated =
                            modify(&*relay.store, key, Some(stored), Fence::None, |c| {
                                if c.state != ConversationState::Starting || c.contact_id != contact
                                {
                                    return false;
                                }
                                c.state = ConversationState::Active;
                                c.connection_token =
                                    Some(connection.connection_token.clone().into());
                                c.connection_expires_at = Some(connection.connection_expires_at);
                                true
                            })
                            .await?;
                        if matches!(activated, Modified::Written(_)) {
                            metrics::counter!("waconnect_relay_chats_started_total").increment(1);
                        }
                    }
                    Err(e) if e.kind == ErrorKind::AccessDenied => {
                        mark_ended(relay, stored).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Records that the chat `stored` names is over, unless the record moved on to another.
async fn mark_ended(relay: &Relay, stored: StoredConversation) -> Result<(), RelayError> {
    let key = stored.conversation.key();
    relay.records.forget(&key);
    let contact = stored.conversation.contact_id.clone();
    let keep = relay.config.worker.common.retention.conversations;
    modify(&*relay.store, &key, Some(stored), Fence::None, |c| {
        if c.state == ConversationState::Ended || c.contact_id != contact {
            return false;
        }
        c.end(keep);
        true
    })
    .await?;
    Ok(())
}

/// After a 403: a new connection if the chat is still on (the token had expired), or
/// `None` once the chat is recorded as ended.
async fn reconnect(
    relay: &Relay,
    stored: StoredConversation,
) -> Result<Option<StoredConversation>, RelayError> {
    let participant = stored
        .conversation
        .participant_token
        .clone()
        .unwrap_or_default();
    match relay.api.create_connection(participant.expose()).await {
        Ok(connection) => {
            let contact = stored.conversation.contact_id.clone();
            let key = stored.conversation.key();
            let now = modify(&*relay.store, &key, Some(stored), Fence::None, |c| {
                // Someone ended or restarted the chat meanwhile: theirs stands.
                if c.state != ConversationState::Active || c.contact_id != contact {
                    return false;
                }
                c.connection_token = Some(connection.connection_token.clone().into());
                c.connection_expires_at = Some(connection.connection_expires_at);
                true
            })
            .await?;
            Ok(now.record())
        }
        Err(e) if e.kind == ErrorKind::AccessDenied => {
            mark_ended(relay, stored).await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Records the customer's latest message (the WhatsApp 24 h window) on the record just
/// used, reading it again only if someone wrote it since. A window measured in hours needs
/// no per-message precision: within [`INBOUND_NOTE_EVERY`] of the last note, no write.
const INBOUND_NOTE_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

async fn note_inbound(
    relay: &Relay,
    stored: StoredConversation,
    sid: &str,
    event: &InboundEvent,
) -> Result<(), RelayError> {
    let key = stored.conversation.key();
    let noted = modify(&*relay.store, &key, Some(stored), Fence::None, |c| {
        if c.last_inbound_at.is_some_and(|at| {
            event.received_at - at < INBOUND_NOTE_EVERY && at <= event.received_at
        }) {
            return false;
        }
        c.last_inbound_message_sid = Some(sid.to_owned());
        c.last_inbound_at = Some(event.received_at);
        true
    })
    .await?;
    if let Modified::Written(written) = noted {
        relay.records.keep(&written);
    }
    Ok(())
}

/// "Call me": an outbound voice call to the customer's number, at most once per cooldown
/// (kept in the record, so the whole fleet honours it) — a toll-fraud guard. A customer's
/// messages are handled one at a time (their FIFO group), so the cooldown read before the
/// call still holds when it is recorded.
async fn call_customer(
    relay: &Relay,
    key: &ConversationKey,
    call_me: &CallMe,
    sid: &str,
) -> Result<(), RelayError> {
    let Some(stored) = relay.store.get(key).await? else {
        return Ok(());
    };
    let route = relay.config.routes.of(key.business.as_ref());
    let conversation = &stored.conversation;
    let cooling = conversation.last_call_at.is_some_and(|at| {
        (chrono::Utc::now() - at).to_std().unwrap_or_default() < call_me.cooldown
    });
    // A redelivery of the message that placed the call finishes recording it.
    if cooling && conversation.last_call_sid.as_deref() != Some(sid) {
        metrics::counter!("waconnect_relay_call_requests_total", "outcome" => "cooldown")
            .increment(1);
        return Ok(());
    }
    let mut attributes = HashMap::new();
    attributes.insert("Channel".to_owned(), "WhatsApp".to_owned());
    if let Some(contact) = &conversation.contact_id {
        attributes.insert("ChatContactId".to_owned(), contact.clone());
    }
    let placed = relay
        .api
        .start_outbound_voice(OutboundCall {
            instance_id: &route.instance_id,
            destination: key.customer.e164(),
            contact_flow_id: &call_me.contact_flow_id,
            source: call_me.source_number.as_deref(),
            client_token: client_token(&["call", sid]),
            attributes,
        })
        .await;
    match placed {
        Ok(_) => {}
        // Connect will not call this number (not allowed, not permitted, bad flow):
        // the text already reached the agent, so the message is done.
        Err(e) if !e.kind.retryable() => {
            tracing::warn!(conversation = %key, code = %e.code, "call-me refused by Connect");
            metrics::counter!("waconnect_relay_call_requests_total", "outcome" => "refused")
                .increment(1);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let at = chrono::Utc::now();
    modify(&*relay.store, key, Some(stored), Fence::None, |c| {
        c.last_call_at = Some(at);
        c.last_call_sid = Some(sid.to_owned());
        true
    })
    .await?;
    metrics::counter!("waconnect_relay_call_requests_total", "outcome" => "called").increment(1);
    Ok(())
}

fn new_chat<'a>(
    route: &'a RelayRoute,
    key: &'a ConversationKey,
    event: &'a InboundEvent,
    client_token: String,
    continue_from: Option<&'a str>,
) -> NewChat<'a> {
    let customer = &key.customer;
    // The route's own attributes first: what the bridge sets is what it says it is.
    let mut attributes: HashMap<String, String> = route.attributes.clone().into_iter().collect();
    attributes.insert("Channel".to_owned(), "WhatsApp".to_owned());
    attributes.insert("CustomerNumber".to_owned(), customer.e164().to_owned());
    if let Some(business) = &key.business {
        attributes.insert("BusinessNumber".to_owned(), business.as_str().to_owned());
    }
    if let Some(w) = event.wa_id() {
        attributes.insert("WaId".to_owned(), w.to_owned());
    }
    if let Some(p) = event.profile_name() {
        attributes.insert("ProfileName".to_owned(), p.to_owned());
    }
    NewChat {
        instance_id: &route.instance_id,
        contact_flow_id: &route.contact_flow_id,
        display_name: event
            .profile_name()
            .filter(|p| !p.trim().is_empty())
            .unwrap_or(customer.e164()),
        attributes,
        client_token,
        continue_from,
    }
}

/// Connect ClientTokens derived from stable ids, so a redelivered message repeats the
/// same calls and Connect answers them without doing them twice.
pub fn client_token(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// For a message put back on the queue by the catch-up or `waconnect recover` (its webhook
/// never reached ingress): when the customer sent it, as the agent reads it before the
/// message.
fn late_note(event: &InboundEvent) -> Option<String> {
    let sent = event.field(waconnect_shared::twilio::history::RECOVERED_FIELD)?;
    let sent = chrono::DateTime::parse_from_rfc3339(sent).ok()?;
    Some(format!(
        "{NOTICE_PREFIX} The customer sent this at {} UTC; it arrives late because the bridge could not take it then.",
        sent.with_timezone(&chrono::Utc).format("%H:%M on %-d %b")
    ))
}

/// What the agent reads for a WhatsApp message besides its files: its text (a file's
/// caption), or a shared location with a map link. Empty for a file without a caption.
pub fn render(event: &InboundEvent) -> String {
    let mut lines: Vec<String> = Vec::new();
    if !event.body().trim().is_empty() {
        lines.push(event.body().to_owned());
    }
    if let (Some(lat), Some(lon)) = (event.field("Latitude"), event.field("Longitude")) {
        // Ingress checked both are coordinates.
        let named: Vec<&str> = [event.field("Label"), event.field("Address")]
            .into_iter()
            .flatten()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let place = if named.is_empty() {
            format!("{lat}, {lon}")
        } else {
            named.join(", ")
        };
        lines.push(format!(
            "Location: {place}\nhttps://www.google.com/maps/search/?api=1&query={lat},{lon}"
        ));
    }
    if lines.is_empty() && event.num_media() == 0 {
        lines.push(format!(
            "[{} message]",
            event.message_type().unwrap_or("empty")
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovered_message_says_when_it_was_sent_and_others_say_nothing() {
        let fields = |extra: Option<(&str, &str)>| {
            let mut f = vec![("MessageSid".to_owned(), "SM1".to_owned())];
            f.extend(extra.map(|(k, v)| (k.to_owned(), v.to_owned())));
            InboundEvent::new(waconnect_shared::message::event::EventKind::Message, f)
        };
        assert_eq!(late_note(&fields(None)), None);
        let note = late_note(&fields(Some((
            waconnect_shared::twilio::history::RECOVERED_FIELD,
            "2026-12-04T10:02:31+01:00",
        ))))
        .unwrap();
        assert!(note.starts_with(NOTICE_PREFIX), "{note}");
        assert!(note.contains("sent this at 09:02 on 4 Dec UTC"), "{note}");
    }

    #[test]
    fn client_tokens_are_stable_and_distinct() {
        assert_eq!(client_token(&["a", "b"]), client_token(&["a", "b"]));
        assert_ne!(client_token(&["a", "b"]), client_token(&["ab", ""]));
        assert_eq!(client_token(&["x"]).len(), 32);
    }

    #[test]
    fn locations_get_a_map_link_and_files_no_text() {
        let event = InboundEvent::new(
            EventKind::Message,
            vec![
                ("MessageSid".into(), "MM1".into()),
                ("From".into(), "whatsapp:+15551230000".into()),
                ("To".into(), "whatsapp:+15550000000".into()),
                ("Body".into(), "".into()),
                ("NumMedia".into(), "1".into()),
                ("MediaUrl0".into(), "https://api.twilio.com/x".into()),
                ("MediaContentType0".into(), "image/jpeg".into()),
                ("Latitude".into(), "51.5".into()),
                ("Longitude".into(), "-0.12".into()),
                ("Label".into(), "Office".into()),
                ("Address".into(), "1 Main St".into()),
            ],
        );
        assert_eq!(
            render(&event),
            "Location: Office, 1 Main St\nhttps://www.google.com/maps/search/?api=1&query=51.5,-0.12"
        );
    }
}
