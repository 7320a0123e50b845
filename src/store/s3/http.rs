//! The connection pool's proxy and TLS trust: what `s3.proxy` and `s3.ca_bundle` say, else
//! the environment's `HTTPS_PROXY` / `NO_PROXY` / `AWS_CA_BUNDLE`, read as aws-cli and rclone
//! read them.

use std::path::{Path, PathBuf};

use crate::config::S3Settings;

/// The certificates TLS trusts: the system's, and those of `s3.ca_bundle` (else of the file
/// `AWS_CA_BUNDLE` names, as aws-cli reads it), for a store whose certificate a studio's own
/// CA signed.
pub fn tls_context(
    s: &S3Settings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<aws_smithy_http_client::tls::TlsContext, String> {
    use aws_smithy_http_client::tls::{TlsContext, TrustStore};
    let mut trust = TrustStore::default();
    let bundle = match &s.ca_bundle {
        Some(path) => Some(("s3.ca_bundle", path.clone())),
        None => env("AWS_CA_BUNDLE")
            .filter(|p| !p.is_empty())
            .map(|p| ("AWS_CA_BUNDLE", PathBuf::from(p))),
    };
    if let Some((source, path)) = bundle {
        let pem = read_ca_bundle(&path).map_err(|e| format!("{source}: {e}"))?;
        trust = trust.with_pem_certificate(pem);
    }
    TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| format!("cannot set up TLS: {e}"))
}

/// The PEM bytes of a CA bundle, checked to hold at least one certificate.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !pem
        .windows(CERT_PEM.len())
        .any(|w| w == CERT_PEM.as_bytes())
    {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(pem)
}

const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----";

/// The proxy settings: `s3.proxy`, else the environment's, as aws-cli and rclone read them.
/// With none of its variables set the pool connects directly, without the proxy layer.
pub fn proxy_config(
    s: &S3Settings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<aws_smithy_http_client::proxy::ProxyConfig, String> {
    use aws_smithy_http_client::proxy::ProxyConfig;
    let set = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
    match s.proxy.as_ref().map(|p| p.expose()) {
        Some(value) => {
            let proxy = proxy_setting(value).map_err(|e| format!("s3.proxy: {e}"))?;
            Ok(match set(&["NO_PROXY", "no_proxy"]) {
                Some(rules) if !proxy.is_disabled() => proxy.no_proxy(rules),
                _ => proxy,
            })
        }
        None => {
            let vars = [
                "HTTPS_PROXY",
                "https_proxy",
                "HTTP_PROXY",
                "http_proxy",
                "ALL_PROXY",
                "all_proxy",
            ];
            Ok(match set(&vars) {
                Some(_) => ProxyConfig::from_env(),
                None => ProxyConfig::disabled(),
            })
        }
    }
}

/// `s3.proxy` as the pool takes it: `none` (connect directly), or an http:// or https:// URL
/// every request goes through. The error never repeats the value: it may carry a password.
/// Config validation calls this too, so a value it accepts is one the pool accepts.
pub fn proxy_setting(value: &str) -> Result<aws_smithy_http_client::proxy::ProxyConfig, String> {
    use aws_smithy_http_client::proxy::ProxyConfig;
    if value == "none" {
        return Ok(ProxyConfig::disabled());
    }
    ProxyConfig::all(value).map_err(|_| {
        "expected none or an http:// or https:// URL, such as http://proxy.studio.lan:3128 \
         (with user:password@ before the host if the proxy asks for them)"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn the_proxy_comes_from_s3_proxy_else_from_the_environment_else_none() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let mut s = S3Settings::default();
        assert!(proxy_config(&s, env(&[])).unwrap().is_disabled());
        assert!(
            proxy_config(&s, env(&[("HTTPS_PROXY", "")]))
                .unwrap()
                .is_disabled()
        );
        let from_env = proxy_config(&s, env(&[("https_proxy", "http://p:3128")])).unwrap();
        assert!(from_env.is_from_env());
        s.proxy = Some(Secret::new("none"));
        let none = proxy_config(&s, env(&[("HTTPS_PROXY", "http://p:3128")])).unwrap();
        assert!(none.is_disabled());
        s.proxy = Some(Secret::new("http://p:3128"));
        let set = proxy_config(&s, env(&[])).unwrap();
        assert!(!set.is_disabled() && !set.is_from_env());
    }
}
