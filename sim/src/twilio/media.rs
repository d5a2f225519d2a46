//! Media as Twilio keeps it (docs/architecture.md §9): a customer's file is a Media resource under
//! its message, `…/Messages/{MM}/Media/{ME}`. Fetching it needs the account's Basic auth
//! and answers with a redirect to a short-lived, signed storage URL that needs none; the
//! `.json` form describes it; DELETE removes it.

use super::Twilio;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// How long a storage URL Twilio redirects to stays valid.
const STORAGE_URL_LIFE: std::time::Duration = std::time::Duration::from_secs(60);

pub struct StoredMedia {
    pub content_type: String,
    pub bytes: Bytes,
    /// The message it came with, once sent.
    pub message_sid: Option<String>,
}

pub fn routes() -> Router<Arc<Twilio>> {
    Router::new()
        // A WhatsApp document may be 100 MB.
        .route(
            "/sim/media",
            post(upload).layer(axum::extract::DefaultBodyLimit::max(100 << 20)),
        )
        .route("/sim/media-content/{token}", get(content))
        .route(
            "/2010-04-01/Accounts/{account}/Messages/{message}/Media/{file}",
            get(fetch).delete(delete),
        )
}

/// The phone side puts a file in Twilio's keeping before sending it: its `ME…` SID.
async fn upload(State(twilio): State<Arc<Twilio>>, headers: HeaderMap, bytes: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let sid = super::sid("ME");
    twilio.lock().media.insert(
        sid.clone(),
        StoredMedia {
            content_type,
            bytes,
            message_sid: None,
        },
    );
    Json(json!({ "sid": sid })).into_response()
}

/// `MediaUrl{N}` for a stored file sent with `message_sid`.
pub fn media_url(twilio: &Twilio, message_sid: &str, media_sid: &str) -> String {
    format!(
        "{}/2010-04-01/Accounts/{}/Messages/{message_sid}/Media/{media_sid}",
        twilio.base, twilio.options.account_sid
    )
}

async fn fetch(
    State(twilio): State<Arc<Twilio>>,
    Path((account, message, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if !super::api::authorised(&twilio, &account, &headers) {
        return super::api::error(401, 20003, "Authenticate");
    }
    let (sid, json) = match file.strip_suffix(".json") {
        Some(sid) => (sid.to_owned(), true),
        None => (file, false),
    };
    let mut inner = twilio.lock();
    let Some(media) = inner
        .media
        .get(&sid)
        .filter(|m| m.message_sid.as_deref() == Some(message.as_str()))
    else {
        return super::api::error(404, 20404, "The requested resource was not found");
    };
    if json {
        return Json(json!({
            "sid": sid,
            "account_sid": account,
            "parent_sid": message,
            "content_type": media.content_type,
            "uri": format!("/2010-04-01/Accounts/{account}/Messages/{message}/Media/{sid}.json"),
        }))
        .into_response();
    }
    // An unguessable name that works for a minute, as a presigned storage URL does.
    let token = uuid::Uuid::new_v4().simple().to_string();
    let now = tokio::time::Instant::now();
    inner.storage_urls.retain(|_, (_, until)| *until > now);
    inner
        .storage_urls
        .insert(token.clone(), (sid, now + STORAGE_URL_LIFE));
    let location = format!("{}/sim/media-content/{token}?Expires=60", twilio.base);
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response()
}

/// The storage URL: no auth, but it expires.
async fn content(State(twilio): State<Arc<Twilio>>, Path(token): Path<String>) -> Response {
    let inner = twilio.lock();
    let Some((sid, _)) = inner
        .storage_urls
        .get(&token)
        .filter(|(_, until)| *until > tokio::time::Instant::now())
    else {
        return (StatusCode::FORBIDDEN, "Request has expired").into_response();
    };
    match inner.media.get(sid) {
        Some(m) => (
            [
                (header::CONTENT_TYPE, m.content_type.clone()),
                (header::CONTENT_LENGTH, m.bytes.len().to_string()),
            ],
            m.bytes.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn delete(
    State(twilio): State<Arc<Twilio>>,
    Path((account, message, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if !super::api::authorised(&twilio, &account, &headers) {
        return super::api::error(401, 20003, "Authenticate");
    }
    let sid = file.strip_suffix(".json").unwrap_or(&file);
    let mut inner = twilio.lock();
    let known = inner
        .media
        .get(sid)
        .is_some_and(|m| m.message_sid.as_deref() == Some(message.as_str()));
    if !known {
        return super::api::error(404, 20404, "The requested resource was not found");
    }
    inner.media.remove(sid);
    StatusCode::NO_CONTENT.into_response()
}

/// A file Twilio fetched for a message it sends, as the customer's phone received it.
#[derive(Clone)]
pub struct Received {
    pub content_type: String,
    pub content_disposition: Option<String>,
    pub bytes: Bytes,
}

const MB: usize = 1024 * 1024;

/// What WhatsApp takes, and up to what size (docs/architecture.md §9).
fn whatsapp_limit(content_type: &str) -> Option<usize> {
    match content_type {
        "image/jpeg" | "image/png" => Some(5 * MB),
        "audio/ogg"
        | "audio/amr"
        | "audio/3gpp"
        | "audio/aac"
        | "audio/mpeg"
        | "audio/mp4"
        | "video/mp4"
        | "video/3gpp"
        | "application/pdf"
        | "application/msword"
        | "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        | "application/vnd.ms-excel"
        | "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        | "application/vnd.ms-powerpoint"
        | "application/vnd.openxmlformats-officedocument.presentationml.presentation"
        | "text/plain"
        | "text/vcard" => Some(16 * MB),
        _ => None,
    }
}

/// Fetches a sent message's `MediaUrl`s with GET, as Twilio does after taking it, and
/// keeps what the phone receives. The failure Twilio reports by status callback, if any:
/// 63019 when the fetch fails, 12300 for a type WhatsApp does not take, 11751 when too
/// large.
pub async fn fetch_outbound(twilio: &Twilio, sid: &str) -> Option<(u32, &'static str)> {
    let urls = {
        let inner = twilio.lock();
        inner.sent[inner.by_sid[sid]].media_urls.clone()
    };
    let mut received = Vec::new();
    for url in urls {
        let response = twilio
            .http
            .get(&url)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await;
        let Ok(response) = response.and_then(reqwest::Response::error_for_status) else {
            return Some((63019, "Media failed to download"));
        };
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(header::CONTENT_TYPE)
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let content_disposition = header(header::CONTENT_DISPOSITION);
        let Some(limit) = whatsapp_limit(&content_type) else {
            return Some((12300, "Invalid Content-Type"));
        };
        let Ok(bytes) = response.bytes().await else {
            return Some((63019, "Media failed to download"));
        };
        if bytes.len() > limit {
            return Some((11751, "Media exceeds messaging provider size limit"));
        }
        received.push(Received {
            content_type,
            content_disposition,
            bytes,
        });
    }
    if !received.is_empty() {
        twilio.lock().received.insert(sid.to_owned(), received);
    }
    None
}
