//! The sandbox page and the small JSON API behind it, which forwards to the simulators'
//! phone and agent desk and reads queue depths.

use crate::Parts;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

const PAGE: &str = include_str!("index.html");

pub(crate) fn router(parts: Arc<Parts>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/phone/send", post(phone_send))
        .route("/api/phone/inbox", get(phone_inbox))
        .route("/api/phone/read", post(phone_read))
        .route("/api/agent/chats", get(chats))
        .route("/api/agent/chats/{id}/accept", post(accept))
        .route("/api/agent/chats/{id}/messages", post(agent_send))
        .route("/api/agent/chats/{id}/end", post(end))
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

#[derive(Deserialize)]
struct PhoneText {
    from: String,
    body: String,
}

async fn phone_send(State(p): State<Arc<Parts>>, Json(t): Json<PhoneText>) -> Response {
    let sent = p.phone.text(&t.from, &t.body).await;
    answer(sent.map(|(sid, status)| json!({ "message_sid": sid, "status": status })))
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

async fn chats(State(p): State<Arc<Parts>>) -> Response {
    answer(p.desk.chats(None).await)
}

async fn accept(State(p): State<Arc<Parts>>, Path(id): Path<String>) -> Response {
    answer(p.desk.accept(&id).await.map(|()| json!({})))
}

#[derive(Deserialize)]
struct AgentText {
    content: String,
}

async fn agent_send(
    State(p): State<Arc<Parts>>,
    Path(id): Path<String>,
    Json(t): Json<AgentText>,
) -> Response {
    answer(p.desk.send(&id, &t.content).await)
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
        let queue = |s: waconnect_shared::queue::QueueStats| {
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
