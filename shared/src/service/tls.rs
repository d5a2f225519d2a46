//! The certificate authorities the services trust as TLS clients: the public roots, plus
//! the ones `WACONNECT_EXTRA_CA_FILE` names (PEM). Corporate networks that inspect TLS
//! need their proxy's CA here; the tests trust their simulators' test CA the same way.
//! Verification is never turned off: there is no setting for that.

use crate::service::config::Reader;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;

pub const EXTRA_CA_VAR: &str = "WACONNECT_EXTRA_CA_FILE";

/// A bound on the file, so a wrong path (a disk image, a log) fails fast and clearly.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The extra CAs, read once at start; every TLS client of the process trusts them.
#[derive(Clone, Default)]
pub struct TlsSettings {
    extra: Option<Arc<Extra>>,
}

struct Extra {
    pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field(
                "extra_cas",
                &self.extra.as_ref().map_or(0, |e| e.certs.len()),
            )
            .finish()
    }
}

/// Two settings are the same when they trust the same file's contents.
impl PartialEq for TlsSettings {
    fn eq(&self, other: &Self) -> bool {
        self.extra_pem() == other.extra_pem()
    }
}

impl Eq for TlsSettings {}

impl TlsSettings {
    /// Reads `WACONNECT_EXTRA_CA_FILE`: a missing, unreadable or certificate-less file is
    /// a configuration error naming the variable.
    pub fn read(r: &mut Reader<'_>) -> Self {
        let Some(path) = r.raw(EXTRA_CA_VAR) else {
            return Self::default();
        };
        match Self::from_file(std::path::Path::new(path)) {
            Ok(settings) => settings,
            Err(problem) => {
                r.error(EXTRA_CA_VAR, problem);
                Self::default()
            }
        }
    }

    fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let size = std::fs::metadata(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .len();
        if size > MAX_FILE_BYTES {
            return Err(format!(
                "{} is {size} bytes: not a PEM file of CA certificates",
                path.display()
            ));
        }
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_pem(pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Trusts the CA certificates in `pem` too.
    pub fn from_pem(pem: Vec<u8>) -> Result<Self, String> {
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not PEM certificates ({e})"))?;
        if certs.is_empty() {
            return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
        }
        Ok(Self {
            extra: Some(Arc::new(Extra { pem, certs })),
        })
    }

    /// The extra CAs as PEM, for clients that take them that way.
    pub fn extra_pem(&self) -> Option<&[u8]> {
        self.extra.as_ref().map(|e| e.pem.as_slice())
    }

    /// A rustls client configuration (ring, as everywhere here) trusting the public
    /// roots and the extra CAs; no ALPN, so HTTP/1.1 and websockets.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(extra) = &self.extra {
            let (_added, _ignored) = roots.add_parsable_certificates(extra.certs.iter().cloned());
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(config)
    }

    /// `builder` trusting the extra CAs too (reqwest keeps its own public roots).
    pub fn reqwest(&self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if let Some(extra) = &self.extra {
            for cert in &extra.certs {
                if let Ok(cert) = reqwest::Certificate::from_der(cert) {
                    builder = builder.add_root_certificate(cert);
                }
            }
        }
        builder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::ConfigSource;

    fn read(vars: &[(&str, &str)]) -> Result<TlsSettings, String> {
        let source = ConfigSource::from_pairs(vars.iter().copied());
        let mut r = source.reader();
        let settings = TlsSettings::read(&mut r);
        r.finish().map(|()| settings).map_err(|e| e.to_string())
    }

    #[test]
    fn a_bad_file_is_named_and_no_file_trusts_the_public_roots() {
        assert!(read(&[]).unwrap().extra_pem().is_none());
        let missing = read(&[(EXTRA_CA_VAR, "/nonexistent/ca.pem")]).unwrap_err();
        assert!(missing.contains(EXTRA_CA_VAR), "{missing}");
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let said = read(&[(EXTRA_CA_VAR, not_pem.to_str().unwrap())]).unwrap_err();
        assert!(
            said.contains(EXTRA_CA_VAR) && said.contains("no PEM certificate"),
            "{said}"
        );
    }
}
