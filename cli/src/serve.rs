//! `waconnect serve`: ingress, relay-worker and outbound-sender in one process, on one
//! configuration — the one-box deployment. Each service is the same library the split
//! deployment runs; on the embedded engine they share the process's one database thread,
//! so a message wakes its consumer at once instead of at the queue's next poll.

use anyhow::Context;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waconnect_ingress::config::IngressConfig;
use waconnect_shared::service::config::{ConfigErrors, ConfigSource};
use waconnect_shared::service::{shutdown, telemetry};

pub async fn listen(variable: &str, at: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(at)
        .await
        .with_context(|| format!("{variable}: cannot listen on {at}"))
}

pub async fn run(source: ConfigSource) -> anyhow::Result<()> {
    // Every service reads the one configuration; every bad variable is named at once.
    let ingress = IngressConfig::from_source(&source);
    let relay = waconnect_relay_worker::config_from(&source);
    let sender = waconnect_outbound_sender::config_from(&source);
    let (ingress, relay, sender) = match (ingress, relay, sender) {
        (Ok(i), Ok(r), Ok(s)) => (i, r, s),
        (i, r, s) => {
            let mut all = Vec::new();
            for errors in [i.err(), r.err(), s.err()].into_iter().flatten() {
                for e in errors.0 {
                    if !all.contains(&e) {
                        all.push(e);
                    }
                }
            }
            return Err(ConfigErrors(all).into());
        }
    };
    telemetry::init_logging(&ingress.common.telemetry, "waconnect")?;
    let ingress_listener = listen("WACONNECT_INGRESS_BIND", ingress.bind).await?;
    let relay_ops = listen(waconnect_relay_worker::OPS_BIND_VAR, relay.worker.ops_bind).await?;
    let sender_ops = listen(
        waconnect_outbound_sender::OPS_BIND_VAR,
        sender.worker.ops_bind,
    )
    .await?;
    let ran = serve(
        ingress,
        relay,
        sender,
        [ingress_listener, relay_ops, sender_ops],
        shutdown::on_signals(),
    )
    .await;
    telemetry::flush();
    ran
}

/// Runs the three until `stop`, or until one of them ends (then the others are stopped
/// too: half a bridge would take messages it cannot pass on).
pub async fn serve(
    ingress: IngressConfig,
    relay: waconnect_relay_worker::config::RelayConfig,
    sender: waconnect_outbound_sender::config::SenderConfig,
    [ingress_listener, relay_ops, sender_ops]: [TcpListener; 3],
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (i, r, s) = tokio::join!(
        stopping_all(
            waconnect_ingress::run(ingress, ingress_listener, stop.clone()),
            &stop
        ),
        stopping_all(
            waconnect_relay_worker::run(relay, relay_ops, stop.clone()),
            &stop
        ),
        stopping_all(
            waconnect_outbound_sender::run(sender, sender_ops, stop.clone()),
            &stop
        ),
    );
    i.context("ingress")?;
    r.context("relay-worker")?;
    s.context("outbound-sender")?;
    Ok(())
}

/// Runs one service; when it ends, for whatever reason, the others are told to stop.
async fn stopping_all<E>(
    service: impl std::future::Future<Output = Result<(), E>>,
    stop: &CancellationToken,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let ended = service.await.map_err(anyhow::Error::from);
    stop.cancel();
    ended
}
