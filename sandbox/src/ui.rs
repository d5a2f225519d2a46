//! The sandbox page and the small JSON API behind it, which forwards to the simulators'
//! phone and agent desk and reads queue depths.

use crate::Parts;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use waconnect_sim::twilio::{CustomerMessage, Location};

const PAGE: &str = include_str!("index.html");

pub(crate) fn router(parts: Arc<Parts>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/businesses", get(businesses))
        .route("/api/phone/send", post(phone_send))
        .route("/api/phone/inbox", get(phone_inbox))
        .route("/api/phone/read", post(phone_read))
        .route("/api/phone/chat", get(phone_chat))
        .route("/api/phone/tap", post(phone_tap))
        .route(
            "/api/phone/file",
            post(phone_file).layer(axum::extract::DefaultBodyLimit::max(32 << 20)),
        )
        .route("/api/phone/voice-note", post(phone_voice_note))
        .route("/api/phone/location", post(phone_location))
        .route("/api/phone/media/{sid}/{n}", get(phone_media))
        .route(
            "/api/agent/chats/{id}/files",
            post(agent_file).layer(axum::extract::DefaultBodyLimit::max(32 << 20)),
        )
        .route("/api/agent/attachments/{id}", get(agent_attachment))
        .route("/api/agent/chats", get(chats))
        .route("/api/agent/start", post(agent_start))
        .route("/api/agent/chats/{id}/accept", post(accept))
        .route("/api/agent/chats/{id}/messages", post(agent_send))
        .route("/api/agent/chats/{id}/end", post(end))
        .route("/api/agent/chats/{id}/typing", post(agent_typing))
        .route("/api/agent/chats/{id}/read", post(agent_read))
        .route("/api/agent/chats/{id}/transcript", get(transcript))
        .route("/api/stats", get(stats))
        .with_state(parts)
}

fn answer<T: serde::Serialize>(r: anyhow::Result<T>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({ "message": e.to_string() })),
        )
            .into_response(),
    }
}

/// The business numbers the phone can write to, by name.
async fn businesses() -> Response {
    let list: Vec<_> = crate::BUSINESSES
        .iter()
        .map(|(name, number)| json!({ "name": name, "number": number }))
        .collect();
    Json(list).into_response()
}

#[derive(Deserialize)]
struct PhoneText {
    from: String,
    /// The business number written to (the phone's chat with it).
    #[serde(default)]
    to: Option<String>,
    body: String,
    /// The message this one replies to (swipe-to-reply).
    #[serde(default)]
    reply_to: Option<String>,
}

async fn phone_send(State(p): State<Arc<Parts>>, Json(t): Json<PhoneText>) -> Response {
    let message = CustomerMessage {
        from: t.from,
        to: t.to,
        body: t.body,
        reply_to: t.reply_to,
        ..Default::default()
    };
    let sent = p.phone.send(&message).await;
    answer(sent.map(|(sid, status)| json!({ "message_sid": sid, "status": status })))
}

#[derive(Deserialize)]
struct FileQuery {
    from: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    caption: String,
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .unwrap_or("application/octet-stream")
        .to_owned()
}

/// The customer attaches a file (the page posts its bytes, typed).
async fn phone_file(
    State(p): State<Arc<Parts>>,
    Query(q): Query<FileQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let sent = p
        .phone
        .send_file_to(
            &q.from,
            q.to.as_deref(),
            bytes.to_vec(),
            &content_type(&headers),
            &q.caption,
        )
        .await;
    answer(sent.map(|(sid, status)| json!({ "message_sid": sid, "status": status })))
}

#[derive(Deserialize)]
struct From {
    from: String,
    #[serde(default)]
    to: Option<String>,
}

/// The customer records a voice note: two seconds of a tone, as WhatsApp records them
/// (Opus in Ogg), made with ffmpeg.
async fn phone_voice_note(State(p): State<Arc<Parts>>, Json(f): Json<From>) -> Response {
    let recorded = async {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("voice.ogg");
        let status = tokio::process::Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg("sine=frequency=520:duration=2")
            .args(["-c:a", "libopus", "-b:a", "24k"])
            .arg(&path)
            .status()
            .await?;
        anyhow::ensure!(status.success(), "ffmpeg could not record a voice note");
        let bytes = tokio::fs::read(&path).await?;
        p.phone
            .send_file_to(
                &f.from,
                f.to.as_deref(),
                bytes,
                "audio/ogg; codecs=opus",
                "",
            )
            .await
    }
    .await;
    answer(recorded.map(|(sid, status)| json!({ "message_sid": sid, "status": status })))
}

#[derive(Deserialize)]
struct Place {
    from: String,
    #[serde(default)]
    to: Option<String>,
    latitude: f64,
    longitude: f64,
    label: Option<String>,
    address: Option<String>,
}

async fn phone_location(State(p): State<Arc<Parts>>, Json(l): Json<Place>) -> Response {
    let sent = p
        .phone
        .send(&CustomerMessage {
            from: l.from,
            to: l.to,
            location: Some(Location {
                latitude: l.latitude,
                longitude: l.longitude,
                label: l.label,
                address: l.address,
            }),
            ..Default::default()
        })
        .await;
    answer(sent.map(|(sid, status)| json!({ "message_sid": sid, "status": status })))
}

/// A file the phone received, for the page to show.
async fn phone_media(
    State(p): State<Arc<Parts>>,
    Path((sid, n)): Path<(String, usize)>,
) -> Response {
    match p.phone.received_file(&sid, n).await {
        Ok((content_type, disposition, bytes)) => {
            let mut response = ([(header::CONTENT_TYPE, content_type)], bytes).into_response();
            if let Some(d) = disposition.and_then(|d| d.parse().ok()) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, d);
            }
            response
        }
        Err(e) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

/// The agent attaches a file.
async fn agent_file(
    State(p): State<Arc<Parts>>,
    Path(id): Path<String>,
    Query(n): Query<Named>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let sent = p
        .desk
        .send_file(
            &id,
            &n.name,
            &content_type(&headers),
            bytes.to_vec(),
            "APPROVED",
        )
        .await;
    answer(sent)
}

/// A file in a chat, for the desk to show.
async fn agent_attachment(State(p): State<Arc<Parts>>, Path(id): Path<String>) -> Response {
    match p.desk.attachment(&id).await {
        Ok((content_type, bytes)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        Err(e) => (StatusCode::NOT_FOUND, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct Number {
    number: String,
}

async fn phone_inbox(State(p): State<Arc<Parts>>, Query(n): Query<Number>) -> Response {
    answer(p.phone.inbox(&n.number).await)
}

async fn phone_read(State(p): State<Arc<Parts>>, Json(n): Json<Number>) -> Response {
    answer(p.phone.read_all(&n.number).await.map(|()| json!({})))
}

#[derive(Deserialize)]
struct Tap {
    number: String,
    sid: String,
    choice: usize,
}

/// The customer taps a choice of a list or buttons the business sent.
async fn phone_tap(State(p): State<Arc<Parts>>, Json(t): Json<Tap>) -> Response {
    let sent = p.phone.tap(&t.number, &t.sid, t.choice).await;
    answer(sent.map(|(sid, status)| json!({ "message_sid": sid, "status": status })))
}

/// What the customer wrote, with blue ticks, and whether the business is typing.
async fn phone_chat(State(p): State<Arc<Parts>>, Query(n): Query<Number>) -> Response {
    answer(p.phone.chat(&n.number).await)
}

async fn agent_typing(State(p): State<Arc<Parts>>, Path(id): Path<String>) -> Response {
    answer(p.desk.typing(&id).await)
}

#[derive(Deserialize)]
struct Read {
    message_id: String,
}

/// The agent has read the customer's message (the desk sends it for the open chat).
async fn agent_read(
    State(p): State<Arc<Parts>>,
    Path(id): Path<String>,
    Json(r): Json<Read>,
) -> Response {
    answer(p.desk.read(&id, &r.message_id).await)
}

#[derive(Deserialize)]
struct Start {
    customer: String,
    name: String,
    /// Which business writes (its number); the default route's when absent.
    #[serde(default)]
    business: Option<String>,
}

/// The agent starts a conversation: the sandbox's template, through the relay's API, as
/// a CRM or a script would call it.
async fn agent_start(State(p): State<Arc<Parts>>, Json(s): Json<Start>) -> Response {
    let request = json!({
        "customer": s.customer,
        "content_sid": crate::TEMPLATE,
        "variables": { "1": s.name },
        "key": uuid::Uuid::new_v4().simple().to_string(),
        "business": s.business,
    });
    let sent = async {
        let r = reqwest::Client::new()
            .post(&p.outreach_url)
            .bearer_auth(&p.outreach_token)
            .json(&request)
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await?;
        let status = r.status().as_u16();
        anyhow::Ok(json!({ "status": status, "answer": r.json::<serde_json::Value>().await.unwrap_or_default() }))
    }
    .await;
    answer(sent)
}

async fn chats(State(p): State<Arc<Parts>>) -> Response {
    answer(p.desk.chats(None).await)
}

async fn accept(State(p): State<Arc<Parts>>, Path(id): Path<String>) -> Response {
    answer(p.desk.accept(&id).await.map(|()| json!({})))
}

#[derive(Deserialize)]
struct AgentText {
    content: String,
    /// `text/plain` unless said: `text/markdown`, or an interactive message.
    #[serde(default)]
    content_type: Option<String>,
    /// `AGENT` unless said: a flow's message is `SYSTEM`'s.
    #[serde(default)]
    role: Option<String>,
}

async fn agent_send(
    State(p): State<Arc<Parts>>,
    Path(id): Path<String>,
    Json(t): Json<AgentText>,
) -> Response {
    let role = t.role.as_deref().unwrap_or("AGENT");
    let content_type = t.content_type.as_deref().unwrap_or("text/plain");
    answer(
        p.desk
            .send_content(&id, role, content_type, &t.content)
            .await,
    )
}

async fn end(State(p): State<Arc<Parts>>, Path(id): Path<String>) -> Response {
    answer(p.desk.end(&id).await.map(|()| json!({})))
}

async fn transcript(State(p): State<Arc<Parts>>, Path(id): Path<String>) -> Response {
    answer(p.desk.transcript(&id).await)
}

async fn stats(State(p): State<Arc<Parts>>) -> Response {
    let result = async {
        let inbound = p.inbound.stats().await?;
        let outbound = p.outbound.stats().await?;
        let chats = p.desk.chats(None).await?;
        let count = |state: &str| chats.iter().filter(|c| c.state == state).count();
        let queue = |s: waconnect_shared::storage::queue::QueueStats| {
            json!({ "visible": s.visible, "in_flight": s.in_flight, "delayed": s.delayed, "dead_letters": s.dead_letters })
        };
        anyhow::Ok(json!({
            "queues": { "inbound": queue(inbound), "outbound": queue(outbound) },
            "chats": { "waiting": count("waiting"), "active": count("active"), "ended": count("ended") },
        }))
    }
    .await;
    answer(result)
}
