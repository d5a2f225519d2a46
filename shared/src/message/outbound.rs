//! What the relay puts on the outbound queue for the sender: one message to one customer.

use crate::message::address::{BusinessNumber, CustomerAddress};
use crate::message::conversation::ConversationKey;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    pub to: CustomerAddress,
    /// The business number the customer wrote to: the reply's route and `From`. Absent
    /// for conversations from before routing (the default route's sender then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BusinessNumber>,
    /// Free-form text; may be empty when the message carries only media or a template.
    #[serde(default)]
    pub body: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media_urls: Vec<String>,
    /// Files in the media store (the agent's), by key: the sender gives Twilio a fresh URL
    /// for each at every attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// A pre-approved WhatsApp template, for messages outside the 24 h window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
    /// Choices to show as a list or buttons; `body` then holds the numbered text menu,
    /// sent instead when they cannot be shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub menu: Option<crate::message::menu::Menu>,
    /// Where this message came from; its id is the outbound deduplication id.
    pub origin: Origin,
    pub created_at: DateTime<Utc>,
    /// Set when this sends again a message WhatsApp refused after Twilio took it (a
    /// passing failure reported by status callback): the sender takes the text from
    /// Twilio's copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend: Option<Resend>,
}

/// What to send again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resend {
    /// The Twilio message that failed.
    pub sid: String,
    /// Which part of the original it was.
    pub part: u32,
    /// 1 for the first re-send.
    pub attempt: u32,
}

impl Resend {
    /// Codes Twilio reports after taking a message that mean "try again later", not
    /// "never": 63018 (the WhatsApp sender's rate), 30001 (Twilio's queue overflowed).
    pub const PASSING_CODES: [u32; 2] = [63018, 30001];
    /// Re-sends of one part before the agent is told it could not be delivered.
    pub const MAX: u32 = 5;

    pub fn is_passing(code: u32) -> bool {
        Self::PASSING_CODES.contains(&code)
    }

    /// Twilio could not download a file of the message (63019).
    pub const FILE_NOT_DOWNLOADED: u32 = 63019;

    /// Whether a part refused with `code` is sent again; `our_files` when it carried files
    /// from the media store. For those, a failed download passes too: the file is still
    /// there, and what failed was the way to it for a moment (on one box, ingress
    /// restarting; S3 refusing for a while).
    pub fn is_passing_for(code: u32, our_files: bool) -> bool {
        Self::is_passing(code) || (our_files && code == Self::FILE_NOT_DOWNLOADED)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub content_sid: String,
    /// JSON object of template variables, as Twilio's ContentVariables expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// An item an agent (or a bot, or the system) wrote in the Connect chat.
    ConnectItem {
        contact_id: String,
        item_id: String,
        participant_role: String,
    },
    /// A text waconnect itself sends (closing text, template nudge).
    Bridge { reason: String, id: String },
}

impl OutboundMessage {
    /// The id that follows this message through every service's logs ([`crate::message::trace`]):
    /// its Connect item's (or the bridge's own id), so a re-send keeps it.
    pub fn trace_id(&self) -> String {
        crate::message::trace::of(match &self.origin {
            Origin::ConnectItem { item_id, .. } => item_id,
            Origin::Bridge { id, .. } => id,
        })
    }

    /// The conversation this message belongs to: its FIFO group is the key's.
    pub fn key(&self) -> ConversationKey {
        ConversationKey {
            business: self.from.clone(),
            customer: self.to.clone(),
        }
    }

    /// Outbound dedup id: the Connect item id, so a redelivered websocket item or a
    /// backfill overlap never texts the customer twice.
    pub fn dedup_id(&self) -> String {
        let id = match &self.origin {
            Origin::ConnectItem { item_id, .. } => item_id,
            Origin::Bridge { id, .. } => id,
        };
        match &self.resend {
            None => id.clone(),
            Some(r) => format!("{id}#{}#resend{}", r.part, r.attempt),
        }
    }

    /// This message's part `part` sent again, after Twilio's `sid` for it failed for a
    /// passing reason; `None` once it has been re-sent [`Resend::MAX`] times.
    pub fn resent(&self, sid: &str, part: u32) -> Option<OutboundMessage> {
        let attempt = self.resend.as_ref().map_or(0, |r| r.attempt) + 1;
        (attempt <= Resend::MAX).then(|| OutboundMessage {
            resend: Some(Resend {
                sid: sid.to_owned(),
                part: self.resend.as_ref().map_or(part, |r| r.part),
                attempt,
            }),
            ..self.clone()
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an OutboundMessage always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let m = OutboundMessage {
            to: CustomerAddress::parse("whatsapp:+15551234567").unwrap(),
            from: Some(BusinessNumber::parse("whatsapp:+14155238886").unwrap()),
            body: "Hello from the agent".into(),
            media_urls: vec!["https://example.com/a.png".into()],
            files: Vec::new(),
            template: Some(Template {
                content_sid: "HX123".into(),
                variables: Some(r#"{"1":"Ana"}"#.into()),
            }),
            menu: None,
            origin: Origin::ConnectItem {
                contact_id: "c-1".into(),
                item_id: "item-9".into(),
                participant_role: "AGENT".into(),
            },
            created_at: Utc::now(),
            resend: None,
        };
        let back = OutboundMessage::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.dedup_id(), "item-9");
        let again = OutboundMessage {
            resend: Some(Resend {
                sid: "SM1".into(),
                part: 1,
                attempt: 2,
            }),
            ..m
        };
        assert_eq!(again.dedup_id(), "item-9#1#resend2");
        assert_eq!(OutboundMessage::from_json(&again.to_json()).unwrap(), again);
    }

    #[test]
    fn a_resend_keeps_the_part_and_counts_to_its_bound() {
        let m = OutboundMessage {
            to: CustomerAddress::parse("whatsapp:+15551234567").unwrap(),
            from: None,
            body: "b".into(),
            media_urls: Vec::new(),
            files: Vec::new(),
            template: None,
            menu: None,
            origin: Origin::Bridge {
                reason: "r".into(),
                id: "x".into(),
            },
            created_at: Utc::now(),
            resend: None,
        };
        let first = m.resent("SM1", 2).unwrap();
        assert_eq!(first.dedup_id(), "x#2#resend1");
        // A re-send of a re-send is of the same part, whatever part it is sent as.
        let second = first.resent("SM2", 0).unwrap();
        assert_eq!(second.dedup_id(), "x#2#resend2");
        let mut last = second;
        while let Some(next) = last.resent("SM", 0) {
            last = next;
        }
        assert_eq!(last.resend.unwrap().attempt, Resend::MAX);
        assert!(Resend::is_passing(63018) && !Resend::is_passing(63016));
        // A failed download passes only for files of our own store.
        assert!(Resend::is_passing_for(63019, true) && !Resend::is_passing_for(63019, false));
        assert!(!Resend::is_passing_for(63016, true));
    }

    #[test]
    fn rejects_an_invalid_recipient() {
        let json = r#"{"to":"whatsapp:123","body":"x","origin":{"kind":"bridge","reason":"r","id":"1"},"created_at":"2026-01-01T00:00:00Z"}"#;
        assert!(OutboundMessage::from_json(json.as_bytes()).is_err());
    }
}
