//! Where the signing region comes from when `s3.region` is not set.
//!
//! The SDK's default chain ends with the EC2 instance metadata service (IMDS), asked with
//! four attempts of 1 s timeouts and a warning carrying a debug dump for each failure: off
//! EC2 (a workstation, an on-prem render node, a store at `s3.endpoint_url`) every command
//! waited seconds for a machine that is not there. Here IMDS is asked only when the store is
//! AWS itself, once, with short timeouts: on an EC2 worker it answers within milliseconds.

use std::time::Duration;

use aws_config::environment::region::EnvironmentVariableRegionProvider;
use aws_config::imds;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::region::ProfileFileRegionProvider;

use crate::config::S3Settings;

/// One IMDS attempt's connect and read timeout.
const IMDS_TIMEOUT: Duration = Duration::from_millis(300);

/// The environment variables that give the SDK an endpoint for S3 (besides `s3.endpoint_url`).
const ENDPOINT_VARS: [&str; 2] = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"];

/// `AWS_REGION` / `AWS_DEFAULT_REGION`, then the profile's `region`, then (for AWS only)
/// IMDS.
pub fn chain(s: &S3Settings, env: impl Fn(&str) -> Option<String>) -> RegionProviderChain {
    let mut profile = ProfileFileRegionProvider::builder();
    if let Some(name) = &s.profile {
        profile = profile.profile_name(name);
    }
    let chain = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
        .or_else(profile.build());
    if !asks_imds(s, env) {
        return chain;
    }
    let client = imds::Client::builder()
        .connect_timeout(IMDS_TIMEOUT)
        .read_timeout(IMDS_TIMEOUT)
        .max_attempts(1)
        .build();
    chain.or_else(
        imds::region::ImdsRegionProvider::builder()
            .imds_client(client)
            .build(),
    )
}

/// Whether IMDS may know the region: only for AWS's own endpoints. An S3-compatible store
/// (MinIO, Garage, Ceph) accepts any region, and its machines are rarely EC2 instances.
pub fn asks_imds(s: &S3Settings, env: impl Fn(&str) -> Option<String>) -> bool {
    s.endpoint_url.is_none()
        && ENDPOINT_VARS
            .iter()
            .all(|v| env(v).is_none_or(|e| e.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_is_asked_only_for_aws_itself() {
        let none = |_: &str| None;
        let aws = S3Settings::default();
        assert!(asks_imds(&aws, none));
        let local = S3Settings {
            endpoint_url: Some("http://127.0.0.1:3900".into()),
            ..S3Settings::default()
        };
        assert!(!asks_imds(&local, none));
        let from_env = |v: &str| (v == "AWS_ENDPOINT_URL").then(|| "http://minio:9000".into());
        assert!(!asks_imds(&aws, from_env));
        let empty = |_: &str| Some(String::new());
        assert!(asks_imds(&aws, empty));
    }
}
