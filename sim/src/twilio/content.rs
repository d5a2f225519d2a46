//! Twilio's Content API (`POST /v1/Content` on content.twilio.com), for the content types
//! a WhatsApp menu uses: `twilio/list-picker` and `twilio/quick-reply` (session-only: they
//! fail with 63016 outside the 24 h window, like free-form text) with `twilio/text`. Their
//! limits are enforced as Twilio states them; a message sent with one shows its choices
//! on the phone, which can tap one.

use super::Twilio;
use super::api::{authorised_user, error};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;

pub fn routes() -> axum::Router<Arc<Twilio>> {
    axum::Router::new()
        .route("/v1/Content", post(create))
        .route("/v1/Content/{sid}", axum::routing::get(fetch))
}

/// A template's body with its variables filled in, as WhatsApp shows it.
pub fn render(body: &str, variables: Option<&str>) -> String {
    let vars: std::collections::HashMap<String, String> = variables
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let mut text = body.to_owned();
    for (k, v) in vars {
        text = text.replace(&format!("{{{{{k}}}}}"), &v);
    }
    text
}

/// `GET /v1/Content/{sid}`: a content made through the API, or an approved template.
async fn fetch(
    State(twilio): State<Arc<Twilio>>,
    axum::extract::Path(sid): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorised_user(&twilio, &headers) {
        return error(401, 20003, "Authenticate");
    }
    let body = match twilio.options.templates.iter().find(|(s, _)| *s == sid) {
        Some((_, body)) => Some(body.clone()),
        None => twilio.lock().contents.get(&sid).map(|c| c.body.clone()),
    };
    match body {
        Some(body) => Json(json!({
            "sid": sid,
            "account_sid": twilio.options.account_sid,
            "types": { "twilio/text": { "body": body } },
        }))
        .into_response(),
        None => error(404, 20404, "The requested resource was not found"),
    }
}

/// A choice the phone shows under a message: its id (what a tap sends as ButtonPayload)
/// and its title (ButtonText).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShownChoice {
    pub id: String,
    pub title: String,
}

/// A content made through the API.
#[derive(Debug, Clone)]
pub struct Content {
    pub body: String,
    pub choices: Vec<ShownChoice>,
    /// Only inside the 24 h window (list pickers, quick replies).
    pub session_only: bool,
}

fn chars(v: &Value, key: &str) -> usize {
    v.get(key)
        .and_then(Value::as_str)
        .map_or(0, |s| s.chars().count())
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The content a definition makes, or what Twilio says is wrong with it.
fn read(types: &Value) -> Result<Content, String> {
    if let Some(list) = types.get("twilio/list-picker") {
        let items = list
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !(1..=10).contains(&items.len()) {
            return Err("twilio/list-picker needs 1 to 10 items".into());
        }
        if chars(list, "button") == 0 || chars(list, "button") > 20 {
            return Err("twilio/list-picker button must be 1 to 20 characters".into());
        }
        for item in &items {
            if chars(item, "item") == 0 || chars(item, "item") > 24 {
                return Err("list item must be 1 to 24 characters".into());
            }
            if chars(item, "id") == 0 || chars(item, "id") > 200 {
                return Err("list item id must be 1 to 200 characters".into());
            }
            if chars(item, "description") > 72 {
                return Err("list item description must be at most 72 characters".into());
            }
        }
        if chars(list, "body") == 0 || chars(list, "body") > 1024 {
            return Err("body must be 1 to 1024 characters".into());
        }
        return Ok(Content {
            body: text(list, "body"),
            choices: items
                .iter()
                .map(|i| ShownChoice {
                    id: text(i, "id"),
                    title: text(i, "item"),
                })
                .collect(),
            session_only: true,
        });
    }
    if let Some(quick) = types.get("twilio/quick-reply") {
        let actions = quick
            .get("actions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // WhatsApp shows at most three quick replies.
        if !(1..=3).contains(&actions.len()) {
            return Err("twilio/quick-reply on WhatsApp needs 1 to 3 actions".into());
        }
        for a in &actions {
            if chars(a, "title") == 0 || chars(a, "title") > 20 {
                return Err("quick reply title must be 1 to 20 characters".into());
            }
            if chars(a, "id") == 0 || chars(a, "id") > 200 {
                return Err("quick reply id must be 1 to 200 characters".into());
            }
        }
        if chars(quick, "body") == 0 || chars(quick, "body") > 1024 {
            return Err("body must be 1 to 1024 characters".into());
        }
        return Ok(Content {
            body: text(quick, "body"),
            choices: actions
                .iter()
                .map(|a| ShownChoice {
                    id: text(a, "id"),
                    title: text(a, "title"),
                })
                .collect(),
            session_only: true,
        });
    }
    match types.get("twilio/text") {
        Some(t) if chars(t, "body") > 0 => Ok(Content {
            body: text(t, "body"),
            choices: Vec::new(),
            session_only: true,
        }),
        _ => Err("no content type this simulator knows".into()),
    }
}

async fn create(State(twilio): State<Arc<Twilio>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorised_user(&twilio, &headers) {
        return error(401, 20003, "Authenticate");
    }
    let Ok(definition) = serde_json::from_slice::<Value>(&body) else {
        return error(400, 20001, "Invalid JSON");
    };
    if chars(&definition, "friendly_name") == 0 || chars(&definition, "language") == 0 {
        return error(400, 20001, "friendly_name and language are required");
    }
    let content = match read(definition.get("types").unwrap_or(&Value::Null)) {
        Ok(c) => c,
        Err(why) => return error(400, 20001, &why),
    };
    let sid = super::sid("HX");
    let mut inner = twilio.lock();
    inner.api_calls += 1;
    inner.contents.insert(sid.clone(), content);
    (
        StatusCode::CREATED,
        Json(json!({
            "sid": sid,
            "account_sid": twilio.options.account_sid,
            "friendly_name": definition["friendly_name"],
            "language": definition["language"],
            "types": definition["types"],
        })),
    )
        .into_response()
}
