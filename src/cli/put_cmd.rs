//! `attache put`: hash a tree, upload its content, write its manifest.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bytesize::ByteSize;
use clap::Args;
use serde_json::json;

use super::filter_args::{FilterArgs, MarkerArgs, SizeAgeArgs};
use super::transfer_args::{StoreArgs, with_transfer};
use super::{Context, flag};
use crate::cli::stdout::outln;
use crate::config::Override;
use crate::hash::ContentHash;
use crate::jobs::put;

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  attache put ./shot010 --store s3://farm-bucket/DeadlineCloud -o shot010.manifest"
)]
pub struct PutArgs {
    /// The directory whose files to upload.
    #[arg(value_name = "ROOT")]
    root: PathBuf,
    /// Write the manifest to FILE (default, or `-`: stdout).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Upload bandwidth cap, e.g. 50MB/s; 0 = unlimited; or a timetable,
    /// "08:00,10MB/s 19:00,off" (replaces bandwidth.schedule)
    /// [config: bandwidth.upload].
    #[arg(long, value_name = "RATE")]
    bwlimit: Option<String>,
    /// Read every file; neither use nor update the hash cache [config: cache.hash_cache].
    #[arg(long)]
    no_cache: bool,
    /// Upload the targets of symlinks that point outside ROOT instead of refusing them
    /// [config: hash.follow_external_symlinks].
    #[arg(long)]
    follow_external_symlinks: bool,
    /// Hash the tree and ask the store what it lacks; upload nothing (the manifest is still
    /// written).
    #[arg(short = 'n', long)]
    dry_run: bool,
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    markers: MarkerArgs,
    #[command(flatten)]
    size_age: SizeAgeArgs,
}

impl PutArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.store.overrides(out);
        super::bwlimit_flag(out, "upload", self.bwlimit.clone());
        if self.no_cache {
            flag(out, "cache.hash_cache", "--no-cache", Some("false".into()));
        }
        super::hash_cmd::follow_flag(out, self.follow_external_symlinks);
    }
}

pub fn run(ctx: &Context, args: PutArgs) -> anyhow::Result<ExitCode> {
    crate::cli::not_both_on_stdout(&args.output, args.store.json)?;
    crate::cli::check_output(&args.output, false)?;
    let settings = ctx.settings.clone();
    let mut spec = crate::jobs::hash::HashSpec::from_settings(
        &settings,
        vec![args.root.clone()],
        settings.cache.hash_cache,
    );
    args.filter.apply(&mut spec)?;
    args.markers.apply(&mut spec)?;
    spec.scan.size_age = args.size_age.bounds()?;
    let scanned = spec.scan.clone();
    let dry_run = args.dry_run;
    let report = with_transfer(ctx, None, "uploading", |t, cancel| async move {
        Ok(put::run(spec, t.dry_run_if(dry_run), &cancel).await?)
    })?;
    let root = &report.hash.roots[0];
    let bytes = root
        .manifest
        .encode()
        .map_err(|_| crate::cli::no_files(&root.root, &scanned))?;
    let manifest_hash = ContentHash::of(&bytes);
    match crate::cli::output_file(&args.output) {
        Some(path) => crate::fsutil::write_atomic(path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?,
        None if !args.store.json => {
            let mut out = crate::cli::stdout::stdout();
            out.write_all(&bytes)?;
            out.write_all(b"\n")?;
        }
        None => {}
    }
    let u = &report.upload;
    if args.store.json {
        let v = json!({
            "root": root.root.to_string_lossy(),
            "manifest": crate::cli::output_file(&args.output).map(|p| p.to_string_lossy().into_owned()),
            "manifest_hash": manifest_hash.to_hex(),
            "hash": report.hash.stats,
            "upload": u,
            "dry_run": dry_run,
            "seconds": report.seconds,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        crate::say!(
            "{}: {} ({}) -> {}: {} {} ({}, {} multipart), {} already in the store, {} known present (no request){}; {:.2} s",
            root.root.display(),
            super::counted(u.files, "file"),
            ByteSize(root.stats.bytes).display().iec(),
            super::counted(u.objects, "distinct object"),
            super::tense(dry_run, "uploaded", "would upload"),
            u.uploaded_objects,
            ByteSize(u.uploaded_bytes).display().iec(),
            u.multipart_objects,
            u.present_objects,
            u.known_objects,
            super::leftovers_note(
                u.aborted_leftover_uploads,
                u.resumed_uploads,
                u.resumed_bytes
            ),
            report.seconds
        );
        crate::say!(
            "{}",
            super::hash_cmd::summary_line(&report.hash.stats, report.hash.seconds)
        );
    }
    Ok(ExitCode::SUCCESS)
}
