//! The outbound-sender's configuration: the Twilio account and sender, where status
//! callbacks go, and how fast and how stubbornly to send.

use std::time::Duration;
use waconnect_shared::service::config::{ConfigErrors, ConfigSource, WorkerConfig};
use waconnect_shared::service::routing::Routing;
use waconnect_shared::twilio::account::TwilioAccount;
use waconnect_shared::{BusinessNumber, Secret};

pub const OPS_BIND_VAR: &str = "WACONNECT_SENDER_OPS_BIND";

#[derive(Debug, Clone, PartialEq)]
pub struct SenderConfig {
    pub worker: WorkerConfig,
    pub twilio: TwilioSettings,
    /// Messages per second to Twilio from the whole fleet for each route's sender
    /// (WhatsApp's default: 80) unless the route says; each process takes its share.
    pub rate: f64,
    /// This process's name on the sender's roster; unique per process.
    pub member_id: String,
    pub concurrency: usize,
    pub visibility: Duration,
    pub timeout: Duration,
    pub max_backoff: Duration,
    /// A message Twilio still has not taken this long after the agent wrote it is given
    /// up, and the agent told.
    pub give_up_after: Duration,
    /// How long a sent part may hold the customer's next one until Twilio has handed it
    /// to WhatsApp (0: do not wait).
    pub confirm_wait: Duration,
    /// How long the URL Twilio gets for an agent's file works.
    pub media_url_ttl: Duration,
    pub menus: MenuSettings,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TwilioSettings {
    /// `https://api.twilio.com` in production.
    pub api_base: String,
    pub account_sid: String,
    /// Basic auth user: the account SID, or an API key SID.
    pub username: String,
    pub password: Secret,
    /// Which number or Messaging Service each conversation's replies go out from.
    pub routing: Routing,
    /// Ingress's public status-callback URL.
    pub status_callback_url: Option<String>,
    /// `https://content.twilio.com` in production: menus become WhatsApp lists there.
    pub content_base: String,
}

/// How menus (Connect's interactive messages) reach WhatsApp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuSettings {
    /// As lists and quick-reply buttons (Twilio's Content API); else numbered text only.
    pub buttons: bool,
    /// The label of the button that opens a list (WhatsApp: at most 20 characters).
    pub list_button: String,
}

impl SenderConfig {
    pub fn from_source(source: &ConfigSource) -> Result<Self, ConfigErrors> {
        let mut r = source.reader();
        let worker = WorkerConfig::read(&mut r, OPS_BIND_VAR, 9092);
        let account = TwilioAccount::read(&mut r, true).unwrap_or_else(|| TwilioAccount {
            account_sid: String::new(),
            username: String::new(),
            password: Secret::default(),
        });
        let routing = Routing::read(&mut r);
        // A routing file names each route's numbers; without one, the environment must.
        let from = r.raw("TWILIO_FROM");
        if let Some(from) = from
            && BusinessNumber::parse(from).is_err()
        {
            r.error(
                "TWILIO_FROM",
                format!("expected whatsapp:+<E.164>, got {from:?}"),
            );
        }
        if !routing.from_file() && from.is_none() && r.raw("TWILIO_MESSAGING_SERVICE_SID").is_none()
        {
            r.error(
                "TWILIO_FROM",
                "is required (the WhatsApp sender, whatsapp:+<E.164>), or TWILIO_MESSAGING_SERVICE_SID, or a routing file (WACONNECT_ROUTING_FILE)",
            );
        }
        let api_base = r.string("WACONNECT_TWILIO_API_BASE", "https://api.twilio.com");
        if url::Url::parse(&api_base).is_err() {
            r.error(
                "WACONNECT_TWILIO_API_BASE",
                format!("expected a URL, got {api_base:?}"),
            );
        }
        let content_base = r.string(
            "WACONNECT_TWILIO_CONTENT_BASE",
            "https://content.twilio.com",
        );
        if url::Url::parse(&content_base).is_err() {
            r.error(
                "WACONNECT_TWILIO_CONTENT_BASE",
                format!("expected a URL, got {content_base:?}"),
            );
        }
        let buttons = match r.string("WACONNECT_WHATSAPP_MENUS", "buttons").as_str() {
            "buttons" => true,
            "text" => false,
            other => {
                r.error(
                    "WACONNECT_WHATSAPP_MENUS",
                    format!("expected buttons or text, got {other:?}"),
                );
                true
            }
        };
        let list_button = r.string("WACONNECT_WHATSAPP_MENU_BUTTON", "Choose");
        if list_button.trim().is_empty() || list_button.chars().count() > 20 {
            r.error(
                "WACONNECT_WHATSAPP_MENU_BUTTON",
                "must be 1 to 20 characters (WhatsApp's limit for a list's button)",
            );
        }
        let status_callback_url = r.raw("WACONNECT_STATUS_CALLBACK_URL").map(str::to_owned);
        if let Some(u) = &status_callback_url
            && url::Url::parse(u).is_err()
        {
            r.error(
                "WACONNECT_STATUS_CALLBACK_URL",
                format!("expected a URL, got {u:?}"),
            );
        }
        let config = Self {
            worker,
            twilio: TwilioSettings {
                api_base: api_base.trim_end_matches('/').to_owned(),
                account_sid: account.account_sid,
                username: account.username,
                password: account.password,
                routing,
                status_callback_url,
                content_base: content_base.trim_end_matches('/').to_owned(),
            },
            rate: r.positive("WACONNECT_SENDER_RATE", 80.0, "messages per second"),
            member_id: r.string(
                "WACONNECT_SENDER_ID",
                &format!(
                    "sender-{}-{}",
                    std::process::id(),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
            ),
            // A message in flight mostly waits for Twilio to hand its part to WhatsApp
            // (the confirm wait), which is cheap: 32 capped a sender at 32 parts per
            // handover time (the capacity sweep carried 200 msg/s; 256 carries 500).
            concurrency: r.positive("WACONNECT_SENDER_CONCURRENCY", 256, "a count"),
            visibility: r.duration("WACONNECT_SENDER_VISIBILITY", Duration::from_secs(30)),
            timeout: r.duration("WACONNECT_SENDER_TIMEOUT", Duration::from_secs(10)),
            max_backoff: r.duration("WACONNECT_SENDER_MAX_BACKOFF", Duration::from_secs(30)),
            give_up_after: r.duration(
                "WACONNECT_SENDER_GIVE_UP_AFTER",
                Duration::from_secs(24 * 3600),
            ),
            confirm_wait: r
                .duration_or_zero("WACONNECT_SENDER_CONFIRM_WAIT", Duration::from_secs(10)),
            media_url_ttl: r.duration("WACONNECT_MEDIA_URL_TTL", Duration::from_secs(3600)),
            menus: MenuSettings {
                buttons,
                list_button,
            },
            shutdown_grace: r.duration("WACONNECT_SENDER_SHUTDOWN_GRACE", Duration::from_secs(10)),
        };
        r.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_an_account_credentials_and_a_sender() {
        let err =
            SenderConfig::from_source(&ConfigSource::from_pairs([("WACONNECT_SENDER_RATE", "0")]))
                .unwrap_err();
        for var in [
            "TWILIO_ACCOUNT_SID",
            "TWILIO_AUTH_TOKEN",
            "TWILIO_FROM",
            "WACONNECT_SENDER_RATE",
        ] {
            assert!(err.names(var), "{var} not named in {err}");
        }
        let ok = SenderConfig::from_source(&ConfigSource::from_pairs([
            ("TWILIO_ACCOUNT_SID", "AC1"),
            ("TWILIO_API_KEY_SID", "SK1"),
            ("TWILIO_API_KEY_SECRET", "s"),
            ("TWILIO_FROM", "whatsapp:+14155238886"),
        ]))
        .unwrap();
        assert_eq!(ok.twilio.username, "SK1");
        assert_eq!(ok.rate, 80.0);
        assert!(!format!("{ok:?}").contains("\"s\""));
    }
}
