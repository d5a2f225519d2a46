//! The AWS queue engine: an SQS FIFO queue and the FIFO dead-letter queue its redrive
//! policy names.
//!
//! SQS gives groups, order, dedup, visibility and redrive itself. What it lacks is kept
//! next to it:
//! * A failure's reason and backoff go to the DynamoDB table ([`FailureLog`]), written
//!   only when an attempt fails.
//! * SQS only counts whole seconds of visibility, and a receipt handle from an earlier
//!   delivery is not reliably refused everywhere (moto accepts it). So each handle keeps
//!   the deliveries it made until they end, and treats a receipt whose visibility has run
//!   out as stale without asking SQS: a consumer that overran its timeout must never
//!   delete the message someone else now holds. That also gives the body and ids an
//!   explicit dead-lettering needs.
//! * A message dead-lettered by waconnect goes to the DLQ with its reason, ids, receive
//!   count and first send time as message attributes; one redriven by SQS after
//!   `maxReceiveCount` receives (its consumer died every time) carries none and is
//!   reported as such.
//!
//! * Attempts are counted in the failure log, not by SQS's receive count: a receive that
//!   hands out several messages of one group counts a receive for each, though only the
//!   first is tried and the rest are handed back when it fails. `max_attempts` reported
//!   failures dead-letter a message; the redrive policy's `maxReceiveCount` is only the
//!   backstop for consumers that die mid-message, and must be set well above it.
//!
//! SQS de-duplicates without saying so, so [`Sent::duplicate`] is `None` here.

use super::batch::{Deletes, deletes};
use super::failures::FailureLog;
use super::{
    DeadLetter, FailOutcome, MAX_RECEIVE_BATCH, NewMessage, Queue, QueueError, QueueStats, Receipt,
    ReceivedMessage, Sent, Take, observe_received, validate_receive, validate_send,
};
use crate::service::aws::CallError;
use crate::storage::time::{from_millis, now_millis};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, Message, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Marks a body SQS could not carry as text (not UTF-8, or characters SQS refuses).
const ENCODED: &str = "b64:";
const REASON: &str = "waconnect-reason";
const MESSAGE_ID: &str = "waconnect-message-id";
const DEDUP_ID: &str = "waconnect-dedup-id";
const RECEIVES: &str = "waconnect-receive-count";
const SENT_AT: &str = "waconnect-sent-at";
/// SQS's limit on a message attribute is the message's; a reason is kept short anyway.
const MAX_REASON_BYTES: usize = 4096;
/// Dead letters one pass of [`Queue::take_dead_letters`] looks through.
const MAX_TAKE_PEEK: usize = 1000;
/// Passes of [`Queue::take_dead_letters`], at most: each takes what it can see.
const MAX_TAKE_PASSES: usize = 20;

/// A dead letter's id: the one it had in the queue (ours, when we moved it), or SQS's
/// own (when SQS's redrive policy moved it).
fn letter_id(m: &Message) -> &str {
    user(m, MESSAGE_ID).or(m.message_id()).unwrap_or_default()
}

/// A delivery this handle made and has not yet ended.
struct Held {
    message: ReceivedMessage,
    /// When SQS makes it visible again; from then on the receipt is stale.
    deadline: Instant,
}

pub struct SqsQueue {
    client: Client,
    name: String,
    url: String,
    dlq_url: String,
    max_receives: u32,
    max_attempts: u32,
    failures: FailureLog,
    deletes: Deletes,
    held: Mutex<HashMap<String, Held>>,
}

/// What a queue URL and its redrive policy say about the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QueueSetup {
    dlq_url: String,
    max_receives: u32,
}

impl SqsQueue {
    /// Opens the queue at `url` (metrics call it `name`), finding its dead-letter queue from
    /// its redrive policy. A queue that is not FIFO or has no redrive policy is refused.
    pub async fn open(
        client: Client,
        name: &str,
        url: &str,
        failures: FailureLog,
        max_attempts: u32,
    ) -> Result<Self, QueueError> {
        let setup = Self::setup(&client, url).await?;
        if setup.max_receives <= max_attempts {
            // Every receive of a group-mate counts there: SQS would dead-letter messages
            // that were never tried long before they used their attempts.
            tracing::warn!(
                queue = name,
                max_receive_count = setup.max_receives,
                max_attempts,
                "the redrive policy's maxReceiveCount should be well above the attempts allowed (deploy/ sets 50)"
            );
        }
        Ok(Self {
            deletes: deletes(client.clone(), url.to_owned()),
            client,
            name: name.to_owned(),
            url: url.to_owned(),
            dlq_url: setup.dlq_url,
            max_receives: setup.max_receives,
            max_attempts: max_attempts.max(1),
            failures,
            held: Mutex::default(),
        })
    }

    async fn setup(client: &Client, url: &str) -> Result<QueueSetup, QueueError> {
        let attributes = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::FifoQueue)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?;
        let attributes = attributes.attributes.unwrap_or_default();
        let refuse = |why: &str| QueueError::InvalidArgument(format!("queue {url}: {why}"));
        if attributes
            .get(&QueueAttributeName::FifoQueue)
            .map(String::as_str)
            != Some("true")
        {
            return Err(refuse("is not a FIFO queue"));
        }
        let policy: serde_json::Value = attributes
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|p| serde_json::from_str(p).ok())
            .ok_or_else(|| refuse("has no redrive policy to a FIFO dead-letter queue"))?;
        let arn = policy["deadLetterTargetArn"]
            .as_str()
            .ok_or_else(|| refuse("redrive policy has no deadLetterTargetArn"))?;
        let max_receives = match &policy["maxReceiveCount"] {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .filter(|n| *n > 0)
        .ok_or_else(|| refuse("redrive policy has no maxReceiveCount"))?;
        // arn:aws:sqs:<region>:<account>:<name>
        let mut parts = arn.rsplitn(2, ':');
        let (dlq_name, account) = (
            parts.next().unwrap_or_default(),
            parts.next().and_then(|p| p.rsplit(':').next()),
        );
        let dlq_url = client
            .get_queue_url()
            .queue_name(dlq_name)
            .set_queue_owner_aws_account_id(account.map(str::to_owned))
            .send()
            .await
            .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?
            .queue_url
            .ok_or_else(|| refuse("dead-letter queue has no URL"))?;
        Ok(QueueSetup {
            dlq_url,
            max_receives: max_receives as u32,
        })
    }

    /// The delivery `receipt` made, if it is still this handle's to end.
    fn current(&self, receipt: &Receipt) -> Result<ReceivedMessage, QueueError> {
        let mut held = self.held.lock().expect("held map poisoned");
        match held.get(&receipt.0) {
            Some(h) if h.deadline > Instant::now() => Ok(h.message.clone()),
            Some(_) => {
                held.remove(&receipt.0);
                Err(QueueError::StaleReceipt)
            }
            None => Err(QueueError::StaleReceipt),
        }
    }

    fn end(&self, receipt: &Receipt) {
        self.held
            .lock()
            .expect("held map poisoned")
            .remove(&receipt.0);
    }

    async fn set_visibility(&self, receipt: &Receipt, timeout: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(whole_seconds(timeout))
            .send()
            .await
            .map_err(|e| stale_or(CallError::from_sdk(&e)))?;
        Ok(())
    }

    /// Moves the delivery to the DLQ with its reason: send there first, then delete here,
    /// so a crash in between leaves a copy (the DLQ's dedup id is the message id) rather
    /// than nothing.
    async fn move_to_dlq(&self, message: &ReceivedMessage, reason: &str) -> Result<(), QueueError> {
        let attribute = |v: String, kind: &str| {
            MessageAttributeValue::builder()
                .data_type(kind)
                .string_value(v)
                .build()
                .expect("data type is set")
        };
        let reason = truncate(reason, MAX_REASON_BYTES);
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(encode(&message.body))
            .message_group_id(&message.group_id)
            .message_deduplication_id(&message.message_id)
            .message_attributes(REASON, attribute(reason.to_owned(), "String"))
            .message_attributes(MESSAGE_ID, attribute(message.message_id.clone(), "String"))
            .message_attributes(DEDUP_ID, attribute(message.dedup_id.clone(), "String"))
            .message_attributes(
                RECEIVES,
                attribute(message.receive_count.to_string(), "Number"),
            )
            .message_attributes(
                SENT_AT,
                attribute(message.sent_at.timestamp_millis().to_string(), "Number"),
            )
            .send()
            .await
            .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?;
        let deleted = self
            .deletes
            .call(message.receipt.0.clone())
            .await
            .map_err(stale_or);
        self.end(&message.receipt);
        deleted
    }

    /// Receives up to `limit` dead letters (out of sight for 30 s): a group's in the
    /// order they died.
    async fn receive_dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<(Message, Receipt)>, QueueError> {
        let mut seen: Vec<(Message, Receipt)> = Vec::new();
        while seen.len() < limit {
            let out = self
                .client
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages((limit - seen.len()).min(MAX_RECEIVE_BATCH) as i32)
                .visibility_timeout(30)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?;
            let batch = out.messages.unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            for m in batch {
                let receipt = Receipt(m.receipt_handle().unwrap_or_default().to_owned());
                seen.push((m, receipt));
            }
        }
        Ok(seen)
    }

    /// Makes received dead letters visible again at once.
    async fn hand_back_dead_letters(&self, receipts: &[Receipt]) {
        for chunk in receipts.chunks(MAX_RECEIVE_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&r.0)
                        .visibility_timeout(0)
                        .build()
                        .expect("id and receipt are set")
                })
                .collect();
            if let Err(e) = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.dlq_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                tracing::warn!(queue = %self.name, error = %CallError::from_sdk(&e), "cannot hand dead letters back");
            }
        }
    }

    /// Redrives (sends back, then deletes) or purges (deletes) one received dead letter.
    async fn take_one(
        &self,
        m: &Message,
        receipt: &Receipt,
        id: &str,
        take: Take,
    ) -> Result<(), QueueError> {
        if take == Take::Redrive {
            let group = system(m, &MessageSystemAttributeName::MessageGroupId).unwrap_or_default();
            self.client
                .send_message()
                .queue_url(&self.url)
                // As it lies in the DLQ: already in the queue's encoding.
                .message_body(m.body().unwrap_or_default())
                .message_group_id(group)
                .message_deduplication_id(super::redrive_dedup_id(id))
                .send()
                .await
                .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?;
        }
        self.client
            .delete_message()
            .queue_url(&self.dlq_url)
            .receipt_handle(&receipt.0)
            .send()
            .await
            .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?;
        Ok(())
    }

    async fn attributes(
        &self,
        url: &str,
        names: &[QueueAttributeName],
    ) -> Result<HashMap<QueueAttributeName, u64>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?;
        Ok(out
            .attributes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect())
    }
}

/// SQS says a receipt is no longer good in a few ways; all of them mean StaleReceipt.
/// Over its JSON protocol the SDK reports SQS's query-compatible codes, which for a
/// delivery whose visibility ran out is `AWS.SimpleQueueService.MessageNotInflight`.
fn stale_or(e: CallError) -> QueueError {
    let stale = e.is("ReceiptHandleIsInvalid")
        || e.is("AWS.SimpleQueueService.MessageNotInflight")
        || e.is("MessageNotInflight")
        || (e.is("InvalidParameterValue") && e.message.contains("eceipt"));
    if stale {
        QueueError::StaleReceipt
    } else {
        e.into()
    }
}

/// SQS counts visibility and waits in whole seconds; rounding up never cuts one short.
fn whole_seconds(d: Duration) -> i32 {
    d.as_millis().div_ceil(1000).min(i32::MAX as u128) as i32
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// SQS carries text only (XML 1.0 characters).
fn sqs_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{a}' | '\u{d}' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
    })
}

fn encode(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) if sqs_text(text) && !text.starts_with(ENCODED) => text.to_owned(),
        _ => format!("{ENCODED}{}", BASE64.encode(body)),
    }
}

fn decode(body: &str) -> Result<Vec<u8>, QueueError> {
    match body.strip_prefix(ENCODED) {
        Some(encoded) => BASE64
            .decode(encoded)
            .map_err(|e| QueueError::Backend(format!("undecodable message body: {e}"))),
        None => Ok(body.as_bytes().to_vec()),
    }
}

fn system<'a>(m: &'a Message, name: &MessageSystemAttributeName) -> Option<&'a str> {
    m.attributes()?.get(name).map(String::as_str)
}

fn user<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.message_attributes()?.get(name)?.string_value()
}

fn sent_at(m: &Message) -> DateTime<Utc> {
    from_millis(
        system(m, &MessageSystemAttributeName::SentTimestamp)
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(now_millis),
    )
}

fn received(m: Message) -> Result<ReceivedMessage, QueueError> {
    let missing = |what: &str| QueueError::Backend(format!("SQS message without {what}"));
    Ok(ReceivedMessage {
        message_id: m.message_id().ok_or_else(|| missing("id"))?.to_owned(),
        group_id: system(&m, &MessageSystemAttributeName::MessageGroupId)
            .ok_or_else(|| missing("group id"))?
            .to_owned(),
        dedup_id: system(&m, &MessageSystemAttributeName::MessageDeduplicationId)
            .unwrap_or_default()
            .to_owned(),
        body: decode(m.body().unwrap_or_default())?,
        receive_count: system(&m, &MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|c| c.parse().ok())
            .unwrap_or(1),
        sent_at: sent_at(&m),
        receipt: Receipt(
            m.receipt_handle()
                .ok_or_else(|| missing("receipt"))?
                .to_owned(),
        ),
        last_error: None,
        attempts: 0,
    })
}

#[async_trait]
impl Queue for SqsQueue {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: NewMessage) -> Result<Sent, QueueError> {
        validate_send(&message)?;
        let body = encode(&message.body);
        if body.len() > super::MAX_BODY_BYTES {
            return Err(QueueError::TooLarge {
                size: body.len(),
                limit: super::MAX_BODY_BYTES,
            });
        }
        let out = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .message_group_id(message.group_id)
            .message_deduplication_id(message.dedup_id)
            .send()
            .await
            .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?;
        metrics::counter!("waconnect_queue_sent_total", "queue" => self.name.clone(), "outcome" => "accepted")
            .increment(1);
        Ok(Sent {
            message_id: out.message_id.unwrap_or_default(),
            duplicate: None,
        })
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        validate_receive(max, visibility, wait)?;
        let visibility = whole_seconds(visibility);
        // Measured from before the call: the deadline errs early, never late.
        let started = Instant::now();
        // A long poll legitimately waits `wait` before answering: its attempts get that
        // on top of the client's usual bound.
        let timeouts = crate::service::aws::stretched(self.client.config().timeout_config(), wait);
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.min(MAX_RECEIVE_BATCH) as i32)
            .visibility_timeout(visibility)
            .wait_time_seconds(whole_seconds(wait))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .customize()
            .config_override(aws_sdk_sqs::config::Builder::default().timeout_config(timeouts))
            .send()
            .await
            .map_err(|e| QueueError::from(CallError::from_sdk(&e)))?;
        let mut messages = out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(received)
            .collect::<Result<Vec<_>, _>>()?;
        let redelivered: Vec<&str> = messages
            .iter()
            .filter(|m| m.receive_count > 1)
            .map(|m| m.message_id.as_str())
            .collect();
        if !redelivered.is_empty() {
            match self.failures.last_errors(&self.name, &redelivered).await {
                Ok(errors) => {
                    for m in &mut messages {
                        if let Some(f) = errors.get(&m.message_id) {
                            m.last_error = Some(f.last_error.clone());
                            m.attempts = f.attempts;
                        }
                    }
                }
                // Informational only: the message itself must not wait for it.
                Err(e) => {
                    tracing::warn!(queue = %self.name, error = %e, "cannot read earlier failures")
                }
            }
        }
        let deadline = started + Duration::from_secs(visibility as u64);
        {
            let mut held = self.held.lock().expect("held map poisoned");
            let now = Instant::now();
            held.retain(|_, h| h.deadline > now);
            for m in &messages {
                held.insert(
                    m.receipt.0.clone(),
                    Held {
                        message: m.clone(),
                        deadline,
                    },
                );
            }
        }
        observe_received(&self.name, &messages);
        Ok(messages)
    }

    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.current(receipt)?;
        let result = self.deletes.call(receipt.0.clone()).await.map_err(stale_or);
        if !matches!(result, Err(QueueError::Unavailable(_))) {
            self.end(receipt);
        }
        result
    }

    async fn change_visibility(
        &self,
        receipt: &Receipt,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        super::validate_visibility(timeout)?;
        self.current(receipt)?;
        let started = Instant::now();
        self.set_visibility(receipt, timeout).await?;
        let mut held = self.held.lock().expect("held map poisoned");
        if timeout.is_zero() {
            held.remove(&receipt.0);
        } else if let Some(h) = held.get_mut(&receipt.0) {
            h.deadline = started + Duration::from_secs(whole_seconds(timeout) as u64);
        }
        Ok(())
    }

    async fn fail(
        &self,
        receipt: &Receipt,
        reason: &str,
        retry_after: Duration,
    ) -> Result<FailOutcome, QueueError> {
        let message = self.current(receipt)?;
        let attempts = message.attempts + 1;
        if attempts >= self.max_attempts {
            let why = format!("failed {attempts} times; last error: {reason}");
            self.move_to_dlq(&message, &why).await?;
            return Ok(FailOutcome::DeadLettered);
        }
        let back_at = now_millis() + i64::from(whole_seconds(retry_after)) * 1000;
        // Before the message can reappear, so its next consumer sees why it came back.
        if let Err(e) = self
            .failures
            .record(
                &self.name,
                &message.message_id,
                truncate(reason, MAX_REASON_BYTES),
                attempts,
                back_at,
            )
            .await
        {
            tracing::warn!(queue = %self.name, error = %e, "cannot record a failure's reason");
        }
        self.set_visibility(receipt, retry_after).await?;
        self.end(receipt);
        Ok(FailOutcome::WillRetry)
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> Result<(), QueueError> {
        let message = self.current(receipt)?;
        self.move_to_dlq(&message, reason).await
    }

    async fn take_dead_letters(
        &self,
        ids: &[String],
        take: Take,
    ) -> Result<Vec<String>, QueueError> {
        let mut wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut taken = Vec::new();
        // A FIFO queue hands out a group's later letters only once its earlier ones are
        // gone or back: a letter deep in a group may need another pass.
        for _ in 0..MAX_TAKE_PASSES {
            if wanted.is_empty() {
                break;
            }
            let seen = self.receive_dead_letters(MAX_TAKE_PEEK).await?;
            let mut back = Vec::new();
            let mut failed = None;
            let before = taken.len();
            for (m, receipt) in seen {
                let id = letter_id(&m).to_owned();
                if failed.is_some() || !wanted.contains(id.as_str()) {
                    back.push(receipt);
                    continue;
                }
                // Received in the order they died: a group's go back in that order.
                match self.take_one(&m, &receipt, &id, take).await {
                    Ok(()) => {
                        wanted.remove(id.as_str());
                        taken.push(id);
                    }
                    Err(e) => {
                        failed = Some(e);
                        back.push(receipt);
                    }
                }
            }
            self.hand_back_dead_letters(&back).await;
            if let Some(e) = failed {
                return Err(e);
            }
            if taken.len() == before {
                break;
            }
        }
        Ok(taken)
    }

    /// Peeks at the DLQ: receives what is there and hands it straight back.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let seen = self.receive_dead_letters(limit).await?;
        let receipts: Vec<Receipt> = seen.iter().map(|(_, r)| r.clone()).collect();
        self.hand_back_dead_letters(&receipts).await;
        // Redriven ones carry no reason of ours; the failure log may know their last error.
        let redriven: Vec<&str> = seen
            .iter()
            .filter(|(m, _)| user(m, REASON).is_none())
            .filter_map(|(m, _)| m.message_id())
            .collect();
        let last_errors = self
            .failures
            .last_errors(&self.name, &redriven)
            .await
            .unwrap_or_default();
        let mut letters = Vec::with_capacity(seen.len());
        for (m, _) in &seen {
            let dead_at = sent_at(m);
            let message_id = letter_id(m).to_owned();
            let reason = match user(m, REASON) {
                Some(r) => r.to_owned(),
                None => {
                    let mut r = format!(
                        "received {} times without being deleted (its consumer crashed or timed out; redriven by SQS)",
                        self.max_receives
                    );
                    if let Some(last) = last_errors.get(&message_id) {
                        r.push_str(&format!("; last reported error: {}", last.last_error));
                    }
                    r
                }
            };
            letters.push(DeadLetter {
                group_id: system(m, &MessageSystemAttributeName::MessageGroupId)
                    .unwrap_or_default()
                    .to_owned(),
                dedup_id: user(m, DEDUP_ID)
                    .or(system(
                        m,
                        &MessageSystemAttributeName::MessageDeduplicationId,
                    ))
                    .unwrap_or_default()
                    .to_owned(),
                body: decode(m.body().unwrap_or_default())?,
                receive_count: user(m, RECEIVES)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(self.max_receives),
                sent_at: user(m, SENT_AT)
                    .and_then(|t| t.parse().ok())
                    .map(from_millis)
                    .unwrap_or(dead_at),
                reason,
                dead_at,
                message_id,
            });
        }
        Ok(letters)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        use QueueAttributeName::{
            ApproximateNumberOfMessages as Visible, ApproximateNumberOfMessagesDelayed as Delayed,
            ApproximateNumberOfMessagesNotVisible as NotVisible,
        };
        let (main, dead, backing_off) = tokio::join!(
            self.attributes(&self.url, &[Visible, NotVisible, Delayed]),
            self.attributes(&self.dlq_url, &[Visible, NotVisible, Delayed]),
            self.failures.backing_off(&self.name),
        );
        let (main, dead) = (main?, dead?);
        let get = |m: &HashMap<QueueAttributeName, u64>, k: &QueueAttributeName| {
            m.get(k).copied().unwrap_or(0)
        };
        // SQS counts a message waiting out our backoff as in flight; we call it delayed.
        let backing_off = backing_off.unwrap_or(0).min(get(&main, &NotVisible));
        Ok(QueueStats {
            visible: get(&main, &Visible),
            in_flight: get(&main, &NotVisible) - backing_off,
            delayed: get(&main, &Delayed) + backing_off,
            dead_letters: get(&dead, &Visible) + get(&dead, &NotVisible) + get(&dead, &Delayed),
            // Not a queue attribute: CloudWatch's ApproximateAgeOfOldestMessage has it.
            oldest_age: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_error(code: &str, message: &str) -> CallError {
        CallError {
            unavailable: false,
            code: Some(code.to_owned()),
            message: message.to_owned(),
        }
    }

    #[test]
    fn every_way_sqs_says_a_receipt_went_stale_is_stale() {
        for (code, message) in [
            ("AWS.SimpleQueueService.MessageNotInflight", "not in flight"),
            ("MessageNotInflight", "not in flight"),
            ("ReceiptHandleIsInvalid", "invalid"),
            ("InvalidParameterValue", "The receipt handle has expired."),
        ] {
            assert_eq!(
                stale_or(call_error(code, message)),
                QueueError::StaleReceipt,
                "{code}"
            );
        }
        assert_ne!(
            stale_or(call_error(
                "InvalidParameterValue",
                "Value 50000 for VisibilityTimeout"
            )),
            QueueError::StaleReceipt
        );
    }
}
