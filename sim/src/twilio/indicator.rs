//! Twilio's typing indicator for WhatsApp (`POST /v2/Indicators/Typing.json` on
//! messaging.twilio.com, docs/architecture.md §10): it shows "typing…" on the customer's phone until a
//! reply lands or 25 s pass, and marks the message it names — and every earlier one —
//! read. The phone's side shows both.

use super::Twilio;
use super::api::{authorised_user, error};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use waconnect_shared::twilio::form;

/// How long WhatsApp shows the indicator without a reply.
pub const TYPING_SHOWN: Duration = Duration::from_secs(25);

pub fn routes() -> Router<Arc<Twilio>> {
    Router::new()
        .route("/v2/Indicators/Typing.json", post(typing))
        .route("/phone/written", get(written))
        .route("/sim/typing", get(typing_calls))
}

/// A message the customer wrote, as the phone shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WrittenMessage {
    pub sid: String,
    /// The business number it was written to.
    pub to: String,
    pub body: String,
    /// Blue ticks: the business marked it (or a later one) read.
    pub read: bool,
    #[serde(skip)]
    pub at: DateTime<Utc>,
}

/// One typing-indicator call Twilio accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TypingCall {
    pub message_sid: String,
    pub customer: String,
    pub at: DateTime<Utc>,
}

async fn typing(State(twilio): State<Arc<Twilio>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorised_user(&twilio, &headers) {
        return error(401, 20003, "Authenticate");
    }
    let fields = form::decode(&body).unwrap_or_default();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if field("channel") != Some("whatsapp") {
        return error(400, 20001, "channel must be whatsapp");
    }
    let Some(message_sid) = field("messageId").map(str::to_owned) else {
        return error(400, 20001, "messageId is required");
    };
    let now = twilio.now();
    let mut inner = twilio.lock();
    inner.api_calls += 1;
    let Some(customer) = inner.written_by.get(&message_sid).cloned() else {
        return error(404, 20404, "The requested resource was not found");
    };
    let written = inner.customers.entry(customer.clone()).or_default();
    let Some(position) = written.written.iter().position(|w| w.sid == message_sid) else {
        return error(404, 20404, "The requested resource was not found");
    };
    // WhatsApp takes indicators only inside the customer service window.
    if now - written.written[position].at > chrono::Duration::hours(24) {
        return error(400, 63016, "outside the allowed window");
    }
    for w in &mut written.written[..=position] {
        w.read = true;
    }
    written.typing_until = Some(Instant::now() + TYPING_SHOWN);
    inner.typing_calls.push(TypingCall {
        message_sid,
        customer,
        at: Utc::now(),
    });
    Json(serde_json::json!({ "success": true })).into_response()
}

#[derive(Deserialize)]
struct Number {
    number: String,
}

/// What the customer wrote and whether the business is typing, as the phone shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhoneChat {
    pub written: Vec<WrittenMessage>,
    pub typing: bool,
}

async fn written(State(twilio): State<Arc<Twilio>>, Query(n): Query<Number>) -> Json<PhoneChat> {
    let inner = twilio.lock();
    let customer = inner.customers.get(&n.number);
    Json(PhoneChat {
        written: customer.map(|c| c.written.clone()).unwrap_or_default(),
        typing: customer
            .and_then(|c| c.typing_until)
            .is_some_and(|t| t > Instant::now()),
    })
}

async fn typing_calls(State(twilio): State<Arc<Twilio>>) -> Json<Vec<TypingCall>> {
    Json(twilio.lock().typing_calls.clone())
}
