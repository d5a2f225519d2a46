//! The queue contract: a FIFO queue with message groups, SQS-FIFO style.
//!
//! * Order is kept within a group (`group_id`, the customer address), and a group has at
//!   most one message in flight: its next message is not delivered while an earlier one
//!   is received and neither deleted nor timed out. Different groups run in parallel.
//! * A `dedup_id` seen within [`DEDUP_WINDOW`] is accepted but not enqueued again.
//! * A received message stays invisible for its visibility timeout; undeleted, it comes
//!   back with its receive count raised. Each receive issues a new [`Receipt`]; an older one
//!   no longer deletes the message.
//! * A message whose consumer reported [`Queue::fail`] `max_attempts` times is moved to
//!   the queue's dead-letter queue, keeping its body and the last error recorded. Only
//!   reported failures count: a delivery handed back unprocessed ([`Queue::release`]: a
//!   group-mate behind a failed head, a graceful shutdown) costs the message no attempt.
//! * A message received `max_receives` times with no outcome at all (its consumers kept
//!   dying) is dead-lettered by the engine: a crash backstop, set well above
//!   `max_attempts` (on SQS it is the redrive policy's `maxReceiveCount`).
//!
//! Engines: [`sqlite::SqliteQueue`] (embedded) and [`sqs::SqsQueue`] (AWS). The same suite in `waconnect-tests`
//! runs against every engine.

pub(crate) mod batch;
pub mod depth;
pub mod failures;
pub mod sqlite;
pub mod sqs;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Same as SQS: a larger message is refused at enqueue.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Same as SQS FIFO: a deduplication id is remembered this long.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Same as SQS: at most this many messages per receive.
pub const MAX_RECEIVE_BATCH: usize = 10;
/// Same as SQS: the longest long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// Same as SQS: the longest visibility timeout.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

/// How many tries a message gets before it is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failed attempts, reported with [`Queue::fail`].
    pub max_attempts: u32,
    /// Receives without any outcome: the backstop for consumers that die mid-message.
    /// Ignored by SQS, whose redrive policy holds it.
    pub max_receives: u32,
}

impl Limits {
    /// The same number for both, as the simplest tests want it.
    pub fn both(n: u32) -> Self {
        Self {
            max_attempts: n,
            max_receives: n,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub group_id: String,
    pub dedup_id: String,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message_id: String,
    /// `Some(true)`: the dedup id was seen within the window and nothing new was enqueued.
    /// `None`: the engine de-duplicates without saying so (SQS FIFO accepts a duplicate
    /// like any other send and just never delivers it).
    pub duplicate: Option<bool>,
}

/// Proof of one receive; needed to delete or extend that delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub group_id: String,
    pub dedup_id: String,
    pub body: Vec<u8>,
    /// 1 on first delivery.
    pub receive_count: u32,
    /// Failed attempts reported before this delivery (0 on first delivery, and after
    /// hand-backs that were not failures).
    pub attempts: u32,
    pub sent_at: DateTime<Utc>,
    pub receipt: Receipt,
    /// What the previous consumer reported when it failed, if it did.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub group_id: String,
    pub dedup_id: String,
    pub body: Vec<u8>,
    pub receive_count: u32,
    pub reason: String,
    pub sent_at: DateTime<Utc>,
    pub dead_at: DateTime<Utc>,
}

/// What [`Queue::take_dead_letters`] does with the letters it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Back onto the queue, to be handled again.
    Redrive,
    /// Gone for good.
    Purge,
}

/// The dedup id of dead letter `id` sent back onto its queue.
pub fn redrive_dedup_id(id: &str) -> String {
    format!("redrive-{id}")
}

/// Depth for dashboards and autoscaling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Ready to be received (including ones waiting behind their group's head).
    pub visible: u64,
    /// Received and neither deleted nor timed out.
    pub in_flight: u64,
    /// Waiting out a retry backoff.
    pub delayed: u64,
    /// In the dead-letter queue.
    pub dead_letters: u64,
    /// How long the oldest message not yet deleted has been in the queue (SQS's
    /// ApproximateAgeOfOldestMessage): the alert that a consumer is stuck or missing.
    /// `None` where the engine cannot tell: on SQS it is a CloudWatch metric, not a queue
    /// attribute, and the CloudFormation stack alarms on it there.
    pub oldest_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Will be delivered again after the backoff.
    WillRetry,
    /// That was the last allowed attempt; the message is in the dead-letter queue.
    DeadLettered,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("message of {size} bytes is over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The receipt is from an earlier delivery (the message timed out and was received
    /// again, or is gone). The current holder, if any, owns it now.
    #[error("receipt is no longer valid")]
    StaleReceipt,
    /// The backend cannot be reached or is overloaded; try again.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("queue backend error: {0}")]
    Backend(String),
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// The queue's name (used as the `queue` label in metrics).
    fn name(&self) -> &str;

    async fn send(&self, message: NewMessage) -> Result<Sent, QueueError>;

    /// Up to `max` messages, waiting up to `wait` for the first one.
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Acknowledges a delivery: the message is gone.
    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError>;

    /// Extends (or, with zero, ends) an in-flight delivery's invisibility.
    async fn change_visibility(
        &self,
        receipt: &Receipt,
        timeout: Duration,
    ) -> Result<(), QueueError>;

    /// Hands a delivery back unprocessed (a group-mate behind a failed head, a shutdown):
    /// visible again at once, and not counted as an attempt.
    async fn release(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.change_visibility(receipt, Duration::ZERO).await
    }

    /// Reports a failed attempt: the message comes back after `retry_after`, or goes to the
    /// dead-letter queue with `reason` if this was its last allowed attempt.
    async fn fail(
        &self,
        receipt: &Receipt,
        reason: &str,
        retry_after: Duration,
    ) -> Result<FailOutcome, QueueError>;

    /// Moves a delivery to the dead-letter queue now (a permanent failure).
    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> Result<(), QueueError>;

    /// The oldest dead letters, for inspection.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Takes the dead letters `ids` (their [`DeadLetter::message_id`]s) off the dead-letter
    /// queue: [`Take::Redrive`] sends each back onto this queue first, [`Take::Purge`]
    /// only deletes. Returns the ids taken; an id not among the dead letters is skipped.
    ///
    /// A redriven letter is a new message in its old group, and a group's letters go back
    /// in the order they died (which is the order they were sent), so each customer's
    /// order holds among them. Its dedup id is `redrive-<id>`: the dedup window cannot
    /// swallow it as the original it is, and the same letter redriven twice within the
    /// window (a redrive that crashed half-way, run again) is one message.
    async fn take_dead_letters(
        &self,
        ids: &[String],
        take: Take,
    ) -> Result<Vec<String>, QueueError>;

    /// Deletes dead letters that died before `before`; returns how many. An engine whose
    /// dead-letter queue expires messages itself (SQS's retention period) keeps this
    /// default.
    async fn prune_dead_letters(&self, before: DateTime<Utc>) -> Result<u64, QueueError> {
        let _ = before;
        Ok(0)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError>;
}

pub(crate) fn validate_send(message: &NewMessage) -> Result<(), QueueError> {
    if message.body.len() > MAX_BODY_BYTES {
        return Err(QueueError::TooLarge {
            size: message.body.len(),
            limit: MAX_BODY_BYTES,
        });
    }
    // SQS's rules for both ids: 1-128 characters of printable ASCII.
    for (what, id) in [
        ("group id", &message.group_id),
        ("dedup id", &message.dedup_id),
    ] {
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(QueueError::InvalidArgument(format!(
                "{what} must be 1-128 printable ASCII characters"
            )));
        }
    }
    Ok(())
}

pub(crate) fn validate_visibility(timeout: Duration) -> Result<(), QueueError> {
    if timeout > MAX_VISIBILITY {
        return Err(QueueError::InvalidArgument(
            "visibility is over the limit".into(),
        ));
    }
    Ok(())
}

pub(crate) fn validate_receive(
    max: usize,
    visibility: Duration,
    wait: Duration,
) -> Result<(), QueueError> {
    if max == 0 || max > MAX_RECEIVE_BATCH {
        return Err(QueueError::InvalidArgument(format!(
            "max must be 1-{MAX_RECEIVE_BATCH}"
        )));
    }
    if visibility > MAX_VISIBILITY || wait > MAX_WAIT {
        return Err(QueueError::InvalidArgument(
            "visibility or wait is over the limit".into(),
        ));
    }
    Ok(())
}

/// Records how long received messages waited in the queue.
pub(crate) fn observe_received(queue: &str, messages: &[ReceivedMessage]) {
    let now = Utc::now();
    for m in messages {
        let age = (now - m.sent_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("waconnect_queue_message_age_seconds", "queue" => queue.to_owned())
            .record(age);
    }
}
