//! Moving content between trees and a store: upload (single and managed multipart), download
//! (whole and ranged), the known-present index, the records of open multipart uploads (and
//! finding those other machines abandoned), the partial downloads kept to fetch on from, the
//! local content cache, bandwidth limits, retries and throttling.

pub mod abandoned_uploads;
pub mod content_cache;
pub mod copying_stores;
pub mod download;
pub mod gate;
pub mod inflight;
pub mod known_present;
pub mod limiter;
pub mod open_uploads;
pub mod partial_downloads;
pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::TransferSettings;
use crate::hash::ContentHash;
use crate::jobs::Cancelled;
use crate::progress::Progress;
use crate::store::{ObjectStore, StoreError};

/// What the transfers of one job share.
#[derive(Clone)]
pub struct Transfer {
    pub store: Arc<dyn ObjectStore>,
    pub settings: TransferSettings,
    /// Objects up to this size skip existing content with `PutObject If-None-Match: *`
    /// instead of a HEAD first (`None`: always HEAD).
    pub conditional_put_max: Option<u64>,
    /// Requests in flight, lowered while the store throttles.
    pub gate: Arc<gate::Gate>,
    /// Bytes of bodies held in memory, in units of [`MEMORY_UNIT`]: the memory bound.
    pub memory: Arc<Semaphore>,
    /// Only find out what would be transferred: ask the store what it lacks (upload), plan
    /// against what is in place (download); write nothing, to the store or to disk.
    pub dry_run: bool,
    /// Shared with the other jobs of the daemon, so an object two jobs need moves once.
    pub inflight: Option<Arc<inflight::InFlight>>,
    memory_units: u32,
    pub progress: Arc<Progress>,
    /// Hashes known to be in the store; `None`: ask the store every time.
    pub known: Option<Arc<known_present::KnownPresent>>,
    /// Whether the store copies every part again on completion (then files up to
    /// `transfer.copying_store_threshold` go in one PUT), as measured on this machine.
    pub copying_store: Arc<copying_stores::CopyingStore>,
    /// Multipart uploads started and not yet completed or aborted, for the next run to abort.
    pub open_uploads: open_uploads::OpenUploads,
    /// Large objects a download fetched part of, kept for the next run to fetch on from.
    pub partial_downloads: partial_downloads::PartialDownloads,
    /// Whether the store answers ListMultipartUploads, to find uploads to take over
    /// (`abandoned_uploads`); cleared by its first lasting refusal.
    pub lists_open_uploads: Arc<std::sync::atomic::AtomicBool>,
    /// Copies of fetched objects kept on this machine (`cache.content_size`); `None`: off.
    pub content_cache: Option<Arc<content_cache::ContentCache>>,
    /// The group every file and directory a download places is given (with group write):
    /// the group of the user a worker's job runs as.
    pub group_access: Option<Arc<crate::fsutil::group::GroupAccess>>,
}

impl Transfer {
    /// This context, or with `dry_run` the same one finding out what would be transferred
    /// without writing anything.
    pub fn dry_run_if(self: Arc<Self>, dry_run: bool) -> Arc<Transfer> {
        if !dry_run {
            return self;
        }
        Arc::new(Transfer {
            dry_run: true,
            ..(*self).clone()
        })
    }

    /// This context, or with `group` the same one giving what downloads place to that group.
    pub fn with_group_access(
        self: Arc<Self>,
        group: Option<crate::fsutil::group::GroupAccess>,
    ) -> Arc<Transfer> {
        match group {
            None => self,
            Some(g) => Arc::new(Transfer {
                group_access: Some(Arc::new(g)),
                ..(*self).clone()
            }),
        }
    }

    /// Files bigger than this go up in parts: `transfer.multipart_threshold`, raised for a
    /// store that copies parts on completion ([`copying_stores`]).
    pub fn multipart_threshold(&self) -> u64 {
        self.copying_store
            .multipart_threshold(self.settings.multipart_threshold.0)
    }

    /// Budget units a body of `len` bytes takes (a body larger than the whole budget takes
    /// all of it, rather than waiting forever).
    pub fn memory_units(&self, len: u64) -> u32 {
        (len.div_ceil(MEMORY_UNIT).max(1) as u32).min(self.memory_units)
    }
}

/// The unit of the transfer memory budget.
pub const MEMORY_UNIT: u64 = 64 * 1024;

/// Bytes that hold a memory budget ([`Transfer::memory`] or another semaphore) until the last
/// copy of them is dropped, however long the request that sends them takes.
pub fn bytes_holding<T>(bytes: T, budget: tokio::sync::OwnedSemaphorePermit) -> bytes::Bytes
where
    T: AsRef<[u8]> + Send + 'static,
{
    struct Held<T> {
        bytes: T,
        _budget: tokio::sync::OwnedSemaphorePermit,
    }
    impl<T: AsRef<[u8]>> AsRef<[u8]> for Held<T> {
        fn as_ref(&self) -> &[u8] {
            self.bytes.as_ref()
        }
    }
    bytes::Bytes::from_owner(Held {
        bytes,
        _budget: budget,
    })
}

/// Cap on the runtime's blocking threads (file reads, writes, copies and checks of transfers).
/// Tokio's default of 512 let a download of many small files start hundreds of threads, each
/// with its own stack and allocator arena; past the cap, blocking work queues.
const MAX_BLOCKING_THREADS: usize = 64;

/// The runtime transfers run on, in the CLI and in the daemon, with `threads` workers
/// ([`crate::config::Settings::runtime_threads`]).
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
}

impl Transfer {
    /// A transfer context from the settings. Bodies in memory are bounded by
    /// `max_parts_in_flight × part_size`: a single PUT bigger than a part is read from its
    /// file as it is sent.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        settings: &crate::config::Settings,
        gate: Arc<gate::Gate>,
        progress: Arc<Progress>,
        known: Option<Arc<known_present::KnownPresent>>,
    ) -> Transfer {
        let t = &settings.transfer;
        let budget = t.max_parts_in_flight as u64 * t.part_size.0;
        let memory_units = budget.div_ceil(MEMORY_UNIT).min(u64::from(u32::MAX)) as u32;
        let copying_store = Arc::new(copying_stores::CopyingStore::new(
            &settings.cache.dir,
            store.identity(),
            t.copying_store_threshold.0,
            store.completion_copies_parts(),
        ));
        Transfer {
            memory_units,
            store,
            settings: t.clone(),
            conditional_put_max: settings
                .s3
                .conditional_put
                .then_some(settings.s3.conditional_put_max_size.0),
            gate,
            memory: Arc::new(Semaphore::new(memory_units as usize)),
            progress,
            known,
            copying_store,
            open_uploads: open_uploads::OpenUploads::new(&settings.cache.dir),
            partial_downloads: partial_downloads::PartialDownloads::of(settings),
            lists_open_uploads: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            content_cache: content_cache::ContentCache::from_settings(&settings.cache)
                .map(Arc::new),
            dry_run: false,
            inflight: None,
            group_access: None,
        }
    }
}

/// A transfer failure, naming the file or object.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}{}", crate::fsutil::io_advice(.source))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: file changed during upload (its content no longer has hash {planned}); nothing was stored under that key. Run again once the file is complete"
    )]
    ChangedDuringUpload { path: PathBuf, planned: ContentHash },
    #[error(
        "{key}: downloaded content does not match (expected {expected_size} bytes with hash {expected}, got {got_size} bytes with hash {got}) after {tries} tries; nothing was written to {dest}"
    )]
    Corrupt {
        key: String,
        dest: PathBuf,
        expected: ContentHash,
        expected_size: u64,
        got: ContentHash,
        got_size: u64,
        tries: u32,
    },
    #[error("{path}: {message}")]
    Refused { path: PathBuf, message: String },
    /// A file's content is not in the store (deleted, or another store or root prefix).
    #[error("{dest}: its content is missing from the store: {source}")]
    Missing {
        dest: PathBuf,
        source: Box<StoreError>,
    },
    #[error("cancelled")]
    Cancelled(#[from] Cancelled),
}

/// Refused for a client of another user: names what they may not use.
impl From<crate::fsutil::access::Refused> for TransferError {
    fn from(refused: crate::fsutil::access::Refused) -> TransferError {
        TransferError::Refused {
            message: refused.reason(),
            path: refused.path,
        }
    }
}

impl TransferError {
    /// Worth running again later as it is (the store unreachable, throttling, a 5xx; a file
    /// still being written), rather than a lasting failure a run again would meet again.
    pub fn is_retryable(&self) -> bool {
        match self {
            TransferError::Store(e) => e.is_retryable(),
            TransferError::ChangedDuringUpload { .. } => true,
            _ => false,
        }
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TransferError {
        let path = path.into();
        move |source| TransferError::Io { path, source }
    }

    /// An error of opening a directory below `dir` without following a link
    /// (`fsutil::beneath`): a link or a file in the way is refused, naming it; another error
    /// names where it was met.
    pub fn on_the_way(dir: &std::path::Path) -> impl FnOnce(std::io::Error) -> TransferError {
        move |e| {
            if let Some(link) = crate::fsutil::beneath::InTheWay::of(&e) {
                return TransferError::Refused {
                    path: link.path.clone(),
                    message: "is a link or a file where the manifest needs a directory; attache \
                              does not write through links. Remove it and run again"
                        .into(),
                };
            }
            match crate::fsutil::beneath::AtPath::split(e) {
                (Some(path), source) => TransferError::Io { path, source },
                (None, source) => TransferError::Io {
                    path: dir.to_path_buf(),
                    source,
                },
            }
        }
    }
}

/// Awaits `fut` unless `cancel` fires first (dropping `fut`, which stops its I/O at once).
pub async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl Future<Output = T>,
) -> Result<T, Cancelled> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Cancelled),
        v = fut => Ok(v),
    }
}

/// Awaits `request` unless `cancel` fires; then it gets `grace` more to bring its reply (a
/// request the store may act on anyway: its answer says what to undo). No grace: as
/// [`cancellable`].
pub async fn reply_within<T>(
    cancel: &CancellationToken,
    grace: std::time::Duration,
    request: impl Future<Output = T>,
) -> Result<T, Cancelled> {
    tokio::pin!(request);
    match cancellable(cancel, &mut request).await {
        Ok(reply) => return Ok(reply),
        Err(cancelled) if grace.is_zero() => return Err(cancelled),
        Err(_) => {}
    }
    tokio::time::timeout(grace, request)
        .await
        .map_err(|_| Cancelled)
}

/// Runs a piece of a transfer (an object, a part of one) as its own task; the returned future
/// yields its result, and dropping that future aborts the task. Pieces polled together in one
/// future would all run on one thread, and each response, each body chunk, would wake that
/// thread from the worker that read it: cross-thread wake-ups that were a large share of a
/// transfer's CPU. As tasks, each runs on the worker that drives its connection.
pub(crate) fn spawned<T, F>(fut: F) -> impl Future<Output = Result<T, TransferError>> + Send
where
    T: Send + 'static,
    F: Future<Output = Result<T, TransferError>> + Send + 'static,
{
    // In the caller's span: a daemon job's warnings from its pieces reach its record.
    let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(fut.in_current_span()));
    async move {
        match task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Aborted only by the runtime shutting down.
            Err(_) => Err(Cancelled.into()),
        }
    }
}

/// Runs each of `pieces` (one per object) as a task, `workers` at a time, to the end or the
/// first real failure ([`first_failure`]). The loop that starts them and collects their
/// results is a task too, so a finished piece wakes it on the runtime's worker rather than
/// the caller's thread (10,000 futex calls for a 5,000-file download when it was not).
pub(crate) async fn run_pieces<S, F>(
    pieces: S,
    workers: usize,
    stop: CancellationToken,
    cancel: &CancellationToken,
) -> Result<(), TransferError>
where
    S: futures::Stream<Item = F> + Send + 'static,
    F: Future<Output = Result<(), TransferError>> + Send + 'static,
{
    use futures::StreamExt;
    let cancel = cancel.clone();
    spawned(async move {
        // Once stopped, no new piece is taken: the stream may be fed by work that is itself
        // held (a put's hashing, in a system call on a stalled disk) and would end only then.
        let results = pieces
            .take_until(stop.clone().cancelled_owned())
            .map(spawned)
            .buffer_unordered(workers.max(1));
        first_failure(results, &stop, &cancel).await
    })
    .await
}

/// Drives a job's per-object results to the end. The first real failure stops the rest
/// (through `stop`) and is the one reported, not the cancellations it caused; a cancel of the
/// job itself reports `Cancelled`.
async fn first_failure(
    results: impl futures::Stream<Item = Result<(), TransferError>>,
    stop: &CancellationToken,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    use futures::StreamExt;
    let mut results = std::pin::pin!(results);
    let mut first = None;
    while let Some(r) = results.next().await {
        if let Err(e) = r {
            stop.cancel();
            if first.is_none() || matches!(first, Some(TransferError::Cancelled(_))) {
                first = Some(e);
            }
        }
    }
    match first {
        Some(TransferError::Cancelled(_)) | None if cancel.is_cancelled() => Err(Cancelled.into()),
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn a_write_to_a_full_disk_names_the_file_and_says_what_to_do() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let msg = TransferError::io("/session/out/a.exr")(full).to_string();
        assert!(
            msg.starts_with("/session/out/a.exr: No space left on device"),
            "{msg}"
        );
        assert!(msg.contains("free some space on it"), "{msg}");
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        let msg = TransferError::io("/session/out/a.exr")(denied).to_string();
        assert!(!msg.contains("free some space"), "{msg}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spawned_piece_gives_its_result_and_is_aborted_when_dropped() {
        assert_eq!(spawned(async { Ok(7) }).await.unwrap(), 7);

        // Dropped before it finishes (a job dropped by the daemon): the task must not run on.
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let piece = spawned(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            f.store(true, Ordering::SeqCst);
            Ok(())
        });
        let _ = tokio::time::timeout(Duration::from_millis(20), piece).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "the dropped piece ran to its end"
        );
    }

    /// The pieces come from a stream that a held producer keeps open (a put's hashing stuck in
    /// a system call): a cancel ends the run once the pieces started have, without waiting for
    /// the stream's end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_ends_the_run_without_waiting_for_the_stream_to_end() {
        use futures::{FutureExt, StreamExt};
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let started = futures::stream::iter([async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.store(true, Ordering::SeqCst);
            Ok::<(), TransferError>(())
        }
        .boxed()]);
        let held = futures::stream::pending();
        let cancel = CancellationToken::new();
        let run = run_pieces(started.chain(held), 4, cancel.child_token(), &cancel);
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            canceller.cancel();
        });
        let ended = tokio::time::timeout(Duration::from_secs(10), run).await;
        assert!(
            matches!(ended, Ok(Err(TransferError::Cancelled(_)))),
            "{ended:?}"
        );
        assert!(
            finished.load(Ordering::SeqCst),
            "the piece started was not waited for"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[should_panic(expected = "the piece's own panic")]
    async fn a_spawned_piece_that_panics_panics_its_caller() {
        let _ = spawned(async {
            if true {
                panic!("the piece's own panic");
            }
            Ok(())
        })
        .await;
    }
}
