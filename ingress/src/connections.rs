//! The listener's defences against slow and idle clients: every connection must send a
//! request's headers within the header timeout (which also ends idle keep-alive
//! connections), at most `max_connections` are open at once (one more is closed at once
//! rather than left waiting in the kernel's backlog), and the open ones are drained on
//! shutdown. axum::serve has none of these knobs, so connections are served with hyper's
//! HTTP/1 builder directly; the request body's own timeout is the webhook's.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// File descriptors kept free for everything else the process opens (the SQLite file,
/// outgoing connections, logs).
const RESERVED_FDS: u64 = 256;

impl ConnectionLimits {
    /// The limits, with `max_connections` lowered to what the process's open-file limit
    /// allows: past it, accept fails and every client waits, probes included.
    pub fn fitted(self) -> Self {
        let Some(files) = open_file_limit() else {
            return self;
        };
        let fits = files.saturating_sub(RESERVED_FDS).max(1) as usize;
        if fits >= self.max_connections {
            return self;
        }
        tracing::warn!(
            configured = self.max_connections,
            open_file_limit = files,
            using = fits,
            "WACONNECT_INGRESS_MAX_CONNECTIONS is above what the open-file limit allows; lowered"
        );
        Self {
            max_connections: fits,
            ..self
        }
    }
}

/// The soft `Max open files` of this process (Linux), read without unsafe code.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish their
/// requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let refused = metrics::counter!("waconnect_ingress_connections_refused_total");
    let open = metrics::gauge!("waconnect_ingress_connections");
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors or a connection reset before accept: transient.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused.increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (service, shutdown, open) = (
            TowerToHyperService::new(app.clone()),
            shutdown.clone(),
            open.clone(),
        );
        open.increment(1.0);
        connections.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // Header timeouts and resets are the clients' business, not ours.
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended");
            }
            open.decrement(1.0);
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_read() {
        let limit = open_file_limit().expect("Linux has /proc/self/limits");
        assert!(limit > 0);
        let fitted = ConnectionLimits {
            header_timeout: Duration::from_secs(1),
            max_connections: usize::MAX,
        }
        .fitted();
        assert_eq!(
            fitted.max_connections as u64,
            limit.saturating_sub(RESERVED_FDS).max(1)
        );
    }
}
