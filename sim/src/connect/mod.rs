//! A simulated Amazon Connect: the Connect and Participant REST APIs, the participant
//! websocket, an agent desk and fault injection, all on one loopback port. The real
//! `aws-sdk-connect` and `aws-sdk-connectparticipant` clients talk to it through
//! `endpoint_url`, unchanged (docs/architecture.md §5, §6).

mod client;
mod desk;
mod faults;
mod model;
mod rest;
mod websocket;
mod wire;

pub use client::{DeskClient, Scan, SimStats};
pub use desk::ChatSummary;
pub use model::{EVENT_PREFIX, SimOptions};
pub use wire::{AttachmentItem, Item};

use axum::Router;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Sim {
    inner: Mutex<model::Inner>,
    options: SimOptions,
    address: SocketAddr,
    /// Upgraded sockets outlive the HTTP server; they watch this to close with it.
    stop: CancellationToken,
}

impl Sim {
    fn lock(&self) -> MutexGuard<'_, model::Inner> {
        // A panicking handler must not wedge the simulator for the rest of a test.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn http_base(&self) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }
    fn ws_base(&self) -> String {
        let scheme = if self.options.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.address)
    }
}

/// A running simulator; stops when dropped.
pub struct ConnectSim {
    address: SocketAddr,
    options: SimOptions,
    stop: CancellationToken,
}

impl ConnectSim {
    pub async fn start() -> Self {
        Self::start_with(SimOptions::default()).await
    }

    pub async fn start_with(options: SimOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let stop = CancellationToken::new();
        let address = listener.local_addr().expect("bound address");
        tokio::spawn(serve(listener, options.clone(), stop.clone()));
        Self {
            address,
            options,
            stop,
        }
    }

    /// The endpoint both SDK clients are pointed at.
    pub fn endpoint(&self) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    pub fn instance_id(&self) -> &str {
        &self.options.instance_id
    }

    pub fn desk(&self) -> DeskClient {
        DeskClient::new(self.endpoint())
    }
}

impl Drop for ConnectSim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves the simulator on `listener` until `stop` (the sandbox runs it this way).
pub async fn serve(
    listener: TcpListener,
    options: SimOptions,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let tls = options.tls;
    let sim = Arc::new(Sim {
        inner: Mutex::default(),
        options,
        address: listener.local_addr()?,
        stop: stop.clone(),
    });
    let app: Router = rest::routes()
        .merge(desk::routes())
        .route("/connect/ws/{token}", get(websocket::upgrade))
        .with_state(sim);
    if tls {
        return crate::tls::serve(listener, app, stop).await;
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}
