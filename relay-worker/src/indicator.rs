//! WhatsApp's typing indicator and blue ticks, through Twilio's typing indicator
//! (docs/architecture.md §10): the call shows "typing…" on the customer's phone until a reply lands or
//! 25 s pass, and marks the message it names — and every earlier one — read. It is the
//! only read mechanism Twilio offers for WhatsApp.
//!
//! Both signals are worthless late, so they never wait behind messages: a session hands a
//! request to a bounded channel and goes on; a full channel drops it, and so does a
//! request that waited past its freshness. No retries: the next typing or read covers
//! what a lost call missed.

use crate::config::IndicatorSettings;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use waconnect_shared::storage::message_index::{Author, MessageIndex};
use waconnect_shared::twilio::account::TwilioAccount;

/// Requests waiting for a call; more are dropped (a late indicator is worthless).
const QUEUE: usize = 256;
/// Calls in flight at once.
const CONCURRENT: usize = 16;
/// WhatsApp's customer service window: no indicator for an older message.
const WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// When the customer's messages turn blue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadReceipts {
    Off,
    /// When the agent has read them (Connect's read receipt).
    OnRead,
    /// As soon as they are in the agent's chat.
    OnArrival,
}

impl FromStr for ReadReceipts {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "off" => Ok(Self::Off),
            "read" => Ok(Self::OnRead),
            "arrival" => Ok(Self::OnArrival),
            _ => Err(()),
        }
    }
}

/// Why an indicator is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Typing,
    Read,
}

impl Why {
    fn label(self) -> &'static str {
        match self {
            Self::Typing => "typing",
            Self::Read => "read",
        }
    }

    /// How long a request may wait before it is no longer worth making: a typing
    /// indicator after the agent stopped typing is noise; a read tick is still true.
    fn fresh_for(self) -> Duration {
        match self {
            Self::Typing => Duration::from_secs(5),
            Self::Read => Duration::from_secs(60),
        }
    }
}

/// The customer's message an indicator is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Twilio's SID, known where the message was relayed.
    Sid(String),
    /// The chat item Connect shows it as; the message index knows its SID.
    ChatItem(String),
}

struct Request {
    target: Target,
    why: Why,
    at: Instant,
}

/// The relay's indicator sender; without Twilio credentials it does nothing.
pub struct Indicators {
    tx: Option<mpsc::Sender<Request>>,
    settings: IndicatorSettings,
}

impl Indicators {
    pub fn start(
        settings: IndicatorSettings,
        account: Option<TwilioAccount>,
        index: Arc<dyn MessageIndex>,
        tls: &waconnect_shared::service::tls::TlsSettings,
        stop: CancellationToken,
    ) -> Self {
        let enabled = settings.typing || settings.read != ReadReceipts::Off;
        let tx = match account {
            Some(account) if enabled => {
                let (tx, rx) = mpsc::channel(QUEUE);
                let caller = Caller {
                    http: tls
                        .reqwest(reqwest::Client::builder())
                        .timeout(settings.timeout)
                        .connect_timeout(settings.timeout)
                        .build()
                        .expect("an HTTP client builds"),
                    url: format!("{}/v2/Indicators/Typing.json", settings.base),
                    account,
                    index,
                };
                tokio::spawn(run(rx, Arc::new(caller), stop));
                Some(tx)
            }
            None if enabled => {
                tracing::warn!(
                    "typing indicators and read receipts to WhatsApp are off: the relay has no Twilio credentials"
                );
                None
            }
            _ => None,
        };
        Self { tx, settings }
    }

    /// Whether agent typing is shown on WhatsApp.
    pub fn typing(&self) -> bool {
        self.tx.is_some() && self.settings.typing
    }

    /// When the customer's messages turn blue.
    pub fn read_receipts(&self) -> ReadReceipts {
        match self.tx {
            Some(_) => self.settings.read,
            None => ReadReceipts::Off,
        }
    }

    /// Asks for the indicator on `target`, unless too many are waiting already.
    pub fn show(&self, target: Target, why: Why) {
        let Some(tx) = &self.tx else { return };
        let request = Request {
            target,
            why,
            at: Instant::now(),
        };
        if tx.try_send(request).is_err() {
            outcome(why, "dropped");
        }
    }
}

fn outcome(why: Why, outcome: &'static str) {
    metrics::counter!("waconnect_relay_indicators_total", "kind" => why.label(), "outcome" => outcome)
        .increment(1);
}

struct Caller {
    http: reqwest::Client,
    url: String,
    account: TwilioAccount,
    index: Arc<dyn MessageIndex>,
}

async fn run(mut rx: mpsc::Receiver<Request>, caller: Arc<Caller>, stop: CancellationToken) {
    let mut calls = JoinSet::new();
    loop {
        while calls.try_join_next().is_some() {}
        if calls.len() >= CONCURRENT {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = calls.join_next() => continue,
            }
        }
        let request = tokio::select! {
            () = stop.cancelled() => return,
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let caller = caller.clone();
        calls.spawn(async move {
            let why = request.why;
            outcome(why, caller.call(request).await);
        });
    }
}

impl Caller {
    /// One indicator call; answers its outcome.
    async fn call(&self, request: Request) -> &'static str {
        if request.at.elapsed() > request.why.fresh_for() {
            return "late";
        }
        let sid = match request.target {
            Target::Sid(sid) => sid,
            Target::ChatItem(id) => match self.index.by_connect_id(&id).await {
                Ok(Some(m)) if m.author != Author::Customer => return "unknown",
                Ok(Some(m)) if chrono::Utc::now() - m.at > WINDOW => return "outside_window",
                Ok(Some(m)) => m.sid,
                Ok(None) => return "unknown",
                Err(e) => {
                    tracing::debug!(error = %e, "message index unavailable for an indicator");
                    return "error";
                }
            },
        };
        if request.at.elapsed() > request.why.fresh_for() {
            return "late";
        }
        let answer = self
            .http
            .post(&self.url)
            .basic_auth(&self.account.username, Some(self.account.password.expose()))
            .form(&[("channel", "whatsapp"), ("messageId", sid.as_str())])
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => "shown",
            Ok(r) => {
                tracing::debug!(
                    status = r.status().as_u16(),
                    kind = request.why.label(),
                    "Twilio refused a typing indicator"
                );
                "refused"
            }
            Err(e) => {
                tracing::debug!(error = %e.without_url(), kind = request.why.label(), "typing indicator call failed");
                "error"
            }
        }
    }
}
