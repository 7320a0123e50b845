//! `attache config show`.

use std::process::ExitCode;

use clap::Subcommand;

use super::Context;
use crate::cli::stdout::{out, outln};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the settings in effect (file, environment and flags applied; secrets redacted).
    Show,
}

pub fn run(ctx: &Context, cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Show => {
            match &ctx.config_file {
                Some(f) => outln!("# config file: {}", f.display()),
                None => outln!("# no config file found; defaults and environment"),
            }
            out!("{}", ctx.settings.to_redacted_toml());
            for line in left_to_attache(&ctx.settings) {
                outln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What the settings left to attache come to on this machine, as TOML comments: printing them
/// as settings would change what the shown file loads back as (a content cache that no longer
/// follows `cache.dir`, a thread count that no longer follows the cores).
fn left_to_attache(s: &crate::config::Settings) -> Vec<String> {
    let mut lines = Vec::new();
    if s.cache.content_dir.is_none() {
        lines.push(format!(
            "#   cache.content_dir: {} (<cache.dir>/content)",
            s.cache.content_dir().display()
        ));
    }
    if s.hash.threads == 0 {
        lines.push(format!(
            "#   hash.threads: {} (one per core)",
            s.hash_threads()
        ));
    }
    if s.transfer.runtime_threads == 0 {
        lines.push(format!(
            "#   transfer.runtime_threads: {} (half the cores)",
            s.runtime_threads()
        ));
    }
    if !lines.is_empty() {
        lines.insert(0, "\n# left to attache, on this machine:".to_string());
    }
    lines
}
