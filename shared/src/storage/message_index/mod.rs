//! The message index: which Twilio message is which Connect chat item, with the first
//! words of each, for a while. Read receipts need it (Connect names the customer's message
//! the agent read by its chat item Id; WhatsApp marks a message read by its Twilio SID),
//! and so do quoted replies (WhatsApp names the message a customer replied to by its SID;
//! the agent should see its words). Entries are kept `WACONNECT_RETENTION_MESSAGES` and
//! then pruned (DynamoDB's TTL on AWS); excerpts are capped, so the index stays small.

pub mod dynamodb;
pub mod sqlite;

use crate::ConversationKey;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The longest excerpt kept, in characters: enough to recognise a message in a quote.
pub const MAX_EXCERPT_CHARS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    Customer,
    Agent,
}

impl Author {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "customer" => Some(Self::Customer),
            "agent" => Some(Self::Agent),
            _ => None,
        }
    }
}

/// One message (or one part of a long one) on both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedMessage {
    /// The conversation's storage key ([`ConversationKey::storage`]): what an erasure
    /// request finds it by. Empty in entries written before it was recorded.
    pub conversation: String,
    /// Twilio's message SID (`SM…` / `MM…`).
    pub sid: String,
    /// The Connect chat item's Id.
    pub connect_id: String,
    pub author: Author,
    /// The message's first words (at most [`MAX_EXCERPT_CHARS`]).
    pub excerpt: String,
    pub at: DateTime<Utc>,
}

impl IndexedMessage {
    /// An entry for now, its excerpt cut from `text` (whitespace runs made one space).
    pub fn new(
        conversation: &ConversationKey,
        sid: &str,
        connect_id: &str,
        author: Author,
        text: &str,
    ) -> Self {
        Self {
            conversation: conversation.storage(),
            sid: sid.to_owned(),
            connect_id: connect_id.to_owned(),
            author,
            excerpt: excerpt(text),
            at: Utc::now(),
        }
    }
}

/// `text` on one line, cut to [`MAX_EXCERPT_CHARS`] with an ellipsis.
pub fn excerpt(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX_EXCERPT_CHARS {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(MAX_EXCERPT_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("message index unavailable: {0}")]
    Unavailable(String),
    #[error("message index backend error: {0}")]
    Backend(String),
}

#[async_trait]
pub trait MessageIndex: Send + Sync + 'static {
    /// Records `message`; a later entry for the same SID or item Id replaces the earlier.
    /// Nothing on a message's path waits for it to be readable elsewhere at once.
    async fn remember(&self, message: IndexedMessage) -> Result<(), IndexError>;

    /// The message Twilio knows as `sid`.
    async fn by_sid(&self, sid: &str) -> Result<Option<IndexedMessage>, IndexError>;

    /// The message Connect knows as item `id`.
    async fn by_connect_id(&self, id: &str) -> Result<Option<IndexedMessage>, IndexError>;

    /// Forgets every entry of `conversation` (an erasure request); how many.
    async fn forget_conversation(&self, conversation: &ConversationKey) -> Result<u64, IndexError>;

    /// Forgets entries recorded before `before`.
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, IndexError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_one_line_and_capped() {
        assert_eq!(excerpt("  hello\n\nthere  "), "hello there");
        let long = "é".repeat(300);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), MAX_EXCERPT_CHARS);
        assert!(cut.ends_with('…'));
    }
}
