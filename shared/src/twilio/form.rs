//! `application/x-www-form-urlencoded` decoding that refuses malformed input instead of
//! guessing: a webhook whose body does not decode exactly is answered 400, because the
//! signature was computed over the exact values Twilio sent.

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    #[error("form body is not UTF-8")]
    NotUtf8,
    #[error("form pair {index} has a bad percent-escape")]
    BadEscape { index: usize },
    #[error("form pair {index} does not decode to UTF-8")]
    BadValue { index: usize },
    #[error("form pair {index} has an empty name")]
    EmptyName { index: usize },
}

pub fn decode(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let text = std::str::from_utf8(body).map_err(|_| FormError::NotUtf8)?;
    let mut pairs = Vec::new();
    for (index, part) in text.split('&').enumerate() {
        if part.is_empty() {
            continue;
        }
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = component(name, index)?;
        if name.is_empty() {
            return Err(FormError::EmptyName { index });
        }
        pairs.push((name, component(value, index)?));
    }
    Ok(pairs)
}

fn component(raw: &str, index: usize) -> Result<String, FormError> {
    let bytes = raw.as_bytes();
    // Most values are plain: one copy and no decoding. Every webhook decodes ~15 pairs,
    // and allocations are a large share of ingress's cost per request.
    if !bytes.iter().any(|b| matches!(b, b'%' | b'+')) {
        return Ok(raw.to_owned());
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => decoded.push(b' '),
            // A '%' must be followed by two hex digits; a lenient decoder would pass it
            // through, and the value would no longer be what Twilio signed.
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or(FormError::BadEscape { index })?;
                decoded.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                i += 2;
            }
            b => decoded.push(b),
        }
        i += 1;
    }
    String::from_utf8(decoded).map_err(|_| FormError::BadValue { index })
}

/// Encodes pairs the way Twilio does (used by the simulators and tests).
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_escapes_repeats_and_empty_values() {
        let pairs = decode(b"Body=Hola+se%C3%B1or%21&NumMedia=0&Empty=&Flag&A=1&A=2").unwrap();
        assert_eq!(
            pairs,
            [
                ("Body", "Hola señor!"),
                ("NumMedia", "0"),
                ("Empty", ""),
                ("Flag", ""),
                ("A", "1"),
                ("A", "2"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn refuses_malformed_bodies() {
        assert_eq!(decode(b"Body=%ZZ"), Err(FormError::BadEscape { index: 0 }));
        assert_eq!(
            decode(b"A=1&Body=%4"),
            Err(FormError::BadEscape { index: 1 })
        );
        assert_eq!(
            decode(b"Body=%FF%FE"),
            Err(FormError::BadValue { index: 0 })
        );
        assert_eq!(decode(&[0x42, 0xff]), Err(FormError::NotUtf8));
        assert_eq!(decode(b"=x"), Err(FormError::EmptyName { index: 0 }));
        assert_eq!(decode(b"To=a%"), Err(FormError::BadEscape { index: 0 }));
        // A sign is not a hex digit, though a number parser would take it.
        assert_eq!(decode(b"To=%+1"), Err(FormError::BadEscape { index: 0 }));
    }

    #[test]
    fn decodes_escaped_plus_signs_and_lowercase_hex() {
        let pairs = decode(b"From=whatsapp%3A%2b15550001&Body=1%2B1+%3d+2").unwrap();
        assert_eq!(pairs[0].1, "whatsapp:+15550001");
        assert_eq!(pairs[1].1, "1+1 = 2");
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let pairs = [("Body", "a+b & c=d ✓ 100%"), ("From", "whatsapp:+1555")];
        let decoded = decode(encode(pairs).as_bytes()).unwrap();
        assert_eq!(decoded[0].1, "a+b & c=d ✓ 100%");
        assert_eq!(decoded[1].1, "whatsapp:+1555");
    }
}
