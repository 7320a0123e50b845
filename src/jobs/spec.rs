//! A workflow job as data: what the CLI builds from its flags and the daemon accepts as JSON
//! (`{"kind": "submit", "inputs": [...], "farm_id": ...}`), validated before it runs, and the
//! one place that runs it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::attachments::Attachments;
use super::bundle_template::GivenParameter;
use super::download_outputs::{DownloadOutputsReport, DownloadOutputsSpec};
use super::get::Conflict;
use super::hash::HashSpec;
use super::put::PutError;
use super::submit::{Location, SubmitError, SubmitReport, SubmitSpec};
use super::sync_inputs::{StepDependencies, SyncInputsReport, SyncInputsSpec};
use super::sync_outputs::{SyncOutputsReport, SyncOutputsSpec};
use crate::config::Settings;
use crate::fsutil::access::Caller;
use crate::fsutil::group::GroupAccess;
use crate::scan::size_age::SizeAge;
use crate::store::OpenStoreError;
use crate::transfer::{Transfer, TransferError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    Submit(SubmitJob),
    SyncInputs(SyncInputsJob),
    SyncOutputs(SyncOutputsJob),
    DownloadOutputs(DownloadOutputsJob),
    Doctor(DoctorJob),
}

/// Probe the store (and the caches) as this process's transfers use them: `attache doctor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoctorJob {
    #[serde(default)]
    pub store: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
    #[serde(default)]
    pub output_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub referenced: Vec<PathBuf>,
    /// Job bundles' asset references (`asset_references.yaml`/`.json`, or the bundle
    /// directory): their paths join `inputs`, `output_dirs` and `referenced` when the daemon
    /// accepts the job ([`JobSpec::take_asset_references`]); the CLI reads them itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub asset_references: Vec<PathBuf>,
    /// Values of the job bundles' template parameters (`{"name", "value"}`), as
    /// `--parameter`: a PATH parameter with a dataFlow is an input or output directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<GivenParameter>,
    pub farm_id: String,
    pub queue_id: String,
    /// LOCAL storage-profile locations, `NAME=PATH`.
    #[serde(default)]
    pub locations: Vec<String>,
    /// SHARED storage-profile locations.
    #[serde(default)]
    pub shared: Vec<PathBuf>,
    /// Patterns of paths left out, beside `hash.exclude` (see `scan::filter`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Patterns of the only files taken from input directories, beside `hash.include`.
    #[serde(default)]
    pub include: Vec<String>,
    /// rclone's ordered filter rules, after `hash.filter` (see `scan::rules`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<String>,
    /// Names of marker files: a directory holding one is left out whole, beside
    /// `hash.exclude_if_present`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_if_present: Vec<String>,
    /// rclone's --min-size, --max-size, --min-age and --max-age, ages as times (see
    /// `scan::size_age`).
    #[serde(default, skip_serializing_if = "SizeAge::is_empty")]
    pub size_age: SizeAge,
    /// An input that does not exist is an error, not a referenced path (as the official
    /// client's `--require-paths-exist`).
    #[serde(default)]
    pub require_paths_exist: bool,
    #[serde(default)]
    pub dry_run: bool,
    /// Store URL; default: `store.url`.
    #[serde(default)]
    pub store: Option<String>,
}

/// The attachments document inline, or the path of a file holding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttachmentsArg {
    Inline(Attachments),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncInputsJob {
    pub attachments: AttachmentsArg,
    pub session_dir: PathBuf,
    #[serde(default)]
    pub conflict: Conflict,
    /// Storage-profile location `NAME=PATH` on this worker.
    #[serde(default)]
    pub locations: Vec<String>,
    #[serde(default)]
    pub store: Option<String>,
    /// Plan only: say what would be downloaded; write nothing (no file, directory or record).
    #[serde(default)]
    pub dry_run: bool,
    /// Steps whose outputs are synced over the inputs (step-step dependencies); they need
    /// `farm_id`, `queue_id` and `job_id`.
    #[serde(default)]
    pub step_dependencies: Vec<String>,
    #[serde(default)]
    pub farm_id: Option<String>,
    #[serde(default)]
    pub queue_id: Option<String>,
    #[serde(default)]
    pub job_id: Option<String>,
    /// The group of the OS user the job runs as: what is placed is given to it, with group
    /// read and write.
    #[serde(default)]
    pub job_group: Option<String>,
}

impl SyncInputsJob {
    /// The job's group on this machine; an unknown one is an invalid job.
    fn group(&self) -> Result<Option<GroupAccess>, JobError> {
        self.job_group
            .as_deref()
            .map(|name| {
                GroupAccess::resolve(name).ok_or_else(|| {
                    invalid(
                        "job_group",
                        format!("{name:?}: no such group on this machine"),
                    )
                })
            })
            .transpose()
    }

    /// The step dependencies with the job they belong to; an error names what is missing.
    fn dependencies(&self) -> Result<Option<StepDependencies>, JobError> {
        if self.step_dependencies.is_empty() {
            return Ok(None);
        }
        let need = |field: &'static str, v: &Option<String>| {
            v.clone().ok_or_else(|| {
                invalid(
                    field,
                    "step_dependencies need farm_id, queue_id and job_id (the job the steps belong to)",
                )
            })
        };
        Ok(Some(StepDependencies {
            farm_id: need("farm_id", &self.farm_id)?,
            queue_id: need("queue_id", &self.queue_id)?,
            job_id: need("job_id", &self.job_id)?,
            step_ids: self.step_dependencies.clone(),
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncOutputsJob {
    pub attachments: AttachmentsArg,
    pub session_dir: PathBuf,
    pub farm_id: String,
    pub queue_id: String,
    pub job_id: String,
    pub step_id: String,
    /// Absent: a chunked step's session action (a chunk of its tasks), published at the
    /// step level as the worker does without `DEADLINE_TASK_ID`.
    #[serde(default)]
    pub task_id: Option<String>,
    pub session_action_id: String,
    /// `%Y-%m-%dT%H:%M:%S.%fZ`; default: when the job starts.
    #[serde(default)]
    pub start_time: Option<String>,
    #[serde(default)]
    pub locations: Vec<String>,
    /// Patterns of outputs left out, beside `hash.exclude`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Patterns of the only outputs taken, beside `hash.include`.
    #[serde(default)]
    pub include: Vec<String>,
    /// rclone's ordered filter rules, after `hash.filter`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<String>,
    /// Names of marker files: an output directory holding one is left out whole, beside
    /// `hash.exclude_if_present`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_if_present: Vec<String>,
    /// rclone's --min-size, --max-size, --min-age and --max-age, ages as times (see
    /// `scan::size_age`).
    #[serde(default, skip_serializing_if = "SizeAge::is_empty")]
    pub size_age: SizeAge,
    #[serde(default)]
    pub store: Option<String>,
    /// Find the outputs and ask the store what it lacks; upload and publish nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadOutputsJob {
    pub farm_id: String,
    pub queue_id: String,
    pub job_id: String,
    #[serde(default)]
    pub step_id: Option<String>,
    #[serde(default)]
    pub task_id: Option<String>,
    /// By default a file with other content is kept (an artist's edit), the job's written
    /// beside it, as `download-outputs` does.
    #[serde(default = "keep_a_copy")]
    pub conflict: Conflict,
    /// `FROM=TO` root mappings.
    #[serde(default)]
    pub root_map: Vec<String>,
    /// Patterns of the outputs not fetched (see `scan::filter`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Patterns of the only outputs fetched.
    #[serde(default)]
    pub include: Vec<String>,
    /// rclone's ordered filter rules, asked before the patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<String>,
    /// rclone's --min-size, --max-size, --min-age and --max-age, ages as times (see
    /// `scan::size_age`).
    #[serde(default, skip_serializing_if = "SizeAge::is_empty")]
    pub size_age: SizeAge,
    #[serde(default)]
    pub store: Option<String>,
    /// Plan only: say what would be downloaded and what is in the way; write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Keep downloading the outputs tasks publish, asking the store this often (`"30s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<crate::config::Duration>,
    /// With `watch`: stop once no task has published new outputs for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_idle: Option<crate::config::Duration>,
}

/// What a job returns, by kind.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobOutput {
    Submit(SubmitReport),
    SyncInputs(SyncInputsReport),
    SyncOutputs(SyncOutputsReport),
    DownloadOutputs(DownloadOutputsReport),
    Doctor(super::doctor::DoctorReport),
}

/// Why a job could not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The spec is wrong: names the field (HTTP 400, exit code 2).
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The daemon's client asks for what its user may not do (HTTP 403).
    #[error(transparent)]
    NotTheCallers(#[from] crate::fsutil::access::Refused),
    /// A client of another user names a store other than the daemon's (HTTP 403): the daemon
    /// would read and write it with its own credentials, a `file://` one with its own rights.
    #[error(
        "store: {store}: the daemon uses for a client of another user only its own store ({own}); run the command without --daemon to use another"
    )]
    NotTheCallersStore { store: String, own: String },
    /// A client of another user asks for placed files to be given to a group it is not in
    /// (HTTP 403).
    #[error(
        "job_group: {group}: {who} is not in this group, and the daemon gives a client's files only to a group of the client's user"
    )]
    NotTheCallersGroup { group: String, who: String },
    /// A client of another user has `daemon.max_jobs_per_user` jobs queued or running.
    #[error(
        "{who} has {active} jobs queued or running, the most daemon.max_jobs_per_user allows: wait for some to end, or cancel some (attache jobs --state queued)"
    )]
    TooManyJobs { who: String, active: usize },
    #[error(transparent)]
    Open(#[from] OpenStoreError),
    // Boxed: these are large, and a job's error is made once.
    #[error(transparent)]
    Submit(Box<SubmitError>),
    #[error(transparent)]
    Put(Box<PutError>),
    #[error(transparent)]
    Transfer(Box<TransferError>),
}

impl From<SubmitError> for JobError {
    fn from(e: SubmitError) -> Self {
        JobError::Submit(Box::new(e))
    }
}

impl From<PutError> for JobError {
    fn from(e: PutError) -> Self {
        JobError::Put(Box::new(e))
    }
}

impl From<TransferError> for JobError {
    fn from(e: TransferError) -> Self {
        JobError::Transfer(Box::new(e))
    }
}

impl JobError {
    /// Worth running again later as it is (`attache retry`): the store unreachable or
    /// throttling, a 5xx, a file still being written. Not a bad spec, a refused path, a
    /// damaged manifest or object, a full disk.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Submit(e) => e.is_retryable(),
            JobError::Put(e) => e.is_retryable(),
            JobError::Transfer(e) => e.is_retryable(),
            // Once some of the user's jobs end.
            JobError::TooManyJobs { .. } => true,
            JobError::Invalid { .. }
            | JobError::NotTheCallers(_)
            | JobError::NotTheCallersStore { .. }
            | JobError::NotTheCallersGroup { .. }
            | JobError::Open(_) => false,
        }
    }

    /// The job stopped because it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(err) = e {
            if err.is::<super::Cancelled>() {
                return true;
            }
            e = err.source();
        }
        false
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> JobError {
    JobError::Invalid {
        field,
        message: message.into(),
    }
}

/// A path the daemon is given: it has no working directory of its client's.
fn absolute(field: &'static str, p: &Path) -> Result<(), JobError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{} must be an absolute path", p.display()),
        ))
    }
}

fn keep_a_copy() -> Conflict {
    Conflict::CreateCopy
}

impl JobSpec {
    /// Reads a submit's `asset_references` files into its paths (each path once). The daemon
    /// has no current directory of its client's: the files' paths must be absolute. For
    /// `caller` (a client of another user), each document only if that user may read it.
    pub fn take_asset_references(mut self, caller: Option<&Caller>) -> Result<JobSpec, JobError> {
        let JobSpec::Submit(j) = &mut self else {
            return Ok(self);
        };
        use crate::jobs::asset_references::{AssetReferences, Relative};
        let files = std::mem::take(&mut j.asset_references);
        let given = std::mem::take(&mut j.parameters);
        if !given.is_empty() && files.is_empty() {
            return Err(invalid(
                "parameters",
                "values of a job bundle's template parameters need the bundle: give its directory in asset_references",
            ));
        }
        for file in &files {
            absolute("asset_references", file)?;
        }
        let mut paths = AssetReferences {
            inputs: std::mem::take(&mut j.inputs),
            output_directories: std::mem::take(&mut j.output_dirs),
            referenced_paths: std::mem::take(&mut j.referenced),
        };
        paths.merge(
            AssetReferences::read_all(&files, &given, Relative::Refused, caller)
                .map_err(|e| invalid("asset_references", e.to_string()))?,
        );
        (j.inputs, j.output_dirs, j.referenced) = (
            paths.inputs,
            paths.output_directories,
            paths.referenced_paths,
        );
        Ok(self)
    }

    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Submit(_) => "submit",
            JobSpec::SyncInputs(_) => "sync_inputs",
            JobSpec::SyncOutputs(_) => "sync_outputs",
            JobSpec::DownloadOutputs(_) => "download_outputs",
            JobSpec::Doctor(_) => "doctor",
        }
    }

    pub fn store(&self) -> Option<&str> {
        match self {
            JobSpec::Submit(j) => j.store.as_deref(),
            JobSpec::SyncInputs(j) => j.store.as_deref(),
            JobSpec::SyncOutputs(j) => j.store.as_deref(),
            JobSpec::DownloadOutputs(j) => j.store.as_deref(),
            JobSpec::Doctor(j) => j.store.as_deref(),
        }
    }

    /// Whether the daemon may do this job for `caller`, a client of another user: the paths
    /// it would read (inputs, a job bundle's files, an attachments file, a session's outputs)
    /// must be readable by that user, and those it would write in (a session directory,
    /// storage-profile locations, download destinations) writable. Checked before anything
    /// is read; the files inside an input directory or a session are checked as the scan
    /// finds them, and download destinations the store names once they are known.
    pub fn check_caller(&self, caller: &Caller) -> Result<(), JobError> {
        let attachments = |a: &AttachmentsArg| -> Result<(), JobError> {
            match a {
                AttachmentsArg::File(p) => {
                    absolute("attachments", p)?;
                    Ok(caller.may_read(p)?)
                }
                AttachmentsArg::Inline(_) => Ok(()),
            }
        };
        // The PATH of each `NAME=PATH` (`FROM=TO`), checked already by `validate`.
        let paths = |values: &[String], field| -> Result<Vec<PathBuf>, JobError> {
            Ok(pairs(values, field)?.into_iter().map(|(_, p)| p).collect())
        };
        // Refused before they are looked up: a relative path would be looked up from the
        // daemon's working directory, not the client's.
        match self {
            JobSpec::Submit(j) => {
                for p in &j.inputs {
                    absolute("inputs", p)?;
                    caller.may_read(p)?;
                }
                for bundle in &j.asset_references {
                    absolute("asset_references", bundle)?;
                    caller.may_read(bundle)?;
                    for document in super::asset_references::bundle_document_paths(bundle) {
                        caller.may_read(&document)?;
                    }
                }
            }
            JobSpec::SyncInputs(j) => {
                attachments(&j.attachments)?;
                absolute("session_dir", &j.session_dir)?;
                caller.may_write_in(&j.session_dir)?;
                if let Some(g) = j.group()?
                    && !caller.groups.contains(&g.gid)
                {
                    return Err(JobError::NotTheCallersGroup {
                        group: g.name,
                        who: caller.describe(),
                    });
                }
                for location in paths(&j.locations, "locations")? {
                    caller.may_write_in(&location)?;
                }
            }
            JobSpec::SyncOutputs(j) => {
                attachments(&j.attachments)?;
                absolute("session_dir", &j.session_dir)?;
                caller.may_read(&j.session_dir)?;
                for location in paths(&j.locations, "locations")? {
                    caller.may_read(&location)?;
                }
            }
            JobSpec::DownloadOutputs(j) => {
                for destination in paths(&j.root_map, "root_map")? {
                    caller.may_write_in(&destination)?;
                }
            }
            JobSpec::Doctor(_) => {}
        }
        Ok(())
    }

    /// What the job works on, for the daemon's log, so that its lines can be tied to a
    /// Deadline task: the farm, queue and first input of a submit; the session directory (and
    /// the task's ids) of a worker job; the job whose outputs are downloaded.
    pub fn describe(&self) -> String {
        let ids = |parts: &[Option<&str>]| {
            parts
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
                .join("/")
        };
        match self {
            JobSpec::Submit(j) => {
                let first = j.inputs.first().or(j.output_dirs.first());
                let more = (j.inputs.len() + j.output_dirs.len()).saturating_sub(1);
                format!(
                    "{}: {}{}",
                    ids(&[Some(&j.farm_id), Some(&j.queue_id)]),
                    first.map(|p| p.display().to_string()).unwrap_or_default(),
                    match more {
                        0 => String::new(),
                        n => format!(" (+{n} more)"),
                    }
                )
            }
            JobSpec::SyncInputs(j) => match &j.job_id {
                Some(job) => format!("{job}: session {}", j.session_dir.display()),
                None => format!("session {}", j.session_dir.display()),
            },
            JobSpec::SyncOutputs(j) => format!(
                "{} {}: session {}",
                ids(&[Some(&j.job_id), Some(&j.step_id), j.task_id.as_deref()]),
                j.session_action_id,
                j.session_dir.display()
            ),
            JobSpec::DownloadOutputs(j) => ids(&[
                Some(&j.farm_id),
                Some(&j.queue_id),
                Some(&j.job_id),
                j.step_id.as_deref(),
                j.task_id.as_deref(),
            ]),
            JobSpec::Doctor(_) => "the store".to_string(),
        }
    }

    /// Makes relative paths absolute against `cwd` (the CLI's working directory) and reads an
    /// attachments file into the spec, so the job no longer depends on where it was written.
    pub fn resolve(mut self, cwd: &Path) -> Result<JobSpec, JobError> {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        };
        let inline = |a: &mut AttachmentsArg| -> Result<(), JobError> {
            if let AttachmentsArg::File(p) = a {
                let path = if p.is_relative() {
                    cwd.join(&*p)
                } else {
                    p.clone()
                };
                let doc = Attachments::read_file(&path).map_err(|e| invalid("attachments", e))?;
                *a = AttachmentsArg::Inline(doc);
            }
            Ok(())
        };
        // `NAME=PATH` (`FROM=TO`): PATH as the inputs' are, and without a trailing `/`, so
        // that the same directory gives the same root path (and manifest key).
        let pair = |v: &mut String| {
            if let Some((name, path)) = v.split_once('=') {
                let mut p = PathBuf::from(path);
                abs(&mut p);
                let p: PathBuf = p.components().collect();
                *v = format!("{name}={}", p.display());
            }
        };
        match &mut self {
            JobSpec::Submit(j) => {
                j.inputs
                    .iter_mut()
                    .chain(&mut j.output_dirs)
                    .chain(&mut j.referenced)
                    .chain(&mut j.shared)
                    .for_each(abs);
                j.locations.iter_mut().for_each(pair);
            }
            JobSpec::SyncInputs(j) => {
                abs(&mut j.session_dir);
                inline(&mut j.attachments)?;
                j.locations.iter_mut().for_each(pair);
            }
            JobSpec::SyncOutputs(j) => {
                abs(&mut j.session_dir);
                inline(&mut j.attachments)?;
                j.locations.iter_mut().for_each(pair);
            }
            JobSpec::DownloadOutputs(j) => j.root_map.iter_mut().for_each(pair),
            JobSpec::Doctor(_) => {}
        }
        Ok(self)
    }

    /// Checks what serde cannot: required non-empty values, absolute paths, `NAME=PATH` pairs.
    pub fn validate(&self) -> Result<(), JobError> {
        let id = |field: &'static str, v: &str| {
            if v.is_empty() || v.contains('/') {
                Err(invalid(field, format!("{v:?} is not an id")))
            } else {
                Ok(())
            }
        };
        // An attachments file the daemon reads: the client's working directory is not its.
        let attachments_file = |a: &AttachmentsArg| match a {
            AttachmentsArg::File(p) => absolute("attachments", p),
            AttachmentsArg::Inline(_) => Ok(()),
        };
        // A store URL that cannot be opened is refused with the spec, not by a failed job.
        if let Some(url) = self.store() {
            crate::store::StoreUrl::parse(url).map_err(|e| invalid("store", e.to_string()))?;
        }
        match self {
            JobSpec::Submit(j) => {
                if j.inputs.is_empty() && j.output_dirs.is_empty() {
                    return Err(invalid(
                        "inputs",
                        "nothing to submit: give input files or directories (INPUT..., --asset-references, --inputs-from; API field inputs) or --output-dir (output_dirs)",
                    ));
                }
                for p in &j.inputs {
                    absolute("inputs", p)?;
                }
                for p in &j.output_dirs {
                    absolute("output_dirs", p)?;
                }
                id("farm_id", &j.farm_id)?;
                id("queue_id", &j.queue_id)?;
                pairs(&j.locations, "locations")?;
                filter(&j.exclude, &j.include, &j.filter)?;
                crate::scan::check_marker_names(&j.exclude_if_present)
                    .map_err(|e| invalid("exclude_if_present", e))?;
                j.size_age.check().map_err(|e| invalid("size_age", e))?;
            }
            JobSpec::SyncInputs(j) => {
                absolute("session_dir", &j.session_dir)?;
                attachments_file(&j.attachments)?;
                pairs(&j.locations, "locations")?;
                j.group()?;
                if let Some(deps) = j.dependencies()? {
                    id("farm_id", &deps.farm_id)?;
                    id("queue_id", &deps.queue_id)?;
                    id("job_id", &deps.job_id)?;
                    for step in &deps.step_ids {
                        id("step_dependencies", step)?;
                    }
                }
            }
            JobSpec::SyncOutputs(j) => {
                absolute("session_dir", &j.session_dir)?;
                attachments_file(&j.attachments)?;
                for (f, v) in [
                    ("farm_id", &j.farm_id),
                    ("queue_id", &j.queue_id),
                    ("job_id", &j.job_id),
                    ("step_id", &j.step_id),
                    ("session_action_id", &j.session_action_id),
                ] {
                    id(f, v)?;
                }
                if let Some(task) = &j.task_id {
                    id("task_id", task)?;
                }
                pairs(&j.locations, "locations")?;
                filter(&j.exclude, &j.include, &j.filter)?;
                crate::scan::check_marker_names(&j.exclude_if_present)
                    .map_err(|e| invalid("exclude_if_present", e))?;
                j.size_age.check().map_err(|e| invalid("size_age", e))?;
            }
            JobSpec::DownloadOutputs(j) => {
                id("farm_id", &j.farm_id)?;
                id("queue_id", &j.queue_id)?;
                id("job_id", &j.job_id)?;
                if j.task_id.is_some() && j.step_id.is_none() {
                    return Err(invalid("task_id", "needs step_id"));
                }
                pairs(&j.root_map, "root_map")?;
                filter(&j.exclude, &j.include, &j.filter)?;
                j.size_age.check().map_err(|e| invalid("size_age", e))?;
                j.watching()?;
            }
            JobSpec::Doctor(_) => {}
        }
        Ok(())
    }

    /// Whether the job only finds out what it would transfer.
    fn dry_run(&self) -> bool {
        match self {
            JobSpec::Submit(j) => j.dry_run,
            JobSpec::SyncInputs(j) => j.dry_run,
            JobSpec::DownloadOutputs(j) => j.dry_run,
            JobSpec::SyncOutputs(j) => j.dry_run,
            JobSpec::Doctor(_) => false,
        }
    }

    /// Runs the job with `transfer` (opened on the job's store) and the settings snapshot.
    /// `caller`: the daemon's client, when it is another user: what the job reads or writes
    /// for it must be what that user could (see [`Self::check_caller`]).
    pub async fn run(
        self,
        settings: &Settings,
        transfer: Arc<Transfer>,
        cancel: &CancellationToken,
        caller: Option<Arc<Caller>>,
    ) -> Result<JobOutput, JobError> {
        let cache_dir = settings
            .cache
            .hash_cache
            .then(|| settings.cache.dir.clone());
        let mut hash = HashSpec::from_settings(settings, Vec::new(), settings.cache.hash_cache);
        hash.scan.caller = caller.clone();
        let transfer = transfer.dry_run_if(self.dry_run());
        let url = self.store().unwrap_or(&settings.store.url);
        if !matches!(self, JobSpec::Doctor(_)) && url == crate::config::StoreSettings::default().url
        {
            // The embedded default is for trying attache; a farm job there is seen by no other
            // machine, and would "succeed" without a word.
            tracing::warn!(
                "store.url is not set: this job uses this machine's own store, {url}, which the farm's other machines do not see; set store.url (or --store) to the queue's bucket and root prefix, s3://BUCKET/ROOT_PREFIX"
            );
        }
        // The machine's storage-profile locations, under the job's own.
        let profile = &settings.storage_profile;
        Ok(match self {
            JobSpec::Submit(j) => {
                let mut hash = hash;
                hash.filter_also(&j.exclude, &j.include, &j.filter)
                    .map_err(|e| filter_error(&j.include, &j.filter, e))?;
                hash.scan.size_age = j.size_age;
                hash.scan.exclude_if_present.extend(j.exclude_if_present);
                let spec = SubmitSpec {
                    inputs: j.inputs,
                    output_dirs: j.output_dirs,
                    referenced: j.referenced,
                    farm_id: j.farm_id,
                    queue_id: j.queue_id,
                    local_locations: pairs(&profile.locations_with(&j.locations), "locations")?
                        .into_iter()
                        .map(|(name, path)| Location { name, path })
                        .collect(),
                    shared_locations: profile.shared_with(&j.shared),
                    require_paths_exist: j.require_paths_exist,
                    hash,
                };
                JobOutput::Submit(super::submit::run(spec, transfer, cancel).await?)
            }
            JobSpec::SyncInputs(j) => {
                let transfer = transfer.with_group_access(j.group()?);
                let spec = SyncInputsSpec {
                    dependencies: j.dependencies()?,
                    attachments: attachments(j.attachments, caller.as_deref())?,
                    session_dir: j.session_dir,
                    conflict: j.conflict,
                    location_map: pairs(&profile.locations_with(&j.locations), "locations")?,
                    cache_dir,
                    caller,
                };
                JobOutput::SyncInputs(super::sync_inputs::run(spec, transfer, cancel).await?)
            }
            JobSpec::SyncOutputs(j) => {
                let mut hash = hash;
                hash.filter_also(&j.exclude, &j.include, &j.filter)
                    .map_err(|e| filter_error(&j.include, &j.filter, e))?;
                hash.scan.size_age = j.size_age;
                hash.scan.exclude_if_present.extend(j.exclude_if_present);
                let spec = SyncOutputsSpec {
                    attachments: attachments(j.attachments, caller.as_deref())?,
                    session_dir: j.session_dir,
                    location_map: pairs(&profile.locations_with(&j.locations), "locations")?,
                    farm_id: j.farm_id,
                    queue_id: j.queue_id,
                    job_id: j.job_id,
                    step_id: j.step_id,
                    task_id: j.task_id,
                    session_action_id: j.session_action_id,
                    start_time: j.start_time.unwrap_or_else(|| {
                        crate::store::layout::session_action_time(std::time::SystemTime::now())
                    }),
                    hash,
                };
                JobOutput::SyncOutputs(super::sync_outputs::run(spec, transfer, cancel).await?)
            }
            JobSpec::DownloadOutputs(j) => {
                let watch = j.watching()?;
                let spec = DownloadOutputsSpec {
                    farm_id: j.farm_id,
                    queue_id: j.queue_id,
                    job_id: j.job_id,
                    step_id: j.step_id,
                    task_id: j.task_id,
                    conflict: j.conflict,
                    root_map: pairs(&j.root_map, "root_map")?,
                    cache_dir,
                    pick: filter(&j.exclude, &j.include, &j.filter)?,
                    size_age: j.size_age,
                    caller,
                    watch,
                };
                JobOutput::DownloadOutputs(
                    super::download_outputs::run(spec, transfer, cancel).await?,
                )
            }
            JobSpec::Doctor(_) => JobOutput::Doctor(
                super::doctor::run(settings, transfer, cancel)
                    .await
                    .map_err(TransferError::from)?,
            ),
        })
    }
}

impl DownloadOutputsJob {
    /// The job's `watch` and `until_idle`, checked.
    pub fn watching(&self) -> Result<Option<super::download_outputs::Watch>, JobError> {
        let Some(every) = self.watch else {
            return match self.until_idle {
                Some(_) => Err(invalid("until_idle", "needs watch (--watch)")),
                None => Ok(None),
            };
        };
        if every.0 < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "watch",
                "at least 1s: the store is listed each time (a job's outputs every 30s is plenty)",
            ));
        }
        if self.dry_run {
            return Err(invalid(
                "watch",
                "a dry run does not watch: it says what one download would do",
            ));
        }
        Ok(Some(super::download_outputs::Watch {
            every: every.0,
            until_idle: self.until_idle.map(|d| d.0),
        }))
    }
}

/// A job's exclusion and inclusion patterns and filter rules, compiled.
fn filter(
    excludes: &[String],
    includes: &[String],
    rules: &[String],
) -> Result<crate::scan::PathFilter, JobError> {
    crate::scan::PathFilter::with_rules(excludes, includes, rules)
        .map_err(|e| filter_error(includes, rules, e))
}

/// A bad pattern, under the field that holds it.
fn filter_error(includes: &[String], rules: &[String], e: crate::scan::PatternError) -> JobError {
    let field = if crate::scan::rules::Rules::new(rules).is_err() {
        "filter"
    } else if includes.contains(&e.pattern) {
        "include"
    } else {
        "exclude"
    };
    invalid(field, e.to_string())
}

/// The job's attachments document; a file's for `caller` only if that user may read it.
fn attachments(a: AttachmentsArg, caller: Option<&Caller>) -> Result<Attachments, JobError> {
    match a {
        AttachmentsArg::Inline(doc) => Ok(doc),
        AttachmentsArg::File(p) => {
            Attachments::read_regular_file(&p, caller).map_err(|e| invalid("attachments", e))
        }
    }
}

/// Parses `NAME=PATH` pairs.
pub fn pairs(values: &[String], field: &'static str) -> Result<Vec<(String, PathBuf)>, JobError> {
    values
        .iter()
        .map(|v| match v.split_once('=') {
            // A path of this machine: one sent to the daemon is not resolved there.
            Some((_, p)) if !p.is_empty() && !Path::new(p).is_absolute() => Err(invalid(
                field,
                format!("{v:?}: {p} must be an absolute path"),
            )),
            Some((k, p)) if !k.is_empty() && !p.is_empty() => Ok((k.to_string(), PathBuf::from(p))),
            _ => Err(invalid(
                field,
                match field {
                    "root_map" => format!("{v:?}: expected FROM=TO (--root-map ROOT=DIR)"),
                    _ => format!("{v:?}: expected NAME=PATH"),
                },
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_users_relative_paths_are_refused_before_they_are_looked_up() {
        // The crate's own files, found from the test's working directory (the daemon's, for a
        // daemon): a relative path that resolves there is still refused, not read.
        let caller = Caller::stranger_to(Path::new("Cargo.toml"));
        for (spec, field) in [
            (
                r#"{"kind":"submit","inputs":["Cargo.toml"],"farm_id":"f","queue_id":"q"}"#,
                "inputs",
            ),
            (
                r#"{"kind":"submit","asset_references":["Cargo.toml"],"farm_id":"f","queue_id":"q"}"#,
                "asset_references",
            ),
            (
                r#"{"kind":"sync_outputs","attachments":{"manifests":[]},"session_dir":"src","farm_id":"f","queue_id":"q","job_id":"j","step_id":"s","session_action_id":"sa"}"#,
                "session_dir",
            ),
            (
                r#"{"kind":"sync_outputs","attachments":"Cargo.toml","session_dir":"/s","farm_id":"f","queue_id":"q","job_id":"j","step_id":"s","session_action_id":"sa"}"#,
                "attachments",
            ),
        ] {
            let e = serde_json::from_str::<JobSpec>(spec)
                .unwrap()
                .check_caller(&caller)
                .unwrap_err();
            assert!(
                matches!(&e, JobError::Invalid { field: f, .. } if *f == field),
                "{spec}: {e}"
            );
            assert!(e.to_string().contains("must be an absolute path"), "{e}");
        }
    }

    #[test]
    fn specs_parse_from_json_and_name_bad_fields() {
        let j: JobSpec = serde_json::from_str(
            r#"{"kind":"submit","inputs":["/p/a"],"farm_id":"farm-1","queue_id":"queue-1","dry_run":true}"#,
        )
        .unwrap();
        assert_eq!(j.kind(), "submit");
        j.validate().unwrap();
        let e = serde_json::from_str::<JobSpec>(r#"{"kind":"submit","inputs":[],"queue_id":"q"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("farm_id"), "{e}");
        let e = serde_json::from_str::<JobSpec>(
            r#"{"kind":"submit","farm_id":"f","queue_id":"q","bogus":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = serde_json::from_str::<JobSpec>(r#"{"kind":"launch_rockets"}"#).unwrap_err();
        assert!(e.to_string().contains("launch_rockets"), "{e}");
        let rel: JobSpec = serde_json::from_str(
            r#"{"kind":"submit","inputs":["rel"],"farm_id":"f","queue_id":"q"}"#,
        )
        .unwrap();
        assert!(matches!(
            rel.validate(),
            Err(JobError::Invalid {
                field: "inputs",
                ..
            })
        ));
        let abs = rel.resolve(Path::new("/work")).unwrap();
        abs.validate().unwrap();
        let sync: JobSpec = serde_json::from_str(
            r#"{"kind":"sync_inputs","attachments":{"manifests":[],"fileSystem":"COPIED"},"session_dir":"/s","conflict":"create-copy"}"#,
        )
        .unwrap();
        sync.validate().unwrap();
        // The daemon would read a relative attachments file from its own working directory;
        // a store URL it cannot open would fail the job only once it runs.
        for (spec, field) in [
            (
                r#"{"kind":"sync_inputs","attachments":"att.json","session_dir":"/s"}"#,
                "attachments",
            ),
            (
                r#"{"kind":"sync_outputs","attachments":"att.json","session_dir":"/s","farm_id":"f","queue_id":"q","job_id":"j","step_id":"s","task_id":"t","session_action_id":"sa"}"#,
                "attachments",
            ),
            (
                r#"{"kind":"submit","inputs":["/p/a"],"farm_id":"f","queue_id":"q","store":"ftp://x"}"#,
                "store",
            ),
        ] {
            let e = serde_json::from_str::<JobSpec>(spec)
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(
                matches!(&e, JobError::Invalid { field: f, .. } if *f == field),
                "{spec}: {e}"
            );
        }
        let deps = |ids: &str| -> Result<(), JobError> {
            serde_json::from_str::<JobSpec>(&format!(
                r#"{{"kind":"sync_inputs","attachments":{{"manifests":[]}},"session_dir":"/s","step_dependencies":["step-a","step-b"]{ids}}}"#
            ))
            .unwrap()
            .validate()
        };
        deps(r#","farm_id":"f","queue_id":"q","job_id":"j""#).unwrap();
        assert!(matches!(
            deps(r#","farm_id":"f","queue_id":"q""#),
            Err(JobError::Invalid {
                field: "job_id",
                ..
            })
        ));
        assert!(matches!(
            deps(r#","farm_id":"f","queue_id":"q","job_id":"j/../k""#),
            Err(JobError::Invalid {
                field: "job_id",
                ..
            })
        ));
    }

    #[test]
    fn exclude_patterns_are_checked_before_the_job_runs() {
        let spec = |patterns: &str| -> JobSpec {
            serde_json::from_str(&format!(
                r#"{{"kind":"submit","inputs":["/p/a"],"farm_id":"f","queue_id":"q","exclude":{patterns}}}"#
            ))
            .unwrap()
        };
        spec(r#"["*.tmp", "cache/"]"#).validate().unwrap();
        let Err(JobError::Invalid { field, message }) = spec(r#"["*.tmp", "a[b"]"#).validate()
        else {
            panic!("a bad pattern passed")
        };
        assert_eq!(field, "exclude");
        assert!(message.contains("\"a[b\""), "{message}");
        let outputs: JobSpec = serde_json::from_str(
            r#"{"kind":"sync_outputs","attachments":"/a.json","session_dir":"/s","farm_id":"f","queue_id":"q","job_id":"j","step_id":"s","task_id":"t","session_action_id":"sa","exclude":["/abs"]}"#,
        )
        .unwrap();
        assert!(matches!(
            outputs.validate(),
            Err(JobError::Invalid {
                field: "exclude",
                ..
            })
        ));
        // An inclusion pattern is named under its own field.
        let included: JobSpec = serde_json::from_str(
            r#"{"kind":"sync_outputs","attachments":"/a.json","session_dir":"/s","farm_id":"f","queue_id":"q","job_id":"j","step_id":"s","task_id":"t","session_action_id":"sa","exclude":["*.tmp"],"include":["renders/"]}"#,
        )
        .unwrap();
        let Err(JobError::Invalid { field, message }) = included.validate() else {
            panic!("a directory-only inclusion pattern passed")
        };
        assert_eq!(field, "include");
        assert!(message.contains("dir/**"), "{message}");
        // Filter rules too, as the download of a job's outputs takes them.
        let ruled = |rules: &str| -> JobSpec {
            serde_json::from_str(&format!(
                r#"{{"kind":"download_outputs","farm_id":"f","queue_id":"q","job_id":"j","include":["*.exr"],"filter":{rules}}}"#
            ))
            .unwrap()
        };
        ruled(r#"["+ /renders/**", "- **"]"#).validate().unwrap();
        let Err(JobError::Invalid { field, message }) = ruled(r#"["*.exr"]"#).validate() else {
            panic!("a rule without its sign passed")
        };
        assert_eq!(field, "filter");
        assert!(message.contains("`+ PATTERN`"), "{message}");
    }
}
