//! Conversations recorded before several business numbers were supported, keyed by the
//! customer alone (docs/architecture.md §3). They are not rewritten: such a record keeps
//! its key until its chat ends, and belongs to the default route. A customer who writes
//! to the default route's number while one is live continues it; once it has ended, the
//! next chat is recorded under the pair (business number, customer) like any other.
//!
//! Cost: one more read when a message on the default route finds no record under its
//! pair key (a conversation's first message, or one continuing a legacy chat uncached).

use crate::Relay;
use waconnect_shared::ConversationKey;
use waconnect_shared::message::conversation::ConversationState;
use waconnect_shared::storage::store::{StoreError, StoredConversation};

/// The legacy key to look under, when `key` is on the default route.
fn legacy_of(relay: &Relay, key: &ConversationKey) -> Option<ConversationKey> {
    let business = key.business.as_ref()?;
    relay
        .config
        .routes
        .is_default(business)
        .then(|| ConversationKey::legacy(key.customer.clone()))
}

/// The conversation's record from the cache: under its key, or a live legacy one.
pub fn cached(relay: &Relay, key: &ConversationKey) -> Option<StoredConversation> {
    relay
        .records
        .active(key)
        .or_else(|| relay.records.active(&legacy_of(relay, key)?))
}

/// The conversation's record: under its key, else a live legacy record of the default
/// route's customer. `None` when neither exists (the record to create is `key`'s).
pub async fn find(
    relay: &Relay,
    key: &ConversationKey,
) -> Result<Option<StoredConversation>, StoreError> {
    if let Some(stored) = relay.store.get(key).await? {
        return Ok(Some(stored));
    }
    let Some(legacy) = legacy_of(relay, key) else {
        return Ok(None);
    };
    Ok(relay
        .store
        .get(&legacy)
        .await?
        .filter(|s| s.conversation.state != ConversationState::Ended))
}

/// The key messages of `key`'s conversation go out under (their FIFO group): a cached
/// live legacy record's, else `key`. Needs no read: a legacy chat not cached here has its
/// replies' receipts in the pair's group, which only loses their order with its messages.
pub fn group_key(relay: &Relay, key: &ConversationKey) -> ConversationKey {
    cached(relay, key).map_or_else(|| key.clone(), |s| s.conversation.key())
}
