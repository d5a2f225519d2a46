//! waconnect outbound-sender: drains the outbound queue to Twilio's Messages API
//! (docs/architecture.md §1, §7).
//!
//! * [`sender`] — the consumer: per-customer order, rate limit, retries that keep the
//!   message, the delivery ledger against duplicates, dead letters with the agent told.
//! * [`twilio`] — the Messages API client and its error classes.
//! * [`ratelimit`] — the shared token bucket.

pub mod config;
pub mod content;
pub mod fleet_rate;
pub mod ratelimit;
pub mod sender;
pub mod twilio;

pub use config::{OPS_BIND_VAR, SenderConfig};

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waconnect_shared::service::config::{ConfigErrors, ConfigSource};
use waconnect_shared::service::ops::{Health, Readiness};
use waconnect_shared::service::worker::{self, WorkerBackends, WorkerError};
use waconnect_shared::storage::consumer::{self, ConsumerSettings};

pub fn config_from(source: &ConfigSource) -> Result<SenderConfig, ConfigErrors> {
    SenderConfig::from_source(source)
}

/// Not ready while Twilio refuses the credentials: the queue keeps every message, and a
/// failing probe makes the problem visible where operators look.
struct TwilioReady(Arc<sender::Sender>);

#[async_trait]
impl Readiness for TwilioReady {
    async fn check(&self) -> Result<(), String> {
        if self.0.auth_failing.load(Ordering::Relaxed) {
            return Err("Twilio refuses the credentials (HTTP 401)".into());
        }
        if self.0.config_failing.load(Ordering::Relaxed) {
            return Err(
                "Twilio refuses the sender configuration (TWILIO_FROM, TWILIO_MESSAGING_SERVICE_SID, a route's numbers or service, or the account)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Sends until `shutdown`, then finishes or hands back in-flight messages within the
/// grace period.
pub async fn run(
    config: SenderConfig,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    // Installed before anything is recorded, so no early sample is lost.
    waconnect_shared::service::telemetry::metrics();
    let backends = WorkerBackends::open(&config.worker).await?;
    metrics::gauge!("waconnect_sender_twilio_auth_failing").set(0.0);
    metrics::gauge!("waconnect_sender_twilio_config_failing").set(0.0);
    // The fleet's share first, so the first sends already keep to it. Each route's
    // sender has its own rate and roster.
    let (limiters, rates) = ratelimit::Limiters::new(&config.twilio.routing, config.rate);
    let mut paced = Vec::new();
    for rate in rates {
        let fleet_rate = fleet_rate::FleetRate {
            roster: backends.roster.clone(),
            group: format!("sender#{}", rate.sender_key),
            member: config.member_id.clone(),
            total: rate.total,
        };
        fleet_rate.beat(&rate.limiter).await;
        paced.push((fleet_rate, rate.limiter));
    }
    let sender = Arc::new(sender::Sender {
        twilio: twilio::TwilioClient::new(
            config.twilio.clone(),
            config.timeout,
            &config.worker.common.tls,
        ),
        outbound: backends.outbound.clone(),
        inbound: backends.inbound.clone(),
        ledger: backends.ledger.clone(),
        limiters,
        max_backoff: config.max_backoff,
        max_attempts: config.worker.common.queues.limits.max_attempts,
        give_up_after: config.give_up_after,
        send_timeout: config.timeout,
        confirm_wait: config.confirm_wait,
        auth_failing: AtomicBool::new(false),
        config_failing: AtomicBool::new(false),
        outcomes: tokio_util::task::TaskTracker::new(),
        recent_sids: Default::default(),
        media: backends.media.clone(),
        media_url_ttl: config.media_url_ttl,
        index: backends.index.clone(),
        menus: config.menus.clone(),
        contents: Default::default(),
    });
    let settings = ConsumerSettings {
        concurrency: config.concurrency,
        visibility: config.visibility,
        grace: config.shutdown_grace,
        gather: config.worker.receive_gather,
        // A delivery holds its message while Twilio refuses (throttling, credentials) until
        // the message is older than WACONNECT_SENDER_GIVE_UP_AFTER, by design: only past
        // that is it stuck.
        limit: config.give_up_after + consumer::HANDLING_LIMIT,
    };
    let health = Health::default();
    let pacers: Vec<_> = paced
        .into_iter()
        .map(|(fleet_rate, limiter)| {
            worker::spawn_core(
                "fleet rate",
                &health,
                &shutdown,
                fleet_rate.run(limiter, shutdown.clone()),
            )
        })
        .collect();
    let consumer = worker::spawn_core(
        "consumer",
        &health,
        &shutdown,
        sender::consume(sender.clone(), settings, shutdown.clone()),
    );
    let served = worker::serve_ops(
        "outbound-sender",
        &config.worker,
        &backends,
        ops_listener,
        shutdown,
        &health,
        vec![Arc::new(TwilioReady(sender.clone()))],
    )
    .await;
    // One grace period for all of shutdown: in-flight messages, then their outcomes.
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    let _ = consumer.await;
    for pacer in pacers {
        let _ = pacer.await;
    }
    sender
        .flush_outcomes(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    worker::finish(&health, served)
}
