//! Conversation records this worker read or wrote lately, so a customer's next message or
//! receipt needs no read. A cached record is only ever trusted for what Connect checks
//! itself: its connection token. A stale one (the chat ended, the token was replaced) is
//! refused by Connect, and the caller then forgets it and reads the record.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use waconnect_shared::ConversationKey;
use waconnect_shared::message::conversation::ConversationState;
use waconnect_shared::storage::store::StoredConversation;

/// How long a record is used without reading it again.
const FRESH_FOR: Duration = Duration::from_secs(120);
/// Bounds the memory: past this many, records are not cached until some expire.
const CAPACITY: usize = 4096;
/// A connection token this close to expiry is not used from the cache.
const EXPIRY_MARGIN: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

#[derive(Default)]
pub struct Records {
    entries: Mutex<HashMap<ConversationKey, (StoredConversation, Instant)>>,
}

impl Records {
    /// The conversation's record, if one with a live chat was seen lately.
    pub fn active(&self, key: &ConversationKey) -> Option<StoredConversation> {
        let entries = self.entries.lock().expect("records lock");
        let (stored, at) = entries.get(key)?;
        let c = &stored.conversation;
        let usable = at.elapsed() < FRESH_FOR
            && c.state == ConversationState::Active
            && c.connection_token.is_some()
            && c.connection_expires_at
                .is_none_or(|e| e - chrono::Utc::now() > EXPIRY_MARGIN);
        let hit = usable.then(|| stored.clone());
        metrics::counter!("waconnect_relay_record_cache_total", "result" => if hit.is_some() { "hit" } else { "miss" })
            .increment(1);
        hit
    }

    /// Remembers `stored` unless a newer version of it is known.
    pub fn keep(&self, stored: &StoredConversation) {
        let mut entries = self.entries.lock().expect("records lock");
        let key = stored.conversation.key();
        if entries
            .get(&key)
            .is_some_and(|(s, _)| s.version > stored.version)
        {
            return;
        }
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, (_, at)| at.elapsed() < FRESH_FOR);
            if entries.len() >= CAPACITY {
                return;
            }
        }
        entries.insert(key, (stored.clone(), Instant::now()));
    }

    pub fn forget(&self, key: &ConversationKey) {
        self.entries.lock().expect("records lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waconnect_shared::message::conversation::Conversation;
    use waconnect_shared::storage::store::LeaseState;

    fn stored(version: u64, state: ConversationState) -> StoredConversation {
        let mut c = Conversation::new(ConversationKey::new(
            waconnect_shared::BusinessNumber::parse("whatsapp:+14155238886").unwrap(),
            waconnect_shared::CustomerAddress::parse("whatsapp:+15550001111").unwrap(),
        ));
        c.state = state;
        c.connection_token = Some("token".to_owned().into());
        StoredConversation {
            conversation: c,
            version,
            lease: LeaseState {
                owner: None,
                expires_at: None,
                version: 0,
            },
        }
    }

    #[test]
    fn only_live_chats_are_answered_and_older_versions_never_replace_newer() {
        let records = Records::default();
        let customer = stored(1, ConversationState::Active).conversation.key();
        assert!(records.active(&customer).is_none());
        records.keep(&stored(2, ConversationState::Active));
        records.keep(&stored(1, ConversationState::Active));
        assert_eq!(records.active(&customer).unwrap().version, 2);
        records.keep(&stored(3, ConversationState::Ended));
        assert!(records.active(&customer).is_none());
        records.keep(&stored(4, ConversationState::Active));
        records.forget(&customer);
        assert!(records.active(&customer).is_none());
    }
}
