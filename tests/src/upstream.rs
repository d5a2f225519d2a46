//! Passing a request on, as the test equipment that stands between two parts does (the
//! load balancer in front of ingress, the AWS fault proxy in front of moto).

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Requests bigger than this are refused: each one is held whole.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// Where requests are passed on to.
pub struct Upstream {
    /// As `http://host:port`.
    target: String,
    http: reqwest::Client,
}

impl Upstream {
    /// `timeout` bounds each request passed on: longer than the longest call it carries.
    pub fn new(target: &str, timeout: Duration) -> Self {
        Self {
            target: target.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("an HTTP client"),
        }
    }

    /// The request as it came, and the answer as it went back; 502 if none came.
    pub async fn pass_on(&self, parts: Parts, body: Bytes) -> Response {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = parts.headers;
        // Hop by hop, or set again by the client for the body it sends.
        for name in ["host", "connection", "transfer-encoding", "content-length"] {
            headers.remove(name);
        }
        let answer = self
            .http
            .request(parts.method, format!("{}{path}", self.target))
            .headers(headers)
            .body(body)
            .send()
            .await;
        match answer {
            Ok(r) => {
                let (status, mut headers) = (r.status(), r.headers().clone());
                // The body goes back whole, with its own length.
                headers.remove("transfer-encoding");
                headers.remove("content-length");
                let body: Bytes = r.bytes().await.unwrap_or_default();
                let mut response = Response::new(Body::from(body));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                response
            }
            Err(_) => StatusCode::BAD_GATEWAY.into_response(),
        }
    }
}

/// A header's value as text; empty when it is missing or not text.
pub fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
