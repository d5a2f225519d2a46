//! Logs, traces and metrics for every process.
//!
//! Logs: `tracing` with a `RUST_LOG`-style filter, JSON lines (human-readable when stdout
//! is a terminal). Traces: each message's hops over OTLP when configured
//! ([`crate::service::traces`]). Metrics: one Prometheus recorder per process; counters end in `_total`,
//! durations in `_seconds` and are exported as histograms.

use crate::service::config::{LogFormat, TelemetryConfig};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("RUST_LOG: {0}")]
    Filter(String),
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
    #[error("{0}")]
    Traces(String),
}

/// Libraries that, below info, log what must never reach a log: the AWS SDK signs and
/// prints requests with their headers (the Participant API's `X-Amz-Bearer` token) and
/// bodies (customers' messages), the HTTP and websocket stacks print frames. Whatever
/// `RUST_LOG` says, they log at info at most.
const QUIET_BELOW_INFO: &[&str] = &[
    "aws_",
    "hyper",
    "h2",
    "reqwest",
    "rustls",
    "tungstenite",
    "tokio_tungstenite",
];

/// The filter every log line passes besides `RUST_LOG`: see [`QUIET_BELOW_INFO`].
fn secrets_stay_out() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO
            || !QUIET_BELOW_INFO
                .iter()
                .any(|quiet| meta.target().starts_with(quiet))
    })
}

/// Installs the global log subscriber, and the trace exporter when one is configured:
/// call once, from `main`, inside the runtime. `service` names the spans' service unless
/// `OTEL_SERVICE_NAME` does. `RUST_LOG` filters the logs only, so quiet logs still give
/// full traces.
pub fn init_logging(config: &TelemetryConfig, service: &str) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_new(&config.log_filter)
        .map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    };
    let subscriber = tracing_subscriber::registry()
        .with(secrets_stay_out())
        .with(logs);
    // Without an exporter there is no layer at all, so callsites the log filter turns
    // off stay off for good.
    let installed = match &config.traces {
        Some(t) => subscriber
            .with(
                crate::service::traces::layer(t, service)
                    .map_err(|e| TelemetryError::Traces(e.to_string()))?,
            )
            .try_init(),
        None => subscriber.try_init(),
    };
    installed.map_err(|e| TelemetryError::Subscriber(e.to_string()))
}

/// Sends the spans still buffered, if traces are exported: call once, as the process ends.
pub fn flush() {
    crate::service::traces::flush();
}

/// Buckets for every `*_seconds` histogram: 100 µs to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The process's metrics recorder, installed on first use. Several services started in one
/// process (tests, the sandbox) share it.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); then this handle
        // renders an empty registry, which is still valid Prometheus text.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        crate::service::catalog::describe();
        // Histogram samples pile up until upkeep folds them into buckets, which otherwise
        // happens only when /metrics is scraped: without a scraper, every enqueue would
        // keep its sample in memory for good.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("waconnect-metrics".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        handle
    })
}

/// How often histogram samples are folded into buckets (the exporter's own default).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The Prometheus text exposition of every metric recorded so far.
pub fn render_metrics() -> String {
    let handle = metrics();
    handle.run_upkeep();
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn rust_log_trace_never_opens_the_sdk_and_http_stacks() {
        let subscriber = tracing_subscriber::registry()
            .with(EnvFilter::try_new("trace,aws_smithy_runtime=trace").unwrap())
            .with(secrets_stay_out());
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(target: "aws_smithy_runtime::client", Level::TRACE));
            assert!(!tracing::enabled!(target: "aws_sigv4::http_request", Level::DEBUG));
            assert!(!tracing::enabled!(target: "hyper_util::client", Level::DEBUG));
            assert!(!tracing::enabled!(target: "tokio_tungstenite", Level::TRACE));
            assert!(tracing::enabled!(target: "aws_config::meta", Level::INFO));
            assert!(tracing::enabled!(target: "our_service::session", Level::TRACE));
        });
    }
}
