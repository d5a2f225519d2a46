//! `waconnect dlq list|show|redrive|purge`: what ended in the dead-letter queues and why,
//! on either engine, and taking it off again. A list shows each letter's reason, its
//! conversation (the number masked), its trace id (to find its log lines) and its age,
//! never its body; `show` prints one letter's body, on purpose. `redrive` puts the
//! selected letters back on their queue, each customer's in the order they were sent;
//! `purge` deletes them. Both take a selection (queue, customer, age, ids) and refuse to
//! act on everything unless told `--all`.

use anyhow::Context;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use waconnect_shared::message::event::InboundEvent;
use waconnect_shared::message::outbound::OutboundMessage;
use waconnect_shared::service::config::{CommonConfig, ConfigSource};
use waconnect_shared::storage::backend::Backend;
use waconnect_shared::storage::queue::{DeadLetter, Queue, Take};
use waconnect_shared::{ConversationKey, CustomerAddress};

/// At most this many letters are read from each queue.
pub const MAX_LIST: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Inbound,
    Outbound,
    Both,
}

#[derive(Debug, Serialize)]
pub struct Letter {
    pub queue: &'static str,
    pub message_id: String,
    pub conversation: String,
    pub trace_id: Option<String>,
    pub reason: String,
    pub receive_count: u32,
    pub sent_at: String,
    pub dead_at: String,
    #[serde(skip)]
    customer: Option<CustomerAddress>,
    #[serde(skip)]
    body: Vec<u8>,
}

fn letter(queue: &'static str, d: DeadLetter) -> Letter {
    // An inbound receipt's group is `status:<key>`.
    let key = ConversationKey::parse_storage(d.group_id.trim_start_matches("status:")).ok();
    let trace_id = match queue {
        "inbound" => InboundEvent::from_json(&d.body).ok().map(|e| e.trace_id()),
        _ => OutboundMessage::from_json(&d.body)
            .ok()
            .map(|m| m.trace_id()),
    };
    Letter {
        queue,
        message_id: d.message_id,
        conversation: key
            .as_ref()
            .map_or_else(|| "(unreadable group)".into(), ToString::to_string),
        trace_id,
        reason: d.reason,
        receive_count: d.receive_count,
        sent_at: d.sent_at.to_rfc3339(),
        dead_at: d.dead_at.to_rfc3339(),
        customer: key.map(|k| k.customer),
        body: d.body,
    }
}

/// Which dead letters a command acts on.
#[derive(Debug, Clone, clap::Args)]
pub struct Select {
    #[arg(long, value_enum, default_value = "both")]
    pub queue: Which,
    /// Only this customer's, `whatsapp:+<E.164>`.
    #[arg(long)]
    pub customer: Option<String>,
    /// Only those that died longer ago than this (`30m`, `2h`, `7d`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Only this letter, by the message id `list` shows (repeat for more).
    #[arg(long = "id")]
    pub ids: Vec<String>,
}

impl Select {
    /// Selects every letter of the queue(s): what `redrive` and `purge` refuse to act on
    /// without `--all`.
    pub fn is_everything(&self) -> bool {
        self.customer.is_none() && self.older_than.is_none() && self.ids.is_empty()
    }
}

/// The queue(s) `which` names, opened on the configured engine.
async fn queues(
    source: &ConfigSource,
    which: Which,
) -> anyhow::Result<Vec<(&'static str, Arc<dyn Queue>)>> {
    let mut r = source.reader();
    let common = CommonConfig::read(&mut r);
    r.finish()?;
    let backend = Backend::open(&common).await?;
    let mut queues: Vec<(&'static str, Arc<dyn Queue>)> = Vec::new();
    if which != Which::Outbound {
        queues.push(("inbound", backend.inbound().await?));
    }
    if which != Which::Inbound {
        queues.push(("outbound", backend.outbound().await?));
    }
    Ok(queues)
}

/// The letters of `queue` that `select` picks, oldest first.
async fn selected(
    name: &'static str,
    queue: &dyn Queue,
    select: &Select,
) -> anyhow::Result<Vec<Letter>> {
    let customer = select
        .customer
        .as_deref()
        .map(CustomerAddress::parse)
        .transpose()
        .context("--customer")?;
    let died_before = select
        .older_than
        .map(|age| chrono::Utc::now() - chrono::TimeDelta::from_std(age).unwrap_or_default());
    Ok(queue
        .dead_letters(MAX_LIST)
        .await?
        .into_iter()
        .filter(|d| died_before.is_none_or(|t| d.dead_at < t))
        .filter(|d| select.ids.is_empty() || select.ids.contains(&d.message_id))
        .map(|d| letter(name, d))
        .filter(|l| {
            customer
                .as_ref()
                .is_none_or(|c| l.customer.as_ref() == Some(c))
        })
        .collect())
}

/// The dead letters `select` picks, oldest first in each queue.
pub async fn list(source: &ConfigSource, select: &Select) -> anyhow::Result<Vec<Letter>> {
    let mut letters = Vec::new();
    for (name, queue) in queues(source, select.queue).await? {
        letters.extend(selected(name, queue.as_ref(), select).await?);
    }
    Ok(letters)
}

/// Redrives or purges the letters `select` picks (only lists them when `dry_run`);
/// returns those taken.
pub async fn take(
    source: &ConfigSource,
    select: &Select,
    take: Take,
    dry_run: bool,
) -> anyhow::Result<Vec<Letter>> {
    let mut taken = Vec::new();
    for (name, queue) in queues(source, select.queue).await? {
        let letters = selected(name, queue.as_ref(), select).await?;
        if dry_run || letters.is_empty() {
            taken.extend(letters);
            continue;
        }
        let ids: Vec<String> = letters.iter().map(|l| l.message_id.clone()).collect();
        let done = queue.take_dead_letters(&ids, take).await?;
        taken.extend(letters.into_iter().filter(|l| done.contains(&l.message_id)));
    }
    Ok(taken)
}

/// The letter with `message_id`, with its body as text.
pub async fn show(
    source: &ConfigSource,
    which: Which,
    message_id: &str,
) -> anyhow::Result<(Letter, String)> {
    let select = Select {
        queue: which,
        customer: None,
        older_than: None,
        ids: vec![message_id.to_owned()],
    };
    let found = list(source, &select)
        .await?
        .into_iter()
        .next()
        .with_context(|| {
            format!("no dead letter {message_id} (of the first {MAX_LIST} in each queue)")
        })?;
    let body = String::from_utf8_lossy(&found.body).into_owned();
    Ok((found, body))
}

/// The letters as a table for people.
pub fn table(letters: &[Letter]) -> String {
    if letters.is_empty() {
        return "no dead letters\n".into();
    }
    let mut out = String::new();
    for l in letters {
        out.push_str(&format!(
            "{}  {}  {}  {}  dead {} after {} receive(s)\n    trace {}\n    {}\n",
            l.queue,
            l.message_id,
            l.conversation,
            l.sent_at,
            l.dead_at,
            l.receive_count,
            l.trace_id.as_deref().unwrap_or("—"),
            l.reason
        ));
    }
    out
}
