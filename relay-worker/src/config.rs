//! The relay-worker's configuration: the shared worker part, the Connect instance, and
//! how leases, sockets and retries behave.

use crate::attachment::{
    Accepted, CONNECT_DEFAULT_EXTENSIONS, CONNECT_DEFAULT_MAX_MB, MediaSettings,
};
use std::collections::BTreeSet;
use std::time::Duration;
use waconnect_shared::aws::AwsConfig;
use waconnect_shared::config::{ConfigErrors, ConfigSource, Reader, WorkerConfig};
use waconnect_shared::outbound::Template;
use waconnect_shared::twilio_account::TwilioAccount;

pub const OPS_BIND_VAR: &str = "WACONNECT_RELAY_OPS_BIND";

const MAX_CURSOR_FLUSH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub worker: WorkerConfig,
    pub aws: AwsConfig,
    pub connect: ConnectSettings,
    /// Names this process in the lease column; unique per process.
    pub worker_id: String,
    /// The name this worker keeps across restarts (the pod or host name), if it has one:
    /// its worker id is `<identity>/<random>`, and a restarted process takes the leases
    /// of its earlier life back at once instead of waiting for them to lapse.
    pub identity: Option<String>,
    pub lease: Duration,
    pub sweep_interval: Duration,
    pub sweep_batch: usize,
    pub heartbeat: Duration,
    /// How long the agent cursor may move in memory before it is written to the record.
    pub cursor_flush: Duration,
    /// A socket is replaced by a fresh one this often, well before Connect drops it.
    pub socket_refresh: Duration,
    /// Inbound messages handled at once (different customers).
    pub concurrency: usize,
    pub visibility: Duration,
    /// A failed inbound message is retried after this.
    pub retry_after: Duration,
    pub forward_system: bool,
    pub forward_bot: bool,
    pub closing_text: Option<String>,
    /// Sent (a WhatsApp template, by ContentSid) when a reply failed with 63016 because
    /// the customer's 24-hour window had closed, asking them to write back.
    pub window_template: Option<Template>,
    pub shutdown_grace: Duration,
    pub call_me: Option<CallMe>,
    /// Customer files: fetching, converting, attaching.
    pub media: MediaSettings,
    /// How long an agent's file Connect is still scanning may hold what the agent sent
    /// after it, before the agent is told it was not sent.
    pub scan_wait: Duration,
    /// Typing and blue ticks on WhatsApp.
    pub indicators: IndicatorSettings,
    /// The WhatsApp sender (`TWILIO_FROM`), when the relay is told it: an outreach naming
    /// another business number is refused.
    pub business_number: Option<String>,
    /// The API that starts conversations from the business side; off unless bound.
    pub api: Option<ApiSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    pub bind: std::net::SocketAddr,
    /// The bearer token callers present (a secret: at least 16 characters).
    pub token: waconnect_shared::Secret,
}

fn api(r: &mut Reader<'_>) -> Option<ApiSettings> {
    let bind = r.raw("WACONNECT_RELAY_API_BIND")?;
    let bind = match bind.parse() {
        Ok(b) => b,
        Err(_) => {
            r.error(
                "WACONNECT_RELAY_API_BIND",
                format!("expected host:port, got {bind:?}"),
            );
            return None;
        }
    };
    let token = r.secret("WACONNECT_RELAY_API_TOKEN");
    match token {
        Some(t) if t.expose().chars().count() >= 16 => Some(ApiSettings { bind, token: t }),
        _ => {
            r.error(
                "WACONNECT_RELAY_API_TOKEN",
                "is required with WACONNECT_RELAY_API_BIND: a secret of at least 16 characters",
            );
            None
        }
    }
}

/// Twilio's typing indicator (README "Typing and read receipts").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndicatorSettings {
    /// The agent typing shows as "typing…" on the customer's phone.
    pub typing: bool,
    /// When the customer's messages turn blue.
    pub read: crate::indicator::ReadReceipts,
    /// Twilio's Messaging v2 API (`https://messaging.twilio.com`).
    pub base: String,
    pub timeout: Duration,
}

fn indicators(r: &mut Reader<'_>) -> IndicatorSettings {
    IndicatorSettings {
        typing: r.flag("WACONNECT_WHATSAPP_TYPING", true),
        read: r.optional(
            "WACONNECT_WHATSAPP_READ_RECEIPTS",
            crate::indicator::ReadReceipts::OnRead,
            "off, read or arrival",
        ),
        base: url(r, "WACONNECT_TWILIO_MESSAGING_BASE")
            .unwrap_or_else(|| "https://messaging.twilio.com".to_owned()),
        timeout: Duration::from_secs(5),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSettings {
    pub instance_id: String,
    pub contact_flow_id: String,
    /// Overrides the Connect API endpoint (VPC endpoint, or the simulator).
    pub endpoint: Option<String>,
    /// Overrides the Participant API endpoint; defaults to `endpoint` when that is set.
    pub participant_endpoint: Option<String>,
    pub chat_duration_minutes: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallMe {
    /// Lowercase, without whitespace.
    /// What a customer writes to ask for a call (see [`crate::callme`]).
    pub phrases: crate::callme::Phrases,
    pub contact_flow_id: String,
    pub source_number: Option<String>,
    pub cooldown: Duration,
}

fn url(r: &mut Reader<'_>, name: &str) -> Option<String> {
    let raw = r.raw(name)?;
    match url::Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {
            Some(raw.trim_end_matches('/').to_owned())
        }
        _ => {
            r.error(name, format!("expected an http(s) URL, got {raw:?}"));
            None
        }
    }
}

/// What the relay needs for customer files (README "Media").
fn media(r: &mut Reader<'_>) -> MediaSettings {
    let twilio = TwilioAccount::read(r, false);
    let twilio_api_base =
        url(r, "WACONNECT_TWILIO_API_BASE").unwrap_or_else(|| "https://api.twilio.com".to_owned());
    let extensions: BTreeSet<String> = r
        .string(
            "WACONNECT_CONNECT_ATTACHMENT_TYPES",
            CONNECT_DEFAULT_EXTENSIONS,
        )
        .split(',')
        .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect();
    if extensions
        .iter()
        .any(|e| e.len() > 16 || !e.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        r.error(
            "WACONNECT_CONNECT_ATTACHMENT_TYPES",
            "expected file extensions separated by commas, e.g. jpg,png,pdf",
        );
    }
    let max_mb: u64 = r.optional(
        "WACONNECT_CONNECT_ATTACHMENT_MAX_MB",
        CONNECT_DEFAULT_MAX_MB,
        "megabytes (1-100)",
    );
    if !(1..=100).contains(&max_mb) {
        r.error(
            "WACONNECT_CONNECT_ATTACHMENT_MAX_MB",
            "must be between 1 and 100, as Connect allows",
        );
    }
    // `off` turns conversions off; a path that is not there is a mistake worth stopping
    // for; ffmpeg missing from the PATH only turns them off, with a warning at start.
    let ffmpeg = match r.raw("WACONNECT_FFMPEG") {
        Some("off") => None,
        Some(path) => {
            let found = crate::convert::find_ffmpeg(Some(path));
            if found.is_none() {
                r.error(
                    "WACONNECT_FFMPEG",
                    format!("{path:?} is not there (set the path to ffmpeg, or `off`)"),
                );
            }
            found
        }
        None => crate::convert::find_ffmpeg(None),
    };
    let spool_dir = r
        .raw("WACONNECT_MEDIA_SPOOL_DIR")
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    if !spool_dir.is_dir() {
        r.error(
            "WACONNECT_MEDIA_SPOOL_DIR",
            format!("{} is not a directory", spool_dir.display()),
        );
    }
    MediaSettings {
        twilio,
        twilio_api_base,
        twilio_content_base: url(r, "WACONNECT_TWILIO_CONTENT_BASE")
            .unwrap_or_else(|| "https://content.twilio.com".to_owned()),
        accepted: Accepted {
            extensions,
            max_bytes: max_mb * 1024 * 1024,
        },
        ffmpeg,
        convert_timeout: r.duration("WACONNECT_MEDIA_CONVERT_TIMEOUT", Duration::from_secs(60)),
        spool_dir,
        delete_from_twilio: r.flag("WACONNECT_TWILIO_DELETE_MEDIA", false),
        transfer_timeout: r.duration("WACONNECT_MEDIA_TRANSFER_TIMEOUT", Duration::from_secs(120)),
    }
}

/// Keywords compare without case or whitespace: "Call Me" matches "callme".
impl RelayConfig {
    pub fn from_source(source: &ConfigSource) -> Result<Self, ConfigErrors> {
        let mut r = source.reader();
        let worker = WorkerConfig::read(&mut r, OPS_BIND_VAR, 9091);
        let aws = AwsConfig::read(&mut r);
        let instance_id = r
            .required("WACONNECT_CONNECT_INSTANCE_ID", "the Connect instance id")
            .unwrap_or_default();
        let contact_flow_id = r
            .required(
                "WACONNECT_CONNECT_CONTACT_FLOW_ID",
                "the inbound chat contact flow id",
            )
            .unwrap_or_default();
        let endpoint = url(&mut r, "WACONNECT_CONNECT_ENDPOINT");
        let participant_endpoint =
            url(&mut r, "WACONNECT_CONNECT_PARTICIPANT_ENDPOINT").or_else(|| endpoint.clone());
        let chat_duration_minutes = r.optional(
            "WACONNECT_CHAT_DURATION_MINUTES",
            1500,
            "minutes (60-10080)",
        );
        if !(60..=10080).contains(&chat_duration_minutes) {
            r.error(
                "WACONNECT_CHAT_DURATION_MINUTES",
                "must be between 60 and 10080",
            );
        }
        // Kubernetes names a pod's containers' HOSTNAME after the pod, which a container
        // restarted after a crash keeps. Elsewhere several relays may share a host (and
        // some shells export HOSTNAME), so only there is it the default.
        let in_kubernetes = r.raw("KUBERNETES_SERVICE_HOST").is_some();
        let identity = r
            .raw("WACONNECT_RELAY_IDENTITY")
            .or(r.raw("HOSTNAME").filter(|_| in_kubernetes))
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(str::to_owned);
        let incarnation = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let worker_id = r.string(
            "WACONNECT_RELAY_WORKER_ID",
            &match &identity {
                Some(identity) => format!("{identity}/{incarnation}"),
                None => format!("relay-{}-{incarnation}", std::process::id()),
            },
        );
        if let Some(identity) = &identity
            && !worker_id.starts_with(&format!("{identity}/"))
        {
            r.error(
                "WACONNECT_RELAY_WORKER_ID",
                format!("must start with \"{identity}/\" (WACONNECT_RELAY_IDENTITY or HOSTNAME), or be unset"),
            );
        }
        let lease = r.duration("WACONNECT_RELAY_LEASE", Duration::from_secs(30));
        let heartbeat = r.duration("WACONNECT_RELAY_HEARTBEAT", Duration::from_secs(10));
        if heartbeat * 2 > lease {
            r.error(
                "WACONNECT_RELAY_LEASE",
                "must be at least twice WACONNECT_RELAY_HEARTBEAT",
            );
        }
        let cursor_flush = r.duration("WACONNECT_RELAY_CURSOR_FLUSH", Duration::from_secs(5));
        if cursor_flush > MAX_CURSOR_FLUSH {
            r.error(
                "WACONNECT_RELAY_CURSOR_FLUSH",
                "must be at most 60s: what a crash re-forwards must stay well inside the outbound queue's 5-minute deduplication window",
            );
        }
        let phrases =
            crate::callme::Phrases::parse(r.raw("WACONNECT_CALLME_KEYWORDS").unwrap_or_default());
        let call_me = if phrases.is_empty() {
            None
        } else {
            let flow = r.required::<String>(
                "WACONNECT_CALLME_CONTACT_FLOW_ID",
                "the outbound voice contact flow, required with WACONNECT_CALLME_KEYWORDS",
            );
            Some(CallMe {
                phrases,
                contact_flow_id: flow.unwrap_or_default(),
                source_number: r.raw("WACONNECT_CALLME_SOURCE_NUMBER").map(str::to_owned),
                cooldown: r.duration("WACONNECT_CALLME_COOLDOWN", Duration::from_secs(3600)),
            })
        };
        let config = Self {
            worker,
            aws,
            connect: ConnectSettings {
                instance_id,
                contact_flow_id,
                endpoint,
                participant_endpoint,
                chat_duration_minutes,
            },
            worker_id,
            identity,
            lease,
            sweep_interval: r.duration("WACONNECT_RELAY_SWEEP_INTERVAL", Duration::from_secs(5)),
            sweep_batch: r.positive("WACONNECT_RELAY_SWEEP_BATCH", 50, "a count"),
            heartbeat,
            cursor_flush,
            socket_refresh: r.duration(
                "WACONNECT_RELAY_SOCKET_REFRESH",
                Duration::from_secs(59 * 60),
            ),
            concurrency: r.positive("WACONNECT_RELAY_CONCURRENCY", 32, "a count"),
            visibility: r.duration("WACONNECT_RELAY_VISIBILITY", Duration::from_secs(60)),
            retry_after: r.duration("WACONNECT_RELAY_RETRY_AFTER", Duration::from_secs(2)),
            forward_system: r.flag("WACONNECT_RELAY_FORWARD_SYSTEM", false),
            forward_bot: r.flag("WACONNECT_RELAY_FORWARD_BOT", false),
            closing_text: r.raw("WACONNECT_RELAY_CLOSING_TEXT").map(str::to_owned),
            window_template: r.raw("WACONNECT_WINDOW_TEMPLATE_SID").map(|sid| Template {
                content_sid: sid.to_owned(),
                variables: r
                    .raw("WACONNECT_WINDOW_TEMPLATE_VARIABLES")
                    .map(str::to_owned),
            }),
            shutdown_grace: r.duration("WACONNECT_RELAY_SHUTDOWN_GRACE", Duration::from_secs(10)),
            call_me,
            media: media(&mut r),
            scan_wait: r.duration("WACONNECT_RELAY_SCAN_WAIT", Duration::from_secs(120)),
            indicators: indicators(&mut r),
            business_number: r.raw("TWILIO_FROM").map(str::to_owned),
            api: api(&mut r),
        };
        r.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: [(&str, &str); 3] = [
        ("AWS_REGION", "eu-west-2"),
        ("WACONNECT_CONNECT_INSTANCE_ID", "instance"),
        ("WACONNECT_CONNECT_CONTACT_FLOW_ID", "flow"),
    ];

    #[test]
    fn defaults_with_the_minimum() {
        let c = RelayConfig::from_source(&ConfigSource::from_pairs(MINIMAL)).unwrap();
        assert_eq!(c.lease, Duration::from_secs(30));
        assert_eq!(c.heartbeat, Duration::from_secs(10));
        assert_eq!(c.connect.chat_duration_minutes, 1500);
        assert!(c.connect.endpoint.is_none() && c.call_me.is_none());
        assert!(c.worker_id.starts_with("relay-"));
        assert_eq!(c.identity, None);
    }

    #[test]
    fn a_stable_identity_names_every_incarnation() {
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("HOSTNAME", "relay-7d9f-0"));
        // Outside Kubernetes a host name says nothing about which relay this is.
        let plain = RelayConfig::from_source(&ConfigSource::from_pairs(pairs.clone())).unwrap();
        assert_eq!(plain.identity, None);
        pairs.push(("KUBERNETES_SERVICE_HOST", "10.96.0.1"));
        let a = RelayConfig::from_source(&ConfigSource::from_pairs(pairs.clone())).unwrap();
        let b = RelayConfig::from_source(&ConfigSource::from_pairs(pairs.clone())).unwrap();
        assert_eq!(a.identity.as_deref(), Some("relay-7d9f-0"));
        assert!(a.worker_id.starts_with("relay-7d9f-0/"));
        assert_ne!(a.worker_id, b.worker_id, "incarnations share a lease owner");
        pairs.push(("WACONNECT_RELAY_WORKER_ID", "someone-else"));
        let err = RelayConfig::from_source(&ConfigSource::from_pairs(pairs)).unwrap_err();
        assert!(err.names("WACONNECT_RELAY_WORKER_ID"), "{err}");
    }

    #[test]
    fn every_problem_is_named() {
        let err = RelayConfig::from_source(&ConfigSource::from_pairs([
            ("WACONNECT_CONNECT_ENDPOINT", "not a url"),
            ("WACONNECT_RELAY_LEASE", "5s"),
            ("WACONNECT_RELAY_CURSOR_FLUSH", "5m"),
            ("WACONNECT_CALLME_KEYWORDS", "Call Me, ring me"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
        ]))
        .unwrap_err();
        for var in [
            "AWS_REGION",
            "WACONNECT_CONNECT_INSTANCE_ID",
            "WACONNECT_CONNECT_CONTACT_FLOW_ID",
            "WACONNECT_CONNECT_ENDPOINT",
            "WACONNECT_RELAY_LEASE",
            "WACONNECT_RELAY_CURSOR_FLUSH",
            "WACONNECT_CALLME_CONTACT_FLOW_ID",
            "AWS_SECRET_ACCESS_KEY",
        ] {
            assert!(err.names(var), "{var} not named in {err}");
        }
    }

    #[test]
    fn keywords_ignore_case_and_spaces_and_the_participant_endpoint_follows() {
        let mut pairs = MINIMAL.to_vec();
        pairs.extend([
            ("WACONNECT_CALLME_KEYWORDS", "Call Me, RING  me"),
            ("WACONNECT_CALLME_CONTACT_FLOW_ID", "voice"),
            ("WACONNECT_CONNECT_ENDPOINT", "http://127.0.0.1:9/"),
        ]);
        let c = RelayConfig::from_source(&ConfigSource::from_pairs(pairs)).unwrap();
        let phrases = c.call_me.unwrap().phrases;
        assert!(phrases.requested("please ring me"));
        assert!(phrases.requested("CALL-ME"));
        assert_eq!(
            c.connect.participant_endpoint.as_deref(),
            Some("http://127.0.0.1:9")
        );
    }
}
