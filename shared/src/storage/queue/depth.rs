//! Samples queue depth into gauges for dashboards and autoscalers:
//! `waconnect_queue_messages{queue, state}` with state `visible`, `in_flight`, `delayed`;
//! the dead-letter queue appears as `queue="<name>-dlq"`, state `visible`; and
//! `waconnect_queue_oldest_message_age_seconds{queue}`.

use super::Queue;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub async fn sample(queue: &dyn Queue) -> bool {
    let name = queue.name().to_owned();
    match queue.stats().await {
        Ok(s) => {
            let gauge = |queue: String, state: &'static str, v: u64| {
                metrics::gauge!("waconnect_queue_messages", "queue" => queue, "state" => state)
                    .set(v as f64);
            };
            gauge(name.clone(), "visible", s.visible);
            gauge(name.clone(), "in_flight", s.in_flight);
            gauge(name.clone(), "delayed", s.delayed);
            gauge(format!("{name}-dlq"), "visible", s.dead_letters);
            if let Some(age) = s.oldest_age {
                metrics::gauge!("waconnect_queue_oldest_message_age_seconds", "queue" => name.clone())
                    .set(age.as_secs_f64());
            }
            true
        }
        Err(e) => {
            tracing::warn!(queue = %name, error = %e, "cannot sample queue depth");
            false
        }
    }
}

/// Samples every `interval` until `shutdown`.
pub fn spawn_sampler(
    queues: Vec<Arc<dyn Queue>>,
    interval: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    for q in &queues {
                        sample(q.as_ref()).await;
                    }
                }
            }
        }
    })
}
