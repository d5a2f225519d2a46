//! Wall-clock helpers. Leases and visibility are compared across processes, so every engine
//! uses milliseconds since the Unix epoch from the system clock.

use chrono::{DateTime, Utc};

pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

pub fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}
