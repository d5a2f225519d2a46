//! What Twilio keeps of the messages customers sent: the Messages API's list of inbound
//! messages and each one's files. Twilio posts a customer's message to ingress once (and
//! again only as the URL's fragment says, within 15 s); when ingress could not take it in
//! that time, the message exists only here. The relays' catch-up and `waconnect recover`
//! read it back and put the messages the relay never handled on the inbound queue, as
//! their webhooks would have ([`super::recovery`]).

use crate::message::address::{BusinessNumber, CustomerAddress};
use crate::message::event::{EventKind, InboundEvent, MAX_MEDIA};
use crate::service::backoff::Backoff;
use crate::service::tls::TlsSettings;
use crate::twilio::account::TwilioAccount;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::time::Duration;

/// Messages per page asked for: Twilio's largest page.
const PAGE_SIZE: usize = 1000;
/// Tries of one page (throttled, 5xx, no answer) before giving up.
const ATTEMPTS: u32 = 5;
/// Twilio's longest body, in characters; a longer one is cut, not trusted.
const MAX_BODY_CHARS: usize = 1600;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("Twilio refused the credentials ({0})")]
    Auth(u16),
    #[error("Twilio did not answer in {ATTEMPTS} tries: {0}")]
    Unavailable(String),
    #[error("Twilio's answer was not understood: {0}")]
    Invalid(String),
    #[error("more than {0} messages in the range: give a shorter one")]
    TooMany(usize),
}

/// A message a customer sent, as Twilio lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub sid: String,
    pub from: String,
    pub to: String,
    pub body: String,
    pub num_media: usize,
    pub sent_at: DateTime<Utc>,
}

/// A file of a customer's message: where Twilio keeps it (the webhook's `MediaUrl{N}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub url: String,
    pub content_type: String,
}

impl Received {
    /// The customer and the business number, when both are addresses a webhook could carry.
    pub fn parties(&self) -> Option<(CustomerAddress, BusinessNumber)> {
        Some((
            CustomerAddress::parse(&self.from).ok()?,
            BusinessNumber::parse(&self.to).ok()?,
        ))
    }

    /// The inbound queue's event for this message: the fields its webhook carries that
    /// the Messages API keeps too. (The customer's profile name, a tapped button's
    /// payload, a location's coordinates and a quoted message are only in webhooks.) The
    /// event's time is now: the relay's replay guard, which remembers the time of the
    /// webhook it handled for each MessageSid, then drops it if the message was handled.
    pub fn event(&self, account_sid: &str, files: &[File]) -> InboundEvent {
        let mut fields: Vec<(String, String)> = vec![
            ("SmsMessageSid".into(), self.sid.clone()),
            ("NumMedia".into(), files.len().to_string()),
            ("SmsSid".into(), self.sid.clone()),
            ("SmsStatus".into(), "received".into()),
            ("Body".into(), self.body.clone()),
            ("To".into(), self.to.clone()),
            ("MessageSid".into(), self.sid.clone()),
            ("AccountSid".into(), account_sid.to_owned()),
            ("From".into(), self.from.clone()),
            ("ApiVersion".into(), "2010-04-01".into()),
        ];
        if let Some(wa_id) = self.from.strip_prefix("whatsapp:+") {
            fields.push(("WaId".into(), wa_id.to_owned()));
        }
        for (i, file) in files.iter().enumerate() {
            fields.push((format!("MediaContentType{i}"), file.content_type.clone()));
            fields.push((format!("MediaUrl{i}"), file.url.clone()));
        }
        fields.push((RECOVERED_FIELD.into(), self.sent_at.to_rfc3339()));
        InboundEvent::new(EventKind::Message, fields)
    }
}

/// The field a recovered message carries beside Twilio's: when the customer sent it
/// (RFC 3339), so the agent can be told it comes late.
pub const RECOVERED_FIELD: &str = "WaconnectSentAt";

#[derive(Deserialize)]
struct Page<T> {
    #[serde(alias = "media_list")]
    messages: Vec<T>,
    #[serde(default)]
    next_page_uri: Option<String>,
}

#[derive(Deserialize)]
struct Listed {
    sid: String,
    #[serde(default)]
    direction: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    num_media: Option<String>,
    #[serde(default)]
    date_sent: Option<String>,
    #[serde(default)]
    date_created: Option<String>,
}

#[derive(Deserialize)]
struct ListedFile {
    #[serde(default)]
    content_type: String,
    uri: String,
}

/// Reads the account's message history through the Messages API.
pub struct History {
    http: reqwest::Client,
    base: String,
    account: TwilioAccount,
    page_size: usize,
}

impl History {
    /// `base`: `https://api.twilio.com` in production; `timeout` bounds each call.
    pub fn new(account: TwilioAccount, base: &str, tls: &TlsSettings, timeout: Duration) -> Self {
        let http = tls
            .reqwest(reqwest::Client::builder())
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with default TLS");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            account,
            page_size: PAGE_SIZE,
        }
    }

    /// The account's SID (`AC…`), as its webhooks carry it.
    pub fn account_sid(&self) -> &str {
        &self.account.account_sid
    }

    /// Pages of at most `n` messages instead of Twilio's largest (tests of paging).
    pub fn with_page_size(mut self, n: usize) -> Self {
        self.page_size = n.clamp(1, PAGE_SIZE);
        self
    }

    /// The messages customers sent to `to` (every number when `None`) from `since` to
    /// `until`, oldest first; at most `max`, else [`HistoryError::TooMany`].
    pub async fn received(
        &self,
        to: Option<&BusinessNumber>,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<Received>, HistoryError> {
        // Twilio documents its date filters to the day (`YYYY-MM-DD`, GMT: on or after,
        // on or before, midnight) whatever it makes of a time: ask for the whole days that
        // hold the range — the day after `until` too, whichever midnight "before" means —
        // keep what falls in it to the second, and stop paging once the list, newest
        // first, has gone past `since`.
        let mut query = vec![
            ("DateSent>", since.format("%Y-%m-%d").to_string()),
            (
                "DateSent<",
                (until + chrono::TimeDelta::days(1))
                    .format("%Y-%m-%d")
                    .to_string(),
            ),
            ("PageSize", self.page_size.to_string()),
        ];
        if let Some(to) = to {
            query.push(("To", to.as_str().to_owned()));
        }
        let first = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json?{}",
            self.base,
            self.account.account_sid,
            crate::twilio::form::encode(query.iter().map(|(k, v)| (*k, v.as_str())))
        );
        let mut found = Vec::new();
        let mut listed = 0usize;
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let page: Page<Listed> = self.get(&url).await?;
            listed += page.messages.len();
            // Twilio's lists are newest first; anything it lists counts against the cap,
            // so a range full of the business's own replies cannot page on for ever.
            if listed > max.saturating_mul(4) {
                return Err(HistoryError::TooMany(max));
            }
            let mut past_since = false;
            for m in page.messages {
                let at = m
                    .date_sent
                    .as_deref()
                    .or(m.date_created.as_deref())
                    .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
                    .map(|d| d.with_timezone(&Utc));
                // A reply Twilio has not sent yet has no date sent, and is not in order.
                past_since |= m.date_sent.is_some() && at.is_some_and(|at| at < since);
                if m.direction != "inbound" {
                    continue;
                }
                let at =
                    at.ok_or_else(|| HistoryError::Invalid(format!("{}: no date sent", m.sid)))?;
                if at < since || at > until {
                    continue;
                }
                if found.len() == max {
                    return Err(HistoryError::TooMany(max));
                }
                found.push(Received {
                    num_media: m
                        .num_media
                        .as_deref()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0)
                        .min(MAX_MEDIA),
                    body: m
                        .body
                        .unwrap_or_default()
                        .chars()
                        .take(MAX_BODY_CHARS)
                        .collect(),
                    from: m.from.unwrap_or_default(),
                    to: m.to.unwrap_or_default(),
                    sid: m.sid,
                    sent_at: at,
                });
            }
            next = page
                .next_page_uri
                .filter(|_| !past_since)
                .map(|p| format!("{}{p}", self.base));
        }
        // Twilio lists newest first, and its dates are to the second: the list reversed
        // keeps the order of messages sent within one second.
        found.reverse();
        found.sort_by_key(|m| m.sent_at);
        Ok(found)
    }

    /// A customer message's files, in the order its webhook named them.
    pub async fn files(&self, message: &Received) -> Result<Vec<File>, HistoryError> {
        if message.num_media == 0 {
            return Ok(Vec::new());
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages/{}/Media.json",
            self.base, self.account.account_sid, message.sid
        );
        let page: Page<ListedFile> = self.get(&url).await?;
        Ok(page
            .messages
            .into_iter()
            .take(MAX_MEDIA)
            .map(|f| File {
                url: format!("{}{}", self.base, f.uri.trim_end_matches(".json")),
                content_type: f.content_type,
            })
            .collect())
    }

    /// One GET of the API, tried again when throttled, failing on Twilio's side, or not
    /// answered.
    async fn get<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, HistoryError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            let sent = self
                .http
                .get(url)
                .basic_auth(&self.account.username, Some(self.account.password.expose()))
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = response.status();
            if matches!(status.as_u16(), 401 | 403) {
                return Err(HistoryError::Auth(status.as_u16()));
            }
            if status.as_u16() == 429 || status.is_server_error() {
                last = format!("HTTP {status}");
                continue;
            }
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(HistoryError::Invalid(format!(
                    "HTTP {status}: {}",
                    body.chars().take(300).collect::<String>()
                )));
            }
            return response
                .json::<T>()
                .await
                .map_err(|e| HistoryError::Invalid(e.to_string()));
        }
        Err(HistoryError::Unavailable(last))
    }
}
