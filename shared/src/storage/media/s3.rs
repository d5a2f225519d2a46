//! The AWS media store: an S3 bucket. A file is one object, its type and name in the
//! object's own headers; Twilio fetches it with a presigned GET; the bucket's lifecycle
//! rule (deploy/aws) expires objects, so `prune` has nothing to do.

use super::{FileMeta, MediaError, MediaStore, check_key};
use crate::service::aws::CallError;
use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use chrono::{DateTime, Utc};
use std::time::Duration;
use tempfile::TempPath;

#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Objects go under this prefix (the lifecycle rule names it).
    prefix: String,
}

impl S3Store {
    pub fn new(client: aws_sdk_s3::Client, bucket: String) -> Self {
        Self {
            client,
            bucket,
            prefix: "agent-files/".into(),
        }
    }

    fn object(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Bytes a second below which an upload counts as stalled: a bucket in the relay's region
/// takes tens of MB a second, so a 16 MB file gets 16 s on top of a call's bound.
const SLOWEST_UPLOAD: u64 = 1024 * 1024;

fn failed<E>(e: &aws_sdk_s3::error::SdkError<E, HttpResponse>) -> MediaError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let e = CallError::from_sdk(e);
    if e.unavailable {
        MediaError::Unavailable(e.message)
    } else {
        MediaError::Backend(e.message)
    }
}

#[async_trait]
impl MediaStore for S3Store {
    async fn put(&self, key: &str, file: TempPath, meta: &FileMeta) -> Result<(), MediaError> {
        check_key(key)?;
        // Streamed from the file; the SDK knows its length. The file goes when this ends.
        let body = ByteStream::from_path(&file)
            .await
            .map_err(|e| MediaError::Backend(e.to_string()))?;
        // A file's stream knows its length exactly.
        let (size, _) = body.size_hint();
        // Its attempts get the time its bytes take at SLOWEST_UPLOAD on top of a call's.
        let timeouts = crate::service::aws::stretched(
            self.client.config().timeout_config(),
            Duration::from_secs_f64(size as f64 / SLOWEST_UPLOAD as f64),
        );
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object(key))
            .content_type(&meta.content_type)
            .content_disposition(meta.content_disposition())
            .body(body)
            .customize()
            .config_override(aws_sdk_s3::config::Builder::default().timeout_config(timeouts))
            .send()
            .await
            .map_err(|e| failed(&e))?;
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, MediaError> {
        check_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object(key))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(failed(&e)),
        }
    }

    async fn url(&self, key: &str, ttl: Duration) -> Result<String, MediaError> {
        check_key(key)?;
        // SigV4 presigned URLs live at most 7 days.
        let ttl = ttl.min(Duration::from_secs(7 * 24 * 3600));
        let config =
            PresigningConfig::expires_in(ttl).map_err(|e| MediaError::Backend(e.to_string()))?;
        let presigned = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object(key))
            .presigned(config)
            .await
            .map_err(|e| MediaError::Backend(e.to_string()))?;
        Ok(presigned.uri().to_owned())
    }

    async fn delete(&self, key: &str) -> Result<(), MediaError> {
        check_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object(key))
            .send()
            .await
            .map_err(|e| failed(&e))?;
        Ok(())
    }

    async fn forget(&self, prefix: &str) -> Result<u64, MediaError> {
        // Never everything: a prefix is a key's start.
        check_key(prefix)?;
        let mut removed = 0;
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.object(prefix))
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| failed(&e))?;
            for object in out.contents() {
                if let Some(key) = object.key() {
                    self.client
                        .delete_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .send()
                        .await
                        .map_err(|e| failed(&e))?;
                    removed += 1;
                }
            }
            token = out
                .next_continuation_token
                .filter(|_| out.is_truncated == Some(true));
            if token.is_none() {
                return Ok(removed);
            }
        }
    }

    async fn prune(&self, _before: DateTime<Utc>) -> Result<u64, MediaError> {
        Ok(0)
    }
}
