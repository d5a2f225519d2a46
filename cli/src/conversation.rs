//! `waconnect conversation show`: a customer's conversation as the store holds it — its
//! chat, where the agent's side stands, who holds its socket — on either engine, for
//! the operator answering "what happened to this customer?". Tokens are never shown, and
//! the customer's number is masked as in the logs.

use anyhow::Context;
use serde::Serialize;
use waconnect_shared::backend::Backend;
use waconnect_shared::config::{CommonConfig, ConfigSource};
use waconnect_shared::routing::Routing;
use waconnect_shared::store::StoredConversation;
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
                .map(waconnect_shared::trace::of),
            agent_cursor_trace_id: c
                .agent_cursor
                .as_ref()
                .map(|a| waconnect_shared::trace::of(&a.id)),
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

/// The customer's conversation with `business` (the first route's number when `None`),
/// and one recorded before routing, if any.
pub async fn show(
    source: &ConfigSource,
    customer: &str,
    business: Option<&str>,
) -> anyhow::Result<Vec<Shown>> {
    let mut r = source.reader();
    let common = CommonConfig::read(&mut r);
    let routing = Routing::read(&mut r);
    r.finish()?;
    let customer = CustomerAddress::parse(customer).context("--customer")?;
    let business = match business {
        Some(b) => BusinessNumber::parse(b).context("--business")?,
        None => routing.default_route().default_from().cloned().context(
            "name the business number with --business: the configuration has no default sender",
        )?,
    };
    let store = Backend::open(&common).await?.store().await?;
    let mut found = Vec::new();
    for key in [
        ConversationKey::new(business, customer.clone()),
        ConversationKey::legacy(customer),
    ] {
        if let Some(stored) = store.get(&key).await? {
            found.push(Shown::from(&stored));
        }
    }
    Ok(found)
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
