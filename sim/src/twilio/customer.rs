//! The WhatsApp customer's side (the phone), the simulated clock and fault injection, over
//! JSON HTTP; and a client for them.

use super::{Sent, Twilio, api, sid};
use anyhow::{Context, bail};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub fn routes() -> Router<Arc<Twilio>> {
    Router::new()
        .route("/phone/messages", post(customer_sends))
        .route("/phone/inbox", get(inbox))
        .route("/phone/messages/{sid}/media/{n}", get(received_file))
        .route("/phone/read", post(read_all))
        .route("/phone/opt-out", post(opt_out))
        .route("/sim/messages", get(all_sent))
        .route("/sim/stats", get(stats))
        .route("/sim/webhook", post(set_webhook))
        .route("/sim/clock", post(advance_clock))
        .route("/faults/storm", post(storm))
        .route("/faults/error", post(errors))
        .route("/faults/hang", post(hangs))
        .route("/faults/rate", post(rate))
        .route("/faults/delay", post(delay))
        .route("/faults/lag", post(lag))
        .route("/faults/shuffle", post(shuffle))
        .route("/faults/lose-statuses", post(lose_statuses))
        .route("/faults/clear", post(clear))
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Media {
    /// A file kept elsewhere; or empty, with `sid` naming one put in Twilio's keeping
    /// (`PhoneClient::upload`), whose `MediaUrl` is then Twilio's own.
    #[serde(default)]
    pub url: String,
    pub content_type: String,
    #[serde(default)]
    pub sid: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct CustomerMessage {
    /// `whatsapp:+<E.164>`
    pub from: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub profile_name: Option<String>,
    #[serde(default)]
    pub media: Vec<Media>,
    #[serde(default)]
    pub location: Option<Location>,
    /// The SID of the message this one replies to (WhatsApp's swipe-to-reply): one the
    /// business sent the customer, or one the customer wrote.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// A tapped choice of a list or buttons the business sent.
    #[serde(default)]
    pub button: Option<super::ShownChoice>,
    /// The business number written to; the account's first sender when absent.
    #[serde(default)]
    pub to: Option<String>,
}

async fn customer_sends(
    State(twilio): State<Arc<Twilio>>,
    Json(m): Json<CustomerMessage>,
) -> impl IntoResponse {
    let Some(url) = twilio.lock().webhook_url.clone() else {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "message": "no webhook URL configured" })),
        );
    };
    if waconnect_shared::CustomerAddress::parse(&m.from).is_err() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": "from must be whatsapp:+E.164" })),
        );
    }
    let to =
        m.to.clone()
            .unwrap_or_else(|| twilio.options.sender.clone());
    if !twilio.is_sender(&to) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "message": format!("{to} is not one of the business's numbers") })),
        );
    }
    if let Some(b) = &m.button {
        let offered = twilio
            .lock()
            .sent
            .iter()
            .any(|s| s.to == m.from && s.from == to && s.choices.contains(b));
        if !offered {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "message": "no such choice was offered to this customer" })),
            );
        }
    }
    let message_sid = sid(if m.media.is_empty() { "SM" } else { "MM" });
    let wa_id = m.from.trim_start_matches("whatsapp:+").to_owned();
    let kind = if m.button.is_some() {
        "interactive"
    } else if m.location.is_some() {
        "location"
    } else if let Some(first) = m.media.first() {
        first.content_type.split('/').next().unwrap_or("document")
    } else {
        "text"
    };
    let mut fields: Vec<(String, String)> = vec![
        ("SmsMessageSid".into(), message_sid.clone()),
        ("NumMedia".into(), m.media.len().to_string()),
        (
            "ProfileName".into(),
            m.profile_name
                .clone()
                .unwrap_or_else(|| "WhatsApp User".into()),
        ),
        ("MessageType".into(), kind.into()),
        ("SmsSid".into(), message_sid.clone()),
        ("WaId".into(), wa_id),
        ("SmsStatus".into(), "received".into()),
        ("Body".into(), m.body.clone()),
        ("To".into(), to.clone()),
        ("NumSegments".into(), "1".into()),
        ("ReferralNumMedia".into(), "0".into()),
        ("MessageSid".into(), message_sid.clone()),
        ("AccountSid".into(), twilio.options.account_sid.clone()),
        ("From".into(), m.from.clone()),
        ("ApiVersion".into(), "2010-04-01".into()),
    ];
    for (i, media) in m.media.iter().enumerate() {
        let url = match &media.sid {
            Some(media_sid) => {
                let mut inner = twilio.lock();
                match inner.media.get_mut(media_sid) {
                    Some(stored) => stored.message_sid = Some(message_sid.clone()),
                    None => {
                        return (
                            StatusCode::BAD_REQUEST,
                            Json(json!({ "message": format!("no uploaded media {media_sid}") })),
                        );
                    }
                }
                super::media::media_url(&twilio, &message_sid, media_sid)
            }
            None => media.url.clone(),
        };
        fields.push((format!("MediaContentType{i}"), media.content_type.clone()));
        fields.push((format!("MediaUrl{i}"), url));
    }
    if let Some(b) = &m.button {
        // WhatsApp sends the tapped choice's title as the text, and its id beside it.
        fields.retain(|(k, _)| k != "Body");
        fields.push(("Body".into(), b.title.clone()));
        fields.push(("ButtonText".into(), b.title.clone()));
        fields.push(("ButtonPayload".into(), b.id.clone()));
    }
    if let Some(replied) = &m.reply_to {
        let sender = {
            let inner = twilio.lock();
            if inner.written_by.get(replied) == Some(&m.from) {
                Some(m.from.clone())
            } else {
                inner
                    .by_sid
                    .get(replied)
                    .map(|&i| &inner.sent[i])
                    .filter(|s| s.to == m.from)
                    .map(|s| s.from.clone())
            }
        };
        let Some(sender) = sender else {
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({ "message": format!("no message {replied} in this chat to reply to") }),
                ),
            );
        };
        fields.push(("OriginalRepliedMessageSender".into(), sender));
        fields.push(("OriginalRepliedMessageSid".into(), replied.clone()));
    }
    if let Some(l) = &m.location {
        fields.push(("Latitude".into(), l.latitude.to_string()));
        fields.push(("Longitude".into(), l.longitude.to_string()));
        if let Some(label) = &l.label {
            fields.push(("Label".into(), label.clone()));
        }
        if let Some(address) = &l.address {
            fields.push(("Address".into(), address.clone()));
        }
    }
    // Twilio has the message whatever becomes of its webhook: it is in the account's
    // history, it opens the 24-hour window, and the business may mark it read.
    {
        let now = twilio.now();
        let mut inner = twilio.lock();
        inner.inbound.push(super::Received {
            sid: message_sid.clone(),
            from: m.from.clone(),
            to: to.clone(),
            body: fields
                .iter()
                .find(|(k, _)| k == "Body")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            media: m.media.iter().filter_map(|f| f.sid.clone()).collect(),
            created_at: now,
        });
        inner.written_by.insert(message_sid.clone(), m.from.clone());
        let customer = inner.customers.entry(m.from.clone()).or_default();
        customer.last_inbound.insert(to.clone(), now);
        customer.written.push(super::indicator::WrittenMessage {
            sid: message_sid.clone(),
            to: to.clone(),
            body: m.body.clone(),
            read: false,
            at: now,
        });
    }
    let super::webhook::Delivery { status, attempts } =
        super::webhook::post(&twilio, &url, &fields).await;
    (
        StatusCode::OK,
        Json(json!({ "message_sid": message_sid, "status": status, "attempts": attempts })),
    )
}

/// A message as the customer's phone shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboxMessage {
    pub sid: String,
    /// The business number it came from.
    #[serde(default)]
    pub from: String,
    pub body: String,
    pub media_urls: Vec<String>,
    /// The files the phone received with it: type and `Content-Disposition`.
    #[serde(default)]
    pub files: Vec<ReceivedFile>,
    pub content_sid: Option<String>,
    /// A list's or buttons' choices: what the customer can tap.
    #[serde(default)]
    pub choices: Vec<super::ShownChoice>,
    pub status: String,
    pub error_code: Option<u32>,
    /// When Twilio took it (the phone orders its chat by it).
    #[serde(default)]
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A file as the phone shows it in the chat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceivedFile {
    pub content_type: String,
    pub content_disposition: Option<String>,
    pub size: usize,
}

impl ReceivedFile {
    /// The name `Content-Disposition` gives the file (`inline; filename="Manual.pdf"`).
    pub fn filename(&self) -> Option<&str> {
        let disposition = self.content_disposition.as_deref()?;
        let (_, quoted) = disposition.split_once("filename=\"")?;
        quoted.split('"').next()
    }
}

#[derive(Deserialize)]
struct Number {
    number: String,
}

fn inbox_of(twilio: &Twilio, number: &str) -> Vec<InboxMessage> {
    let inner = twilio.lock();
    inner
        .sent
        .iter()
        .filter(|s| s.to == number)
        .map(|s| InboxMessage {
            sid: s.sid.clone(),
            from: s.from.clone(),
            body: s.body.clone(),
            media_urls: s.media_urls.clone(),
            files: inner
                .received
                .get(&s.sid)
                .map(|files| {
                    files
                        .iter()
                        .map(|f| ReceivedFile {
                            content_type: f.content_type.clone(),
                            content_disposition: f.content_disposition.clone(),
                            size: f.bytes.len(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            content_sid: s.content_sid.clone(),
            choices: s.choices.clone(),
            status: s.status.clone(),
            error_code: s.error_code,
            created_at: Some(s.created_at),
        })
        .collect()
}

async fn inbox(
    State(twilio): State<Arc<Twilio>>,
    Query(n): Query<Number>,
) -> Json<Vec<InboxMessage>> {
    Json(inbox_of(&twilio, &n.number))
}

/// A file the phone received with message `sid`: its bytes, type and disposition.
async fn received_file(
    State(twilio): State<Arc<Twilio>>,
    Path((sid, n)): Path<(String, usize)>,
) -> Response {
    let inner = twilio.lock();
    match inner.received.get(&sid).and_then(|files| files.get(n)) {
        Some(f) => {
            let mut response = (
                [(axum::http::header::CONTENT_TYPE, f.content_type.clone())],
                f.bytes.clone(),
            )
                .into_response();
            if let Some(d) = f
                .content_disposition
                .as_deref()
                .and_then(|d| d.parse().ok())
            {
                response
                    .headers_mut()
                    .insert(axum::http::header::CONTENT_DISPOSITION, d);
            }
            response
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn read_all(State(twilio): State<Arc<Twilio>>, Json(n): Json<Number>) -> Json<Value> {
    let unread: Vec<String> = inbox_of(&twilio, &n.number)
        .into_iter()
        .filter(|m| m.status == "delivered")
        .map(|m| m.sid)
        .collect();
    for sid in &unread {
        api::set_status(&twilio, sid, "read", None).await;
    }
    Json(json!({ "read": unread.len() }))
}

async fn opt_out(State(twilio): State<Arc<Twilio>>, Json(n): Json<Number>) -> StatusCode {
    twilio
        .lock()
        .customers
        .entry(n.number)
        .or_default()
        .opted_out = true;
    StatusCode::NO_CONTENT
}

async fn all_sent(State(twilio): State<Arc<Twilio>>) -> Json<Vec<Sent>> {
    Json(twilio.lock().sent.clone())
}

async fn stats(State(twilio): State<Arc<Twilio>>) -> Json<Value> {
    let inner = twilio.lock();
    Json(
        json!({ "api_calls": inner.api_calls, "sent": inner.sent.len(), "media": inner.media.len() }),
    )
}

#[derive(Deserialize)]
struct Webhook {
    url: String,
}

async fn set_webhook(State(twilio): State<Arc<Twilio>>, Json(w): Json<Webhook>) -> StatusCode {
    twilio.lock().webhook_url = Some(w.url);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Advance {
    seconds: i64,
}

async fn advance_clock(State(twilio): State<Arc<Twilio>>, Json(a): Json<Advance>) -> StatusCode {
    twilio.lock().clock_offset += chrono::Duration::seconds(a.seconds);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Seconds {
    seconds: f64,
}

async fn storm(State(twilio): State<Arc<Twilio>>, Json(s): Json<Seconds>) -> StatusCode {
    twilio.lock().faults.storm_until = Some(Instant::now() + Duration::from_secs_f64(s.seconds));
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Count {
    count: u32,
}

async fn errors(State(twilio): State<Arc<Twilio>>, Json(c): Json<Count>) -> StatusCode {
    twilio.lock().faults.errors = c.count;
    StatusCode::NO_CONTENT
}

async fn rate(State(twilio): State<Arc<Twilio>>, Json(c): Json<Count>) -> StatusCode {
    twilio.lock().faults.rate = Some(c.count);
    StatusCode::NO_CONTENT
}

async fn hangs(State(twilio): State<Arc<Twilio>>, Json(c): Json<Count>) -> StatusCode {
    twilio.lock().faults.hangs = c.count;
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Millis {
    millis: u64,
}

async fn delay(State(twilio): State<Arc<Twilio>>, Json(m): Json<Millis>) -> StatusCode {
    twilio.lock().faults.delay = Duration::from_millis(m.millis);
    StatusCode::NO_CONTENT
}

async fn lag(State(twilio): State<Arc<Twilio>>, Json(m): Json<Millis>) -> StatusCode {
    twilio.lock().faults.lag = Duration::from_millis(m.millis);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Switch {
    on: bool,
}

async fn shuffle(State(twilio): State<Arc<Twilio>>, Json(s): Json<Switch>) -> StatusCode {
    twilio.lock().faults.shuffle_statuses = s.on;
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct OneIn {
    one_in: u32,
}

async fn lose_statuses(State(twilio): State<Arc<Twilio>>, Json(o): Json<OneIn>) -> StatusCode {
    twilio.lock().faults.lose_statuses = o.one_in;
    StatusCode::NO_CONTENT
}

async fn clear(State(twilio): State<Arc<Twilio>>) -> StatusCode {
    twilio.lock().faults = Default::default();
    StatusCode::NO_CONTENT
}

/// Drives the customer's phone and the simulator's controls over HTTP.
#[derive(Clone)]
pub struct PhoneClient {
    base: String,
    http: reqwest::Client,
}

impl PhoneClient {
    pub fn new(base: String) -> Self {
        Self {
            http: crate::tls::client_for(&base),
            base,
        }
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("calling {path}"))?;
        let status = r.status();
        if !status.is_success() {
            bail!("{path}: {status}: {}", r.text().await.unwrap_or_default());
        }
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        Ok(r.json().await?)
    }

    /// The customer sends `message`; returns (MessageSid, HTTP status ingress answered).
    pub async fn send(&self, message: &CustomerMessage) -> anyhow::Result<(String, u16)> {
        let v = self
            .post("/phone/messages", serde_json::to_value(message)?)
            .await?;
        Ok((
            v["message_sid"].as_str().unwrap_or_default().to_owned(),
            v["status"].as_u64().unwrap_or(0) as u16,
        ))
    }

    /// Puts a file in Twilio's keeping, as a customer's phone uploads one; its `ME…` SID.
    pub async fn upload(&self, bytes: Vec<u8>, content_type: &str) -> anyhow::Result<String> {
        let v: Value = self
            .http
            .post(format!("{}/sim/media", self.base))
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v["sid"].as_str().unwrap_or_default().to_owned())
    }

    /// The customer sends a file, with a caption (may be empty).
    pub async fn send_file(
        &self,
        from: &str,
        bytes: Vec<u8>,
        content_type: &str,
        caption: &str,
    ) -> anyhow::Result<(String, u16)> {
        self.send_file_to(from, None, bytes, content_type, caption)
            .await
    }

    /// [`Self::send_file`] to business number `to` (the first sender when `None`).
    pub async fn send_file_to(
        &self,
        from: &str,
        to: Option<&str>,
        bytes: Vec<u8>,
        content_type: &str,
        caption: &str,
    ) -> anyhow::Result<(String, u16)> {
        let sid = self.upload(bytes, content_type).await?;
        self.send(&CustomerMessage {
            from: from.to_owned(),
            to: to.map(str::to_owned),
            body: caption.to_owned(),
            media: vec![Media {
                url: String::new(),
                content_type: content_type.to_owned(),
                sid: Some(sid),
            }],
            ..Default::default()
        })
        .await
    }

    /// File `n` the phone received with message `sid`: type, `Content-Disposition`, bytes.
    pub async fn received_file(
        &self,
        sid: &str,
        n: usize,
    ) -> anyhow::Result<(String, Option<String>, Vec<u8>)> {
        let response = self
            .http
            .get(format!("{}/phone/messages/{sid}/media/{n}", self.base))
            .send()
            .await?
            .error_for_status()?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (content_type, disposition) = (
            header("content-type").unwrap_or_default(),
            header("content-disposition"),
        );
        Ok((content_type, disposition, response.bytes().await?.to_vec()))
    }

    pub async fn text(&self, from: &str, body: &str) -> anyhow::Result<(String, u16)> {
        self.send(&CustomerMessage {
            from: from.to_owned(),
            body: body.to_owned(),
            ..CustomerMessage::default()
        })
        .await
    }

    pub async fn inbox(&self, number: &str) -> anyhow::Result<Vec<InboxMessage>> {
        let r = self
            .http
            .get(format!("{}/phone/inbox", self.base))
            .query(&[("number", number)])
            .send()
            .await?;
        Ok(r.error_for_status()?.json().await?)
    }

    /// What the customer wrote (with blue ticks) and whether the business is typing.
    pub async fn chat(&self, number: &str) -> anyhow::Result<super::PhoneChat> {
        let r = self
            .http
            .get(format!("{}/phone/written", self.base))
            .query(&[("number", number)])
            .send()
            .await?
            .error_for_status()?;
        Ok(r.json().await?)
    }

    /// Every typing-indicator call Twilio accepted, in order.
    pub async fn typing_calls(&self) -> anyhow::Result<Vec<super::TypingCall>> {
        let r = self
            .http
            .get(format!("{}/sim/typing", self.base))
            .send()
            .await?
            .error_for_status()?;
        Ok(r.json().await?)
    }

    /// The customer taps choice `n` (from 0) of message `sid`'s list or buttons.
    pub async fn tap(&self, number: &str, sid: &str, n: usize) -> anyhow::Result<(String, u16)> {
        let inbox = self.inbox(number).await?;
        let Some((choice, business)) = inbox
            .iter()
            .find(|m| m.sid == sid)
            .and_then(|m| Some((m.choices.get(n)?, m.from.clone())))
        else {
            anyhow::bail!("message {sid} offers no choice {n}");
        };
        // The tap answers the business that offered the choice.
        self.send(&CustomerMessage {
            from: number.to_owned(),
            to: Some(business),
            button: Some(choice.clone()),
            ..Default::default()
        })
        .await
    }

    pub async fn read_all(&self, number: &str) -> anyhow::Result<()> {
        self.post("/phone/read", json!({ "number": number }))
            .await
            .map(drop)
    }

    pub async fn opt_out(&self, number: &str) -> anyhow::Result<()> {
        self.post("/phone/opt-out", json!({ "number": number }))
            .await
            .map(drop)
    }

    pub async fn sent(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .http
            .get(format!("{}/sim/messages", self.base))
            .send()
            .await?
            .json()
            .await?)
    }

    pub async fn api_calls(&self) -> anyhow::Result<u64> {
        let v: Value = self
            .http
            .get(format!("{}/sim/stats", self.base))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["api_calls"].as_u64().unwrap_or(0))
    }

    pub async fn set_webhook(&self, url: &str) -> anyhow::Result<()> {
        self.post("/sim/webhook", json!({ "url": url }))
            .await
            .map(drop)
    }

    pub async fn advance_clock(&self, seconds: i64) -> anyhow::Result<()> {
        self.post("/sim/clock", json!({ "seconds": seconds }))
            .await
            .map(drop)
    }

    /// Every Messages API call answers 429 (20429) for `seconds`.
    pub async fn storm(&self, seconds: f64) -> anyhow::Result<()> {
        self.post("/faults/storm", json!({ "seconds": seconds }))
            .await
            .map(drop)
    }

    pub async fn fail(&self, count: u32) -> anyhow::Result<()> {
        self.post("/faults/error", json!({ "count": count }))
            .await
            .map(drop)
    }

    /// WhatsApp takes only `per_second` messages a second from the sender until the faults
    /// are cleared: the rest fail with 63018 in their status callbacks.
    pub async fn limit_rate(&self, per_second: u32) -> anyhow::Result<()> {
        self.post("/faults/rate", json!({ "count": per_second }))
            .await
            .map(drop)
    }

    pub async fn clear_faults(&self) -> anyhow::Result<()> {
        self.post("/faults/clear", json!({})).await.map(drop)
    }

    /// The next `count` Messages API calls hang without being processed, until the
    /// client gives up: a request lost on the way, whose outcome the client cannot know.
    pub async fn hang(&self, count: u32) -> anyhow::Result<()> {
        self.post("/faults/hang", json!({ "count": count }))
            .await
            .map(drop)
    }

    /// Messages API answers come `millis` late, after the message exists.
    pub async fn delay(&self, millis: u64) -> anyhow::Result<()> {
        self.post("/faults/delay", json!({ "millis": millis }))
            .await
            .map(drop)
    }

    /// Messages API calls take `millis` to reach Twilio: until then the message does not
    /// exist, and listing the customer's messages does not show it.
    pub async fn lag(&self, millis: u64) -> anyhow::Result<()> {
        self.post("/faults/lag", json!({ "millis": millis }))
            .await
            .map(drop)
    }

    pub async fn shuffle_statuses(&self, on: bool) -> anyhow::Result<()> {
        self.post("/faults/shuffle", json!({ "on": on }))
            .await
            .map(drop)
    }

    /// Loses one status callback in `one_in` (the status itself is still recorded, as
    /// the API shows it), as Twilio may: its callbacks are best effort. 0 loses none.
    pub async fn lose_statuses(&self, one_in: u32) -> anyhow::Result<()> {
        self.post("/faults/lose-statuses", json!({ "one_in": one_in }))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::ReceivedFile;

    #[test]
    fn a_received_file_is_named_by_its_content_disposition() {
        let file = |d: Option<&str>| ReceivedFile {
            content_type: "application/pdf".into(),
            content_disposition: d.map(str::to_owned),
            size: 1,
        };
        assert_eq!(
            file(Some("inline; filename=\"c1-a7.pdf\"")).filename(),
            Some("c1-a7.pdf")
        );
        assert_eq!(file(Some("inline")).filename(), None);
        assert_eq!(file(None).filename(), None);
    }
}
