//! The farm workflows: `submit` (workstation), `sync-inputs` and `sync-outputs` (worker),
//! `download-outputs` (workstation).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::filter_args::{FilterArgs, MarkerArgs, SizeAgeArgs};
use super::get_cmd::conflicts_note;
use super::submit_paths::SubmitPathArgs;
use super::transfer_args::{ContentCacheArgs, StoreArgs, with_transfer};
use super::{Context, UsageError, counted, counted_json, flag, json_size};
use crate::config::Override;
use crate::jobs::asset_references::AssetReferences;
use crate::jobs::get::Conflict;
use crate::jobs::spec::{
    AttachmentsArg, DownloadOutputsJob, JobSpec, SubmitJob, SyncInputsJob, SyncOutputsJob,
};

/// Flags every workflow shares besides the store's.
#[derive(Debug, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Bandwidth cap for this command's direction, e.g. 50MB/s; 0 = unlimited; or a
    /// timetable, "08:00,10MB/s 19:00,off" (replaces bandwidth.schedule)
    /// [config: bandwidth.upload / bandwidth.download].
    #[arg(long, value_name = "RATE")]
    bwlimit: Option<String>,
    /// Run through the attache daemon (also: ATTACHE_DAEMON=1); its config then applies.
    #[arg(long)]
    daemon: bool,
    /// With --daemon: the job's priority, 0 to 100 (default 50). When daemon.max_running_jobs
    /// are running, a queued job of a higher priority starts first.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=100))]
    priority: Option<u8>,
    /// With --daemon: start the job and return at once, printing its id (with --json, its
    /// record); `attache status ID --follow` follows it, `attache status ID -o FILE` writes
    /// its result once done, `attache cancel ID` stops it.
    #[arg(long)]
    detach: bool,
}

impl CommonArgs {
    /// The flags given that set this process's transfer settings, which a job run by the
    /// daemon does not see.
    fn local_only_flags(&self) -> Vec<&'static str> {
        let mut given = self.store.local_only_flags();
        if self.bwlimit.is_some() {
            given.push("--bwlimit");
        }
        given
    }

    fn overrides(&self, out: &mut Vec<Override>, direction: &str) {
        self.store.overrides(out);
        super::bwlimit_flag(out, direction, self.bwlimit.clone());
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  attache submit scenes/shot010.ma textures/ --output-dir renders/ \\\n    --farm-id farm-… --queue-id queue-… --store s3://bucket/DeadlineCloud -o attachments.json\n  attache submit --asset-references ~/bundles/shot010/ --farm-id farm-… --queue-id queue-…"
)]
pub struct SubmitArgs {
    /// Input files and directories (directories are taken whole).
    #[arg(value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    paths_from: SubmitPathArgs,
    /// A directory the job writes outputs to (repeatable).
    #[arg(long = "output-dir", value_name = "DIR")]
    output_dirs: Vec<PathBuf>,
    /// A path the job refers to without uploading it (shapes the asset roots; repeatable).
    #[arg(long = "referenced", value_name = "PATH")]
    referenced: Vec<PathBuf>,
    /// The farm the job is submitted to (the manifests' keys name it).
    #[arg(long, value_name = "ID")]
    farm_id: String,
    /// The queue the job is submitted to (its job-attachments store).
    #[arg(long, value_name = "ID")]
    queue_id: String,
    /// A LOCAL storage-profile location: inputs under PATH form one root named NAME (repeatable;
    /// adds to [config: storage_profile.locations]).
    #[arg(long = "location", value_name = "NAME=PATH")]
    locations: Vec<String>,
    /// A SHARED storage-profile location: the farm reads it directly; nothing under it is uploaded
    /// (repeatable; adds to [config: storage_profile.shared]).
    #[arg(long = "shared", value_name = "PATH")]
    shared: Vec<PathBuf>,
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    markers: MarkerArgs,
    #[command(flatten)]
    size_age: SizeAgeArgs,
    /// Write the attachments JSON to FILE (default, or `-`: stdout).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Hash and ask the store what is missing; upload and publish nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Read every file; neither use nor update the hash cache [config: cache.hash_cache].
    #[arg(long)]
    no_cache: bool,
    /// Upload the targets of symlinks in an input directory that point outside it instead of
    /// refusing them [config: hash.follow_external_symlinks].
    #[arg(long)]
    follow_external_symlinks: bool,
    /// An input that does not exist is an error (by default it is submitted as a referenced
    /// path, with a warning, as the official client does).
    #[arg(long)]
    require_paths_exist: bool,
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
    /// Storage-profile location NAME is at PATH on this worker (repeatable; adds to, or for the
    /// same NAME replaces, [config: storage_profile.locations]).
    #[arg(long = "location", value_name = "NAME=PATH")]
    locations: Vec<String>,
    /// Also sync the outputs of this step of the job (a step the task's step depends on): the
    /// latest run of each of its tasks, over the inputs (repeatable, or comma-separated; needs
    /// --farm-id, --queue-id and --job-id).
    #[arg(
        long = "step-dependency",
        value_name = "STEP_ID",
        value_delimiter = ',',
        requires_all = ["farm_id", "queue_id", "job_id"]
    )]
    step_dependencies: Vec<String>,
    /// The job's farm (for --step-dependency).
    #[arg(long, value_name = "ID", env = "DEADLINE_FARM_ID")]
    farm_id: Option<String>,
    /// The job's queue (for --step-dependency).
    #[arg(long, value_name = "ID", env = "DEADLINE_QUEUE_ID")]
    queue_id: Option<String>,
    /// The job (for --step-dependency).
    #[arg(long, value_name = "ID", env = "DEADLINE_JOB_ID")]
    job_id: Option<String>,
    /// The group of the OS user the job runs as (a queue's jobRunAsUser): every file and
    /// directory placed is given to it, with group read and write, as the Deadline worker does.
    #[arg(long, value_name = "GROUP")]
    job_group: Option<String>,
    /// Write the path-mapping rules JSON to FILE (default, or `-`: stdout).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Say what would be downloaded (files in place are checked as for a real run); write
    /// nothing in the session directory, fetch nothing but the manifests.
    #[arg(short = 'n', long)]
    dry_run: bool,
    #[command(flatten)]
    content_cache: ContentCacheArgs,
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
    /// The task's farm.
    #[arg(long, value_name = "ID", env = "DEADLINE_FARM_ID")]
    farm_id: String,
    /// The task's queue.
    #[arg(long, value_name = "ID", env = "DEADLINE_QUEUE_ID")]
    queue_id: String,
    /// The task's job.
    #[arg(long, value_name = "ID", env = "DEADLINE_JOB_ID")]
    job_id: String,
    /// The task's step.
    #[arg(long, value_name = "ID", env = "DEADLINE_STEP_ID")]
    step_id: String,
    /// The task; without it (and without DEADLINE_TASK_ID) the session action ran a chunk of a
    /// chunked step's tasks, and its outputs are published at the step level.
    #[arg(long, value_name = "ID", env = "DEADLINE_TASK_ID")]
    task_id: Option<String>,
    /// The session action that ran the task (the output manifest's key names it).
    #[arg(long, value_name = "ID", env = "DEADLINE_SESSIONACTION_ID")]
    session_action_id: String,
    /// The session action's start, UTC, e.g. 2026-11-21T10:00:00.000000Z (default: now).
    #[arg(long, value_name = "TIME")]
    start_time: Option<String>,
    /// Storage-profile location NAME is at PATH on this worker (repeatable; adds to, or for the
    /// same NAME replaces, [config: storage_profile.locations]).
    #[arg(long = "location", value_name = "NAME=PATH")]
    locations: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    markers: MarkerArgs,
    #[command(flatten)]
    size_age: SizeAgeArgs,
    /// Write the published manifests JSON to FILE (default, or `-`: stdout).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Find the task's outputs and ask the store what it lacks; upload and publish nothing
    /// (the manifests JSON says what would be published).
    #[arg(short = 'n', long)]
    dry_run: bool,
    #[command(flatten)]
    content_cache: ContentCacheArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct DownloadOutputsArgs {
    /// The job's farm.
    #[arg(long, value_name = "ID")]
    farm_id: String,
    /// The job's queue.
    #[arg(long, value_name = "ID")]
    queue_id: String,
    /// The job whose outputs to download (every step's, the latest of each task).
    #[arg(long, value_name = "ID")]
    job_id: String,
    /// Only this step's outputs.
    #[arg(long, value_name = "ID")]
    step_id: Option<String>,
    /// Only this task's outputs (with --step-id).
    #[arg(long, value_name = "ID", requires = "step_id")]
    task_id: Option<String>,
    /// When a file with other content is already there (an artist's edit of a frame): by
    /// default it is kept and the job's file written beside it as `name (1).ext`, as the
    /// official client does.
    #[arg(long, value_enum, default_value_t = Conflict::CreateCopy)]
    conflict: Conflict,
    /// Put the outputs of root FROM under TO instead (repeatable).
    #[arg(long = "root-map", value_name = "FROM=TO")]
    root_map: Vec<String>,
    /// Say what would be downloaded, and which local files have other content (what
    /// --conflict decides about); write and fetch nothing but the manifests.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Keep downloading as the job's tasks publish outputs, asking the store every INTERVAL
    /// (e.g. 30s), until Ctrl-C or --until-idle; a retried task's outputs replace those the
    /// watch placed.
    #[arg(long, value_name = "INTERVAL", conflicts_with = "dry_run")]
    watch: Option<String>,
    /// With --watch: stop once no task has published new outputs for DURATION (e.g. 30m), as
    /// a job that has finished.
    #[arg(long, value_name = "DURATION", requires = "watch")]
    until_idle: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    size_age: SizeAgeArgs,
    #[command(flatten)]
    content_cache: ContentCacheArgs,
    #[command(flatten)]
    common: CommonArgs,
}

impl SubmitArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.common.overrides(out, "upload");
        if self.no_cache {
            flag(out, "cache.hash_cache", "--no-cache", Some("false".into()));
        }
        super::hash_cmd::follow_flag(out, self.follow_external_symlinks);
    }
}

impl SyncInputsArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.common.overrides(out, "download");
        self.content_cache.overrides(out);
    }
}

impl SyncOutputsArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.common.overrides(out, "upload");
        self.content_cache.overrides(out);
    }
}

impl DownloadOutputsArgs {
    pub fn overrides(&self, out: &mut Vec<Override>) {
        self.common.overrides(out, "download");
        self.content_cache.overrides(out);
    }
}

/// How a command's job ran: here or followed in the daemon (its result), or started in the
/// daemon and left to run (`--detach`: its record).
enum Ran {
    Done(serde_json::Value),
    Detached(serde_json::Value),
}

/// Runs a workflow: through the daemon when asked (`--daemon`, `ATTACHE_DAEMON=1`), else in
/// this process. Either way the result is the job's JSON output; with `--detach`, the
/// record of the job started in the daemon.
fn execute(
    ctx: &Context,
    spec: JobSpec,
    label: &'static str,
    common: &CommonArgs,
    other_local_flags: Vec<&'static str>,
) -> anyhow::Result<Ran> {
    let through_daemon = super::through_daemon(common.daemon);
    if common.detach && !through_daemon {
        return Err(UsageError {
            message: "--detach leaves a job running in the daemon: give --daemon too (or ATTACHE_DAEMON=1)".into(),
        }
        .into());
    }
    let spec = spec.resolve(&std::env::current_dir()?).map_err(usage)?;
    spec.validate().map_err(usage)?;
    if through_daemon {
        // The daemon's jobs use its caches: a global --cache-dir is this process's.
        let cache_dir = (ctx.load.overrides.iter())
            .any(|o| o.key == "cache.dir")
            .then_some("--cache-dir");
        for flag in common
            .local_only_flags()
            .into_iter()
            .chain(other_local_flags)
            .chain(cache_dir)
        {
            tracing::warn!(
                "{flag} does not apply to a job run by the daemon: its own config decides (set it there)"
            );
        }
        use crate::daemon::client::{run_job, start_job};
        return Ok(match common.detach {
            true => Ran::Detached(start_job(&ctx.settings, &spec, common.priority)?),
            false => Ran::Done(run_job(&ctx.settings, &spec, common.priority)?),
        });
    }
    if common.priority.is_some() {
        tracing::warn!("--priority orders the daemon's queue: it applies with --daemon only");
    }
    let settings = ctx.settings.clone();
    let output = with_transfer(
        ctx,
        spec.store().map(str::to_string),
        label,
        |t, cancel| async move { Ok(spec.run(&settings, t, &cancel, None).await?) },
    )?;
    Ok(Ran::Done(serde_json::to_value(output)?))
}

/// Runs the job and writes its JSON: all of it with `--json`, else the part users pipe on
/// ([`written_part`]). Returns the output for a human summary, or `None` under `--json`.
fn run_and_emit(
    ctx: &Context,
    spec: JobSpec,
    label: &'static str,
    (common, other_local_flags): (&CommonArgs, Vec<&'static str>),
    output: Option<&Path>,
) -> anyhow::Result<Option<serde_json::Value>> {
    let part = written_part(spec.kind());
    if let (true, Some(file)) = (common.detach, output) {
        return Err(UsageError {
            message: format!(
                "--detach returns before the job's result exists, so {} cannot be written now: once the job is done, `attache status ID -o {0}` writes it",
                file.display()
            ),
        }
        .into());
    }
    let out = match execute(ctx, spec, label, common, other_local_flags)? {
        Ran::Done(out) => out,
        Ran::Detached(record) => {
            let id = record["id"].as_str().unwrap_or_default();
            match common.store.json {
                true => emit(&record, None)?,
                false => {
                    let mut out = crate::cli::stdout::stdout();
                    writeln!(out, "{id}")?;
                }
            }
            crate::say!(
                "job {id} started in the daemon: `attache status {id} --follow` follows it, `attache cancel {id}` stops it"
            );
            return Ok(None);
        }
    };
    if common.store.json {
        // `-o FILE` gets what the farm's next step reads, as without --json; the whole
        // result goes to stdout.
        if let (Some(part), Some(file)) = (part, output) {
            emit(&out[part], Some(file))?;
        }
        emit(&out, None)?;
        return Ok(None);
    }
    if let Some(part) = part {
        emit(&out[part], output)?;
    }
    Ok(Some(out))
}

/// The part of a job's result its command writes (`-o FILE`, else stdout) for the farm to
/// take: a submit's attachments, sync-inputs' path-mapping rules, sync-outputs' manifests;
/// `None`: the command writes none.
fn written_part(kind: &str) -> Option<&'static str> {
    match kind {
        "submit" => Some("attachments"),
        "sync_inputs" => Some("path_mapping_rules"),
        "sync_outputs" => Some("manifests"),
        _ => None,
    }
}

/// A spec error is bad usage (exit code 2).
fn usage(e: crate::jobs::spec::JobError) -> anyhow::Error {
    match e {
        e @ crate::jobs::spec::JobError::Invalid { .. } => UsageError {
            message: e.to_string(),
        }
        .into(),
        e => e.into(),
    }
}

/// Where a result naming manifests in the store goes: with `--dry-run` none was published,
/// so it is printed, not written to `-o FILE` where a pipeline would take it for real.
fn not_to_file_in_a_dry_run(dry_run: bool, output: Option<&Path>) -> Option<&Path> {
    match output {
        Some(file) if dry_run => {
            crate::say!(
                "dry run: {} is not written (the manifests it names were not published); here is what it would hold",
                file.display()
            );
            None
        }
        output => output,
    }
}

/// Writes what the command of a daemon job of `kind` writes with `-o FILE` (a submit's
/// attachments, sync-inputs' path-mapping rules, sync-outputs' manifests), from the job's
/// `result`: for `attache status ID -o FILE` and `retry ID --follow -o FILE`.
pub(super) fn emit_result(
    kind: &str,
    result: &serde_json::Value,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let Some(part) = written_part(kind) else {
        return Err(UsageError {
            message: format!("-o: a {kind} job writes no file (--json prints its record)"),
        }
        .into());
    };
    emit(&result[part], output)
}

/// Writes a JSON result to FILE (atomically) or stdout.
fn emit(value: &serde_json::Value, output: Option<&Path>) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    match output {
        Some(p) => crate::fsutil::write_atomic(p, &text)
            .with_context(|| format!("writing {}", p.display())),
        None => Ok(crate::cli::stdout::stdout().write_all(&text)?),
    }
}

/// "uploaded 2 objects (1.4 GiB), 1 already in the store, 0 known present" of an upload
/// report (and the multipart uploads an earlier run left open, if any were resumed or
/// aborted).
fn uploaded(u: &serde_json::Value, dry_run: bool) -> String {
    format!(
        "{} {} ({}), {} already in the store, {} known present{}",
        super::tense(dry_run, "uploaded", "would upload"),
        counted_json(&u["uploaded_objects"], "object"),
        json_size(&u["uploaded_bytes"]),
        u["present_objects"].as_u64().unwrap_or(0),
        u["known_objects"].as_u64().unwrap_or(0),
        super::leftovers_note(
            u["aborted_leftover_uploads"].as_u64().unwrap_or(0),
            u["resumed_uploads"].as_u64().unwrap_or(0),
            u["resumed_bytes"].as_u64().unwrap_or(0),
        ),
    )
}

pub fn submit(ctx: &Context, a: SubmitArgs) -> anyhow::Result<ExitCode> {
    crate::cli::check_output(&a.output, false)?;
    let dry_run = a.dry_run;
    let paths = a.paths_from.gather(AssetReferences {
        inputs: a.inputs,
        output_directories: a.output_dirs,
        referenced_paths: a.referenced,
    })?;
    let spec = JobSpec::Submit(SubmitJob {
        inputs: paths.inputs,
        output_dirs: paths.output_directories,
        referenced: paths.referenced_paths,
        asset_references: Vec::new(),
        parameters: Vec::new(),
        farm_id: a.farm_id,
        queue_id: a.queue_id,
        locations: a.locations,
        shared: a.shared,
        exclude: a.filter.excludes()?,
        include: a.filter.includes()?,
        filter: a.filter.rules()?,
        exclude_if_present: a.markers.names()?,
        size_age: a.size_age.bounds()?,
        require_paths_exist: a.require_paths_exist,
        dry_run,
        store: a.common.store.store.clone(),
    });
    let Some(out) = run_and_emit(
        ctx,
        spec,
        "submitting",
        (
            &a.common,
            [
                a.no_cache.then_some("--no-cache"),
                a.follow_external_symlinks
                    .then_some("--follow-external-symlinks"),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        not_to_file_in_a_dry_run(dry_run, crate::cli::output_file(&a.output)),
    )?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    for r in out["roots"].as_array().into_iter().flatten() {
        crate::say!(
            "{}: {} ({}); {}{}",
            r["root_path"].as_str().unwrap_or_default(),
            counted_json(&r["files"], "file"),
            json_size(&r["bytes"]),
            uploaded(&r["upload"], dry_run),
            match (r["manifest_key"].as_str(), dry_run) {
                (Some(k), false) => format!("; manifest {k}"),
                _ => String::new(),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// [`conflicts_note`] of a root's report in a job's JSON.
fn conflicts_of(report: &serde_json::Value) -> String {
    let n = |key: &str| report[key].as_u64().unwrap_or(0);
    conflicts_note(n("beside_files"), n("replaced_files"), n("skipped_files"))
}

/// What a download report had without fetching it, for a summary line.
fn not_fetched_again(download: &serde_json::Value) -> String {
    let d = serde_json::from_value(download.clone()).unwrap_or_default();
    super::get_cmd::not_fetched_again(&d)
}

pub fn sync_inputs(ctx: &Context, a: SyncInputsArgs) -> anyhow::Result<ExitCode> {
    crate::cli::check_output(&a.output, false)?;
    let spec = JobSpec::SyncInputs(SyncInputsJob {
        attachments: AttachmentsArg::File(a.attachments),
        session_dir: a.session_dir,
        conflict: a.conflict,
        locations: a.locations,
        store: a.common.store.store.clone(),
        dry_run: a.dry_run,
        step_dependencies: a.step_dependencies,
        farm_id: a.farm_id,
        queue_id: a.queue_id,
        job_id: a.job_id,
        job_group: a.job_group,
    });
    let verb = super::tense(a.dry_run, "downloaded", "would download");
    let Some(out) = run_and_emit(
        ctx,
        spec,
        "syncing inputs",
        (&a.common, a.content_cache.given().into_iter().collect()),
        crate::cli::output_file(&a.output),
    )?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    // In this process a step with no outputs was warned about already; the daemon logs its
    // warning in its own log.
    let said_empty = !super::through_daemon(a.common.daemon);
    for d in out["step_dependencies"].as_array().into_iter().flatten() {
        let step = d["step_id"].as_str().unwrap_or_default();
        match d["tasks"].as_u64().unwrap_or(0) {
            0 if said_empty => {}
            0 => crate::say!("step {step}: no outputs in the store"),
            n => crate::say!(
                "step {step}: outputs of {} ({})",
                counted(n, "task"),
                counted_json(&d["manifests"], "manifest")
            ),
        }
    }
    for r in out["roots"].as_array().into_iter().flatten() {
        let rep = &r["report"];
        let step_outputs = match r["step_output_manifests"].as_u64().unwrap_or(0) {
            0 => String::new(),
            n => format!(
                " (with {} of steps depended on)",
                counted(n, "output manifest")
            ),
        };
        crate::say!(
            "{} -> {}: {}{step_outputs}; {verb} {} ({}){}, {} already in place{}{}",
            r["root_path"].as_str().unwrap_or_default(),
            r["local_root"].as_str().unwrap_or_default(),
            counted_json(&rep["files"], "file"),
            counted_json(&rep["download"]["objects"], "object"),
            json_size(&rep["download"]["downloaded_bytes"]),
            not_fetched_again(&rep["download"]),
            rep["unchanged_files"],
            super::get_cmd::read_to_check(rep["unchanged_read_files"].as_u64().unwrap_or(0)),
            conflicts_of(rep),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sync_outputs(ctx: &Context, a: SyncOutputsArgs) -> anyhow::Result<ExitCode> {
    crate::cli::check_output(&a.output, false)?;
    if a.task_id.is_none() && std::env::var_os("DEADLINE_SESSIONACTION_ID").is_none() {
        // Inside a Deadline task no task id means a chunk; run by hand it is more likely a
        // forgotten flag, and the outputs would not be found under the task.
        tracing::warn!(
            "no --task-id (and no DEADLINE_TASK_ID): publishing the outputs at the step level, as a chunk of {}'s tasks; give --task-id for one task's outputs",
            a.step_id
        );
    }
    let spec = JobSpec::SyncOutputs(SyncOutputsJob {
        attachments: AttachmentsArg::File(a.attachments),
        session_dir: a.session_dir,
        farm_id: a.farm_id,
        queue_id: a.queue_id,
        job_id: a.job_id,
        step_id: a.step_id,
        task_id: a.task_id,
        session_action_id: a.session_action_id,
        start_time: a.start_time,
        locations: a.locations,
        exclude: a.filter.excludes()?,
        include: a.filter.includes()?,
        filter: a.filter.rules()?,
        exclude_if_present: a.markers.names()?,
        size_age: a.size_age.bounds()?,
        store: a.common.store.store.clone(),
        dry_run: a.dry_run,
    });
    let Some(out) = run_and_emit(
        ctx,
        spec,
        "syncing outputs",
        (&a.common, a.content_cache.given().into_iter().collect()),
        not_to_file_in_a_dry_run(a.dry_run, crate::cli::output_file(&a.output)),
    )?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let dry_run = a.dry_run;
    for r in out["roots"].as_array().into_iter().flatten() {
        let root = r["root_path"].as_str().unwrap_or_default();
        let Some(path) = r["output_manifest_path"].as_str() else {
            crate::say!("{root}: no new or changed outputs");
            continue;
        };
        let kept = match r["content_cache_files"].as_u64().unwrap_or(0) {
            0 => String::new(),
            n => format!("; {n} kept in the content cache"),
        };
        crate::say!(
            "{root}: {} ({}); {}; {} {path}{kept}",
            counted_json(&r["files"], "new or changed output"),
            json_size(&r["bytes"]),
            uploaded(&r["upload"], dry_run),
            super::tense(dry_run, "published", "would publish"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A duration flag's value (`30s`, `10m`), an error naming the flag.
fn duration_flag(
    flag: &str,
    value: &Option<String>,
) -> Result<Option<crate::config::Duration>, UsageError> {
    value
        .as_deref()
        .map(|v| {
            v.parse().map_err(|e| UsageError {
                message: format!("{flag}: {e}"),
            })
        })
        .transpose()
}

pub fn download_outputs(ctx: &Context, a: DownloadOutputsArgs) -> anyhow::Result<ExitCode> {
    let through_daemon = super::through_daemon(a.common.daemon);
    let job = a.job_id.clone();
    let idle_given = a.until_idle.clone().unwrap_or_default();
    let spec = JobSpec::DownloadOutputs(DownloadOutputsJob {
        farm_id: a.farm_id,
        queue_id: a.queue_id,
        job_id: a.job_id,
        step_id: a.step_id,
        task_id: a.task_id,
        conflict: a.conflict,
        root_map: a.root_map,
        exclude: a.filter.excludes()?,
        include: a.filter.includes()?,
        filter: a.filter.rules()?,
        size_age: a.size_age.bounds()?,
        store: a.common.store.store.clone(),
        dry_run: a.dry_run,
        watch: duration_flag("--watch", &a.watch)?,
        until_idle: duration_flag("--until-idle", &a.until_idle)?,
    });
    // Checked here too, so the error names the flag, not the API's field.
    if let JobSpec::DownloadOutputs(j) = &spec
        && let Err(crate::jobs::spec::JobError::Invalid { field, message }) = j.watching()
    {
        return Err(UsageError {
            message: format!("--{}: {message}", field.replace('_', "-")),
        }
        .into());
    }
    let verb = super::tense(a.dry_run, "downloaded", "would download");
    let Some(out) = run_and_emit(
        ctx,
        spec,
        "downloading outputs",
        (&a.common, a.content_cache.given().into_iter().collect()),
        None,
    )?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    for r in out["roots"].as_array().into_iter().flatten() {
        let rep = &r["report"];
        let left_out = match r["left_out"].as_u64().unwrap_or(0) {
            0 => String::new(),
            n => format!(" ({n} left out by the filters)"),
        };
        crate::say!(
            "{} -> {}: {} from {}{left_out}; {verb} {} ({}){}, {} already in place{}",
            r["root_path"].as_str().unwrap_or_default(),
            r["destination"].as_str().unwrap_or_default(),
            counted_json(&rep["files"], "file"),
            counted_json(&r["manifests"], "manifest"),
            counted_json(&rep["download"]["objects"], "object"),
            json_size(&rep["download"]["downloaded_bytes"]),
            not_fetched_again(&rep["download"]),
            rep["unchanged_files"],
            conflicts_of(rep),
        );
    }
    match out["tasks"].as_u64() {
        // A job run here said so itself (`no outputs: …`, with where it looked); the
        // daemon's log holds that of one run there.
        Some(0) if through_daemon => crate::say!(
            "no outputs: no task of {job} has published any in the daemon's store (yet); check the ids and the store if the job has run"
        ),
        Some(0) => {}
        _ => crate::say!("{} with outputs", counted_json(&out["tasks"], "task")),
    }
    if let Some(rounds) = out["rounds"].as_u64() {
        crate::say!(
            "watched for {:.0} s, listing the store {}: no new outputs for {idle_given}",
            out["seconds"].as_f64().unwrap_or(0.0),
            counted(rounds, "time"),
        );
    }
    Ok(ExitCode::SUCCESS)
}
