use anyhow::Context;
use tokio::net::TcpListener;
use waconnect_ingress::config::IngressConfig;
use waconnect_shared::service::{shutdown, telemetry};

#[global_allocator]
static ALLOCATOR: waconnect_shared::service::allocator::Allocator =
    waconnect_shared::service::allocator::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = IngressConfig::from_env()?;
    telemetry::init_logging(&config.common.telemetry, "ingress")?;
    let listener = TcpListener::bind(config.bind)
        .await
        .with_context(|| format!("WACONNECT_INGRESS_BIND: cannot listen on {}", config.bind))?;
    let ran = waconnect_ingress::run(config, listener, shutdown::on_signals()).await;
    telemetry::flush();
    Ok(ran?)
}
