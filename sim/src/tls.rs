//! HTTPS and WSS for the simulators, as the real services speak: a test CA made at run
//! time (one per process), a certificate it signed for `127.0.0.1` and `localhost`, and a
//! server loop that speaks HTTP/1.1 (with websocket upgrades) over rustls. The services
//! under test trust the CA through `WACONNECT_EXTRA_CA_FILE` ([`TestCa::pem_file`]) —
//! never by turning verification off.

use axum::Router;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The process's test CA and the server configuration its certificate makes.
pub struct TestCa {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server: Arc<rustls::ServerConfig>,
    file: PathBuf,
}

static SHARED: LazyLock<TestCa> = LazyLock::new(TestCa::generate);

impl TestCa {
    /// The process's test CA (made on first use).
    pub fn shared() -> &'static TestCa {
        &SHARED
    }

    fn generate() -> Self {
        let ca_key = KeyPair::generate().expect("a P-256 key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "waconnect test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("a self-signed CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("a P-256 key");
        let leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server parameters");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("a certificate the CA signed");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
        .expect("the certificate matches its key");
        let file = std::env::temp_dir().join(format!(
            "waconnect-test-ca-{}-{}.pem",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&file, ca_cert.pem()).expect("write the test CA");
        Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server: Arc::new(server),
            file,
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.ca_pem
    }

    /// A file holding the CA certificate: what `WACONNECT_EXTRA_CA_FILE` names.
    pub fn pem_file(&self) -> &std::path::Path {
        &self.file
    }

    /// A test client trusting the CA.
    pub fn reqwest(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder.add_root_certificate(
            reqwest::Certificate::from_der(&self.ca_der).expect("the CA is DER"),
        )
    }
}

/// An HTTP client for a simulator at `base`: one trusting the test CA for `https://`.
pub(crate) fn client_for(base: &str) -> reqwest::Client {
    let builder = reqwest::Client::builder();
    let builder = if base.starts_with("https://") {
        TestCa::shared().reqwest(builder)
    } else {
        builder
    };
    builder.build().expect("an HTTP client builds")
}

/// Serves `app` over TLS (the process's test CA) on `listener` until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(TestCa::shared().server.clone());
    loop {
        let (tcp, _) = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of descriptors and the like: pause and go on, as axum::serve does.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, app, stop) = (acceptor.clone(), app.clone(), stop.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}
