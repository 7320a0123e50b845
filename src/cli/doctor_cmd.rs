//! `attache doctor`: check this machine's setup against its store (permissions, endpoint,
//! caches), saying what each failure needs; with `--daemon`, the daemon's setup (with
//! `--daemon-url`, another machine's).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::Context;
use super::daemon_cmd::ask_all;
use super::transfer_args::{StoreArgs, with_transfer};
use crate::cli::stdout::outln;
use crate::config::Override;
use crate::daemon::client::{DaemonAddress, HttpMethod, call, call_with};
use crate::jobs::doctor::{self, DoctorReport, Status};
use crate::jobs::spec::{DoctorJob, JobSpec};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    attache doctor\n  \
    attache doctor --store s3://farm-bucket/DeadlineCloud --profile render\n  \
    attache doctor --daemon      # the daemon's credentials, config and caches\n  \
    attache doctor --daemon-url https://render042:7070 --token-file ~/farm.token\n  \
    attache doctor --daemon-url \"$FARM\"   # several daemons: one line each\n\n\
    Exit status: 0 when every required probe passed (warnings allowed), 1 otherwise.")]
pub struct DoctorArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Run the probes in the attache daemon (also: ATTACHE_DAEMON=1): its config,
    /// credentials and caches, which a service's may not share with yours.
    #[arg(long)]
    daemon: bool,
    /// With --daemon-url: run the probes in another machine's daemon (a worker seen from a
    /// wrangler's desk); with several, in each at once, one line each.
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
        let at = match args.remote.addresses(&ctx.settings)?.as_slice() {
            [one] => one.clone(),
            several => return on_several(several, &spec, args.store.json),
        };
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
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &by)?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The probes in each of several daemons at once (a farm from a wrangler's desk): a line each,
/// the failed probes and what they need below it; `--json`, their reports with the daemon's
/// URL. Exit 1 when one failed or gave no report (unreachable, or its job failed: said on
/// stderr).
fn on_several(daemons: &[DaemonAddress], spec: &JobSpec, json: bool) -> anyhow::Result<ExitCode> {
    let spec = serde_json::to_value(spec)?;
    let (reports, unasked) = ask_all(daemons, |at| doctor_at(at, &spec))?;
    let passed = reports.iter().filter(|(_, r)| r.passed).count();
    if json {
        let all: Vec<_> = reports
            .iter()
            .map(|(at, r)| serde_json::json!({"daemon": at.describe(), "report": r}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for (at, r) in &reports {
            let warnings = r.probes.iter().filter(|p| p.status == Status::Warning);
            outln!(
                "{:<7} {}  {}{}",
                if r.passed { "ok" } else { "FAILED" },
                at.describe(),
                r.identity,
                match warnings.count() {
                    0 => String::new(),
                    n => format!(
                        " ({n} warning(s): attache doctor --daemon-url {})",
                        at.describe()
                    ),
                }
            );
            for p in r.probes.iter().filter(|p| p.status == Status::Failed) {
                outln!("        {}: {}", p.name, p.detail);
                if let Some(needs) = &p.needs {
                    outln!("        needs {needs}");
                }
            }
        }
        outln!(
            "{passed} of {} daemons can transfer with their store{}.",
            daemons.len(),
            match daemons.len() - reports.len() {
                0 => String::new(),
                n => format!(" ({n} gave no report: see above)"),
            }
        );
    }
    Ok(if passed == daemons.len() && !unasked {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the doctor job in the daemon at `at` and waits for its report, quietly (several run
/// at once: no progress bar each).
fn doctor_at(at: &DaemonAddress, spec: &serde_json::Value) -> anyhow::Result<DoctorReport> {
    let created = call_with(at, HttpMethod::POST, "/v1/jobs", Some(spec))?;
    let id = created["id"].as_str().unwrap_or_default();
    // Each probe has its own time limit; this bounds a daemon that stops answering.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = call(at, HttpMethod::GET, &format!("/v1/jobs/{id}"))?;
        match j["state"].as_str() {
            Some("succeeded") => return Ok(serde_json::from_value(j["result"].clone())?),
            Some("queued" | "running") if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Some("queued" | "running") => {
                anyhow::bail!("its doctor job {id} did not end within 120 s")
            }
            state => anyhow::bail!(
                "its doctor job {id} {}: {}",
                state.unwrap_or("ended"),
                j["error"].as_str().unwrap_or_default()
            ),
        }
    }
}

fn print_report(report: &DoctorReport, by: &str) -> std::io::Result<()> {
    outln!("checked by:  {by}");
    outln!("store:       {}", report.identity);
    outln!("cache.dir:   {}", report.cache_dir);
    for p in &report.probes {
        let status = match p.status {
            Status::Ok => "ok     ",
            Status::Failed => "FAILED ",
            Status::Warning => "warning",
        };
        outln!("{status} {:<20} {} ({} ms)", p.name, p.detail, p.ms);
        if let Some(needs) = &p.needs {
            outln!("        {:<20} needs {needs}", "");
        }
    }
    outln!(
        "{}",
        if report.passed {
            "This machine can transfer with this store."
        } else {
            "This machine cannot transfer with this store: see FAILED above."
        }
    );
    Ok(())
}
