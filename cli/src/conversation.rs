//! `waconnect conversation show|release|end|erase`: a customer's conversation as the
//! store holds it — its chat, where the agent's side stands, who holds its socket — on
//! either engine, for the operator answering "what happened to this customer?", and the
//! three things an operator does to one: free its socket for another relay, end its chat,
//! erase what the bridge holds of the customer. Tokens are never shown, and the customer's
//! number is masked as in the logs.

use anyhow::Context;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use waconnect_shared::message::conversation::ConversationState;
use waconnect_shared::service::config::{CommonConfig, ConfigSource};
use waconnect_shared::service::routing::Routing;
use waconnect_shared::storage::backend::Backend;
use waconnect_shared::storage::queue::Take;
use waconnect_shared::storage::store::{
    ConversationStore, Fence, Lease, Modified, StoreError, StoredConversation, modify,
};
use waconnect_shared::{BusinessNumber, ConversationKey, CustomerAddress};

/// What `show` prints of a record.
#[derive(Debug, Serialize)]
pub struct Shown {
    pub conversation: String,
    pub state: &'static str,
    pub contact_id: Option<String>,
    pub initial_contact_id: Option<String>,
    pub participant_id: Option<String>,
    pub created_at: String,
    pub started_by_business: Option<String>,
    pub last_inbound_message_sid: Option<String>,
    pub last_inbound_at: Option<String>,
    /// What to search the logs for: the last customer message's trace id.
    pub last_inbound_trace_id: Option<String>,
    pub agent_cursor: Option<String>,
    /// The last agent item forwarded's trace id.
    pub agent_cursor_trace_id: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<String>,
    pub lease_version: u64,
    pub version: u64,
    pub menu_choices: usize,
    /// Recorded before several numbers were supported (keyed by the customer alone).
    pub from_before_routing: bool,
}

impl From<&StoredConversation> for Shown {
    fn from(s: &StoredConversation) -> Self {
        let c = &s.conversation;
        Self {
            conversation: c.key().to_string(),
            state: c.state.as_str(),
            contact_id: c.contact_id.clone(),
            initial_contact_id: c.initial_contact_id.clone(),
            participant_id: c.participant_id.clone(),
            created_at: c.created_at.to_rfc3339(),
            started_by_business: c.started_by.clone(),
            last_inbound_message_sid: c.last_inbound_message_sid.clone(),
            last_inbound_at: c.last_inbound_at.map(|t| t.to_rfc3339()),
            last_inbound_trace_id: c
                .last_inbound_message_sid
                .as_deref()
                .map(waconnect_shared::message::trace::of),
            agent_cursor_trace_id: c
                .agent_cursor
                .as_ref()
                .map(|a| waconnect_shared::message::trace::of(&a.id)),
            agent_cursor: c
                .agent_cursor
                .as_ref()
                .map(|a| format!("{} at {}", a.id, a.absolute_time)),
            lease_owner: s.lease.owner.clone(),
            lease_expires_at: s.lease.expires_at.map(|t| t.to_rfc3339()),
            lease_version: s.lease.version,
            version: s.version,
            menu_choices: c.menu.as_ref().map_or(0, Vec::len),
            from_before_routing: c.business.is_none(),
        }
    }
}

/// Which conversations of a customer a command acts on.
#[derive(Debug, Clone, clap::Args)]
pub struct Which {
    /// The customer, `whatsapp:+<E.164>`.
    #[arg(long)]
    pub customer: String,
    /// The business number they wrote to; the first route's sender when absent.
    #[arg(long)]
    pub business: Option<String>,
}

/// The configuration and storage a command works on.
struct Opened {
    common: CommonConfig,
    routing: Routing,
    backend: Backend,
    store: Arc<dyn ConversationStore>,
}

async fn open(source: &ConfigSource) -> anyhow::Result<Opened> {
    let mut r = source.reader();
    let common = CommonConfig::read(&mut r);
    let routing = Routing::read(&mut r);
    r.finish()?;
    let backend = Backend::open(&common).await?;
    let store = backend.store().await?;
    Ok(Opened {
        common,
        routing,
        backend,
        store,
    })
}

/// The keys `which` names: the customer with the business number (the first route's
/// sender when none is named), and the customer alone (a record from before routing).
fn keys(routing: &Routing, which: &Which) -> anyhow::Result<Vec<ConversationKey>> {
    let customer = CustomerAddress::parse(&which.customer).context("--customer")?;
    let business = match &which.business {
        Some(b) => BusinessNumber::parse(b).context("--business")?,
        None => routing.default_route().default_from().cloned().context(
            "name the business number with --business: the configuration has no default sender",
        )?,
    };
    Ok(vec![
        ConversationKey::new(business, customer.clone()),
        ConversationKey::legacy(customer),
    ])
}

/// The records `which` names that exist.
async fn found(
    store: &dyn ConversationStore,
    keys: &[ConversationKey],
) -> anyhow::Result<Vec<StoredConversation>> {
    let mut found = Vec::new();
    for key in keys {
        if let Some(stored) = store.get(key).await? {
            found.push(stored);
        }
    }
    Ok(found)
}

/// The customer's conversation with `business` (the first route's number when `None`),
/// and one recorded before routing, if any.
pub async fn show(source: &ConfigSource, which: &Which) -> anyhow::Result<Vec<Shown>> {
    let o = open(source).await?;
    let keys = keys(&o.routing, which)?;
    Ok(found(o.store.as_ref(), &keys)
        .await?
        .iter()
        .map(Shown::from)
        .collect())
}

/// What `release` did to one record.
#[derive(Debug, Serialize)]
pub struct Released {
    pub conversation: String,
    /// The relay that held its socket.
    pub held_by: Option<String>,
}

/// Frees the socket of the customer's live conversation(s) from the relay that holds it
/// (one stuck, or on a host being drained): the fencing version rises, so that relay
/// stops at its next renewal, and the fleet's sweepers adopt the conversation at once.
pub async fn release(source: &ConfigSource, which: &Which) -> anyhow::Result<Vec<Released>> {
    let o = open(source).await?;
    let mut released = Vec::new();
    for key in keys(&o.routing, which)? {
        // The holder renews now and then; a renewal between the read and the release
        // raises the version, so read again.
        for attempt in 1.. {
            let Some(stored) = o.store.get(&key).await? else {
                break;
            };
            let (Some(owner), Some(expires_at)) = (&stored.lease.owner, stored.lease.expires_at)
            else {
                break;
            };
            if stored.conversation.state == ConversationState::Ended
                || expires_at <= chrono::Utc::now()
            {
                break;
            }
            let lease = Lease {
                key: key.clone(),
                owner: owner.clone(),
                version: stored.lease.version,
                expires_at,
            };
            match o.store.release_lease(&lease).await {
                Ok(()) => {
                    released.push(Released {
                        conversation: key.to_string(),
                        held_by: Some(owner.clone()),
                    });
                    break;
                }
                Err(StoreError::LeaseLost | StoreError::NotFound) if attempt < 5 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(released)
}

/// What `end` did to one record.
#[derive(Debug, Serialize)]
pub struct Ended {
    pub conversation: String,
    pub contact_id: Option<String>,
    /// `relay`: the relay holding the chat saw the customer leave and ended it (the
    /// closing text, if configured, went to the customer); `store`: no relay did within
    /// the wait, so the record was ended here; `already`: it was over.
    pub ended_by: &'static str,
}

/// Ends the customer's live chat(s): the customer leaves the chat in Connect
/// (DisconnectParticipant), which the agent sees and the relay holding the chat acts on
/// as on any ended chat. If no relay has recorded the end within `wait` (none runs, or
/// the chat was already gone in Connect), the record is ended here.
pub async fn end(
    source: &ConfigSource,
    which: &Which,
    wait: Duration,
) -> anyhow::Result<Vec<Ended>> {
    let o = open(source).await?;
    let keys = keys(&o.routing, which)?;
    let mut ended = Vec::new();
    let mut api = None;
    for stored in found(o.store.as_ref(), &keys).await? {
        let c = &stored.conversation;
        let key = c.key();
        if c.state == ConversationState::Ended {
            ended.push(Ended {
                conversation: key.to_string(),
                contact_id: c.contact_id.clone(),
                ended_by: "already",
            });
            continue;
        }
        let token = c.connection_token_value();
        // A relay ends the record only if one holds the chat and the customer left it.
        let mut relay_ends = stored
            .lease
            .expires_at
            .is_some_and(|t| t > chrono::Utc::now())
            && !token.is_empty();
        if !token.is_empty() {
            if api.is_none() {
                let relay = waconnect_relay_worker::config_from(source)?;
                api = Some(waconnect_relay_worker::connect::ConnectApi::new(
                    &relay.aws.load().await,
                    relay.connect.clone(),
                ));
            }
            let api = api.as_ref().expect("set above");
            let client_token = format!(
                "operator-end-{}",
                c.contact_id.as_deref().unwrap_or_default()
            );
            match api.disconnect(&token, &client_token).await {
                Ok(()) => {}
                // The chat is already over in Connect, or the token is: nothing to leave;
                // no relay will see an end, so the record is ended below.
                Err(e) if !e.kind.retryable() => relay_ends = false,
                Err(e) => return Err(e).context("Connect did not answer the disconnect"),
            }
        }
        let contact = c.contact_id.clone();
        let wait = if relay_ends { wait } else { Duration::ZERO };
        let by_relay = wait_for_end(o.store.as_ref(), &key, contact.as_deref(), wait).await?;
        if !by_relay {
            let keep = o.common.retention.conversations;
            let written = modify(o.store.as_ref(), &key, None, Fence::None, |c| {
                let same_chat = c.contact_id == contact;
                if c.state != ConversationState::Ended && same_chat {
                    c.end(keep);
                    return true;
                }
                false
            })
            .await?;
            if let Modified::Written(_) = written {
                ended.push(Ended {
                    conversation: key.to_string(),
                    contact_id: contact,
                    ended_by: "store",
                });
                continue;
            }
        }
        ended.push(Ended {
            conversation: key.to_string(),
            contact_id: contact,
            ended_by: "relay",
        });
    }
    Ok(ended)
}

/// Whether the record of `contact` is ended (or gone, or on to a newer chat) within `wait`.
async fn wait_for_end(
    store: &dyn ConversationStore,
    key: &ConversationKey,
    contact: Option<&str>,
    wait: Duration,
) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let over = match store.get(key).await? {
            None => true,
            Some(s) => {
                s.conversation.state == ConversationState::Ended
                    || s.conversation.contact_id.as_deref() != contact
            }
        };
        if over {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `erase` removed.
#[derive(Debug, Default, Serialize)]
pub struct Erased {
    /// Conversation records (with the chat's tokens and the customer's number).
    pub records: u64,
    /// Message index entries (the first words of each message).
    pub messages: u64,
    /// The agent's files kept for Twilio to fetch.
    pub files: u64,
    /// Dead letters on either queue (the customer's messages or the agent's replies).
    pub dead_letters: u64,
}

/// Erases what the bridge holds of the customer (a data-protection request), for every
/// business number the routing lists (or the one named) and from before routing: each
/// conversation record, its message index entries and the agent's files, and the
/// customer's dead letters. A live chat is ended first. The delivery ledger's entries are
/// opaque ids (Twilio SIDs, Connect item ids) and times, with no number and no words;
/// they expire with `WACONNECT_RETENTION_LEDGER`.
pub async fn erase(source: &ConfigSource, which: &Which, wait: Duration) -> anyhow::Result<Erased> {
    let o = open(source).await?;
    let customer = CustomerAddress::parse(&which.customer).context("--customer")?;
    let mut keys = match &which.business {
        Some(_) => keys(&o.routing, which)?,
        None => {
            let mut numbers: Vec<BusinessNumber> = o
                .routing
                .routes()
                .iter()
                .flat_map(|r| r.numbers.iter().chain(r.from.as_ref()))
                .cloned()
                .collect();
            numbers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            numbers.dedup();
            numbers
                .into_iter()
                .map(|b| ConversationKey::new(b, customer.clone()))
                .chain([ConversationKey::legacy(customer.clone())])
                .collect()
        }
    };
    keys.dedup();
    let live: Vec<Option<BusinessNumber>> = found(o.store.as_ref(), &keys)
        .await?
        .into_iter()
        .filter(|s| s.conversation.state != ConversationState::Ended)
        .map(|s| s.conversation.business)
        .collect();
    for business in live {
        // A record from before routing (no number) is ended with the first route's.
        let one = Which {
            customer: which.customer.clone(),
            business: business.map(|b| b.as_str().to_owned()),
        };
        end(source, &one, wait).await?;
    }
    let index = o.backend.message_index().await?;
    let media = o.backend.media().await?;
    let mut erased = Erased::default();
    for key in &keys {
        erased.messages += index.forget_conversation(key).await?;
        if let Some(media) = &media {
            erased.files += media
                .forget(&waconnect_shared::storage::media::conversation_prefix(key))
                .await?;
        }
        // Last: a record left behind by a failure above lets the erase be run again.
        if o.store.erase(key).await? {
            erased.records += 1;
        }
    }
    let letters = crate::dlq::Select {
        queue: crate::dlq::Which::Both,
        customer: Some(customer.as_str().to_owned()),
        older_than: None,
        ids: Vec::new(),
    };
    erased.dead_letters = crate::dlq::take(source, &letters, Take::Purge, false)
        .await?
        .len() as u64;
    Ok(erased)
}

/// The records as text for people.
pub fn text(shown: &[Shown]) -> String {
    if shown.is_empty() {
        return "no conversation recorded for this customer and number\n".into();
    }
    let mut out = String::new();
    for s in shown {
        let line = |out: &mut String, name: &str, value: &str| {
            out.push_str(&format!("{name:<14} {value}\n"));
        };
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "—".into());
        line(&mut out, "conversation", &s.conversation);
        line(&mut out, "state", s.state);
        line(
            &mut out,
            "contact",
            &format!(
                "{} (first {})",
                or_none(&s.contact_id),
                or_none(&s.initial_contact_id)
            ),
        );
        line(&mut out, "created", &s.created_at);
        if let Some(key) = &s.started_by_business {
            line(&mut out, "started by", &format!("the business, key {key}"));
        }
        line(
            &mut out,
            "last message",
            &format!(
                "{} at {} (trace {})",
                or_none(&s.last_inbound_message_sid),
                or_none(&s.last_inbound_at),
                or_none(&s.last_inbound_trace_id)
            ),
        );
        line(
            &mut out,
            "agent cursor",
            &format!(
                "{} (trace {})",
                or_none(&s.agent_cursor),
                or_none(&s.agent_cursor_trace_id)
            ),
        );
        line(
            &mut out,
            "lease",
            &match &s.lease_owner {
                Some(owner) => format!(
                    "{owner} until {} (fencing version {})",
                    or_none(&s.lease_expires_at),
                    s.lease_version
                ),
                None => "free".into(),
            },
        );
        if s.from_before_routing {
            line(
                &mut out,
                "note",
                "recorded before routing (keyed by the customer alone)",
            );
        }
        out.push('\n');
    }
    out
}
