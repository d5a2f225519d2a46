//! The AWS SDK configuration every AWS client in waconnect is built from: the usual
//! credential chain and region, an HTTPS client on rustls with ring, and an optional
//! endpoint override (the simulators in tests, VPC endpoints in production).

use crate::service::config::Reader;
use crate::service::secret::Secret;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, Metadata};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub region: String,
    /// Keys given to this process's configuration; otherwise the default chain (profile,
    /// web identity, ECS task role, instance profile) applies.
    pub static_credentials: Option<StaticCredentials>,
    /// The CAs the SDK clients trust beside the system's.
    pub tls: crate::service::tls::TlsSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl AwsConfig {
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`) and, if set, `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, read through the layered config so a
    /// config file can carry them too. The SDK clients trust `tls`'s CAs: the ones the
    /// process read once for all its clients, so every client trusts the same file's
    /// contents.
    pub fn read(r: &mut Reader<'_>, tls: &crate::service::tls::TlsSettings) -> Self {
        let region = match r.raw("AWS_REGION").or_else(|| r.raw("AWS_DEFAULT_REGION")) {
            Some(region) => region.to_owned(),
            None => {
                r.error(
                    "AWS_REGION",
                    "is required (the region of the Connect instance)",
                );
                String::new()
            }
        };
        let static_credentials = match (
            r.raw("AWS_ACCESS_KEY_ID"),
            r.secret("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => Some(StaticCredentials {
                access_key_id: id.to_owned(),
                secret_access_key: secret,
                session_token: r.secret("AWS_SESSION_TOKEN"),
            }),
            (None, None) => None,
            (Some(_), None) => {
                r.error(
                    "AWS_SECRET_ACCESS_KEY",
                    "is required when AWS_ACCESS_KEY_ID is set",
                );
                None
            }
            (None, Some(_)) => {
                r.error(
                    "AWS_ACCESS_KEY_ID",
                    "is required when AWS_SECRET_ACCESS_KEY is set",
                );
                None
            }
        };
        Self {
            region,
            static_credentials,
            tls: tls.clone(),
        }
    }

    /// Loads the shared SDK configuration (resolving credentials lazily, per call).
    pub async fn load(&self) -> SdkConfig {
        let mut trust = tls::TrustStore::default();
        if let Some(pem) = self.tls.extra_pem() {
            trust = trust.with_pem_certificate(pem.to_vec());
        }
        let context = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .expect("a trust store of checked PEM certificates");
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(context)
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .http_client(http);
        if let Some(c) = &self.static_credentials {
            loader = loader.credentials_provider(aws_credential_types::Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.expose().to_owned(),
                c.session_token.as_ref().map(|t| t.expose().to_owned()),
                None,
                "waconnect-config",
            ));
        }
        loader.load().await
    }
}

/// What went wrong with one AWS call, reduced to what the engines decide on.
#[derive(Debug, Clone)]
pub(crate) struct CallError {
    /// Worth retrying later: the service could not be reached, timed out, throttled or
    /// failed on its side.
    pub unavailable: bool,
    /// The service's error code (`QueueDoesNotExist`, `ConditionalCheckFailedException`…).
    pub code: Option<String>,
    pub message: String,
}

/// What a failed AWS call means for whoever retries it: the one classification every AWS
/// client here uses (the storage engines through [`CallError`], the relay's Connect and
/// Participant calls through its own error with the operation's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 403: a bad or expired token or credentials, or (Participant API) the chat is over.
    AccessDenied,
    /// 400-class, or a request the SDK could not build: it will stay wrong.
    Invalid,
    Throttled,
    Server,
    /// No answer: connect failure, timeout, broken response.
    Network,
    Other,
}

impl ErrorKind {
    /// Worth another attempt later.
    pub fn retryable(self) -> bool {
        matches!(self, Self::Throttled | Self::Server | Self::Network)
    }

    /// The metrics' label.
    pub fn label(self) -> &'static str {
        match self {
            Self::AccessDenied => "access_denied",
            Self::Invalid => "invalid",
            Self::Throttled => "throttled",
            Self::Server => "server",
            Self::Network => "network",
            Self::Other => "other",
        }
    }
}

/// Error codes that mean "slow down" whatever the status says (S3 says it with a 503
/// `SlowDown`, which is no outage).
fn throttling(code: &str) -> bool {
    code.contains("Throttl")
        || matches!(
            code,
            "RequestLimitExceeded"
                | "ProvisionedThroughputExceededException"
                | "LimitExceededException"
                | "TooManyRequestsException"
                | "SlowDown"
        )
}

/// Error codes of a service failing on its side, whatever the status says.
fn server_side(code: &str) -> bool {
    matches!(
        code,
        "ServiceUnavailable" | "InternalError" | "InternalServerError" | "InternalFailure"
    )
}

/// Classifies a failed call, with the service's error code if it gave one.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> (ErrorKind, Option<String>)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().map(str::to_owned);
    let status = err.raw_response().map(|r| r.status().as_u16());
    let kind = match err {
        SdkError::ServiceError(_) => match (code.as_deref(), status) {
            (Some(c), _) if throttling(c) => ErrorKind::Throttled,
            (_, Some(429)) => ErrorKind::Throttled,
            (Some(c), _) if server_side(c) => ErrorKind::Server,
            (Some("AccessDeniedException"), _) | (_, Some(403)) => ErrorKind::AccessDenied,
            (_, Some(s)) if s >= 500 => ErrorKind::Server,
            (_, Some(s)) if s >= 400 => ErrorKind::Invalid,
            _ => ErrorKind::Other,
        },
        SdkError::ConstructionFailure(_) => ErrorKind::Invalid,
        // Dispatch and timeout failures, unreadable responses: no answer to go by.
        _ => ErrorKind::Network,
    };
    (kind, code)
}

impl CallError {
    pub fn from_sdk<E>(e: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (kind, code) = classify(e);
        Self {
            unavailable: kind.retryable(),
            code,
            message: DisplayErrorContext(e).to_string(),
        }
    }

    pub fn is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Counts every attempt an AWS client makes, by service and operation
/// (`waconnect_aws_calls_total`): the calls-per-message profile the benches report, and on
/// a dashboard what drives the AWS bill.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallCounter;

/// The one timeout policy of every AWS client: each attempt bounded by `per_attempt`
/// (connecting by at most 3 s of it), and the whole call, retries and their backoff
/// included, by four times that.
pub fn timeouts(per_attempt: std::time::Duration) -> aws_smithy_types::timeout::TimeoutConfig {
    aws_smithy_types::timeout::TimeoutConfig::builder()
        .connect_timeout(per_attempt.min(std::time::Duration::from_secs(3)))
        .operation_attempt_timeout(per_attempt)
        .operation_timeout(per_attempt * 4)
        .build()
}

/// The same policy for one call that legitimately takes `extra` longer than its client's
/// calls (a long poll's wait, an upload's bytes): the client's attempt bound (`client`,
/// from WACONNECT_AWS_CALL_TIMEOUT; the default if it has none) plus `extra`.
pub fn stretched(
    client: Option<&aws_smithy_types::timeout::TimeoutConfig>,
    extra: std::time::Duration,
) -> aws_smithy_types::timeout::TimeoutConfig {
    let per_attempt = client
        .and_then(|t| t.operation_attempt_timeout())
        .unwrap_or(crate::service::config::AWS_CALL_TIMEOUT);
    timeouts(per_attempt + extra)
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "waconnect-call-counter"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            metrics::counter!(
                "waconnect_aws_calls_total",
                "service" => m.service().to_owned(),
                "operation" => m.name().to_owned()
            )
            .increment(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn answered(status: u16, code: &str) -> SdkError<GetQueueUrlError, HttpResponse> {
        let err = GetQueueUrlError::generic(ErrorMetadata::builder().code(code).build());
        let response = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(err, response)
    }

    #[test]
    fn one_classification_for_every_aws_client() {
        let cases = [
            (400, "ThrottlingException", ErrorKind::Throttled),
            (
                400,
                "ProvisionedThroughputExceededException",
                ErrorKind::Throttled,
            ),
            (429, "TooManyRequestsException", ErrorKind::Throttled),
            (400, "RequestThrottled", ErrorKind::Throttled),
            (503, "SlowDown", ErrorKind::Throttled),
            (503, "ServiceUnavailable", ErrorKind::Server),
            (400, "InternalError", ErrorKind::Server),
            (500, "Whatever", ErrorKind::Server),
            (403, "AccessDeniedException", ErrorKind::AccessDenied),
            (400, "ConditionalCheckFailedException", ErrorKind::Invalid),
            (404, "ResourceNotFoundException", ErrorKind::Invalid),
        ];
        for (status, code, kind) in cases {
            let err = answered(status, code);
            assert_eq!(
                classify(&err),
                (kind, Some(code.to_owned())),
                "{status} {code}"
            );
            assert_eq!(CallError::from_sdk(&err).unavailable, kind.retryable());
        }
        let timed_out: SdkError<GetQueueUrlError, HttpResponse> = SdkError::timeout_error("slow");
        assert_eq!(classify(&timed_out).0, ErrorKind::Network);
        assert!(CallError::from_sdk(&timed_out).unavailable);
        let unbuildable: SdkError<GetQueueUrlError, HttpResponse> =
            SdkError::construction_failure("no queue url");
        assert!(!CallError::from_sdk(&unbuildable).unavailable);
    }
}
