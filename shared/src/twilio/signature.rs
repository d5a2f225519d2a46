//! Twilio request signing (`X-Twilio-Signature`), exactly as docs/architecture.md §7 states it.
//!
//! The signed string is the full public URL Twilio was configured with, followed by every
//! form parameter's name and value in byte-wise sorted order; the signature is the base64 of
//! its HMAC-SHA1 under the account's auth token. Validation accepts the URL with its
//! default port added, or with its port removed, because Twilio's own libraries do.
//!
//! When a Webhooks Rule matches the URL, Twilio signs with the rule's SharedKey secret
//! instead, with the algorithm named in `X-Twilio-Webhooks-Signature-Settings`
//! (`key=<id>,algorithm=HMAC_SHA256`); only the hash changes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// The header that names the signing algorithm when a SharedKey signed the request.
pub const SETTINGS_HEADER: &str = "x-twilio-webhooks-signature-settings";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha1,
    HmacSha256,
}

impl Algorithm {
    /// The algorithm a `X-Twilio-Webhooks-Signature-Settings` value names, if one this
    /// knows (`key=KS…,algorithm=HMAC_SHA256`).
    pub fn from_settings(settings: &str) -> Option<Self> {
        let algorithm = settings
            .split(',')
            .filter_map(|part| part.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("algorithm"))?
            .1
            .trim();
        match algorithm.to_ascii_uppercase().as_str() {
            "HMAC_SHA256" => Some(Self::HmacSha256),
            "HMAC_SHA1" => Some(Self::HmacSha1),
            _ => None,
        }
    }
}

/// The signature Twilio would send for a form POST to `url` with `params`.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    compute_with(Algorithm::HmacSha1, auth_token, url, params)
}

/// The signature for `url` and `params` under `key` with `algorithm`.
pub fn compute_with(
    algorithm: Algorithm,
    key: &str,
    url: &str,
    params: &[(String, String)],
) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Byte-wise on the name, then on the value for repeated names.
    sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()).then(a.1.cmp(b.1)));
    fn sign<M: Mac>(mut mac: M, url: &str, sorted: &[(&str, &str)]) -> String {
        mac.update(url.as_bytes());
        for (k, v) in sorted {
            mac.update(k.as_bytes());
            mac.update(v.as_bytes());
        }
        BASE64.encode(mac.finalize().into_bytes())
    }
    let key = key.as_bytes();
    match algorithm {
        Algorithm::HmacSha1 => sign(
            HmacSha1::new_from_slice(key).expect("HMAC takes any key"),
            url,
            &sorted,
        ),
        Algorithm::HmacSha256 => sign(
            HmacSha256::new_from_slice(key).expect("HMAC takes any key"),
            url,
            &sorted,
        ),
    }
}

/// Whether `signature` is valid for a form POST to `url` with `params`.
pub fn validate(auth_token: &str, url: &str, params: &[(String, String)], signature: &str) -> bool {
    validate_with(Algorithm::HmacSha1, &[auth_token], url, params, signature)
}

/// Whether `signature` is valid under any of `keys` (a token being rotated has two).
pub fn validate_with(
    algorithm: Algorithm,
    keys: &[&str],
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let variants = url_variants(url);
    keys.iter().any(|key| {
        variants.iter().any(|candidate| {
            constant_time_eq(&compute_with(algorithm, key, candidate, params), signature)
        })
    })
}

/// Validation for JSON bodies: the URL carries `bodySHA256=<hex>` and is signed with no
/// parameters; the body must hash to that value.
pub fn validate_json_body(auth_token: &str, url: &str, body: &[u8], signature: &str) -> bool {
    let Some(expected_hash) = query_param(url, "bodySHA256") else {
        return false;
    };
    let actual_hash = hex::encode(Sha256::digest(body));
    let hash_ok = constant_time_eq(&actual_hash, &expected_hash.to_ascii_lowercase());
    let sig_ok = validate(auth_token, url, &[], signature);
    hash_ok & sig_ok
}

pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The URL as given plus the forms Twilio's validators also accept: with the scheme's
/// default port added (if no port is given), or with the port removed (whichever it is).
/// String surgery on purpose: URL parsers normalise the default port away, but the
/// signature covers the URL exactly as configured.
pub fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return out,
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The last ':' after any IPv6 literal's closing bracket starts the port.
    let host_end = authority.rfind(']').map_or(0, |i| i + 1);
    match authority[host_end..].rfind(':').map(|i| i + host_end) {
        Some(colon) => out.push(format!("{scheme}://{}{tail}", &authority[..colon])),
        None => out.push(format!("{scheme}://{authority}:{default_port}{tail}")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    }

    #[test]
    fn published_vectors() {
        let p = vector_params();
        let cases = [
            (
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            ),
            (
                "https://mycompany.com:443/myapp.php?foo=1&bar=2",
                "kvajT1Ptam85bY51eRf/AJRuM3w=",
            ),
            (
                "http://mycompany.com:80/myapp.php?foo=1&bar=2",
                "0ZXoZLH/DfblKGATFgpif+LLRf4=",
            ),
            (
                "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
                "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
            ),
        ];
        for (url, sig) in cases {
            assert_eq!(compute("12345", url, &p), sig, "{url}");
            assert!(validate("12345", url, &p, sig), "{url}");
        }
    }

    #[test]
    fn accepts_default_port_added_or_removed() {
        let p = vector_params();
        // Signed with :443, received on a URL configured without it, and the reverse.
        assert!(validate(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &p,
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        ));
        assert!(validate(
            "12345",
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &p,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(validate(
            "12345",
            "http://mycompany.com/myapp.php?foo=1&bar=2",
            &p,
            "0ZXoZLH/DfblKGATFgpif+LLRf4="
        ));
        // Configured with a non-default port, signed without it: Twilio's validators
        // accept that (they try the URL with its port removed)...
        let without_port = compute("12345", "http://mycompany.com/myapp.php?foo=1&bar=2", &p);
        assert!(validate(
            "12345",
            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
            &p,
            &without_port
        ));
        // ...but a non-default port is never guessed into a URL that has none.
        assert!(!validate(
            "12345",
            "http://mycompany.com/myapp.php?foo=1&bar=2",
            &p,
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
        ));
    }

    #[test]
    fn rejects_tampering() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        let mut p = vector_params();
        assert!(!validate("wrong", url, &p, sig));
        assert!(!validate(
            "12345",
            "https://mycompany.com/other.php?foo=1&bar=2",
            &p,
            sig
        ));
        p[2].1 = "9999".into();
        assert!(!validate("12345", url, &p, sig));
        assert!(!validate("12345", url, &vector_params(), ""));
        assert!(!validate(
            "12345",
            url,
            &vector_params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8"
        ));
    }

    #[test]
    fn repeated_names_sort_by_value_and_order_does_not_matter() {
        let url = "https://example.com/hook";
        let a = [("MediaUrl", "b"), ("Body", "x"), ("MediaUrl", "a")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let b = [("MediaUrl", "a"), ("MediaUrl", "b"), ("Body", "x")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(compute("t", url, &a), compute("t", url, &b));
        // The signed string is the url then BodyxMediaUrlaMediaUrlb.
        let mut mac = HmacSha1::new_from_slice(b"t").unwrap();
        mac.update(b"https://example.com/hookBodyxMediaUrlaMediaUrlb");
        assert_eq!(
            compute("t", url, &a),
            BASE64.encode(mac.finalize().into_bytes())
        );
    }

    #[test]
    fn sorting_is_bytewise_not_case_insensitive() {
        // 'Z' (0x5a) sorts before 'a' (0x61).
        let p = [("a", "1"), ("Z", "2")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        let mut mac = HmacSha1::new_from_slice(b"t").unwrap();
        mac.update(b"https://x.test/Z2a1");
        assert_eq!(
            compute("t", "https://x.test/", &p),
            BASE64.encode(mac.finalize().into_bytes())
        );
    }

    #[test]
    fn json_body_variant() {
        let body = br#"{"MessageSid":"SM1"}"#;
        let hash = hex::encode(Sha256::digest(body));
        let url = format!("https://example.com/hook?bodySHA256={hash}");
        let sig = compute("secret", &url, &[]);
        assert!(validate_json_body("secret", &url, body, &sig));
        assert!(!validate_json_body(
            "secret",
            &url,
            br#"{"MessageSid":"SM2"}"#,
            &sig
        ));
        assert!(!validate_json_body(
            "secret",
            "https://example.com/hook",
            body,
            &sig
        ));
    }

    #[test]
    fn url_variants_handle_ipv6_and_queries() {
        assert_eq!(
            url_variants("https://[::1]/a?x=1"),
            ["https://[::1]/a?x=1", "https://[::1]:443/a?x=1"]
        );
        assert_eq!(
            url_variants("http://[::1]:80?x=1"),
            ["http://[::1]:80?x=1", "http://[::1]?x=1"]
        );
        // Any port may be removed, as Twilio's validators do; none is ever guessed.
        assert_eq!(
            url_variants("http://h:8080/p"),
            ["http://h:8080/p", "http://h/p"]
        );
    }

    #[test]
    fn shared_key_signatures_use_the_algorithm_the_settings_header_names() {
        assert_eq!(
            Algorithm::from_settings("key=KS0123,algorithm=HMAC_SHA256"),
            Some(Algorithm::HmacSha256)
        );
        assert_eq!(
            Algorithm::from_settings(" algorithm=hmac_sha1 , key=KS1"),
            Some(Algorithm::HmacSha1)
        );
        assert_eq!(Algorithm::from_settings("key=KS1,algorithm=MD5"), None);
        assert_eq!(Algorithm::from_settings("key=KS1"), None);
        let (url, p) = (
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            vector_params(),
        );
        let sig = compute_with(Algorithm::HmacSha256, "shared-secret", url, &p);
        // The same signed string, HMAC-SHA256, base64 (32 bytes).
        let mut mac = HmacSha256::new_from_slice(b"shared-secret").unwrap();
        mac.update(b"https://mycompany.com/myapp.php?foo=1&bar=2CallSidCA1234567890ABCDECaller+14158675309Digits1234From+14158675309To+18005551212");
        assert_eq!(sig, BASE64.encode(mac.finalize().into_bytes()));
        assert!(validate_with(
            Algorithm::HmacSha256,
            &["old", "shared-secret"],
            url,
            &p,
            &sig
        ));
        assert!(!validate_with(
            Algorithm::HmacSha1,
            &["shared-secret"],
            url,
            &p,
            &sig
        ));
        assert!(!validate_with(
            Algorithm::HmacSha256,
            &["old"],
            url,
            &p,
            &sig
        ));
    }
}
