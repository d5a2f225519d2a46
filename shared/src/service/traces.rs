//! Each message's hops as OpenTelemetry spans over OTLP/HTTP, for a team that follows
//! requests in Jaeger, Tempo or an OpenTelemetry Collector. Off unless an endpoint is
//! configured ([`TracesConfig`]).
//!
//! Only the services' hop spans are exported (`webhook` in ingress, `inbound` and
//! `agent_item` in the relay, `outbound` in the sender), never events: a span's fields are
//! ids, and what a message says stays out of traces as it stays out of logs. Each hop
//! joins its message's trace through [`crate::message::trace::follow`], so the services'
//! spans of one message meet in one trace with nothing carried between them.
//!
//! Spans wait in the SDK's bounded batch queue (spans beyond it are dropped, never
//! waited for) and go out from its own thread; the HTTP call runs on the service's
//! runtime with the reqwest client already in the tree and a timeout.

use crate::service::config::TracesConfig;
use opentelemetry::trace::TracerProvider;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// One export's bound, connection and answer included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What is read of a collector's answer.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The process's exporter, kept to send what is still buffered at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
#[error("trace export: {0}")]
pub struct TracesError(String);

/// The layer that turns hop spans into OpenTelemetry spans and exports them. Call from
/// within the service's runtime, once.
pub fn layer<S>(config: &TracesConfig, service: &str) -> Result<impl Layer<S>, TracesError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| TracesError("must start inside the service's runtime".into()))?;
    let http = config
        .tls
        .reqwest(reqwest::Client::builder())
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| TracesError(e.to_string()))?;
    let headers: HashMap<String, String> = config
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.expose().to_owned()))
        .collect();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OnRuntime { http, runtime })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_headers(headers)
        .build()
        .map_err(|e| TracesError(e.to_string()))?;
    let name = config
        .service_name
        .clone()
        .unwrap_or_else(|| service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build();
    let tracer = provider.tracer("waconnect");
    if PROVIDER.set(provider).is_err() {
        return Err(TracesError("the exporter is already installed".into()));
    }
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            filter_fn(|meta| {
                meta.is_span()
                    && *meta.level() <= tracing::Level::INFO
                    && meta.target().starts_with("waconnect")
            })
            .with_max_level_hint(tracing::level_filters::LevelFilter::INFO),
        ))
}

/// Sends the spans still buffered, within a bound: call once, as the process ends.
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown_with_timeout(EXPORT_TIMEOUT)
    {
        tracing::warn!(error = %e, "spans still buffered at exit were not exported");
    }
}

/// The exporter's HTTP client: the SDK's batch thread blocks on each export, so the call
/// itself is handed to the service's runtime, where reqwest can run.
#[derive(Debug)]
struct OnRuntime {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let answer = self
            .runtime
            .spawn(async move {
                let mut response = http.execute(request).await?;
                let status = response.status();
                // A collector answers in a few bytes; more is not read.
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await? {
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok::<_, reqwest::Error>((status, Bytes::from(body)))
            })
            .await??;
        let (status, body) = answer;
        Ok(Response::builder().status(status).body(body)?)
    }
}
