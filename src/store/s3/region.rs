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

/// `AWS_REGION` / `AWS_DEFAULT_REGION`, then the profile's `region`, then, with `ask_imds`
/// (for AWS itself: an S3-compatible store accepts any region, and its machines are rarely
/// EC2 instances), IMDS.
pub fn chain(s: &S3Settings, ask_imds: bool) -> RegionProviderChain {
    let mut profile = ProfileFileRegionProvider::builder();
    if let Some(name) = &s.profile {
        profile = profile.profile_name(name);
    }
    let chain = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
        .or_else(profile.build());
    if !ask_imds {
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
