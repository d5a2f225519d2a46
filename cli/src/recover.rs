//! `waconnect recover --since …`: customer messages Twilio took while ingress could not
//! (down, or answering 503, longer than Twilio tries a webhook: 15 s), put on the inbound
//! queue as their webhooks would have been. Twilio keeps every message a customer sent; its
//! Messages API lists them ([`waconnect_shared::twilio::recovery`], which says why running
//! it again is safe). The agent reads, before each recovered message, when the customer
//! sent it. The relay's catch-up does the same for each minute just past; this command is
//! for what it could not see (the relays down too, or a range further back).

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;
use waconnect_shared::BusinessNumber;
use waconnect_shared::service::config::{CommonConfig, ConfigSource};
use waconnect_shared::service::routing::Routing;
use waconnect_shared::storage::backend::Backend;
use waconnect_shared::twilio::account::TwilioAccount;
use waconnect_shared::twilio::history::History;
use waconnect_shared::twilio::recovery::{Outcome, Recovery};

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

#[derive(Debug, Serialize)]
pub struct Row {
    pub message_sid: String,
    /// Masked, as in the logs.
    pub conversation: String,
    pub sent_at: String,
    pub files: usize,
    pub outcome: &'static str,
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
    let backend = Backend::open(&common).await?;
    let recovery = Recovery {
        history: History::new(account, &api_base, &common.tls, CALL_TIMEOUT),
        routing,
        allow_non_whatsapp,
        ledger: backend.ledger().await?,
        queue: backend.inbound().await?,
    };
    let found = recovery
        .run(only.as_ref(), range.since, until, range.max, dry_run)
        .await?;
    Ok(found
        .into_iter()
        .map(|f| Row {
            message_sid: f.message.sid,
            conversation: f.conversation.map_or_else(
                || "(not a routed WhatsApp conversation)".to_owned(),
                |k| k.to_string(),
            ),
            sent_at: f.message.sent_at.to_rfc3339(),
            files: f.files,
            outcome: f.outcome.as_str(),
        })
        .collect())
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
            r.sent_at, r.message_sid, r.conversation, r.files, r.outcome
        ));
    }
    let count = |o: Outcome| rows.iter().filter(|r| r.outcome == o.as_str()).count();
    out.push_str(&format!(
        "{} listed: {} handled already, {} queued, {} on the queue already, {} offered to SQS (dropped there if it holds them), {} would be queued, {} not ours\n",
        rows.len(),
        count(Outcome::Handled),
        count(Outcome::Queued),
        count(Outcome::AlreadyQueued),
        count(Outcome::Offered),
        count(Outcome::WouldQueue),
        count(Outcome::NotOurs),
    ));
    out
}
