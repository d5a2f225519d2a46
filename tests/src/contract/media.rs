//! The media store contract: a file stored under a key is served by the URLs the store
//! gives out — with its type, length and name — until they expire, and by nothing else;
//! storing it again is harmless; deleted or expired files are gone.

use crate::engines::MediaEngine;
use std::time::Duration;
use tempfile::TempPath;
use waconnect_shared::storage::media::{FileMeta, MediaError};

/// A file to store, as the relay's spool gives it (the store takes it).
fn sample(bytes: &[u8]) -> TempPath {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, bytes).unwrap();
    file.into_temp_path()
}

fn pdf() -> FileMeta {
    FileMeta {
        content_type: "application/pdf".into(),
        file_name: "Invoice 42.pdf".into(),
    }
}

fn key(n: u32) -> String {
    format!("att-{}-{n}.pdf", crate::engines::unique_suffix())
}

pub async fn a_stored_file_is_served_by_its_url_with_its_type_and_name(e: &dyn MediaEngine) {
    let media = e.media().await;
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let content: &[u8] = &bytes;
    let k = key(1);
    assert!(!media.exists(&k).await.unwrap());
    media.put(&k, sample(content), &pdf()).await.unwrap();
    assert!(media.exists(&k).await.unwrap());
    let url = media.url(&k, Duration::from_secs(600)).await.unwrap();
    let got = reqwest::get(&url).await.unwrap();
    assert_eq!(got.status(), 200, "{url}");
    assert_eq!(got.headers()["content-type"], "application/pdf");
    assert_eq!(
        got.headers()["content-disposition"],
        "inline; filename=\"Invoice 42.pdf\""
    );
    assert_eq!(got.content_length(), Some(bytes.len() as u64));
    assert_eq!(got.bytes().await.unwrap().to_vec(), bytes);
    // Twilio may look before it fetches.
    let head = reqwest::Client::new().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    // Stored again (a redelivered copy): the same file.
    media.put(&k, sample(content), &pdf()).await.unwrap();
    let again = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(again.to_vec(), bytes);
}

pub async fn a_url_serves_only_its_own_file(e: &dyn MediaEngine) {
    let media = e.media().await;
    let content: &[u8] = b"%PDF-1.4 one";
    let (one, two) = (key(1), key(2));
    media.put(&one, sample(content), &pdf()).await.unwrap();
    media.put(&two, sample(content), &pdf()).await.unwrap();
    let url = media.url(&one, Duration::from_secs(600)).await.unwrap();
    let forged = url.replacen(&one, &two, 1);
    assert_ne!(forged, url);
    if !e.checks_urls() {
        return;
    }
    let status = reqwest::get(&forged).await.unwrap().status();
    assert!(status.is_client_error(), "a forged URL answered {status}");
}

pub async fn a_url_expires(e: &dyn MediaEngine) {
    let media = e.media().await;
    let content: &[u8] = b"%PDF-1.4 short";
    let k = key(1);
    media.put(&k, sample(content), &pdf()).await.unwrap();
    let url = media.url(&k, Duration::from_secs(1)).await.unwrap();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    if !e.checks_urls() {
        return;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let status = reqwest::get(&url).await.unwrap().status();
    assert!(status.is_client_error(), "an expired URL answered {status}");
}

pub async fn deleted_files_are_gone(e: &dyn MediaEngine) {
    let media = e.media().await;
    let content: &[u8] = b"%PDF-1.4 gone";
    let k = key(1);
    media.put(&k, sample(content), &pdf()).await.unwrap();
    let url = media.url(&k, Duration::from_secs(600)).await.unwrap();
    media.delete(&k).await.unwrap();
    media.delete(&k).await.unwrap();
    assert!(!media.exists(&k).await.unwrap());
    let status = reqwest::get(&url).await.unwrap().status();
    assert!(status.is_client_error(), "a deleted file answered {status}");
}

pub async fn keys_that_could_be_paths_are_refused(e: &dyn MediaEngine) {
    let media = e.media().await;
    let content: &[u8] = b"x";
    for bad in ["../escape.pdf", "a/b.pdf", ".hidden", ""] {
        assert!(matches!(
            media.put(bad, sample(content), &pdf()).await,
            Err(MediaError::InvalidKey(_))
        ));
        assert!(media.url(bad, Duration::from_secs(60)).await.is_err());
    }
}

pub async fn old_files_are_pruned(e: &dyn MediaEngine) {
    let media = e.media().await;
    let content: &[u8] = b"%PDF-1.4 old";
    let (old, new) = (key(1), key(2));
    media.put(&old, sample(content), &pdf()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    media.put(&new, sample(content), &pdf()).await.unwrap();
    let pruned = media.prune(cut).await.unwrap();
    if e.expires_itself() {
        // The bucket's lifecycle rule expires objects; prune has nothing to do.
        assert_eq!(pruned, 0);
        return;
    }
    assert_eq!(pruned, 1);
    assert!(!media.exists(&old).await.unwrap());
    assert!(media.exists(&new).await.unwrap());
}

/// An erasure request removes every file of one conversation (by its key prefix) and
/// nothing else; an empty prefix is refused rather than taken as "everything".
pub async fn a_conversations_files_are_forgotten_by_their_prefix(e: &dyn MediaEngine) {
    let media = e.media().await;
    let content: &[u8] = b"%PDF-1.4 mine";
    let mine = waconnect_shared::storage::media::conversation_prefix(&crate::key(1));
    let theirs = waconnect_shared::storage::media::conversation_prefix(&crate::key(2));
    assert_ne!(mine, theirs);
    let suffix = crate::engines::unique_suffix();
    let erased = [
        format!("{mine}agent-{suffix}-1.pdf"),
        format!("{mine}agent-{suffix}-2.pdf"),
    ];
    let kept = format!("{theirs}agent-{suffix}-3.pdf");
    for k in erased.iter().chain([&kept]) {
        media.put(k, sample(content), &pdf()).await.unwrap();
    }
    assert_eq!(media.forget(&mine).await.unwrap(), 2);
    for k in &erased {
        assert!(!media.exists(k).await.unwrap(), "{k}");
    }
    assert!(media.exists(&kept).await.unwrap());
    assert!(matches!(
        media.forget("").await,
        Err(MediaError::InvalidKey(_))
    ));
    assert_eq!(media.forget(&mine).await.unwrap(), 0);
}
