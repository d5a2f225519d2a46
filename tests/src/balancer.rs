//! A load balancer in front of ingress, as production has one: it passes every request
//! through, and can turn away the first attempt at each status callback with 503 — what
//! a load balancer answers while ingress restarts or its queue refuses — so a test can
//! show what Twilio's next attempt makes of it.

use crate::upstream::{MAX_BODY, Upstream, header};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Balancer {
    /// Where Twilio is told the public endpoint is.
    pub url: String,
    state: Arc<Shared>,
}

struct Shared {
    /// ingress.
    ingress: Upstream,
    turn_away: AtomicBool,
    /// Twilio's idempotency tokens of the callbacks already turned away once.
    seen: Mutex<HashSet<String>>,
    turned_away: AtomicU64,
}

impl Balancer {
    /// Listens on a loopback port of its own and passes everything on to `target`.
    pub async fn start(target: &str) -> Self {
        let state = Arc::new(Shared {
            ingress: Upstream::new(target, Duration::from_secs(30)),
            turn_away: AtomicBool::new(false),
            seen: Mutex::default(),
            turned_away: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(pass_on).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    /// From now on, the first attempt at each status callback gets 503.
    pub fn turn_away_first_callback_attempts(&self) {
        self.state.turn_away.store(true, Ordering::SeqCst);
    }

    /// Status callback attempts turned away so far.
    pub fn turned_away(&self) -> u64 {
        self.state.turned_away.load(Ordering::SeqCst)
    }
}

async fn pass_on(State(state): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if state.turn_away.load(Ordering::SeqCst) && parts.uri.path() == "/twilio/status" {
        let token = header(&parts.headers, "i-twilio-idempotency-token");
        if state.seen.lock().unwrap().insert(token) {
            state.turned_away.fetch_add(1, Ordering::SeqCst);
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    state.ingress.pass_on(parts, body).await
}
