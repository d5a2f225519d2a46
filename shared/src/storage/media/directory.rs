//! The embedded media store: files in a directory (by default next to the SQLite file),
//! each with its description beside it, served by ingress under
//! `/media/<key>?expires=<unix>&signature=<hex>` — an HMAC-SHA256 of key and expiry, so a
//! URL works for whom it was given to, until it expires, and for no other file.

use super::{FileMeta, MediaError, MediaStore, check_key};
use crate::Secret;
use crate::service::config::Synchronous;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempPath;

/// The file holding the generated signing key, when none is configured: every process of
/// one box shares the directory, so they share the key too.
const KEY_FILE: &str = ".signing-key";

#[derive(Clone)]
pub struct DirectoryStore {
    dir: PathBuf,
    key: Secret,
    /// Ingress's public base URL; without it no URL can be given out.
    public_base: Option<String>,
    /// Whether a stored file is on disk before `put` answers (the engine's `synchronous`
    /// setting; the default).
    durable: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    #[serde(flatten)]
    meta: FileMeta,
    stored_at: DateTime<Utc>,
}

fn backend(e: impl std::fmt::Display) -> MediaError {
    MediaError::Backend(e.to_string())
}

impl DirectoryStore {
    /// Opens (creating) `dir`, with the configured signing key or the directory's own.
    pub async fn open(
        dir: PathBuf,
        key: Option<Secret>,
        public_base: Option<String>,
    ) -> Result<Self, MediaError> {
        tokio::fs::create_dir_all(&dir).await.map_err(backend)?;
        let key = match key {
            Some(k) => k,
            None => own_key(&dir).await?,
        };
        Ok(Self {
            dir,
            key,
            public_base: public_base.map(|b| b.trim_end_matches('/').to_owned()),
            durable: true,
        })
    }

    /// Stores files as durably as the database keeps its writes: with `Normal`, like the
    /// database's last commits, a file may not survive a power cut (a process crash
    /// loses nothing either way).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.durable = synchronous == Synchronous::Full;
        self
    }

    /// Moves the relay's spool `file` into the store as `key`, described by `meta`. When
    /// durable, both are on disk before this returns, in this order: the file's bytes, its
    /// name, then its description. The relay sends Twilio the file's URL once `put`
    /// returns, and a description is what says a file is there ([`MediaStore::exists`]),
    /// so a power cut must leave neither a URL nor a description pointing at bytes that
    /// never reached the disk.
    fn put_now(&self, key: &str, file: TempPath, meta: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        // Put under a name no key can have, then renamed: a reader never sees half.
        let partial = self
            .dir
            .join(format!(".{key}.{}", uuid::Uuid::new_v4().simple()));
        // The relay's spool is usually on this disk, so the file is moved, not copied
        // again (a copy of the burst was an eighth of the relay's CPU in the media bench).
        if let Err(not_moved) = file.persist(&partial) {
            // Another filesystem (EXDEV): copied, and the spool file removed on drop.
            std::fs::copy(&not_moved.path, &partial)?;
        }
        let meta_partial = partial.with_extension("meta-partial");
        let mut described = std::fs::File::create(&meta_partial)?;
        described.write_all(meta)?;
        if self.durable {
            std::fs::File::open(&partial)?.sync_data()?;
            described.sync_data()?;
        }
        std::fs::rename(&partial, self.path(key))?;
        if self.durable {
            sync_dir(&self.dir)?;
        }
        std::fs::rename(&meta_partial, self.meta_path(key))?;
        if self.durable {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.meta"))
    }

    fn signature(&self, key: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(format!("{key}\n{expires}").as_bytes());
        mac
    }

    /// The path (under ingress's base) and query that serve `key` until `expires`.
    pub fn signed_path(&self, key: &str, expires: i64) -> String {
        let signature = hex::encode(self.signature(key, expires).finalize().into_bytes());
        format!("/media/{key}?expires={expires}&signature={signature}")
    }

    /// The file behind a signed path, if the signature holds and it has not expired: the
    /// open file, what it is, and its size. Ingress serves it.
    pub async fn open_signed(
        &self,
        key: &str,
        expires: i64,
        signature: &str,
    ) -> Result<(tokio::fs::File, FileMeta, u64), MediaError> {
        check_key(key)?;
        let given = hex::decode(signature).map_err(|_| MediaError::NotFound)?;
        // Constant-time, and the same answer for a bad signature, an expired URL and a
        // missing file: a URL tells nothing about files it was not made for.
        if self.signature(key, expires).verify_slice(&given).is_err()
            || expires < Utc::now().timestamp()
        {
            return Err(MediaError::NotFound);
        }
        let stored = self.read_meta(key).await?;
        let file = tokio::fs::File::open(self.path(key))
            .await
            .map_err(|_| MediaError::NotFound)?;
        let size = file.metadata().await.map_err(backend)?.len();
        Ok((file, stored.meta, size))
    }

    async fn read_meta(&self, key: &str) -> Result<Stored, MediaError> {
        let bytes = tokio::fs::read(self.meta_path(key))
            .await
            .map_err(|_| MediaError::NotFound)?;
        serde_json::from_slice(&bytes).map_err(backend)
    }
}

/// The directory's signing key, made on first use. `create_new` makes two processes
/// starting at once agree: one writes it, the other reads it.
async fn own_key(dir: &Path) -> Result<Secret, MediaError> {
    let path = dir.join(KEY_FILE);
    // Two v4 UUIDs: 244 random bits, as 64 hex digits.
    let fresh = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    match options.open(&path).await {
        Ok(mut f) => {
            use tokio::io::AsyncWriteExt;
            f.write_all(fresh.as_bytes()).await.map_err(backend)?;
            f.sync_all().await.map_err(backend)?;
            // Its name too: a key lost to a power cut would void every URL signed with it
            // that Twilio has yet to fetch.
            let dir = dir.to_owned();
            tokio::task::spawn_blocking(move || sync_dir(&dir))
                .await
                .map_err(backend)?
                .map_err(backend)?;
            Ok(Secret::from(fresh))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // The writer may not have finished: a key is 64 hex digits.
            for _ in 0..50 {
                let k = tokio::fs::read_to_string(&path).await.map_err(backend)?;
                if k.len() == 64 {
                    return Ok(Secret::from(k));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(MediaError::Backend(format!(
                "{} is not a signing key",
                path.display()
            )))
        }
        Err(e) => Err(backend(e)),
    }
}

/// Makes the directory's entries (a rename into it) survive a power cut.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl MediaStore for DirectoryStore {
    async fn put(&self, key: &str, file: TempPath, meta: &FileMeta) -> Result<(), MediaError> {
        check_key(key)?;
        let stored = Stored {
            meta: meta.clone(),
            stored_at: Utc::now(),
        };
        let stored = serde_json::to_vec(&stored).map_err(backend)?;
        let (store, key) = (self.clone(), key.to_owned());
        // One trip to the blocking pool for the whole sequence of file operations.
        tokio::task::spawn_blocking(move || store.put_now(&key, file, &stored))
            .await
            .map_err(backend)?
            .map_err(backend)
    }

    fn syncs_local_file(&self) -> bool {
        self.durable
    }

    async fn exists(&self, key: &str) -> Result<bool, MediaError> {
        check_key(key)?;
        Ok(tokio::fs::try_exists(self.meta_path(key))
            .await
            .unwrap_or(false))
    }

    async fn url(&self, key: &str, ttl: Duration) -> Result<String, MediaError> {
        check_key(key)?;
        let base = self.public_base.as_ref().ok_or_else(|| {
            MediaError::Unavailable(
                "no public URL to serve files from (WACONNECT_PUBLIC_BASE_URL)".into(),
            )
        })?;
        let expires = Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        Ok(format!("{base}{}", self.signed_path(key, expires)))
    }

    async fn delete(&self, key: &str) -> Result<(), MediaError> {
        check_key(key)?;
        for path in [self.meta_path(key), self.path(key)] {
            match tokio::fs::remove_file(path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(())
    }

    async fn forget(&self, prefix: &str) -> Result<u64, MediaError> {
        // Never everything: a prefix is a key's start.
        check_key(prefix)?;
        let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(backend)?;
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await.map_err(backend)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".meta") else {
                continue;
            };
            if key.starts_with(prefix) && check_key(key).is_ok() {
                self.delete(key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<u64, MediaError> {
        let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(backend)?;
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await.map_err(backend)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A copy a crash left half-done.
            if name.starts_with('.') && name != KEY_FILE {
                let modified = entry.metadata().await.and_then(|m| m.modified());
                if modified.is_ok_and(|t| DateTime::<Utc>::from(t) < before) {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
                continue;
            }
            let Some(key) = name.strip_suffix(".meta") else {
                continue;
            };
            if check_key(key).is_err() {
                continue;
            }
            let old = match self.read_meta(key).await {
                Ok(stored) => stored.stored_at < before,
                Err(_) => true,
            };
            if old {
                self.delete(key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[derive(serde::Deserialize)]
struct Signed {
    expires: i64,
    signature: String,
}

/// Ingress's `GET` / `HEAD /media/{key}?expires=…&signature=…`: the file, streamed, with
/// its type, length and name; 404 for anything else, expired or forged alike.
pub fn router(store: DirectoryStore) -> axum::Router {
    use axum::extract::{Path, Query, State};
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    async fn serve(
        State(store): State<DirectoryStore>,
        Path(key): Path<String>,
        Query(signed): Query<Signed>,
        method: axum::http::Method,
    ) -> Response {
        match store
            .open_signed(&key, signed.expires, &signed.signature)
            .await
        {
            Ok((file, meta, size)) => {
                let headers = [
                    (header::CONTENT_TYPE, meta.content_type.clone()),
                    (header::CONTENT_LENGTH, size.to_string()),
                    (header::CONTENT_DISPOSITION, meta.content_disposition()),
                    // Whoever holds the URL may fetch it; nobody should keep a copy.
                    (header::CACHE_CONTROL, "private, no-store".to_owned()),
                ];
                if method == axum::http::Method::HEAD {
                    return (headers, axum::body::Body::empty()).into_response();
                }
                // 256 KiB reads: in the media bench (20 × 15 MiB at once, alternating
                // runs) 64 KiB reads made the agent's file take 1.26–1.47× two plain
                // copies, 256 KiB 1.14–1.30× with a sixth less ingress CPU, for ~0.8 MiB
                // of ingress memory per transfer instead of ~0.4: still streamed.
                let body = axum::body::Body::from_stream(
                    tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024),
                );
                (headers, body).into_response()
            }
            Err(MediaError::NotFound | MediaError::InvalidKey(_)) => {
                StatusCode::NOT_FOUND.into_response()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve a media file");
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            }
        }
    }
    axum::Router::new()
        .route("/media/{key}", axum::routing::get(serve))
        .with_state(store)
}
