//! What went wrong with an S3 request, in words for the person at the terminal: the reply's
//! status, code and message; or, when no reply came, the causes one after the other (without
//! the SDK's debug dump of each) and what to check.

use std::error::Error;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// What a failed request says, with a hint of what to check; `endpoint` is where the
/// requests go (`None`: AWS), `proxied` whether they go through a proxy.
pub fn describe<E>(
    e: &SdkError<E>,
    status: Option<u16>,
    endpoint: Option<&str>,
    proxied: bool,
) -> String
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
{
    let Some(status) = status else {
        let causes = causes(e);
        let hint = no_reply_hint(e, &causes, endpoint, proxied);
        return format!("{causes}{hint}");
    };
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut text = format!("HTTP {status} {reason}");
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => text += &format!(": {code}: {message}"),
        (Some(code), None) => text += &format!(": {code}"),
        (None, Some(message)) => text += &format!(": {message}"),
        // HEAD replies carry no body, so no code; S3 gives the reason in the status alone.
        (None, None) => {}
    }
    if let Some(needs) = credentials_need(&text) {
        return format!("{} (needs {needs})", text.trim_end());
    }
    let hint = match (status, e.code()) {
        (_, Some("NoSuchBucket")) => {
            " (check the bucket name in the store URL, and s3.endpoint_url and s3.region)"
        }
        // A 404 to a PUT or a CreateMultipartUpload (to the others it is "not found").
        (404, _) => {
            " (check s3.endpoint_url: is it an S3 server? and the bucket name in the store URL)"
        }
        // S3 and Garage answer a request signed for another region so, naming the one they
        // expect.
        (_, Some("AuthorizationHeaderMalformed")) => {
            " (set s3.region to the region the store expects)"
        }
        (403, _) => " (check the credentials and the bucket policy)",
        (301, _) => " (wrong region: set s3.region)",
        // S3 answers a HEAD signed for the wrong region, or naming an invalid bucket, with a
        // bare 400: the reply of a HEAD has no body to say which.
        (400, None) => " (check s3.region and the bucket name)",
        _ => "",
    };
    format!("{}{hint}", text.trim_end())
}

/// What the credentials or the clock need, when a store refused a request for them (`text`:
/// the reply's status, code and message, as [`describe`] says them): S3's codes, and
/// Garage's words for the same.
pub fn credentials_need(text: &str) -> Option<&'static str> {
    // Garage says a wrong secret as AccessDenied "Forbidden: Invalid signature".
    if text.contains("SignatureDoesNotMatch")
        || text.to_ascii_lowercase().contains("invalid signature")
    {
        Some(
            "the secret key that belongs to this access key, from s3.secret_access_key, the profile or AWS_SECRET_ACCESS_KEY, and a clock within 15 minutes of the store's",
        )
    } else if text.contains("InvalidAccessKeyId")
        // Garage's AccessDenied "Forbidden: No such key: GK…" (an access key, not an object).
        || (text.contains("AccessDenied") && text.contains("No such key"))
    {
        Some(
            "an access key the store knows, from s3.access_key_id, --profile or AWS_ACCESS_KEY_ID, at the endpoint it belongs to",
        )
    } else if text.contains("ExpiredToken") || text.contains("TokenRefreshRequired") {
        Some("fresh credentials: the session token has expired (log in again, e.g. aws sso login)")
    } else if text.contains("RequestTimeTooSkewed") {
        Some(
            "this machine's clock within 15 minutes of the store's: set it right (chrony, systemd-timesyncd)",
        )
    } else {
        None
    }
}

/// Whether the request failed before it was sent because no credentials are configured,
/// their configuration is broken, or the instance metadata service refused them: trying
/// again cannot help. (A provider that timed out or failed, such as STS or the instance
/// metadata answering 503, may do better next time.)
pub fn is_lasting_credentials_failure<E: Error + 'static>(e: &SdkError<E>) -> bool {
    match credentials_error(e) {
        Some(
            CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_),
        ) => true,
        Some(CredentialsError::ProviderError(_)) => imds_refused(e),
        _ => false,
    }
}

/// Whether the EC2 instance metadata service, last in the credential chain, refused: a 4xx
/// to its token request (403 where it is turned off on the instance, or from a proxy or
/// another machine answering for its address) or a 403 to the credentials request. Retried,
/// it refuses again, with a warning each time.
fn imds_refused<E: Error + 'static>(e: &SdkError<E>) -> bool {
    use aws_config::imds::client::error::{ImdsError, TokenError};
    chain(e).any(|c| {
        if let Some(token) = c.downcast_ref::<SdkError<TokenError>>() {
            return token
                .raw_response()
                .is_some_and(|r| r.status().is_client_error());
        }
        matches!(
            c.downcast_ref::<ImdsError>(),
            Some(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 403
        )
    })
}

fn credentials_error<E: Error + 'static>(e: &SdkError<E>) -> Option<&CredentialsError> {
    chain(e).find_map(|c| c.downcast_ref::<CredentialsError>())
}

/// The causes of `e`, outermost first, joined with ": ". A cause whose text its parent
/// already carries is left out, and so is everything after a multi-line text (the
/// credential chain's list of what it tried), which says it all.
pub fn causes(e: &(dyn Error + 'static)) -> String {
    let mut out = String::new();
    for c in chain(e) {
        let text = c.to_string();
        let text = text.trim();
        if text.is_empty() || out.contains(text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
        if text.contains('\n') {
            break;
        }
    }
    out
}

fn chain<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(e), |&c| c.source())
}

/// What to check when no reply came; `causes` is [`causes`] of `e`.
fn no_reply_hint<E: Error + 'static>(
    e: &SdkError<E>,
    causes: &str,
    endpoint: Option<&str>,
    proxied: bool,
) -> String {
    const SET_CREDENTIALS: &str = "set s3.access_key_id and s3.secret_access_key, s3.profile \
                                   or AWS_PROFILE, or run where an IAM role provides them";
    match credentials_error(e) {
        Some(CredentialsError::CredentialsNotLoaded(_)) => {
            return format!(" (no credentials: {SET_CREDENTIALS})");
        }
        Some(CredentialsError::InvalidConfiguration(_)) => {
            return " (check the AWS profile's configuration: ~/.aws/config, s3.profile)".into();
        }
        Some(CredentialsError::ProviderError(_)) if imds_refused(e) => {
            return format!(
                " (no credentials: none configured, and the EC2 instance metadata service \
                 refused; {SET_CREDENTIALS}; off EC2, AWS_EC2_METADATA_DISABLED=true skips it)"
            );
        }
        _ => {}
    }
    let store = endpoint.map_or("S3".to_string(), |e| e.to_string());
    if causes.contains("certificate") {
        return format!(
            " (the certificate of {store} is not trusted: add the CA that signed it to the \
             system's trust store, or name its PEM file in s3.ca_bundle or AWS_CA_BUNDLE)"
        );
    }
    if let Some(e) = endpoint {
        if causes.contains("dns error") {
            // With s3.force_path_style off the host looked up is BUCKET.HOST, which a local
            // or on-prem store rarely has in its DNS.
            return format!(
                " (cannot resolve the host of {e}, or BUCKET.host when s3.force_path_style is off: check s3.endpoint_url; a store that takes the bucket in the path (MinIO, Garage, Ceph) needs s3.force_path_style = true)"
            );
        }
        if e.starts_with("https://") && causes.contains("corrupt message") {
            return format!(" (is {e} an http:// endpoint? its answer is not TLS)");
        }
    }
    match e {
        SdkError::TimeoutError(_) => format!(
            " ({store} did not answer in time: check the network, s3.connect_timeout and s3.read_timeout)"
        ),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            format!(" ({store} did not answer in time: check the network and s3.connect_timeout)")
        }
        // The connection refused may be the proxy's, up or not: name it first.
        SdkError::DispatchFailure(d) if d.is_io() && proxied => format!(
            " (cannot reach {store} through the proxy (s3.proxy, else HTTPS_PROXY, HTTP_PROXY or ALL_PROXY; not for a host NO_PROXY names): check that the proxy runs and lets it through, then s3.endpoint_url and that the store is running)"
        ),
        SdkError::DispatchFailure(d) if d.is_io() => match endpoint {
            Some(e) => {
                format!(" (cannot reach {e}: check s3.endpoint_url and that the store is running)")
            }
            None => " (cannot reach S3: check the network and proxy settings)".into(),
        },
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn causes_are_joined_without_repeats_and_stop_at_a_full_account() {
        let e = E(
            "dispatch failure",
            Some(Box::new(E(
                "io error",
                Some(Box::new(E(
                    "tcp connect error: Connection refused",
                    Some(Box::new(E("Connection refused", None))),
                ))),
            ))),
        );
        assert_eq!(
            causes(&e),
            "dispatch failure: io error: tcp connect error: Connection refused"
        );
        let listed = E(
            "no credentials found in chain. Attempted:\n  Environment: not set",
            Some(Box::new(E("Environment", None))),
        );
        assert_eq!(
            causes(&listed),
            "no credentials found in chain. Attempted:\n  Environment: not set"
        );
    }
}
