//! Fault injection: what the next REST calls and the sockets should suffer.

use super::wire::{ApiError, Service};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Faults {
    pub throttle: Budget,
    pub errors: Budget,
    pub delay: Duration,
    /// When false, heartbeats go unanswered (a half-dead socket).
    pub silent_heartbeats: bool,
    /// SendMessage content containing this is refused with ValidationException, forever.
    pub reject_containing: Option<String>,
}

/// A number of calls to fail, optionally only for some operations.
#[derive(Debug, Default, Deserialize)]
pub struct Budget {
    pub count: u32,
    #[serde(default)]
    pub operations: Option<Vec<String>>,
}

impl Budget {
    fn take(&mut self, operation: &str) -> bool {
        let applies = self
            .operations
            .as_ref()
            .is_none_or(|ops| ops.iter().any(|o| o == operation));
        if applies && self.count > 0 {
            self.count -= 1;
            return true;
        }
        false
    }
}

impl Faults {
    /// The injected error, if any, for one call of `operation`.
    pub fn on_call(&mut self, service: Service, operation: &str) -> Option<ApiError> {
        if self.throttle.take(operation) {
            return Some(ApiError::throttled(service));
        }
        if self.errors.take(operation) {
            return Some(ApiError::internal(service));
        }
        None
    }
}
