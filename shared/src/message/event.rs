//! What ingress puts on the inbound queue: one Twilio webhook, every field kept verbatim
//! (Twilio adds fields without notice, and the relay may want them later), with typed
//! accessors for the fields waconnect uses.

use crate::message::address::{AddressError, BusinessNumber, CustomerAddress};
use crate::message::conversation::ConversationKey;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A customer's message (incoming-message webhook).
    Message,
    /// A delivery status of one of our outbound messages (status callback).
    Status,
}

impl EventKind {
    /// The inbound queue's FIFO group for this kind of event in conversation `key`.
    /// Status callbacks have a group of their own per conversation: a receipt that meets
    /// a Connect hiccup must never hold up (or, retried, endanger) the customer's next
    /// message, while receipts stay in order among themselves.
    pub fn queue_group(self, key: &crate::ConversationKey) -> String {
        match self {
            Self::Message => key.storage(),
            Self::Status => format!("status:{}", key.storage()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundEvent {
    pub kind: EventKind,
    /// Every form field in the order Twilio sent it; repeated names are kept.
    pub fields: Vec<(String, String)>,
    pub received_at: DateTime<Utc>,
    /// Twilio's `I-Twilio-Idempotency-Token` header, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_token: Option<String>,
    /// The query parameters of the URL Twilio called (covered by its signature). The
    /// outbound-sender puts the Connect item a status callback is about here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("missing required field {0}")]
    Missing(&'static str),
    #[error("field {field}: {source}")]
    Address {
        field: &'static str,
        source: AddressError,
    },
    #[error("field {field}: {why}")]
    Invalid { field: &'static str, why: String },
}

/// Twilio sends at most ten media items with a message (WhatsApp sends one); a larger
/// count is refused at ingress and never looped over.
pub const MAX_MEDIA: usize = 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media<'a> {
    pub url: &'a str,
    pub content_type: Option<&'a str>,
}

impl InboundEvent {
    pub fn new(kind: EventKind, fields: Vec<(String, String)>) -> Self {
        Self {
            kind,
            fields,
            received_at: Utc::now(),
            idempotency_token: None,
            query: Vec::new(),
        }
    }

    /// The first value of a query parameter of the called URL.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a query parameter of the called URL, in order.
    pub fn query_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a field, as Twilio sent it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &'static str) -> Result<&str, EventError> {
        match self.field(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(EventError::Missing(name)),
        }
    }

    /// Checks the fields every event needs, so a malformed webhook is refused at the door
    /// rather than poisoning the queue.
    pub fn validate(&self) -> Result<(), EventError> {
        self.message_sid()?;
        // Both ends are addresses: the customer and our business number.
        for field in ["From", "To"] {
            CustomerAddress::parse(self.required(field)?)
                .map_err(|source| EventError::Address { field, source })?;
        }
        if self.kind == EventKind::Status {
            self.required("MessageStatus")?;
        }
        let invalid = |field: &'static str, why: &str| EventError::Invalid {
            field,
            why: why.to_owned(),
        };
        if let Some(n) = self.field("NumMedia") {
            match n.parse::<usize>() {
                Ok(n) if n <= MAX_MEDIA => {}
                _ => return Err(invalid("NumMedia", "expected a whole number from 0 to 10")),
            }
        }
        if let Some(n) = self.field("NumSegments")
            && !n.is_empty()
            && !n.parse::<u16>().is_ok_and(|n| n <= 100)
        {
            return Err(invalid(
                "NumSegments",
                "expected a whole number from 0 to 100",
            ));
        }
        for (field, limit) in [("Latitude", 90.0), ("Longitude", 180.0)] {
            if let Some(v) = self.field(field)
                && !v
                    .parse::<f64>()
                    .is_ok_and(|v| v.is_finite() && v.abs() <= limit)
            {
                return Err(invalid(field, "not a coordinate"));
            }
        }
        Ok(())
    }

    pub fn message_sid(&self) -> Result<&str, EventError> {
        self.required("MessageSid")
    }

    /// The customer: the sender of a message, the recipient of a status callback.
    pub fn customer(&self) -> Result<CustomerAddress, EventError> {
        let field = match self.kind {
            EventKind::Message => "From",
            EventKind::Status => "To",
        };
        CustomerAddress::parse(self.required(field)?)
            .map_err(|source| EventError::Address { field, source })
    }

    /// Our number: the one a message was sent to, the one a status callback's message was
    /// sent from.
    pub fn business(&self) -> Result<BusinessNumber, EventError> {
        let field = match self.kind {
            EventKind::Message => "To",
            EventKind::Status => "From",
        };
        BusinessNumber::parse(self.required(field)?)
            .map_err(|source| EventError::Address { field, source })
    }

    /// The conversation this event belongs to. A status without `From` is one the sender
    /// made (Twilio's always name it, and ingress refuses any without) for a reply of a
    /// conversation recorded before routing, keyed by the customer alone.
    pub fn key(&self) -> Result<ConversationKey, EventError> {
        if self.kind == EventKind::Status && self.field("From").is_none() {
            return Ok(ConversationKey::legacy(self.customer()?));
        }
        Ok(ConversationKey::new(self.business()?, self.customer()?))
    }

    /// The id that follows this event through every service's logs ([`crate::message::trace`]): a
    /// customer message's, from its MessageSid; a receipt's, the agent item's it is about
    /// (the same as the reply's own), else its MessageSid's.
    pub fn trace_id(&self) -> String {
        match (self.kind, self.query_param("item")) {
            (EventKind::Status, Some(item)) => crate::message::trace::of(item),
            _ => crate::message::trace::of(self.field("MessageSid").unwrap_or_default()),
        }
    }

    /// The queue deduplication id: Twilio retries the same webhook with the same
    /// MessageSid, and a message's status changes are distinct events.
    pub fn dedup_id(&self) -> Result<String, EventError> {
        let sid = self.message_sid()?;
        Ok(match self.kind {
            EventKind::Message => sid.to_owned(),
            EventKind::Status => format!("{sid}:{}", self.required("MessageStatus")?),
        })
    }

    pub fn body(&self) -> &str {
        self.field("Body").unwrap_or("")
    }

    pub fn profile_name(&self) -> Option<&str> {
        self.field("ProfileName").filter(|v| !v.is_empty())
    }

    pub fn wa_id(&self) -> Option<&str> {
        self.field("WaId").filter(|v| !v.is_empty())
    }

    pub fn message_type(&self) -> Option<&str> {
        self.field("MessageType").filter(|v| !v.is_empty())
    }

    pub fn message_status(&self) -> Option<&str> {
        self.field("MessageStatus")
    }

    /// Whether this status reaches the agent (a receipt, or a failure notice). The others
    /// (queued, sending, sent…) change nothing anywhere, so ingress acknowledges them
    /// without queueing: three queue calls per outbound message saved.
    pub fn is_relayed_status(&self) -> bool {
        matches!(
            self.message_status(),
            Some("delivered" | "read" | "failed" | "undelivered")
        )
    }

    pub fn error_code(&self) -> Option<&str> {
        self.field("ErrorCode").filter(|v| !v.is_empty())
    }

    /// Capped at [`MAX_MEDIA`] whatever the field says: events queued before ingress
    /// checked it must not make anyone loop a billion times.
    pub fn num_media(&self) -> usize {
        self.field("NumMedia")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            .min(MAX_MEDIA)
    }

    pub fn media(&self) -> Vec<Media<'_>> {
        (0..self.num_media())
            .filter_map(|i| {
                let url = self.field(&format!("MediaUrl{i}"))?;
                Some(Media {
                    url,
                    content_type: self.field(&format!("MediaContentType{i}")),
                })
            })
            .collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an InboundEvent always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ingress accepts at most 64 KiB of form by default; the event it queues must fit SQS's
    /// 256 KiB with room to spare, even when every character is one JSON escapes at six
    /// bytes (a control character costs three in the form: `%01`).
    #[test]
    fn the_largest_default_webhook_fits_the_queue() {
        let limit = 64 * 1024;
        let mut form = String::from(
            "MessageSid=SM1&From=whatsapp%3A%2B15551234567&To=whatsapp%3A%2B14155238886&Body=",
        );
        while form.len() + 3 <= limit {
            form.push_str("%01");
        }
        let fields = crate::twilio::form::decode(form.as_bytes()).unwrap();
        let json = InboundEvent::new(EventKind::Message, fields).to_json();
        assert!(
            json.len() * 3 / 2 < crate::storage::queue::MAX_BODY_BYTES,
            "a {limit}-byte webhook makes a {}-byte event",
            json.len()
        );
    }

    fn message() -> InboundEvent {
        let f = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        InboundEvent::new(
            EventKind::Message,
            vec![
                f("SmsMessageSid", "MM123"),
                f("NumMedia", "2"),
                f("ProfileName", "Ana"),
                f("MessageType", "image"),
                f("MediaUrl0", "https://api.twilio.com/m/0"),
                f("MediaContentType0", "image/jpeg"),
                f("MediaUrl1", "https://api.twilio.com/m/1"),
                f("WaId", "15551234567"),
                f("Body", "hi"),
                f("To", "whatsapp:+14155238886"),
                f("From", "whatsapp:+15551234567"),
                f("MessageSid", "MM123"),
                f("SomeFieldTwilioAddsLater", "x"),
                f("SomeFieldTwilioAddsLater", "y"),
            ],
        )
    }

    /// A status the sender made for a reply of a conversation recorded before routing has
    /// no `From`: it is keyed as that record is, by the customer alone. Ingress never
    /// queues a callback without one.
    #[test]
    fn a_status_without_from_is_a_legacy_conversations() {
        let f = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let status = |fields| InboundEvent::new(EventKind::Status, fields);
        let to = f("To", "whatsapp:+15551234567");
        let key = status(vec![f("MessageSid", "SM1"), to.clone()])
            .key()
            .unwrap();
        assert_eq!(key.storage(), "whatsapp:+15551234567");
        let from = f("From", "whatsapp:+14155238886");
        let routed = status(vec![f("MessageSid", "SM1"), to.clone(), from]);
        assert!(routed.key().unwrap().business.is_some());
        let unsent = status(vec![
            f("MessageSid", "SM1"),
            to,
            f("MessageStatus", "failed"),
        ]);
        assert!(unsent.validate().is_err(), "ingress refuses it");
    }

    #[test]
    fn typed_accessors() {
        let e = message();
        e.validate().unwrap();
        assert_eq!(e.message_sid().unwrap(), "MM123");
        assert_eq!(e.customer().unwrap().as_str(), "whatsapp:+15551234567");
        assert_eq!(e.body(), "hi");
        assert_eq!(e.profile_name(), Some("Ana"));
        assert_eq!(e.wa_id(), Some("15551234567"));
        assert_eq!(e.message_type(), Some("image"));
        let media = e.media();
        assert_eq!(media.len(), 2);
        assert_eq!(media[0].content_type, Some("image/jpeg"));
        assert_eq!(media[1].content_type, None);
        assert_eq!(e.dedup_id().unwrap(), "MM123");
    }

    #[test]
    fn json_round_trip_keeps_every_field_in_order() {
        let mut e = message();
        e.idempotency_token = Some("abc-123".into());
        let back = InboundEvent::from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
        let repeated: Vec<_> = back
            .fields
            .iter()
            .filter(|(k, _)| k == "SomeFieldTwilioAddsLater")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(repeated, ["x", "y"]);
    }

    #[test]
    fn status_callbacks_key_on_the_recipient_and_status() {
        let f = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let e = InboundEvent::new(
            EventKind::Status,
            vec![
                f("MessageSid", "SM9"),
                f("MessageStatus", "delivered"),
                f("From", "whatsapp:+14155238886"),
                f("To", "whatsapp:+15551234567"),
            ],
        );
        e.validate().unwrap();
        assert_eq!(e.customer().unwrap().as_str(), "whatsapp:+15551234567");
        assert_eq!(e.business().unwrap().as_str(), "whatsapp:+14155238886");
        assert_eq!(e.dedup_id().unwrap(), "SM9:delivered");
        assert_eq!(
            EventKind::Status.queue_group(&e.key().unwrap()),
            "status:whatsapp:+14155238886|whatsapp:+15551234567"
        );
    }

    #[test]
    fn missing_fields_are_named() {
        let e = InboundEvent::new(
            EventKind::Message,
            vec![("From".into(), "whatsapp:+15551234567".into())],
        );
        assert_eq!(e.validate(), Err(EventError::Missing("MessageSid")));
        let e = InboundEvent::new(
            EventKind::Message,
            vec![
                ("MessageSid".into(), "SM1".into()),
                ("From".into(), "whatsapp:+15551234567".into()),
            ],
        );
        assert_eq!(e.validate(), Err(EventError::Missing("To")));
    }

    #[test]
    fn counts_and_addresses_from_the_wire_are_checked() {
        let with = |k: &str, v: &str| {
            let mut e = message();
            e.fields.retain(|(name, _)| name != k);
            e.fields.push((k.to_owned(), v.to_owned()));
            e
        };
        assert!(message().validate().is_ok());
        for (field, bad) in [
            ("NumMedia", "999999999"),
            ("NumMedia", "11"),
            ("NumMedia", "-1"),
            ("NumMedia", "two"),
            ("NumSegments", "99999"),
            ("To", "whatsapp:not-a-number"),
            ("To", "+1"),
            ("Latitude", "91"),
            ("Longitude", "NaN"),
        ] {
            let err = with(field, bad).validate().unwrap_err();
            assert!(err.to_string().contains(field), "{field}={bad}: {err}");
        }
        assert!(with("NumMedia", "10").validate().is_ok());
        assert!(with("Latitude", "-33.86").validate().is_ok());
        // Whatever an old queued event says, nothing loops past the cap.
        let mut old = message();
        old.fields.push(("NumMedia".into(), "999999999".into()));
        old.fields.retain(|(k, v)| k != "NumMedia" || v != "2");
        assert_eq!(old.num_media(), MAX_MEDIA);
    }
}
