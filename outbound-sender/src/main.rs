use anyhow::Context;
use tokio::net::TcpListener;
use waconnect_shared::service::config::ConfigSource;
use waconnect_shared::service::{shutdown, telemetry};

#[global_allocator]
static ALLOCATOR: waconnect_shared::service::allocator::Allocator =
    waconnect_shared::service::allocator::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = waconnect_outbound_sender::config_from(&ConfigSource::from_env()?)?;
    telemetry::init_logging(&config.worker.common.telemetry, "outbound-sender")?;
    let listener = TcpListener::bind(config.worker.ops_bind)
        .await
        .with_context(|| {
            format!(
                "{}: cannot listen on {}",
                waconnect_outbound_sender::OPS_BIND_VAR,
                config.worker.ops_bind
            )
        })?;
    let ran = waconnect_outbound_sender::run(config, listener, shutdown::on_signals()).await;
    telemetry::flush();
    Ok(ran?)
}
