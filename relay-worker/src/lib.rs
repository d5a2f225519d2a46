//! waconnect relay-worker: the fleet that owns the Amazon Connect side (docs/architecture.md §1, §4).
//!
//! * [`inbound`] consumes the inbound queue: starts (or restarts, rehydrated) the
//!   customer's chat and sends their text with the Participant API.
//! * [`fleet`] holds conversations under leases: one [`session`] per held conversation
//!   keeps its participant [`websocket`], backfills from the transcript and forwards agent
//!   items to the outbound queue; a sweeper adopts conversations whose holder died.
//! * [`records`] spares the inbound side a read per message.
//! * [`catch_up`] queues customer messages Twilio took whose webhooks never reached
//!   ingress.
//! * [`connect`] wraps the two AWS SDK clients with classified errors, backoff and metrics.

pub mod agent_file;
pub mod attachment;
pub mod callme;
pub mod catch_up;
pub mod config;
pub mod connect;
pub mod convert;
pub mod fleet;
pub mod inbound;
pub mod indicator;
pub mod interactive;
pub mod item;
pub mod legacy;
pub mod markdown;
pub mod media_type;
pub mod outreach;
pub mod records;
pub mod session;
pub mod transfer;
pub mod vcard;
pub mod websocket;

pub use config::{OPS_BIND_VAR, RelayConfig};

use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waconnect_shared::service::config::{ConfigErrors, ConfigSource};
use waconnect_shared::service::ops::Health;
use waconnect_shared::service::worker::{self, WorkerBackends, WorkerError};
use waconnect_shared::storage::delivery::DeliveryLedger;
use waconnect_shared::storage::queue::Queue;
use waconnect_shared::storage::roster::Roster;
use waconnect_shared::storage::store::ConversationStore;
use waconnect_shared::twilio::history::History;
use waconnect_shared::twilio::recovery::Recovery;

/// How every message the bridge itself writes in the chat begins, so the agent never takes
/// it for the customer's words (the bridge writes as the customer participant).
pub const NOTICE_PREFIX: &str = "[waconnect notice - not from the customer]";

/// Each call the catch-up makes to Twilio's API, at most.
const TWILIO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// What every part of the relay shares.
pub struct Relay {
    pub api: connect::ConnectApi,
    pub store: Arc<dyn ConversationStore>,
    pub inbound: Arc<dyn Queue>,
    pub outbound: Arc<dyn Queue>,
    /// Remembers the customer messages handled, so a replayed webhook is dropped.
    pub ledger: Arc<dyn DeliveryLedger>,
    /// The relays alive and what they hold, for a fair share each.
    pub roster: Arc<dyn Roster>,
    pub config: Arc<RelayConfig>,
    /// Records the inbound side read or wrote lately.
    pub records: records::Records,
    /// Customer files on their way to the chat.
    pub media: attachment::MediaRelay,
    /// Where the agent's files wait for Twilio; `None` on AWS without a bucket.
    pub media_store: Option<Arc<dyn waconnect_shared::storage::media::MediaStore>>,
    /// Which Twilio message is which chat item.
    pub index: Arc<dyn waconnect_shared::storage::message_index::MessageIndex>,
    /// Typing and blue ticks on WhatsApp.
    pub indicators: indicator::Indicators,
    /// The TLS client configuration of the participant websockets (the extra CAs too).
    pub tls: Arc<rustls::ClientConfig>,
}

pub fn config_from(source: &ConfigSource) -> Result<RelayConfig, ConfigErrors> {
    RelayConfig::from_source(source)
}

/// Runs the relay until `shutdown`: then it stops taking messages, finishes or abandons
/// (for redelivery) the ones in flight, releases its leases, and returns — all within
/// the configured grace period.
pub async fn run(
    config: RelayConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    // Installed before anything is recorded, so no early sample is lost.
    waconnect_shared::service::telemetry::metrics();
    let backends = WorkerBackends::open(&config.worker).await?;
    let sdk = config.aws.load().await;
    let config = Arc::new(config);
    let relay = Arc::new(Relay {
        api: connect::ConnectApi::new(&sdk, config.connect.clone()),
        store: backends.store.clone(),
        inbound: backends.inbound.clone(),
        outbound: backends.outbound.clone(),
        ledger: backends.ledger.clone(),
        roster: backends.roster.clone(),
        config: config.clone(),
        records: records::Records::default(),
        media: attachment::MediaRelay::new(config.media.clone(), &config.worker.common.tls),
        media_store: backends.media.clone(),
        index: backends.index.clone(),
        indicators: indicator::Indicators::start(
            config.indicators.clone(),
            config.media.twilio.clone(),
            backends.index.clone(),
            &config.worker.common.tls,
            shutdown.child_token(),
        ),
        tls: config.worker.common.tls.client_config(),
    });
    tracing::info!(worker_id = %config.worker_id, "relay-worker starting");
    if config.media.twilio.is_none() {
        tracing::warn!(
            "no Twilio credentials (TWILIO_ACCOUNT_SID with TWILIO_AUTH_TOKEN or an API key): customers' files reach the agent as notices only"
        );
    }
    if config.media.ffmpeg.is_none() {
        tracing::warn!(
            "ffmpeg not found (WACONNECT_FFMPEG): voice notes, stickers and 3gp videos reach the agent as notices only"
        );
    }
    let fleet = fleet::Fleet::new(relay.clone(), CancellationToken::new());
    let health = Health::default();
    let consumer = worker::spawn_core(
        "consumer",
        &health,
        &shutdown,
        inbound::consume(relay.clone(), fleet.clone(), shutdown.clone()),
    );
    let renewer = worker::spawn_core(
        "lease renewer",
        &health,
        &shutdown,
        fleet.clone().renew_loop(),
    );
    let sweeper = worker::spawn_core("sweeper", &health, &shutdown, fleet.clone().sweep_loop());
    let catch_up = match (&config.media.twilio, config.catch_up.every.is_zero()) {
        (Some(account), false) => {
            let recovery = Recovery {
                history: History::new(
                    account.clone(),
                    &config.media.twilio_api_base,
                    &config.worker.common.tls,
                    TWILIO_TIMEOUT,
                ),
                routing: config.routes.routing().clone(),
                allow_non_whatsapp: config.catch_up.allow_non_whatsapp,
                ledger: backends.ledger.clone(),
                queue: backends.inbound.clone(),
            };
            Some(worker::spawn_core(
                "catch-up",
                &health,
                &shutdown,
                catch_up::run(
                    recovery,
                    backends.ledger.clone(),
                    config.catch_up.clone(),
                    shutdown.clone(),
                ),
            ))
        }
        (None, false) => {
            tracing::warn!(
                "no Twilio credentials: customer messages whose webhooks never reached ingress are not looked for (the catch-up is off)"
            );
            None
        }
        (_, true) => None,
    };
    let api = match &config.api {
        Some(api) => {
            let listener = TcpListener::bind(api.bind).await?;
            tracing::info!(address = %listener.local_addr()?, "conversation-start API listening");
            let router = outreach::router(relay.clone(), fleet.clone(), api.token.clone());
            let stop = shutdown.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }))
        }
        None => None,
    };
    // A restarted worker first takes back what its earlier life held, then adopts what
    // is waiting, rather than after a lease or a first interval.
    fleet.resume().await;
    fleet.sweep().await;
    let served = worker::serve_ops(
        "relay-worker",
        &config.worker,
        &backends,
        ops_listener,
        shutdown,
        &health,
        Vec::new(),
    )
    .await;
    let grace = config.shutdown_grace;
    let (_, ()) = tokio::join!(consumer, fleet.shutdown(grace));
    renewer.abort();
    sweeper.abort();
    if let Some(catch_up) = catch_up {
        catch_up.abort();
    }
    if let Some(api) = api {
        api.abort();
    }
    tracing::info!(worker_id = %config.worker_id, "relay-worker stopped; leases released");
    worker::finish(&health, served)
}
