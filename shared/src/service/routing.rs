//! Which business number goes where (README "Several business numbers").
//!
//! A routing file (`WACONNECT_ROUTING_FILE`, TOML) lists routes; each names the WhatsApp
//! numbers customers write to and where their chats go: the Connect instance and contact
//! flow, contact attributes, how replies are sent, how fast, and the texts and templates
//! of that business. What a route leaves out comes from the environment variable of the
//! same meaning, so a file can say only what differs. Without a file there is one route,
//! built from the environment, that takes every number: the single-number configuration.
//!
//! The first route is the default: records written before routing existed belong to it
//! (docs/architecture.md §3).

use crate::message::address::BusinessNumber;
use crate::service::config::Reader;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

pub const ROUTING_FILE_VAR: &str = "WACONNECT_ROUTING_FILE";

/// Bounds on what a routing file may hold: it is read whole at start.
const MAX_FILE_BYTES: u64 = 1 << 20;
const MAX_ROUTES: usize = 200;
const MAX_ATTRIBUTES: usize = 32;
/// Connect's limit on a contact attribute's key and value.
const MAX_ATTRIBUTE_KEY: usize = 127;
const MAX_ATTRIBUTE_VALUE: usize = 32_767;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Names the route in logs and metrics.
    pub name: String,
    /// The receiving numbers (`whatsapp:+<E.164>`); none for the environment's route,
    /// which takes every number.
    #[serde(default)]
    pub numbers: Vec<BusinessNumber>,
    /// Replies are sent through this Messaging Service rather than from the number the
    /// customer wrote to.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub contact_flow_id: Option<String>,
    /// Contact attributes set on every chat this route starts (the flow can branch on them).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Messages per second to Twilio for this route, fleet-wide.
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub closing_text: Option<String>,
    #[serde(default)]
    pub window_template_sid: Option<String>,
    #[serde(default)]
    pub window_template_variables: Option<String>,
    #[serde(default)]
    pub call_me: Option<RouteCallMe>,
    /// The environment's sender number (`TWILIO_FROM`), for the environment's route.
    #[serde(skip)]
    pub from: Option<BusinessNumber>,
}

/// A route's "call me" settings; unset fields come from the `WACONNECT_CALLME_*` variables.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCallMe {
    #[serde(default)]
    pub keywords: Option<String>,
    #[serde(default)]
    pub contact_flow_id: Option<String>,
    #[serde(default)]
    pub source_number: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub cooldown: Option<Duration>,
}

impl Route {
    /// The number a reply goes out from when the conversation does not say (a record
    /// written before routing): the environment's sender, else the route's first number.
    pub fn default_from(&self) -> Option<&BusinessNumber> {
        self.from.as_ref().or(self.numbers.first())
    }

    /// Names this route's sender on the fleet's rate roster.
    pub fn sender_key(&self) -> String {
        match (&self.messaging_service_sid, self.default_from()) {
            (Some(service), _) => service.clone(),
            (None, Some(from)) => from.as_str().to_owned(),
            (None, None) => self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    routes: Vec<Route>,
    from_file: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RoutingError(String);

impl Routing {
    /// The routing file if `WACONNECT_ROUTING_FILE` names one, else the environment's
    /// single route. Problems are recorded on `r` against the file's variable.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let from = r
            .raw("TWILIO_FROM")
            .and_then(|f| BusinessNumber::parse(f).ok());
        let single = Self::single(from.clone(), r.raw("TWILIO_MESSAGING_SERVICE_SID"));
        let Some(path) = r.raw(ROUTING_FILE_VAR) else {
            return single;
        };
        match read_file(path).and_then(|text| Self::parse(&text)) {
            Ok(routing) => routing,
            Err(e) => {
                r.error(ROUTING_FILE_VAR, format!("{path}: {e}"));
                single
            }
        }
    }

    /// One route for every number, from the environment.
    pub fn single(from: Option<BusinessNumber>, messaging_service_sid: Option<&str>) -> Self {
        Self {
            routes: vec![Route {
                name: "default".to_owned(),
                numbers: Vec::new(),
                messaging_service_sid: messaging_service_sid.map(str::to_owned),
                instance_id: None,
                contact_flow_id: None,
                attributes: BTreeMap::new(),
                rate: None,
                closing_text: None,
                window_template_sid: None,
                window_template_variables: None,
                call_me: None,
                from,
            }],
            from_file: false,
        }
    }

    /// A routing file's text.
    pub fn parse(text: &str) -> Result<Self, RoutingError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            route: Vec<Route>,
        }
        let file: File = toml::from_str(text).map_err(|e| RoutingError(e.to_string()))?;
        let routing = Self {
            routes: file.route,
            from_file: true,
        };
        routing.validate()?;
        Ok(routing)
    }

    fn validate(&self) -> Result<(), RoutingError> {
        let fail = |m: String| Err(RoutingError(m));
        if self.routes.is_empty() {
            return fail("no [[route]]: list at least one".into());
        }
        if self.routes.len() > MAX_ROUTES {
            return fail(format!("more than {MAX_ROUTES} routes"));
        }
        let mut names = HashSet::new();
        let mut numbers = HashSet::new();
        for route in &self.routes {
            let name = &route.name;
            if name.trim().is_empty() || name.len() > 64 {
                return fail("every route needs a name of 1 to 64 characters".into());
            }
            if !names.insert(name.as_str()) {
                return fail(format!("two routes are named {name:?}"));
            }
            if route.numbers.is_empty() {
                return fail(format!(
                    "route {name:?}: numbers is empty (list the whatsapp:+<E.164> numbers customers write to)"
                ));
            }
            for number in &route.numbers {
                if !numbers.insert(number) {
                    return fail(format!("{number} is in two routes"));
                }
            }
            if route.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return fail(format!("route {name:?}: rate must be greater than zero"));
            }
            if route.attributes.len() > MAX_ATTRIBUTES {
                return fail(format!(
                    "route {name:?}: more than {MAX_ATTRIBUTES} attributes"
                ));
            }
            for (k, v) in &route.attributes {
                if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY || v.len() > MAX_ATTRIBUTE_VALUE {
                    return fail(format!(
                        "route {name:?}: attribute {k:?} is empty or too long for Connect"
                    ));
                }
            }
            if let Some(vars) = &route.window_template_variables
                && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(vars).is_err()
            {
                return fail(format!(
                    "route {name:?}: window_template_variables must be a JSON object"
                ));
            }
        }
        Ok(())
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether a routing file was given (else every number takes the one route).
    pub fn from_file(&self) -> bool {
        self.from_file
    }

    /// The route a customer's message to `to` takes; `None` when no route lists it.
    pub fn route_for(&self, to: &BusinessNumber) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.numbers.contains(to))
            .or_else(|| self.routes.iter().find(|r| r.numbers.is_empty()))
    }

    /// The route a conversation belongs to: its number's, or the default route for a
    /// record written before routing (or a number a newer file no longer lists).
    pub fn route_of(&self, business: Option<&BusinessNumber>) -> &Route {
        business
            .and_then(|b| self.route_for(b))
            .unwrap_or_else(|| self.default_route())
    }

    /// The first route: where records written before routing belong.
    pub fn default_route(&self) -> &Route {
        &self.routes[0]
    }

    pub fn is_default(&self, route: &Route) -> bool {
        std::ptr::eq(route, self.default_route())
    }
}

fn read_file(path: &str) -> Result<String, RoutingError> {
    let fail = |e: std::io::Error| RoutingError(format!("cannot read: {e}"));
    let len = std::fs::metadata(path).map_err(fail)?.len();
    if len > MAX_FILE_BYTES {
        return Err(RoutingError(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    std::fs::read_to_string(path).map_err(fail)
}

/// `cooldown = "1h"` in the file, as the environment's durations are written.
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let raw = Option::<String>::deserialize(d)?;
        raw.map(|r| {
            humantime::parse_duration(&r).map_err(|_| {
                serde::de::Error::custom(format!("expected a duration like 30s or 1h, got {r:?}"))
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::ConfigSource;

    const FILE: &str = r#"
[[route]]
name = "acme"
numbers = ["whatsapp:+14155238886", "whatsapp:+14155238887"]
contact_flow_id = "flow-acme"
rate = 40
closing_text = "Thanks for writing to Acme."
[route.attributes]
brand = "acme"
[route.call_me]
keywords = "call me"
cooldown = "30m"

[[route]]
name = "globex"
numbers = ["whatsapp:+442071838750"]
messaging_service_sid = "MG0123"
instance_id = "instance-globex"
"#;

    fn number(n: &str) -> BusinessNumber {
        BusinessNumber::parse(n).unwrap()
    }

    #[test]
    fn a_file_maps_numbers_to_routes() {
        let routing = Routing::parse(FILE).unwrap();
        assert!(routing.from_file());
        let acme = routing.route_for(&number("whatsapp:+14155238887")).unwrap();
        assert_eq!(acme.name, "acme");
        assert_eq!(acme.rate, Some(40.0));
        assert_eq!(acme.attributes["brand"], "acme");
        let call_me = acme.call_me.as_ref().unwrap();
        assert_eq!(call_me.cooldown, Some(Duration::from_secs(1800)));
        assert_eq!(acme.sender_key(), "whatsapp:+14155238886");
        let globex = routing
            .route_for(&number("whatsapp:+442071838750"))
            .unwrap();
        assert_eq!(globex.instance_id.as_deref(), Some("instance-globex"));
        assert_eq!(globex.sender_key(), "MG0123");
        // A number no route lists is refused; a conversation on it belongs to the default.
        assert!(
            routing
                .route_for(&number("whatsapp:+15550000000"))
                .is_none()
        );
        let stray = number("whatsapp:+15550000000");
        assert_eq!(routing.route_of(Some(&stray)).name, "acme");
        assert!(routing.is_default(routing.route_of(None)));
        assert!(!routing.is_default(globex));
    }

    #[test]
    fn the_environment_gives_one_route_for_every_number() {
        let routing = Routing::single(Some(number("whatsapp:+14155238886")), None);
        assert!(!routing.from_file());
        let route = routing.route_for(&number("whatsapp:+15550000000")).unwrap();
        assert_eq!(route.name, "default");
        assert_eq!(route.default_from(), Some(&number("whatsapp:+14155238886")));
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        for (text, says) in [
            ("", "at least one"),
            ("[[route]]\nname = \"a\"\n", "numbers is empty"),
            (
                "[[route]]\nname = \"a\"\nnumbers = [\"whatsapp:+14155238886\"]\nnumbres = []\n",
                "unknown field",
            ),
            (
                "[[route]]\nname = \"a\"\nnumbers = [\"whatsapp:+1\"]\n",
                "not a customer address",
            ),
            (
                "[[route]]\nname = \"a\"\nnumbers = [\"whatsapp:+14155238886\"]\n[[route]]\nname = \"b\"\nnumbers = [\"whatsapp:+14155238886\"]\n",
                "in two routes",
            ),
            (
                "[[route]]\nname = \"a\"\nnumbers = [\"whatsapp:+14155238886\"]\n[[route]]\nname = \"a\"\nnumbers = [\"whatsapp:+14155238887\"]\n",
                "two routes are named",
            ),
            (
                "[[route]]\nname = \"a\"\nnumbers = [\"whatsapp:+14155238886\"]\nrate = 0\n",
                "rate",
            ),
            (
                "[[route]]\nname = \"a\"\nnumbers = [\"whatsapp:+14155238886\"]\nwindow_template_variables = \"[1]\"\n",
                "JSON object",
            ),
        ] {
            let err = Routing::parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?} → {err}");
        }
    }

    #[test]
    fn a_bad_file_names_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routing.toml");
        std::fs::write(&path, "[[route]]\nname = \"a\"\n").unwrap();
        let source = ConfigSource::from_pairs([(ROUTING_FILE_VAR, path.to_str().unwrap())]);
        let mut r = source.reader();
        Routing::read(&mut r);
        let errors = r.finish().unwrap_err();
        assert!(errors.names(ROUTING_FILE_VAR), "{errors}");
        let source = ConfigSource::from_pairs([(ROUTING_FILE_VAR, "/nonexistent/routing.toml")]);
        let mut r = source.reader();
        Routing::read(&mut r);
        assert!(r.finish().unwrap_err().names(ROUTING_FILE_VAR));
    }
}
