//! TLS for the daemon's TCP listener (`daemon.tls_cert`, `daemon.tls_key`), so the bearer
//! token and the jobs' paths do not cross the farm's network in clear, and for a client that
//! reaches it at `https://` (trusting `--daemon-ca`, else the system's roots).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;

use super::tcp_secrets::TcpSecrets;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsFileError {
    pub path: PathBuf,
    pub message: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The listener's TLS setup from its certificate chain and private key (PEM). The key must
/// not be readable by every user of the machine.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsFileError> {
    let err = |path: &Path, message: String| TlsFileError {
        path: path.to_path_buf(),
        message,
    };
    let chain = read_certificates(cert)?;
    let meta = std::fs::metadata(key).map_err(|e| err(key, e.to_string()))?;
    if meta.permissions().mode() & 0o007 != 0 {
        return Err(err(key, "readable by every user; chmod 600 it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        err(
            key,
            format!("no private key (PEM: PKCS#8, RSA or EC) could be read: {e}"),
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            err(
                key,
                format!("does not go with the certificate {}: {e}", cert.display()),
            )
        })?;
    Ok(Arc::new(config))
}

/// A client's TLS setup: it trusts the certificates of `ca` (PEM: a studio's CA, or the
/// daemon's own self-signed certificate), else the system's roots.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsFileError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in read_certificates(path)? {
                roots.add(cert).map_err(|e| TlsFileError {
                    path: path.to_path_buf(),
                    message: format!("not a usable certificate: {e}"),
                })?;
            }
        }
        None => {
            // Certificates the system cannot parse are skipped, as other clients do.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let err = |message: String| TlsFileError {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A connection to the TCP listener: over TLS, or plain HTTP.
pub type ApiStream = Either<TlsStream<TcpStream>, TcpStream>;

/// The daemon's TCP listener: each connection is served over TLS when the listener's secrets
/// hold a certificate as it comes (a reload may turn TLS on or off, or rotate it), once its
/// handshake is done, else as it is. Each handshake runs on a task of its own (10 s at
/// most), so a client that connects and sends nothing holds up no one else.
pub struct ApiListener {
    ready: mpsc::Receiver<(ApiStream, SocketAddr)>,
    local: SocketAddr,
}

impl ApiListener {
    pub fn new(tcp: TcpListener, secrets: Arc<TcpSecrets>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors, most likely: wait rather than spin.
                        tracing::warn!(error = %e, "TCP listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Some(config) = secrets.tls() else {
                    if tx.send((Either::Right(stream), peer)).await.is_err() {
                        return; // the server stopped
                    }
                    continue;
                };
                let (acceptor, ready) = (tokio_rustls::TlsAcceptor::from(config), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send((Either::Left(tls), peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake refused")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return; // the server stopped
                }
            }
        });
        Ok(ApiListener { ready, local })
    }
}

impl axum::serve::Listener for ApiListener {
    type Io = ApiStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for "localhost" and its key, written under `dir`.
    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        (c, k)
    }

    #[test]
    fn a_certificate_goes_with_its_own_private_key_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path(), "a");
        assert!(server_config(&cert, &key).is_ok());
        assert!(client_config(Some(&cert)).is_ok());

        let (_, other_key) = self_signed(dir.path(), "b");
        let e = server_config(&cert, &other_key).unwrap_err().to_string();
        assert!(e.contains("does not go with the certificate"), "{e}");

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = server_config(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("readable by every user"), "{e}");

        // The key where the certificate should be, and the other way round.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = server_config(&key, &key).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = server_config(&cert, &cert).unwrap_err().to_string();
        assert!(
            e.contains("readable by every user") || e.contains("no private key"),
            "{e}"
        );
        let e = client_config(Some(&dir.path().join("none.pem"))).unwrap_err();
        assert!(e.to_string().contains("none.pem"), "{e}");
    }
}
