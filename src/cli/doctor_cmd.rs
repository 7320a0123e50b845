//! `attache doctor`: check this machine's setup against its store (permissions, endpoint,
//! caches), saying what each failure needs; with `--daemon`, the daemon's setup (with
//! `--daemon-url`, another machine's).

use std::process::ExitCode;

use clap::Args;

use super::Context;
use super::transfer_args::{StoreArgs, with_transfer};
use crate::config::Override;
use crate::jobs::doctor::{self, DoctorReport, Status};
use crate::jobs::spec::{DoctorJob, JobSpec};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    attache doctor\n  \
    attache doctor --store s3://farm-bucket/DeadlineCloud --profile render\n  \
    attache doctor --daemon      # the daemon's credentials, config and caches\n  \
    attache doctor --daemon-url https://render042:7070 --token-file ~/farm.token\n\n\
    Exit status: 0 when every required probe passed (warnings allowed), 1 otherwise.")]
pub struct DoctorArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Run the probes in the attache daemon (also: ATTACHE_DAEMON=1): its config,
    /// credentials and caches, which a service's may not share with yours.
    #[arg(long)]
    daemon: bool,
    /// With --daemon-url: run the probes in another machine's daemon (a worker seen from a
    /// wrangler's desk).
    #[command(flatten)]
    remote: super::daemon_cmd::DaemonUrlArgs,
}

impl DoctorArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.store.overrides(out);
    }
}

pub fn run(ctx: &Context, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let remote = args.remote.remote();
    let (report, by) = if remote || super::through_daemon(args.daemon) {
        for flag in args.store.local_only_flags() {
            tracing::warn!(
                "{flag} does not apply to a job run by the daemon: its own config decides (set it there)"
            );
        }
        let spec = JobSpec::Doctor(DoctorJob {
            store: args.store.store.clone(),
        });
        let at = args.remote.address(&ctx.settings)?;
        let out = crate::daemon::client::run_job_at(&at, &ctx.settings, &spec, None)?;
        let report: DoctorReport = serde_json::from_value(out)?;
        let by = format!("the daemon at {} (its own config)", at.describe());
        (report, by)
    } else {
        let settings = ctx.settings.clone();
        let report = with_transfer(ctx, None, "checking", |t, cancel| async move {
            Ok(doctor::run(&settings, t, &cancel).await?)
        })?;
        let by = match &ctx.config_file {
            Some(f) => format!("this command, config file {}", f.display()),
            None => "this command, no config file (defaults and environment)".into(),
        };
        (report, by)
    };
    if args.store.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &by);
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &DoctorReport, by: &str) {
    println!("checked by:  {by}");
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
