//! Connect chat items as the relay reads them, from the websocket or GetTranscript, and
//! which of them go to the customer.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use waconnect_shared::message::conversation::AgentCursor;

pub const EVENT_PREFIX: &str = "application/vnd.amazonaws.connect.event.";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ChatItem {
    pub id: String,
    pub absolute_time: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub content_type: String,
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub participant_role: Option<String>,
    #[serde(default)]
    pub contact_id: Option<String>,
    /// The files of an `ATTACHMENT` item.
    #[serde(default)]
    pub attachments: Vec<ItemAttachment>,
    /// Receipts: a `MESSAGEMETADATA` item's, or (in the transcript) a message's own.
    #[serde(default)]
    pub message_metadata: Option<MessageMetadata>,
}

/// Who has a message, and who read it (Connect's message receipts).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageMetadata {
    #[serde(default)]
    pub message_id: String,
    #[serde(default)]
    pub receipts: Vec<Receipt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Receipt {
    #[serde(default)]
    pub delivered_timestamp: Option<String>,
    #[serde(default)]
    pub read_timestamp: Option<String>,
    /// Who has the message (the reader, for a read receipt).
    #[serde(default)]
    pub recipient_participant_id: Option<String>,
}

/// One file of an `ATTACHMENT` item.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ItemAttachment {
    pub attachment_id: String,
    #[serde(default)]
    pub attachment_name: String,
    #[serde(default)]
    pub content_type: String,
    /// `APPROVED`, `REJECTED` or `IN_PROGRESS` (while Connect scans it).
    #[serde(default)]
    pub status: String,
}

/// What the relay does with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Text for the customer.
    Forward,
    /// The chat is over.
    ChatEnded,
    /// Customer's own echo, typing, receipts, joins: not text for the customer.
    Ignore,
}

impl ChatItem {
    pub fn from_sdk(i: &aws_sdk_connectparticipant::types::Item) -> Self {
        Self {
            id: i.id().unwrap_or_default().to_owned(),
            absolute_time: i.absolute_time().unwrap_or_default().to_owned(),
            content: i.content().map(str::to_owned),
            content_type: i.content_type().unwrap_or_default().to_owned(),
            kind: i
                .r#type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            participant_role: i.participant_role().map(|r| r.as_str().to_owned()),
            contact_id: i.contact_id().map(str::to_owned),
            attachments: i
                .attachments()
                .iter()
                .map(|a| ItemAttachment {
                    attachment_id: a.attachment_id().unwrap_or_default().to_owned(),
                    attachment_name: a.attachment_name().unwrap_or_default().to_owned(),
                    content_type: a.content_type().unwrap_or_default().to_owned(),
                    status: a
                        .status()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                })
                .collect(),
            message_metadata: i.message_metadata().map(|m| MessageMetadata {
                message_id: m.message_id().unwrap_or_default().to_owned(),
                receipts: m
                    .receipts()
                    .iter()
                    .map(|r| Receipt {
                        delivered_timestamp: r.delivered_timestamp().map(str::to_owned),
                        read_timestamp: r.read_timestamp().map(str::to_owned),
                        recipient_participant_id: r.recipient_participant_id().map(str::to_owned),
                    })
                    .collect(),
            }),
        }
    }

    /// The customer's message that someone else in the chat (the agent) has read, as
    /// this item tells: a `MESSAGEMETADATA` item names it; a customer's message in the
    /// transcript carries its own receipts. `customer` is the customer's participant id,
    /// whose own receipts (for the agent's messages) do not count.
    pub fn read_by_agent(&self, customer: &str) -> Option<&str> {
        let metadata = self.message_metadata.as_ref()?;
        let read = metadata.receipts.iter().any(|r| {
            r.read_timestamp.is_some() && r.recipient_participant_id.as_deref() != Some(customer)
        });
        if !read {
            return None;
        }
        if self.kind == "MESSAGEMETADATA" {
            Some(metadata.message_id.as_str()).filter(|id| !id.is_empty())
        } else if self.role() == "CUSTOMER" {
            Some(self.id.as_str())
        } else {
            None
        }
    }

    /// Whether this is the agent starting to type.
    pub fn is_agent_typing(&self) -> bool {
        self.kind == "EVENT"
            && self.content_type == format!("{EVENT_PREFIX}typing")
            && matches!(self.role(), "AGENT" | "SUPERVISOR")
    }

    /// Whether this is the customer's own message (text, or a file).
    pub fn is_customer_message(&self) -> bool {
        self.role() == "CUSTOMER" && matches!(self.kind.as_str(), "MESSAGE" | "ATTACHMENT")
    }

    pub fn time(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.absolute_time)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    pub fn role(&self) -> &str {
        self.participant_role.as_deref().unwrap_or_default()
    }

    pub fn disposition(&self, forward_system: bool, forward_bot: bool) -> Disposition {
        if self.content_type == format!("{EVENT_PREFIX}chat.ended") {
            return Disposition::ChatEnded;
        }
        let text = self.kind == "MESSAGE"
            && self
                .content
                .as_deref()
                .is_some_and(|c| !c.trim().is_empty());
        let files = self.kind == "ATTACHMENT" && !self.attachments.is_empty();
        // A flow's or a bot's menu is written for the customer, whoever else is not.
        let menu = self.content_type == crate::interactive::INTERACTIVE;
        let wanted = match self.role() {
            "AGENT" | "SUPERVISOR" => true,
            "SYSTEM" => forward_system || menu,
            "CUSTOM_BOT" => forward_bot || menu,
            _ => false,
        };
        if (text || files) && wanted {
            Disposition::Forward
        } else {
            Disposition::Ignore
        }
    }

    /// Whether the item comes after `cursor`, read in the transcript of `contact`.
    /// Connect's times order the transcript; an item with the cursor's own id is never
    /// newer. A different item in the cursor's own millisecond is newer — unless the item
    /// or the cursor belongs to another contact than the other: a persistent chat repeats
    /// the past session's items, possibly under new Ids, so there only a later time is new.
    pub fn is_after(&self, cursor: Option<&AgentCursor>, contact: &str) -> bool {
        let Some(cursor) = cursor else { return true };
        if self.id == cursor.id {
            return false;
        }
        let other_contact = self.contact_id.as_deref().is_some_and(|mine| {
            mine != contact || cursor.contact_id.as_deref().is_some_and(|c| c != mine)
        });
        let parsed = DateTime::parse_from_rfc3339(&cursor.absolute_time).ok();
        let order = match (self.time(), parsed) {
            (Some(mine), Some(theirs)) => mine.cmp(&theirs.with_timezone(&chrono::Utc)),
            // Same fixed-width format: the strings order as the times do.
            _ => self.absolute_time.cmp(&cursor.absolute_time),
        };
        order.is_gt() || (order.is_eq() && !other_contact)
    }

    pub fn cursor(&self) -> AgentCursor {
        AgentCursor {
            id: self.id.clone(),
            absolute_time: self.absolute_time.clone(),
            contact_id: self.contact_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, time: &str, role: &str, kind: &str, content_type: &str) -> ChatItem {
        ChatItem {
            id: id.into(),
            absolute_time: time.into(),
            content: Some("hi".into()),
            content_type: content_type.into(),
            kind: kind.into(),
            participant_role: Some(role.into()).filter(|r: &String| !r.is_empty()),
            contact_id: None,
            attachments: Vec::new(),
            message_metadata: None,
        }
    }

    #[test]
    fn an_agent_read_receipt_names_the_customer_message() {
        // As Connect sends it on the websocket.
        let frame = r#"{"AbsoluteTime":"2026-12-01T10:00:00.000Z","ContentType":"application/vnd.amazonaws.connect.event.message.metadata","Id":"meta-1","Type":"MESSAGEMETADATA","MessageMetadata":{"MessageId":"cust-msg","Receipts":[{"DeliveredTimestamp":"2026-12-01T10:00:00.000Z","ReadTimestamp":"2026-12-01T10:00:00.000Z","RecipientParticipantId":"agent-p"}]},"ContactId":"c","InitialContactId":"c"}"#;
        let item: ChatItem = serde_json::from_str(frame).unwrap();
        assert_eq!(item.read_by_agent("customer-p"), Some("cust-msg"));
        assert_eq!(item.disposition(true, true), Disposition::Ignore);
        // The customer's own receipt (the bridge's, for an agent message) is not one.
        assert_eq!(item.read_by_agent("agent-p"), None);
        // Delivered only is not read.
        let delivered = frame.replace(r#""ReadTimestamp":"2026-12-01T10:00:00.000Z","#, "");
        let item: ChatItem = serde_json::from_str(&delivered).unwrap();
        assert_eq!(item.read_by_agent("customer-p"), None);
        // In the transcript the receipt rides on the customer's message itself.
        let mut message = super::tests::item(
            "m",
            "2026-12-01T10:00:00.000Z",
            "CUSTOMER",
            "MESSAGE",
            "text/plain",
        );
        message.message_metadata = serde_json::from_str::<ChatItem>(frame)
            .unwrap()
            .message_metadata;
        assert_eq!(message.read_by_agent("customer-p"), Some("m"));
    }

    #[test]
    fn only_agent_text_is_forwarded_by_default() {
        let t = "2026-11-24T10:00:00.000Z";
        let agent = item("a", t, "AGENT", "MESSAGE", "text/plain");
        assert_eq!(agent.disposition(false, false), Disposition::Forward);
        let customer = item("c", t, "CUSTOMER", "MESSAGE", "text/plain");
        assert_eq!(customer.disposition(true, true), Disposition::Ignore);
        let typing = item("t", t, "AGENT", "EVENT", &format!("{EVENT_PREFIX}typing"));
        assert_eq!(typing.disposition(true, true), Disposition::Ignore);
        let read = item(
            "r",
            t,
            "AGENT",
            "EVENT",
            &format!("{EVENT_PREFIX}message.read"),
        );
        assert_eq!(read.disposition(true, true), Disposition::Ignore);
        let system = item("s", t, "SYSTEM", "MESSAGE", "text/plain");
        assert_eq!(system.disposition(false, false), Disposition::Ignore);
        assert_eq!(system.disposition(true, false), Disposition::Forward);
        let bot = item("b", t, "CUSTOM_BOT", "MESSAGE", "text/plain");
        assert_eq!(bot.disposition(false, true), Disposition::Forward);
        // A flow's or a bot's menu always goes: it is written for the customer.
        let interactive = crate::interactive::INTERACTIVE;
        for role in ["SYSTEM", "CUSTOM_BOT"] {
            let menu = item("m", t, role, "MESSAGE", interactive);
            assert_eq!(menu.disposition(false, false), Disposition::Forward);
        }
        let ended = item("e", t, "", "EVENT", &format!("{EVENT_PREFIX}chat.ended"));
        assert_eq!(ended.disposition(false, false), Disposition::ChatEnded);
    }

    #[test]
    fn items_order_after_the_cursor() {
        let cursor = AgentCursor {
            id: "b".into(),
            absolute_time: "2026-11-24T10:00:01.000Z".into(),
            contact_id: Some("c1".into()),
        };
        let at = |id: &str, t: &str| item(id, t, "AGENT", "MESSAGE", "text/plain");
        let after = |i: &ChatItem| i.is_after(Some(&cursor), "c1");
        assert!(!after(&at("b", "2026-11-24T10:00:01.000Z")));
        assert!(!after(&at("a", "2026-11-24T10:00:00.999Z")));
        assert!(after(&at("c", "2026-11-24T10:00:01.001Z")));
        // A different item in the same millisecond is not lost.
        assert!(after(&at("d", "2026-11-24T10:00:01.000Z")));
        assert!(at("x", "2026-11-24T10:00:00.000Z").is_after(None, "c1"));
    }

    #[test]
    fn a_rehydrated_copy_of_the_cursor_is_not_newer() {
        let cursor = AgentCursor {
            id: "b".into(),
            absolute_time: "2026-11-24T10:00:01.000Z".into(),
            contact_id: Some("c1".into()),
        };
        let mut copy = item(
            "b-renumbered",
            "2026-11-24T10:00:01.000Z",
            "AGENT",
            "MESSAGE",
            "text/plain",
        );
        // Read in the next chat's transcript, the past item keeps its contact...
        copy.contact_id = Some("c1".into());
        assert!(!copy.is_after(Some(&cursor), "c2"));
        // ...or is shown under the new one: either way, the cursor's contact differs.
        copy.contact_id = Some("c2".into());
        assert!(!copy.is_after(Some(&cursor), "c2"));
        // What the agent writes in the new chat comes later, and is new.
        let new = item(
            "n",
            "2026-11-24T10:05:00.000Z",
            "AGENT",
            "MESSAGE",
            "text/plain",
        );
        assert!(new.is_after(Some(&cursor), "c2"));
    }
}
