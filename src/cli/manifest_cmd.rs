//! `attache manifest cat|diff|verify`; `cat` reads a job's manifests from its store too.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::filter_args::{FilterArgs, MarkerArgs, SizeAgeArgs};
use super::job_manifest_args::JobManifestArgs;
use super::progress_bar::Bar;
use super::transfer_args::{StoreArgs, with_transfer};
use super::{Context, flag, run_cancellable};
use crate::config::Override;
use crate::jobs::{job_manifests, verify};
use crate::manifest::{Manifest, ManifestEntry, ReadError, decode_from, diff, merge, printable};
use crate::progress::Progress;

#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Print the files of manifests (hash, size, mtime, path): manifest files, or a job's in
    /// its store (--attachments: its inputs; --job-id: its tasks' outputs).
    Cat(Box<CatArgs>),
    /// Show files added, changed and removed between two manifests.
    Diff {
        /// The manifest before (`-`: standard input).
        old: PathBuf,
        /// The manifest after (`-`: standard input).
        new: PathBuf,
        /// Print the differences as JSON.
        #[arg(long)]
        json: bool,
        /// Exit with 1 when the manifests differ (like `git diff --exit-code`).
        #[arg(long)]
        exit_code: bool,
    },
    /// Re-hash a directory and report where it differs from the manifests (merged in order,
    /// later wins). Exits 1 when a file is missing or its content differs.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    attache manifest cat shot010.manifest\n  \
    attache manifest cat --attachments attachments.json        # the job's inputs, from the store\n  \
    attache manifest cat --farm-id farm-… --queue-id queue-… --job-id job-… --step-id step-…\n  \
    attache manifest cat shot010.manifest --min-size 1GiB       # the huge files\n\n\
    --json prints one object per file, on its own line (with the manifest's key, for one from the store).")]
pub struct CatArgs {
    /// Manifest files (`-`: standard input).
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    job: JobManifestArgs,
    #[command(flatten)]
    store: StoreArgs,
    /// Only the files these take, as `get` picks them (the config's hash.* not applying).
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    size_age: SizeAgeArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Manifests to check the directory against (`-`: standard input).
    #[arg(required = true, value_name = "MANIFEST")]
    manifests: Vec<PathBuf>,
    /// The directory the manifests describe.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Trust the hash cache for files it knows (default: read every file).
    #[arg(long)]
    use_cache: bool,
    /// Also fail on extra files and on mtimes that differ.
    #[arg(long)]
    strict: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Hashing threads, 0 = one per core [config: hash.threads].
    #[arg(long, value_name = "N")]
    threads: Option<String>,
    /// Follow symlinks that point outside the root [config: hash.follow_external_symlinks].
    #[arg(long)]
    follow_external_symlinks: bool,
    /// Verify only part of the tree: the filters (the config's hash.exclude, include and
    /// filter, and these) pick among the manifests' files and the files on disk alike.
    #[command(flatten)]
    filter: FilterArgs,
    // A directory holding a marker file on disk is left out on both sides too.
    #[command(flatten)]
    markers: MarkerArgs,
}

impl ManifestCommand {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        if let ManifestCommand::Cat(c) = self {
            c.store.overrides(out);
        }
        if let ManifestCommand::Verify(v) = self {
            flag(out, "hash.threads", "--threads", v.threads.clone());
            super::hash_cmd::follow_flag(out, v.follow_external_symlinks);
        }
    }
}

pub fn run(ctx: &Context, cmd: ManifestCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ManifestCommand::Cat(c) => cat(ctx, *c),
        ManifestCommand::Diff {
            old,
            new,
            json,
            exit_code,
        } => {
            let d = diff(&read_manifest(&old)?, &read_manifest(&new)?);
            let mut out = crate::cli::stdout::stdout();
            if json {
                let v = json!({
                    "added": d.added.iter().map(entry_json).collect::<Vec<_>>(),
                    "changed": d.changed.iter().map(|(a, b)| json!({"old": entry_json(a), "new": entry_json(b)})).collect::<Vec<_>>(),
                    "removed": d.removed.iter().map(entry_json).collect::<Vec<_>>(),
                });
                // Through a string: serde_json's error would hide a closed stdout.
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                for e in &d.added {
                    writeln!(out, "+ {}  ({} bytes, {})", line(&e.path), e.size, e.hash)?;
                }
                for (a, b) in &d.changed {
                    writeln!(out, "~ {}  ({})", line(&b.path), change_summary(a, b))?;
                }
                for e in &d.removed {
                    writeln!(out, "- {}", line(&e.path))?;
                }
                writeln!(
                    out,
                    "{} added, {} changed, {} removed",
                    d.added.len(),
                    d.changed.len(),
                    d.removed.len()
                )?;
            }
            Ok(if exit_code && !d.is_empty() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        ManifestCommand::Verify(v) => verify_cmd(ctx, v),
    }
}

/// Reads and decodes a manifest file as it is read; errors name the file. `-` is standard
/// input (`attache hash DIR | attache manifest diff old.manifest -`), read once per command.
pub fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    static STDIN_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let stdin = path.as_os_str() == "-";
    let shown = match stdin {
        true => "- (standard input)".to_string(),
        false => path.display().to_string(),
    };
    let cannot_read = || format!("cannot read manifest {shown}");
    let decoded = if stdin {
        if STDIN_TAKEN.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return Err(super::UsageError {
                message: "manifest `-` (standard input) is given twice: it can be read once; \
                          write one of them to a file"
                    .into(),
            }
            .into());
        }
        let stdin = std::io::stdin();
        // A `-` typed at a prompt would wait for a manifest typed in: say what it is for.
        if std::io::IsTerminal::is_terminal(&stdin) {
            return Err(super::UsageError {
                message: "manifest `-` reads standard input, which is a terminal here: pipe a \
                          manifest in (`attache put DIR | attache get - --dest DIR`), or give \
                          its file"
                    .into(),
            }
            .into());
        }
        decode_from(stdin.lock())
    } else {
        decode_from(File::open(path).with_context(cannot_read)?)
    };
    decoded.map_err(|e| match e {
        ReadError::Io(e) => anyhow::Error::new(e).context(cannot_read()),
        ReadError::Decode(e) => {
            // A job's attachments JSON given where a manifest goes: say which flag takes it.
            let hint = if !stdin && looks_like_attachments(path) {
                " (it is a job's attachments JSON: `manifest cat` and `check` take it with --attachments FILE, `sync-inputs --attachments FILE` materializes it)"
            } else {
                ""
            };
            anyhow::Error::new(e).context(format!("manifest {shown} is not usable{hint}"))
        }
    })
}

/// Whether the file at `path` is a JSON object with a `manifests` list, as an attachments
/// file is.
fn looks_like_attachments(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|v| v["manifests"].is_array())
}

/// The manifests named: files, then a job's fetched from its store (one that cannot be used
/// is said on stderr, exit 1, and the others still printed).
fn cat(ctx: &Context, args: CatArgs) -> anyhow::Result<ExitCode> {
    args.job.require_some(&args.files, "manifest")?;
    let (pick, bounds) = (args.filter.filter()?, args.size_age.bounds()?);
    // Each with what names it: the file, or the store's key.
    let mut all: Vec<(String, Manifest, bool)> = Vec::new();
    for file in &args.files {
        all.push((file.display().to_string(), read_manifest(file)?, false));
    }
    let mut unusable = false;
    if args.job.any() {
        let inputs = args.job.inputs()?;
        let outputs_of = args.job.outputs_of();
        let fetched = with_transfer(ctx, None, "fetching", |t, cancel| async move {
            Ok(job_manifests::fetch(&t, &inputs, outputs_of.as_ref(), &cancel).await?)
        })?;
        for (key, m) in fetched.manifests {
            match m {
                Ok(m) => all.push((key, m, true)),
                Err(e) => {
                    crate::say_error!("{key}: {e}");
                    unusable = true;
                }
            }
        }
        if args.job.job_id.is_some() && fetched.output_tasks == 0 {
            crate::say!("no task of the job has published outputs (yet)");
        }
    }
    let mut out = crate::cli::stdout::stdout();
    let count = all.len();
    for (name, m, from_store) in &mut all {
        let left_out =
            m.retain(|e| pick.takes_path(e.path.as_wtf8()) && bounds.takes(e.size, e.mtime_us));
        if args.store.json {
            for e in m.entries() {
                let mut v = entry_json(e);
                if *from_store {
                    v["manifest"] = name.as_str().into();
                }
                writeln!(out, "{}", serde_json::to_string(&v)?)?;
            }
            continue;
        }
        if count > 1 || *from_store {
            writeln!(out, "# {name}")?;
        }
        for e in m.entries() {
            writeln!(
                out,
                "{}  {:>12}  {}  {}",
                e.hash,
                e.size,
                format_mtime(e.mtime_us),
                line(&e.path)
            )?;
        }
        let left_out = match left_out {
            0 => String::new(),
            n => format!(" ({n} left out by the filters)"),
        };
        writeln!(
            out,
            "# {}, {}{left_out}",
            super::counted(m.len() as u64, "file"),
            super::counted(m.total_size(), "byte")
        )?;
    }
    Ok(match unusable {
        true => ExitCode::FAILURE,
        false => ExitCode::SUCCESS,
    })
}

fn verify_cmd(ctx: &Context, v: VerifyArgs) -> anyhow::Result<ExitCode> {
    let mut expected = merge(
        v.manifests
            .iter()
            .map(|p| read_manifest(p))
            .collect::<anyhow::Result<Vec<_>>>()?,
    );
    // As `get` places it: of a path listed twice, the later entry.
    expected.keep_one_per_path();
    expected.check_tree().map_err(|e| {
        let named: Vec<_> = v
            .manifests
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        anyhow::anyhow!("{}: {e}", named.join(", "))
    })?;
    let mut spec = crate::jobs::hash::HashSpec::from_settings(
        &ctx.settings,
        vec![v.root.clone()],
        v.use_cache,
    );
    v.filter.apply(&mut spec)?;
    v.markers.apply(&mut spec)?;
    let progress = Arc::new(Progress::default());
    let report = {
        let _bar = Bar::start("verifying", progress.clone(), &ctx.settings.log);
        let p = progress.clone();
        run_cancellable(move |cancel| verify::run(expected, &spec, &cancel, &p))??
    };
    let passed = report.passed(v.strict);
    let mut out = crate::cli::stdout::stdout();
    let pairs = |list: &[(ManifestEntry, ManifestEntry)]| {
        list.iter()
            .map(|(a, b)| json!({"expected": entry_json(a), "found": entry_json(b)}))
            .collect::<Vec<_>>()
    };
    if v.json {
        let j = json!({
            "root": report.root.to_string_lossy(),
            "passed": passed,
            "checked": report.checked,
            "missing": report.missing.iter().map(entry_json).collect::<Vec<_>>(),
            "content_mismatch": pairs(&report.content_mismatch),
            "mtime_mismatch": pairs(&report.mtime_mismatch),
            "extra": report.extra.iter().map(entry_json).collect::<Vec<_>>(),
            "left_out": report.left_out,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&j)?)?;
    } else {
        for e in &report.missing {
            writeln!(out, "missing   {}", line(&e.path))?;
        }
        for (a, b) in &report.content_mismatch {
            writeln!(
                out,
                "differs   {}  ({})",
                line(&a.path),
                change_summary(a, b)
            )?;
        }
        for (a, b) in &report.mtime_mismatch {
            writeln!(
                out,
                "mtime     {}  ({})",
                line(&a.path),
                change_summary(a, b)
            )?;
        }
        for e in &report.extra {
            writeln!(out, "extra     {}", line(&e.path))?;
        }
        let left_out = match report.left_out {
            0 => String::new(),
            n => format!("; {n} left out by the filters"),
        };
        writeln!(
            out,
            "{}: {} of {} files match; {} missing, {} differ, {} other mtime, {} extra{left_out}",
            if passed { "OK" } else { "FAILED" },
            report.checked - report.missing.len() - report.content_mismatch.len(),
            report.checked,
            report.missing.len(),
            report.content_mismatch.len(),
            report.mtime_mismatch.len(),
            report.extra.len()
        )?;
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A manifest path for a line of text output: one line, whatever its name holds.
fn line(path: &crate::manifest::ManifestPath) -> String {
    printable(&path.display()).into_owned()
}

fn entry_json(e: &ManifestEntry) -> serde_json::Value {
    json!({"path": e.path.display(), "hash": e.hash.to_hex(), "size": e.size, "mtime": e.mtime_us})
}

fn change_summary(a: &ManifestEntry, b: &ManifestEntry) -> String {
    let mut parts = Vec::new();
    if a.size != b.size {
        parts.push(format!("size {} -> {}", a.size, b.size));
    }
    if a.hash != b.hash {
        parts.push(format!("hash {} -> {}", a.hash, b.hash));
    }
    if a.mtime_us != b.mtime_us {
        parts.push(format!(
            "mtime {} -> {}",
            format_mtime(a.mtime_us),
            format_mtime(b.mtime_us)
        ));
    }
    parts.join(", ")
}

/// RFC 3339 UTC with microseconds, before 1970 too (a file restored from an old archive, a
/// camera's card without a clock), where humantime and SystemTime stop.
fn format_mtime(us: i64) -> String {
    let (secs, micros) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::format_mtime;

    #[test]
    fn mtimes_are_rfc3339_before_1970_too() {
        assert_eq!(format_mtime(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_mtime(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            format_mtime(-315_619_199_876_544),
            "1960-01-01T00:00:00.123456Z"
        );
        // The same as humantime's where it has one: a leap day, and a date far ahead.
        for us in [
            951_782_400_000_001_i64,
            1_700_000_000_123_456,
            4_102_444_800_000_000,
        ] {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us as u64);
            assert_eq!(
                format_mtime(us),
                humantime::format_rfc3339_micros(t).to_string()
            );
        }
    }
}
