//! `attache hash`: scan and hash trees into manifests.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use bytesize::ByteSize;
use clap::Args;
use serde_json::json;

use super::filter_args::{FilterArgs, MarkerArgs, SizeAgeArgs};
use super::progress_bar::Bar;
use super::{Context, UsageError, flag, run_cancellable};
use crate::config::Override;
use crate::hash::ContentHash;
use crate::hash::parallel::HashStats;
use crate::jobs::hash::{HashReport, HashSpec, run};
use crate::progress::Progress;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  attache hash ./shot010 -o shot010.manifest\n  attache hash /proj/a /proj/b -o manifests/ --json"
)]
pub struct HashArgs {
    /// Directories to hash; each becomes one manifest.
    #[arg(required = true, value_name = "ROOT")]
    roots: Vec<PathBuf>,
    /// Write the manifest to FILE. With several roots, or when PATH is a directory, write
    /// PATH/<xxh128(root)>_input for each root (the name Deadline gives input manifests).
    /// Default, or `-o -`: the manifest goes to stdout (one line per root).
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Print a JSON summary on stdout (manifests are only written with -o).
    #[arg(long)]
    json: bool,
    /// Read every file; neither use nor update the hash cache [config: cache.hash_cache].
    #[arg(long)]
    no_cache: bool,
    /// Hash the targets of symlinks that point outside the root instead of refusing them
    /// [config: hash.follow_external_symlinks].
    #[arg(long)]
    follow_external_symlinks: bool,
    /// Hashing threads, 0 = one per core [config: hash.threads].
    #[arg(long, value_name = "N")]
    threads: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    markers: MarkerArgs,
    #[command(flatten)]
    size_age: SizeAgeArgs,
}

impl HashArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        if self.no_cache {
            flag(out, "cache.hash_cache", "--no-cache", Some("false".into()));
        }
        follow_flag(out, self.follow_external_symlinks);
        flag(out, "hash.threads", "--threads", self.threads.clone());
    }
}

/// `-o DIR` of several roots: made if missing (`mkdir -p`), and one a file can be written in;
/// a file there is bad usage, said before any hashing.
fn manifests_dir(dir: &std::path::Path) -> Result<(), UsageError> {
    let refused = |why: String| UsageError {
        message: format!(
            "-o {}: {why}; with several roots (or a PATH ending in /), -o names the directory each root's manifest is written in, as <xxh128(root)>_input",
            dir.display()
        ),
    };
    if dir.exists() && !dir.is_dir() {
        return Err(refused("is a file".into()));
    }
    std::fs::create_dir_all(dir)
        .and_then(|()| crate::fsutil::can_write_in(dir))
        .map_err(|e| refused(format!("cannot write in it: {e}")))
}

/// `--follow-external-symlinks`, of the commands that hash a tree.
pub fn follow_flag(out: &mut Vec<Override>, given: bool) {
    if given {
        flag(
            out,
            "hash.follow_external_symlinks",
            "--follow-external-symlinks",
            Some("true".into()),
        );
    }
}

pub fn run_cmd(ctx: &Context, args: HashArgs) -> anyhow::Result<ExitCode> {
    crate::cli::not_both_on_stdout(&args.output, args.json)?;
    let output = crate::cli::output_file(&args.output);
    // A directory to write each root's manifest in: several roots, or PATH a directory (or
    // spelled as one, `manifests/`). Made, or checked, before any hashing.
    let dir_mode = match output {
        Some(o) => args.roots.len() > 1 || o.is_dir() || o.as_os_str().as_bytes().ends_with(b"/"),
        None => false,
    };
    match output {
        Some(o) if dir_mode => manifests_dir(o)?,
        _ => crate::cli::check_output(&args.output, false)?,
    }
    let mut spec = HashSpec::from_settings(
        &ctx.settings,
        args.roots.clone(),
        ctx.settings.cache.hash_cache,
    );
    args.filter.apply(&mut spec)?;
    args.markers.apply(&mut spec)?;
    spec.scan.size_age = args.size_age.bounds()?;
    let scanned = spec.scan.clone();
    let progress = Arc::new(Progress::default());
    let report = {
        let _bar = Bar::start("hashing", progress.clone(), &ctx.settings.log);
        let p = progress.clone();
        run_cancellable(move |cancel| run(&spec, &cancel, &p))??
    };

    let mut roots_json = Vec::new();
    let mut stdout = crate::cli::stdout::stdout();
    for r in &report.roots {
        let bytes = r
            .manifest
            .encode()
            .map_err(|_| crate::cli::no_files(&r.root, &scanned))?;
        let manifest_hash = ContentHash::of(&bytes);
        let written = match output {
            Some(o) => {
                let path = if dir_mode {
                    o.join(crate::store::layout::input_manifest_name(&r.root))
                } else {
                    o.to_path_buf()
                };
                crate::fsutil::write_atomic(&path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
            None => {
                if !args.json {
                    stdout.write_all(&bytes)?;
                    stdout.write_all(b"\n")?;
                }
                None
            }
        };
        if !args.json {
            crate::say!(
                "{}: {}, {}{}, manifest {}",
                r.root.display(),
                super::counted(r.stats.files, "file"),
                ByteSize(r.stats.bytes).display().iec(),
                written
                    .as_ref()
                    .map(|p| format!(" -> {}", p.display()))
                    .unwrap_or_default(),
                manifest_hash
            );
        }
        roots_json.push(json!({
            "root": r.root.to_string_lossy(),
            "manifest": written.map(|p| p.to_string_lossy().into_owned()),
            "manifest_hash": manifest_hash.to_hex(),
            "stats": r.stats,
        }));
    }
    if args.json {
        let mut summary = summary_json(&report);
        summary["roots"] = roots_json.into();
        writeln!(stdout, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        crate::say!("{}", summary_line(&report.stats, report.seconds));
    }
    Ok(ExitCode::SUCCESS)
}

fn summary_json(r: &HashReport) -> serde_json::Value {
    let s = &r.stats;
    let mut v = serde_json::to_value(s).expect("plain counters");
    v["seconds"] = json!(r.seconds);
    v["gib_per_s"] = json!(s.bytes as f64 / (1u64 << 30) as f64 / r.seconds.max(1e-9));
    v["files_per_s"] = json!(s.files as f64 / r.seconds.max(1e-9));
    v
}

/// One line a person reads: how much, how fast, and how much the cache saved.
pub fn summary_line(s: &HashStats, seconds: f64) -> String {
    format!(
        "{} ({}) in {:.2} s: read {} ({}), {} from the hash cache; {:.2} GiB/s, {:.0} files/s",
        super::counted(s.files, "file"),
        ByteSize(s.bytes).display().iec(),
        seconds,
        super::counted(s.hashed_files, "file"),
        ByteSize(s.hashed_bytes).display().iec(),
        s.cached_files,
        s.bytes as f64 / (1u64 << 30) as f64 / seconds.max(1e-9),
        s.files as f64 / seconds.max(1e-9),
    )
}
