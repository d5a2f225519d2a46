//! The HTTP client files travel through: a customer's file from Twilio (or an agent's
//! from Connect's download URL) and into Connect's upload URL. It is hyper's own client
//! with each connection's buffers capped at [`MAX_BUF`]: reqwest, used for every other
//! call, leaves hyper's default (~400 KiB), which a stream of many megabytes fills on
//! both the read and the write side — most of what a transfer held in memory (the media
//! bench, issue 13). Everything else is as reqwest does it: TLS with the webpki roots,
//! a connect timeout, a bound between reads, and redirects followed (at most
//! [`MAX_REDIRECTS`]) with credentials only ever sent to the origin they were given for.
//!
//! Errors never carry the URL: a Twilio media URL or a Connect upload URL is a bearer
//! credential for minutes.

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, StatusCode, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// A connection's read buffer and write queue, at most.
pub const MAX_BUF: usize = 64 * 1024;
const MAX_REDIRECTS: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two reads of a body (or the answer's head): a stalled peer, not a big file.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A request body: bytes streamed from a file or from another answer.
pub type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransferError(String);

#[derive(Clone)]
pub struct Transfers {
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

/// An answer whose body is read a chunk at a time.
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    content_length: Option<u64>,
    body: Incoming,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The length the answer announced, if it did.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The next chunk of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, TransferError> {
        loop {
            let frame = tokio::time::timeout(READ_TIMEOUT, self.body.frame())
                .await
                .map_err(|_| TransferError(format!("no data for {READ_TIMEOUT:?}")))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(TransferError(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                    // Trailers: nothing a file needs.
                }
            }
        }
    }

    /// The body as a request body for another call (straight into an upload).
    pub fn into_body(self) -> Body {
        self.body.map_err(std::io::Error::other).boxed()
    }

    /// The rest of the body as text (an error answer, capped).
    pub async fn text(mut self) -> String {
        let mut text = Vec::new();
        while let Ok(Some(chunk)) = self.chunk().await {
            text.extend_from_slice(&chunk);
            if text.len() > 16 * 1024 {
                break;
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// A body streamed from `reader`, [`MAX_BUF`] at a time.
pub fn reader_body<R: tokio::io::AsyncRead + Send + Sync + 'static>(reader: R) -> Body {
    use futures_util::TryStreamExt;
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, MAX_BUF).map_ok(Frame::data);
    http_body_util::StreamBody::new(stream).boxed()
}

impl Transfers {
    /// `tls`: the process's client configuration (the public roots and any extra CA).
    pub fn new(tls: std::sync::Arc<rustls::ClientConfig>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(std::sync::Arc::unwrap_or_clone(tls))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .http1_max_buf_size(MAX_BUF)
            .build(connector);
        Self { client }
    }

    /// GETs `url`, with HTTP Basic `auth` for its origin only, following redirects.
    pub async fn get(
        &self,
        url: &str,
        auth: Option<(&str, &str)>,
    ) -> Result<Response, TransferError> {
        let mut url: hyper::Uri = url.parse().map_err(|_| TransferError("not a URL".into()))?;
        let first = origin(&url);
        for _ in 0..=MAX_REDIRECTS {
            let mut request = Request::builder().method(Method::GET).uri(url.clone());
            if let Some((user, password)) = auth
                && origin(&url) == first
            {
                request = request.header(header::AUTHORIZATION, basic(user, password));
            }
            let request = request
                .body(http_body_util::Empty::new().map_err(|e| match e {}).boxed())
                .map_err(|e| TransferError(e.to_string()))?;
            let response = self.send(request, Some(READ_TIMEOUT)).await?;
            let status = response.status;
            if status.is_redirection()
                && let Some(next) = response.location.clone()
            {
                url = resolve(&url, &next)?;
                continue;
            }
            return Ok(response.into());
        }
        Err(TransferError(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// PUTs `body` of `length` bytes to `url` with exactly `headers` (and the length):
    /// the answer's status and its text.
    pub async fn put(
        &self,
        url: &str,
        headers: &[(String, String)],
        length: u64,
        body: Body,
    ) -> Result<(StatusCode, String), TransferError> {
        let mut request = Request::builder().method(Method::PUT).uri(url);
        for (name, value) in headers {
            // The length is the file's, whatever the map says.
            if !name.eq_ignore_ascii_case("content-length") {
                request = request.header(name, value);
            }
        }
        let request = request
            .header(header::CONTENT_LENGTH, length)
            .body(body)
            .map_err(|e| TransferError(e.to_string()))?;
        // The answer comes after the whole body went out, which takes as long as the file
        // does: the caller's bound on the transfer covers it, not the one between reads.
        let response: Response = self.send(request, None).await?.into();
        let status = response.status();
        Ok((status, response.text().await))
    }

    /// Sends `request`; its answer's head, within `within` when given.
    async fn send(
        &self,
        request: Request<Body>,
        within: Option<Duration>,
    ) -> Result<Head, TransferError> {
        let answer = self.client.request(request);
        let response = match within {
            Some(within) => tokio::time::timeout(within, answer)
                .await
                .map_err(|_| TransferError(format!("no answer within {within:?}")))?,
            None => answer.await,
        }
        .map_err(|e| TransferError(describe(&e)))?;
        let content_length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Head {
            status: response.status(),
            content_length,
            location,
            body: response.into_body(),
        })
    }
}

struct Head {
    status: StatusCode,
    content_length: Option<u64>,
    location: Option<String>,
    body: Incoming,
}

impl From<Head> for Response {
    fn from(h: Head) -> Self {
        Self {
            status: h.status,
            content_length: h.content_length,
            body: h.body,
        }
    }
}

/// The error's chain, without the URL (hyper-util's errors do not carry it).
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn origin(url: &hyper::Uri) -> (Option<String>, Option<String>, Option<u16>) {
    (
        url.scheme_str().map(str::to_owned),
        url.host().map(str::to_ascii_lowercase),
        url.port_u16(),
    )
}

/// A `Location` against the URL it came from (absolute, or a path on the same origin).
fn resolve(base: &hyper::Uri, location: &str) -> Result<hyper::Uri, TransferError> {
    let base = url::Url::parse(&base.to_string()).map_err(|e| TransferError(e.to_string()))?;
    let next = base
        .join(location)
        .map_err(|_| TransferError("a redirect to something not a URL".into()))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(TransferError(
            "a redirect to a scheme that is not HTTP".into(),
        ));
    }
    next.as_str()
        .parse()
        .map_err(|_| TransferError("a redirect to something not a URL".into()))
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_and_stay_on_http() {
        let base: hyper::Uri = "https://api.twilio.com/2010-04-01/Media/ME1"
            .parse()
            .unwrap();
        assert_eq!(
            resolve(&base, "https://media.twiliocdn.com/x?sig=1")
                .unwrap()
                .to_string(),
            "https://media.twiliocdn.com/x?sig=1"
        );
        assert_eq!(
            resolve(&base, "/other").unwrap().to_string(),
            "https://api.twilio.com/other"
        );
        assert!(resolve(&base, "file:///etc/passwd").is_err());
        // Credentials go to the origin they were given for only.
        let cdn: hyper::Uri = "https://media.twiliocdn.com/x".parse().unwrap();
        assert_ne!(origin(&base), origin(&cdn));
        assert_eq!(basic("AC1", "secret"), "Basic QUMxOnNlY3JldA==");
    }
}
