//! Customer → agent files (docs/architecture.md §9): each file a WhatsApp message carries is fetched
//! from Twilio (Basic auth, following the redirect to its storage), spooled to a temporary
//! file (never held in memory whole), converted when the Connect instance would refuse its
//! type, and attached to the chat (StartAttachmentUpload → PUT with exactly the headers
//! Connect names → CompleteAttachmentUpload). ClientTokens derived from the MessageSid and
//! a delivery-ledger entry per file make a redelivery attach nothing twice. A file that
//! cannot be attached becomes a notice to the agent that says what the customer sent and
//! why it could not be shown — never silence, never a message retried forever.

use crate::NOTICE_PREFIX;
use crate::connect::{AttachmentFile, ConnectApi, ConnectError, ErrorKind, Upload};
use crate::convert::{ConvertError, Converter};
use crate::media_type::{self, Conversion};
use crate::transfer::{self, Transfers};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;
use waconnect_shared::service::backoff::Backoff;
use waconnect_shared::storage::delivery::{Claim, DeliveryLedger};
use waconnect_shared::twilio::account::TwilioAccount;

/// What the operator says about files (README "Media").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSettings {
    /// Fetches the customer's files; without it they become notices.
    pub twilio: Option<TwilioAccount>,
    /// Twilio's REST base: only URLs under it get the account's credentials.
    pub twilio_api_base: String,
    /// Twilio's Content API: a template's text, for the agent's notice of an outreach.
    pub twilio_content_base: String,
    /// What the Connect instance accepts.
    pub accepted: Accepted,
    /// ffmpeg, when conversions are on and it is installed.
    pub ffmpeg: Option<PathBuf>,
    pub convert_timeout: Duration,
    /// Where files in transit are spooled.
    pub spool_dir: PathBuf,
    /// Delete Twilio's copy once the file is in the chat.
    pub delete_from_twilio: bool,
    /// Bound on one fetch from Twilio or one upload to Connect.
    pub transfer_timeout: Duration,
}

/// Attachment types (by extension, lower case) and size a Connect instance allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub extensions: BTreeSet<String>,
    pub max_bytes: u64,
}

/// Connect chat's defaults (docs/architecture.md §9).
pub const CONNECT_DEFAULT_EXTENSIONS: &str =
    "csv,doc,docx,heic,jfif,jpeg,jpg,mov,mp4,pdf,png,ppt,pptx,rtf,txt,wav,xls,xlsx";
/// Connect chat's default size limit, in MB.
pub const CONNECT_DEFAULT_MAX_MB: u64 = 20;
/// Attachments Connect allows in one chat.
pub const MAX_PER_CHAT: usize = 35;
/// WhatsApp's own limit on a file (documents): nothing larger is ever fetched.
pub const MAX_FETCH_BYTES: u64 = 100 * 1024 * 1024;

impl Accepted {
    pub fn takes(&self, extension: &str) -> bool {
        self.extensions.contains(extension)
            || (extension == "jpg" && self.extensions.contains("jpeg"))
    }
}

/// The media side of the relay: settings, an HTTP client for Twilio's APIs, one for the
/// files themselves (small buffers, [`crate::transfer`]), and the converter.
pub struct MediaRelay {
    pub settings: MediaSettings,
    http: reqwest::Client,
    transfers: Transfers,
    converter: Converter,
}

impl MediaRelay {
    /// The client for Twilio's APIs (timeouts on connect and between reads).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn new(settings: MediaSettings, tls: &waconnect_shared::service::tls::TlsSettings) -> Self {
        let http = tls
            .reqwest(reqwest::Client::builder())
            .connect_timeout(Duration::from_secs(5))
            // Between reads of a stream, not the whole transfer (see `transfer_timeout`).
            .read_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .expect("a TLS backend is compiled in");
        let converter = Converter::new(settings.ffmpeg.clone(), settings.convert_timeout);
        Self {
            settings,
            http,
            transfers: Transfers::new(tls.client_config()),
            converter,
        }
    }
}

/// One file of a customer's message, ready for the chat.
#[derive(Debug)]
pub enum Prepared {
    /// A file to attach; deleted from the spool when dropped.
    File(ReadyFile),
    /// A contact card: its summary as text, and the .vcf if the chat takes it.
    Card {
        summary: String,
        file: Option<ReadyFile>,
        /// Twilio's copy, to delete once the card is in the chat.
        media_url: String,
    },
    /// Attached by an earlier delivery.
    Done,
    /// Cannot be attached: the agent gets this notice instead.
    Refused(String),
}

#[derive(Debug)]
pub struct ReadyFile {
    /// What the customer sent, in words: "a voice note (audio/ogg)".
    pub label: String,
    pub body: FileBody,
    pub content_type: String,
    pub name: String,
    pub size: u64,
    /// The Twilio Media resource, to delete once attached.
    pub media_url: String,
}

/// Where a file's bytes come from when they are PUT to Connect.
#[derive(Debug)]
pub enum FileBody {
    /// A spool file (converted, or of unknown length), deleted when dropped.
    Spooled(TempPath),
    /// Twilio's answer itself, streamed straight into the upload: a file Connect takes as
    /// it is, whose length Twilio said. It can be read once; a retry fetches it again.
    Fetched(Box<tokio::sync::Mutex<Option<transfer::Response>>>),
}

/// The ledger entry that records file `index` of message `sid` as attached.
pub fn ledger_key(sid: &str, index: usize) -> String {
    format!("att#{sid}#{index}")
}

/// Why a file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Worth another delivery: Twilio or the network failed for now.
    #[error("fetching the file failed for now: {0}")]
    Passing(String),
    /// It will never come: the agent is told.
    #[error("{0}")]
    Final(String),
}

/// Fetches and readies file `index` of message `sid` (`url`, `content_type` from the
/// webhook). A passing failure is an error (the message is delivered again); anything
/// final is a notice.
pub async fn prepare(
    media: &MediaRelay,
    ledger: &dyn DeliveryLedger,
    sid: &str,
    index: usize,
    url: &str,
    content_type: &str,
) -> Result<Prepared, FetchError> {
    let essence = media_type::essence(content_type);
    let what = media_type::describe(&essence);
    let label = format!("{what} ({essence})");
    if let Ok(Claim::Sent { .. }) = ledger.claim(&ledger_key(sid, index)).await {
        return Ok(Prepared::Done);
    }
    let Some(account) = &media.settings.twilio else {
        return Ok(Prepared::Refused(notice(
            &label,
            "the bridge has no Twilio credentials to fetch files with",
        )));
    };
    if !url.starts_with(&format!("{}/", media.settings.twilio_api_base)) {
        return Ok(Prepared::Refused(notice(
            &label,
            "its address is not Twilio's, so it was not fetched",
        )));
    }
    let response = match open(media, Some(account), url).await {
        Ok(r) => r,
        Err(FetchError::Final(why)) => return Ok(Prepared::Refused(notice(&label, &why))),
        Err(e) => return Err(e),
    };
    let accepted = &media.settings.accepted;
    let extension = media_type::extension(&essence);
    let as_is = extension.filter(|e| accepted.takes(e));
    // Taken as it is and of a known length: straight from Twilio into the upload.
    if let (Some(e), Some(len)) = (as_is, response.content_length())
        && !media_type::is_vcard(&essence)
        && (1..=accepted.max_bytes).contains(&len)
    {
        return Ok(Prepared::File(ReadyFile {
            label,
            body: FileBody::Fetched(Box::new(tokio::sync::Mutex::new(Some(response)))),
            name: media_type::file_name(&essence, sid, index, e),
            content_type: essence.clone(),
            size: len,
            media_url: url.to_owned(),
        }));
    }
    let (spooled, size) = match spool(media, response, false).await {
        Ok(f) => f,
        Err(FetchError::Final(why)) => return Ok(Prepared::Refused(notice(&label, &why))),
        Err(e) => return Err(e),
    };
    if media_type::is_vcard(&essence) {
        return Ok(card(media, sid, index, url, label, spooled, size).await);
    }
    let (path, content_type, extension, size) = match (as_is, media_type::conversion(&essence)) {
        (Some(e), _) if size <= accepted.max_bytes => (spooled, essence.clone(), e, size),
        (_, Some(conversion)) if accepted.takes(conversion.extension) => {
            match convert(media, &spooled, conversion).await {
                Ok((path, size)) => (
                    path,
                    conversion.content_type.to_owned(),
                    conversion.extension,
                    size,
                ),
                Err(why) => return Ok(Prepared::Refused(notice(&label, &why))),
            }
        }
        (Some(_), _) => {
            return Ok(Prepared::Refused(notice(
                &label,
                &format!(
                    "it is larger than the chat allows ({}; the limit is {})",
                    human_size(size),
                    human_size(accepted.max_bytes)
                ),
            )));
        }
        (None, _) => {
            let kind = extension.map_or_else(|| essence.clone(), |e| format!(".{e} files"));
            return Ok(Prepared::Refused(notice(
                &label,
                &format!("this chat does not accept {kind}"),
            )));
        }
    };
    Ok(Prepared::File(ReadyFile {
        label,
        body: FileBody::Spooled(path),
        name: media_type::file_name(&essence, sid, index, extension),
        content_type,
        size,
        media_url: url.to_owned(),
    }))
}

/// Cards past this size are not read (a card with a photo can be large; its text is not).
const MAX_CARD_READ: u64 = 256 * 1024;

async fn card(
    media: &MediaRelay,
    sid: &str,
    index: usize,
    url: &str,
    label: String,
    spooled: TempPath,
    size: u64,
) -> Prepared {
    let mut text = String::new();
    if let Ok(f) = tokio::fs::File::open(&spooled).await {
        use tokio::io::AsyncReadExt;
        let mut bytes = Vec::new();
        let _ = f.take(MAX_CARD_READ).read_to_end(&mut bytes).await;
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let Some(summary) = crate::vcard::summary(&text) else {
        return Prepared::Refused(notice(&label, "it is not a contact card that can be read"));
    };
    let accepted = &media.settings.accepted;
    let file = (accepted.takes("vcf") && size <= accepted.max_bytes).then(|| ReadyFile {
        label,
        body: FileBody::Spooled(spooled),
        content_type: "text/vcard".into(),
        name: media_type::file_name("text/vcard", sid, index, "vcf"),
        size,
        media_url: url.to_owned(),
    });
    Prepared::Card {
        summary,
        file,
        media_url: url.to_owned(),
    }
}

async fn convert(
    media: &MediaRelay,
    input: &TempPath,
    conversion: Conversion,
) -> Result<(TempPath, u64), String> {
    convert_within(
        media,
        input,
        conversion,
        media.settings.accepted.max_bytes,
        "this chat",
    )
    .await
}

/// Converts `input` for whoever refuses its type (`for_whom`: "this chat", "WhatsApp"),
/// no larger than `max`; why not, as a notice says it.
pub async fn convert_within(
    media: &MediaRelay,
    input: &TempPath,
    conversion: Conversion,
    max: u64,
    for_whom: &str,
) -> Result<(TempPath, u64), String> {
    match media.converter.convert(input, conversion, max).await {
        Ok(path) => {
            let size = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
            metrics::counter!("waconnect_relay_media_converted_total", "to" => conversion.extension).increment(1);
            Ok((path, size))
        }
        Err(e) => {
            metrics::counter!("waconnect_relay_media_conversion_failures_total").increment(1);
            tracing::warn!(error = %e, to = conversion.extension, "media conversion failed");
            Err(match e {
                ConvertError::Unavailable => format!(
                    "{for_whom} does not accept it and it could not be converted to .{} (no converter installed)",
                    conversion.extension
                ),
                e => format!(
                    "{for_whom} does not accept it and converting it to .{} failed ({e})",
                    conversion.extension
                ),
            })
        }
    }
}

/// Streams the file at `url` (with the Twilio account's Basic auth, if given) into a
/// spool file; its size. With `write_out` (the file goes on to a store that syncs it to
/// this disk) its bytes are put on disk while it arrives.
pub async fn fetch(
    media: &MediaRelay,
    account: Option<&TwilioAccount>,
    url: &str,
    write_out: bool,
) -> Result<(TempPath, u64), FetchError> {
    let response = open(media, account, url).await?;
    spool(media, response, write_out).await
}

/// Asks for the file at `url`: the answer, once its status says the bytes follow.
async fn open(
    media: &MediaRelay,
    account: Option<&TwilioAccount>,
    url: &str,
) -> Result<transfer::Response, FetchError> {
    let auth = account.map(|a| (a.username.as_str(), a.password.expose()));
    let response = tokio::time::timeout(
        media.settings.transfer_timeout,
        media.transfers.get(url, auth),
    )
    .await
    .map_err(|_| FetchError::Passing("the file's server did not answer".into()))?
    .map_err(|e| FetchError::Passing(e.to_string()))?;
    let status = response.status();
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(FetchError::Passing(format!("Twilio answered {status}")));
    }
    if account.is_some() && matches!(status.as_u16(), 401 | 403) {
        // Credentials are wrong for every file: worth retrying once they are fixed.
        return Err(FetchError::Passing(format!(
            "Twilio refused the relay's credentials ({status})"
        )));
    }
    if !status.is_success() {
        let from = if account.is_some() {
            "Twilio"
        } else {
            "Amazon Connect"
        };
        return Err(FetchError::Final(format!(
            "it could not be fetched from {from} ({status})"
        )));
    }
    if let Some(len) = response.content_length()
        && len > MAX_FETCH_BYTES
    {
        return Err(FetchError::Final(format!(
            "it is larger than any chat allows ({})",
            human_size(len)
        )));
    }
    Ok(response)
}

// reqwest's errors name their URL: a Connect download URL or an upload URL is a bearer
// credential for minutes, so errors are told without it (`without_url`).

/// Bytes a spool file holds in memory on their way to or from the disk.
const SPOOL_BUFFER: usize = 64 * 1024;

/// Bytes that arrive between two syncs of a spool file that is written out as it arrives.
const WRITE_OUT_EVERY: u64 = 4 * 1024 * 1024;

/// Streams an answer's body into a spool file; its size. With `write_out`, the file is
/// synced in the background every [`WRITE_OUT_EVERY`] bytes (one sync at a time), so
/// the disk writes it while the network brings the rest: a store that syncs the file
/// afterwards then waits for the last few MiB only, not for the whole file. In the
/// media bench (20 agents' files of 15 MiB at once, `synchronous=full`) that took each
/// burst from 0.67–0.70 s to 0.57–0.62 s, in four alternating pairs of runs.
async fn spool(
    media: &MediaRelay,
    mut response: transfer::Response,
    write_out: bool,
) -> Result<(TempPath, u64), FetchError> {
    let passing = |e: &dyn std::fmt::Display| FetchError::Passing(e.to_string());
    let work = async {
        let spool = tempfile::Builder::new()
            .prefix("waconnect-media-")
            .tempfile_in(&media.settings.spool_dir)
            .map_err(|e| passing(&e))?;
        let (file, path) = spool.into_parts();
        let mut write_out = match write_out {
            true => Some(WriteOut::new(&file).map_err(|e| passing(&e))?),
            false => None,
        };
        let mut file = tokio::fs::File::from_std(file);
        // tokio buffers up to 2 MiB per write by default: per transfer, that is the cost.
        file.set_max_buf_size(SPOOL_BUFFER);
        // Each write of a tokio file is a hop to the blocking pool, and the network gives
        // chunks of a few KiB: gathered first, a hop carries SPOOL_BUFFER at a time.
        let mut file = tokio::io::BufWriter::with_capacity(SPOOL_BUFFER, file);
        let mut size: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(|e| passing(&e))? {
            size += chunk.len() as u64;
            if size > MAX_FETCH_BYTES {
                return Err(FetchError::Final(format!(
                    "it is larger than any chat allows (over {})",
                    human_size(MAX_FETCH_BYTES)
                )));
            }
            file.write_all(&chunk).await.map_err(|e| passing(&e))?;
            if let Some(w) = &mut write_out {
                w.arrived(size).await.map_err(|e| passing(&e))?;
            }
        }
        file.flush().await.map_err(|e| passing(&e))?;
        if let Some(w) = write_out {
            w.finish().await.map_err(|e| passing(&e))?;
        }
        if size == 0 {
            return Err(FetchError::Final("Twilio gave an empty file".into()));
        }
        Ok((path, size))
    };
    tokio::time::timeout(media.settings.transfer_timeout, work)
        .await
        .map_err(|_| {
            FetchError::Passing(format!(
                "fetching took longer than {:?}",
                media.settings.transfer_timeout
            ))
        })?
}

/// A spool file's background syncs, on a second handle to it.
struct WriteOut {
    file: std::sync::Arc<std::fs::File>,
    /// The bytes that had arrived when the last sync started.
    started_at: u64,
    syncing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl WriteOut {
    fn new(file: &std::fs::File) -> std::io::Result<Self> {
        Ok(Self {
            file: std::sync::Arc::new(file.try_clone()?),
            started_at: 0,
            syncing: None,
        })
    }

    /// `size` bytes have arrived: a sync starts when the last one has ended and enough is
    /// new. A failed sync fails the spool: the handles share one open file, so the
    /// kernel reports a write error once, and a later sync (the store's) would not
    /// see it.
    async fn arrived(&mut self, size: u64) -> std::io::Result<()> {
        if size - self.started_at < WRITE_OUT_EVERY {
            return Ok(());
        }
        if let Some(syncing) = self.syncing.take_if(|s| s.is_finished()) {
            syncing.await.map_err(std::io::Error::other)??;
        }
        if self.syncing.is_none() {
            let file = self.file.clone();
            self.syncing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
            self.started_at = size;
        }
        Ok(())
    }

    /// Waits for the sync under way, if any.
    async fn finish(mut self) -> std::io::Result<()> {
        match self.syncing.take() {
            Some(syncing) => syncing.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

/// What became of an attachment.
pub enum Attached {
    Done,
    /// Connect refused it for good: the agent gets this notice instead.
    Refused(String),
}

/// Attaches `file` (file `index` of message `sid`) to the chat of `connection_token`.
/// Connect's own refusals (type, size, 35 per chat) come back as a notice; anything else
/// is an error to retry, with the same ClientTokens.
pub async fn attach(
    api: &ConnectApi,
    media: &MediaRelay,
    connection_token: &str,
    tokens: (&str, &str),
    file: &ReadyFile,
) -> Result<Attached, ConnectError> {
    let (start_token, complete_token) = tokens;
    let label = &file.label;
    let described = AttachmentFile {
        content_type: &file.content_type,
        name: &file.name,
        size: file.size,
    };
    let upload = match api
        .start_attachment_upload(connection_token, &described, start_token)
        .await
    {
        Ok(u) => u,
        Err(e) if e.code == "ServiceQuotaExceededException" => {
            return Ok(Attached::Refused(notice(
                label,
                &format!(
                    "the chat already holds the most attachments Amazon Connect allows ({MAX_PER_CHAT})"
                ),
            )));
        }
        Err(e) if e.kind == ErrorKind::Invalid => {
            return Ok(Attached::Refused(notice(
                label,
                &format!("Amazon Connect refused it ({})", e.message),
            )));
        }
        Err(e) => return Err(e),
    };
    put(media, &upload, file).await?;
    // Connect may still be taking the upload in: ConflictException, briefly. The one
    // retry policy, bounded here to 5 attempts within a few seconds.
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    for attempt in 1.. {
        match api
            .complete_attachment_upload(connection_token, &upload.attachment_id, complete_token)
            .await
        {
            Ok(()) => break,
            Err(e) if e.code == "ConflictException" && attempt < 5 => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Attached::Done)
}

/// PUTs the file's bytes to the upload URL with exactly the headers Connect named (S3
/// refuses any difference), streamed from the spool.
async fn put(media: &MediaRelay, upload: &Upload, file: &ReadyFile) -> Result<(), ConnectError> {
    let failed = |kind: ErrorKind, message: String| ConnectError {
        operation: "UploadAttachment",
        kind,
        code: "upload".into(),
        message,
    };
    let body = match &file.body {
        FileBody::Spooled(path) => {
            let mut opened = tokio::fs::File::open(path)
                .await
                .map_err(|e| failed(ErrorKind::Other, format!("the spooled file is gone: {e}")))?;
            opened.set_max_buf_size(SPOOL_BUFFER);
            transfer::reader_body(opened)
        }
        FileBody::Fetched(response) => match response.lock().await.take() {
            Some(r) => r.into_body(),
            // Read by an attempt that failed: the next delivery fetches it again.
            None => {
                return Err(failed(
                    ErrorKind::Network,
                    "the file's stream was used by a failed upload".into(),
                ));
            }
        },
    };
    let headers: Vec<(String, String)> = upload
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let started = std::time::Instant::now();
    let (status, text) = tokio::time::timeout(
        media.settings.transfer_timeout,
        media.transfers.put(&upload.url, &headers, file.size, body),
    )
    .await
    .map_err(|_| failed(ErrorKind::Network, "the upload timed out".into()))?
    .map_err(|e| failed(ErrorKind::Network, e.to_string()))?;
    metrics::histogram!("waconnect_relay_media_upload_seconds")
        .record(started.elapsed().as_secs_f64());
    if status.is_success() {
        return Ok(());
    }
    // Only S3's error code: its message may quote the signature we sent.
    let said: String = text
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map_or("no error code", |(code, _)| code)
        .chars()
        .take(60)
        .collect();
    // A 403 is a signature that does not match (a header we sent differs) or an expired
    // URL: the next delivery starts the upload again.
    let kind = if status.is_server_error() {
        ErrorKind::Server
    } else {
        ErrorKind::Other
    };
    Err(failed(
        kind,
        format!("the upload URL answered {status}: {said}"),
    ))
}

/// Deletes Twilio's copy of a file once it is in the chat, if the operator asked. Best
/// effort: a copy left behind is only what Twilio keeps by default.
pub async fn forget_at_twilio(media: &MediaRelay, media_url: &str) {
    let (true, Some(account)) = (media.settings.delete_from_twilio, &media.settings.twilio) else {
        return;
    };
    let result = media
        .http
        .delete(format!("{media_url}.json"))
        .basic_auth(&account.username, Some(account.password.expose()))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match result {
        Ok(r) if r.status().is_success() || r.status().as_u16() == 404 => {
            metrics::counter!("waconnect_relay_media_deleted_total").increment(1);
        }
        Ok(r) => tracing::warn!(status = %r.status(), "Twilio did not delete a media file"),
        Err(e) => tracing::warn!(error = %e, "Twilio did not delete a media file"),
    }
}

/// The notice an agent reads for a file that cannot be shown.
pub fn notice(what: &str, why: &str) -> String {
    format!("{NOTICE_PREFIX} The customer sent {what}, which cannot be shown in this chat: {why}.")
}

/// 1.5 MB, 20 MB, 512 KB.
pub fn human_size(bytes: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= MB {
        format!("{:.1} MB", b / MB).replace(".0 MB", " MB")
    } else {
        format!("{} KB", bytes.div_ceil(1024))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(20 * 1024 * 1024), "20 MB");
        assert_eq!(human_size(25 * 1024 * 1024 + 100 * 1024), "25.1 MB");
        assert_eq!(human_size(1000), "1 KB");
    }

    #[tokio::test]
    async fn a_file_written_out_is_synced_while_it_arrives_one_sync_at_a_time() {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        let mut out = WriteOut::new(&file).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut size = 0;
        let mut started = Vec::new();
        while size < 3 * WRITE_OUT_EVERY {
            file.write_all(&chunk).unwrap();
            size += chunk.len() as u64;
            out.arrived(size).await.unwrap();
            if started.last() != Some(&out.started_at) {
                started.push(out.started_at);
            }
        }
        // Syncs started on the way, each at least WRITE_OUT_EVERY after the last.
        assert!(started.len() >= 2, "{started:?}");
        assert!(
            started.windows(2).all(|w| w[1] - w[0] >= WRITE_OUT_EVERY),
            "{started:?}"
        );
        out.finish().await.unwrap();
        assert_eq!(file.metadata().unwrap().len(), size);
    }

    #[test]
    fn jpeg_allows_jpg() {
        let accepted = Accepted {
            extensions: ["jpeg".to_owned()].into(),
            max_bytes: 1,
        };
        assert!(accepted.takes("jpg") && !accepted.takes("png"));
    }
}
