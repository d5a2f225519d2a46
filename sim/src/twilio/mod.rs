//! A simulated Twilio (docs/architecture.md §7): the Messages API with Basic auth and Twilio's error
//! bodies, its paged history of messages both ways (customers' too, whatever became of
//! their webhooks), signed status callbacks (`sent` → `delivered` → `read`), the WhatsApp 24-hour
//! window on a simulated clock, a customer side that posts signed webhooks to ingress, and
//! fault injection. The real outbound-sender and ingress talk to it unchanged.

mod api;
mod content;
mod customer;
mod indicator;
mod media;
mod webhook;

pub use content::ShownChoice;
pub use customer::{CustomerMessage, InboxMessage, Location, Media, PhoneClient, ReceivedFile};
pub use indicator::{PhoneChat, TYPING_SHOWN, TypingCall, WrittenMessage};

use axum::Router;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct TwilioOptions {
    pub account_sid: String,
    pub auth_token: String,
    /// The business's WhatsApp sender: what customers write to unless they say.
    pub sender: String,
    /// The account's other WhatsApp senders (several business numbers).
    pub other_senders: Vec<String>,
    /// Where incoming-message webhooks go, as configured in Twilio (fragment included).
    pub webhook_url: Option<String>,
    /// Pause before each status callback.
    pub status_delay: Duration,
    /// Customers read what they receive at once (the phone UI can also read by hand).
    pub auto_read: bool,
    /// Messages per second one sender may send before 63018.
    pub sender_rate: u32,
    /// Treat every customer as inside the 24-hour window (tests of the sender alone,
    /// where no customer wrote first).
    pub window_always_open: bool,
    /// Approved WhatsApp templates: `HX…` SID → body with `{{1}}`-style variables. Any
    /// other `HX…` SID is taken as an approved template with a stock body.
    pub templates: Vec<(String, String)>,
    /// The APIs over HTTPS with the process's test CA ([`crate::tls::TestCa`]), as Twilio
    /// speaks; plain HTTP otherwise. (The simulator's webhooks go wherever they are told.)
    pub tls: bool,
}

impl Default for TwilioOptions {
    fn default() -> Self {
        Self {
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            auth_token: "sim-auth-token".into(),
            sender: "whatsapp:+14155238886".into(),
            other_senders: Vec::new(),
            webhook_url: None,
            status_delay: Duration::from_millis(10),
            auto_read: true,
            sender_rate: 80,
            window_always_open: false,
            templates: Vec::new(),
            tls: false,
        }
    }
}

/// One message sent through the Messages API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sent {
    pub sid: String,
    pub to: String,
    pub from: String,
    pub body: String,
    pub media_urls: Vec<String>,
    pub content_sid: Option<String>,
    /// A menu's choices (a content made through the Content API), as the phone shows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<content::ShownChoice>,
    pub status: String,
    pub error_code: Option<u32>,
    /// The error's description, as the API's resource shows it next to the code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    pub status_callback: Option<String>,
    /// Each status callback posted, with the business's answer to its last attempt.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub callbacks: Vec<Callback>,
    pub created_at: DateTime<Utc>,
}

/// A status callback Twilio posted for a message, once Twilio is done trying it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Callback {
    pub status: String,
    /// The HTTP status of the last attempt's answer; 0 when none came.
    pub answered: u16,
}

/// A customer's message as Twilio keeps it, whether or not its webhook got through: the
/// Messages API lists it (direction `inbound`), with its files under `…/Media.json`.
#[derive(Debug, Clone)]
struct Received {
    sid: String,
    from: String,
    to: String,
    body: String,
    /// The files Twilio keeps for it (`ME…` SIDs), in the order the webhook named them.
    media: Vec<String>,
    created_at: DateTime<Utc>,
}

#[derive(Default)]
struct Customer {
    /// Simulated time of the customer's last message to each sender: WhatsApp's 24 h
    /// window is between one customer and one business number.
    last_inbound: HashMap<String, DateTime<Utc>>,
    opted_out: bool,
    /// What the customer wrote (that reached the business), oldest first.
    written: Vec<indicator::WrittenMessage>,
    /// The business's typing indicator shows until then (or a reply).
    typing_until: Option<Instant>,
}

#[derive(Default)]
struct Faults {
    /// Every Messages API call answers 429 / 20429 until then.
    storm_until: Option<Instant>,
    errors: u32,
    /// Calls that hang, unprocessed, until the client gives up (a lost request).
    hangs: u32,
    /// WhatsApp's rate for the sender while set, instead of the option's.
    rate: Option<u32>,
    /// Time before a Messages API call's answer, after the message exists.
    delay: Duration,
    /// Time before a Messages API call reaches Twilio and the message exists: the
    /// network's and Twilio's own, which on loopback are nil.
    lag: Duration,
    /// Status callbacks go out in a scrambled order.
    shuffle_statuses: bool,
    /// One status callback in this many is lost (Twilio's are best effort); 0 loses none.
    lose_statuses: u32,
}

#[derive(Default)]
struct Inner {
    sent: Vec<Sent>,
    by_sid: HashMap<String, usize>,
    customers: HashMap<String, Customer>,
    /// How far the simulated clock is ahead of the real one.
    clock_offset: chrono::Duration,
    faults: Faults,
    /// Sender rate limiting, per sender: the current one-second window and its count.
    window: HashMap<String, (Instant, u32)>,
    api_calls: u64,
    /// Status callbacks due so far (to messages that asked for them), lost ones included.
    status_callbacks: u64,
    webhook_url: Option<String>,
    /// Customers' files, by `ME…` SID.
    media: HashMap<String, media::StoredMedia>,
    /// Short-lived storage URLs Twilio redirects media fetches to: token → (SID, until).
    storage_urls: HashMap<String, (String, Instant)>,
    /// Files Twilio fetched for the messages it sent, by message SID.
    received: HashMap<String, Vec<media::Received>>,
    /// Every customer message Twilio took, oldest first.
    inbound: Vec<Received>,
    /// Customer messages' SIDs → who wrote them.
    written_by: HashMap<String, String>,
    /// Typing-indicator calls accepted, in order.
    typing_calls: Vec<indicator::TypingCall>,
    /// Contents made through the Content API, by `HX…` SID.
    contents: HashMap<String, content::Content>,
}

pub struct Twilio {
    inner: Mutex<Inner>,
    options: TwilioOptions,
    http: reqwest::Client,
    /// This simulator's own base URL (what `https://api.twilio.com` is for Twilio).
    base: String,
}

impl Twilio {
    /// Whether `number` is one of the account's WhatsApp senders.
    fn is_sender(&self, number: &str) -> bool {
        self.options.sender == number || self.options.other_senders.iter().any(|s| s == number)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.lock().clock_offset
    }
}

/// A running simulator; stops when dropped.
pub struct TwilioSim {
    address: SocketAddr,
    options: TwilioOptions,
    stop: CancellationToken,
}

impl TwilioSim {
    pub async fn start() -> Self {
        Self::start_with(TwilioOptions::default()).await
    }

    pub async fn start_with(options: TwilioOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("bound address");
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, options.clone(), stop.clone()));
        Self {
            address,
            options,
            stop,
        }
    }

    /// The Messages API base (what `https://api.twilio.com` is in production).
    pub fn api_base(&self) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    pub fn options(&self) -> &TwilioOptions {
        &self.options
    }

    pub fn phone(&self) -> PhoneClient {
        PhoneClient::new(self.api_base())
    }
}

impl Drop for TwilioSim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves the simulator on `listener` until `stop` (the sandbox runs it this way).
pub async fn serve(
    listener: TcpListener,
    options: TwilioOptions,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let scheme = if options.tls { "https" } else { "http" };
    let base = format!("{scheme}://{}", listener.local_addr()?);
    let tls = options.tls;
    let twilio = Arc::new(Twilio {
        inner: Mutex::new(Inner {
            webhook_url: options.webhook_url.clone(),
            ..Inner::default()
        }),
        options,
        http: reqwest::Client::new(),
        base,
    });
    let app: Router = api::routes()
        .merge(customer::routes())
        .merge(media::routes())
        .merge(indicator::routes())
        .merge(content::routes())
        .with_state(twilio);
    if tls {
        return crate::tls::serve(listener, app, stop).await;
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// Twilio's message SIDs: `SM` (or `MM` with media) and 32 hex digits.
fn sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}
