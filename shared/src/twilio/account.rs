//! The Twilio account a service calls the REST API as: the outbound-sender sends with it,
//! the relay fetches (and may delete) the customer's media with it. Basic auth is the
//! account SID and auth token, or an API key SID and secret (what production should use:
//! a key can be revoked alone).

use crate::Secret;
use crate::service::config::Reader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwilioAccount {
    /// `AC…`: names the account in every REST path.
    pub account_sid: String,
    /// Basic auth user: the account SID, or an API key SID.
    pub username: String,
    pub password: Secret,
}

impl TwilioAccount {
    /// Reads `TWILIO_ACCOUNT_SID` with `TWILIO_API_KEY_SID` + `TWILIO_API_KEY_SECRET` or
    /// `TWILIO_AUTH_TOKEN`. When not `required`, none of them set is no account (`None`);
    /// a half-given one is still an error that names what is missing.
    pub fn read(r: &mut Reader<'_>, required: bool) -> Option<Self> {
        let given = [
            "TWILIO_ACCOUNT_SID",
            "TWILIO_API_KEY_SID",
            "TWILIO_AUTH_TOKEN",
        ]
        .iter()
        .any(|v| r.raw(v).is_some());
        if !required && !given {
            return None;
        }
        let account_sid: String = r
            .required("TWILIO_ACCOUNT_SID", "the Twilio account SID (AC...)")
            .unwrap_or_default();
        let (username, password) = match (
            r.raw("TWILIO_API_KEY_SID"),
            r.secret("TWILIO_API_KEY_SECRET"),
            r.secret("TWILIO_AUTH_TOKEN"),
        ) {
            (Some(key), Some(secret), _) => (key.to_owned(), secret),
            (None, None, Some(token)) => (account_sid.clone(), token),
            (Some(_), None, _) => {
                r.error(
                    "TWILIO_API_KEY_SECRET",
                    "is required with TWILIO_API_KEY_SID",
                );
                (String::new(), Secret::default())
            }
            _ => {
                r.error(
                    "TWILIO_AUTH_TOKEN",
                    "is required (or TWILIO_API_KEY_SID with TWILIO_API_KEY_SECRET)",
                );
                (String::new(), Secret::default())
            }
        };
        Some(Self {
            account_sid,
            username,
            password,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::ConfigSource;

    fn read(pairs: &[(&str, &str)], required: bool) -> (Option<TwilioAccount>, String) {
        let source = ConfigSource::from_pairs(pairs.iter().copied());
        let mut r = source.reader();
        let account = TwilioAccount::read(&mut r, required);
        let errors = r.finish().err().map(|e| e.to_string()).unwrap_or_default();
        (account, errors)
    }

    #[test]
    fn an_api_key_or_the_auth_token() {
        let (key, errors) = read(
            &[
                ("TWILIO_ACCOUNT_SID", "AC1"),
                ("TWILIO_API_KEY_SID", "SK1"),
                ("TWILIO_API_KEY_SECRET", "s"),
            ],
            true,
        );
        assert_eq!(errors, "");
        assert_eq!(key.unwrap().username, "SK1");
        let (token, _) = read(
            &[("TWILIO_ACCOUNT_SID", "AC1"), ("TWILIO_AUTH_TOKEN", "t")],
            true,
        );
        assert_eq!(token.unwrap().username, "AC1");
    }

    #[test]
    fn optional_unless_half_given() {
        assert_eq!(read(&[], false), (None, String::new()));
        let (_, errors) = read(&[], true);
        assert!(errors.contains("TWILIO_ACCOUNT_SID") && errors.contains("TWILIO_AUTH_TOKEN"));
        let (_, errors) = read(&[("TWILIO_API_KEY_SID", "SK1")], false);
        assert!(errors.contains("TWILIO_API_KEY_SECRET"), "{errors}");
    }
}
