//! `attache cleanup`: aborts the multipart uploads a store holds open under its root prefix's
//! `Data/` (where content objects go): first those this machine recorded as left open by its
//! earlier runs (those kept to be resumed too), then every other one started longer ago than
//! a given age (`rclone cleanup` does the same with 24 h) and not written to since. Their
//! parts are invisible in listings but billed.
//!
//! Why the parts' times too: an upload started long ago may be at work now, taken over by
//! another machine that resumes it (see `transfer::abandoned_uploads`); aborting it would fail
//! that machine's upload.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::store::layout::join;
use crate::store::{OpenUpload, UploadedPart};
use crate::transfer::abandoned_uploads::{landed_after, spare_window, taken_over_since};
use crate::transfer::open_uploads::LeftAs;
use crate::transfer::upload::{abort_leftovers, abort_within};
use crate::transfer::{Transfer, TransferError};

pub struct CleanupSpec {
    /// Only uploads started longer ago than this are aborted (0: all).
    pub older_than: Duration,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct CleanupReport {
    pub store: String,
    /// The key prefix whose uploads were listed.
    pub prefix: String,
    /// The transfer's `dry_run`: report what would be aborted, abort nothing.
    pub dry_run: bool,
    /// Uploads this machine's earlier runs recorded as left open, aborted first whatever their
    /// age (with `dry_run`: those of them the store lists, that would be).
    pub recorded_aborted: u64,
    /// Those uploads, each named (their start time when the store listed them).
    pub recorded: Vec<OpenUpload>,
    /// Open uploads the store listed under `prefix`.
    pub listed: u64,
    /// Uploads aborted (or, with `dry_run`, that would be).
    pub aborted: Vec<OpenUpload>,
    /// Kept: started within `older_than`, or the store did not say when.
    pub kept_younger: u64,
    /// Kept: started earlier, but a part landed in it within `older_than` (an uploader is at
    /// work on it, such as a machine that took it over).
    pub kept_written_lately: u64,
    /// Kept: a transfer on this machine is running it.
    pub kept_in_progress_here: u64,
    /// Uploads the store did not abort, with the reason.
    pub failed: Vec<String>,
}

pub async fn run(
    spec: CleanupSpec,
    t: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<CleanupReport, TransferError> {
    let store = t.store.describe();
    let prefix = join(t.store.root_prefix(), "Data/");
    let mut report = CleanupReport {
        store: store.clone(),
        prefix: prefix.clone(),
        dry_run: t.dry_run,
        ..CleanupReport::default()
    };
    if !t.dry_run {
        report.recorded = crate::transfer::cancellable(cancel, abort_leftovers(&t, true)).await?;
    }
    let open = t
        .gate
        .run(cancel, || t.store.list_multipart_uploads(&prefix))
        .await?;
    report.listed = open.len() as u64;
    let recorded = t.open_uploads.upload_ids(&t.store.identity());
    let cutoff = now_ms().saturating_sub(spec.older_than.as_millis() as i64);
    let (mut candidates, mut recorded_left) = (Vec::new(), Vec::new());
    for u in open {
        if recorded.running.contains(&u.upload_id) {
            report.kept_in_progress_here += 1;
        } else if t.dry_run && recorded.left.get(&u.upload_id) == Some(&LeftAs::GivenUp) {
            // An abort to repeat: no other machine took it over.
            report.recorded.push(u);
        } else if t.dry_run && recorded.left.contains_key(&u.upload_id) {
            recorded_left.push(u);
        } else {
            candidates.push(u);
        }
    }
    // A real run aborts these first, whatever their age, unless another machine took one over
    // and is at work in it (see `abort_leftovers`): that one is judged as any other.
    let window = spare_window(&t.settings);
    for (u, parts) in with_parts(&t, recorded_left, cancel).await? {
        let left_as = recorded.left[&u.upload_id];
        if parts.is_some_and(|p| taken_over_since(&p, left_as, window)) {
            candidates.push(u);
        } else {
            report.recorded.push(u);
        }
    }
    let mut to_abort = Vec::new();
    for u in candidates {
        if !spec.older_than.is_zero() && u.initiated_ms.is_none_or(|t| t > cutoff) {
            report.kept_younger += 1;
        } else {
            to_abort.push(u);
        }
    }
    if !spec.older_than.is_zero() {
        let old = std::mem::take(&mut to_abort);
        for (u, parts) in with_parts(&t, old, cancel).await? {
            if parts.is_some_and(|p| landed_after(&p, cutoff)) {
                report.kept_written_lately += 1;
            } else {
                to_abort.push(u);
            }
        }
    }
    if t.dry_run {
        report.aborted = std::mem::take(&mut to_abort);
    }
    // `transfer.workers` at a time (the gate caps the connections): a bucket a farm has
    // neglected can hold thousands, at a round trip each.
    let aborts = futures::stream::iter(to_abort)
        .map(|u| async {
            let aborted = abort_within(&*t.store, &t.gate, &u.key, &u.upload_id).await;
            (u, aborted)
        })
        .buffer_unordered(t.settings.workers.max(1));
    let mut aborts = std::pin::pin!(aborts);
    while let Some((u, aborted)) = crate::transfer::cancellable(cancel, aborts.next()).await? {
        match aborted {
            Ok(()) => report.aborted.push(u),
            Err(e) => report.failed.push(e),
        }
    }
    for list in [&mut report.aborted, &mut report.recorded] {
        list.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
    }
    report.recorded_aborted = report.recorded.len() as u64;
    Ok(report)
}

/// `uploads`, each with the parts the store lists for it: `None` when it is gone meanwhile,
/// or its parts cannot be listed (a policy without `s3:ListMultipartUploadParts`: then it is
/// judged by its start alone, as before parts were asked about).
async fn with_parts(
    t: &Transfer,
    uploads: Vec<OpenUpload>,
    cancel: &CancellationToken,
) -> Result<Vec<(OpenUpload, Option<Vec<UploadedPart>>)>, TransferError> {
    let listed = futures::stream::iter(uploads)
        .map(|u| async move {
            let parts = t
                .gate
                .run(cancel, || t.store.list_parts(&u.key, &u.upload_id))
                .await;
            (u, parts)
        })
        .buffer_unordered(t.settings.workers.max(1));
    let mut listed = std::pin::pin!(listed);
    let mut out = Vec::new();
    while let Some((u, parts)) = listed.next().await {
        let parts = match parts {
            Ok(parts) => parts,
            Err(TransferError::Cancelled(c)) => return Err(c.into()),
            Err(e) => {
                tracing::debug!(
                    key = u.key,
                    upload_id = u.upload_id,
                    "cannot list the parts of an open upload ({e}); judged by its start"
                );
                None
            }
        };
        out.push((u, parts));
    }
    Ok(out)
}
