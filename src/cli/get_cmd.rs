//! `attache get`: materialize manifests from a store into a directory.

use std::path::PathBuf;
use std::process::ExitCode;

use bytesize::ByteSize;
use clap::Args;

use super::Context;
use super::filter_args::{FilterArgs, SizeAgeArgs};
use super::manifest_cmd::read_manifest;
use super::transfer_args::{ContentCacheArgs, StoreArgs, with_transfer};
use crate::cli::stdout::outln;
use crate::config::Override;
use crate::jobs::get;
use crate::jobs::get::{Conflict, GetSpec};
use crate::manifest::merge;
use crate::transfer::download::DownloadReport;

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  attache get shot010.manifest --store s3://farm-bucket/DeadlineCloud --dest /scratch/shot010"
)]
pub struct GetArgs {
    /// Manifests to materialize (merged in order; later wins by path; `-`: standard input).
    #[arg(required = true, value_name = "MANIFEST")]
    manifests: Vec<PathBuf>,
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    dest: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// Download bandwidth cap, e.g. 50MB/s; 0 = unlimited; or a timetable,
    /// "08:00,10MB/s 19:00,off" (replaces bandwidth.schedule)
    /// [config: bandwidth.download].
    #[arg(long, value_name = "RATE")]
    bwlimit: Option<String>,
    /// When a file with other content is already there.
    #[arg(long, value_enum, default_value_t = Conflict::Overwrite)]
    conflict: Conflict,
    /// Show what would be downloaded (files already in place are checked as for a real run);
    /// write and fetch nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    #[command(flatten)]
    content_cache: ContentCacheArgs,
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    size_age: SizeAgeArgs,
}

impl GetArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.store.overrides(out);
        self.content_cache.overrides(out);
        super::bwlimit_flag(out, "download", self.bwlimit.clone());
    }
}

pub fn run(ctx: &Context, args: GetArgs) -> anyhow::Result<ExitCode> {
    let mut manifest = merge(
        args.manifests
            .iter()
            .map(|p| read_manifest(p))
            .collect::<anyhow::Result<Vec<_>>>()?,
    );
    let (pick, bounds) = (args.filter.filter()?, args.size_age.bounds()?);
    let left_out =
        manifest.retain(|e| pick.takes_path(e.path.as_wtf8()) && bounds.takes(e.size, e.mtime_us));
    let settings = ctx.settings.clone();
    let spec = GetSpec {
        record: None,
        for_caller: None,
        replaceable: None,
        manifest,
        dest: args.dest.clone(),
        cache_dir: settings
            .cache
            .hash_cache
            .then(|| settings.cache.dir.clone()),
        conflict: args.conflict,
        check_space: true,
    };
    let report = with_transfer(ctx, None, "downloading", |t, cancel| async move {
        Ok(get::run(spec, t.dry_run_if(args.dry_run), &cancel).await?)
    })?;
    if args.store.json {
        let mut v = serde_json::to_value(&report)?;
        v["left_out"] = left_out.into();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let d = &report.download;
        let verb = super::tense(report.dry_run, "downloaded", "would download");
        let tail = match (report.dry_run, d.refetched) {
            (true, _) => " (dry run: nothing written)".to_string(),
            (false, 0) => String::new(),
            (false, n) => format!(", {n} fetched again"),
        };
        let copies = match d.copied_files {
            0 => String::new(),
            n => format!(", {}", super::counted(n, "copy")),
        };
        let left_out = match left_out {
            0 => String::new(),
            n => format!(", {n} left out by the filters"),
        };
        crate::say!(
            "{}: {} ({}{left_out}) in {:.2} s: {verb} {} ({}){}{copies}, {} already in place{}{}{tail}",
            args.dest.display(),
            super::counted(report.files, "file"),
            ByteSize(report.bytes).display().iec(),
            report.seconds,
            super::counted(d.objects, "object"),
            ByteSize(d.downloaded_bytes).display().iec(),
            not_fetched_again(d),
            report.unchanged_files,
            read_to_check(report.unchanged_read_files),
            conflicts_note(
                report.beside_files,
                report.replaced_files,
                report.skipped_files
            ),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a download had without fetching it, for a summary line: ", N from the content cache
/// (SIZE)" when objects were copied from it, ", kept SIZE an earlier, interrupted run fetched"
/// when partial downloads were fetched on from.
pub fn not_fetched_again(d: &DownloadReport) -> String {
    let mut out = String::new();
    if d.content_cache_files > 0 {
        out += &format!(
            ", {} from the content cache ({})",
            d.content_cache_files,
            ByteSize(d.content_cache_bytes).display().iec()
        );
    }
    if d.resumed_bytes > 0 {
        out += &format!(
            ", kept {} an earlier, interrupted run fetched",
            ByteSize(d.resumed_bytes).display().iec()
        );
    }
    out
}

/// The files with other content a download met, for a summary line, each kind only when
/// there were some: ", 1 copy beside files with other content, 2 with other content
/// replaced, 3 left alone (other content there)".
pub fn conflicts_note(beside: u64, replaced: u64, skipped: u64) -> String {
    let mut out = String::new();
    if beside > 0 {
        let copies = super::counted(beside, "copy");
        out += &format!(", {copies} beside files with other content");
    }
    if replaced > 0 {
        out += &format!(", {replaced} with other content replaced");
    }
    if skipped > 0 {
        out += &format!(", {skipped} left alone (other content there)");
    }
    out
}

/// " (N read to check)" when files in place had to be read to be recognized.
pub fn read_to_check(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} read to check)")
    }
}
