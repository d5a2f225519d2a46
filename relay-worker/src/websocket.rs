//! The participant websocket protocol (docs/architecture.md §6): subscribe, heartbeat, chat frames.

use crate::item::ChatItem;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub const SUBSCRIBE: &str = r#"{"topic":"aws/subscribe","content":{"topics":["aws/chat"]}}"#;
pub const HEARTBEAT: &str = r#"{"topic":"aws/heartbeat"}"#;

#[derive(Debug)]
pub enum Frame {
    Subscribed,
    Heartbeat,
    Chat(Box<ChatItem>),
    /// Anything else worth a log line: error frames, a failed subscribe, unknown topics.
    Other(String),
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("websocket connect failed: {0}")]
    Connect(String),
    #[error("subscribe was not confirmed: {0}")]
    Subscribe(String),
}

pub fn parse(text: &str) -> Frame {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Frame::Other("unparseable frame".into());
    };
    match v.get("topic").and_then(Value::as_str) {
        Some("aws/heartbeat") => Frame::Heartbeat,
        Some("aws/subscribe")
            if v.pointer("/content/status").and_then(Value::as_str) == Some("success") =>
        {
            Frame::Subscribed
        }
        Some("aws/chat") => {
            // The item travels as a JSON string inside the frame.
            let item = v
                .get("content")
                .and_then(Value::as_str)
                .and_then(|c| serde_json::from_str::<ChatItem>(c).ok());
            match item {
                Some(item) => Frame::Chat(Box::new(item)),
                None => Frame::Other("aws/chat frame without a readable item".into()),
            }
        }
        Some(other) => Frame::Other(format!("topic {other}")),
        None => Frame::Other(
            v.get("message")
                .and_then(Value::as_str)
                .unwrap_or("topic-less frame")
                .to_owned(),
        ),
    }
}

/// The next protocol frame; transport pings are answered by tungstenite itself.
pub async fn next(socket: &mut Socket) -> Frame {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(t))) => return parse(t.as_str()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => return Frame::Other("binary frame".into()),
            Some(Ok(Message::Close(_)) | Err(_)) | None => return Frame::Closed,
        }
    }
}

/// Connect's frames are small (an item is at most a few KiB) and a worker holds thousands
/// of sockets: tungstenite's 128 KiB default read buffer would dominate its memory.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1024 * 1024))
        .max_frame_size(Some(1024 * 1024))
}

/// Connects and subscribes to `aws/chat`, waiting up to `within` for the confirmation.
/// `tls` is the relay's client configuration (the public roots and any extra CA).
pub async fn open(
    url: &str,
    within: Duration,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Result<Socket, SocketError> {
    let connect = async {
        let (mut socket, _) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            Some(config()),
            true,
            Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
        )
        .await
        .map_err(|e| SocketError::Connect(e.to_string()))?;
        socket
            .send(Message::text(SUBSCRIBE))
            .await
            .map_err(|e| SocketError::Subscribe(e.to_string()))?;
        loop {
            match next(&mut socket).await {
                Frame::Subscribed => return Ok(socket),
                Frame::Closed => return Err(SocketError::Subscribe("closed".into())),
                Frame::Other(what) => return Err(SocketError::Subscribe(what)),
                Frame::Heartbeat | Frame::Chat(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, connect)
        .await
        .unwrap_or_else(|_| Err(SocketError::Subscribe("timed out".into())))
}

pub async fn heartbeat(socket: &mut Socket) -> bool {
    socket.send(Message::text(HEARTBEAT)).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_as_connect_sends_them() {
        assert!(matches!(
            parse(
                r#"{"topic":"aws/subscribe","content":{"status":"success","topics":["aws/chat"]}}"#
            ),
            Frame::Subscribed
        ));
        assert!(matches!(
            parse(r#"{"topic":"aws/heartbeat"}"#),
            Frame::Heartbeat
        ));
        let chat = r#"{"topic":"aws/chat","contentType":"application/json","content":"{\"AbsoluteTime\":\"2026-11-24T10:00:00.000Z\",\"Content\":\"hi\",\"ContentType\":\"text/plain\",\"Id\":\"i-1\",\"Type\":\"MESSAGE\",\"ParticipantId\":\"p\",\"DisplayName\":\"Agent\",\"ParticipantRole\":\"AGENT\",\"InitialContactId\":\"c\",\"ContactId\":\"c\"}"}"#;
        match parse(chat) {
            Frame::Chat(item) => {
                assert_eq!(item.id, "i-1");
                assert_eq!(item.content.as_deref(), Some("hi"));
                assert_eq!(item.role(), "AGENT");
            }
            other => panic!("{other:?}"),
        }
        match parse(r#"{"message":"Forbidden","connectionId":"x","requestId":"y"}"#) {
            Frame::Other(m) => assert_eq!(m, "Forbidden"),
            other => panic!("{other:?}"),
        }
    }
}
