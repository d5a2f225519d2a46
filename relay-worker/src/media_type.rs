//! What a WhatsApp file is, for Connect: its extension (Connect allows attachments by
//! extension), what to call it, and what to turn it into when the instance does not take
//! it as it is (docs/architecture.md §9: voice notes, stickers, 3gp video and most audio are refused
//! by a default instance).

/// A media type as Twilio names it, without parameters, in lower case:
/// `audio/ogg; codecs=opus` → `audio/ogg`.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The file extension Connect checks for a media type, if we know one.
pub fn extension(essence: &str) -> Option<&'static str> {
    Some(match essence {
        "image/jpeg" | "image/jpg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/heic" => "heic",
        "image/gif" => "gif",
        "audio/ogg" | "audio/opus" => "ogg",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/amr" => "amr",
        "audio/aac" => "aac",
        "audio/mp4" | "audio/x-m4a" | "audio/m4a" => "m4a",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "video/mp4" => "mp4",
        "video/3gpp" => "3gp",
        "video/quicktime" => "mov",
        "application/pdf" => "pdf",
        "application/msword" => "doc",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx",
        "application/vnd.ms-excel" => "xls",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => "xlsx",
        "application/vnd.ms-powerpoint" => "ppt",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => "pptx",
        "text/plain" => "txt",
        "text/csv" => "csv",
        "application/rtf" | "text/rtf" => "rtf",
        "text/vcard" | "text/x-vcard" => "vcf",
        _ => return None,
    })
}

/// What the agent is told the customer sent, in words.
pub fn describe(essence: &str) -> &'static str {
    match essence.split('/').next().unwrap_or_default() {
        "image" if essence == "image/webp" => "a sticker",
        "image" => "a photo",
        "audio" if essence == "audio/ogg" || essence == "audio/opus" => "a voice note",
        "audio" => "an audio file",
        "video" => "a video",
        _ if is_vcard(essence) => "a contact card",
        _ => "a document",
    }
}

/// The file's name in the chat: what it is and which message it came with.
pub fn file_name(essence: &str, message_sid: &str, index: usize, extension: &str) -> String {
    let kind = match describe(essence) {
        "a photo" => "photo",
        "a sticker" => "sticker",
        "a voice note" => "voice-note",
        "an audio file" => "audio",
        "a video" => "video",
        "a contact card" => "contact",
        _ => "document",
    };
    // The SID's tail tells files apart without being long.
    let tail = &message_sid[message_sid.len().saturating_sub(6)..];
    let n = if index > 0 {
        format!("-{}", index + 1)
    } else {
        String::new()
    };
    format!("whatsapp-{kind}-{tail}{n}.{extension}")
}

pub fn is_vcard(essence: &str) -> bool {
    matches!(essence, "text/vcard" | "text/x-vcard")
}

/// A standard conversion into something Connect takes by default: the target's media
/// type and extension, and ffmpeg's output options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    pub content_type: &'static str,
    pub extension: &'static str,
    pub ffmpeg_args: &'static [&'static str],
}

const TO_WAV: Conversion = Conversion {
    content_type: "audio/wav",
    extension: "wav",
    // 16 kHz mono PCM: speech stays clear and a minute is under 2 MB.
    ffmpeg_args: &[
        "-vn",
        "-ac",
        "1",
        "-ar",
        "16000",
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
    ],
};

const TO_PNG: Conversion = Conversion {
    content_type: "image/png",
    extension: "png",
    // An animated sticker keeps its first frame.
    ffmpeg_args: &["-frames:v", "1", "-f", "image2", "-c:v", "png"],
};

const TO_MP4: Conversion = Conversion {
    content_type: "video/mp4",
    extension: "mp4",
    ffmpeg_args: &[
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
    ],
};

/// How to turn a type Connect may refuse into one it takes by default, if there is a
/// standard way.
pub fn conversion(essence: &str) -> Option<Conversion> {
    match essence {
        "audio/ogg" | "audio/opus" | "audio/amr" | "audio/aac" | "audio/mpeg" | "audio/mp3"
        | "audio/mp4" | "audio/x-m4a" | "audio/m4a" => Some(TO_WAV),
        "image/webp" => Some(TO_PNG),
        "video/3gpp" => Some(TO_MP4),
        _ => None,
    }
}

const TO_OPUS: Conversion = Conversion {
    content_type: "audio/ogg",
    extension: "ogg",
    // WhatsApp plays Opus in Ogg as a voice note.
    ffmpeg_args: &["-vn", "-c:a", "libopus", "-b:a", "32k", "-f", "ogg"],
};

const TO_JPEG: Conversion = Conversion {
    content_type: "image/jpeg",
    extension: "jpg",
    ffmpeg_args: &[
        "-frames:v",
        "1",
        "-q:v",
        "3",
        "-f",
        "image2",
        "-c:v",
        "mjpeg",
    ],
};

const MB: u64 = 1024 * 1024;

/// The largest file WhatsApp takes of a type (through Twilio), if it takes the type at
/// all (docs/architecture.md §9).
pub fn whatsapp_limit(essence: &str) -> Option<u64> {
    match essence {
        "image/jpeg" | "image/png" => Some(5 * MB),
        "audio/ogg" | "audio/amr" | "audio/3gpp" | "audio/aac" | "audio/mpeg" | "audio/mp4" => {
            Some(16 * MB)
        }
        "video/mp4" | "video/3gpp" => Some(16 * MB),
        "application/pdf"
        | "application/msword"
        | "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        | "application/vnd.ms-excel"
        | "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        | "application/vnd.ms-powerpoint"
        | "application/vnd.openxmlformats-officedocument.presentationml.presentation"
        | "text/plain"
        | "text/vcard" => Some(16 * MB),
        _ => None,
    }
}

/// How to turn an agent's file WhatsApp refuses into one it takes: heic and jfif become
/// jpeg, mov becomes mp4, wav becomes an Opus voice note.
pub fn whatsapp_conversion(essence: &str) -> Option<Conversion> {
    match essence {
        "image/heic" | "image/heif" | "image/jfif" | "image/pjpeg" => Some(TO_JPEG),
        "video/quicktime" => Some(TO_MP4),
        "audio/wav" | "audio/x-wav" | "audio/wave" => Some(TO_OPUS),
        _ => None,
    }
}

/// The type of a file by its name's extension, for when Connect's type is missing or
/// generic.
pub fn by_extension(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "jfif" => "image/jfif",
        "png" => "image/png",
        "heic" => "image/heic",
        "mov" => "video/quicktime",
        "mp4" => "video/mp4",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        "doc" => "application/msword",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xls" => "application/vnd.ms-excel",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "ppt" => "application/vnd.ms-powerpoint",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "rtf" => "application/rtf",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voice_notes_are_ogg_and_become_wav() {
        let e = essence("audio/ogg; codecs=opus");
        assert_eq!(e, "audio/ogg");
        assert_eq!(extension(&e), Some("ogg"));
        assert_eq!(describe(&e), "a voice note");
        assert_eq!(conversion(&e).unwrap().extension, "wav");
        assert_eq!(
            file_name(&e, "MM0123456789abcdef", 0, "wav"),
            "whatsapp-voice-note-abcdef.wav"
        );
        assert_eq!(
            file_name("image/jpeg", "MMabc", 1, "jpg"),
            "whatsapp-photo-MMabc-2.jpg"
        );
    }

    #[test]
    fn what_whatsapp_takes_from_the_agent() {
        assert_eq!(whatsapp_limit("image/jpeg"), Some(5 * MB));
        assert_eq!(whatsapp_limit("application/pdf"), Some(16 * MB));
        assert_eq!(whatsapp_limit("text/csv"), None);
        assert_eq!(whatsapp_conversion("audio/wav").unwrap().extension, "ogg");
        assert_eq!(
            whatsapp_conversion("video/quicktime").unwrap().extension,
            "mp4"
        );
        assert_eq!(whatsapp_conversion("text/rtf"), None);
        assert_eq!(by_extension("Scan.JFIF"), Some("image/jfif"));
    }

    #[test]
    fn stickers_and_3gp_convert_documents_do_not() {
        assert_eq!(conversion("image/webp").unwrap().content_type, "image/png");
        assert_eq!(conversion("video/3gpp").unwrap().extension, "mp4");
        assert_eq!(conversion("application/pdf"), None);
        assert_eq!(conversion("image/jpeg"), None);
        assert_eq!(describe("text/vcard"), "a contact card");
    }
}
