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
            Ok(ExitCode::SUCCESS)
        }
    }
}
