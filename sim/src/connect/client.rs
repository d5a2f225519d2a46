//! A client for the simulator's agent desk and fault injection, for tests and the sandbox.

use super::desk::ChatSummary;
use super::wire::{AttachmentItem, Item};
use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// When Connect's attachment scanning gives its verdict on an agent's file.
#[derive(Clone, Copy, Debug)]
pub enum Scan {
    /// This long after the file is taken.
    After(Duration),
    /// At this instant (wall clock): files uploaded one after another are judged at once.
    Until(std::time::SystemTime),
}

#[derive(Clone)]
pub struct DeskClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SimStats {
    pub operations: BTreeMap<String, u64>,
    pub contacts: usize,
    /// Subscribed participant websockets open now.
    pub sockets: usize,
    pub calls: usize,
}

impl SimStats {
    pub fn calls_to(&self, operation: &str) -> u64 {
        self.operations.get(operation).copied().unwrap_or(0)
    }
}

impl DeskClient {
    pub fn new(base: String) -> Self {
        Self {
            http: crate::tls::client_for(&base),
            base,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "{path}: {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(serde_json::from_value(Value::Null)?);
        }
        Ok(response.json().await?)
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> anyhow::Result<T> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Chats, oldest first; `state` is waiting, active or ended.
    pub async fn chats(&self, state: Option<&str>) -> anyhow::Result<Vec<ChatSummary>> {
        match state {
            Some(s) => self.get(&format!("/agent/chats?state={s}")).await,
            None => self.get("/agent/chats").await,
        }
    }

    pub async fn accept(&self, contact_id: &str) -> anyhow::Result<()> {
        self.post::<Value>(&format!("/agent/chats/{contact_id}/accept"), json!({}))
            .await
            .map(drop)
    }

    pub async fn send(&self, contact_id: &str, content: &str) -> anyhow::Result<Item> {
        self.send_as(contact_id, "AGENT", content).await
    }

    /// A message of any content type (Markdown, an interactive message) as `role`.
    pub async fn send_content(
        &self,
        contact_id: &str,
        role: &str,
        content_type: &str,
        content: &str,
    ) -> anyhow::Result<Item> {
        self.post(
            &format!("/agent/chats/{contact_id}/messages"),
            json!({ "content": content, "role": role, "content_type": content_type }),
        )
        .await
    }

    pub async fn send_as(
        &self,
        contact_id: &str,
        role: &str,
        content: &str,
    ) -> anyhow::Result<Item> {
        self.post(
            &format!("/agent/chats/{contact_id}/messages"),
            json!({ "content": content, "role": role }),
        )
        .await
    }

    /// An attachment of a chat, as the agent's desk opens it: its type and bytes.
    pub async fn attachment(&self, attachment_id: &str) -> anyhow::Result<(String, Vec<u8>)> {
        let response = self
            .http
            .get(format!("{}/attachments/{attachment_id}", self.base))
            .send()
            .await?
            .error_for_status()?;
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        Ok((content_type, response.bytes().await?.to_vec()))
    }

    /// The agent attaches a file; `status` is what scanning makes of it (`APPROVED`).
    pub async fn send_file(
        &self,
        contact_id: &str,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
        status: &str,
    ) -> anyhow::Result<Item> {
        self.send_scanned_file(contact_id, name, content_type, bytes, status, None)
            .await
    }

    /// As [`Self::send_file`], with scanning: the item says `IN_PROGRESS`, and a later one
    /// carries `status` when `scan` says (never, if that is very late).
    pub async fn send_scanned_file(
        &self,
        contact_id: &str,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
        status: &str,
        scan: Option<Scan>,
    ) -> anyhow::Result<Item> {
        let mut query = vec![("name", name.to_owned()), ("status", status.to_owned())];
        query.extend(scan.map(|scan| match scan {
            Scan::After(after) => ("scan_ms", after.as_millis().to_string()),
            Scan::Until(at) => {
                let epoch = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                ("scan_until_ms", epoch.as_millis().to_string())
            }
        }));
        let response = self
            .http
            .post(format!("{}/agent/chats/{contact_id}/files", self.base))
            .query(&query)
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("sending a file: {}", response.status());
        }
        Ok(response.json().await?)
    }

    pub async fn typing(&self, contact_id: &str) -> anyhow::Result<Item> {
        self.post(&format!("/agent/chats/{contact_id}/typing"), json!({}))
            .await
    }

    /// The agent reads the customer's message `message_id` (a read receipt).
    pub async fn read(&self, contact_id: &str, message_id: &str) -> anyhow::Result<Item> {
        self.post(
            &format!("/agent/chats/{contact_id}/read"),
            json!({ "message_id": message_id }),
        )
        .await
    }

    /// A supervisor joins the chat.
    pub async fn supervise(&self, contact_id: &str) -> anyhow::Result<Item> {
        self.post(&format!("/agent/chats/{contact_id}/supervise"), json!({}))
            .await
    }

    /// Receipts the customer's side gave for the agent's messages: message id → (delivered,
    /// read), from the transcript.
    pub async fn customer_receipts(
        &self,
        contact_id: &str,
    ) -> anyhow::Result<std::collections::HashMap<String, (bool, bool)>> {
        let items = self.transcript(contact_id).await?;
        Ok(items
            .into_iter()
            .filter(|i| i.participant_role.as_deref() != Some("CUSTOMER"))
            .filter_map(|i| {
                let receipt = i.message_metadata?.receipts.into_iter().next()?;
                Some((
                    i.id,
                    (
                        receipt.delivered_timestamp.is_some(),
                        receipt.read_timestamp.is_some(),
                    ),
                ))
            })
            .collect())
    }

    pub async fn end(&self, contact_id: &str) -> anyhow::Result<()> {
        self.post::<Value>(&format!("/agent/chats/{contact_id}/end"), json!({}))
            .await
            .map(drop)
    }

    pub async fn transcript(&self, contact_id: &str) -> anyhow::Result<Vec<Item>> {
        self.get(&format!("/agent/chats/{contact_id}/transcript"))
            .await
    }

    /// The customer's messages in a chat, in order.
    pub async fn customer_texts(&self, contact_id: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .transcript(contact_id)
            .await?
            .into_iter()
            .filter(|i| i.kind == "MESSAGE" && i.participant_role.as_deref() == Some("CUSTOMER"))
            .filter_map(|i| i.content)
            .collect())
    }

    /// The files the customer attached to a chat, in order: each item and its bytes.
    pub async fn customer_files(
        &self,
        contact_id: &str,
    ) -> anyhow::Result<Vec<(AttachmentItem, Vec<u8>)>> {
        let mut files = Vec::new();
        for item in self.transcript(contact_id).await? {
            if item.kind != "ATTACHMENT" || item.participant_role.as_deref() != Some("CUSTOMER") {
                continue;
            }
            for a in item.attachments {
                let bytes = self
                    .http
                    .get(format!("{}/attachments/{}", self.base, a.attachment_id))
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?
                    .to_vec();
                files.push((a, bytes));
            }
        }
        Ok(files)
    }

    pub async fn customer_events(&self, contact_id: &str) -> anyhow::Result<Vec<Item>> {
        self.get(&format!("/agent/chats/{contact_id}/events")).await
    }

    pub async fn calls(&self) -> anyhow::Result<Vec<Value>> {
        self.get("/agent/calls").await
    }

    pub async fn stats(&self) -> anyhow::Result<SimStats> {
        self.get("/sim/stats").await
    }

    /// The next `count` REST calls (of `operations`, or any) answer 429 ThrottlingException.
    pub async fn throttle(&self, count: u32, operations: Option<&[&str]>) -> anyhow::Result<()> {
        self.post::<()>(
            "/faults/throttle",
            json!({ "count": count, "operations": operations }),
        )
        .await
    }

    /// The next `count` REST calls (of `operations`, or any) answer 500.
    pub async fn fail(&self, count: u32, operations: Option<&[&str]>) -> anyhow::Result<()> {
        self.post::<()>(
            "/faults/error",
            json!({ "count": count, "operations": operations }),
        )
        .await
    }

    pub async fn delay(&self, millis: u64) -> anyhow::Result<()> {
        self.post::<()>("/faults/delay", json!({ "millis": millis }))
            .await
    }

    pub async fn answer_heartbeats(&self, answer: bool) -> anyhow::Result<()> {
        self.post::<()>("/faults/heartbeats", json!({ "answer": answer }))
            .await
    }

    /// Closes participant websockets (one chat's, or all); returns how many.
    pub async fn drop_sockets(&self, contact_id: Option<&str>) -> anyhow::Result<u64> {
        let v: Value = self
            .post("/faults/drop-sockets", json!({ "contact_id": contact_id }))
            .await?;
        Ok(v["dropped"].as_u64().unwrap_or(0))
    }

    pub async fn expire_tokens(&self, contact_id: Option<&str>) -> anyhow::Result<u64> {
        let v: Value = self
            .post("/faults/expire-tokens", json!({ "contact_id": contact_id }))
            .await?;
        Ok(v["expired"].as_u64().unwrap_or(0))
    }

    /// Customer messages containing `needle` are refused with ValidationException.
    pub async fn reject_containing(&self, needle: Option<&str>) -> anyhow::Result<()> {
        self.post::<()>("/faults/reject", json!({ "contains": needle }))
            .await
    }

    pub async fn clear_faults(&self) -> anyhow::Result<()> {
        self.post::<()>("/faults/clear", json!({})).await
    }
}
