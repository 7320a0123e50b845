//! `attache check`: does a store hold the content of manifests, or of a job's inputs?

use std::path::PathBuf;
use std::process::ExitCode;

use bytesize::ByteSize;
use clap::Args;

use super::Context;
use super::job_manifest_args::JobManifestArgs;
use super::manifest_cmd::read_manifest;
use super::transfer_args::{StoreArgs, with_transfer};
use crate::cli::stdout::outln;
use crate::config::Override;
use crate::jobs::check::{self, CheckReport, CheckSpec, Lookup, Problem};
use crate::manifest::printable;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    attache check shot010.manifest --store s3://farm-bucket/DeadlineCloud\n  \
    attache check --attachments attachments.json --store s3://farm-bucket/DeadlineCloud --deep\n  \
    attache check --farm-id farm-… --queue-id queue-… --job-id job-…   # the job's outputs\n\n\
    Exit status: 0 when the store holds everything, 1 when something is missing or damaged.")]
pub struct CheckArgs {
    /// Manifest files whose content to look for in the store (`-`: standard input).
    #[arg(value_name = "MANIFEST")]
    manifests: Vec<PathBuf>,
    #[command(flatten)]
    job: JobManifestArgs,
    /// Fetch every object and check its hash (reads every byte; default: ask each object's
    /// size, by listing or a HEAD each).
    #[arg(long)]
    deep: bool,
    /// How to ask for each object's size: `list` the store's content (a request answers for
    /// up to 1,000 objects), a `head` request per object, or `auto`: list an S3 store for
    /// 1,000 objects or more while its pages answer for 16 each or more, else HEADs.
    #[arg(
        long,
        value_enum,
        value_name = "HOW",
        default_value_t,
        conflicts_with = "deep"
    )]
    lookup: Lookup,
    /// With --deep: delete the objects whose content does not match their hash, so that the
    /// next upload of those files sends them again.
    #[arg(long, requires = "deep")]
    delete_damaged: bool,
    /// Download bandwidth cap for --deep, e.g. 50MB/s; 0 = unlimited; or a timetable,
    /// "08:00,10MB/s 19:00,off" (replaces bandwidth.schedule)
    /// [config: bandwidth.download].
    #[arg(long, value_name = "RATE")]
    bwlimit: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

impl CheckArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.store.overrides(out);
        super::bwlimit_flag(out, "download", self.bwlimit.clone());
    }
}

pub fn run(ctx: &Context, args: CheckArgs) -> anyhow::Result<ExitCode> {
    args.job.require_some(&args.manifests, "MANIFEST")?;
    let manifests = args
        .manifests
        .iter()
        .map(|p| read_manifest(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let by_ids = args.job.outputs_of().is_some();
    let spec = CheckSpec {
        manifests,
        fetch: args.job.inputs()?,
        outputs_of: args.job.outputs_of(),
        deep: args.deep,
        delete_damaged: args.delete_damaged,
        lookup: args.lookup,
    };
    let label = if args.deep { "fetching" } else { "checking" };
    let report = with_transfer(ctx, None, label, |t, cancel| async move {
        Ok(check::run(spec, t, &cancel).await?)
    })?;
    if args.store.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report)?;
    }
    if by_ids && report.manifests == 0 && report.unusable_manifests.is_empty() {
        crate::say_warn!(
            "Nothing was checked: no manifest of the job was found in {}. Check the farm, queue, job, step and task ids and the store (a job's outputs are there once a task has published them).",
            report.store
        );
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(r: &CheckReport) -> std::io::Result<()> {
    for m in &r.unusable_manifests {
        // The error names the manifest's key.
        outln!("manifest  {}", m.error);
    }
    for p in &r.missing {
        outln!(
            "missing   {}  ({}; {})",
            p.key,
            ByteSize(p.size).display().iec(),
            needed_by(p)
        );
    }
    for p in &r.wrong_size {
        outln!(
            "size      {}  (the store has {}, the manifests say {}; {})",
            p.key,
            ByteSize(p.found_size.unwrap_or(0)).display().iec(),
            ByteSize(p.size).display().iec(),
            needed_by(p)
        );
    }
    for p in &r.damaged {
        outln!(
            "damaged   {}  (its content hashes to {}, {}{}; {})",
            p.key,
            p.found_hash.map_or_else(|| "?".to_string(), |h| h.to_hex()),
            ByteSize(p.found_size.unwrap_or(0)).display().iec(),
            match (p.deleted, &p.delete_error) {
                (true, _) => "; deleted".to_string(),
                (false, Some(e)) => format!("; not deleted: {e}"),
                (false, None) => String::new(),
            },
            needed_by(p)
        );
    }
    let how = if r.deep {
        format!(
            "fetched and hashed {}",
            ByteSize(r.downloaded_bytes).display().iec()
        )
    } else {
        format!(
            "asked for each object's size with {} listing page(s) and {} HEAD(s)",
            r.list_requests, r.head_requests
        )
    };
    outln!(
        "{}: {} of {} objects ({}) in {}, for {} files in {} manifest(s){}; {} missing, {} other size, {} damaged, {} manifest(s) unusable; {how} in {:.2} s",
        if r.passed { "OK" } else { "FAILED" },
        r.present,
        r.objects,
        ByteSize(r.bytes).display().iec(),
        r.store,
        r.files,
        r.manifests,
        if r.output_tasks > 0 {
            format!(" (outputs of {} task(s))", r.output_tasks)
        } else {
            String::new()
        },
        r.missing.len(),
        r.wrong_size.len(),
        r.damaged.len(),
        r.unusable_manifests.len(),
        r.seconds,
    );
    if !r.missing.is_empty() || r.damaged.iter().any(|p| p.deleted) {
        crate::say!(
            "To upload them again, run the job's submit (or attache put ROOT) on a machine that has the files. This machine now knows they are not in the store; another one may trust its record of having uploaded them: run it there with ATTACHE_TRANSFER__KNOWN_PRESENT_TTL=0, so that it asks the store about every object."
        );
    }
    if r.damaged
        .iter()
        .any(|p| !p.deleted && p.delete_error.is_none())
    {
        crate::say!(
            "A damaged object stays in the way of a new upload of its file (the store says it has it): run again with --delete-damaged, then upload the files again."
        );
    }
    if !r.wrong_size.is_empty() && !r.deep {
        crate::say!(
            "Run again with --deep to find out whether the objects or the manifests are wrong."
        );
    }
    Ok(())
}

/// "needed by 3 files: a.exr, b.exr, c.exr".
fn needed_by(p: &Problem) -> String {
    let more = p.files.saturating_sub(p.paths.len() as u64);
    let tail = if more > 0 {
        format!(", and {more} more")
    } else {
        String::new()
    };
    let paths: Vec<_> = p.paths.iter().map(|p| printable(p)).collect();
    format!("needed by {} file(s): {}{tail}", p.files, paths.join(", "))
}
