//! The operations endpoints every process serves: `/healthz` (the process is up),
//! `/readyz` (its backends answer) and `/metrics` (Prometheus text).

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;

/// Something whose reachability decides readiness.
#[async_trait]
pub trait Readiness: Send + Sync + 'static {
    /// `Err` names what is not reachable.
    async fn check(&self) -> Result<(), String>;
}

/// Readiness probes must answer quickly even when a backend hangs.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds the operations routes. Also installs the metrics recorder, so everything counted
/// from start-up on is exported (metrics recorded before the recorder exists are lost).
pub fn router(readiness: Arc<dyn Readiness>) -> Router {
    crate::telemetry::metrics();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Arc<dyn Readiness>>) -> impl IntoResponse {
    match tokio::time::timeout(READY_TIMEOUT, readiness.check()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".to_owned()),
        Ok(Err(what)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {what}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: no answer within {READY_TIMEOUT:?}\n"),
        ),
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render_metrics(),
    )
}

/// Serves `router` on `listener` until `shutdown`; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
