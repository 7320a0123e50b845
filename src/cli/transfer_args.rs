//! Flags shared by the commands that talk to a store.

use std::sync::Arc;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::progress_bar::Bar;
use super::{Context, UsageError, flag, run_async};
use crate::config::Override;
use crate::jobs::setup;
use crate::progress::Progress;
use crate::transfer::Transfer;
use crate::transfer::limiter::Bandwidth;

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Store: s3://bucket/rootPrefix or file:///dir [config: store.url]. S3 access comes from
    /// the [s3] settings and the AWS chain (env, profile, instance role).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// How many files are transferred at once, as rclone's --transfers (`cleanup`: uploads
    /// aborted at once) [config: transfer.workers].
    #[arg(long, value_name = "N", visible_alias = "transfers")]
    pub workers: Option<String>,
    /// Cap on open connections to the store [config: s3.max_connections].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// S3-compatible store's endpoint, e.g. http://minio.lan:9000, as aws-cli's flag
    /// [config: s3.endpoint_url].
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Region to sign requests for [config: s3.region].
    #[arg(long, value_name = "NAME")]
    pub region: Option<String>,
    /// AWS profile for credentials and region (~/.aws/config, ~/.aws/credentials)
    /// [config: s3.profile].
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl StoreArgs {
    /// The flags given that set transfer settings (all but --store and --json).
    pub fn local_only_flags(&self) -> Vec<&'static str> {
        [
            ("--workers", self.workers.is_some()),
            ("--max-connections", self.max_connections.is_some()),
            ("--endpoint-url", self.endpoint_url.is_some()),
            ("--region", self.region.is_some()),
            ("--profile", self.profile.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }

    pub fn overrides(&self, out: &mut Vec<Override>) {
        flag(out, "store.url", "--store", self.store.clone());
        flag(out, "transfer.workers", "--workers", self.workers.clone());
        flag(
            out,
            "s3.max_connections",
            "--max-connections",
            self.max_connections.clone(),
        );
        flag(
            out,
            "s3.endpoint_url",
            "--endpoint-url",
            self.endpoint_url.clone(),
        );
        flag(out, "s3.region", "--region", self.region.clone());
        flag(out, "s3.profile", "--profile", self.profile.clone());
    }
}

/// `--no-content-cache`, for the commands that fetch objects (and `sync-outputs`, which keeps
/// its outputs in the content cache for the worker's next task).
#[derive(Debug, Args)]
pub struct ContentCacheArgs {
    /// Neither take objects from the content cache nor put any in it, this run only (for a
    /// one-off job that would push a farm's shared textures out) [config: cache.content_size = 0].
    #[arg(long)]
    pub no_content_cache: bool,
}

impl ContentCacheArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        if self.no_content_cache {
            flag(
                out,
                "cache.content_size",
                "--no-content-cache",
                Some("0".into()),
            );
        }
    }

    /// The flag, when given (a job run by the daemon does not see it).
    pub fn given(&self) -> Option<&'static str> {
        self.no_content_cache.then_some("--no-content-cache")
    }
}

/// Runs a transfer job: opens the configured store, shows a progress bar labelled `label`,
/// cancels on Ctrl-C. A store that cannot be opened is a configuration error (exit 2).
pub fn with_transfer<T, F, Fut>(
    ctx: &Context,
    store: Option<String>,
    label: &'static str,
    job: F,
) -> anyhow::Result<T>
where
    F: FnOnce(Arc<Transfer>, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let settings = ctx.settings.clone();
    let progress = Arc::new(Progress::default());
    let _bar = Bar::start(label, progress.clone(), &settings.log);
    run_async(settings.runtime_threads(), |cancel| async move {
        let bandwidth = Arc::new(Bandwidth::new(&settings.bandwidth));
        if !settings.bandwidth.schedule.is_empty() {
            // A long transfer follows the timetable; the task ends with the command.
            let (b, s) = (bandwidth.clone(), settings.bandwidth.clone());
            tokio::spawn(async move { b.follow_schedule(|| s.clone()).await });
        }
        let url = store.unwrap_or_else(|| settings.store.url.clone());
        // Opening may be held too (the known-present index locked by another process).
        let opened = setup::transfer_for(&url, &settings, bandwidth, progress);
        let t = crate::transfer::cancellable(&cancel, opened)
            .await?
            .map_err(|e| UsageError {
                message: e.to_string(),
            })?;
        job(t, cancel).await
    })?
}
