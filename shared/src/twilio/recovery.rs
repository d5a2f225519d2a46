//! Customer messages whose webhooks never reached ingress, put back on the inbound queue
//! from Twilio's history ([`super::history`]): what `waconnect recover` does over a range
//! an operator names, and what the relay's catch-up does for each minute just past.
//!
//! Safe to repeat, and over messages that did arrive: one the relay handled is left (the
//! delivery ledger keeps `in#<MessageSid>` for each), one still on the queue is not queued
//! twice (the queue's dedup id is the MessageSid), and a copy that slips between the two
//! (handled as it was checked) is dropped by the relay's replay guard.

use super::history::{History, HistoryError, Received};
use crate::message::address::{BusinessNumber, Channel};
use crate::message::conversation::ConversationKey;
use crate::service::routing::Routing;
use crate::storage::delivery::{DeliveryLedger, LedgerError};
use crate::storage::queue::{NewMessage, Queue, QueueError};
use chrono::{DateTime, Utc};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("reading the delivery ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("queueing a recovered message: {0}")]
    Queue(#[from] QueueError),
}

/// What became of one message Twilio lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The relay handled it already.
    Handled,
    /// Put on the inbound queue now.
    Queued,
    /// On the queue already (its webhook, or an earlier recovery, within the dedup window).
    AlreadyQueued,
    /// Given to a queue that drops it if it holds it already, without saying which (SQS).
    Offered,
    /// Would be queued (a dry run).
    WouldQueue,
    /// To a number no route takes, or from a channel ingress refuses.
    NotOurs,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handled => "handled",
            Self::Queued => "queued",
            Self::AlreadyQueued => "already_queued",
            Self::Offered => "offered",
            Self::WouldQueue => "would_queue",
            Self::NotOurs => "not_ours",
        }
    }
}

/// One message Twilio listed, and what became of it.
#[derive(Debug, Clone)]
pub struct Found {
    pub message: Received,
    /// `None` when it is not ours.
    pub conversation: Option<ConversationKey>,
    /// Its files: as Twilio counts them, or as queued.
    pub files: usize,
    pub outcome: Outcome,
}

/// Everything a recovery reads and writes.
pub struct Recovery {
    pub history: History,
    /// Which numbers are ours, as ingress takes them.
    pub routing: Routing,
    /// Ingress's `WACONNECT_ALLOW_NON_WHATSAPP`.
    pub allow_non_whatsapp: bool,
    pub ledger: Arc<dyn DeliveryLedger>,
    pub queue: Arc<dyn Queue>,
}

impl Recovery {
    /// The numbers to ask Twilio about (`None`: every number, when a route takes any
    /// number and names no sender).
    fn numbers(&self, only: Option<&BusinessNumber>) -> Vec<Option<BusinessNumber>> {
        if let Some(only) = only {
            return vec![Some(only.clone())];
        }
        let routes = self.routing.routes();
        let mut numbers: Vec<BusinessNumber> =
            routes.iter().flat_map(|r| r.numbers.clone()).collect();
        if let Some(any) = routes.iter().find(|r| r.numbers.is_empty()) {
            match &any.from {
                Some(from) => numbers.push(from.clone()),
                None => return vec![None],
            }
        }
        numbers.sort();
        numbers.dedup();
        numbers.into_iter().map(Some).collect()
    }

    /// The customer messages Twilio took from `since` to `until` (to `only`, else to every
    /// routed number), oldest first, each queued unless handled or `dry_run`. At most
    /// `max` messages, else [`HistoryError::TooMany`].
    pub async fn run(
        &self,
        only: Option<&BusinessNumber>,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        max: usize,
        dry_run: bool,
    ) -> Result<Vec<Found>, RecoveryError> {
        let mut received = Vec::new();
        for number in self.numbers(only) {
            received.extend(
                self.history
                    .received(number.as_ref(), since, until, max)
                    .await?,
            );
            if received.len() > max {
                return Err(HistoryError::TooMany(max).into());
            }
        }
        // Each number's list is in order; merged, stable by time.
        received.sort_by_key(|m| m.sent_at);
        let mut found = Vec::with_capacity(received.len());
        for message in received {
            found.push(self.one(message, dry_run).await?);
        }
        Ok(found)
    }

    async fn one(&self, message: Received, dry_run: bool) -> Result<Found, RecoveryError> {
        let key = message
            .parties()
            .filter(|(customer, business)| {
                (customer.channel() == Channel::WhatsApp || self.allow_non_whatsapp)
                    && self.routing.route_for(business).is_some()
            })
            .map(|(customer, business)| ConversationKey::new(business, customer));
        let found = |conversation, files, outcome| Found {
            conversation,
            files,
            outcome,
            message: message.clone(),
        };
        let Some(key) = key else {
            return Ok(found(None, message.num_media, Outcome::NotOurs));
        };
        // What the relay records for each message it handled (its replay guard).
        if self
            .ledger
            .outcome(&format!("in#{}", message.sid))
            .await?
            .is_some()
        {
            return Ok(found(Some(key), message.num_media, Outcome::Handled));
        }
        if dry_run {
            return Ok(found(Some(key), message.num_media, Outcome::WouldQueue));
        }
        let files = self.history.files(&message).await?;
        let event = message.event(self.history.account_sid(), &files);
        let sent = self
            .queue
            .send(NewMessage {
                group_id: event.kind.queue_group(&key),
                dedup_id: message.sid.clone(),
                body: event.to_json(),
            })
            .await?;
        let outcome = match sent.duplicate {
            Some(false) => Outcome::Queued,
            Some(true) => Outcome::AlreadyQueued,
            None => Outcome::Offered,
        };
        Ok(found(Some(key), files.len(), outcome))
    }
}
