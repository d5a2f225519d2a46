//! How Twilio posts to the business's URLs, inbound messages and status callbacks alike:
//! signed over the URL without its fragment, with an idempotency token, and tried again
//! as the URL's connection-override fragment says (`#rc=3&rp=5xx,ct,rt&tt=15000`). With no
//! fragment Twilio tries once more only when it could not connect, so a 503 from the
//! business is final unless the URL asked for `5xx`.

use super::Twilio;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use waconnect_shared::twilio::{form, signature};

/// Twilio's limits on the overrides (its "Connection Overrides" page).
const MAX_RETRIES: u32 = 5;
const MAX_TOTAL: Duration = Duration::from_secs(15);
const MAX_READ: Duration = Duration::from_secs(15);

/// What a URL's fragment asks of Twilio's attempts, with Twilio's defaults.
#[derive(Debug, PartialEq)]
struct Overrides {
    /// Attempts after the first.
    retries: u32,
    /// When to try again: `ct` (no connection), `rt` (no answer in time), `4xx`, `5xx`, `all`.
    policies: Vec<String>,
    /// The time all attempts may take together.
    total: Duration,
    /// How long one attempt waits for the answer.
    read: Duration,
}

impl Overrides {
    fn retries_on(&self, policy: &str) -> bool {
        self.policies.iter().any(|p| p == policy || p == "all")
    }
}

/// The URL to post to, and what its fragment asks. Values out of Twilio's range are held
/// to it; unreadable ones leave the default.
fn overrides(url: &str) -> (&str, Overrides) {
    let (target, fragment) = url.split_once('#').unwrap_or((url, ""));
    let mut o = Overrides {
        retries: 1,
        policies: vec!["ct".to_owned()],
        total: MAX_TOTAL,
        read: MAX_READ,
    };
    let millis = |v: &str| v.parse::<u64>().ok().map(Duration::from_millis);
    for (k, v) in form::decode(fragment.as_bytes()).unwrap_or_default() {
        match k.as_str() {
            "rc" => o.retries = v.parse().map_or(o.retries, |n: u32| n.min(MAX_RETRIES)),
            "rp" => o.policies = v.split(',').map(str::to_owned).collect(),
            "tt" => o.total = millis(&v).map_or(o.total, |t| t.min(MAX_TOTAL)),
            "rt" => o.read = millis(&v).map_or(o.read, |t| t.min(MAX_READ)),
            _ => {}
        }
    }
    (target, o)
}

/// What came of posting a webhook.
pub(super) struct Delivery {
    /// The last answer's status; 0 when no attempt got one.
    pub status: u16,
    pub attempts: u32,
}

/// Posts `fields` to `url` as Twilio does, and answers once Twilio is done trying.
pub(super) async fn post(twilio: &Twilio, url: &str, fields: &[(String, String)]) -> Delivery {
    let mut attempts = Attempts::new(twilio, url, fields);
    loop {
        match attempts.next(twilio).await {
            Ok(done) => return done,
            Err(pause) => tokio::time::sleep(pause).await,
        }
    }
}

/// Posts message `sid`'s callback for `status`: the first attempt now, any further ones
/// on their own time, as Twilio's are; a message's next status does not wait for them.
/// The message keeps what came of it.
pub(super) async fn post_status(
    twilio: &Arc<Twilio>,
    sid: &str,
    status: &str,
    url: &str,
    fields: &[(String, String)],
) {
    let mut attempts = Attempts::new(twilio, url, fields);
    let record = move |twilio: &Twilio, sid: &str, status: &str, done: Delivery| {
        let mut inner = twilio.lock();
        if let Some(&i) = inner.by_sid.get(sid) {
            inner.sent[i].callbacks.push(super::Callback {
                status: status.to_owned(),
                answered: done.status,
            });
        }
    };
    match attempts.next(twilio).await {
        Ok(done) => record(twilio, sid, status, done),
        Err(pause) => {
            let (twilio, sid, status) = (twilio.clone(), sid.to_owned(), status.to_owned());
            tokio::spawn(async move {
                let mut pause = pause;
                loop {
                    tokio::time::sleep(pause).await;
                    match attempts.next(&twilio).await {
                        Ok(done) => return record(&twilio, &sid, &status, done),
                        Err(next) => pause = next,
                    }
                }
            });
        }
    }
}

/// One webhook event's attempts: all signed alike, with one idempotency token, which is
/// how the business tells a retry.
struct Attempts {
    target: String,
    overrides: Overrides,
    signature: String,
    body: String,
    idempotency: String,
    started: Instant,
    made: u32,
}

impl Attempts {
    fn new(twilio: &Twilio, url: &str, fields: &[(String, String)]) -> Self {
        let (target, overrides) = overrides(url);
        Self {
            signature: signature::compute(&twilio.options.auth_token, target, fields),
            body: form::encode(fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            target: target.to_owned(),
            overrides,
            idempotency: uuid::Uuid::new_v4().simple().to_string(),
            started: Instant::now(),
            made: 0,
        }
    }

    /// Makes the next attempt: what came of it, or how long to wait before the next.
    async fn next(&mut self, twilio: &Twilio) -> Result<Delivery, Duration> {
        self.made += 1;
        let o = &self.overrides;
        let left = o.total.saturating_sub(self.started.elapsed());
        let result = twilio
            .http
            .post(&self.target)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &self.signature)
            .header("i-twilio-idempotency-token", &self.idempotency)
            .header("user-agent", "TwilioProxy/1.1")
            .timeout(o.read.min(left))
            .body(self.body.clone())
            .send()
            .await;
        let again = match &result {
            Ok(r) if r.status().is_server_error() => o.retries_on("5xx"),
            Ok(r) if r.status().is_client_error() => o.retries_on("4xx"),
            Ok(_) => false,
            Err(e) if e.is_timeout() => o.retries_on("rt"),
            Err(_) => o.retries_on("ct"),
        };
        // Twilio waits a little between its attempts.
        let pause = Duration::from_millis(200) * self.made;
        if again && self.made <= o.retries && self.started.elapsed() + pause < o.total {
            return Err(pause);
        }
        Ok(Delivery {
            status: result.map_or(0, |r| r.status().as_u16()),
            attempts: self.made,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_sets_the_attempts_within_twilios_limits() {
        let (target, o) = overrides("https://a.test/twilio/status?x=1#rc=9&rp=5xx,ct&tt=4000");
        assert_eq!(target, "https://a.test/twilio/status?x=1");
        assert_eq!(
            o,
            Overrides {
                retries: MAX_RETRIES,
                policies: vec!["5xx".into(), "ct".into()],
                total: Duration::from_secs(4),
                read: MAX_READ,
            }
        );
        let (target, o) = overrides("https://a.test/twilio/status");
        assert_eq!(target, "https://a.test/twilio/status");
        assert_eq!((o.retries, o.policies), (1, vec!["ct".to_owned()]));
    }
}
