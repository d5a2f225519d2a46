//! The one way to read, change and conditionally write a conversation record.
//!
//! Every writer of a record (the inbound relay, a session moving the agent cursor or
//! ending a chat) does the same thing: take the record as last seen (or read it), decide
//! on a change, and write it only if nobody wrote in between — fenced by its lease where
//! it holds one. A lost race means reading again and deciding again, since the decision
//! may differ on the newer record. [`modify`] is that loop, with a bound.

use super::{ConversationStore, Lease, StoreError, StoredConversation};
use crate::message::conversation::Conversation;
use crate::message::conversation::ConversationKey;

/// Lost races tolerated in one modification before giving up with
/// [`StoreError::Conflict`]: only a record written this often within one call could
/// exhaust it.
const MAX_ATTEMPTS: usize = 16;

/// What became of a modification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modified {
    /// The change was written; the record as stored now.
    Written(StoredConversation),
    /// The change declined to write on the record as found (shown).
    Unchanged(StoredConversation),
    /// There is no record.
    Missing,
}

impl Modified {
    /// The record as it now stands, if there is one.
    pub fn record(self) -> Option<StoredConversation> {
        match self {
            Self::Written(s) | Self::Unchanged(s) => Some(s),
            Self::Missing => None,
        }
    }
}

/// How a write is fenced.
pub enum Fence<'a> {
    /// Any writer may write (the conversation's data, not the socket holder's).
    None,
    /// Only the lease holder may write; the closure gives the lease as last renewed, so a
    /// renewal that raced the write (raising the fencing version) is not taken for a
    /// lost lease.
    Lease(&'a (dyn Fn() -> Lease + Sync)),
}

/// Applies `change` to `key`'s record — `known` if the caller holds a recent copy,
/// else a fresh read — and writes it conditionally on the version it was applied to,
/// reading and applying again after every lost race. `change` returns whether there is
/// anything to write.
pub async fn modify<F>(
    store: &dyn ConversationStore,
    key: &ConversationKey,
    mut known: Option<StoredConversation>,
    fence: Fence<'_>,
    mut change: F,
) -> Result<Modified, StoreError>
where
    F: FnMut(&mut Conversation) -> bool + Send,
{
    // The lease to fence with when the store has shown ours renewed before `current` has.
    let mut renewed: Option<Lease> = None;
    for _ in 0..MAX_ATTEMPTS {
        let stored = match known.take() {
            Some(s) => s,
            None => match store.get(key).await? {
                Some(s) => s,
                None => return Ok(Modified::Missing),
            },
        };
        let mut conversation = stored.conversation.clone();
        if !change(&mut conversation) {
            return Ok(Modified::Unchanged(stored));
        }
        let written = match &fence {
            Fence::None => store.update(&conversation, stored.version).await,
            Fence::Lease(current) => {
                let lease = match renewed.take() {
                    Some(r) if !renewed_since(&current(), &r) => r,
                    _ => current(),
                };
                match store
                    .update_fenced(&conversation, stored.version, &lease)
                    .await
                {
                    // Our own renewal moved the fencing version while the write was on
                    // its way: the lease is still ours, try again with the new one.
                    Err(StoreError::LeaseLost) if renewed_since(&current(), &lease) => {
                        continue;
                    }
                    // Or it landed (perhaps in the same group commit) and its answer has
                    // not reached `current` yet: the store shows it.
                    Err(StoreError::LeaseLost) => match store.get(key).await? {
                        Some(now) => match renewed_lease(&now, &lease) {
                            Some(ours) => {
                                renewed = Some(ours);
                                known = Some(now);
                                continue;
                            }
                            None => Err(StoreError::LeaseLost),
                        },
                        None => Err(StoreError::LeaseLost),
                    },
                    other => other,
                }
            }
        };
        match written {
            Ok(s) => return Ok(Modified::Written(s)),
            Err(StoreError::Conflict) => continue,
            Err(StoreError::NotFound) => return Ok(Modified::Missing),
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

/// Takes `key`'s lease for `owner` if it is free or has run out. A refusal, or an answer
/// that never came (unavailable: a timeout), is checked against the record: the take may
/// have landed with its answer lost — the SDK retried a conditional write that had
/// succeeded, or gave up waiting on one that then succeeded — and the record then shows
/// the lease ours. Taken for someone else's, or for not taken, the conversation stayed
/// unheld — its agent's replies waiting — until the lease ran out. (A write still in
/// flight when the record is read can land after it; that case still waits.) The caller
/// must hold no session for the conversation and have no other take of it in flight, so
/// that our name on the record can only be this take's (or a lease of ours that no
/// session holds any more, which is as much ours to take).
pub async fn acquire(
    store: &dyn ConversationStore,
    key: &ConversationKey,
    owner: &str,
    duration: std::time::Duration,
) -> Result<Lease, StoreError> {
    match store.acquire_lease(key, owner, duration).await {
        Err(StoreError::LeaseHeld) => match store.get(key).await? {
            Some(now) => held_by(&now, key, owner).ok_or(StoreError::LeaseHeld),
            None => Err(StoreError::NotFound),
        },
        Err(unanswered @ StoreError::Unavailable(_)) => match store.get(key).await {
            Ok(Some(now)) => held_by(&now, key, owner).ok_or(unanswered),
            _ => Err(unanswered),
        },
        other => other,
    }
}

/// Renews `leases` for `duration`, answering for each in order. A refusal is checked
/// against the record: the last renewal may have landed after its caller stopped waiting
/// for it, leaving the caller with the version before; the record then shows the lease
/// ours, renewed.
pub async fn renew(
    store: &dyn ConversationStore,
    leases: &[Lease],
    duration: std::time::Duration,
) -> Vec<Result<Lease, StoreError>> {
    let answers = store.renew_leases(leases, duration).await;
    let checked = leases
        .iter()
        .zip(answers)
        .map(|(lease, answer)| async move {
            match answer {
                Err(StoreError::LeaseLost) => still_ours(store, lease).await,
                other => other,
            }
        });
    futures_util::future::join_all(checked).await
}

/// Gives `lease` up, checking a refusal against the record as [`renew`] does: released
/// with a version that a late-landing renewal had raised, the lease would otherwise stay
/// held, and the conversation unadopted, until it ran out.
pub async fn release(store: &dyn ConversationStore, lease: &Lease) -> Result<(), StoreError> {
    match store.release_lease(lease).await {
        Err(StoreError::LeaseLost) => store.release_lease(&still_ours(store, lease).await?).await,
        other => other,
    }
}

/// What the record shows of `lease` after a refusal: ours under a newer version
/// ([`renewed_lease`]), or lost, or gone.
async fn still_ours(store: &dyn ConversationStore, lease: &Lease) -> Result<Lease, StoreError> {
    match store.get(&lease.key).await? {
        Some(now) => renewed_lease(&now, lease).ok_or(StoreError::LeaseLost),
        None => Err(StoreError::NotFound),
    }
}

fn renewed_since(current: &Lease, used: &Lease) -> bool {
    current.version > used.version && current.owner == used.owner
}

/// `used` as `stored` shows it renewed — the same owner, a newer version, not run out —
/// or `None` if the lease is not ours any more. A write or renewal refused as LeaseLost
/// may only have met a renewal of our own whose answer has not reached its caller yet.
/// Owner names are unique per process, and a process holds a conversation in one
/// session at a time, so our name on a newer lease is the same hold.
fn renewed_lease(stored: &StoredConversation, used: &Lease) -> Option<Lease> {
    held_by(stored, &used.key, &used.owner).filter(|now| now.version > used.version)
}

/// The lease `stored` shows `owner` holding, if it does and it has not run out.
fn held_by(stored: &StoredConversation, key: &ConversationKey, owner: &str) -> Option<Lease> {
    let expires_at = stored.lease.expires_at?;
    (stored.lease.owner.as_deref() == Some(owner) && expires_at > chrono::Utc::now()).then(|| {
        Lease {
            key: key.clone(),
            owner: owner.to_owned(),
            version: stored.lease.version,
            expires_at,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::Synchronous;
    use crate::storage::sqlite::Db;
    use crate::storage::store::sqlite::SqliteStore;

    async fn store() -> (tempfile::TempDir, SqliteStore, ConversationKey) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_path(&dir.path().join("s.db"), Synchronous::Normal)
            .await
            .unwrap();
        let store = SqliteStore::open(db).await.unwrap();
        let customer = ConversationKey::new(
            crate::BusinessNumber::parse("whatsapp:+14155238886").unwrap(),
            crate::CustomerAddress::parse("whatsapp:+15551234567").unwrap(),
        );
        (dir, store, customer)
    }

    /// A stored record, its lease free.
    async fn stored() -> (tempfile::TempDir, SqliteStore, ConversationKey) {
        let (dir, store, customer) = store().await;
        store
            .insert(&Conversation::new(customer.clone()))
            .await
            .unwrap();
        (dir, store, customer)
    }

    /// A stored record whose lease "w1" holds.
    async fn leased() -> (tempfile::TempDir, SqliteStore, ConversationKey, Lease) {
        let (dir, store, customer) = stored().await;
        let lease = store
            .acquire_lease(&customer, "w1", std::time::Duration::from_secs(30))
            .await
            .unwrap();
        (dir, store, customer, lease)
    }

    #[tokio::test]
    async fn a_renewal_that_landed_unanswered_is_not_taken_for_a_lost_lease_when_renewing_or_releasing()
     {
        let (_dir, store, _customer, lease) = leased().await;
        let thirty = std::time::Duration::from_secs(30);
        // The last round's renewal landed, but its caller stopped waiting and kept `lease`.
        let landed = store.renew_lease(&lease, thirty).await.unwrap();
        assert_eq!(
            store.renew_lease(&lease, thirty).await,
            Err(StoreError::LeaseLost),
            "the store refuses the old version"
        );
        assert_eq!(
            renew(&store, std::slice::from_ref(&lease), thirty).await,
            [Ok(landed.clone())]
        );
        // Nor is it when the lease is given up: it is free at once.
        release(&store, &lease).await.unwrap();
        let now = store.get(&lease.key).await.unwrap().unwrap();
        assert_eq!(now.lease.owner, None);
        assert!(now.lease.version > landed.version);
        // Another owner's lease is not taken for ours.
        store.acquire_lease(&lease.key, "w2", thirty).await.unwrap();
        assert_eq!(
            renew(&store, std::slice::from_ref(&landed), thirty).await,
            [Err(StoreError::LeaseLost)]
        );
        assert_eq!(release(&store, &landed).await, Err(StoreError::LeaseLost));
        assert_eq!(
            store
                .get(&lease.key)
                .await
                .unwrap()
                .unwrap()
                .lease
                .owner
                .as_deref(),
            Some("w2")
        );
    }

    /// An acquisition landed but its answer was lost, and its retry finds the lease held:
    /// by us. Taken for someone else's, the conversation stayed unheld until it ran out.
    #[tokio::test]
    async fn an_acquisition_that_landed_unanswered_is_ours_and_no_one_else_s_is() {
        let (_dir, store, customer) = stored().await;
        let thirty = std::time::Duration::from_secs(30);
        let landed = store.acquire_lease(&customer, "w1", thirty).await.unwrap();
        assert_eq!(
            store.acquire_lease(&customer, "w1", thirty).await,
            Err(StoreError::LeaseHeld),
            "the store refuses the retry"
        );
        assert_eq!(
            acquire(&store, &customer, "w1", thirty).await,
            Ok(landed.clone())
        );
        // Another owner's live lease stays theirs.
        assert_eq!(
            acquire(&store, &customer, "w2", thirty).await,
            Err(StoreError::LeaseHeld)
        );
        // A free one is simply taken.
        store.release_lease(&landed).await.unwrap();
        let taken = acquire(&store, &customer, "w2", thirty).await.unwrap();
        assert_eq!(taken.owner, "w2");
        assert!(taken.version > landed.version);
    }

    /// A store whose takes are made, but whose answers are lost on the way back.
    struct AnswerLost(SqliteStore);

    #[async_trait::async_trait]
    impl ConversationStore for AnswerLost {
        async fn acquire_lease(
            &self,
            key: &ConversationKey,
            owner: &str,
            duration: std::time::Duration,
        ) -> Result<Lease, StoreError> {
            // Landed or refused, the caller hears only that the answer never came.
            let _ = self.0.acquire_lease(key, owner, duration).await;
            Err(StoreError::Unavailable("timed out".into()))
        }
        async fn get(
            &self,
            key: &ConversationKey,
        ) -> Result<Option<StoredConversation>, StoreError> {
            self.0.get(key).await
        }
        async fn insert(&self, c: &Conversation) -> Result<StoredConversation, StoreError> {
            self.0.insert(c).await
        }
        async fn update(&self, c: &Conversation, v: u64) -> Result<StoredConversation, StoreError> {
            self.0.update(c, v).await
        }
        async fn update_fenced(
            &self,
            c: &Conversation,
            v: u64,
            l: &Lease,
        ) -> Result<StoredConversation, StoreError> {
            self.0.update_fenced(c, v, l).await
        }
        async fn renew_lease(
            &self,
            l: &Lease,
            d: std::time::Duration,
        ) -> Result<Lease, StoreError> {
            self.0.renew_lease(l, d).await
        }
        async fn release_lease(&self, l: &Lease) -> Result<(), StoreError> {
            self.0.release_lease(l).await
        }
        async fn erase(&self, key: &ConversationKey) -> Result<bool, StoreError> {
            self.0.erase(key).await
        }
        async fn unheld(&self, limit: usize) -> Result<Vec<ConversationKey>, StoreError> {
            self.0.unheld(limit).await
        }
        async fn held_by(&self, p: &str, limit: usize) -> Result<Vec<ConversationKey>, StoreError> {
            self.0.held_by(p, limit).await
        }
        async fn take_over(
            &self,
            key: &ConversationKey,
            p: &str,
            owner: &str,
            d: std::time::Duration,
        ) -> Result<Lease, StoreError> {
            self.0.take_over(key, p, owner, d).await
        }
        async fn prune_expired(&self) -> Result<u64, StoreError> {
            self.0.prune_expired().await
        }
    }

    /// The take timed out on its way back, but landed: it is ours. Before, the caller
    /// gave up, and the conversation stayed under our name, unheld, until it ran out.
    #[tokio::test]
    async fn a_take_that_landed_but_timed_out_is_ours_and_one_that_did_not_is_not() {
        let (_dir, inner, customer) = stored().await;
        let store = AnswerLost(inner);
        let thirty = std::time::Duration::from_secs(30);
        let taken = acquire(&store, &customer, "w1", thirty).await.unwrap();
        assert_eq!(taken.owner, "w1");
        assert_eq!(
            store.get(&customer).await.unwrap().unwrap().lease.version,
            taken.version
        );
        // One that did not land (another's lease is held) still fails as it did.
        assert_eq!(
            acquire(&store, &customer, "w2", thirty).await,
            Err(StoreError::Unavailable("timed out".into()))
        );
    }

    #[tokio::test]
    async fn a_lost_race_is_decided_again_on_the_newer_record() {
        let (_dir, store, customer) = store().await;
        let stale = store
            .insert(&Conversation::new(customer.clone()))
            .await
            .unwrap();
        // Someone else writes after our copy was taken.
        let mut theirs = stale.conversation.clone();
        theirs.last_call_sid = Some("theirs".into());
        store.update(&theirs, stale.version).await.unwrap();
        let mut seen = Vec::new();
        let done = modify(&store, &customer, Some(stale), Fence::None, |c| {
            seen.push(c.last_call_sid.clone());
            c.last_inbound_message_sid = Some("ours".into());
            true
        })
        .await
        .unwrap();
        // Decided twice: on the stale copy, then on their record, which keeps their write.
        assert_eq!(seen, [None, Some("theirs".to_owned())]);
        let Modified::Written(now) = done else {
            panic!("not written: {done:?}")
        };
        assert_eq!(now.conversation.last_call_sid.as_deref(), Some("theirs"));
        assert_eq!(
            now.conversation.last_inbound_message_sid.as_deref(),
            Some("ours")
        );
    }

    #[tokio::test]
    async fn a_declined_change_writes_nothing_and_a_missing_record_is_said() {
        let (_dir, store, customer) = store().await;
        let missing = modify(&store, &customer, None, Fence::None, |_| true).await;
        assert_eq!(missing, Ok(Modified::Missing));
        let stored = store
            .insert(&Conversation::new(customer.clone()))
            .await
            .unwrap();
        let version = stored.version;
        let declined = modify(&store, &customer, None, Fence::None, |_| false)
            .await
            .unwrap();
        assert!(matches!(declined, Modified::Unchanged(s) if s.version == version));
        assert_eq!(
            store.get(&customer).await.unwrap().unwrap().version,
            version
        );
    }

    #[tokio::test]
    async fn a_fenced_write_needs_the_lease() {
        let (_dir, store, customer, lease) = leased().await;
        let held = lease.clone();
        let current = move || held.clone();
        let written = modify(&store, &customer, None, Fence::Lease(&current), |c| {
            c.last_inbound_message_sid = Some("fenced".into());
            true
        })
        .await;
        assert!(matches!(written, Ok(Modified::Written(_))));
        store.release_lease(&lease).await.unwrap();
        let refused = modify(&store, &customer, None, Fence::Lease(&current), |_| true).await;
        assert_eq!(refused, Err(StoreError::LeaseLost));
    }

    /// The holder's renewal has landed but its answer has not reached the lease the
    /// session sees (they can share one group commit): the lease is still ours. Taking
    /// this for a lost lease stopped the session, and nobody took the conversation over
    /// until the renewed lease ran out: the agent's replies waited ~25 s.
    #[tokio::test]
    async fn a_renewal_whose_answer_is_still_on_its_way_is_not_a_lost_lease() {
        let (_dir, store, customer, lease) = leased().await;
        let seen = lease.clone();
        let current = move || seen.clone();
        let renewed = store
            .renew_lease(&lease, std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let written = modify(&store, &customer, None, Fence::Lease(&current), |c| {
            c.last_inbound_message_sid = Some("fenced".into());
            true
        })
        .await;
        let Ok(Modified::Written(now)) = written else {
            panic!("refused: {written:?}")
        };
        assert_eq!(now.lease.version, renewed.version);

        // Another holder's lease, or ours released, still refuses.
        store.release_lease(&renewed).await.unwrap();
        let theirs = store
            .acquire_lease(&customer, "w2", std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let refused = modify(&store, &customer, None, Fence::Lease(&current), |_| true).await;
        assert_eq!(refused, Err(StoreError::LeaseLost));
        store.release_lease(&theirs).await.unwrap();
        let refused = modify(&store, &customer, None, Fence::Lease(&current), |_| true).await;
        assert_eq!(refused, Err(StoreError::LeaseLost));
    }
}
