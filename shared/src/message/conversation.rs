//! The conversation record (docs/architecture.md §3), keyed by the pair (business number,
//! customer): a customer who writes to two of the business's numbers has two. Lease fields live
//! beside the record in the store ([`crate::storage::store::StoredConversation`]) so a data write
//! can never overwrite a lease by accident.

use crate::message::address::{AddressError, BusinessNumber, CustomerAddress};
use crate::service::secret::Secret;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which conversation: the business number the customer wrote to, and the customer. It
/// keys the conversation table and is the FIFO group on both queues.
///
/// `business` is `None` only for records written before several numbers were supported
/// (keyed by the customer alone): they belong to the default route, keep their key until
/// they end, and are found again when the customer writes to that route
/// (docs/architecture.md §3).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConversationKey {
    pub business: Option<BusinessNumber>,
    pub customer: CustomerAddress,
}

/// Between the business number and the customer in the stored key: neither contains it.
const KEY_SEPARATOR: char = '|';

impl ConversationKey {
    pub fn new(business: BusinessNumber, customer: CustomerAddress) -> Self {
        Self {
            business: Some(business),
            customer,
        }
    }

    /// A record written before routing: keyed by the customer alone.
    pub fn legacy(customer: CustomerAddress) -> Self {
        Self {
            business: None,
            customer,
        }
    }

    /// The key as stored and as the queues' group id: `<business>|<customer>`, or the
    /// customer alone for a legacy record. Holds the customer's number in clear: never log it.
    pub fn storage(&self) -> String {
        match &self.business {
            Some(b) => format!("{}{KEY_SEPARATOR}{}", b.as_str(), self.customer.as_str()),
            None => self.customer.as_str().to_owned(),
        }
    }

    pub fn parse_storage(raw: &str) -> Result<Self, AddressError> {
        Ok(match raw.split_once(KEY_SEPARATOR) {
            Some((business, customer)) => Self::new(
                BusinessNumber::parse(business)?,
                CustomerAddress::parse(customer)?,
            ),
            None => Self::legacy(CustomerAddress::parse(raw)?),
        })
    }
}

/// Safe for logs: the business number in clear, the customer masked.
impl std::fmt::Display for ConversationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.business {
            Some(b) => write!(f, "{b}{KEY_SEPARATOR}{}", self.customer),
            None => write!(f, "{}", self.customer),
        }
    }
}

impl std::fmt::Debug for ConversationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConversationKey({self})")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationState {
    Starting,
    Active,
    Ended,
}

impl ConversationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Active => "active",
            Self::Ended => "ended",
        }
    }
}

/// The last Connect item forwarded to the customer; backfill resumes after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCursor {
    pub id: String,
    /// Connect's `AbsoluteTime`, kept as the exact string Connect sent.
    pub absolute_time: String,
    /// The contact whose transcript the item came from: a persistent chat's transcript
    /// repeats earlier contacts' items, perhaps under new Ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub customer: CustomerAddress,
    /// The number the customer wrote to (absent from records written before routing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business: Option<BusinessNumber>,
    pub state: ConversationState,
    #[serde(default)]
    pub contact_id: Option<String>,
    #[serde(default)]
    pub initial_contact_id: Option<String>,
    #[serde(default)]
    pub participant_id: Option<String>,
    #[serde(default)]
    pub participant_token: Option<Secret>,
    #[serde(default)]
    pub connection_token: Option<Secret>,
    #[serde(default)]
    pub connection_expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub agent_cursor: Option<AgentCursor>,
    #[serde(default)]
    pub last_inbound_message_sid: Option<String>,
    /// Start of the customer's WhatsApp 24 h window, to the minute: the relay refreshes it
    /// (and `last_inbound_message_sid`) at most once a minute.
    #[serde(default)]
    pub last_inbound_at: Option<DateTime<Utc>>,
    /// When a "call me" keyword last placed a voice call, and for which message.
    #[serde(default)]
    pub last_call_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_call_sid: Option<String>,
    /// The caller's key when the business started this chat (an outreach), so a repeat
    /// of the request finds it rather than being refused as another open chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    /// The titles of the last menu offered the customer, until their next message: a
    /// number in reply names one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub menu: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    /// Epoch seconds after which the record may be deleted (DynamoDB TTL). Never relied on.
    #[serde(default)]
    pub ttl: Option<i64>,
}

impl Conversation {
    pub fn new(key: ConversationKey) -> Self {
        Self {
            customer: key.customer,
            business: key.business,
            state: ConversationState::Starting,
            contact_id: None,
            initial_contact_id: None,
            participant_id: None,
            participant_token: None,
            connection_token: None,
            connection_expires_at: None,
            agent_cursor: None,
            last_inbound_message_sid: None,
            last_inbound_at: None,
            last_call_at: None,
            last_call_sid: None,
            started_by: None,
            menu: None,
            created_at: Utc::now(),
            ttl: None,
        }
    }

    pub fn key(&self) -> ConversationKey {
        ConversationKey {
            business: self.business.clone(),
            customer: self.customer.clone(),
        }
    }

    /// Records that the chat is over: no token to use any more, and the record (with the
    /// customer's number and the chat's tokens) may be deleted `keep` from now.
    pub fn end(&mut self, keep: std::time::Duration) {
        self.state = ConversationState::Ended;
        self.connection_token = None;
        let keep = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
        self.ttl = Some(Utc::now().timestamp().saturating_add(keep));
    }

    /// The connection token in clear, for the Participant API calls ("" when none).
    pub fn connection_token_value(&self) -> String {
        self.connection_token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .unwrap_or_default()
    }

    /// A new chat for the customer: the record is live again and kept.
    pub fn restart(&mut self) {
        self.state = ConversationState::Starting;
        self.started_by = None;
        self.menu = None;
        self.connection_token = None;
        self.connection_expires_at = None;
        self.ttl = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_no_secret_in_debug() {
        let mut c = Conversation::new(ConversationKey::new(
            BusinessNumber::parse("whatsapp:+14155238886").unwrap(),
            CustomerAddress::parse("whatsapp:+15551234567").unwrap(),
        ));
        c.state = ConversationState::Active;
        c.contact_id = Some("contact-1".into());
        c.initial_contact_id = Some("contact-0".into());
        c.participant_id = Some("p-1".into());
        c.participant_token = Some(Secret::new("participant-secret"));
        c.connection_token = Some(Secret::new("connection-secret"));
        c.connection_expires_at = Some(Utc::now());
        c.agent_cursor = Some(AgentCursor {
            id: "item-1".into(),
            absolute_time: "2026-11-24T10:00:00.000Z".into(),
            contact_id: Some("contact-1".into()),
        });
        c.last_inbound_message_sid = Some("SM1".into());
        c.last_inbound_at = Some(Utc::now());
        c.last_call_at = Some(Utc::now());
        c.last_call_sid = Some("SM2".into());
        c.ttl = Some(1_800_000_000);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Conversation>(&json).unwrap(), c);
        let shown = format!("{c:?}");
        assert!(!shown.contains("participant-secret"), "{shown}");
        assert!(!shown.contains("connection-secret"), "{shown}");
        assert!(!shown.contains("15551234567"), "{shown}");
    }

    #[test]
    fn keys_round_trip_and_hide_the_customer() {
        let key = ConversationKey::new(
            BusinessNumber::parse("whatsapp:+14155238886").unwrap(),
            CustomerAddress::parse("whatsapp:+15551234567").unwrap(),
        );
        assert_eq!(key.storage(), "whatsapp:+14155238886|whatsapp:+15551234567");
        assert_eq!(ConversationKey::parse_storage(&key.storage()).unwrap(), key);
        for shown in [format!("{key}"), format!("{key:?}")] {
            assert!(!shown.contains("15551234567"), "{shown}");
            assert!(shown.contains("whatsapp:+14155238886"), "{shown}");
        }
        // A record written before routing is keyed by the customer alone.
        let legacy = ConversationKey::parse_storage("whatsapp:+15551234567").unwrap();
        assert_eq!(legacy.business, None);
        assert_eq!(legacy.storage(), "whatsapp:+15551234567");
        let old: Conversation = serde_json::from_str(
            r#"{"customer":"whatsapp:+15551234567","state":"active","created_at":"2026-11-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(old.key(), legacy);
        assert!(ConversationKey::parse_storage("whatsapp:+1|whatsapp:+15551234567").is_err());
        // The group id fits SQS's 128 characters with the status prefix.
        assert!(format!("status:{}", key.storage()).len() <= 128);
    }
}
