//! One held conversation: its participant websocket, kept alive with heartbeats and
//! replaced when it dies, backfilled from the transcript after every (re)connect, and its
//! agent items forwarded to the outbound queue exactly once, in order.
//!
//! The agent cursor (the last item forwarded) moves in memory with every item and reaches
//! the conversation record at most once per `cursor_flush`, and before the lease is
//! handed back. A worker that dies in between leaves the record up to that much behind:
//! its successor's backfill forwards those items again, and the outbound queue's
//! deduplication on the item id (backed by the sender's delivery ledger) drops them. That
//! trade saves a conditional write per agent message.

use crate::Relay;
use crate::agent_file::Copied;
use crate::connect::ErrorKind;
use crate::indicator::{ReadReceipts, Target, Why};
use crate::item::{ChatItem, Disposition};
use crate::websocket::{self, Frame, Socket};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use waconnect_shared::ConversationKey;
use waconnect_shared::message::conversation::{AgentCursor, Conversation, ConversationState};
use waconnect_shared::message::outbound::{Origin, OutboundMessage};
use waconnect_shared::service::backoff::Backoff;
use waconnect_shared::storage::queue::NewMessage;
use waconnect_shared::storage::store::{
    self as store, Fence, Lease, Modified, StoreError, StoredConversation, modify,
};

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The chat is over (or the record is gone): the lease is released.
    Ended,
    /// Another worker holds the conversation now; this one must not touch it.
    LeaseLost,
    /// This worker is shutting down: the lease is released for others to adopt.
    Stopped,
}

/// What became of an agent's item the session handled.
#[derive(PartialEq)]
enum Forwarded {
    /// On the outbound queue for the customer.
    Queued,
    /// Not for the customer: its files were refused or given up on, and the agent told.
    Withheld,
}

/// Why the loop goes round again, or that it is done.
enum Step {
    Reconnect(&'static str),
    Done(Outcome),
}

/// The lease as last renewed; the fleet's renewer writes it, the session reads it.
pub type SharedLease = Arc<Mutex<Lease>>;

fn humanize(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s if s > 0 => format!("{s} s"),
        _ => format!("{} ms", d.as_millis()),
    }
}

/// How many recently forwarded ids are remembered, against same-millisecond ties.
const RECENT: usize = 64;

pub struct Session {
    relay: Arc<Relay>,
    key: ConversationKey,
    lease: SharedLease,
    /// The contact the socket belongs to.
    contact_id: String,
    cursor: Option<AgentCursor>,
    /// When the cursor, moved since it was last written, is due to be written.
    cursor_due: Option<Instant>,
    /// The record as last read or written, so advancing the cursor needs no read first;
    /// dropped when a write finds it stale.
    record: Option<StoredConversation>,
    recent: VecDeque<String>,
    /// The current connection's token, for the Participant API calls files need.
    connection_token: String,
    /// An agent's file Connect is still scanning, and what the agent sent after it.
    scanning: Option<Scanning>,
    /// The agent's file that could not be kept for WhatsApp (its attachment id), and
    /// since when: everything after it waits, so the tries have a bound.
    copy_failing: Option<(String, Instant)>,
    /// What typing and read indicators need to know of the chat.
    signals: Signals,
}

/// The customer's side of the chat as typing indicators and blue ticks need it.
#[derive(Default)]
struct Signals {
    /// The customer's recent messages in the chat (item id, time), oldest first.
    customer_messages: VecDeque<(String, chrono::DateTime<chrono::Utc>)>,
    /// The newest customer message already marked read.
    read_up_to: Option<chrono::DateTime<chrono::Utc>>,
    /// When an indicator last went to WhatsApp: it shows "typing…" for 25 s.
    shown_at: Option<Instant>,
    /// The newest customer message the backfill found read, marked once it is done.
    backfilled_read: Option<(String, Option<chrono::DateTime<chrono::Utc>>)>,
}

/// Customer messages [`Signals`] remembers: receipts come for the latest few.
const SIGNALLED: usize = 16;
/// WhatsApp shows a typing indicator this long: one per period is enough.
const TYPING_EVERY: Duration = Duration::from_secs(25);
/// WhatsApp's customer service window: nothing is shown for an older message.
const WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// An `ATTACHMENT` item still `IN_PROGRESS`: later items wait behind it, so the customer
/// gets them in the agent's order, until an item carries its verdict or the wait ends.
struct Scanning {
    item: ChatItem,
    since: Instant,
    held: Vec<ChatItem>,
}

/// Items held behind a file being scanned, at most; more ends the wait.
const MAX_HELD: usize = 100;

pub async fn hold(relay: Arc<Relay>, lease: SharedLease, stop: CancellationToken) -> Outcome {
    let key = lease.lock().expect("lease lock").key.clone();
    let mut session = Session {
        relay,
        key,
        lease,
        contact_id: String::new(),
        cursor: None,
        cursor_due: None,
        record: None,
        recent: VecDeque::new(),
        connection_token: String::new(),
        scanning: None,
        copy_failing: None,
        signals: Signals::default(),
    };
    let outcome = session.run(&stop).await;
    // Whatever ended the session, the cursor reaches the record while the lease is ours:
    // the next session, perhaps on a rehydrated chat whose items have new Ids, resumes
    // from it.
    if outcome != Outcome::LeaseLost
        && let Err(Step::Done(Outcome::LeaseLost)) = Box::pin(session.save_cursor()).await
    {
        return Outcome::LeaseLost;
    }
    if outcome != Outcome::LeaseLost {
        let lease = session.current_lease();
        if let Err(e) = store::release(&*session.relay.store, &lease).await {
            tracing::debug!(conversation = %session.key, error = %e, "lease release refused");
        }
    }
    outcome
}

impl Session {
    fn current_lease(&self) -> Lease {
        self.lease.lock().expect("lease lock").clone()
    }

    async fn run(&mut self, stop: &CancellationToken) -> Outcome {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let step = tokio::select! {
                () = stop.cancelled() => return Outcome::Stopped,
                // Boxed: connecting is brief, the idle wait is not; keep the latter small.
                connected = Box::pin(self.connect()) => match connected {
                    Ok((socket, refresh_at)) => {
                        backoff.reset();
                        self.live(socket, refresh_at, stop).await
                    }
                    Err(step) => step,
                },
            };
            match step {
                Step::Done(outcome) => return outcome,
                Step::Reconnect(reason) => {
                    metrics::counter!("waconnect_relay_websocket_reconnects_total", "reason" => reason)
                        .increment(1);
                    // Connect may keep the socket away for a while; the cursor still
                    // reaches the record on time.
                    if self.cursor_due.is_some_and(|due| due <= Instant::now())
                        && let Err(Step::Done(outcome)) = Box::pin(self.save_cursor()).await
                    {
                        return outcome;
                    }
                    tracing::debug!(conversation = %self.key, reason, "reconnecting participant websocket");
                    let wait = if reason == "refresh" {
                        Duration::ZERO
                    } else {
                        backoff.next_delay()
                    };
                    tokio::select! {
                        () = stop.cancelled() => return Outcome::Stopped,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// A fresh connection, subscribed and backfilled; returns the socket and when to
    /// replace it. The socket comes boxed: an async fn keeps a place for a value moved
    /// into a callee's future beside the callee's own, so an inline socket would be held
    /// twice by every idle session (the `session_future_stays_small` test).
    async fn connect(&mut self) -> Result<(Box<Socket>, Instant), Step> {
        let stored = self.load().await?;
        let conversation = &stored.conversation;
        if conversation.state == ConversationState::Ended {
            self.release_held().await?;
            return Err(Step::Done(Outcome::Ended));
        }
        let (Some(contact_id), Some(participant_token)) =
            (&conversation.contact_id, &conversation.participant_token)
        else {
            self.release_held().await?;
            return Err(Step::Done(Outcome::Ended));
        };
        self.contact_id = contact_id.clone();
        // While the lease is ours nobody else moves the cursor, so ours is the newer one.
        if self.cursor.is_none() {
            self.cursor = conversation.agent_cursor.clone();
        }
        let participant_token = participant_token.clone();
        self.record = Some(stored);
        let connection = match self
            .relay
            .api
            .create_connection(participant_token.expose())
            .await
        {
            Ok(c) => c,
            // The participant token no longer opens the chat: it is over.
            Err(e) if e.kind == ErrorKind::AccessDenied => {
                self.release_held().await?;
                return Err(Step::Done(self.end_chat(None).await));
            }
            Err(_) => return Err(Step::Reconnect("connection_error")),
        };
        let socket = websocket::open(
            &connection.websocket_url,
            Duration::from_secs(10),
            &self.relay.tls,
        )
        .await
        .map_err(|_| Step::Reconnect("socket_error"))?;
        // Replace the socket before its connection's credentials run out.
        let until_expiry = (connection.connection_expires_at - chrono::Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(Duration::from_secs(300));
        let refresh_at = Instant::now()
            + self
                .relay
                .config
                .socket_refresh
                .min(until_expiry.max(Duration::from_secs(30)));
        self.connection_token = connection.connection_token.clone();
        // The cursor never passes a file being scanned, so the backfill reads it, and
        // what came after it, again: `admit` knows them. The wait is kept, not cleared,
        // as a backfill that fails and a chat that ends meanwhile would lose what it held.
        self.backfill(&connection.connection_token).await?;
        Ok((Box::new(socket), refresh_at))
    }

    async fn load(&self) -> Result<StoredConversation, Step> {
        match self.relay.store.get(&self.key).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(Step::Done(Outcome::Ended)),
            Err(_) => Err(Step::Reconnect("store_error")),
        }
    }

    /// Forwards what the agent wrote since the cursor, from the transcript.
    async fn backfill(&mut self, connection_token: &str) -> Result<(), Step> {
        let mut start = self.cursor.as_ref().map(|c| c.id.clone());
        let mut next = None;
        loop {
            let page = self
                .relay
                .api
                .transcript_page(connection_token, start.as_deref(), next.clone())
                .await;
            let (items, next_token) = match page {
                Ok(p) => p,
                // The cursor's item is not in this chat's transcript (a rehydrated chat
                // may renumber): scan it all; the cursor's time still filters.
                Err(e) if e.kind == ErrorKind::Invalid && start.is_some() && next.is_none() => {
                    start = None;
                    continue;
                }
                Err(_) => return Err(Step::Reconnect("backfill_error")),
            };
            for item in items {
                let forwarded = self.handle(item, false).await?;
                if forwarded {
                    metrics::counter!("waconnect_relay_backfilled_items_total").increment(1);
                }
            }
            match next_token {
                Some(t) => next = Some(t),
                None => {
                    self.signal_backfilled();
                    return Ok(());
                }
            }
        }
    }

    async fn live(
        &mut self,
        mut socket: Box<Socket>,
        refresh_at: Instant,
        stop: &CancellationToken,
    ) -> Step {
        let period = self.relay.config.heartbeat;
        let mut heartbeat = tokio::time::interval_at(on_grid(Instant::now() + period), period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let refresh = tokio::time::sleep_until(refresh_at);
        tokio::pin!(refresh);
        let mut awaiting_reply = false;
        loop {
            let cursor_due = self.cursor_due;
            tokio::select! {
                biased;
                () = stop.cancelled() => return Step::Done(Outcome::Stopped),
                () = &mut refresh => return Step::Reconnect("refresh"),
                // The steps below are boxed: each is rare, and inline the largest would
                // size every idle session's future.
                () = sleep_until_some(cursor_due), if cursor_due.is_some() => {
                    if let Err(step) = Box::pin(self.save_cursor()).await {
                        return step;
                    }
                }
                _ = heartbeat.tick() => {
                    if self.current_lease().expires_at <= chrono::Utc::now() {
                        return Step::Done(Outcome::LeaseLost);
                    }
                    if self.scanning.is_some()
                        && let Err(step) = Box::pin(self.check_scan()).await
                    {
                        return step;
                    }
                    if awaiting_reply {
                        return Step::Reconnect("heartbeat");
                    }
                    if !websocket::heartbeat(&mut socket).await {
                        return Step::Reconnect("closed");
                    }
                    awaiting_reply = true;
                }
                frame = websocket::next(&mut socket) => match frame {
                    Frame::Heartbeat => awaiting_reply = false,
                    Frame::Chat(item) => {
                        if let Err(step) = Box::pin(self.handle(*item, true)).await {
                            return step;
                        }
                    }
                    Frame::Closed => return Step::Reconnect("closed"),
                    Frame::Subscribed => {}
                    Frame::Other(what) => {
                        tracing::debug!(conversation = %self.key, frame = %what, "unexpected websocket frame");
                    }
                },
            }
        }
    }

    /// Acts on one item (`live` from the socket, else from the transcript); true when it
    /// was forwarded.
    async fn handle(&mut self, item: ChatItem, live: bool) -> Result<bool, Step> {
        self.signal(&item, live);
        let config = &self.relay.config;
        match item.disposition(config.forward_system, config.forward_bot) {
            Disposition::Ignore => Ok(false),
            // A rehydrated transcript carries the earlier chats' endings too.
            Disposition::ChatEnded
                if item
                    .contact_id
                    .as_deref()
                    .is_some_and(|c| c != self.contact_id) =>
            {
                Ok(false)
            }
            Disposition::ChatEnded => {
                self.release_held().await?;
                Err(Step::Done(self.end_chat(Some(&item)).await))
            }
            Disposition::Forward => {
                if !item.is_after(self.cursor.as_ref(), &self.contact_id)
                    || self.recent.contains(&item.id)
                {
                    return Ok(false);
                }
                self.admit(item).await?;
                Ok(true)
            }
        }
    }

    /// Typing and blue ticks on WhatsApp for what `item` tells: the agent typing (only
    /// live: a typing event read back from the transcript is long over), or the agent
    /// having read the customer's message.
    fn signal(&mut self, item: &ChatItem, live: bool) {
        let indicators = &self.relay.indicators;
        let signals = &mut self.signals;
        // The customer's own texts: what the message index knows (files are not indexed,
        // and the bridge's notices are written as the customer but are not theirs).
        let own_text = item.is_customer_message()
            && item.kind == "MESSAGE"
            && !item
                .content
                .as_deref()
                .is_some_and(|c| c.starts_with(crate::NOTICE_PREFIX));
        if own_text && let Some(at) = item.time() {
            if signals.customer_messages.len() == SIGNALLED {
                signals.customer_messages.pop_front();
            }
            signals.customer_messages.push_back((item.id.clone(), at));
        }
        if live && item.is_agent_typing() && indicators.typing() {
            if signals.shown_at.is_some_and(|t| t.elapsed() < TYPING_EVERY) {
                return;
            }
            // The latest customer message this session saw, else the one the record
            // names (noted to the minute by the inbound side).
            let latest = signals
                .customer_messages
                .iter()
                .max_by_key(|(_, at)| *at)
                .map(|(id, at)| (Target::ChatItem(id.clone()), *at))
                .or_else(|| {
                    let c = &self.record.as_ref()?.conversation;
                    Some((
                        Target::Sid(c.last_inbound_message_sid.clone()?),
                        c.last_inbound_at?,
                    ))
                });
            let Some((target, at)) = latest else { return };
            if chrono::Utc::now() - at > WINDOW {
                return;
            }
            signals.shown_at = Some(Instant::now());
            indicators.show(target, Why::Typing);
            return;
        }
        if indicators.read_receipts() != ReadReceipts::OnRead {
            return;
        }
        let Some(customer) = self
            .record
            .as_ref()
            .and_then(|r| r.conversation.participant_id.as_deref())
        else {
            return;
        };
        let Some(read) = item.read_by_agent(customer) else {
            return;
        };
        // A receipt for a message older than one already marked tells WhatsApp nothing
        // new: marking a message read marks every earlier one.
        let at = signals
            .customer_messages
            .iter()
            .find(|(id, _)| id == read)
            .map(|(_, at)| *at);
        match (at, signals.read_up_to) {
            (Some(at), Some(up_to)) if at <= up_to => return,
            (None, Some(_)) => return,
            _ => {}
        }
        if !live {
            // The transcript lists every message read since the cursor: only the newest
            // needs marking, after the backfill.
            if signals
                .backfilled_read
                .as_ref()
                .is_none_or(|(_, earlier)| at >= *earlier)
            {
                signals.backfilled_read = Some((read.to_owned(), at));
            }
            return;
        }
        signals.read_up_to = at.max(signals.read_up_to);
        signals.shown_at = Some(Instant::now());
        indicators.show(Target::ChatItem(read.to_owned()), Why::Read);
    }

    /// Marks read what the backfill found the agent had read.
    fn signal_backfilled(&mut self) {
        let signals = &mut self.signals;
        let Some((read, at)) = signals.backfilled_read.take() else {
            return;
        };
        signals.read_up_to = at.max(signals.read_up_to);
        signals.shown_at = Some(Instant::now());
        self.relay
            .indicators
            .show(Target::ChatItem(read), Why::Read);
    }

    /// Forwards `item`, or holds it behind an agent's file still being scanned.
    async fn admit(&mut self, item: ChatItem) -> Result<(), Step> {
        if let Some(scan) = &mut self.scanning {
            let verdict = item.kind == "ATTACHMENT"
                && item.attachments.iter().any(|a| {
                    a.status != "IN_PROGRESS"
                        && scan
                            .item
                            .attachments
                            .iter()
                            .any(|s| s.attachment_id == a.attachment_id)
                });
            // Read twice (from the socket and by a backfill, which overlap around a
            // subscription): it already waits.
            if !verdict && (item.id == scan.item.id || scan.held.iter().any(|h| h.id == item.id)) {
                return Ok(());
            }
            if !verdict && scan.held.len() < MAX_HELD {
                scan.held.push(item);
                return Ok(());
            }
            if verdict {
                let held = std::mem::take(&mut scan.held);
                let file = scan.item.cursor();
                self.scanning = None;
                // The verdict's item came after what was held: the cursor takes the
                // file's place, so a backfill (this failing, or a held item's) finds
                // what was held, and `recent` keeps the verdict from going twice.
                self.forward_at(&item, Some(file)).await?;
                return self.admit_all(held).await;
            }
            self.scan_over("too many messages came after it").await?;
            return Box::pin(self.admit(item)).await;
        }
        let scanned = item.kind == "ATTACHMENT"
            && !item.attachments.is_empty()
            && item.attachments.iter().all(|a| a.status == "IN_PROGRESS");
        // Given up on already (the agent was told, and is told again should that notice
        // have been lost): what came after it does not wait for it again. A ledger or a
        // notice that fails now only costs that wait (the verdict is checked again before
        // anything is sent, and the wait's end tells the agent), so it does not cost a
        // reconnection, which a chat ending meanwhile would refuse.
        if scanned && self.withheld(&item).await.unwrap_or(false) {
            self.advance(&item);
            return Ok(());
        }
        if scanned {
            self.scanning = Some(Scanning {
                item,
                since: Instant::now(),
                held: Vec::new(),
            });
            return Ok(());
        }
        self.forward(&item).await
    }

    /// The chat is over (however this session learnt it): what waited behind a file
    /// still being scanned goes, as it was read before the end; the file itself never got
    /// its verdict.
    async fn release_held(&mut self) -> Result<(), Step> {
        // What was held may itself hold a file being scanned, and what came after it.
        while let Some(scan) = self.scanning.take() {
            self.advance(&scan.item);
            self.admit_all(scan.held).await?;
        }
        Ok(())
    }

    async fn admit_all(&mut self, items: Vec<ChatItem>) -> Result<(), Step> {
        for item in items {
            Box::pin(self.admit(item)).await?;
        }
        Ok(())
    }

    /// Ends the wait for a scan's verdict: the agent is told the file was not sent, and
    /// what was held goes on.
    async fn scan_over(&mut self, why: &str) -> Result<(), Step> {
        let Some(scan) = self.scanning.take() else {
            return Ok(());
        };
        for file in &scan.item.attachments {
            self.withhold(
                file,
                "scan",
                &format!("Amazon Connect had not approved it ({why})"),
            )
            .await?;
        }
        self.advance(&scan.item);
        self.admit_all(scan.held).await
    }

    /// Whether every file of `item` was given up on (by this session or an earlier one):
    /// one ledger read per agent's file. If so the agent is told again, since the notice
    /// follows the record and may have been lost (see `agent_file::withheld_outcome`).
    async fn withheld(&self, item: &ChatItem) -> Result<bool, Step> {
        if item.attachments.is_empty() {
            return Ok(false);
        }
        let mut notices = Vec::with_capacity(item.attachments.len());
        for file in &item.attachments {
            let outcome = self
                .relay
                .ledger
                .outcome(&crate::agent_file::withheld_key(&file.attachment_id))
                .await
                .map_err(|_| Step::Reconnect("ledger_error"))?;
            match outcome
                .as_deref()
                .and_then(crate::agent_file::withheld_notice)
            {
                Some(notice) => notices.push((&file.attachment_id, notice.to_owned())),
                None => return Ok(false),
            }
        }
        for (attachment_id, notice) in notices.iter().filter(|(_, n)| !n.is_empty()) {
            self.tell_agent(attachment_id, notice).await?;
        }
        Ok(true)
    }

    /// Called on every heartbeat: a scan that outlasts its bound ends.
    async fn check_scan(&mut self) -> Result<(), Step> {
        let bound = self.relay.config.scan_wait;
        if self
            .scanning
            .as_ref()
            .is_some_and(|s| s.since.elapsed() >= bound)
        {
            let why = format!("within {}", humanize(bound));
            self.scan_over(&why).await?;
        }
        Ok(())
    }

    async fn forward(&mut self, item: &ChatItem) -> Result<(), Step> {
        self.forward_at(item, None).await
    }

    /// Forwards `item`; then the cursor moves to `at`, or to the item itself.
    async fn forward_at(&mut self, item: &ChatItem, at: Option<AgentCursor>) -> Result<(), Step> {
        // The agent's message's first hop, in its trace when spans are exported.
        let trace_id = waconnect_shared::message::trace::of(&item.id);
        let span = tracing::info_span!("agent_item", trace_id = %trace_id, item_id = %item.id);
        waconnect_shared::message::trace::follow(&span, &trace_id);
        let done = self.forward_now(item).instrument(span).await?;
        // Only now does the cursor move: a crash before this re-forwards the item from
        // the transcript, and the outbound queue's dedup (item Id) absorbs it.
        self.advance_to(&item.id, at.unwrap_or_else(|| item.cursor()));
        if done == Forwarded::Queued {
            metrics::counter!("waconnect_relay_forwarded_items_total", "role" => role_label(item.role()))
                .increment(1);
        }
        Ok(())
    }

    /// Forwards `item` (or tells the agent why not); the caller moves the cursor.
    async fn forward_now(&mut self, item: &ChatItem) -> Result<Forwarded, Step> {
        if item.kind == "ATTACHMENT" && self.withheld(item).await? {
            // A late verdict: the agent heard the file was not sent, and later messages
            // went ahead of it.
            return Ok(Forwarded::Withheld);
        }
        let files = if item.kind == "ATTACHMENT" {
            self.copy_files(item).await?
        } else {
            Vec::new()
        };
        if item.kind == "ATTACHMENT" && files.is_empty() {
            // Every file was refused, and the agent told: nothing goes to the customer.
            return Ok(Forwarded::Withheld);
        }
        let (body, menu) = crate::interactive::for_whatsapp(
            &item.content_type,
            item.content.as_deref().unwrap_or_default(),
        );
        if let Some(menu) = &menu {
            // A number the customer writes back names one of these.
            let titles = menu.titles();
            match self
                .write(|c| c.menu.replace(titles.clone()).as_ref() != Some(&titles))
                .await
            {
                Ok(Modified::Written(r) | Modified::Unchanged(r)) => self.record = Some(r),
                Ok(Modified::Missing) => return Err(Step::Done(Outcome::Ended)),
                Err(StoreError::LeaseLost) => return Err(Step::Done(Outcome::LeaseLost)),
                Err(_) => return Err(Step::Reconnect("store_error")),
            }
            metrics::counter!("waconnect_relay_menus_total").increment(1);
        }
        let message = OutboundMessage {
            to: self.key.customer.clone(),
            from: self.key.business.clone(),
            body,
            media_urls: Vec::new(),
            files,
            template: None,
            menu,
            origin: Origin::ConnectItem {
                contact_id: item
                    .contact_id
                    .clone()
                    .unwrap_or_else(|| self.contact_id.clone()),
                item_id: item.id.clone(),
                participant_role: item.role().to_owned(),
            },
            created_at: chrono::Utc::now(),
            resend: None,
        };
        self.enqueue(&message).await?;
        tracing::debug!(
            trace_id = %message.trace_id(),
            item_id = %item.id,
            conversation = %self.key,
            "agent item queued for the customer"
        );
        Ok(Forwarded::Queued)
    }

    /// The agent's files of an `ATTACHMENT` item, copied into the media store; those the
    /// customer cannot have are told to the agent instead. A passing failure reconnects,
    /// and the backfill brings the item back.
    async fn copy_files(&mut self, item: &ChatItem) -> Result<Vec<String>, Step> {
        let relay = self.relay.clone();
        let mut keys = Vec::new();
        for file in &item.attachments {
            if file.status == "IN_PROGRESS" {
                tracing::debug!(conversation = %self.key, "an agent's file is still being scanned");
                continue;
            }
            let copied = crate::agent_file::copy(
                &self.key,
                &relay.api,
                &relay.media,
                relay.media_store.as_deref(),
                &self.connection_token,
                file,
            )
            .await;
            match copied {
                Ok(Copied::Stored(key)) => keys.push(key),
                Ok(Copied::Refused(notice)) => {
                    self.tell_agent(&file.attachment_id, &notice).await?;
                }
                Err(e) => {
                    let since = self.copy_failing_since(&file.attachment_id);
                    let bound = relay.config.scan_wait;
                    if since.elapsed() < bound {
                        tracing::warn!(conversation = %self.key, error = %e, "an agent's file could not be copied yet; will backfill");
                        return Err(Step::Reconnect("attachment_error"));
                    }
                    // What the agent sent after it has waited long enough: the file is
                    // given up as a scan that outlasts the wait is, and the agent told.
                    tracing::error!(conversation = %self.key, error = %e, "an agent's file could not be copied for {}; not sent, the agent is told", humanize(bound));
                    self.withhold(
                        file,
                        "copy",
                        &format!(
                            "the bridge could not keep a copy for WhatsApp within {}",
                            humanize(bound)
                        ),
                    )
                    .await?;
                }
            }
            if self
                .copy_failing
                .as_ref()
                .is_some_and(|(id, _)| *id == file.attachment_id)
            {
                self.copy_failing = None;
            }
        }
        Ok(keys)
    }

    /// Since when `attachment_id` has been failing to copy, counting from now if it was
    /// not the one failing before.
    fn copy_failing_since(&mut self, attachment_id: &str) -> Instant {
        match &self.copy_failing {
            Some((id, since)) if id == attachment_id => *since,
            _ => {
                let now = Instant::now();
                self.copy_failing = Some((attachment_id.to_owned(), now));
                now
            }
        }
    }

    /// Records `file` as not sent (given up for `reason`: `scan` or
    /// `copy`), then tells the agent `why`. Recorded first, so no relay sends what the
    /// notice says was not sent; the record keeps the notice, so a session that reads the
    /// file again after a crash or a refused notice tells the agent then ([`withheld`]).
    /// The other order could send a file the agent was told was not sent.
    ///
    /// [`withheld`]: Self::withheld
    async fn withhold(
        &self,
        file: &crate::item::ItemAttachment,
        reason: &'static str,
        why: &str,
    ) -> Result<(), Step> {
        let notice = crate::agent_file::notice(&file.attachment_name, why);
        self.relay
            .ledger
            .sent(
                &crate::agent_file::withheld_key(&file.attachment_id),
                &crate::agent_file::withheld_outcome(&notice),
            )
            .await
            .map_err(|_| Step::Reconnect("ledger_error"))?;
        // Counted once the record is in: a failed write is tried again, and counted then.
        crate::agent_file::count_refused();
        metrics::counter!("waconnect_relay_agent_files_given_up_total", "reason" => reason)
            .increment(1);
        self.tell_agent(&file.attachment_id, &notice).await
    }

    /// Tells the agent, in the chat, that file `attachment_id` was not sent. The
    /// ClientToken names the file alone, so a repeat is harmless whichever item brought
    /// the file (the one that uploaded it, or the one with its scan's verdict).
    async fn tell_agent(&self, attachment_id: &str, notice: &str) -> Result<(), Step> {
        let token = crate::inbound::client_token(&["agent-file-notice", attachment_id]);
        self.relay
            .api
            .send_message(&self.connection_token, notice, &token)
            .await
            .map(drop)
            .map_err(|e| {
                tracing::warn!(conversation = %self.key, error = %e, "cannot tell the agent a file was not sent");
                Step::Reconnect("attachment_error")
            })
    }

    /// Moves the cursor past `item`, which is done with.
    fn advance(&mut self, item: &ChatItem) {
        self.advance_to(&item.id, item.cursor());
    }

    /// Item `id` is done with, and everything up to `cursor` too.
    fn advance_to(&mut self, id: &str, cursor: AgentCursor) {
        self.cursor = Some(cursor);
        self.cursor_due
            .get_or_insert_with(|| Instant::now() + self.relay.config.cursor_flush);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(id.to_owned());
    }

    async fn enqueue(&self, message: &OutboundMessage) -> Result<(), Step> {
        let new = NewMessage {
            group_id: self.key.storage(),
            dedup_id: message.dedup_id().to_owned(),
            body: message.to_json(),
        };
        match self.relay.outbound.send(new).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(conversation = %self.key, error = %e, "outbound queue refused an agent message; will backfill");
                Err(Step::Reconnect("outbound_unavailable"))
            }
        }
    }

    /// Writes the cursor if it moved since it was last written.
    async fn save_cursor(&mut self) -> Result<(), Step> {
        let (Some(_), Some(cursor)) = (self.cursor_due, self.cursor.clone()) else {
            return Ok(());
        };
        let saved = self
            .write(|c| {
                c.agent_cursor = Some(cursor.clone());
                true
            })
            .await;
        match saved {
            Ok(Modified::Written(record) | Modified::Unchanged(record)) => {
                self.record = Some(record);
                self.cursor_due = None;
                Ok(())
            }
            Ok(Modified::Missing) => Err(Step::Done(Outcome::Ended)),
            Err(StoreError::LeaseLost) => Err(Step::Done(Outcome::LeaseLost)),
            Err(_) => Err(Step::Reconnect("store_error")),
        }
    }

    /// A fenced modification of the record, starting from the copy last seen.
    async fn write(
        &mut self,
        change: impl FnMut(&mut Conversation) -> bool + Send,
    ) -> Result<Modified, StoreError> {
        let lease = self.lease.clone();
        let current = move || lease.lock().expect("lease lock").clone();
        modify(
            &*self.relay.store,
            &self.key,
            self.record.take(),
            Fence::Lease(&current),
            change,
        )
        .await
    }

    /// Marks the chat ended (unless the record already moved on to a newer chat) and
    /// sends the closing text, if configured. The cursor is saved either way.
    async fn end_chat(&mut self, item: Option<&ChatItem>) -> Outcome {
        let (contact, cursor) = (self.contact_id.clone(), self.cursor.clone());
        let keep = self.relay.config.worker.common.retention.conversations;
        let mut ended_here = false;
        let written = self
            .write(|c| {
                ended_here = false;
                let mut changed = false;
                if let Some(cursor) = &cursor
                    && c.agent_cursor.as_ref() != Some(cursor)
                {
                    c.agent_cursor = Some(cursor.clone());
                    changed = true;
                }
                if c.state != ConversationState::Ended && c.contact_id.as_deref() == Some(&contact)
                {
                    c.end(keep);
                    ended_here = true;
                    changed = true;
                }
                changed
            })
            .await;
        match written {
            Ok(Modified::Written(_)) => self.cursor_due = None,
            Ok(Modified::Unchanged(_) | Modified::Missing) => {}
            Err(StoreError::LeaseLost) => return Outcome::LeaseLost,
            Err(e) => {
                tracing::warn!(conversation = %self.key, error = %e, "cannot record the chat's end");
                return Outcome::Ended;
            }
        }
        if !ended_here {
            return Outcome::Ended;
        }
        metrics::counter!("waconnect_relay_chats_ended_total").increment(1);
        tracing::info!(conversation = %self.key, contact_id = %self.contact_id, "chat ended");
        if let (Some(text), Some(_)) = (
            &self
                .relay
                .config
                .routes
                .of(self.key.business.as_ref())
                .closing_text,
            item,
        ) {
            let closing = OutboundMessage {
                to: self.key.customer.clone(),
                from: self.key.business.clone(),
                body: text.clone(),
                media_urls: Vec::new(),
                files: Vec::new(),
                template: None,
                menu: None,
                origin: Origin::Bridge {
                    reason: "closing".into(),
                    id: format!("closing-{}", self.contact_id),
                },
                created_at: chrono::Utc::now(),
                resend: None,
            };
            let _ = self.enqueue(&closing).await;
        }
        Outcome::Ended
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Heartbeats of all sessions fire on a shared 250 ms grid: an idle worker then wakes a
/// few times a second for a batch of sockets instead of once per socket, which is what
/// idle CPU is mostly made of.
fn on_grid(at: Instant) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    const GRID: Duration = Duration::from_millis(250);
    let epoch = *EPOCH.get_or_init(Instant::now);
    let since = at.saturating_duration_since(epoch);
    let slots = since.as_nanos().div_ceil(GRID.as_nanos()) as u32;
    epoch + GRID * slots
}

fn role_label(role: &str) -> &'static str {
    match role {
        "AGENT" => "agent",
        "SUPERVISOR" => "supervisor",
        "SYSTEM" => "system",
        "CUSTOM_BOT" => "bot",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, F: std::future::Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A held conversation costs mostly its task, and the task is this future: 10.7 KiB
    /// with the rare steps and the socket inline, under 2 KiB without (debug build).
    #[test]
    fn session_future_stays_small() {
        let size = future_size(hold);
        assert!(size <= 3 * 1024, "an idle session's future is {size} bytes");
    }
}
