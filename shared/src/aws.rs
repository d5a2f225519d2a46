//! The AWS SDK configuration every AWS client in waconnect is built from: the usual
//! credential chain and region, an HTTPS client on rustls with ring, and an optional
//! endpoint override (the simulators in tests, VPC endpoints in production).

use crate::config::Reader;
use crate::secret::Secret;
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
    pub tls: crate::tls::TlsSettings,
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
    /// config file can carry them too.
    pub fn read(r: &mut Reader<'_>) -> Self {
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
            tls: crate::tls::TlsSettings::read(r),
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

impl CallError {
    pub fn from_sdk<E>(e: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let message = DisplayErrorContext(e).to_string();
        match e {
            SdkError::ServiceError(s) => {
                let code = s.err().code().map(str::to_owned);
                let throttled = code.as_deref().is_some_and(|c| {
                    c.contains("Throttl")
                        || matches!(
                            c,
                            "RequestLimitExceeded"
                                | "ProvisionedThroughputExceededException"
                                | "ServiceUnavailable"
                                | "InternalError"
                                | "InternalServerError"
                                | "KMSThrottlingException"
                        )
                });
                Self {
                    unavailable: throttled || s.raw().status().is_server_error(),
                    code,
                    message,
                }
            }
            SdkError::ConstructionFailure(_) => Self {
                unavailable: false,
                code: None,
                message,
            },
            _ => Self {
                unavailable: true,
                code: None,
                message,
            },
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
