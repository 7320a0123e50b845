//! `attache doctor`: check this machine's setup against its store (permissions, endpoint,
//! caches), saying what each failure needs.

use std::process::ExitCode;

use clap::Args;

use super::Context;
use super::transfer_args::{StoreArgs, with_transfer};
use crate::config::Override;
use crate::jobs::doctor::{self, Status};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    attache doctor\n  \
    attache doctor --store s3://farm-bucket/DeadlineCloud --profile render\n\n\
    Exit status: 0 when every required probe passed (warnings allowed), 1 otherwise.")]
pub struct DoctorArgs {
    #[command(flatten)]
    store: StoreArgs,
}

impl DoctorArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.store.overrides(out);
    }
}

pub fn run(ctx: &Context, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let settings = ctx.settings.clone();
    let report = with_transfer(ctx, None, "checking", |t, cancel| async move {
        Ok(doctor::run(&settings, t, &cancel).await?)
    })?;
    if args.store.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let config = match &ctx.config_file {
            Some(f) => f.display().to_string(),
            None => "none (defaults and environment)".into(),
        };
        println!("config file: {config}");
        println!("store:       {}", report.identity);
        println!("cache.dir:   {}", report.cache_dir);
        for p in &report.probes {
            let status = match p.status {
                Status::Ok => "ok     ",
                Status::Failed => "FAILED ",
                Status::Warning => "warning",
            };
            println!("{status} {:<20} {} ({} ms)", p.name, p.detail, p.ms);
            if let Some(needs) = &p.needs {
                println!("        {:<20} needs {needs}", "");
            }
        }
        println!(
            "{}",
            if report.passed {
                "This machine can transfer with this store."
            } else {
                "This machine cannot transfer with this store: see FAILED above."
            }
        );
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
