//! The participant websocket (docs/architecture.md §6): subscribe, heartbeat and ping replies, chat
//! items on topic `aws/chat`, topic-less error frames for anything else.

use super::Sim;
use super::model::{ChatState, SocketCommand, SocketHandle, new_id};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub async fn upgrade(
    State(sim): State<Arc<Sim>>,
    Path(url_token): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let (contact_id, socket_id, commands) = {
        let mut inner = sim.lock();
        inner.count("WebsocketConnect");
        let contact_id = match inner.ws_urls.get(&url_token) {
            Some(u) if u.expires > Instant::now() => u.contact_id.clone(),
            _ => return StatusCode::FORBIDDEN.into_response(),
        };
        let id = inner.socket_id();
        let Some(contact) = inner
            .contact_mut(&contact_id)
            .filter(|c| c.state != ChatState::Ended)
        else {
            return StatusCode::FORBIDDEN.into_response();
        };
        let (sender, commands) = mpsc::unbounded_channel();
        contact.sockets.push(SocketHandle {
            id,
            subscribed: false,
            sender,
        });
        (contact_id, id, commands)
    };
    ws.on_upgrade(move |socket| serve(sim, contact_id, socket_id, socket, commands))
}

async fn serve(
    sim: Arc<Sim>,
    contact_id: String,
    socket_id: u64,
    mut socket: WebSocket,
    mut commands: mpsc::UnboundedReceiver<SocketCommand>,
) {
    let connection_id = new_id();
    loop {
        tokio::select! {
            () = sim.stop.cancelled() => break,
            command = commands.recv() => match command {
                Some(SocketCommand::Item(content)) => {
                    let frame = json!({
                        "topic": "aws/chat",
                        "contentType": "application/json",
                        "content": content,
                    });
                    if socket.send(Message::text(frame.to_string())).await.is_err() {
                        break;
                    }
                }
                Some(SocketCommand::Close) | None => {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
            },
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => continue,
                    _ => break,
                };
                let reply = answer(&sim, &contact_id, socket_id, &connection_id, text.as_str());
                if let Some(reply) = reply
                    && socket.send(Message::text(reply.to_string())).await.is_err()
                {
                    break;
                }
            }
        }
    }
    if let Some(c) = sim.lock().contacts.get_mut(&contact_id) {
        c.sockets.retain(|s| s.id != socket_id);
    }
}

fn answer(
    sim: &Sim,
    contact_id: &str,
    socket_id: u64,
    connection_id: &str,
    text: &str,
) -> Option<Value> {
    let frame: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let mut inner = sim.lock();
    match frame.get("topic").and_then(Value::as_str) {
        Some("aws/subscribe")
            if frame
                .pointer("/content/topics")
                .and_then(Value::as_array)
                .is_some_and(|t| t.iter().any(|t| t == "aws/chat")) =>
        {
            if let Some(s) = inner
                .contacts
                .get_mut(contact_id)
                .and_then(|c| c.sockets.iter_mut().find(|s| s.id == socket_id))
            {
                s.subscribed = true;
            }
            Some(json!({
                "topic": "aws/subscribe",
                "content": { "status": "success", "topics": ["aws/chat"] },
            }))
        }
        Some("aws/heartbeat") => {
            inner.count("Heartbeat");
            (!inner.faults.silent_heartbeats).then(|| json!({ "topic": "aws/heartbeat" }))
        }
        Some("aws/ping") => Some(json!({
            "topic": "aws/ping",
            "statusCode": 200,
            "statusContent": "OK",
        })),
        _ => Some(json!({
            "message": "Forbidden",
            "connectionId": connection_id,
            "requestId": new_id(),
        })),
    }
}
