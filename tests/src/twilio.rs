//! Webhooks as Twilio sends them: realistic form fields, signed with the account token.

use waconnect_shared::twilio::{form, signature};

/// The fields of an incoming WhatsApp text, in the order Twilio sends them.
pub fn incoming_text(message_sid: &str, from: &str, body: &str) -> Vec<(String, String)> {
    let wa_id = from.trim_start_matches("whatsapp:+");
    [
        ("SmsMessageSid", message_sid),
        ("NumMedia", "0"),
        ("ProfileName", "Ana Test"),
        ("MessageType", "text"),
        ("SmsSid", message_sid),
        ("WaId", wa_id),
        ("SmsStatus", "received"),
        ("Body", body),
        ("To", "whatsapp:+14155238886"),
        ("NumSegments", "1"),
        ("ReferralNumMedia", "0"),
        ("MessageSid", message_sid),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", from),
        ("ApiVersion", "2010-04-01"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The fields of a status callback for one of our outbound messages.
pub fn status_callback(message_sid: &str, to: &str, status: &str) -> Vec<(String, String)> {
    [
        ("ChannelToAddress", to.trim_start_matches("whatsapp:")),
        ("ApiVersion", "2010-04-01"),
        ("MessageStatus", status),
        ("SmsSid", message_sid),
        ("SmsStatus", status),
        ("ChannelInstallSid", "XE00000000000000000000000000000000"),
        ("To", to),
        ("From", "whatsapp:+14155238886"),
        ("MessageSid", message_sid),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("ChannelPrefix", "whatsapp"),
        ("EventType", status.to_ascii_uppercase().as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A form body and the `X-Twilio-Signature` Twilio would send with it to `public_url`.
pub fn signed(auth_token: &str, public_url: &str, fields: &[(String, String)]) -> (String, String) {
    let body = form::encode(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    (body, signature::compute(auth_token, public_url, fields))
}
