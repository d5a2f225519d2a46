//! The URL Twilio signed. Ingress sits behind load balancers, so the local socket address
//! means nothing: the URL is the configured public base plus the request's path and query,
//! or, only when explicitly trusted, the `X-Forwarded-Proto` / `X-Forwarded-Host` a proxy set.

use axum::http::{HeaderMap, Uri};

pub fn signed_url(
    public_base_url: &str,
    trust_forwarded: bool,
    headers: &HeaderMap,
    uri: &Uri,
) -> String {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    if trust_forwarded {
        let first = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        if let (Some(proto), Some(host)) = (
            first("x-forwarded-proto"),
            first("x-forwarded-host").or_else(|| first("host")),
        ) {
            return format!("{proto}://{host}{path_and_query}");
        }
    }
    format!("{public_base_url}{path_and_query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn base_url_plus_path_and_query() {
        let uri: Uri = "/twilio/messages?tenant=a".parse().unwrap();
        assert_eq!(
            signed_url(
                "https://wa.example.com/prefix",
                false,
                &HeaderMap::new(),
                &uri
            ),
            "https://wa.example.com/prefix/twilio/messages?tenant=a"
        );
    }

    #[test]
    fn forwarded_headers_are_ignored_unless_trusted() {
        let uri: Uri = "/hook".parse().unwrap();
        let h = headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        assert_eq!(
            signed_url("https://good.example", false, &h, &uri),
            "https://good.example/hook"
        );
        assert_eq!(
            signed_url("https://good.example", true, &h, &uri),
            "https://evil.example/hook"
        );
    }

    #[test]
    fn trusted_forwarding_takes_the_first_hop_and_falls_back_to_host() {
        let uri: Uri = "/hook".parse().unwrap();
        let h = headers(&[
            ("x-forwarded-proto", "https, http"),
            ("host", "lb.example:8443"),
        ]);
        assert_eq!(
            signed_url("https://base", true, &h, &uri),
            "https://lb.example:8443/hook"
        );
        // Without a forwarded proto the configured base is used.
        let h = headers(&[("host", "lb.example")]);
        assert_eq!(
            signed_url("https://base", true, &h, &uri),
            "https://base/hook"
        );
    }
}
