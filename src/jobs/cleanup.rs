//! `attache cleanup`: aborts the multipart uploads a store holds open under its root prefix's
//! `Data/` (where content objects go): first those this machine recorded as left open by its
//! earlier runs (those kept to be resumed too), then every other one started longer ago than
//! a given age (`rclone cleanup` does the same with 24 h). Their parts are invisible in
//! listings but billed.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::store::OpenUpload;
use crate::store::layout::join;
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
    /// Open uploads the store listed under `prefix`.
    pub listed: u64,
    /// Uploads aborted (or, with `dry_run`, that would be).
    pub aborted: Vec<OpenUpload>,
    /// Kept: started within `older_than`, or the store did not say when.
    pub kept_younger: u64,
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
        report.recorded_aborted =
            crate::transfer::cancellable(cancel, abort_leftovers(&t, true)).await? as u64;
    }
    let open = t
        .gate
        .run(cancel, || t.store.list_multipart_uploads(&prefix))
        .await?;
    report.listed = open.len() as u64;
    let recorded = t.open_uploads.upload_ids(&t.store.identity());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let cutoff = now_ms.saturating_sub(spec.older_than.as_millis() as i64);
    let mut to_abort = Vec::new();
    for u in open {
        if recorded.running.contains(&u.upload_id) {
            report.kept_in_progress_here += 1;
        } else if t.dry_run && recorded.left.contains(&u.upload_id) {
            // A real run aborts it first, whatever its age.
            report.recorded_aborted += 1;
        } else if !spec.older_than.is_zero() && u.initiated_ms.is_none_or(|t| t > cutoff) {
            report.kept_younger += 1;
        } else if t.dry_run {
            report.aborted.push(u);
        } else {
            to_abort.push(u);
        }
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
    report
        .aborted
        .sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
    Ok(report)
}
