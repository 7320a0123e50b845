//! A job's manifests in its store, as `check` and `manifest cat` read them: its input
//! manifests (from its attachments, each checked against the hash the job recorded) and its
//! output manifests (the latest run of each task, as download-outputs takes them).

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::download_outputs::{OutputsOf, latest_output_keys};
use super::fetch_manifest::{fetch_manifest, read_at_once};
use crate::manifest::Manifest;
use crate::store::layout::manifests_prefix;
use crate::transfer::{Transfer, TransferError};

/// A manifest as fetched: its key, and it, or why it could not be used.
pub type Fetched = (String, Result<Manifest, TransferError>);

/// What [`fetch`] found.
pub struct JobManifests {
    /// In the order asked: the input manifests, then the tasks' output manifests. A listing of
    /// outputs that failed stands as one entry keyed `outputs of JOB[/STEP[/TASK]]`.
    pub manifests: Vec<Fetched>,
    /// With outputs asked for: the tasks whose output manifests were found.
    pub output_tasks: usize,
}

/// Fetches the input manifests `inputs` (paths relative to the store's `Manifests/`, with the
/// hash the job recorded for each) and, with `outputs_of`, the tasks' latest output
/// manifests. One that cannot be used is kept with its error and the others still fetched;
/// only a cancel stops it.
pub async fn fetch(
    t: &Transfer,
    inputs: &[(String, Option<String>)],
    outputs_of: Option<&OutputsOf>,
    cancel: &CancellationToken,
) -> Result<JobManifests, TransferError> {
    let prefix = manifests_prefix(t.store.root_prefix());
    let mut found = JobManifests {
        manifests: Vec::new(),
        output_tasks: 0,
    };
    for (path, expected) in inputs {
        let key = format!("{prefix}{path}");
        let fetched = fetch_manifest(t, &key, expected.as_deref(), cancel).await;
        found.manifests.push(keep(key, fetched)?);
    }
    let Some(of) = outputs_of else {
        return Ok(found);
    };
    match latest_output_keys(of, t, cancel).await {
        Ok((tasks, keys)) => {
            found.output_tasks = tasks;
            // One per task: several at once, each kept with its own result.
            let fetched: Vec<_> = read_at_once(t, &keys, cancel).collect().await;
            for (key, fetched) in keys.into_iter().zip(fetched) {
                found
                    .manifests
                    .push(keep(key, fetched.map(|(manifest, _)| manifest))?);
            }
        }
        Err(TransferError::Cancelled(c)) => return Err(c.into()),
        Err(e) => found.manifests.push((
            format!(
                "outputs of {}",
                [Some(&of.job_id), of.step_id.as_ref(), of.task_id.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            Err(e),
        )),
    }
    Ok(found)
}

/// A fetch's result, unless it was cancelled: that stops everything.
fn keep(key: String, fetched: Result<Manifest, TransferError>) -> Result<Fetched, TransferError> {
    match fetched {
        Err(TransferError::Cancelled(c)) => Err(c.into()),
        other => Ok((key, other)),
    }
}
