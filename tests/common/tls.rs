//! TLS in front of a test server, with a certificate signed by a CA of its own (as a studio's
//! MinIO behind its internal CA): the client must be told to trust that CA.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::{TcpListener, TcpStream};

pub struct TlsFront {
    /// `https://localhost:PORT`
    pub endpoint: String,
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    _runtime: tokio::runtime::Runtime,
}

/// A studio's own CA and a certificate it signed for "localhost".
pub struct StudioCa {
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    /// The leaf's certificate and private key, PEM and DER.
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl StudioCa {
    pub fn new() -> StudioCa {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL takes a leaf named as its issuer for self-signed.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "attache test studio CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        StudioCa {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            cert_der: leaf.der().clone(),
            key_der: leaf_key.serialize_der(),
        }
    }

    /// Writes the CA's certificate, the leaf's and its key (mode 0600, as a daemon asks of
    /// its key) as `ca.pem`, `daemon.pem` and `daemon.key` in `dir`; returns their paths.
    pub fn write_files(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let (ca, cert, key) = (
            dir.join("ca.pem"),
            dir.join("daemon.pem"),
            dir.join("daemon.key"),
        );
        std::fs::write(&ca, &self.ca_pem).unwrap();
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (ca, cert, key)
    }
}

impl TlsFront {
    /// Terminates TLS for "localhost" and passes the bytes on to `backend` (`host:port`).
    pub fn start_background(backend: &str) -> TlsFront {
        let studio = StudioCa::new();
        let key = rustls::pki_types::PrivateKeyDer::try_from(studio.key_der.clone()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![studio.cert_der.clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = backend.to_string();
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, backend) = (acceptor.clone(), backend.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return; // the client refused the certificate
                    };
                    if let Ok(mut plain) = TcpStream::connect(&backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsFront {
            endpoint: format!("https://localhost:{port}"),
            ca_pem: studio.ca_pem,
            _runtime: runtime,
        }
    }

    /// Writes the CA's certificate to `path`.
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem).unwrap();
    }
}
