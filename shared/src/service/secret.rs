//! A string that must never reach a log in clear (auth tokens, participant tokens).
//!
//! `secrecy` refuses to serialize `str` secrets, but connection tokens have to be stored in
//! the conversation table, so this small wrapper redacts only where text is *shown*
//! (`Debug`, `Display`) and serializes transparently for storage.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The clear value, for the one place that needs it (a signature, an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` (a bearer token) is this secret, compared in constant time; an
    /// empty secret matches nothing.
    pub fn matches(&self, presented: &str) -> bool {
        !self.0.is_empty() && crate::twilio::signature::constant_time_eq(&self.0, presented)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"***\")")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_the_value() {
        let s = Secret::new("hunter2-token");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-token");
    }

    #[test]
    fn serializes_transparently_for_storage() {
        let s = Secret::new("tok");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"tok\"");
        assert_eq!(serde_json::from_str::<Secret>(&json).unwrap(), s);
    }
}
