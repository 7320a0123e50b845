//! `--attachments FILE` and `--farm-id … --queue-id … --job-id … [--step-id … [--task-id …]]`:
//! a job's manifests in its store, its inputs' and its tasks' outputs', for `check` and
//! `manifest cat`.

use std::path::PathBuf;

use clap::Args;

use super::UsageError;
use crate::jobs::attachments::Attachments;
use crate::jobs::download_outputs::OutputsOf;

#[derive(Debug, Args)]
pub struct JobManifestArgs {
    /// A job's attachments JSON (as `submit` printed it): its input manifests, fetched from
    /// the store and checked against the hashes the job recorded.
    #[arg(long, value_name = "FILE")]
    pub attachments: Option<PathBuf>,
    /// A job's outputs: the latest run of each task, as download-outputs takes them (with
    /// --farm-id and --queue-id; --step-id and --task-id narrow it).
    #[arg(long, value_name = "ID", requires_all = ["farm_id", "queue_id"])]
    pub job_id: Option<String>,
    /// The farm of --job-id.
    #[arg(long, value_name = "ID", requires = "job_id")]
    farm_id: Option<String>,
    /// The queue of --job-id.
    #[arg(long, value_name = "ID", requires = "job_id")]
    queue_id: Option<String>,
    /// Only this step's outputs (with --job-id).
    #[arg(long, value_name = "ID", requires = "job_id")]
    step_id: Option<String>,
    /// Only this task's outputs (with --step-id).
    #[arg(long, value_name = "ID", requires = "step_id")]
    task_id: Option<String>,
}

impl JobManifestArgs {
    /// The input manifests to fetch: each one's path under the store's `Manifests/` and the
    /// hash the job recorded. A bad attachments file is bad input (exit 2).
    pub fn inputs(&self) -> Result<Vec<(String, Option<String>)>, UsageError> {
        let Some(path) = &self.attachments else {
            return Ok(Vec::new());
        };
        let doc = Attachments::read_file(path).map_err(|e| UsageError {
            message: format!("--attachments {e}"),
        })?;
        Ok(doc
            .manifests
            .into_iter()
            .filter_map(|m| Some((m.input_manifest_path?, m.input_manifest_hash)))
            .collect())
    }

    /// The outputs to fetch, with --job-id.
    pub fn outputs_of(&self) -> Option<OutputsOf> {
        match (&self.farm_id, &self.queue_id, &self.job_id) {
            (Some(farm_id), Some(queue_id), Some(job_id)) => Some(OutputsOf {
                farm_id: farm_id.clone(),
                queue_id: queue_id.clone(),
                job_id: job_id.clone(),
                step_id: self.step_id.clone(),
                task_id: self.task_id.clone(),
            }),
            _ => None,
        }
    }

    /// Whether a job's manifests are asked for.
    pub fn any(&self) -> bool {
        self.attachments.is_some() || self.job_id.is_some()
    }

    /// A usage error when neither manifest files (`files`, named `what`) nor a job's
    /// manifests are given: clap's own would name the files alone.
    pub fn require_some(
        &self,
        files: &[std::path::PathBuf],
        what: &str,
    ) -> Result<(), crate::cli::UsageError> {
        if files.is_empty() && !self.any() {
            return Err(crate::cli::UsageError {
                message: format!(
                    "give {what} files, or a job's manifests: --attachments FILE, or --farm-id ID --queue-id ID --job-id ID [--step-id ID [--task-id ID]]"
                ),
            });
        }
        Ok(())
    }
}
