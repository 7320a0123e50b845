//! The farm workflows: `submit` (workstation), `sync-inputs` and `sync-outputs` (worker),
//! `download-outputs` (workstation).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::transfer_args::{StoreArgs, pairs, with_transfer};
use super::{Context, UsageError, flag};
use crate::config::Override;
use crate::jobs::attachments::Attachments;
use crate::jobs::download_outputs::DownloadOutputsSpec;
use crate::jobs::get::Conflict;
use crate::jobs::submit::{Location, SubmitSpec};
use crate::jobs::sync_inputs::SyncInputsSpec;
use crate::jobs::sync_outputs::SyncOutputsSpec;
use crate::jobs::{download_outputs, submit, sync_inputs, sync_outputs};

/// Flags every workflow shares besides the store's.
#[derive(Debug, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Bandwidth cap for this command's direction, e.g. 50MB/s; 0 = unlimited
    /// [config: bandwidth.upload / bandwidth.download].
    #[arg(long, value_name = "RATE")]
    bwlimit: Option<String>,
}

impl CommonArgs {
    fn overrides(&self, out: &mut Vec<Override>, direction: &str) {
        self.store.overrides(out);
        flag(
            out,
            &format!("bandwidth.{direction}"),
            "--bwlimit",
            self.bwlimit.clone(),
        );
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  attache submit scenes/shot010.ma textures/ --output-dir renders/ \\\n    --farm-id farm-… --queue-id queue-… --store s3://bucket/DeadlineCloud -o attachments.json"
)]
pub struct SubmitArgs {
    /// Input files and directories (directories are taken whole).
    #[arg(value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// A directory the job writes outputs to (repeatable).
    #[arg(long = "output-dir", value_name = "DIR")]
    output_dirs: Vec<PathBuf>,
    /// A path the job refers to without uploading it (shapes the asset roots; repeatable).
    #[arg(long = "referenced", value_name = "PATH")]
    referenced: Vec<PathBuf>,
    #[arg(long, value_name = "ID")]
    farm_id: String,
    #[arg(long, value_name = "ID")]
    queue_id: String,
    /// A LOCAL storage-profile location: inputs under PATH form one root named NAME (repeatable).
    #[arg(long = "location", value_name = "NAME=PATH")]
    locations: Vec<String>,
    /// A SHARED storage-profile location: the farm reads it directly; nothing under it is uploaded.
    #[arg(long = "shared", value_name = "PATH")]
    shared: Vec<PathBuf>,
    /// Write the attachments JSON to FILE (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Hash and ask the store what is missing; upload and publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Read every file; neither use nor update the hash cache [config: cache.hash_cache].
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct SyncInputsArgs {
    /// The job's attachments JSON (as `submit` printed it).
    #[arg(long, value_name = "FILE")]
    attachments: PathBuf,
    /// The session directory: roots land in `assetroot-<hash>` dirs under it.
    #[arg(long, value_name = "DIR")]
    session_dir: PathBuf,
    /// When a file with other content is already there.
    #[arg(long, value_enum, default_value_t = Conflict::Overwrite)]
    conflict: Conflict,
    /// Storage-profile location NAME is at PATH on this worker (repeatable).
    #[arg(long = "location", value_name = "NAME=PATH")]
    locations: Vec<String>,
    /// Write the path-mapping rules JSON to FILE (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct SyncOutputsArgs {
    /// The job's attachments JSON.
    #[arg(long, value_name = "FILE")]
    attachments: PathBuf,
    /// The session directory sync-inputs used.
    #[arg(long, value_name = "DIR")]
    session_dir: PathBuf,
    #[arg(long, value_name = "ID")]
    farm_id: String,
    #[arg(long, value_name = "ID")]
    queue_id: String,
    #[arg(long, value_name = "ID")]
    job_id: String,
    #[arg(long, value_name = "ID")]
    step_id: String,
    #[arg(long, value_name = "ID")]
    task_id: String,
    #[arg(long, value_name = "ID")]
    session_action_id: String,
    /// The session action's start, UTC, e.g. 2026-11-21T10:00:00.000000Z (default: now).
    #[arg(long, value_name = "TIME")]
    start_time: Option<String>,
    /// Storage-profile location NAME is at PATH on this worker (repeatable).
    #[arg(long = "location", value_name = "NAME=PATH")]
    locations: Vec<String>,
    /// Write the published manifests JSON to FILE (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct DownloadOutputsArgs {
    #[arg(long, value_name = "ID")]
    farm_id: String,
    #[arg(long, value_name = "ID")]
    queue_id: String,
    #[arg(long, value_name = "ID")]
    job_id: String,
    /// Only this step's outputs.
    #[arg(long, value_name = "ID")]
    step_id: Option<String>,
    /// Only this task's outputs (with --step-id).
    #[arg(long, value_name = "ID", requires = "step_id")]
    task_id: Option<String>,
    /// When a file with other content is already there.
    #[arg(long, value_enum, default_value_t = Conflict::Overwrite)]
    conflict: Conflict,
    /// Put the outputs of root FROM under TO instead (repeatable).
    #[arg(long = "root-map", value_name = "FROM=TO")]
    root_map: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

impl SubmitArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.common.overrides(out, "upload");
        if self.no_cache {
            flag(out, "cache.hash_cache", "--no-cache", Some("false".into()));
        }
    }
}

impl SyncInputsArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.common.overrides(out, "download");
    }
}

impl SyncOutputsArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.common.overrides(out, "upload");
    }
}

impl DownloadOutputsArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.common.overrides(out, "download");
    }
}

fn read_attachments(path: &Path) -> anyhow::Result<Attachments> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read attachments {}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| {
        UsageError {
            message: format!("{}: not an attachments document ({e})", path.display()),
        }
        .into()
    })
}

/// Writes a JSON result to FILE (atomically) or stdout.
fn emit(value: &impl serde::Serialize, output: Option<&Path>) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    match output {
        Some(p) => crate::fsutil::write_atomic(p, &text)
            .with_context(|| format!("writing {}", p.display())),
        None => Ok(std::io::stdout().lock().write_all(&text)?),
    }
}

fn cache_dir(ctx: &Context) -> Option<PathBuf> {
    ctx.settings
        .cache
        .hash_cache
        .then(|| ctx.settings.cache.dir.clone())
}

pub fn submit(ctx: &Context, a: SubmitArgs) -> anyhow::Result<ExitCode> {
    if a.inputs.is_empty() && a.output_dirs.is_empty() {
        return Err(UsageError {
            message: "nothing to submit: give input files or directories, or --output-dir".into(),
        }
        .into());
    }
    let spec = SubmitSpec {
        inputs: a.inputs,
        output_dirs: a.output_dirs,
        referenced: a.referenced,
        farm_id: a.farm_id,
        queue_id: a.queue_id,
        local_locations: pairs(&a.locations, "--location")?
            .into_iter()
            .map(|(name, path)| Location { name, path })
            .collect(),
        shared_locations: a.shared,
        hash: super::hash_cmd::spec_from(&ctx.settings, Vec::new(), ctx.settings.cache.hash_cache),
    };
    let dry_run = a.dry_run;
    let report = with_transfer(ctx, "submitting", |t, cancel| async move {
        let t = if dry_run {
            std::sync::Arc::new(t.dry_run_copy())
        } else {
            t
        };
        Ok(submit::run(spec, t, &cancel).await?)
    })?;
    if a.common.store.json {
        emit(&report, a.output.as_deref())?;
    } else {
        emit(&report.attachments, a.output.as_deref())?;
        for r in &report.roots {
            let u = r.upload.as_ref();
            eprintln!(
                "{}: {} files ({}); {} {} objects ({}), {} already in the store, {} known present{}",
                r.root_path,
                r.files,
                bytesize::ByteSize(r.bytes).display().iec(),
                if dry_run { "would upload" } else { "uploaded" },
                u.map_or(0, |u| u.uploaded_objects),
                bytesize::ByteSize(u.map_or(0, |u| u.uploaded_bytes))
                    .display()
                    .iec(),
                u.map_or(0, |u| u.present_objects),
                u.map_or(0, |u| u.known_objects),
                match (&r.manifest_key, dry_run) {
                    (Some(k), false) => format!("; manifest {k}"),
                    _ => String::new(),
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sync_inputs(ctx: &Context, a: SyncInputsArgs) -> anyhow::Result<ExitCode> {
    let spec = SyncInputsSpec {
        attachments: read_attachments(&a.attachments)?,
        session_dir: crate::jobs::normalize_root(&a.session_dir)?,
        conflict: a.conflict,
        location_map: pairs(&a.locations, "--location")?,
        cache_dir: cache_dir(ctx),
    };
    let report = with_transfer(ctx, "syncing inputs", |t, cancel| async move {
        Ok(sync_inputs::run(spec, t, &cancel).await?)
    })?;
    if a.common.store.json {
        emit(&report, a.output.as_deref())?;
    } else {
        emit(&report.path_mapping_rules, a.output.as_deref())?;
        for r in &report.roots {
            let d = &r.report.download;
            eprintln!(
                "{} -> {}: {} files; downloaded {} objects ({}), {} already in place",
                r.root_path,
                r.local_root.display(),
                r.report.files,
                d.objects,
                bytesize::ByteSize(d.downloaded_bytes).display().iec(),
                r.report.unchanged_files
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sync_outputs(ctx: &Context, a: SyncOutputsArgs) -> anyhow::Result<ExitCode> {
    let start_time = match a.start_time {
        Some(t) => t,
        None => crate::store::layout::session_action_time(std::time::SystemTime::now()),
    };
    let spec = SyncOutputsSpec {
        attachments: read_attachments(&a.attachments)?,
        session_dir: crate::jobs::normalize_root(&a.session_dir)?,
        location_map: pairs(&a.locations, "--location")?,
        farm_id: a.farm_id,
        queue_id: a.queue_id,
        job_id: a.job_id,
        step_id: a.step_id,
        task_id: a.task_id,
        session_action_id: a.session_action_id,
        start_time,
        hash: super::hash_cmd::spec_from(&ctx.settings, Vec::new(), ctx.settings.cache.hash_cache),
    };
    let published = with_transfer(ctx, "syncing outputs", |t, cancel| async move {
        Ok(sync_outputs::run(spec, t, &cancel).await?)
    })?;
    emit(&published, a.output.as_deref())?;
    if !a.common.store.json {
        for p in &published {
            eprintln!(
                "{}: {} output files -> {}",
                p.root_path, p.files, p.output_manifest_path
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn download_outputs(ctx: &Context, a: DownloadOutputsArgs) -> anyhow::Result<ExitCode> {
    let spec = DownloadOutputsSpec {
        farm_id: a.farm_id,
        queue_id: a.queue_id,
        job_id: a.job_id,
        step_id: a.step_id,
        task_id: a.task_id,
        conflict: a.conflict,
        root_map: pairs(&a.root_map, "--root-map")?,
        cache_dir: cache_dir(ctx),
    };
    let report = with_transfer(ctx, "downloading outputs", |t, cancel| async move {
        Ok(download_outputs::run(spec, t, &cancel).await?)
    })?;
    if a.common.store.json {
        emit(&report, None)?;
    } else {
        for r in &report.roots {
            eprintln!(
                "{} -> {}: {} files from {} manifests; downloaded {} objects",
                r.root_path,
                r.destination.display(),
                r.report.files,
                r.manifests,
                r.report.download.objects
            );
        }
        eprintln!(
            "{} tasks with outputs in {:.2} s",
            report.tasks, report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
