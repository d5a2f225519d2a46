//! `waconnect recover --since …`: customer messages Twilio took while ingress could not
//! (down, or answering 503, longer than Twilio tries a webhook: 15 s), put on the inbound
//! queue as their webhooks would have been. Twilio keeps every message a customer sent; its
//! Messages API lists them. A message the relay handled already is left (the delivery
//! ledger remembers each MessageSid it handled); one still on the queue is not queued twice
//! (the queue's dedup id is the MessageSid); and should one slip through, the relay's
//! replay guard drops it. The agent reads, before each recovered message, when the
//! customer sent it.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;
use waconnect_shared::message::address::Channel;
use waconnect_shared::service::config::{CommonConfig, ConfigSource};
use waconnect_shared::service::routing::Routing;
use waconnect_shared::storage::backend::Backend;
use waconnect_shared::storage::queue::NewMessage;
use waconnect_shared::twilio::account::TwilioAccount;
use waconnect_shared::twilio::history::{History, Received};
use waconnect_shared::{BusinessNumber, ConversationKey};

/// Each call to Twilio's API, at most.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, clap::Args)]
pub struct Range {
    /// From when: an age (`30m`, `2h`) or an instant (`2026-12-04T10:00:00Z`).
    #[arg(long, value_parser = instant)]
    pub since: DateTime<Utc>,
    /// Until when (default: now), in the same forms.
    #[arg(long, value_parser = instant)]
    pub until: Option<DateTime<Utc>>,
    /// Only messages to this business number, `whatsapp:+<E.164>`.
    #[arg(long)]
    pub business: Option<String>,
    /// At most this many customer messages in the range; more is refused (give a
    /// shorter range).
    #[arg(long, default_value_t = 10_000)]
    pub max: usize,
}

fn instant(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = humantime::parse_duration(s)
        .map_err(|_| format!("expected an age (30m, 2h) or an RFC 3339 instant, got {s:?}"))?;
    chrono::TimeDelta::from_std(age)
        .ok()
        .and_then(|age| Utc::now().checked_sub_signed(age))
        .ok_or_else(|| format!("{s:?} is too long ago"))
}

/// What became of one message Twilio lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The relay handled it already.
    Handled,
    /// Put on the inbound queue now. (SQS does not say when it drops a copy of a message
    /// it holds: there, one still on the queue is reported queued.)
    Queued,
    /// On the queue already (its webhook, or an earlier recovery, within the dedup window).
    AlreadyQueued,
    /// Would be queued (`--dry-run`).
    WouldQueue,
    /// To a number no route takes, or from a channel ingress refuses.
    NotOurs,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Queued => "queued",
            Self::AlreadyQueued => "already_queued",
            Self::WouldQueue => "would_queue",
            Self::NotOurs => "not_ours",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub message_sid: String,
    /// Masked, as in the logs.
    pub conversation: String,
    pub sent_at: String,
    pub files: usize,
    pub outcome: Outcome,
}

/// Lists what Twilio took in the range and queues what the relay has not handled (only
/// tells what it would when `dry_run`).
pub async fn run(source: &ConfigSource, range: &Range, dry_run: bool) -> anyhow::Result<Vec<Row>> {
    let mut r = source.reader();
    let common = CommonConfig::read(&mut r);
    let account = TwilioAccount::read(&mut r, true);
    let api_base = r.string("WACONNECT_TWILIO_API_BASE", "https://api.twilio.com");
    let routing = Routing::read(&mut r);
    let allow_non_whatsapp = r.flag("WACONNECT_ALLOW_NON_WHATSAPP", false);
    r.finish()?;
    let account = account.context("TWILIO_ACCOUNT_SID is required")?;
    let until = range.until.unwrap_or_else(Utc::now);
    anyhow::ensure!(range.since < until, "--since must be before --until");
    // The ledger forgets a handled message after its retention: older ones would reach the
    // agent again. An hour's margin covers the time between a message and its handling.
    let remembered = chrono::TimeDelta::from_std(common.retention.ledger)
        .unwrap_or(chrono::TimeDelta::MAX)
        - chrono::TimeDelta::hours(1);
    anyhow::ensure!(
        Utc::now() - range.since <= remembered,
        "--since goes back further than WACONNECT_RETENTION_LEDGER ({}) less an hour: the relay no longer remembers which of those messages it handled",
        humantime::format_duration(common.retention.ledger)
    );
    let only = range
        .business
        .as_deref()
        .map(BusinessNumber::parse)
        .transpose()
        .context("--business")?;

    let history = History::new(account.clone(), &api_base, &common.tls, CALL_TIMEOUT);
    let received = history
        .received(only.as_ref(), range.since, until, range.max)
        .await
        .context("listing the messages Twilio took")?;
    let backend = Backend::open(&common).await?;
    let queue = backend.inbound().await?;
    let ledger = backend.ledger().await?;

    let mut rows = Vec::new();
    for message in &received {
        let ours = message.parties().filter(|(customer, business)| {
            (customer.channel() == Channel::WhatsApp || allow_non_whatsapp)
                && routing.route_for(business).is_some()
        });
        let row = |conversation: String, files: usize, outcome| Row {
            message_sid: message.sid.clone(),
            conversation,
            sent_at: message.sent_at.to_rfc3339(),
            files,
            outcome,
        };
        let Some((customer, business)) = ours else {
            rows.push(row(
                "(not a routed WhatsApp conversation)".into(),
                message.num_media,
                Outcome::NotOurs,
            ));
            continue;
        };
        let key = ConversationKey::new(business, customer);
        // What the relay records for each message it handled (its replay guard).
        if ledger
            .outcome(&format!("in#{}", message.sid))
            .await
            .context("reading the delivery ledger")?
            .is_some()
        {
            rows.push(row(key.to_string(), message.num_media, Outcome::Handled));
            continue;
        }
        if dry_run {
            rows.push(row(key.to_string(), message.num_media, Outcome::WouldQueue));
            continue;
        }
        rows.push(queue_one(&history, &account, queue.as_ref(), message, &key).await?);
    }
    Ok(rows)
}

async fn queue_one(
    history: &History,
    account: &TwilioAccount,
    queue: &dyn waconnect_shared::storage::queue::Queue,
    message: &Received,
    key: &ConversationKey,
) -> anyhow::Result<Row> {
    let files = history
        .files(message)
        .await
        .with_context(|| format!("listing the files of {}", message.sid))?;
    let event = message.event(&account.account_sid, &files);
    let sent = queue
        .send(NewMessage {
            group_id: event.kind.queue_group(key),
            dedup_id: message.sid.clone(),
            body: event.to_json(),
        })
        .await
        .with_context(|| format!("queueing {}", message.sid))?;
    Ok(Row {
        message_sid: message.sid.clone(),
        conversation: key.to_string(),
        sent_at: message.sent_at.to_rfc3339(),
        files: files.len(),
        outcome: if sent.duplicate == Some(true) {
            Outcome::AlreadyQueued
        } else {
            Outcome::Queued
        },
    })
}

/// The rows as a table for people, with a count of each outcome.
pub fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "Twilio took no customer message in that range\n".into();
    }
    let mut out = String::new();
    for r in rows {
        out.push_str(&format!(
            "{}  {}  {}  {} file(s)  {}\n",
            r.sent_at,
            r.message_sid,
            r.conversation,
            r.files,
            r.outcome.as_str()
        ));
    }
    let count = |o| rows.iter().filter(|r| r.outcome == o).count();
    out.push_str(&format!(
        "{} listed: {} handled already, {} queued, {} on the queue already, {} would be queued, {} not ours\n",
        rows.len(),
        count(Outcome::Handled),
        count(Outcome::Queued),
        count(Outcome::AlreadyQueued),
        count(Outcome::WouldQueue),
        count(Outcome::NotOurs),
    ));
    out
}
