//! The message-index contract (see `waconnect_shared::storage::message_index`).

use crate::engines::IndexEngine;
use crate::key;
use waconnect_shared::storage::message_index::{Author, IndexedMessage, MAX_EXCERPT_CHARS};

fn sid(n: usize) -> String {
    format!("SM{n:032x}")
}

pub async fn a_message_is_found_by_either_id_from_another_process(e: &dyn IndexEngine) {
    let (index, other) = e.indexes().await;
    let m = IndexedMessage::new(
        &key(0),
        &sid(1),
        "item-1",
        Author::Customer,
        "my order never came",
    );
    index.remember(m.clone()).await.unwrap();
    let by_sid = other.by_sid(&sid(1)).await.unwrap().expect("found by SID");
    assert_eq!(
        (&by_sid.connect_id, by_sid.author, &by_sid.excerpt),
        (&m.connect_id, Author::Customer, &m.excerpt)
    );
    assert_eq!(by_sid.at.timestamp_millis(), m.at.timestamp_millis());
    let by_item = other
        .by_connect_id("item-1")
        .await
        .unwrap()
        .expect("found by item");
    assert_eq!(by_item.sid, sid(1));
    assert_eq!(other.by_sid(&sid(2)).await.unwrap(), None);
    assert_eq!(other.by_connect_id("item-2").await.unwrap(), None);
}

/// A long agent message goes to WhatsApp in parts, one SID each, all from one chat item;
/// a long customer message reaches the chat as several items from one SID.
pub async fn parts_share_an_id_on_one_side(e: &dyn IndexEngine) {
    let (index, _) = e.indexes().await;
    for part in 0..3 {
        let text = format!("part {part}");
        let entry =
            IndexedMessage::new(&key(0), &sid(10 + part), "agent-item", Author::Agent, &text);
        index.remember(entry).await.unwrap();
    }
    for part in 0..3 {
        let found = index.by_sid(&sid(10 + part)).await.unwrap().unwrap();
        assert_eq!(
            (found.connect_id.as_str(), found.excerpt),
            ("agent-item", format!("part {part}"))
        );
    }
    for n in 0..2 {
        let entry = IndexedMessage::new(
            &key(0),
            &sid(20),
            &format!("c-{n}"),
            Author::Customer,
            "long",
        );
        index.remember(entry).await.unwrap();
    }
    for n in 0..2 {
        let found = index
            .by_connect_id(&format!("c-{n}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.sid, sid(20));
    }
}

pub async fn many_entries_at_once_are_all_kept(e: &dyn IndexEngine) {
    let (index, other) = e.indexes().await;
    let writes = (0..40).map(|n| {
        let index = index.clone();
        tokio::spawn(async move {
            let entry = IndexedMessage::new(
                &key(0),
                &sid(100 + n),
                &format!("i-{n}"),
                Author::Customer,
                "x",
            );
            index.remember(entry).await
        })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.unwrap().unwrap();
    }
    for n in 0..40 {
        let found = other.by_connect_id(&format!("i-{n}")).await.unwrap();
        assert_eq!(found.map(|f| f.sid), Some(sid(100 + n)), "entry {n}");
    }
}

pub async fn excerpts_are_capped(e: &dyn IndexEngine) {
    let (index, _) = e.indexes().await;
    let long = "word ".repeat(200);
    index
        .remember(IndexedMessage::new(
            &key(0),
            &sid(3),
            "item-3",
            Author::Agent,
            &long,
        ))
        .await
        .unwrap();
    let found = index.by_sid(&sid(3)).await.unwrap().unwrap();
    assert_eq!(found.excerpt.chars().count(), MAX_EXCERPT_CHARS);
}

pub async fn old_entries_are_pruned(e: &dyn IndexEngine) {
    let (index, _) = e.indexes().await;
    index
        .remember(IndexedMessage::new(
            &key(0),
            &sid(4),
            "item-4",
            Author::Customer,
            "hi",
        ))
        .await
        .unwrap();
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(index.prune(hour_ago).await.unwrap(), 0);
    assert!(index.by_sid(&sid(4)).await.unwrap().is_some());
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    let pruned = index.prune(later).await.unwrap();
    if e.expires_itself() {
        assert_eq!(pruned, 0);
    } else {
        assert_eq!(pruned, 1);
        assert_eq!(index.by_sid(&sid(4)).await.unwrap(), None);
        assert_eq!(index.by_connect_id("item-4").await.unwrap(), None);
    }
}

/// An erasure request forgets every entry of one conversation, on both sides' ids, and
/// nothing of another's.
pub async fn a_conversation_is_forgotten_whole(e: &dyn IndexEngine) {
    let (index, other) = e.indexes().await;
    for n in 0..3 {
        index
            .remember(IndexedMessage::new(
                &key(1),
                &sid(300 + n),
                &format!("erased-{n}"),
                Author::Customer,
                "my address is 1 Main St",
            ))
            .await
            .unwrap();
    }
    index
        .remember(IndexedMessage::new(
            &key(2),
            &sid(310),
            "kept",
            Author::Agent,
            "hello",
        ))
        .await
        .unwrap();
    // The entries are written (an engine may batch them).
    crate::wait::until(
        "the entries",
        std::time::Duration::from_secs(10),
        || async { other.by_sid(&sid(302)).await.unwrap().map(drop) },
    )
    .await;
    let found = other.by_sid(&sid(300)).await.unwrap().unwrap();
    assert_eq!(found.conversation, key(1).storage());
    let forgotten = std::sync::atomic::AtomicU64::new(0);
    crate::wait::until(
        "the conversation index to list them",
        std::time::Duration::from_secs(10),
        || async {
            // An eventually consistent index may list them a moment late: erase again.
            let n = other.forget_conversation(&key(1)).await.unwrap();
            forgotten.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            let left = other.by_sid(&sid(301)).await.unwrap();
            left.is_none().then_some(())
        },
    )
    .await;
    assert_eq!(forgotten.into_inner(), 3);
    for n in 0..3 {
        assert_eq!(index.by_sid(&sid(300 + n)).await.unwrap(), None);
        assert_eq!(
            index.by_connect_id(&format!("erased-{n}")).await.unwrap(),
            None
        );
    }
    assert!(index.by_connect_id("kept").await.unwrap().is_some());
    assert_eq!(index.forget_conversation(&key(1)).await.unwrap(), 0);
}
