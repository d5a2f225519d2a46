//! waconnect ingress: the stateless front door for Twilio's webhooks.
//!
//! It verifies `X-Twilio-Signature`, parses the form, and puts the event on the inbound
//! FIFO queue (group = customer, dedup = MessageSid); only then does it answer Twilio, so
//! an accepted webhook is never lost. If the queue cannot take it, Twilio gets a 503 and
//! retries.

pub mod config;
mod connections;
mod signed_url;
mod webhook;

use crate::config::{IngressConfig, SignatureCheck};
use axum::Router;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waconnect_shared::service::ops;
use waconnect_shared::storage::backend::{Backend, BackendError, QueuesReady};
use waconnect_shared::storage::media::directory::DirectoryStore;
use waconnect_shared::storage::queue::{Queue, depth};

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

/// Opens the configured inbound queue and serves until `shutdown`.
pub async fn run(
    config: IngressConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), IngressError> {
    let backend = Backend::open(&config.common).await?;
    let inbound = backend.inbound().await?;
    // On one box ingress, the public endpoint, also serves the agent's files to Twilio.
    let media = backend.media_directory().await?;
    serve(config, inbound, media, listener, shutdown).await
}

/// Serves with an already-open inbound queue until `shutdown`; in-flight requests finish.
pub async fn serve(
    config: IngressConfig,
    inbound: Arc<dyn Queue>,
    media: Option<DirectoryStore>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), IngressError> {
    // Built first: it installs the metrics recorder that the gauge below needs.
    let mut app = router(&config, inbound.clone());
    if let Some(media) = media {
        app = app.merge(waconnect_shared::storage::media::directory::router(media));
    }
    let insecure = config.signature == SignatureCheck::InsecureSkip;
    if insecure {
        warn_insecure();
    }
    metrics::gauge!("waconnect_ingress_insecure_mode").set(if insecure { 1.0 } else { 0.0 });
    let sampler = depth::spawn_sampler(
        vec![inbound.clone()],
        config.common.queues.depth_interval,
        shutdown.child_token(),
    );
    tracing::info!(
        address = %listener.local_addr()?,
        message_path = %config.message_path,
        status_path = %config.status_path,
        "ingress listening"
    );
    let limits = connections::ConnectionLimits {
        header_timeout: config.header_timeout,
        max_connections: config.max_connections,
    }
    .fitted();
    let result = connections::serve(listener, app, limits, shutdown.clone()).await;
    shutdown.cancel();
    let _ = sampler.await;
    tracing::info!("ingress stopped");
    Ok(result?)
}

/// The whole HTTP surface: the two webhooks plus the operations endpoints.
pub fn router(config: &IngressConfig, inbound: Arc<dyn Queue>) -> Router {
    let readiness = Arc::new(QueuesReady(vec![inbound.clone()]));
    webhook::router(config, inbound).merge(ops::router(readiness, ops::Health::default()))
}

fn warn_insecure() {
    let banner = "INSECURE MODE: Twilio signature checks are OFF. Anyone who can reach this \
                  port can inject customer messages. Never run this way outside a laptop.";
    eprintln!("\n!!!!!!!!!!\n{banner}\n!!!!!!!!!!\n");
    tracing::warn!(insecure = true, "{banner}");
}
