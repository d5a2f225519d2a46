//! The operations endpoints every process serves: `/healthz` (the process is up and
//! every task it cannot do without still runs), `/readyz` (its backends answer) and
//! `/metrics` (Prometheus text).

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

/// Whether the process can still do its work: once a core task died, `/healthz` answers
/// 503 with the reason, so the orchestrator restarts the process.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<std::sync::OnceLock<String>>);

impl Health {
    /// Marks the process unhealthy; the first reason given is kept.
    pub fn fail(&self, why: String) {
        let _ = self.0.set(why);
    }

    pub fn failure(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// Readiness probes must answer quickly even when a backend hangs.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds the operations routes. Also installs the metrics recorder, so everything counted
/// from start-up on is exported (metrics recorded before the recorder exists are lost).
pub fn router(readiness: Arc<dyn Readiness>, health: Health) -> Router {
    crate::service::telemetry::metrics();
    Router::new()
        .route(
            "/healthz",
            get(move || async move {
                match health.failure() {
                    None => (StatusCode::OK, "ok\n".to_owned()),
                    Some(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("unhealthy: {why}\n"),
                    ),
                }
            }),
        )
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
        crate::service::telemetry::render_metrics(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Always;
    #[async_trait]
    impl Readiness for Always {
        async fn check(&self) -> Result<(), String> {
            Ok(())
        }
    }

    async fn get_healthz(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, stop.clone()));
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        stop.cancel();
        server.await.unwrap().unwrap();
        answer
    }

    #[tokio::test]
    async fn healthz_fails_once_the_process_is_unhealthy() {
        let health = Health::default();
        let ok = get_healthz(router(Arc::new(Always), health.clone())).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        health.fail("core task sweeper panicked".into());
        let failed = get_healthz(router(Arc::new(Always), health)).await;
        assert!(failed.starts_with("HTTP/1.1 503"), "{failed}");
        assert!(failed.contains("sweeper panicked"), "{failed}");
    }
}
