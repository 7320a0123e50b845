//! Flags shared by the commands that talk to a store.

use clap::Args;

use super::flag;
use crate::config::Override;

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Store: s3://bucket/rootPrefix or file:///dir [config: store.url]. S3 access comes from
    /// the [s3] settings and the AWS chain (env, profile, instance role).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Files transferred at once [config: transfer.workers].
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// Cap on open connections to the store [config: s3.max_connections].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl StoreArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        flag(out, "store.url", "--store", self.store.clone());
        flag(out, "transfer.workers", "--workers", self.workers.clone());
        flag(
            out,
            "s3.max_connections",
            "--max-connections",
            self.max_connections.clone(),
        );
    }
}
