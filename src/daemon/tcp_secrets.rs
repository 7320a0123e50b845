//! What the daemon's TCP listener checks and shows: the bearer token of `daemon.token_file`
//! and the certificate of `daemon.tls_cert`/`tls_key`, held so that a reload (SIGHUP) takes
//! rotated files, and TLS turned on or off, without a restart, which would cancel every
//! transfer in flight.

use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::config::DaemonSettings;

/// A file of the listener's that cannot be used: which setting, which file, why.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {message}")]
pub struct SecretsError {
    pub key: &'static str,
    pub path: String,
    pub message: String,
}

pub struct TcpSecrets {
    token: RwLock<String>,
    /// `None`: plain HTTP (no `daemon.tls_cert`).
    tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
}

/// The listener's token and TLS setup as the settings' files give them now.
fn read(d: &DaemonSettings) -> Result<(String, Option<Arc<rustls::ServerConfig>>), SecretsError> {
    let token_file = d.token_file.as_deref().ok_or_else(|| SecretsError {
        key: "daemon.token_file",
        path: String::new(),
        message: "daemon.listen needs a token file".into(),
    })?;
    let token = super::token::read_token_file(token_file).map_err(|e| SecretsError {
        key: "daemon.token_file",
        path: e.path.display().to_string(),
        message: e.message,
    })?;
    let tls = match (&d.tls_cert, &d.tls_key) {
        (Some(cert), Some(key)) => Some(server_config(cert, key)?),
        _ => None,
    };
    Ok((token, tls))
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, SecretsError> {
    super::tls::server_config(cert, key).map_err(|e| SecretsError {
        key: if e.path == cert {
            "daemon.tls_cert"
        } else {
            "daemon.tls_key"
        },
        path: e.path.display().to_string(),
        message: e.message,
    })
}

impl TcpSecrets {
    pub fn load(d: &DaemonSettings) -> Result<TcpSecrets, SecretsError> {
        let (token, tls) = read(d)?;
        Ok(TcpSecrets {
            token: RwLock::new(token),
            tls: RwLock::new(tls),
        })
    }

    /// Reads the files again (the same settings or new ones): a rotated token or
    /// certificate, or TLS turned on or off, for the connections to come. Nothing changes
    /// unless every file can be used. Returns whether the listener speaks TLS now, when that
    /// changed.
    pub fn reload(&self, d: &DaemonSettings) -> Result<Option<bool>, SecretsError> {
        let (token, tls) = read(d)?;
        *self.token.write().expect("not poisoned") = token;
        let mut held = self.tls.write().expect("not poisoned");
        let changed = held.is_some() != tls.is_some();
        *held = tls;
        Ok(changed.then_some(held.is_some()))
    }

    /// Whether a request's bearer token is the listener's (in constant time).
    pub fn token_matches(&self, given: Option<&str>) -> bool {
        super::token::token_matches(&self.token.read().expect("not poisoned"), given)
    }

    /// The TLS setup for the next connection; `None`: plain HTTP.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.read().expect("not poisoned").clone()
    }
}
