//! The agent's side of the simulated Connect, and fault injection, over plain JSON HTTP:
//! what tests and the sandbox's agent desk drive.

use super::Sim;
use super::faults::Budget;
use super::model::{ChatState, new_id};
use super::wire::Item;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

pub fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/agent/chats", get(list_chats))
        .route("/agent/chats/{id}/accept", post(accept))
        .route("/agent/chats/{id}/messages", post(send_text))
        .route(
            "/agent/chats/{id}/files",
            post(send_file).layer(axum::extract::DefaultBodyLimit::max(100 << 20)),
        )
        .route("/agent/chats/{id}/typing", post(typing))
        .route("/agent/chats/{id}/read", post(read))
        .route("/agent/chats/{id}/supervise", post(supervise))
        .route("/agent/chats/{id}/end", post(end))
        .route("/agent/chats/{id}/transcript", get(transcript))
        .route("/agent/chats/{id}/events", get(customer_events))
        .route("/agent/calls", get(calls))
        .route("/sim/stats", get(stats))
        .route("/faults/throttle", post(throttle))
        .route("/faults/error", post(errors))
        .route("/faults/delay", post(delay))
        .route("/faults/heartbeats", post(heartbeats))
        .route("/faults/drop-sockets", post(drop_sockets))
        .route("/faults/expire-tokens", post(expire_tokens))
        .route("/faults/reject", post(reject))
        .route("/faults/clear", post(clear))
}

/// One chat as the agent desk lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatSummary {
    pub contact_id: String,
    pub initial_contact_id: String,
    pub continued_from: Option<String>,
    pub contact_flow_id: String,
    pub display_name: String,
    pub attributes: Map<String, Value>,
    pub state: String,
    pub messages: usize,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub sockets: usize,
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
}

async fn list_chats(
    State(sim): State<Arc<Sim>>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<ChatSummary>> {
    let mut inner = sim.lock();
    let ids = inner.order.clone();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(c) = inner.contact_mut(&id) else {
            continue;
        };
        let state = serde_json::to_value(c.state).expect("state serialises");
        let state = state.as_str().unwrap_or_default().to_owned();
        if q.state.as_ref().is_some_and(|s| *s != state) {
            continue;
        }
        out.push(ChatSummary {
            contact_id: c.contact_id.clone(),
            initial_contact_id: c.initial_contact_id.clone(),
            continued_from: c.continued_from.clone(),
            contact_flow_id: c.flow_id.clone(),
            display_name: c.display_name.clone(),
            attributes: c.attributes.clone(),
            state,
            created_at: c.created_at,
            messages: c.transcript.iter().filter(|i| i.kind == "MESSAGE").count(),
            sockets: c.sockets.iter().filter(|s| s.subscribed).count(),
        });
    }
    Json(out)
}

fn refused(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// Runs `f` on a chat that is not over, or answers 404 / 409.
fn live_chat(sim: &Sim, id: &str, f: impl FnOnce(&mut super::model::Inner) -> Value) -> Response {
    let mut inner = sim.lock();
    match inner.contact_mut(id).map(|c| c.state) {
        None => refused(StatusCode::NOT_FOUND, "no such chat"),
        Some(ChatState::Ended) => refused(StatusCode::CONFLICT, "the chat has ended"),
        Some(_) => Json(f(&mut inner)).into_response(),
    }
}

async fn accept(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    live_chat(&sim, &id, |inner| {
        if inner.contacts[&id].state == ChatState::Waiting {
            inner.event(&id, "participant.joined", Some("AGENT"));
            inner.contacts.get_mut(&id).expect("live").state = ChatState::Active;
        }
        json!({ "accepted": true })
    })
}

#[derive(Deserialize)]
struct Text {
    content: String,
    #[serde(default)]
    content_type: Option<String>,
    /// Who writes: AGENT (default), SYSTEM or CUSTOM_BOT.
    #[serde(default)]
    role: Option<String>,
}

async fn send_text(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Json(t): Json<Text>,
) -> Response {
    let role = t.role.unwrap_or_else(|| "AGENT".into());
    let content_type = t.content_type.unwrap_or_else(|| "text/plain".into());
    {
        let inner = sim.lock();
        if let Some(c) = inner.contacts.get(&id)
            && !c.supported.contains(&content_type)
        {
            return refused(
                StatusCode::BAD_REQUEST,
                &format!("the customer's side of this chat does not take {content_type}"),
            );
        }
    }
    if !matches!(
        role.as_str(),
        "AGENT" | "SYSTEM" | "CUSTOM_BOT" | "SUPERVISOR"
    ) {
        return refused(StatusCode::BAD_REQUEST, "unknown role");
    }
    live_chat(&sim, &id, |inner| {
        let c = &inner.contacts[&id];
        let (participant_id, name) = match role.as_str() {
            "AGENT" | "SUPERVISOR" => (
                Some(c.agent_participant_id.clone()),
                Some("Agent".to_owned()),
            ),
            "CUSTOM_BOT" => (Some(new_id()), Some("Bot".to_owned())),
            _ => (None, Some("SYSTEM_MESSAGE".to_owned())),
        };
        let item = Item {
            id: new_id(),
            kind: "MESSAGE".into(),
            content_type,
            content: Some(t.content),
            participant_id,
            display_name: name,
            participant_role: Some(role),
            ..Item::default()
        };
        serde_json::to_value(inner.append(&id, item)).expect("item serialises")
    })
}

#[derive(Deserialize)]
struct FileQuery {
    name: String,
    /// What Connect's scanning makes of it: `APPROVED` (the default) or `REJECTED`.
    #[serde(default)]
    status: Option<String>,
    /// With attachment scanning on: the item says `IN_PROGRESS` first, and a later item
    /// carries the verdict this many milliseconds after.
    #[serde(default)]
    scan_ms: Option<u64>,
    /// Or scanning ends at this Unix time in milliseconds: a bench approves a burst of
    /// files at one instant, however long each took to upload.
    #[serde(default)]
    scan_until_ms: Option<u64>,
}

/// An agent's file, as the items that show it say.
struct FileItem {
    contact_id: String,
    attachment_id: String,
    name: String,
    content_type: String,
}

impl FileItem {
    fn item(&self, inner: &mut super::model::Inner, status: &str) -> Item {
        let c = &inner.contacts[&self.contact_id];
        Item {
            id: new_id(),
            kind: "ATTACHMENT".into(),
            content_type: self.content_type.clone(),
            participant_id: Some(c.agent_participant_id.clone()),
            display_name: Some("Agent".to_owned()),
            participant_role: Some("AGENT".into()),
            attachments: vec![super::wire::AttachmentItem {
                content_type: self.content_type.clone(),
                attachment_id: self.attachment_id.clone(),
                attachment_name: self.name.clone(),
                status: status.to_owned(),
            }],
            ..Item::default()
        }
    }
}

/// The agent attaches a file: the chat gets an `ATTACHMENT` item from the agent, and the
/// file is what GetAttachment serves.
async fn send_file(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(q): Query<FileQuery>,
    headers: axum::http::HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let verdict = q.status.unwrap_or_else(|| "APPROVED".into());
    let scan_ms = q.scan_ms.or_else(|| {
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        q.scan_until_ms.map(|until| until.saturating_sub(now))
    });
    let first = if scan_ms.is_some() {
        "IN_PROGRESS".to_owned()
    } else {
        verdict.clone()
    };
    let attachment_id = new_id();
    let file = FileItem {
        contact_id: id.clone(),
        attachment_id: attachment_id.clone(),
        name: q.name.clone(),
        content_type: content_type.clone(),
    };
    let answer = live_chat(&sim, &id, |inner| {
        inner.attachments.insert(
            attachment_id.clone(),
            super::model::Attachment {
                contact_id: id.clone(),
                name: q.name.clone(),
                content_type: content_type.clone(),
                size: bytes.len() as u64,
                bytes: Some(bytes.clone()),
                completed: first == "APPROVED",
                headers: Vec::new(),
                url_expires: tokio::time::Instant::now(),
            },
        );
        let first_item = file.item(inner, &first);
        serde_json::to_value(inner.append(&id, first_item)).expect("item serialises")
    });
    if let Some(ms) = scan_ms {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let mut inner = sim.lock();
            if inner.contact_mut(&id).is_none() {
                return;
            }
            if let Some(a) = inner.attachments.get_mut(&attachment_id) {
                a.completed = verdict == "APPROVED";
            }
            let later = file.item(&mut inner, &verdict);
            inner.append(&id, later);
        });
    }
    answer
}

async fn typing(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    live_chat(&sim, &id, |inner| {
        serde_json::to_value(inner.event(&id, "typing", Some("AGENT"))).expect("item serialises")
    })
}

#[derive(Deserialize)]
struct Read {
    message_id: String,
}

/// The agent has read the customer's message: Connect's agent client sends the receipt.
async fn read(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Json(r): Json<Read>,
) -> Response {
    live_chat(&sim, &id, |inner| {
        let agent = inner.contacts[&id].agent_participant_id.clone();
        serde_json::to_value(inner.receipt(&id, &r.message_id, &agent, true))
            .expect("item serialises")
    })
}

/// A supervisor joins the chat (silently monitoring): three participants.
async fn supervise(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    live_chat(&sim, &id, |inner| {
        inner.contacts.get_mut(&id).expect("live").supervised = true;
        serde_json::to_value(inner.event(&id, "participant.joined", Some("SUPERVISOR")))
            .expect("item serialises")
    })
}

async fn end(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    live_chat(&sim, &id, |inner| json!({ "ended": inner.end_chat(&id) }))
}

async fn transcript(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    let inner = sim.lock();
    match inner.contacts.get(&id) {
        Some(c) => Json(c.transcript.clone()).into_response(),
        None => refused(StatusCode::NOT_FOUND, "no such chat"),
    }
}

async fn customer_events(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    let inner = sim.lock();
    match inner.contacts.get(&id) {
        Some(c) => Json(c.customer_events.clone()).into_response(),
        None => refused(StatusCode::NOT_FOUND, "no such chat"),
    }
}

async fn calls(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(serde_json::to_value(&sim.lock().calls).expect("calls serialise"))
}

async fn stats(State(sim): State<Arc<Sim>>) -> Json<Value> {
    let inner = sim.lock();
    let sockets: usize = inner
        .contacts
        .values()
        .map(|c| c.sockets.iter().filter(|s| s.subscribed).count())
        .sum();
    Json(json!({
        "operations": inner.operations,
        "contacts": inner.contacts.len(),
        "sockets": sockets,
        "calls": inner.calls.len(),
    }))
}

async fn throttle(State(sim): State<Arc<Sim>>, Json(b): Json<Budget>) -> StatusCode {
    sim.lock().faults.throttle = b;
    StatusCode::NO_CONTENT
}

async fn errors(State(sim): State<Arc<Sim>>, Json(b): Json<Budget>) -> StatusCode {
    sim.lock().faults.errors = b;
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Delay {
    millis: u64,
}

async fn delay(State(sim): State<Arc<Sim>>, Json(d): Json<Delay>) -> StatusCode {
    sim.lock().faults.delay = Duration::from_millis(d.millis);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Heartbeats {
    answer: bool,
}

async fn heartbeats(State(sim): State<Arc<Sim>>, Json(h): Json<Heartbeats>) -> StatusCode {
    sim.lock().faults.silent_heartbeats = !h.answer;
    StatusCode::NO_CONTENT
}

#[derive(Deserialize, Default)]
struct Target {
    #[serde(default)]
    contact_id: Option<String>,
}

async fn drop_sockets(State(sim): State<Arc<Sim>>, Json(t): Json<Target>) -> Json<Value> {
    let mut inner = sim.lock();
    let mut dropped = 0;
    for c in inner.contacts.values_mut() {
        if t.contact_id.as_ref().is_some_and(|id| *id != c.contact_id) {
            continue;
        }
        for s in c.sockets.drain(..) {
            dropped += usize::from(s.sender.send(super::model::SocketCommand::Close).is_ok());
        }
    }
    Json(json!({ "dropped": dropped }))
}

/// Expires connection tokens now: REST calls with them are refused until the holder
/// creates a new connection.
async fn expire_tokens(State(sim): State<Arc<Sim>>, Json(t): Json<Target>) -> Json<Value> {
    let mut inner = sim.lock();
    let now = tokio::time::Instant::now();
    let mut expired = 0;
    for c in inner.connections.values_mut() {
        if t.contact_id.as_ref().is_none_or(|id| *id == c.contact_id) && c.expires > now {
            c.expires = now;
            expired += 1;
        }
    }
    Json(json!({ "expired": expired }))
}

#[derive(Deserialize)]
struct Reject {
    contains: Option<String>,
}

async fn reject(State(sim): State<Arc<Sim>>, Json(r): Json<Reject>) -> StatusCode {
    sim.lock().faults.reject_containing = r.contains;
    StatusCode::NO_CONTENT
}

async fn clear(State(sim): State<Arc<Sim>>) -> StatusCode {
    sim.lock().faults = Default::default();
    StatusCode::NO_CONTENT
}
