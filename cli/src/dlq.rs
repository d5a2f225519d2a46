//! `waconnect dlq list|show`: what ended in the dead-letter queues and why, on either
//! engine, without taking anything off them. A list shows each letter's reason, its
//! conversation (the number masked), its trace id (to find its log lines) and its age,
//! never its body; `show` prints one letter's body, on purpose.

use anyhow::Context;
use serde::Serialize;
use std::sync::Arc;
use waconnect_shared::backend::Backend;
use waconnect_shared::config::{CommonConfig, ConfigSource};
use waconnect_shared::event::InboundEvent;
use waconnect_shared::outbound::OutboundMessage;
use waconnect_shared::queue::{DeadLetter, Queue};
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

/// The dead letters of `which` queue(s), oldest first, those of `customer` only if given.
pub async fn list(
    source: &ConfigSource,
    which: Which,
    customer: Option<&str>,
) -> anyhow::Result<Vec<Letter>> {
    let customer = customer
        .map(CustomerAddress::parse)
        .transpose()
        .context("--customer")?;
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
    let mut letters = Vec::new();
    for (name, queue) in queues {
        for d in queue.dead_letters(MAX_LIST).await? {
            let l = letter(name, d);
            if customer
                .as_ref()
                .is_none_or(|c| l.customer.as_ref() == Some(c))
            {
                letters.push(l);
            }
        }
    }
    Ok(letters)
}

/// The letter with `message_id`, with its body as text.
pub async fn show(
    source: &ConfigSource,
    which: Which,
    message_id: &str,
) -> anyhow::Result<(Letter, String)> {
    let found = list(source, which, None)
        .await?
        .into_iter()
        .find(|l| l.message_id == message_id)
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
