//! waconnect outbound-sender: drains the outbound queue to Twilio's Messages API.
//!
//! So far it opens its queues and the conversation store, exports their depth and serves
//! its probes; sending, rate limiting and retries build on this.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waconnect_shared::config::{ConfigErrors, ConfigSource, WorkerConfig};
use waconnect_shared::worker::{self, WorkerBackends, WorkerError};

pub const OPS_BIND_VAR: &str = "WACONNECT_SENDER_OPS_BIND";

pub fn config_from(source: &ConfigSource) -> Result<WorkerConfig, ConfigErrors> {
    WorkerConfig::from_source(source, OPS_BIND_VAR, 9092)
}

pub async fn run(
    config: WorkerConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let backends = WorkerBackends::open(&config).await?;
    worker::serve_ops(
        "outbound-sender",
        &config,
        &backends,
        ops_listener,
        shutdown,
    )
    .await
}
