//! Agent → customer files (docs/architecture.md §9): an approved attachment is fetched from Connect
//! (GetAttachment's URL lives at most 5 minutes), converted when WhatsApp refuses its type,
//! and copied into the media store, where the sender gives Twilio a URL of ours for as
//! long as its retries need. A file WhatsApp cannot take, or that Connect's scanning
//! rejected, becomes a notice to the agent — before anything is sent.

use crate::NOTICE_PREFIX;
use crate::attachment::{self, FetchError, MediaRelay, human_size};
use crate::connect::{ConnectApi, ConnectError};
use crate::item::ItemAttachment;
use crate::media_type;
use waconnect_shared::ConversationKey;
use waconnect_shared::storage::media::{FileMeta, MediaError, MediaStore};

/// What became of an agent's file.
#[derive(Debug)]
pub enum Copied {
    /// In the media store under this key, ready for Twilio.
    Stored(String),
    /// Not for the customer: the agent reads this instead.
    Refused(String),
}

/// Why a copy must be tried again (the session backfills from the transcript).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("media store: {0}")]
    Store(#[from] MediaError),
    #[error("{0}")]
    Passing(String),
}

/// The store's key for an attachment of `conversation`: the conversation's prefix (an
/// erasure finds the file by it), the attachment's id (only the characters a key may
/// have) and the extension of what is stored. The same attachment is always the same key,
/// so a re-forwarded item finds its file already there.
pub fn key(conversation: &ConversationKey, attachment_id: &str, extension: &str) -> String {
    let id: String = attachment_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(150)
        .collect();
    format!(
        "{}agent-{id}.{extension}",
        waconnect_shared::storage::media::conversation_prefix(conversation)
    )
}

/// Copies one approved attachment into `store`, or says why the customer cannot have it.
pub async fn copy(
    conversation: &ConversationKey,
    api: &ConnectApi,
    media: &MediaRelay,
    store: Option<&dyn MediaStore>,
    connection_token: &str,
    file: &ItemAttachment,
) -> Result<Copied, CopyError> {
    let name = if file.attachment_name.is_empty() {
        "file"
    } else {
        file.attachment_name.as_str()
    };
    let mut essence = media_type::essence(&file.content_type);
    if media_type::whatsapp_limit(&essence).is_none()
        && media_type::whatsapp_conversion(&essence).is_none()
        && let Some(by_name) = media_type::by_extension(name)
    {
        essence = by_name.to_owned();
    }
    let refused = |why: String| {
        count_refused();
        Ok(Copied::Refused(notice(name, &why)))
    };
    match file.status.as_str() {
        "APPROVED" => {}
        "REJECTED" => {
            return refused("Amazon Connect's attachment scanning rejected it".into());
        }
        other => return refused(format!("it was not approved by Amazon Connect ({other})")),
    }
    let Some(store) = store else {
        return refused("the bridge has no media store configured (WACONNECT_MEDIA_BUCKET)".into());
    };
    let conversion = media_type::whatsapp_conversion(&essence);
    let (content_type, extension, limit) = match (media_type::whatsapp_limit(&essence), conversion)
    {
        (Some(limit), _) => (
            essence.clone(),
            media_type::extension(&essence).unwrap_or("bin"),
            limit,
        ),
        (None, Some(c)) => (
            c.content_type.to_owned(),
            c.extension,
            media_type::whatsapp_limit(c.content_type).unwrap_or(0),
        ),
        (None, None) => return refused(format!("WhatsApp does not accept {essence} files")),
    };
    let key = key(conversation, &file.attachment_id, extension);
    // Copied by an earlier delivery of this item.
    if store.exists(&key).await? {
        return Ok(Copied::Stored(key));
    }
    let download = api
        .get_attachment(connection_token, &file.attachment_id)
        .await?;
    if conversion.is_none() && download.size > limit {
        return refused(format!(
            "it is larger than WhatsApp allows ({}; the limit is {})",
            human_size(download.size),
            human_size(limit)
        ));
    }
    let (spooled, size) =
        match attachment::fetch(media, None, &download.url, store.syncs_local_file()).await {
            Ok(f) => f,
            Err(FetchError::Final(why)) => return refused(why),
            Err(FetchError::Passing(why)) => return Err(CopyError::Passing(why)),
        };
    let (path, _) = match conversion {
        Some(c) => match attachment::convert_within(media, &spooled, c, limit, "WhatsApp").await {
            Ok(converted) => converted,
            Err(why) => return refused(why),
        },
        None if size > limit => {
            return refused(format!(
                "it is larger than WhatsApp allows ({}; the limit is {})",
                human_size(size),
                human_size(limit)
            ));
        }
        None => (spooled, size),
    };
    let file_name = match name.rsplit_once('.') {
        Some((stem, _)) if conversion.is_some() => format!("{stem}.{extension}"),
        _ => name.to_owned(),
    };
    let meta = FileMeta {
        content_type,
        file_name,
    };
    store.put(&key, path, &meta).await?;
    metrics::counter!("waconnect_relay_agent_files_total", "outcome" => "stored").increment(1);
    Ok(Copied::Stored(key))
}

/// The delivery-ledger entry that records an agent's file as withheld: its scan outlasted
/// the wait and the agent was told it was not sent. It outlives the session, so a relay
/// that adopts the chat and reads the file's late verdict does not send it after all.
pub fn withheld_key(attachment_id: &str) -> String {
    format!("agentfile#{attachment_id}")
}

/// The outcome [`withheld_key`] records: this word, a newline, and the notice the agent
/// is sent (see [`withheld_outcome`]).
pub const WITHHELD: &str = "withheld";

/// The outcome recorded for a file given up with `notice`. The record comes first, so no
/// relay sends what the notice says was not sent; keeping the notice in it lets whichever
/// session reads the file next send it again, should a crash or a refused call have lost
/// it in between (its ClientToken makes a repeat of one that went harmless).
pub fn withheld_outcome(notice: &str) -> String {
    format!("{WITHHELD}\n{notice}")
}

/// The notice of a [`withheld_outcome`]; `None` if `outcome` is not one, and empty for
/// a record written before records kept their notice.
pub fn withheld_notice(outcome: &str) -> Option<&str> {
    match outcome.strip_prefix(WITHHELD)? {
        "" => Some(""),
        rest => rest.strip_prefix('\n'),
    }
}

/// The notice an agent reads for a file the customer will not get.
pub fn notice(name: &str, why: &str) -> String {
    format!("{NOTICE_PREFIX} Your file \"{name}\" was not sent on WhatsApp: {why}.")
}

/// Counts an agent's file the customer will not get, once per file.
pub fn count_refused() {
    metrics::counter!("waconnect_relay_agent_files_total", "outcome" => "refused").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_withheld_files_record_keeps_its_notice() {
        let outcome = withheld_outcome("[waconnect notice] Your file \"a.pdf\" was not sent.");
        assert_eq!(
            withheld_notice(&outcome),
            Some("[waconnect notice] Your file \"a.pdf\" was not sent.")
        );
        assert_eq!(withheld_notice("SM0123456789abcdef0123456789abcdef"), None);
        assert_eq!(withheld_notice("withheldx"), None);
        assert_eq!(withheld_notice(WITHHELD), Some(""), "an older record");
    }

    #[test]
    fn keys_are_the_conversation_and_the_attachment_id_and_never_a_path() {
        let conversation =
            ConversationKey::parse_storage("whatsapp:+14155238886|whatsapp:+15550000001").unwrap();
        let prefix = waconnect_shared::storage::media::conversation_prefix(&conversation);
        assert!(prefix.starts_with('c') && prefix.len() == 18, "{prefix}");
        // The number itself is not in it: keys end up in URLs.
        assert!(!prefix.contains("5550000001"));
        assert_eq!(
            key(&conversation, "4a2f-9c", "pdf"),
            format!("{prefix}agent-4a2f-9c.pdf")
        );
        assert_eq!(
            key(&conversation, "../../etc", "jpg"),
            format!("{prefix}agent-etc.jpg")
        );
        let long = "x".repeat(500);
        for id in ["x/y z", long.as_str()] {
            let k = key(&conversation, id, "ogg");
            assert!(
                waconnect_shared::storage::media::check_key(&k).is_ok(),
                "{k}"
            );
        }
    }
}
