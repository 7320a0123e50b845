//! `attache cleanup`: abort multipart uploads left open in a store.

use std::process::ExitCode;
use std::str::FromStr;

use clap::Args;

use super::transfer_args::{StoreArgs, with_transfer};
use super::{Context, UsageError};
use crate::cli::stdout::outln;
use crate::config::Duration;
use crate::config::Override;
use crate::jobs::cleanup::{self, CleanupSpec};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  attache cleanup --store s3://farm-bucket/DeadlineCloud --dry-run\n  attache cleanup --store s3://farm-bucket/DeadlineCloud --older-than 7d"
)]
pub struct CleanupArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Abort uploads started longer ago than this (e.g. 12h, 7d; a unit is needed) that no
    /// part was written to since. 0 aborts every open upload under the prefix, including ones
    /// other machines are running right now.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    older_than: String,
    /// List what would be aborted; abort nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
}

impl CleanupArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.store.overrides(out);
    }
}

pub fn run(ctx: &Context, args: CleanupArgs) -> anyhow::Result<ExitCode> {
    // A bare number would be seconds: `--older-than 3` meant as days would abort the uploads
    // other machines are running now.
    if args.older_than.trim().parse::<u64>().is_ok_and(|n| n > 0) {
        return Err(UsageError {
            message: format!(
                "--older-than {}: give a unit, e.g. {0}d, {0}h or {0}m (0 alone aborts every open upload)",
                args.older_than.trim()
            ),
        }
        .into());
    }
    let older_than = Duration::from_str(&args.older_than)
        .map_err(|e| UsageError {
            message: format!("--older-than {:?}: {e}", args.older_than),
        })?
        .0;
    let spec = CleanupSpec { older_than };
    let report = with_transfer(ctx, None, "cleaning up", |t, cancel| async move {
        Ok(cleanup::run(spec, t.dry_run_if(args.dry_run), &cancel).await?)
    })?;
    if args.store.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let verb = super::tense(report.dry_run, "aborted", "would abort");
        for u in &report.recorded {
            crate::say!(
                "{verb} {} (upload {}, left open by an earlier run on this machine)",
                u.key,
                u.upload_id
            );
        }
        for u in &report.aborted {
            let started = u
                .initiated_ms
                .and_then(rfc3339)
                .unwrap_or_else(|| "at an unknown time".into());
            crate::say!(
                "{verb} {} (upload {}, started {started})",
                u.key,
                u.upload_id
            );
        }
        for f in &report.failed {
            crate::say_warn!("could not abort: {f}");
        }
        let recorded = match report.recorded_aborted {
            0 => String::new(),
            n => format!("; {verb} {n} this machine's earlier runs left open"),
        };
        let (age, written) = if older_than.is_zero() {
            ("of any age".to_string(), String::new())
        } else {
            (
                format!("started over {} ago", args.older_than),
                format!(
                    ", {} written to within {}",
                    report.kept_written_lately, args.older_than
                ),
            )
        };
        crate::say!(
            "{}: {} open multipart upload(s) under {}: {verb} {} {age}, kept {} younger{written}, {} in progress on this machine{recorded}",
            report.store,
            report.listed,
            report.prefix,
            report.aborted.len(),
            report.kept_younger,
            report.kept_in_progress_here,
        );
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// RFC 3339 UTC of a time in Unix milliseconds.
fn rfc3339(ms: i64) -> Option<String> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).ok()?);
    Some(humantime::format_rfc3339_seconds(t).to_string())
}
