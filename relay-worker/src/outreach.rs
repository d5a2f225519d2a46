//! Conversations the business starts (docs/architecture.md §10): an approved WhatsApp template to a
//! customer (who may never have written, or not within 24 h), with a Connect chat opened
//! for the agent and written to the record exactly as an inbound start would be, so the
//! customer's reply lands in that chat. The agent sees in the chat what was sent.
//!
//! Idempotent on the caller's key: the chat's ClientToken, the notice's and the template's
//! outbound dedup id all derive from it, the record remembers it, and the delivery ledger
//! maps it to the chat once done. A customer who already has an open chat is refused
//! (the agent writes in that one instead).
//!
//! Served on its own listener (`WACONNECT_RELAY_API_BIND`, off by default) behind a bearer
//! token (`WACONNECT_RELAY_API_TOKEN`): `POST /v1/conversations`.

use crate::NOTICE_PREFIX;
use crate::Relay;
use crate::connect::{ErrorKind, NewChat};
use crate::fleet::Fleet;
use crate::inbound::client_token;
use crate::legacy;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use waconnect_shared::message::conversation::{Conversation, ConversationState};
use waconnect_shared::message::outbound::{Origin, OutboundMessage, Template};
use waconnect_shared::service::secret::Secret;
use waconnect_shared::storage::delivery::Claim;
use waconnect_shared::storage::queue::NewMessage;
use waconnect_shared::storage::store::{Fence, Modified, StoreError, StoredConversation, modify};
use waconnect_shared::{BusinessNumber, ConversationKey, CustomerAddress};

/// Largest request body taken.
const MAX_BODY: usize = 16 * 1024;
const MAX_KEY: usize = 128;

/// What the caller asks for.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Outreach {
    /// `whatsapp:+<E.164>`.
    pub customer: String,
    /// The business number that writes (`whatsapp:+<E.164>`), one a route lists; the
    /// default route's sender when absent.
    #[serde(default)]
    pub business: Option<String>,
    /// The approved template's `HX…` SID.
    pub content_sid: String,
    /// The template's variables, `{"1": "Ana"}`.
    #[serde(default)]
    pub variables: HashMap<String, String>,
    /// The caller's idempotency key: the same key never starts two conversations.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Started {
    pub contact_id: String,
    /// False when an earlier request with this key started it.
    pub new: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OutreachError {
    #[error("{0}")]
    Invalid(String),
    #[error("the customer already has an open conversation (contact {0})")]
    Open(String),
    #[error("not now: {0}")]
    Unavailable(String),
}

impl From<StoreError> for OutreachError {
    fn from(e: StoreError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<crate::connect::ConnectError> for OutreachError {
    fn from(e: crate::connect::ConnectError) -> Self {
        match e.kind {
            ErrorKind::Invalid => Self::Invalid(format!("Connect refused: {}", e.code)),
            _ => Self::Unavailable(format!("Connect: {}", e.code)),
        }
    }
}

/// A request, checked: every string from the wire has a shape and a cap.
struct Checked {
    /// The conversation: the business number and the customer.
    conversation: ConversationKey,
    content_sid: String,
    variables: Option<String>,
    key: String,
}

fn check(relay: &Relay, o: &Outreach) -> Result<Checked, OutreachError> {
    let customer = CustomerAddress::parse(&o.customer)
        .map_err(|_| OutreachError::Invalid("customer must be whatsapp:+<E.164>".into()))?;
    let routing = relay.config.routes.routing();
    let business = match &o.business {
        Some(b) => {
            let b = BusinessNumber::parse(b)
                .map_err(|_| OutreachError::Invalid("business must be whatsapp:+<E.164>".into()))?;
            // The environment's single route serves its own sender only.
            let served = routing
                .route_for(&b)
                .is_some_and(|r| r.from.as_ref().is_none_or(|from| *from == b));
            if !served {
                return Err(OutreachError::Invalid(format!(
                    "business {b} is not one of this deployment's WhatsApp senders"
                )));
            }
            b
        }
        None => routing
            .default_route()
            .default_from()
            .cloned()
            .ok_or_else(|| {
                OutreachError::Invalid(
                    "name the business number: this deployment has no default sender".into(),
                )
            })?,
    };
    let sid = &o.content_sid;
    if !(sid.len() == 34
        && sid.starts_with("HX")
        && sid[2..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(OutreachError::Invalid(
            "content_sid must be a template's HX… SID".into(),
        ));
    }
    if o.key.is_empty()
        || o.key.len() > MAX_KEY
        || !o
            .key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(OutreachError::Invalid(format!(
            "key must be 1 to {MAX_KEY} letters, digits or -_.:"
        )));
    }
    if o.variables.len() > 100 {
        return Err(OutreachError::Invalid("at most 100 variables".into()));
    }
    let variables = (!o.variables.is_empty())
        .then(|| serde_json::to_string(&o.variables).expect("a map serialises"));
    Ok(Checked {
        conversation: ConversationKey::new(business, customer),
        content_sid: sid.clone(),
        variables,
        key: o.key.clone(),
    })
}

/// Starts (or, for a key seen before, finds) the conversation.
pub async fn start(
    relay: &Arc<Relay>,
    fleet: &Arc<Fleet>,
    request: &Outreach,
) -> Result<Started, OutreachError> {
    let o = check(relay, request)?;
    let done_key = format!("outreach#{}", o.key);
    match relay.ledger.claim(&done_key).await {
        Ok(Claim::Sent { sid: contact_id }) => {
            return Ok(Started {
                contact_id,
                new: false,
            });
        }
        Ok(_) => {}
        Err(e) => return Err(OutreachError::Unavailable(e.to_string())),
    }
    match open_and_send(relay, &o).await {
        Ok(stored) => {
            let contact_id = stored.conversation.contact_id.clone().unwrap_or_default();
            if let Err(e) = relay.ledger.sent(&done_key, &contact_id).await {
                // The record's key still makes a repeat find this chat.
                tracing::warn!(error = %e, "an outreach was not recorded in the ledger");
            }
            relay.records.keep(&stored);
            fleet.adopt(&stored.conversation.key(), "acquired").await;
            metrics::counter!("waconnect_relay_outreach_total", "outcome" => "started")
                .increment(1);
            tracing::info!(conversation = %o.conversation, contact_id = %contact_id, "conversation started by the business");
            Ok(Started {
                contact_id,
                new: true,
            })
        }
        Err(e) => {
            // Nothing to remember: a later request with this key tries again.
            let _ = relay.ledger.release(&done_key).await;
            let outcome = match e {
                OutreachError::Invalid(_) => "invalid",
                OutreachError::Open(_) => "open",
                OutreachError::Unavailable(_) => "unavailable",
            };
            metrics::counter!("waconnect_relay_outreach_total", "outcome" => outcome).increment(1);
            Err(e)
        }
    }
}

/// The chat opened and recorded, the agent told, the template queued.
async fn open_and_send(relay: &Relay, o: &Checked) -> Result<StoredConversation, OutreachError> {
    let stored = open_chat(relay, o).await?;
    let contact = stored.conversation.contact_id.clone().unwrap_or_default();
    let token = stored.conversation.connection_token_value();
    let notice = match template_text(relay, o).await {
        Some(text) => format!(
            "{NOTICE_PREFIX} The business started this conversation on WhatsApp with template {}:\n{text}",
            o.content_sid
        ),
        None => format!(
            "{NOTICE_PREFIX} The business started this conversation on WhatsApp with template {}{}.",
            o.content_sid,
            match &o.variables {
                Some(v) => format!(" (variables {v})"),
                None => String::new(),
            }
        ),
    };
    relay
        .api
        .send_message(
            &token,
            &notice,
            &client_token(&["outreach-notice", &o.key, &contact]),
        )
        .await?;
    let message = OutboundMessage {
        to: stored.conversation.customer.clone(),
        from: stored.conversation.business.clone(),
        body: String::new(),
        media_urls: Vec::new(),
        files: Vec::new(),
        template: Some(Template {
            content_sid: o.content_sid.clone(),
            variables: o.variables.clone(),
        }),
        menu: None,
        origin: Origin::Bridge {
            reason: "outreach".into(),
            id: format!("outreach-{}", o.key),
        },
        created_at: chrono::Utc::now(),
        resend: None,
    };
    relay
        .outbound
        .send(NewMessage {
            group_id: stored.conversation.key().storage(),
            dedup_id: message.dedup_id(),
            body: message.to_json(),
        })
        .await
        .map_err(|e| OutreachError::Unavailable(e.to_string()))?;
    Ok(stored)
}

/// The template's text with its variables filled in, as the customer reads it, from
/// Twilio's Content API; `None` when it cannot be had (the notice then names the SID).
async fn template_text(relay: &Relay, o: &Checked) -> Option<String> {
    let media = &relay.media;
    let account = media.settings.twilio.as_ref()?;
    let url = format!(
        "{}/v1/Content/{}",
        media.settings.twilio_content_base, o.content_sid
    );
    let response = media
        .http()
        .get(url)
        .basic_auth(&account.username, Some(account.password.expose()))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?;
    let content: serde_json::Value = response.json().await.ok()?;
    let body = content
        .get("types")?
        .as_object()?
        .values()
        .find_map(|t| t.get("body")?.as_str())?;
    let vars: HashMap<String, String> = o
        .variables
        .as_deref()
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let mut text = body.to_owned();
    for (k, v) in vars {
        text = text.replace(&format!("{{{{{k}}}}}"), &v);
    }
    // Connect takes at most 1,024 characters in one message.
    Some(text.chars().take(900).collect())
}

/// The customer's record with a live chat this key started, as an inbound start leaves it
/// (a persistent chat continuing an ended one). Every step is a conditional write.
async fn open_chat(relay: &Relay, o: &Checked) -> Result<StoredConversation, OutreachError> {
    for _ in 0..5 {
        let existing = legacy::find(relay, &o.conversation).await?;
        let live = existing
            .as_ref()
            .filter(|s| s.conversation.state != ConversationState::Ended);
        if let Some(s) = live {
            let c = &s.conversation;
            if c.started_by.as_deref() != Some(o.key.as_str()) {
                return Err(OutreachError::Open(
                    c.contact_id.clone().unwrap_or_default(),
                ));
            }
            if c.state == ConversationState::Active {
                return Ok(s.clone());
            }
            // Started by an earlier try of this key: connect it.
            let participant = c.participant_token.clone().unwrap_or_default();
            let connection = relay.api.create_connection(participant.expose()).await?;
            let contact = c.contact_id.clone();
            let activated = modify(&*relay.store, &c.key(), Some(s.clone()), Fence::None, |c| {
                if c.state != ConversationState::Starting || c.contact_id != contact {
                    return false;
                }
                c.state = ConversationState::Active;
                c.connection_token = Some(connection.connection_token.clone().into());
                c.connection_expires_at = Some(connection.connection_expires_at);
                true
            })
            .await?;
            if let Modified::Written(s) = activated {
                metrics::counter!("waconnect_relay_chats_started_total").increment(1);
                return Ok(s);
            }
            continue;
        }
        let previous = existing
            .as_ref()
            .and_then(|s| s.conversation.contact_id.clone());
        let business = o.conversation.business.as_ref();
        let route = relay.config.routes.of(business);
        let mut attributes: HashMap<String, String> =
            route.attributes.clone().into_iter().collect();
        attributes.insert("Channel".to_owned(), "WhatsApp".to_owned());
        attributes.insert(
            "CustomerNumber".to_owned(),
            o.conversation.customer.e164().to_owned(),
        );
        if let Some(business) = business {
            attributes.insert("BusinessNumber".to_owned(), business.as_str().to_owned());
        }
        attributes.insert("InitiatedBy".to_owned(), "business".to_owned());
        let token = client_token(&["outreach", &o.key]);
        let chat = NewChat {
            instance_id: &route.instance_id,
            contact_flow_id: &route.contact_flow_id,
            display_name: o.conversation.customer.e164(),
            attributes: attributes.clone(),
            client_token: token.clone(),
            continue_from: previous.as_deref(),
        };
        let started = match relay.api.start_chat(chat).await {
            Ok(s) => s,
            // Connect would not rehydrate the old contact: a fresh chat.
            Err(e) if e.kind == ErrorKind::Invalid && previous.is_some() => {
                let fresh = NewChat {
                    instance_id: &route.instance_id,
                    contact_flow_id: &route.contact_flow_id,
                    display_name: o.conversation.customer.e164(),
                    attributes,
                    client_token: format!("{token}-fresh"),
                    continue_from: None,
                };
                relay.api.start_chat(fresh).await?
            }
            Err(e) => return Err(e.into()),
        };
        match existing {
            None => {
                let mut c = Conversation::new(o.conversation.clone());
                started.record_on(&mut c);
                c.started_by = Some(o.key.clone());
                match relay.store.insert(&c).await {
                    Ok(_) | Err(StoreError::AlreadyExists) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(ended) => {
                let contact = ended.conversation.contact_id.clone();
                let key = ended.conversation.key();
                modify(&*relay.store, &key, Some(ended), Fence::None, |c| {
                    if c.state != ConversationState::Ended || c.contact_id != contact {
                        return false;
                    }
                    c.restart();
                    started.record_on(c);
                    c.started_by = Some(o.key.clone());
                    true
                })
                .await?;
            }
        }
    }
    Err(OutreachError::Unavailable(
        "the conversation record kept changing; try again".into(),
    ))
}

struct Api {
    relay: Arc<Relay>,
    fleet: Arc<Fleet>,
    token: Secret,
}

/// `POST /v1/conversations`, behind the bearer token.
pub fn router(relay: Arc<Relay>, fleet: Arc<Fleet>, token: Secret) -> Router {
    Router::new()
        .route("/v1/conversations", post(create))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(Api {
            relay,
            fleet,
            token,
        }))
}

fn refusal(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn create(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !api.token.matches(presented) {
        return refusal(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    let request: Outreach = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refusal(StatusCode::BAD_REQUEST, &format!("invalid request: {e}")),
    };
    match start(&api.relay, &api.fleet, &request).await {
        Ok(started) => {
            let status = if started.new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(started)).into_response()
        }
        Err(OutreachError::Invalid(why)) => refusal(StatusCode::BAD_REQUEST, &why),
        Err(OutreachError::Open(contact_id)) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": "the customer already has an open conversation",
                "contact_id": contact_id,
            })),
        )
            .into_response(),
        Err(OutreachError::Unavailable(why)) => refusal(StatusCode::SERVICE_UNAVAILABLE, &why),
    }
}
