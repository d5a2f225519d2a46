//! The relay-worker's configuration: the shared worker part, the Connect instance, and
//! how leases, sockets and retries behave.

use crate::attachment::{
    Accepted, CONNECT_DEFAULT_EXTENSIONS, CONNECT_DEFAULT_MAX_MB, MediaSettings,
};
use std::collections::BTreeSet;
use std::time::Duration;
use waconnect_shared::BusinessNumber;
use waconnect_shared::message::outbound::Template;
use waconnect_shared::service::aws::AwsConfig;
use waconnect_shared::service::config::{ConfigErrors, ConfigSource, Reader, WorkerConfig};
use waconnect_shared::service::routing::{ROUTING_FILE_VAR, Routing};
use waconnect_shared::twilio::account::TwilioAccount;

pub const OPS_BIND_VAR: &str = "WACONNECT_RELAY_OPS_BIND";

const MAX_CURSOR_FLUSH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
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
    /// Each business number's Connect instance, flow, texts and "call me" settings.
    pub routes: RelayRoutes,
    pub shutdown_grace: Duration,
    /// Customer files: fetching, converting, attaching.
    pub media: MediaSettings,
    /// How long an agent's file may hold what the agent sent after it (Connect still
    /// scanning it, or the relay failing to copy it), before the agent is told it was
    /// not sent.
    pub scan_wait: Duration,
    /// Typing and blue ticks on WhatsApp.
    pub indicators: IndicatorSettings,
    /// The API that starts conversations from the business side; off unless bound.
    pub api: Option<ApiSettings>,
    /// Customer messages whose webhooks never reached ingress, looked for at Twilio.
    pub catch_up: CatchUpSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpSettings {
    /// The stretches of time looked at, one after the other; zero turns the catch-up off.
    pub every: Duration,
    /// How long after a stretch ends it is looked at: Twilio's tries of its webhooks
    /// (15 s at most) are over by then.
    pub after: Duration,
    /// Ingress's `WACONNECT_ALLOW_NON_WHATSAPP`: which customers' messages are ours.
    pub allow_non_whatsapp: bool,
}

/// A stretch's oldest message is `every + after` old when it is looked at; both bounds
/// keep that well inside the inbound queue's 5-minute dedup window.
const MAX_CATCH_UP_EVERY: Duration = Duration::from_secs(120);
const MAX_CATCH_UP_AFTER: Duration = Duration::from_secs(60);

fn catch_up(r: &mut Reader<'_>) -> CatchUpSettings {
    let every = r.duration_or_zero("WACONNECT_RELAY_CATCH_UP_EVERY", Duration::from_secs(60));
    let after = r.duration("WACONNECT_RELAY_CATCH_UP_AFTER", Duration::from_secs(30));
    if every > MAX_CATCH_UP_EVERY || (!every.is_zero() && every.subsec_nanos() != 0) {
        r.error(
            "WACONNECT_RELAY_CATCH_UP_EVERY",
            "must be whole seconds, at most 2m (or 0 to turn the catch-up off): what it looks at must stay inside the inbound queue's 5-minute deduplication window",
        );
    }
    if after > MAX_CATCH_UP_AFTER {
        r.error("WACONNECT_RELAY_CATCH_UP_AFTER", "must be at most 60s");
    }
    CatchUpSettings {
        every,
        after,
        allow_non_whatsapp: r.flag("WACONNECT_ALLOW_NON_WHATSAPP", false),
    }
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
    /// Overrides the Connect API endpoint (VPC endpoint, or the simulator).
    pub endpoint: Option<String>,
    /// Overrides the Participant API endpoint; defaults to `endpoint` when that is set.
    pub participant_endpoint: Option<String>,
    pub chat_duration_minutes: i32,
}

/// What the relay does for one route (README "Several business numbers").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRoute {
    pub name: String,
    pub instance_id: String,
    pub contact_flow_id: String,
    /// Contact attributes every chat of this route starts with.
    pub attributes: std::collections::BTreeMap<String, String>,
    pub closing_text: Option<String>,
    /// Sent (a WhatsApp template, by ContentSid) when a reply failed with 63016 because
    /// the customer's 24-hour window had closed, asking them to write back.
    pub window_template: Option<Template>,
    pub call_me: Option<CallMe>,
}

/// The routes, in the routing's order.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayRoutes {
    routing: Routing,
    routes: Vec<RelayRoute>,
}

impl RelayRoutes {
    /// The route of the conversation on `business` (the default route for a record
    /// written before routing).
    pub fn of(&self, business: Option<&BusinessNumber>) -> &RelayRoute {
        let name = &self.routing.route_of(business).name;
        self.routes
            .iter()
            .find(|r| &r.name == name)
            .expect("a relay route for every route")
    }

    /// Whether `business` is the default route's: where records from before routing
    /// (keyed by the customer alone) are looked for.
    pub fn is_default(&self, business: &BusinessNumber) -> bool {
        self.routing
            .route_for(business)
            .is_some_and(|r| self.routing.is_default(r))
    }

    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// Every route, in the routing's order.
    pub fn all(&self) -> &[RelayRoute] {
        &self.routes
    }
}

/// Each route's settings, what it leaves out taken from the environment.
fn routes(r: &mut Reader<'_>) -> RelayRoutes {
    let routing = Routing::read(r);
    let from_file = routing.from_file();
    let env = |r: &Reader<'_>, name: &str| r.raw(name).map(str::to_owned);
    let instance_id = env(r, "WACONNECT_CONNECT_INSTANCE_ID");
    let contact_flow_id = env(r, "WACONNECT_CONNECT_CONTACT_FLOW_ID");
    let closing_text = env(r, "WACONNECT_RELAY_CLOSING_TEXT");
    let template_sid = env(r, "WACONNECT_WINDOW_TEMPLATE_SID");
    let template_variables = env(r, "WACONNECT_WINDOW_TEMPLATE_VARIABLES");
    let keywords = env(r, "WACONNECT_CALLME_KEYWORDS");
    let call_flow = env(r, "WACONNECT_CALLME_CONTACT_FLOW_ID");
    let call_source = env(r, "WACONNECT_CALLME_SOURCE_NUMBER");
    let cooldown = r.duration("WACONNECT_CALLME_COOLDOWN", Duration::from_secs(3600));
    let mut routes = Vec::new();
    for route in routing.routes() {
        // Name the variable when the environment's route lacks it, the file otherwise.
        let require =
            |r: &mut Reader<'_>, value: Option<&String>, var: &str, field: &str| match value {
                Some(v) => v.clone(),
                None if from_file => {
                    r.error(
                        ROUTING_FILE_VAR,
                        format!("route {:?}: {field} is required (or {var})", route.name),
                    );
                    String::new()
                }
                None => {
                    r.error(var, format!("is required (the {field})"));
                    String::new()
                }
            };
        let instance = require(
            r,
            route.instance_id.as_ref().or(instance_id.as_ref()),
            "WACONNECT_CONNECT_INSTANCE_ID",
            "Connect instance id",
        );
        let flow = require(
            r,
            route.contact_flow_id.as_ref().or(contact_flow_id.as_ref()),
            "WACONNECT_CONNECT_CONTACT_FLOW_ID",
            "inbound chat contact flow id",
        );
        let own = route.call_me.as_ref();
        let phrases = crate::callme::Phrases::parse(
            own.and_then(|c| c.keywords.as_deref())
                .or(keywords.as_deref())
                .unwrap_or_default(),
        );
        let call_me = if phrases.is_empty() {
            None
        } else {
            let flow = require(
                r,
                own.and_then(|c| c.contact_flow_id.as_ref())
                    .or(call_flow.as_ref()),
                "WACONNECT_CALLME_CONTACT_FLOW_ID",
                "outbound voice contact flow, required with call-me keywords",
            );
            Some(CallMe {
                phrases,
                contact_flow_id: flow,
                source_number: own
                    .and_then(|c| c.source_number.clone())
                    .or(call_source.clone()),
                cooldown: own.and_then(|c| c.cooldown).unwrap_or(cooldown),
            })
        };
        let template = route.window_template_sid.clone().or(template_sid.clone());
        routes.push(RelayRoute {
            name: route.name.clone(),
            instance_id: instance,
            contact_flow_id: flow,
            attributes: route.attributes.clone(),
            closing_text: route.closing_text.clone().or(closing_text.clone()),
            window_template: template.map(|content_sid| Template {
                content_sid,
                variables: route
                    .window_template_variables
                    .clone()
                    .or(template_variables.clone()),
            }),
            call_me,
        });
    }
    RelayRoutes { routing, routes }
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

impl RelayConfig {
    pub fn from_source(source: &ConfigSource) -> Result<Self, ConfigErrors> {
        let mut r = source.reader();
        let worker = WorkerConfig::read(&mut r, OPS_BIND_VAR, 9091);
        let aws = AwsConfig::read(&mut r, &worker.common.tls);
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
        let config = Self {
            worker,
            aws,
            connect: ConnectSettings {
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
            concurrency: r.positive("WACONNECT_RELAY_CONCURRENCY", 128, "a count"),
            visibility: r.duration("WACONNECT_RELAY_VISIBILITY", Duration::from_secs(60)),
            retry_after: r.duration("WACONNECT_RELAY_RETRY_AFTER", Duration::from_secs(2)),
            forward_system: r.flag("WACONNECT_RELAY_FORWARD_SYSTEM", false),
            forward_bot: r.flag("WACONNECT_RELAY_FORWARD_BOT", false),
            routes: routes(&mut r),
            shutdown_grace: r.duration("WACONNECT_RELAY_SHUTDOWN_GRACE", Duration::from_secs(10)),
            media: media(&mut r),
            scan_wait: r.duration("WACONNECT_RELAY_SCAN_WAIT", Duration::from_secs(120)),
            indicators: indicators(&mut r),
            api: api(&mut r),
            catch_up: catch_up(&mut r),
        };
        // A conversation the business starts needs the number it is started from: without
        // a routing file, the environment's sender (a request naming another is refused,
        // so a caller cannot make the sender try a number the account does not have).
        let routing = config.routes.routing();
        if config.api.is_some()
            && !routing.from_file()
            && routing.default_route().default_from().is_none()
        {
            r.error(
                "TWILIO_FROM",
                "is required with WACONNECT_RELAY_API_BIND: the WhatsApp number conversations are started from (or a routing file)",
            );
        }
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
        assert!(c.connect.endpoint.is_none() && c.routes.of(None).call_me.is_none());
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
        let phrases = c.routes.of(None).call_me.clone().unwrap().phrases;
        assert!(phrases.requested("please ring me"));
        assert!(phrases.requested("CALL-ME"));
        assert_eq!(
            c.connect.participant_endpoint.as_deref(),
            Some("http://127.0.0.1:9")
        );
    }

    #[test]
    fn routes_take_what_they_leave_out_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.toml");
        std::fs::write(
            &path,
            r#"
[[route]]
name = "acme"
numbers = ["whatsapp:+14155238886"]
closing_text = "Thanks from Acme"
[route.attributes]
brand = "acme"

[[route]]
name = "globex"
numbers = ["whatsapp:+442071838750"]
instance_id = "instance-globex"
contact_flow_id = "flow-globex"
[route.call_me]
keywords = "call me"
contact_flow_id = "voice-globex"
"#,
        )
        .unwrap();
        let mut pairs = MINIMAL.to_vec();
        pairs.push((ROUTING_FILE_VAR, path.to_str().unwrap()));
        pairs.push(("WACONNECT_RELAY_CLOSING_TEXT", "Bye"));
        let c = RelayConfig::from_source(&ConfigSource::from_pairs(pairs)).unwrap();
        let number = |n: &str| BusinessNumber::parse(n).unwrap();
        let acme = c.routes.of(Some(&number("whatsapp:+14155238886")));
        assert_eq!(
            (acme.instance_id.as_str(), acme.contact_flow_id.as_str()),
            ("instance", "flow")
        );
        assert_eq!(acme.closing_text.as_deref(), Some("Thanks from Acme"));
        assert_eq!(acme.attributes["brand"], "acme");
        assert!(acme.call_me.is_none());
        let globex = c.routes.of(Some(&number("whatsapp:+442071838750")));
        assert_eq!(globex.instance_id, "instance-globex");
        assert_eq!(globex.closing_text.as_deref(), Some("Bye"));
        assert_eq!(
            globex.call_me.as_ref().unwrap().contact_flow_id,
            "voice-globex"
        );
        // Records from before routing belong to the first route.
        assert_eq!(c.routes.of(None).name, "acme");
        assert!(c.routes.is_default(&number("whatsapp:+14155238886")));
        assert!(!c.routes.is_default(&number("whatsapp:+442071838750")));

        // Without the environment's instance, a route that names none is an error
        // naming the file.
        let err = RelayConfig::from_source(&ConfigSource::from_pairs([
            ("AWS_REGION", "eu-west-2"),
            ("WACONNECT_CONNECT_CONTACT_FLOW_ID", "flow"),
            (ROUTING_FILE_VAR, path.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert!(err.names(ROUTING_FILE_VAR), "{err}");
        assert!(err.to_string().contains("\"acme\""), "{err}");
    }

    #[test]
    fn the_api_needs_the_number_it_starts_conversations_from() {
        let mut pairs = MINIMAL.to_vec();
        pairs.extend([
            ("WACONNECT_RELAY_API_BIND", "127.0.0.1:9095"),
            ("WACONNECT_RELAY_API_TOKEN", "0123456789abcdef"),
        ]);
        let err = RelayConfig::from_source(&ConfigSource::from_pairs(pairs.clone())).unwrap_err();
        assert!(err.names("TWILIO_FROM"), "{err}");
        pairs.push(("TWILIO_FROM", "whatsapp:+14155238886"));
        let c = RelayConfig::from_source(&ConfigSource::from_pairs(pairs)).unwrap();
        assert!(c.api.is_some());
    }
}
