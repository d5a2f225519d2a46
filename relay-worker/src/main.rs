//! The relay-worker alone, configured by its environment (README "Configuration"); the
//! `waconnect` binary runs the same as `waconnect relay`.

use anyhow::Context;
use tokio::net::TcpListener;
use waconnect_shared::service::config::ConfigSource;
use waconnect_shared::service::{shutdown, telemetry};

#[global_allocator]
static ALLOCATOR: waconnect_shared::service::allocator::Allocator =
    waconnect_shared::service::allocator::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = waconnect_relay_worker::config_from(&ConfigSource::from_env()?)?;
    telemetry::init_logging(&config.worker.common.telemetry, "relay-worker")?;
    let listener = TcpListener::bind(config.worker.ops_bind)
        .await
        .with_context(|| {
            format!(
                "{}: cannot listen on {}",
                waconnect_relay_worker::OPS_BIND_VAR,
                config.worker.ops_bind
            )
        })?;
    let ran = waconnect_relay_worker::run(config, listener, shutdown::on_signals()).await;
    telemetry::flush();
    Ok(ran?)
}
