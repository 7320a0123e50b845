//! The put job: hash a tree and upload its content, uploads running while hashing goes on.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

mod handoff;

use super::Cancelled;
use super::hash::{HashJobError, HashReport, HashSpec, run_with_sink};
use crate::hash::parallel::{HashSink, HashedFile};
use crate::transfer::upload::{UploadItem, UploadReport, upload_stream};
use crate::transfer::{Transfer, TransferError};

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error(transparent)]
    Hash(#[from] HashJobError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
}

impl PutError {
    /// See [`TransferError::is_retryable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, PutError::Transfer(t) if t.is_retryable())
    }

    fn is_cancelled(&self) -> bool {
        matches!(
            self,
            PutError::Hash(HashJobError::Cancelled(_))
                | PutError::Transfer(TransferError::Cancelled(_))
        )
    }
}

#[derive(Debug)]
pub struct PutReport {
    pub hash: HashReport,
    pub upload: UploadReport,
    pub seconds: f64,
}

/// Hashed files waiting for an upload worker.
const QUEUE: usize = 256;

/// Files the uploader takes before a hashing thread blocked on a full queue may go on.
const QUEUE_BATCH: usize = 64;

/// Files up to this size are handed to the uploader with the bytes hashing read.
const KEEP_BYTES_UP_TO: u64 = 1 << 20;

/// Bytes kept from hashing for the uploader, at most (in 64 KiB units). Past it a file goes
/// without its bytes and is read again for upload: the queue alone would hold up to
/// QUEUE × 1 MiB (a mixed tree of textures peaked at 282 MiB before this bound).
const KEPT_UNITS: usize = 16 * 16;

struct ToUploader {
    tx: handoff::Sender<UploadItem>,
    /// Upload only the very files hashed ([`UploadItem::same_file`]).
    only_files_hashed: bool,
    transfer: Arc<Transfer>,
    kept: Arc<tokio::sync::Semaphore>,
}

impl HashSink for ToUploader {
    fn keep_bytes_up_to(&self) -> u64 {
        KEEP_BYTES_UP_TO.min(self.transfer.settings.multipart_threshold.0)
    }

    fn totals(&self, files: u64, bytes: u64) {
        self.transfer.progress.add_total(files, bytes);
    }

    fn hashed(&self, file: &HashedFile, abs: &Path, data: Option<bytes::Bytes>) {
        let data = data.and_then(|bytes| {
            let units = bytes.len().div_ceil(1 << 16).max(1) as u32;
            let budget = self.kept.clone().try_acquire_many_owned(units).ok()?;
            Some(crate::transfer::bytes_holding(bytes, budget))
        });
        let item = UploadItem {
            hash: file.hash,
            size: file.stat.size,
            path: abs.to_path_buf(),
            data,
            same_file: self
                .only_files_hashed
                .then_some((file.stat.dev, file.stat.ino)),
        };
        // Fails only when the uploader stopped (failed or cancelled); hashing is told apart.
        let _ = self.tx.blocking_send(item);
    }
}

/// Hashes `spec.roots` and uploads every distinct content object to the transfer's store.
pub async fn run(
    spec: HashSpec,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<PutReport, PutError> {
    run_with(
        move |sink, job| {
            run_with_sink(
                &spec,
                job,
                &crate::progress::Progress::default(),
                Some(sink),
            )
        },
        false,
        transfer,
        cancel,
    )
    .await
}

/// Runs `hashing` (on a blocking thread) and uploads every file it hands its sink, as it
/// goes. Used by `put` (whole trees), `submit` and `sync-outputs` (chosen files of a root).
/// With `only_files_hashed` (another user's job), a file is uploaded only if its path still
/// names the very file hashed.
pub async fn run_with<H>(
    hashing: H,
    only_files_hashed: bool,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<PutReport, PutError>
where
    H: FnOnce(&dyn HashSink, &CancellationToken) -> Result<HashReport, HashJobError>
        + Send
        + 'static,
{
    let started = Instant::now();
    let job = cancel.child_token();
    let (tx, rx) = handoff::channel(QUEUE, QUEUE_BATCH);
    let hashing = {
        let (job, sink) = (
            job.clone(),
            ToUploader {
                tx,
                only_files_hashed,
                transfer: transfer.clone(),
                kept: Arc::new(tokio::sync::Semaphore::new(KEPT_UNITS)),
            },
        );
        crate::logging::job_warnings::spawn_blocking(move || {
            let r = hashing(&sink, &job);
            if r.is_err() {
                job.cancel();
            }
            r
        })
    };
    let uploaded = upload_stream(transfer.clone(), rx, &job).await;
    if uploaded.is_err() {
        job.cancel();
    }
    // Once the job is cancelled, hashing held in a system call (a disk stalled in a flush, a
    // hash cache another process keeps locked) is not waited for: it stops at its next look
    // at the cancel, the command already gone.
    let hashed = match crate::transfer::cancellable(cancel, hashing).await {
        Ok(hashed) => hashed.expect("hashing task panicked"),
        Err(cancelled) => Err(cancelled.into()),
    };
    // Report the cause, not the cancellation it caused in the other half.
    let (hash, upload) = match (hashed, uploaded) {
        (Ok(h), Ok(u)) => (h, u),
        (Err(e), Err(u)) => {
            let (e, u) = (PutError::from(e), PutError::from(u));
            return Err(if e.is_cancelled() { u } else { e });
        }
        (Err(e), _) => return Err(e.into()),
        (_, Err(e)) => return Err(e.into()),
    };
    if cancel.is_cancelled() {
        return Err(PutError::Transfer(Cancelled.into()));
    }
    Ok(PutReport {
        hash,
        upload,
        seconds: started.elapsed().as_secs_f64(),
    })
}
