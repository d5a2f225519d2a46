//! The Messages API client: one POST per message part, errors classified by what the
//! sender should do about them (docs/architecture.md §7).

use crate::config::TwilioSettings;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::time::Duration;
use waconnect_shared::BusinessNumber;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Rate limited, never processed (429 / 20429 / 63018): wait and send again. Not the
    /// message's fault, so it costs no attempt; only its age bounds the wait.
    Throttled { retry_after: Option<Duration> },
    /// Not processed (5xx, no connection): retry with backoff, a bounded number of times.
    Transient { retry_after: Option<Duration> },
    /// No answer after the request went out: Twilio may or may not have it.
    Unknown,
    /// The credentials are refused: nothing can be sent until someone fixes them.
    Auth,
    /// The sender is misconfigured (unknown From or Messaging Service, no WhatsApp
    /// channel for it, wrong account): no message can go until someone fixes it.
    Config,
    /// This message can never be sent (21211 invalid To, 21610 opted out, 21617 too long…).
    Permanent,
}

/// Codes that mean our sender configuration is wrong, not the message: 20404 (account or
/// service not found), 21212 (invalid From), 21606 (From is not a message-capable number
/// of the account), 21703 (Messaging Service without senders), 63007 (no WhatsApp channel
/// for the From address).
const CONFIG_CODES: [u32; 5] = [20404, 21212, 21606, 21703, 63007];

/// How Twilio is to try a status callback again (its "connection overrides", the URL's
/// fragment): up to 5 more times, when ingress answers 5xx (its queue could not take the
/// event), cannot be reached (a restart, a deploy) or does not answer in time; within
/// Twilio's cap of 15 s for all attempts. Without it Twilio tries once more only when it
/// could not connect, and a receipt or a failure ingress turned away with 503 is lost.
/// Retries are safe: ingress dedups a callback by its message and status.
pub const CALLBACK_RETRIES: &str = "rc=5&rp=5xx,ct,rt";

#[derive(Debug, Clone, thiserror::Error)]
#[error("Twilio {}: {message}", code.map_or("error".to_owned(), |c| c.to_string()))]
pub struct SendError {
    pub kind: ErrorKind,
    pub code: Option<u32>,
    pub message: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: Option<u32>,
    message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Listed {
    pub sid: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub num_media: String,
    #[serde(default)]
    pub date_created: Option<String>,
}

impl Listed {
    pub fn created(&self) -> Option<DateTime<Utc>> {
        self.date_created
            .as_deref()
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc))
    }
}

/// What a reply is sent from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentVia {
    From(String),
    Service(String),
    Unknown,
}

/// What the sender needs of a message Twilio has.
#[derive(Debug, Clone, Deserialize)]
pub struct Fetched {
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub num_media: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub error_code: Option<u32>,
    #[serde(default)]
    pub error_message: Option<String>,
}

impl Fetched {
    /// Still with Twilio: not yet handed to WhatsApp, nor refused.
    pub fn pending(&self) -> bool {
        matches!(
            self.status.as_str(),
            "queued" | "accepted" | "scheduled" | "sending"
        )
    }

    /// WhatsApp refused it, or Twilio could not hand it over.
    pub fn failed(&self) -> bool {
        matches!(self.status.as_str(), "failed" | "undelivered")
    }

    /// It failed for a reason that passes: send it again. `our_files` when it carried
    /// files from the media store (see `Resend::is_passing_for`).
    pub fn refused_for_now(&self, our_files: bool) -> bool {
        self.failed()
            && self.error_code.is_some_and(|code| {
                waconnect_shared::message::outbound::Resend::is_passing_for(code, our_files)
            })
    }
}

/// The SID of what a POST created, or what Twilio's refusal means; `unreadable` is what
/// a success whose body cannot be read counts as.
async fn created(response: reqwest::Response, unreadable: ErrorKind) -> Result<String, SendError> {
    if response.status().is_success() {
        #[derive(Deserialize)]
        struct Created {
            sid: String,
        }
        return response
            .json::<Created>()
            .await
            .map(|c| c.sid)
            .map_err(|e| SendError {
                kind: unreadable,
                code: None,
                message: format!("unreadable 2xx answer: {e}"),
            });
    }
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Err(refusal(response, retry_after).await)
}

/// What Twilio's refusal means for the sender, from its status and error code.
async fn refusal(response: reqwest::Response, retry_after: Option<Duration>) -> SendError {
    let status = response.status();
    let body: Option<ErrorBody> = response.json().await.ok();
    let code = body.as_ref().and_then(|b| b.code);
    let message = body
        .and_then(|b| b.message)
        .unwrap_or_else(|| status.to_string());
    let kind = match (status.as_u16(), code) {
        (429, _) | (_, Some(20429 | 63018)) => ErrorKind::Throttled { retry_after },
        (401 | 403, _) | (_, Some(20003)) => ErrorKind::Auth,
        (_, Some(code)) if CONFIG_CODES.contains(&code) => ErrorKind::Config,
        (s, _) if s >= 500 => ErrorKind::Transient { retry_after },
        _ => ErrorKind::Permanent,
    };
    SendError {
        kind,
        code,
        message,
    }
}

#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    messages_url: String,
    content_url: String,
    settings: TwilioSettings,
}

impl TwilioClient {
    /// `tls`: the CAs to trust beside the public roots (`WACONNECT_EXTRA_CA_FILE`).
    pub fn new(
        settings: TwilioSettings,
        timeout: Duration,
        tls: &waconnect_shared::service::tls::TlsSettings,
    ) -> Self {
        let http = tls
            .reqwest(reqwest::Client::builder())
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("an HTTP client with default TLS");
        Self {
            messages_url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                settings.api_base, settings.account_sid
            ),
            content_url: format!("{}/v1/Content", settings.content_base),
            http,
            settings,
        }
    }

    /// Where a reply in the conversation on `business` goes out from: its route's
    /// Messaging Service, else the environment's `TWILIO_FROM`, else the number the
    /// customer wrote to (a record from before routing: the route's first number).
    pub fn sent_via(&self, business: Option<&BusinessNumber>) -> SentVia {
        let route = self.settings.routing.route_of(business);
        if let Some(service) = &route.messaging_service_sid {
            return SentVia::Service(service.clone());
        }
        match route.from.as_ref().or(business).or(route.numbers.first()) {
            Some(from) => SentVia::From(from.as_str().to_owned()),
            // Configuration refuses a route with neither; Twilio would name the gap.
            None => SentVia::Unknown,
        }
    }

    /// The form for one part: `From` or `MessagingServiceSid` added.
    pub fn with_sender(
        &self,
        mut fields: Vec<(String, String)>,
        business: Option<&BusinessNumber>,
    ) -> Vec<(String, String)> {
        match self.sent_via(business) {
            SentVia::From(from) => fields.push(("From".into(), from)),
            SentVia::Service(service) => fields.push(("MessagingServiceSid".into(), service)),
            SentVia::Unknown => {}
        }
        fields
    }

    /// The `StatusCallback` for a part: the configured URL with `query` added, and
    /// Twilio's connection overrides ([`CALLBACK_RETRIES`] unless the URL has its own).
    pub fn status_callback(&self, query: &str) -> Option<String> {
        let configured = self.settings.status_callback_url.as_deref()?;
        let (url, fragment) = configured
            .split_once('#')
            .unwrap_or((configured, CALLBACK_RETRIES));
        let joiner = if url.contains('?') { '&' } else { '?' };
        Some(format!("{url}{joiner}{query}#{fragment}"))
    }

    /// Posts one message; returns its SID.
    pub async fn send(&self, fields: &[(String, String)]) -> Result<String, SendError> {
        let response = self
            .http
            .post(&self.messages_url)
            .basic_auth(
                &self.settings.username,
                Some(self.settings.password.expose()),
            )
            .form(fields)
            .send()
            .await
            .map_err(|e| SendError {
                // A connect failure never reached Twilio; anything later might have.
                kind: if e.is_connect() {
                    ErrorKind::Transient { retry_after: None }
                } else {
                    ErrorKind::Unknown
                },
                code: None,
                message: e.to_string(),
            })?;
        // An unreadable 201 may still be a sent message.
        created(response, ErrorKind::Unknown).await
    }

    /// Creates a content (Twilio's Content API) from `definition`; returns its SID.
    pub async fn create_content(
        &self,
        definition: &serde_json::Value,
    ) -> Result<String, SendError> {
        let response = self
            .http
            .post(&self.content_url)
            .basic_auth(
                &self.settings.username,
                Some(self.settings.password.expose()),
            )
            .json(definition)
            .send()
            .await
            .map_err(|e| SendError {
                // Creating twice only makes a second copy: a lost answer is worth a retry.
                kind: ErrorKind::Transient { retry_after: None },
                code: None,
                message: e.without_url().to_string(),
            })?;
        created(response, ErrorKind::Transient { retry_after: None }).await
    }

    /// A message Twilio has, by SID: the text of a message to send again.
    pub async fn fetch(&self, sid: &str) -> Result<Fetched, SendError> {
        let url = self
            .messages_url
            .strip_suffix(".json")
            .map(|base| format!("{base}/{sid}.json"))
            .unwrap_or_default();
        let response = self
            .http
            .get(url)
            .basic_auth(
                &self.settings.username,
                Some(self.settings.password.expose()),
            )
            .send()
            .await
            .map_err(|e| SendError {
                kind: ErrorKind::Transient { retry_after: None },
                code: None,
                message: e.to_string(),
            })?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(SendError {
                kind: match status {
                    401 | 403 => ErrorKind::Auth,
                    404 => ErrorKind::Permanent,
                    _ => ErrorKind::Transient { retry_after: None },
                },
                code: None,
                message: format!("fetching {sid}: HTTP {status}"),
            });
        }
        response.json::<Fetched>().await.map_err(|e| SendError {
            kind: ErrorKind::Transient { retry_after: None },
            code: None,
            message: e.to_string(),
        })
    }

    /// Messages sent to `to` (from `from`, when known; newest first, one page): used to
    /// learn whether an attempt whose answer was lost did reach Twilio.
    pub async fn sent_to(&self, to: &str, from: Option<&str>) -> Result<Vec<Listed>, SendError> {
        #[derive(Deserialize)]
        struct Page {
            messages: Vec<Listed>,
        }
        let response = self
            .http
            .get(&self.messages_url)
            .basic_auth(
                &self.settings.username,
                Some(self.settings.password.expose()),
            )
            .query(&[("To", to), ("PageSize", "100")])
            .query(&from.map(|f| vec![("From", f)]).unwrap_or_default())
            .send()
            .await
            .map_err(|e| SendError {
                kind: ErrorKind::Transient { retry_after: None },
                code: None,
                message: e.to_string(),
            })?;
        if !response.status().is_success() {
            let auth = matches!(response.status().as_u16(), 401 | 403);
            return Err(SendError {
                kind: if auth {
                    ErrorKind::Auth
                } else {
                    ErrorKind::Transient { retry_after: None }
                },
                code: None,
                message: response.status().to_string(),
            });
        }
        response
            .json::<Page>()
            .await
            .map(|p| p.messages)
            .map_err(|e| SendError {
                kind: ErrorKind::Transient { retry_after: None },
                code: None,
                message: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SenderConfig;
    use waconnect_shared::service::config::ConfigSource;

    fn client(callback: &str) -> TwilioClient {
        let config = SenderConfig::from_source(&ConfigSource::from_pairs([
            ("TWILIO_ACCOUNT_SID", "AC1"),
            ("TWILIO_AUTH_TOKEN", "t"),
            ("TWILIO_FROM", "whatsapp:+14155238886"),
            ("WACONNECT_STATUS_CALLBACK_URL", callback),
        ]))
        .unwrap();
        TwilioClient::new(config.twilio, Duration::from_secs(1), &Default::default())
    }

    #[test]
    fn a_status_callback_asks_twilio_to_try_again_unless_the_operator_said_otherwise() {
        assert_eq!(
            client("https://wa.test/twilio/status").status_callback("item=i1&part=0"),
            Some("https://wa.test/twilio/status?item=i1&part=0#rc=5&rp=5xx,ct,rt".into())
        );
        // The query goes before the operator's own fragment, which is kept as it is.
        assert_eq!(
            client("https://wa.test/twilio/status?k=v#rc=2&rp=ct").status_callback("part=1"),
            Some("https://wa.test/twilio/status?k=v&part=1#rc=2&rp=ct".into())
        );
    }
}
