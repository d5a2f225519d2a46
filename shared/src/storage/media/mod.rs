//! The media store: files the agent sends, kept where the bridge controls them until
//! Twilio has fetched them. Connect's own download URL lives at most 5 minutes, shorter
//! than a send's retries may take (docs/architecture.md §9), so the relay copies each file here and
//! the sender gives Twilio a URL of ours, made fresh for every attempt.
//!
//! Two engines behind one contract (the suite in `waconnect-tests`):
//! * [`directory`]: files in a directory next to the SQLite database, served by ingress
//!   (the public endpoint) under an expiring HMAC-signed path;
//! * [`s3`]: an S3 bucket, with presigned GETs and a lifecycle rule that expires objects.

pub mod directory;
pub mod s3;

use crate::ConversationKey;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;
use tempfile::TempPath;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("invalid media key {0:?}")]
    InvalidKey(String),
    #[error("no such media file")]
    NotFound,
    #[error("media store unavailable: {0}")]
    Unavailable(String),
    #[error("media store: {0}")]
    Backend(String),
}

/// What a stored file is, for whoever fetches it: its type and the name the customer's
/// phone shows (`Content-Disposition: inline; filename="…"`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    pub content_type: String,
    pub file_name: String,
}

impl FileMeta {
    /// The `Content-Disposition` a fetch answers with: inline, with a name reduced to
    /// characters every client reads (no quotes, no control characters, ASCII).
    pub fn content_disposition(&self) -> String {
        let name: String = self
            .file_name
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                    c
                } else {
                    '_'
                }
            })
            .take(200)
            .collect();
        format!("inline; filename=\"{name}\"")
    }
}

#[async_trait]
pub trait MediaStore: Send + Sync + 'static {
    /// Stores `file` under `key`, taking it: an engine on the same disk moves it rather
    /// than copying its bytes again. The same key is the same file: storing it again
    /// replaces it with the same bytes.
    async fn put(&self, key: &str, file: TempPath, meta: &FileMeta) -> Result<(), MediaError>;

    /// Whether `put` syncs the file to this machine's disk before it answers (the
    /// directory, when durable). The relay then starts that writing while the file
    /// arrives, so `put`'s sync finds little left to wait for.
    fn syncs_local_file(&self) -> bool {
        false
    }

    /// Whether `key` is stored.
    async fn exists(&self, key: &str) -> Result<bool, MediaError>;

    /// A URL that serves the file to whoever holds it, for `ttl` from now.
    async fn url(&self, key: &str, ttl: Duration) -> Result<String, MediaError>;

    async fn delete(&self, key: &str) -> Result<(), MediaError>;

    /// Removes every file whose key starts with `prefix` (an erasure request, with a
    /// [`conversation_prefix`]); the count removed.
    async fn forget(&self, prefix: &str) -> Result<u64, MediaError>;

    /// Removes files stored before `before`; the count removed. (S3 expires objects with
    /// its lifecycle rule instead.)
    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, MediaError>;
}

/// What every key stored for `conversation` starts with, so an erasure request finds its
/// files. A digest: keys end up in the URLs Twilio fetches, and the number need not.
pub fn conversation_prefix(conversation: &ConversationKey) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(conversation.storage().as_bytes());
    format!("c{}-", hex::encode(&digest[..8]))
}

/// Keys are what the relay derives from Connect's attachment ids: letters, digits, `.`,
/// `_` and `-`, never a path.
pub fn check_key(key: &str) -> Result<(), MediaError> {
    let valid = (1..=200).contains(&key.len())
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(MediaError::InvalidKey(key.chars().take(50).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_never_paths() {
        assert!(check_key("3f2a-b.jpg").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(201)] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names_are_safe_in_a_header() {
        let meta = FileMeta {
            content_type: "application/pdf".into(),
            file_name: "Rechnung \"März\"\r\n.pdf".into(),
        };
        assert_eq!(
            meta.content_disposition(),
            "inline; filename=\"Rechnung _M_rz___.pdf\""
        );
    }
}
