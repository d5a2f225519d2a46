//! A customer's address as Twilio writes it: `whatsapp:+<E.164>` (or a bare `+<E.164>` for
//! SMS, refused by ingress unless configured). It keys the conversation table and is the
//! FIFO group id on both queues.
//!
//! Our own side of a conversation is a [`BusinessNumber`]: the WhatsApp sender a customer
//! wrote to. Unlike the customer's, it is public and shown in clear.
//!
//! Phone numbers are personal data: `Debug` and `Display` mask the middle digits, so an
//! address can be logged safely; the clear form is only reachable through [`CustomerAddress::as_str`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    WhatsApp,
    Sms,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CustomerAddress {
    raw: String,
    channel: Channel,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a customer address (expected whatsapp:+<E.164 number>): {0}")]
pub struct AddressError(String);

impl CustomerAddress {
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let (channel, number) = match input.strip_prefix("whatsapp:") {
            Some(rest) => (Channel::WhatsApp, rest),
            None => (Channel::Sms, input),
        };
        if !is_e164(number) {
            return Err(AddressError(mask(input)));
        }
        Ok(Self {
            raw: input.to_owned(),
            channel,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// The `+<digits>` number without the channel prefix (for voice callbacks).
    pub fn e164(&self) -> &str {
        self.raw.strip_prefix("whatsapp:").unwrap_or(&self.raw)
    }

    /// The form safe for logs: `whatsapp:+***4567`.
    pub fn redacted(&self) -> String {
        mask(&self.raw)
    }
}

/// E.164: a `+`, then 8 to 15 digits, the first not zero.
fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Keeps the channel prefix and at most the last four characters of the number, enough
/// to tell customers apart in a log and never enough to dial: the last four of a number
/// of ten or more, the last two of a shorter one of six or more, none below that.
pub fn mask(value: &str) -> String {
    let (prefix, number) = match value.find('+') {
        Some(i) => value.split_at(i + 1),
        None => ("", value),
    };
    let chars: Vec<char> = number.chars().collect();
    let shown = match chars.len() {
        10.. => 4,
        6..=9 => 2,
        _ => 0,
    };
    let tail: String = chars[chars.len() - shown..].iter().collect();
    format!("{prefix}***{tail}")
}

impl fmt::Display for CustomerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for CustomerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerAddress({})", self.redacted())
    }
}

impl FromStr for CustomerAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for CustomerAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for CustomerAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// One of the business's WhatsApp senders, as Twilio writes it (`whatsapp:+<E.164>`): the
/// `To` of a customer's message, the `From` of ours. Public, so shown in clear.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BusinessNumber(String);

impl BusinessNumber {
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let number = input.strip_prefix("whatsapp:").unwrap_or(input);
        if !is_e164(number) {
            return Err(AddressError(mask(input)));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BusinessNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BusinessNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BusinessNumber({})", self.0)
    }
}

impl FromStr for BusinessNumber {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for BusinessNumber {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BusinessNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_whatsapp_and_sms() {
        let a = CustomerAddress::parse("whatsapp:+15551234567").unwrap();
        assert_eq!(a.channel(), Channel::WhatsApp);
        assert_eq!(a.as_str(), "whatsapp:+15551234567");
        assert_eq!(a.e164(), "+15551234567");
        let s = CustomerAddress::parse("+447700900123").unwrap();
        assert_eq!(s.channel(), Channel::Sms);
    }

    #[test]
    fn rejects_non_e164() {
        for bad in [
            "",
            "whatsapp:",
            "whatsapp:15551234567",
            "whatsapp:+0555123456",
            "whatsapp:+1555",
            "whatsapp:+1234567890123456",
            "whatsapp:+1555123456a",
            "messenger:+15551234567",
        ] {
            assert!(CustomerAddress::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn never_shows_the_number_in_clear() {
        let a = CustomerAddress::parse("whatsapp:+15551234567").unwrap();
        for shown in [format!("{a}"), format!("{a:?}")] {
            assert!(!shown.contains("15551234567"), "{shown}");
            assert!(shown.contains("whatsapp:+***4567"), "{shown}");
        }
        // Short numbers show less, never more than four digits.
        assert_eq!(mask("whatsapp:+68212345"), "whatsapp:+***45");
        assert_eq!(mask("+12345"), "+***");
        assert_eq!(mask("whatsapp:+447700900123"), "whatsapp:+***0123");
        let err = CustomerAddress::parse("whatsapp:+1555123456789999").unwrap_err();
        assert!(!err.to_string().contains("123456789"), "{err}");
    }

    #[test]
    fn serde_round_trip_validates() {
        let a = CustomerAddress::parse("whatsapp:+15551234567").unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"whatsapp:+15551234567\"");
        assert_eq!(serde_json::from_str::<CustomerAddress>(&json).unwrap(), a);
        assert!(serde_json::from_str::<CustomerAddress>("\"whatsapp:42\"").is_err());
    }
}
