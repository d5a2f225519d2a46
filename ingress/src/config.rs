//! ingress's own configuration: where it listens, how it checks Twilio's signature, and
//! the limits on what it takes. What every service shares comes from
//! [`waconnect_shared::service::config`].

use std::net::SocketAddr;
use std::time::Duration;
use waconnect_shared::Secret;
use waconnect_shared::service::config::{CommonConfig, ConfigErrors, ConfigSource, Reader};
use waconnect_shared::service::routing::Routing;

/// The one value that enables ingress's insecure mode: long and explicit so that no
/// `=true` or `=1` left in an environment can switch signature checks off.
pub const INSECURE_PHRASE: &str = "i-understand-this-disables-twilio-authentication";

/// How ingress learns the URL Twilio signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Verify against `public_base_url` + the request's path and query.
    Verify {
        /// The account's auth token, then the secondary one while it is being rotated.
        auth_tokens: Vec<Secret>,
        /// Secrets of the SharedKeys a Webhooks Rule may sign with instead (several while
        /// one is rotated).
        shared_keys: Vec<Secret>,
        public_base_url: String,
        /// Take scheme and host from `X-Forwarded-Proto` / `X-Forwarded-Host` instead.
        trust_forwarded_headers: bool,
    },
    /// Local use only: no signature check at all.
    InsecureSkip,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IngressConfig {
    pub common: CommonConfig,
    pub bind: SocketAddr,
    pub signature: SignatureCheck,
    pub message_path: String,
    pub status_path: String,
    pub max_body_bytes: usize,
    pub enqueue_timeout: Duration,
    pub allow_non_whatsapp: bool,
    /// A connection must send a request's headers within this; it also closes idle
    /// keep-alive connections.
    pub header_timeout: Duration,
    /// A request body must arrive within this (408 otherwise).
    pub body_timeout: Duration,
    /// Connections open at once; one more is closed at once.
    pub max_connections: usize,
    /// The business numbers served: a message to any other is refused, nothing queued.
    pub routing: Routing,
}

impl IngressConfig {
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_source(&ConfigSource::from_env()?)
    }

    pub fn from_source(source: &ConfigSource) -> Result<Self, ConfigErrors> {
        let mut r = source.reader();
        let common = CommonConfig::read(&mut r);
        let bind: SocketAddr = r.optional(
            "WACONNECT_INGRESS_BIND",
            SocketAddr::from(([0, 0, 0, 0], 8080)),
            "an address like 0.0.0.0:8080",
        );
        let signature = read_signature_check(&mut r, bind);
        let message_path = read_path(&mut r, "WACONNECT_INGRESS_MESSAGE_PATH", "/twilio/messages");
        let status_path = read_path(&mut r, "WACONNECT_INGRESS_STATUS_PATH", "/twilio/status");
        if message_path == status_path {
            r.error(
                "WACONNECT_INGRESS_STATUS_PATH",
                "must differ from WACONNECT_INGRESS_MESSAGE_PATH",
            );
        }
        let max_body_bytes = r.positive(
            "WACONNECT_INGRESS_MAX_BODY_BYTES",
            64 * 1024,
            "a number of bytes",
        );
        let enqueue_timeout =
            r.duration("WACONNECT_INGRESS_ENQUEUE_TIMEOUT", Duration::from_secs(5));
        let allow_non_whatsapp = r.flag("WACONNECT_ALLOW_NON_WHATSAPP", false);
        let header_timeout =
            r.duration("WACONNECT_INGRESS_HEADER_TIMEOUT", Duration::from_secs(20));
        let body_timeout = r.duration("WACONNECT_INGRESS_BODY_TIMEOUT", Duration::from_secs(10));
        let max_connections = r.positive(
            "WACONNECT_INGRESS_MAX_CONNECTIONS",
            10_000,
            "a number of connections",
        );
        let routing = Routing::read(&mut r);
        let config = signature.map(|signature| Self {
            routing,
            common,
            bind,
            signature,
            message_path,
            status_path,
            max_body_bytes,
            enqueue_timeout,
            allow_non_whatsapp,
            header_timeout,
            body_timeout,
            max_connections,
        });
        r.finish()?;
        Ok(config.expect("every required value is present when no error was recorded"))
    }
}

fn read_path(r: &mut Reader<'_>, name: &str, default: &str) -> String {
    let path = r.string(name, default);
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        r.error(
            name,
            format!("expected a path starting with '/', got {path:?}"),
        );
    }
    path
}

fn read_signature_check(r: &mut Reader<'_>, bind: SocketAddr) -> Option<SignatureCheck> {
    if let Some(value) = r
        .raw("WACONNECT_INSECURE_SKIP_SIGNATURE")
        .map(str::to_owned)
    {
        if value != INSECURE_PHRASE {
            r.error(
                "WACONNECT_INSECURE_SKIP_SIGNATURE",
                format!("to disable signature checks set it to exactly {INSECURE_PHRASE:?}; unset it otherwise"),
            );
            return None;
        }
        if !bind.ip().is_loopback() {
            r.error(
                "WACONNECT_INSECURE_SKIP_SIGNATURE",
                format!("insecure mode only binds a loopback address, not {bind} (see WACONNECT_INGRESS_BIND)"),
            );
            return None;
        }
        return Some(SignatureCheck::InsecureSkip);
    }
    let auth_token = r.secret("TWILIO_AUTH_TOKEN");
    if auth_token.is_none() {
        r.error(
            "TWILIO_AUTH_TOKEN",
            "is required (the Twilio account's auth token)",
        );
    }
    let public_base_url = match r.raw("WACONNECT_PUBLIC_BASE_URL") {
        None => {
            r.error(
                "WACONNECT_PUBLIC_BASE_URL",
                "is required (the public https://host[:port][/prefix] Twilio posts to)",
            );
            None
        }
        Some(raw) => match validate_base_url(raw) {
            Ok(url) => Some(url),
            Err(problem) => {
                r.error("WACONNECT_PUBLIC_BASE_URL", problem);
                None
            }
        },
    };
    let trust_forwarded_headers = r.flag("WACONNECT_TRUST_FORWARDED_HEADERS", false);
    let mut auth_tokens = vec![auth_token?];
    auth_tokens.extend(r.secret("TWILIO_AUTH_TOKEN_SECONDARY"));
    let shared_keys = r
        .raw("TWILIO_WEBHOOK_SHARED_KEYS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(Secret::new)
        .collect();
    Some(SignatureCheck::Verify {
        auth_tokens,
        shared_keys,
        public_base_url: public_base_url?,
        trust_forwarded_headers,
    })
}

/// The base URL is kept as written (the signature covers it byte for byte), minus a
/// trailing slash, because request paths start with one.
fn validate_base_url(raw: &str) -> Result<String, String> {
    let parsed = url::Url::parse(raw).map_err(|e| format!("not a URL ({e}): {raw:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("expected an http or https URL, got {raw:?}"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not carry a query or a fragment".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use waconnect_shared::service::config::{StorageConfig, Synchronous};

    fn ingress(pairs: &[(&str, &str)]) -> Result<IngressConfig, ConfigErrors> {
        IngressConfig::from_source(&ConfigSource::from_pairs(pairs.iter().copied()))
    }

    const MINIMAL: [(&str, &str); 2] = [
        ("TWILIO_AUTH_TOKEN", "tok"),
        ("WACONNECT_PUBLIC_BASE_URL", "https://wa.example.com/"),
    ];

    #[test]
    fn defaults_with_the_minimum() {
        let c = ingress(&MINIMAL).unwrap();
        assert_eq!(c.bind, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.message_path, "/twilio/messages");
        assert_eq!(c.status_path, "/twilio/status");
        assert_eq!(c.max_body_bytes, 65536);
        assert!(!c.allow_non_whatsapp);
        assert_eq!(
            c.signature,
            SignatureCheck::Verify {
                auth_tokens: vec![Secret::new("tok")],
                shared_keys: Vec::new(),
                public_base_url: "https://wa.example.com".into(),
                trust_forwarded_headers: false,
            }
        );
        let StorageConfig::Embedded(e) = &c.common.storage else {
            panic!("embedded is the default: {:?}", c.common.storage);
        };
        assert_eq!(e.synchronous, Synchronous::Full);
        assert_eq!(c.common.queues.limits.max_attempts, 5);
        assert_eq!(c.common.queues.limits.max_receives, 20);
    }

    #[test]
    fn the_aws_backend_needs_its_queues_table_and_region_named() {
        let mut pairs = MINIMAL.to_vec();
        pairs.push(("WACONNECT_BACKEND", "aws"));
        pairs.push(("WACONNECT_INBOUND_QUEUE_URL", "not a url"));
        let err = ingress(&pairs).unwrap_err();
        for var in [
            "AWS_REGION",
            "WACONNECT_INBOUND_QUEUE_URL",
            "WACONNECT_OUTBOUND_QUEUE_URL",
            "WACONNECT_TABLE",
        ] {
            assert!(err.names(var), "{var} not named in: {err}");
        }
        assert_eq!(
            err.0.iter().filter(|e| e.variable == "AWS_REGION").count(),
            1,
            "{err}"
        );
        pairs.pop();
        pairs.extend([
            ("AWS_REGION", "eu-west-1"),
            (
                "WACONNECT_INBOUND_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/1/in.fifo",
            ),
            (
                "WACONNECT_OUTBOUND_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/1/out.fifo",
            ),
            ("WACONNECT_TABLE", "waconnect"),
            ("WACONNECT_AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
        ]);
        let c = ingress(&pairs).unwrap();
        let StorageConfig::Aws(aws) = &c.common.storage else {
            panic!("not aws: {:?}", c.common.storage);
        };
        assert_eq!(aws.table, "waconnect");
        assert_eq!(aws.aws.region, "eu-west-1");
        assert_eq!(aws.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(aws.inbound_queue_url.ends_with("/in.fifo"));
    }

    #[test]
    fn every_bad_variable_is_named_at_once() {
        let err = ingress(&[
            ("WACONNECT_INGRESS_MAX_BODY_BYTES", "lots"),
            ("WACONNECT_INGRESS_BIND", "nowhere"),
            ("WACONNECT_MAX_RECEIVES", "0"),
            ("WACONNECT_INGRESS_ENQUEUE_TIMEOUT", "soon"),
            ("WACONNECT_BACKEND", "postgres"),
        ])
        .unwrap_err();
        for var in [
            "TWILIO_AUTH_TOKEN",
            "WACONNECT_PUBLIC_BASE_URL",
            "WACONNECT_INGRESS_MAX_BODY_BYTES",
            "WACONNECT_INGRESS_BIND",
            "WACONNECT_MAX_RECEIVES",
            "WACONNECT_INGRESS_ENQUEUE_TIMEOUT",
            "WACONNECT_BACKEND",
        ] {
            assert!(err.names(var), "{var} not named in {err}");
        }
    }

    #[test]
    fn base_url_must_be_plain_http() {
        for bad in [
            "ftp://x.com",
            "https://x.com/?a=1",
            "https://u:p@x.com",
            "x.com",
        ] {
            let mut pairs = MINIMAL.to_vec();
            pairs[1].1 = bad;
            assert!(
                ingress(&pairs)
                    .unwrap_err()
                    .names("WACONNECT_PUBLIC_BASE_URL"),
                "{bad}"
            );
        }
    }

    #[test]
    fn insecure_mode_needs_the_exact_phrase_and_loopback() {
        let err = ingress(&[("WACONNECT_INSECURE_SKIP_SIGNATURE", "true")]).unwrap_err();
        assert!(err.names("WACONNECT_INSECURE_SKIP_SIGNATURE"));
        let err = ingress(&[("WACONNECT_INSECURE_SKIP_SIGNATURE", INSECURE_PHRASE)]).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        let ok = ingress(&[
            ("WACONNECT_INSECURE_SKIP_SIGNATURE", INSECURE_PHRASE),
            ("WACONNECT_INGRESS_BIND", "127.0.0.1:0"),
        ])
        .unwrap();
        assert_eq!(ok.signature, SignatureCheck::InsecureSkip);
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let c = ingress(&MINIMAL).unwrap();
        let mut pairs = MINIMAL.to_vec();
        pairs[0].1 = "very-secret-token";
        let c2 = ingress(&pairs).unwrap();
        assert!(!format!("{c2:?}").contains("very-secret-token"));
        assert_ne!(c, c2);
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("waconnect.env");
        std::fs::write(
            &file,
            "TWILIO_AUTH_TOKEN=from-file\nWACONNECT_PUBLIC_BASE_URL=https://file.example\nWACONNECT_INGRESS_MAX_BODY_BYTES=1000\n",
        )
        .unwrap();
        let source = ConfigSource::layered([
            (
                "WACONNECT_CONFIG_FILE".to_owned(),
                file.display().to_string(),
            ),
            (
                "WACONNECT_INGRESS_MAX_BODY_BYTES".to_owned(),
                "2000".to_owned(),
            ),
        ])
        .unwrap();
        let c = IngressConfig::from_source(&source).unwrap();
        assert_eq!(c.max_body_bytes, 2000);
        assert!(
            matches!(c.signature, SignatureCheck::Verify { ref public_base_url, .. } if public_base_url == "https://file.example")
        );
        let missing = ConfigSource::layered([(
            "WACONNECT_CONFIG_FILE".to_owned(),
            "/nonexistent/waconnect.env".to_owned(),
        )])
        .unwrap_err();
        assert!(missing.names("WACONNECT_CONFIG_FILE"));
    }
}
