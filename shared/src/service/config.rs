//! Typed configuration from environment variables and an optional dotenv-style file
//! (`WACONNECT_CONFIG_FILE`; the environment wins over the file). Every service validates
//! all of its variables at start and refuses to start with a message naming each bad one.

use crate::service::secret::Secret;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  {}: {}", e.variable, e.problem)?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn names(&self, variable: &str) -> bool {
        self.0.iter().any(|e| e.variable == variable)
    }
}

/// Where variables come from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    vars: HashMap<String, String>,
}

impl ConfigSource {
    /// The process environment, over `WACONNECT_CONFIG_FILE` when that is set.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::layered(std::env::vars())
    }

    /// `env` over the file it names in `WACONNECT_CONFIG_FILE`, if any.
    pub fn layered(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigErrors> {
        let env: HashMap<String, String> = env.into_iter().collect();
        let mut vars = HashMap::new();
        if let Some(path) = env.get("WACONNECT_CONFIG_FILE").filter(|p| !p.is_empty()) {
            let error = |problem: String| {
                ConfigErrors(vec![ConfigError {
                    variable: "WACONNECT_CONFIG_FILE".into(),
                    problem,
                }])
            };
            let iter = dotenvy::from_path_iter(path)
                .map_err(|e| error(format!("cannot read {path}: {e}")))?;
            for item in iter {
                let (k, v) = item.map_err(|e| error(format!("{path}: {e}")))?;
                vars.insert(k, v);
            }
        }
        vars.extend(env);
        Ok(Self { vars })
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub fn reader(&self) -> Reader<'_> {
        Reader {
            source: self,
            errors: Vec::new(),
        }
    }
}

/// Reads variables, recording every problem instead of stopping at the first.
pub struct Reader<'a> {
    source: &'a ConfigSource,
    errors: Vec<ConfigError>,
}

impl<'a> Reader<'a> {
    /// A variable's value; empty counts as unset.
    pub fn raw(&self, name: &str) -> Option<&'a str> {
        self.source
            .vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn error(&mut self, name: &str, problem: impl Into<String>) {
        let error = ConfigError {
            variable: name.to_owned(),
            problem: problem.into(),
        };
        // Parts of a service that read the same variable report its problem once.
        if !self.errors.contains(&error) {
            self.errors.push(error);
        }
    }

    fn parse<T: FromStr>(&mut self, name: &str, raw: &str, expected: &str) -> Option<T> {
        match raw.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(name, format!("expected {expected}, got {raw:?}"));
                None
            }
        }
    }

    pub fn required<T: FromStr>(&mut self, name: &str, expected: &str) -> Option<T> {
        match self.raw(name) {
            Some(raw) => self.parse(name, raw, expected),
            None => {
                self.error(name, format!("is required ({expected})"));
                None
            }
        }
    }

    pub fn optional<T: FromStr>(&mut self, name: &str, default: T, expected: &str) -> T {
        match self.raw(name) {
            Some(raw) => self.parse(name, raw, expected).unwrap_or(default),
            None => default,
        }
    }

    pub fn string(&mut self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or(default).to_owned()
    }

    pub fn secret(&mut self, name: &str) -> Option<Secret> {
        self.raw(name).map(Secret::new)
    }

    pub fn flag(&mut self, name: &str, default: bool) -> bool {
        match self.raw(name).map(str::to_ascii_lowercase).as_deref() {
            None => default,
            Some("true" | "1" | "yes" | "on") => true,
            Some("false" | "0" | "no" | "off") => false,
            Some(other) => {
                let problem = format!("expected true or false, got {other:?}");
                self.error(name, problem);
                default
            }
        }
    }

    /// A duration such as `500ms`, `30s`, `5m`.
    pub fn duration(&mut self, name: &str, default: Duration) -> Duration {
        self.duration_from(name, default, Duration::from_nanos(1))
    }

    /// A duration where zero means "off".
    pub fn duration_or_zero(&mut self, name: &str, default: Duration) -> Duration {
        self.duration_from(name, default, Duration::ZERO)
    }

    fn duration_from(&mut self, name: &str, default: Duration, least: Duration) -> Duration {
        let Some(raw) = self.raw(name) else {
            return default;
        };
        match humantime::parse_duration(raw) {
            Ok(d) if d >= least => d,
            _ => {
                self.error(
                    name,
                    format!("expected a duration like 500ms, 30s or 5m, got {raw:?}"),
                );
                default
            }
        }
    }

    pub fn positive<T: FromStr + PartialOrd + Default + Copy>(
        &mut self,
        name: &str,
        default: T,
        expected: &str,
    ) -> T {
        let v = self.optional(name, default, expected);
        if v <= T::default() {
            self.error(name, format!("expected {expected} greater than zero"));
            return default;
        }
        v
    }

    /// Ok when no problem was recorded.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Which engine holds the queues and the conversation table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// One SQLite file shared by the processes of one host.
    Embedded(EmbeddedConfig),
    /// SQS FIFO queues and a DynamoDB table, for a fleet.
    Aws(AwsStorageConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsStorageConfig {
    pub aws: crate::service::aws::AwsConfig,
    /// Overrides the SQS and DynamoDB endpoints (VPC endpoints, or moto in tests).
    pub endpoint: Option<String>,
    pub inbound_queue_url: String,
    pub outbound_queue_url: String,
    pub table: String,
    /// The S3 bucket for the agent's files (`WACONNECT_MEDIA_BUCKET`); without it they
    /// reach the customer as a notice only.
    pub media_bucket: Option<String>,
    /// Bound on one SQS or DynamoDB request (each attempt; three attempts at most), so a
    /// stalled call cannot hold a lease renewal or a message past its deadline.
    pub call_timeout: Duration,
}

/// The default bound on one SQS or DynamoDB request.
pub const AWS_CALL_TIMEOUT: Duration = Duration::from_secs(5);

impl AwsStorageConfig {
    pub fn read(r: &mut Reader<'_>, tls: &crate::service::tls::TlsSettings) -> Self {
        let aws = crate::service::aws::AwsConfig::read(r, tls);
        let url = |r: &mut Reader<'_>, name: &str, required: Option<&str>| match (
            r.raw(name).map(str::to_owned),
            required,
        ) {
            (Some(raw), _) => match url::Url::parse(&raw) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(raw),
                _ => {
                    r.error(name, format!("expected an http(s) URL, got {raw:?}"));
                    None
                }
            },
            (None, Some(what)) => {
                r.error(name, format!("is required ({what})"));
                None
            }
            (None, None) => None,
        };
        let endpoint = url(r, "WACONNECT_AWS_ENDPOINT_URL", None);
        let inbound_queue_url = url(
            r,
            "WACONNECT_INBOUND_QUEUE_URL",
            Some("the inbound SQS FIFO queue's URL"),
        );
        let outbound_queue_url = url(
            r,
            "WACONNECT_OUTBOUND_QUEUE_URL",
            Some("the outbound SQS FIFO queue's URL"),
        );
        let table = r.raw("WACONNECT_TABLE").map(str::to_owned);
        if table.is_none() {
            r.error("WACONNECT_TABLE", "is required (the DynamoDB table's name)");
        }
        Self {
            aws,
            endpoint,
            inbound_queue_url: inbound_queue_url.unwrap_or_default(),
            outbound_queue_url: outbound_queue_url.unwrap_or_default(),
            table: table.unwrap_or_default(),
            media_bucket: r.raw("WACONNECT_MEDIA_BUCKET").map(str::to_owned),
            call_timeout: r.duration("WACONNECT_AWS_CALL_TIMEOUT", AWS_CALL_TIMEOUT),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// The agent's files for Twilio, served by ingress (default: `<database>-media`).
    pub media_dir: PathBuf,
    /// Signs media URLs; by default a key the media directory keeps.
    pub media_signing_key: Option<crate::Secret>,
    /// Ingress's public base URL, which media URLs start with.
    pub public_base_url: Option<String>,
}

/// SQLite's `synchronous` setting: `Full` makes every acknowledged write survive power
/// loss; `Normal` survives a process crash only, and is faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

impl FromStr for Synchronous {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            _ => Err(()),
        }
    }
}

/// Names and policies of the two queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuesConfig {
    pub inbound: String,
    pub outbound: String,
    /// Tries a message gets: failed attempts, and receives without any outcome (the
    /// embedded engine's crash backstop; SQS's is the redrive policy's maxReceiveCount).
    pub limits: crate::storage::queue::Limits,
    /// How often queue depth is sampled into the metrics.
    pub depth_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON, or human-readable when stdout is a terminal.
    Auto,
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter.
    pub log_filter: String,
    /// Where each message's hops go as OpenTelemetry spans; none unless configured.
    pub traces: Option<TracesConfig>,
}

/// OTLP export of traces, configured with OpenTelemetry's own variables so a team's
/// usual settings apply. Only OTLP over HTTP with protobuf is spoken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracesConfig {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub endpoint: String,
    /// Sent with every export (a collector's API key, say): secrets, never logged.
    pub headers: Vec<(String, Secret)>,
    /// `service.name` of the spans; the service's own name unless set.
    pub service_name: Option<String>,
    /// The CAs an https collector is checked against (the process's own).
    pub tls: crate::service::tls::TlsSettings,
}

impl TracesConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as written) or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (+ `/v1/traces`); neither, or `OTEL_SDK_DISABLED=true`, means no export.
    fn read(r: &mut Reader<'_>, tls: &crate::service::tls::TlsSettings) -> Option<Self> {
        if r.flag("OTEL_SDK_DISABLED", false) {
            return None;
        }
        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            if let Some(protocol) = r.raw(name)
                && protocol != "http/protobuf"
            {
                r.error(
                    name,
                    format!("only http/protobuf is supported, not {protocol:?}"),
                );
            }
        }
        let (name, endpoint) = match (
            r.raw("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            r.raw("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(full), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", full.to_owned()),
            (None, Some(base)) => (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", base.trim_end_matches('/')),
            ),
            (None, None) => return None,
        };
        match url::Url::parse(&endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                r.error(name, format!("expected an http(s) URL, got {endpoint:?}"));
                return None;
            }
        }
        let mut headers = Vec::new();
        if let Some(list) = r.raw("OTEL_EXPORTER_OTLP_HEADERS") {
            for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => {
                        headers.push((k.trim().to_owned(), Secret::new(v.trim())));
                    }
                    // The value may be a key: the problem is named, the text is not.
                    _ => r.error(
                        "OTEL_EXPORTER_OTLP_HEADERS",
                        "expected comma-separated name=value pairs",
                    ),
                }
            }
        }
        Some(Self {
            endpoint,
            headers,
            service_name: r.raw("OTEL_SERVICE_NAME").map(str::to_owned),
            tls: tls.clone(),
        })
    }
}

/// How long what is no longer needed is kept, so nothing (a phone number above all) is
/// kept forever: DynamoDB items carry it as `ttl`; on the embedded engine a background
/// job deletes what expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Ended conversations (the customer's number, the chat's tokens), from the end.
    pub conversations: Duration,
    /// Delivery-ledger rows (sent parts, handled customer messages against replays).
    pub ledger: Duration,
    /// Dead letters, from the time they died (the SQS DLQ's own retention on AWS).
    pub dead_letters: Duration,
    /// The agent's files kept for Twilio (the bucket's lifecycle rule on AWS).
    pub media: Duration,
    /// The message index (SID ↔ chat item, first words), for receipts and quoted replies.
    pub messages: Duration,
}

impl RetentionConfig {
    fn read(r: &mut Reader<'_>) -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            conversations: r.duration(
                "WACONNECT_RETENTION_CONVERSATIONS",
                Duration::from_secs(30 * DAY),
            ),
            ledger: r.duration("WACONNECT_RETENTION_LEDGER", Duration::from_secs(7 * DAY)),
            dead_letters: r.duration(
                "WACONNECT_RETENTION_DEAD_LETTERS",
                Duration::from_secs(14 * DAY),
            ),
            media: r.duration("WACONNECT_RETENTION_MEDIA", Duration::from_secs(2 * DAY)),
            messages: r.duration("WACONNECT_RETENTION_MESSAGES", Duration::from_secs(7 * DAY)),
        }
    }
}

/// What every service reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonConfig {
    pub storage: StorageConfig,
    pub queues: QueuesConfig,
    pub retention: RetentionConfig,
    pub telemetry: TelemetryConfig,
    /// The CAs the process trusts as a TLS client (Twilio, Connect's websocket, files).
    pub tls: crate::service::tls::TlsSettings,
}

impl CommonConfig {
    pub fn read(r: &mut Reader<'_>) -> Self {
        // Read once for every client of the process (storage, Twilio, Connect, traces).
        let tls = crate::service::tls::TlsSettings::read(r);
        let backend = r.string("WACONNECT_BACKEND", "embedded");
        let embedded = |r: &mut Reader<'_>| {
            let path = PathBuf::from(r.string("WACONNECT_SQLITE_PATH", "waconnect.db"));
            let media_dir = r.raw("WACONNECT_MEDIA_DIR").map_or_else(
                || {
                    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                    path.with_file_name(format!("{stem}-media"))
                },
                PathBuf::from,
            );
            StorageConfig::Embedded(EmbeddedConfig {
                synchronous: r.optional(
                    "WACONNECT_SQLITE_SYNCHRONOUS",
                    Synchronous::Full,
                    "full or normal",
                ),
                media_dir,
                media_signing_key: r.secret("WACONNECT_MEDIA_SIGNING_KEY"),
                public_base_url: r
                    .raw("WACONNECT_PUBLIC_BASE_URL")
                    .map(|u| u.trim_end_matches('/').to_owned()),
                path,
            })
        };
        let storage = match backend.as_str() {
            "embedded" => embedded(r),
            "aws" => StorageConfig::Aws(AwsStorageConfig::read(r, &tls)),
            other => {
                r.error(
                    "WACONNECT_BACKEND",
                    format!("unsupported backend {other:?} (expected embedded or aws)"),
                );
                embedded(r)
            }
        };
        let queues = QueuesConfig {
            inbound: r.string("WACONNECT_INBOUND_QUEUE", "inbound"),
            outbound: r.string("WACONNECT_OUTBOUND_QUEUE", "outbound"),
            limits: crate::storage::queue::Limits {
                max_attempts: r.positive("WACONNECT_MAX_ATTEMPTS", 5, "a whole number"),
                max_receives: r.positive("WACONNECT_MAX_RECEIVES", 20, "a whole number"),
            },
            depth_interval: r.duration("WACONNECT_QUEUE_DEPTH_INTERVAL", Duration::from_secs(10)),
        };
        let telemetry = TelemetryConfig {
            log_format: r.optional(
                "WACONNECT_LOG_FORMAT",
                LogFormat::Auto,
                "auto, json or pretty",
            ),
            log_filter: r.string("RUST_LOG", "info"),
            traces: TracesConfig::read(r, &tls),
        };
        Self {
            storage,
            queues,
            retention: RetentionConfig::read(r),
            telemetry,
            tls,
        }
    }
}

/// The worker services (relay-worker, outbound-sender) read this much so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    pub common: CommonConfig,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub ops_bind: SocketAddr,
    /// After a receive that emptied the queue, how long to let messages gather before the
    /// next one (see [`crate::storage::consumer`]).
    pub receive_gather: Duration,
}

/// The longest `WACONNECT_RECEIVE_GATHER` allowed: it is added to a message's latency.
const MAX_RECEIVE_GATHER: Duration = Duration::from_secs(1);

impl WorkerConfig {
    pub fn from_source(
        source: &ConfigSource,
        bind_var: &str,
        default_port: u16,
    ) -> Result<Self, ConfigErrors> {
        let mut r = source.reader();
        let config = Self::read(&mut r, bind_var, default_port);
        r.finish()?;
        Ok(config)
    }

    /// Reads the shared part into `r`, so a service can add its own variables and report
    /// every problem at once.
    pub fn read(r: &mut Reader<'_>, bind_var: &str, default_port: u16) -> Self {
        let common = CommonConfig::read(r);
        let ops_bind = r.optional(
            bind_var,
            SocketAddr::from(([0, 0, 0, 0], default_port)),
            "an address like 0.0.0.0:9090",
        );
        // Receives are billed calls on SQS and cost nothing on SQLite.
        let default_gather = match common.storage {
            StorageConfig::Embedded(_) => Duration::ZERO,
            StorageConfig::Aws(_) => Duration::from_millis(50),
        };
        let receive_gather = r.duration_or_zero("WACONNECT_RECEIVE_GATHER", default_gather);
        if receive_gather > MAX_RECEIVE_GATHER {
            r.error(
                "WACONNECT_RECEIVE_GATHER",
                "must be at most 1s: it is added to a message's latency",
            );
        }
        Self {
            common,
            ops_bind,
            receive_gather,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receives_gather_on_sqs_only_unless_told() {
        let worker = |extra: &[(&str, &str)]| {
            WorkerConfig::from_source(
                &ConfigSource::from_pairs(extra.iter().copied()),
                "OPS",
                9000,
            )
        };
        assert_eq!(worker(&[]).unwrap().receive_gather, Duration::ZERO);
        let aws = [
            ("WACONNECT_BACKEND", "aws"),
            ("AWS_REGION", "eu-west-2"),
            (
                "WACONNECT_INBOUND_QUEUE_URL",
                "http://127.0.0.1:1/q/in.fifo",
            ),
            (
                "WACONNECT_OUTBOUND_QUEUE_URL",
                "http://127.0.0.1:1/q/out.fifo",
            ),
            ("WACONNECT_TABLE", "waconnect"),
        ];
        assert_eq!(
            worker(&aws).unwrap().receive_gather,
            Duration::from_millis(50)
        );
        let mut off = aws.to_vec();
        off.push(("WACONNECT_RECEIVE_GATHER", "0"));
        assert_eq!(worker(&off).unwrap().receive_gather, Duration::ZERO);
        let err = worker(&[("WACONNECT_RECEIVE_GATHER", "5s")]).unwrap_err();
        assert!(err.names("WACONNECT_RECEIVE_GATHER"), "{err}");
    }

    #[test]
    fn traces_export_only_when_an_endpoint_is_named_and_only_over_http_protobuf() {
        let read = |pairs: &[(&str, &str)]| {
            let source = ConfigSource::from_pairs(pairs.iter().copied());
            let mut r = source.reader();
            let config = CommonConfig::read(&mut r);
            r.finish().map(|()| config.telemetry.traces)
        };
        assert_eq!(read(&[]).unwrap(), None);
        let t = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=secret-1, tenant = a"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.headers.len(), 2);
        assert_eq!(t.headers[0].0, "x-key");
        assert_eq!(t.headers[0].1.expose(), "secret-1");
        assert!(!format!("{t:?}").contains("secret-1"));
        // The signal's own variable is used as written, and wins.
        let t = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://b/otlp/traces",
            ),
            ("OTEL_SERVICE_NAME", "wa-relay"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(t.endpoint, "https://b/otlp/traces");
        assert_eq!(t.service_name.as_deref(), Some("wa-relay"));
        assert_eq!(
            read(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ])
            .unwrap(),
            None
        );
        for (pairs, named) in [
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "no-equals-sign"),
                ],
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
        ] {
            let err = read(&pairs).unwrap_err();
            assert!(err.names(named), "{err}");
        }
    }
}
