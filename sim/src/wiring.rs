//! How the three services are pointed at the simulators: the one place that knows which
//! variable carries which simulator's address or credential. The end-to-end tests, the
//! chaos test, the benches, the `waconnect` command's tests and the sandbox all build
//! their services' configuration from here and add only their own tuning (lease
//! lengths, ports, log level) after it. In a list of variables the later pair wins.

use crate::connect::ConnectSim;
use crate::twilio::TwilioSim;

/// Variables as `ConfigSource::from_pairs` takes them; later pairs win.
pub type Vars = Vec<(String, String)>;

/// The simulated Connect instance a relay talks to.
#[derive(Clone, Debug)]
pub struct ConnectEnd {
    /// Both APIs and the websocket's host, `http(s)://127.0.0.1:port`.
    pub endpoint: String,
    pub instance_id: String,
}

impl From<&ConnectSim> for ConnectEnd {
    fn from(sim: &ConnectSim) -> Self {
        Self {
            endpoint: sim.endpoint(),
            instance_id: sim.instance_id().to_owned(),
        }
    }
}

/// The simulated Twilio account the relay and the sender call, and ingress checks
/// signatures for.
#[derive(Clone, Debug)]
pub struct TwilioEnd {
    /// The REST base of every Twilio API the services call.
    pub api_base: String,
    pub account_sid: String,
    pub auth_token: String,
    /// The business number messages are sent from.
    pub sender: String,
}

impl From<&TwilioSim> for TwilioEnd {
    fn from(sim: &TwilioSim) -> Self {
        let o = sim.options();
        Self {
            api_base: sim.api_base(),
            account_sid: o.account_sid.clone(),
            auth_token: o.auth_token.clone(),
            sender: o.sender.clone(),
        }
    }
}

/// The contact flow every wired relay starts chats with (routes may name others).
pub const CONTACT_FLOW: &str = "flow";

/// What the services are wired to.
#[derive(Clone, Debug, Default)]
pub struct Wiring {
    pub connect: Option<ConnectEnd>,
    pub twilio: Option<TwilioEnd>,
    /// Ingress's public URL (`http://host:port`): Twilio's status callbacks and the agent's
    /// files are reached under it.
    pub public_url: Option<String>,
    /// The storage engine's variables: a SQLite file, or the AWS engines on moto. Empty
    /// means the embedded default's own path.
    pub storage: Vars,
}

impl Wiring {
    /// Wired to both simulators, with ingress public at `public_url`.
    pub fn new(connect: &ConnectSim, twilio: &TwilioSim, public_url: &str) -> Self {
        Self {
            connect: Some(connect.into()),
            twilio: Some(twilio.into()),
            public_url: Some(public_url.to_owned()),
            storage: Vars::new(),
        }
    }

    /// One SQLite file for every service.
    pub fn sqlite(mut self, path: &std::path::Path) -> Self {
        self.storage = pairs(&[
            ("WACONNECT_SQLITE_PATH", &path.display().to_string()),
            ("WACONNECT_SQLITE_SYNCHRONOUS", "normal"),
        ]);
        self
    }

    /// Replaces the storage engine's variables (the AWS engines on moto, say).
    pub fn storage(mut self, vars: Vars) -> Self {
        self.storage = vars;
        self
    }

    /// ingress, listening on `bind`.
    pub fn ingress(&self, bind: &str) -> Vars {
        let mut vars = pairs(&[("WACONNECT_INGRESS_BIND", bind)]);
        vars.extend(self.ingress_own());
        self.finish(vars)
    }

    fn ingress_own(&self) -> Vars {
        let mut vars = Vars::new();
        if let Some(t) = &self.twilio {
            vars.extend(pairs(&[("TWILIO_AUTH_TOKEN", &t.auth_token)]));
        }
        vars
    }

    /// A relay-worker: Connect's side, and on Twilio's the customers' files, typing and
    /// conversations the business starts.
    pub fn relay(&self) -> Vars {
        self.finish(self.relay_own())
    }

    fn relay_own(&self) -> Vars {
        // The SDK wants credentials; the simulator does not check them.
        let mut vars = pairs(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDTEST"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("WACONNECT_CONNECT_CONTACT_FLOW_ID", CONTACT_FLOW),
        ]);
        if let Some(c) = &self.connect {
            vars.extend(pairs(&[
                ("WACONNECT_CONNECT_INSTANCE_ID", &c.instance_id),
                ("WACONNECT_CONNECT_ENDPOINT", &c.endpoint),
            ]));
        }
        if let Some(t) = &self.twilio {
            vars.extend(twilio_account(t));
            vars.extend(pairs(&[
                ("WACONNECT_TWILIO_MESSAGING_BASE", &t.api_base),
                ("TWILIO_FROM", &t.sender),
            ]));
        }
        vars
    }

    /// An outbound-sender, with its status callbacks to ingress.
    pub fn sender(&self) -> Vars {
        self.finish(self.sender_own())
    }

    fn sender_own(&self) -> Vars {
        let mut vars = Vars::new();
        if let Some(t) = &self.twilio {
            vars.extend(twilio_account(t));
            vars.extend(pairs(&[("TWILIO_FROM", &t.sender)]));
        }
        if let Some(public) = &self.public_url {
            vars.extend(pairs(&[(
                "WACONNECT_STATUS_CALLBACK_URL",
                &format!("{public}/twilio/status"),
            )]));
        }
        vars
    }

    /// All three in one process (`waconnect serve`): the union, binds left to the caller.
    pub fn all(&self) -> Vars {
        let mut vars = self.relay_own();
        vars.extend(self.sender_own());
        vars.extend(self.ingress_own());
        self.finish(vars)
    }

    /// What every service shares: the public URL, trust in the simulators' test CA when
    /// they speak TLS (as a TLS-inspecting proxy's CA would be trusted), and storage last.
    fn finish(&self, mut vars: Vars) -> Vars {
        if let Some(public) = &self.public_url {
            vars.extend(pairs(&[("WACONNECT_PUBLIC_BASE_URL", public)]));
        }
        let tls = self
            .connect
            .iter()
            .map(|c| &c.endpoint)
            .chain(self.twilio.iter().map(|t| &t.api_base))
            .any(|url| url.starts_with("https://"));
        if tls {
            let ca = crate::tls::TestCa::shared().pem_file();
            vars.extend(pairs(&[(
                "WACONNECT_EXTRA_CA_FILE",
                &ca.display().to_string(),
            )]));
        }
        vars.extend(self.storage.iter().cloned());
        vars
    }
}

fn twilio_account(t: &TwilioEnd) -> Vars {
    pairs(&[
        ("TWILIO_ACCOUNT_SID", &t.account_sid),
        ("TWILIO_AUTH_TOKEN", &t.auth_token),
        ("WACONNECT_TWILIO_API_BASE", &t.api_base),
        ("WACONNECT_TWILIO_CONTENT_BASE", &t.api_base),
    ])
}

/// Owned pairs from borrowed ones.
pub fn pairs(list: &[(&str, &str)]) -> Vars {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
