//! Uploading content objects: each distinct hash once, skipping what the store already has.
//!
//! Per object: known-present index → (HEAD, or a conditional PUT) → single PUT up to
//! `transfer.multipart_threshold` (raised for a store that copies parts on completion:
//! `copying_stores`; from memory up to `part_size`, read from the file as it is sent above
//! it), managed multipart above it (resumed, keeping the parts the store proves
//! it holds, when an earlier run on this machine left one open, or another machine abandoned
//! one: `abandoned_uploads`). A body is always the bytes
//! that were hashed: small files reuse the hashing read, other files are hashed again as they
//! are read for upload, and content that no longer matches its planned hash is never stored.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3Default;

use super::gate::Gate;
use super::inflight::{self, Claim, Done};
use super::known_present::{KnownEntries, KnownPresent};
use super::{Transfer, TransferError, cancellable, run_pieces};
use super::{abandoned_uploads, open_uploads};
use crate::fsutil::beneath::{FileId, is_replaced, open_regular_same};
use crate::hash::ContentHash;
use crate::jobs::Cancelled;
use crate::store::file_source::{FileSource, READ_CHUNK, SourceError};
use crate::store::layout::data_key;
use crate::store::sent_bytes::SentBytes;
use crate::store::{ObjectStore, PutOptions, PutOutcome, StoreError, UploadedPart};

/// One file to upload, by content hash.
#[derive(Debug, Clone)]
pub struct UploadItem {
    pub hash: ContentHash,
    pub size: u64,
    pub path: PathBuf,
    /// The file's bytes when hashing already read them (small files).
    pub data: Option<Bytes>,
    /// The very file hashed (device and inode), for another user's job: only it is read, so
    /// nothing of a file swapped in since (one that user may not read) reaches the store,
    /// not even a part before its content is found wrong. `None`: what the path names,
    /// checked by its content.
    pub same_file: Option<FileId>,
}

/// What an upload did.
#[derive(Debug, Default, serde::Serialize)]
pub struct UploadReport {
    /// Files offered.
    pub files: u64,
    /// Distinct content hashes among them.
    pub objects: u64,
    pub uploaded_objects: u64,
    pub uploaded_bytes: u64,
    pub multipart_objects: u64,
    /// Objects the store already had (answered by HEAD or a conditional PUT).
    pub present_objects: u64,
    /// Objects skipped because the known-present index vouched for them (no request).
    pub known_objects: u64,
    /// Multipart uploads to this store that earlier runs left open, aborted by this one.
    pub aborted_leftover_uploads: u64,
    /// Multipart uploads an earlier run left open, resumed by this one.
    pub resumed_uploads: u64,
    /// Bytes of the parts those uploads already held, not sent again.
    pub resumed_bytes: u64,
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    objects: AtomicU64,
    uploaded_objects: AtomicU64,
    uploaded_bytes: AtomicU64,
    multipart_objects: AtomicU64,
    present_objects: AtomicU64,
    known_objects: AtomicU64,
    resumed_uploads: AtomicU64,
    resumed_bytes: AtomicU64,
    /// Hashes stored or found, not yet written to the known-present index.
    known_pending: Mutex<Vec<ContentHash>>,
    /// The last batch given to the known-present index; each batch is written after the one
    /// before it.
    known_write: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Known-present entries are written in batches of this many: one SQLite transaction per
/// object cost more CPU than many a small upload.
const KNOWN_BATCH: usize = 512;

impl Counters {
    /// Notes a hash for the known-present index; writes a full batch.
    fn record_known(&self, t: &Transfer, store_id: &str, hash: ContentHash) {
        let full = {
            let mut pending = self.known_pending.lock().expect("not poisoned");
            pending.push(hash);
            (pending.len() >= KNOWN_BATCH).then(|| std::mem::take(&mut *pending))
        };
        if let Some(batch) = full {
            self.write_known(t, store_id.to_string(), batch);
        }
    }

    /// Writes a batch from a blocking thread: its commit may wait for another process's
    /// write lock (`busy_timeout`), which must not hold up the runtime's worker, and with it
    /// every transfer and the daemon's API. One batch at a time, after the one before: while
    /// the index is locked, later batches wait as tasks, not as blocking threads the file
    /// reads need.
    fn write_known(&self, t: &Transfer, store_id: String, hashes: Vec<ContentHash>) {
        let Some(k) = t.known.clone() else { return };
        let mut last = self.known_write.lock().expect("not poisoned");
        let before = last.take();
        *last = Some(tokio::spawn(
            async move {
                if let Some(before) = before {
                    let _ = before.await;
                }
                let write = crate::logging::job_warnings::spawn_blocking(move || {
                    k.record(&store_id, &hashes)
                });
                if let Ok(Err(e)) = write.await {
                    tracing::warn!("{e}");
                }
            }
            .in_current_span(),
        ));
    }

    /// Writes what is pending (at the end of the stream, whether it succeeded or not: what
    /// was stored before a failure is in the store all the same), then waits for every
    /// batch to be written, unless cancelled (a cancelled run does not wait on the index; the
    /// batches still land).
    async fn flush_known(&self, t: &Transfer, cancel: &CancellationToken) {
        let batch = std::mem::take(&mut *self.known_pending.lock().expect("not poisoned"));
        if !batch.is_empty() {
            self.write_known(t, t.store.identity(), batch);
        }
        let last = self.known_write.lock().expect("not poisoned").take();
        if let Some(last) = last {
            tokio::select! {
                _ = last => {}
                _ = cancel.cancelled() => {}
            }
        }
    }

    fn report(&self) -> UploadReport {
        UploadReport {
            files: self.files.load(Relaxed),
            objects: self.objects.load(Relaxed),
            uploaded_objects: self.uploaded_objects.load(Relaxed),
            uploaded_bytes: self.uploaded_bytes.load(Relaxed),
            multipart_objects: self.multipart_objects.load(Relaxed),
            present_objects: self.present_objects.load(Relaxed),
            known_objects: self.known_objects.load(Relaxed),
            aborted_leftover_uploads: 0,
            resumed_uploads: self.resumed_uploads.load(Relaxed),
            resumed_bytes: self.resumed_bytes.load(Relaxed),
        }
    }
}

/// How long an AbortMultipartUpload may take after a failure or cancel.
pub const ABORT_DEADLINE: Duration = Duration::from_secs(5);

/// Uploads every item of `items` (as they arrive), `transfer.workers` at a time. The first
/// failure stops the rest; cancel stops everything at once.
pub async fn upload_stream(
    t: Arc<Transfer>,
    items: impl Stream<Item = UploadItem> + Send + 'static,
    cancel: &CancellationToken,
) -> Result<UploadReport, TransferError> {
    let counters = Arc::new(Counters::default());
    let known = Arc::new(KnownView::default());
    let stop = cancel.child_token();
    let mut seen = HashSet::new();
    let pieces = items
        .filter_map({
            let (t, counters) = (t.clone(), counters.clone());
            move |item| {
                counters.files.fetch_add(1, Relaxed);
                let first = seen.insert(item.hash);
                if !first {
                    t.progress.add_files(1);
                    t.progress.add_bytes(item.size);
                }
                std::future::ready(first.then_some(item))
            }
        })
        .map({
            let (t, counters, stop, user) =
                (t.clone(), counters.clone(), stop.clone(), cancel.clone());
            move |item| {
                let (t, counters, known, stop) =
                    (t.clone(), counters.clone(), known.clone(), stop.clone());
                let user = user.clone();
                async move {
                    counters.objects.fetch_add(1, Relaxed);
                    // Re-check about `known_present_sample` trusted entries per run, at random.
                    let files = t.progress.snapshot().files_total.max(1);
                    let sampled = rand::random::<f64>()
                        < t.settings.known_present_sample as f64 / files as f64;
                    let stops = Stops {
                        any: &stop,
                        user: &user,
                    };
                    upload_one(&t, &counters, &known, item, sampled, stops).await
                }
            }
        });
    let outcome = run_pieces(pieces, t.settings.workers, stop, cancel).await;
    counters.flush_known(&t, cancel).await;
    outcome?;
    let mut report = counters.report();
    // After the uploads, which may have resumed some of them; not after a failure, whose
    // retry may resume them.
    if !t.dry_run {
        report.aborted_leftover_uploads =
            cancellable(cancel, abort_leftovers(&t, false)).await?.len() as u64;
    }
    Ok(report)
}

/// What stops an upload: `any` is cancelled by the user's cancel and by another object's
/// failure, `user` by the user's cancel only (which aborts a multipart upload rather than
/// keeping it to resume).
#[derive(Clone, Copy)]
struct Stops<'a> {
    any: &'a CancellationToken,
    user: &'a CancellationToken,
}

async fn upload_one(
    t: &Transfer,
    c: &Counters,
    known: &KnownView,
    item: UploadItem,
    sampled: bool,
    stops: Stops<'_>,
) -> Result<(), TransferError> {
    let cancel = stops.any;
    if cancel.is_cancelled() {
        return Err(Cancelled.into());
    }
    let store_id = t.store.identity();
    let key = data_key(t.store.root_prefix(), item.hash);
    if known.is_known(t, &store_id, item.hash, sampled) {
        c.known_objects.fetch_add(1, Relaxed);
        finish(t, &item, 0);
        return Ok(());
    }
    // Another job of the daemon uploading the same object: wait for it instead.
    let claim = match t
        .inflight
        .as_ref()
        .filter(|_| !t.dry_run)
        .map(|f| f.claim(&store_id, item.hash, false))
    {
        Some(Claim::Theirs(rx)) => {
            if cancellable(cancel, inflight::wait(rx)).await? == Done::Stored {
                c.present_objects.fetch_add(1, Relaxed);
                finish(t, &item, 0);
                return Ok(());
            }
            None
        }
        Some(Claim::Mine(guard)) => Some(guard),
        None => None,
    };
    // The configured threshold first: most files are under it, and need no store verdict.
    let small =
        item.size <= t.settings.multipart_threshold.0 || item.size <= t.multipart_threshold();
    // Bytes counted into the progress as they went out.
    let mut counted = 0;
    let created = if t.dry_run {
        // Would it be uploaded? Ask, write nothing.
        t.gate.run(cancel, || t.store.head(&key)).await?.is_none()
    } else if small && t.conditional_put_max.is_some_and(|max| item.size <= max) {
        let (outcome, sent) = put_single(t, &item, &key, true, cancel).await?;
        counted = sent;
        outcome == PutOutcome::Created
    } else if t.gate.run(cancel, || t.store.head(&key)).await?.is_some() {
        false
    } else if small {
        (_, counted) = put_single(t, &item, &key, false, cancel).await?;
        true
    } else {
        // Its parts' bytes are counted as they go.
        counted = item.size;
        match upload_multipart(t, &item, &key, stops).await? {
            MultipartEnd::Completed { kept } => {
                if kept > 0 {
                    c.resumed_uploads.fetch_add(1, Relaxed);
                    c.resumed_bytes.fetch_add(kept, Relaxed);
                }
                c.multipart_objects.fetch_add(1, Relaxed);
                true
            }
            MultipartEnd::StoredByAnother => false,
        }
    };
    if created {
        c.uploaded_objects.fetch_add(1, Relaxed);
        c.uploaded_bytes.fetch_add(item.size, Relaxed);
    } else {
        c.present_objects.fetch_add(1, Relaxed);
    }
    if t.known.is_some() && !(t.dry_run && created) {
        c.record_known(t, &store_id, item.hash);
    }
    if let Some(guard) = claim {
        guard.done(Done::Stored);
    }
    finish(t, &item, counted);
    Ok(())
}

/// Whether a single PUT of `item` is read from its file as it is sent: its bytes are not at
/// hand from hashing, and it is bigger than a part (`multipart_threshold` raised above
/// `part_size`), so it is not held in memory.
fn streamed(t: &Transfer, item: &UploadItem) -> bool {
    item.data.is_none() && item.size > t.settings.part_size.0
}

/// One PutObject of the whole file (`If-None-Match: *` with `if_none_match`): from memory, or
/// [`streamed`]; either way its bytes are counted into the progress as they go out. Returns
/// the outcome and the bytes counted.
async fn put_single(
    t: &Transfer,
    item: &UploadItem,
    key: &str,
    if_none_match: bool,
    cancel: &CancellationToken,
) -> Result<(PutOutcome, u64), TransferError> {
    let sent = Arc::new(SentBytes::new(t.progress.clone()));
    if !streamed(t, item) {
        let body = load_verified(t, item, cancel).await?;
        let opts = PutOptions {
            if_none_match,
            sent: Some(sent.clone()),
            ..Default::default()
        };
        let outcome = t
            .gate
            .run(cancel, || t.store.put(key, body.clone(), &opts))
            .await?;
        return Ok((outcome, sent.reported()));
    }
    // What the body holds at once: the chunk being sent and the one read ahead.
    let _budget = cancellable(
        cancel,
        t.memory.acquire_many(t.memory_units(2 * READ_CHUNK as u64)),
    )
    .await?
    .expect("never closed");
    // The file counts its bytes as it is read for sending.
    let source = Arc::new(FileSource::new(
        item.path.clone(),
        item.size,
        item.hash,
        item.same_file,
        sent.clone(),
    ));
    let opts = PutOptions {
        if_none_match,
        ..Default::default()
    };
    let outcome = t
        .gate
        .run(cancel, || t.store.put_file(key, source.clone(), &opts))
        .await
        .map_err(|e| match e {
            TransferError::Store(StoreError::Source {
                path,
                error: SourceError::Changed(planned),
            }) => TransferError::ChangedDuringUpload { path, planned },
            e => e,
        })?;
    Ok((outcome, sent.reported()))
}

/// Entries verified longer ago than this may be drawn for a re-check.
const RECHECK_AFTER: Duration = Duration::from_secs(3600);

/// Objects looked up one query each before the store's entries are loaded in one query: a
/// small job need not read a large index, and a many-file one must not pay a read
/// transaction per object (its WAL lock calls were a quarter of a small-file upload's CPU).
const LOOKUPS_BEFORE_LOAD: usize = 256;

/// Entries loaded in one query, up to this many (~30 MiB); a store with more is asked about
/// object by object throughout.
const KNOWN_LOAD_MAX: usize = 1_000_000;

/// The known-present index as one upload sees it.
#[derive(Default)]
struct KnownView {
    lookups: AtomicUsize,
    loaded: OnceLock<Loaded>,
}

enum Loaded {
    /// The store's entries when they were loaded (hash → verified at).
    Entries(KnownEntries),
    /// Too many entries to hold: one query per object.
    TooMany,
    /// The index could not be read: ask the store.
    Failed,
}

impl KnownView {
    /// Whether the object can be skipped without a request: verified within the TTL, and not
    /// drawn for a re-check (`sampled`, only entries older than RECHECK_AFTER).
    fn is_known(&self, t: &Transfer, store_id: &str, hash: ContentHash, sampled: bool) -> bool {
        let Some(k) = &t.known else { return false };
        let loaded = (self.lookups.fetch_add(1, Relaxed) >= LOOKUPS_BEFORE_LOAD).then(|| {
            self.loaded
                .get_or_init(|| match k.entries_of(store_id, KNOWN_LOAD_MAX) {
                    Ok(Some(entries)) => Loaded::Entries(entries),
                    Ok(None) => Loaded::TooMany,
                    Err(e) => {
                        tracing::warn!("{e}; asking the store instead");
                        Loaded::Failed
                    }
                })
        });
        let age = match loaded {
            Some(Loaded::Failed) => return false,
            Some(Loaded::Entries(entries)) => entries.get(&hash).map(KnownPresent::age_of),
            Some(Loaded::TooMany) | None => match k.age(store_id, hash) {
                Ok(age) => age,
                Err(e) => {
                    tracing::warn!("{e}; asking the store instead");
                    return false;
                }
            },
        };
        age.is_some_and(|age| k.trusts(age) && !(sampled && age > RECHECK_AFTER))
    }
}

/// Counts a file as done, and those of its bytes not `counted` as they went.
fn finish(t: &Transfer, item: &UploadItem, counted: u64) {
    t.progress.add_files(1);
    t.progress.add_bytes(item.size.saturating_sub(counted));
}

/// The file's bytes, checked against the planned hash: from hashing, or read again now.
async fn load_verified(
    t: &Transfer,
    item: &UploadItem,
    cancel: &CancellationToken,
) -> Result<Bytes, TransferError> {
    if let Some(data) = &item.data {
        return Ok(data.clone());
    }
    // The budget goes with the bytes: it is returned when the request that sends them is done.
    let budget = cancellable(
        cancel,
        t.memory
            .clone()
            .acquire_many_owned(t.memory_units(item.size)),
    )
    .await?
    .expect("never closed");
    let (path, same_file) = (item.path.clone(), item.same_file);
    let bytes =
        crate::logging::job_warnings::spawn_blocking(move || read_regular(&path, same_file))
            .await
            .expect("read task panicked");
    let bytes = match bytes {
        Ok(bytes) if bytes.len() as u64 == item.size && ContentHash::of(&bytes) == item.hash => {
            bytes
        }
        Err(e) => return Err(not_read(item, e)),
        Ok(_) => return Err(changed(item)),
    };
    Ok(super::bytes_holding(bytes, budget))
}

/// `item`'s file no longer holds the content hashed (or is another file by now).
fn changed(item: &UploadItem) -> TransferError {
    TransferError::ChangedDuringUpload {
        path: item.path.clone(),
        planned: item.hash,
    }
}

/// Why `item`'s file could not be read: [`changed`] where its path names another file than
/// the one hashed, else the I/O error.
fn not_read(item: &UploadItem, e: std::io::Error) -> TransferError {
    match is_replaced(&e) {
        true => changed(item),
        false => TransferError::io(&item.path)(e),
    }
}

/// The content of the regular file at `path`, the file `same` when given (a FIFO put where
/// it was hashed is refused, not waited on).
fn read_regular(path: &Path, same: Option<FileId>) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut open_regular_same(path, same)?, &mut bytes)?;
    Ok(bytes)
}

/// Part size for an object: the configured one, raised when S3's 10,000-part cap needs it.
fn part_size_for(configured: u64, size: u64) -> u64 {
    configured.max(size.div_ceil(10_000))
}

/// How a multipart upload ended.
enum MultipartEnd {
    /// Completed; `kept`: the bytes of the parts a resumed upload already held.
    Completed { kept: u64 },
    /// The store dropped the upload because another uploader stored the object first (Garage
    /// drops the other uploads of a key when one completes): the object is there all the same.
    StoredByAnother,
}

/// Create (or resume, see [`resumable`]), upload parts (at most `max_parts_in_flight`
/// buffered, shared by all files), verify the content hash that streamed past, complete. A
/// failure the store or the network may get over leaves the upload open and recorded for a
/// later run to resume (for `transfer.resume_for`); a cancel, content that changed, or a
/// lasting refusal aborts it. A resumed upload the store dropped part-way is started again
/// anew, once.
async fn upload_multipart(
    t: &Transfer,
    item: &UploadItem,
    key: &str,
    stops: Stops<'_>,
) -> Result<MultipartEnd, TransferError> {
    let cancel = stops.any;
    let mut resumed = resumable(t, item, key, cancel).await?;
    let (upload_id, record, result) = loop {
        let (upload_id, record, held) = match resumed.take() {
            Some(r) => (r.upload_id, Some(r.held), Some(r.parts)),
            None => {
                // Once sent, the create runs to its reply even if cancelled meanwhile: the
                // store may have made the upload, and only its id lets the abort below undo it.
                let id = t
                    .gate
                    .run_to_reply(cancel, CANCEL_CREATE_WAIT, || t.store.create_multipart(key))
                    .await?;
                let record = record_open(t, key, &id).await;
                (id, record, None)
            }
        };
        let was_resumed = held.is_some();
        let counted = Arc::new(AtomicU64::new(0));
        let upload = OpenUpload {
            id: &upload_id,
            held: held.unwrap_or_default(),
            heartbeat: record.as_ref().map(open_uploads::Held::heartbeat),
        };
        let mut result = upload_parts(t, item, key, upload, &counted, cancel)
            .await
            .map(|kept| MultipartEnd::Completed { kept });
        if matches!(&result, Err(TransferError::Store(e)) if e.is_not_found()) {
            result = match stored_by_another(t, item, key, cancel).await {
                Ok(true) => Ok(MultipartEnd::StoredByAnother),
                // An old upload, resumed or taken over, may be aborted behind this run's back
                // (by the machine that left it, `attache cleanup`, a lifecycle rule): the file
                // goes up again in an upload of its own, once.
                Ok(false) if was_resumed => {
                    tracing::info!(
                        "the multipart upload of {} ({key}) this run resumed was aborted from elsewhere; uploading the file again in a new one",
                        item.path.display()
                    );
                    if let Some(record) = record {
                        finished(record).await;
                    }
                    // Its bytes are counted again as they go.
                    t.progress.add_total(0, counted.load(Relaxed));
                    continue;
                }
                Ok(false) => Err(aborted_from_elsewhere(t, key)),
                Err(e) => Err(e),
            };
        }
        break (upload_id, record, result);
    };
    match (&result, record) {
        (Ok(_), Some(record)) => finished(record).await,
        (Ok(_), None) => {}
        (Err(e), Some(record)) if keeps_open(t, e, stops) => {
            tracing::info!(
                "the multipart upload of {key} ({}) stays open: a run within {} that uploads it resumes it",
                item.path.display(),
                t.settings.resume_for
            );
            let _ = crate::logging::job_warnings::spawn_blocking(move || record.keep_for_resume())
                .await;
        }
        (Err(_), record) => abort_given_up(t, key, upload_id, record, cancel.is_cancelled()).await,
    }
    result
}

/// The store answered a part or the completion of an upload with 404 NoSuchUpload: it dropped
/// the upload. True when the object is there with the file's size: another uploader stored
/// it first (the key is the content's hash: it holds these bytes); false: the upload was
/// aborted behind this run's back.
async fn stored_by_another(
    t: &Transfer,
    item: &UploadItem,
    key: &str,
    cancel: &CancellationToken,
) -> Result<bool, TransferError> {
    let stored = t
        .gate
        .run(cancel, || t.store.head(key))
        .await?
        .is_some_and(|info| info.size == item.size);
    if stored {
        tracing::debug!(
            key,
            "the store dropped the multipart upload: another uploader stored the object"
        );
    }
    Ok(stored)
}

/// The error of an upload the store dropped, with no object in its place.
fn aborted_from_elsewhere(t: &Transfer, key: &str) -> TransferError {
    TransferError::Store(StoreError::Failed {
        store: t.store.describe(),
        op: "multipart upload",
        key: key.to_string(),
        message: "the store dropped the upload before it was completed (aborted from elsewhere: `attache cleanup --older-than 0` on another machine, or a lifecycle rule); run again".into(),
        retryable: false,
    })
}

/// Whether a multipart upload that failed with `e` is kept open to be resumed: the store or
/// the network failed in a way another try may get over (or another object's failure stopped
/// it), not the user's cancel, not the file, not a lasting refusal.
fn keeps_open(t: &Transfer, e: &TransferError, stops: Stops<'_>) -> bool {
    !t.settings.resume_for.0.is_zero()
        && !stops.user.is_cancelled()
        && match e {
            TransferError::Store(e) => e.is_retryable(),
            TransferError::Cancelled(_) => true,
            _ => false,
        }
}

/// A multipart upload left open for `key` (by this machine, or abandoned by another), and the
/// parts the store holds of it.
struct Resumable {
    upload_id: String,
    held: open_uploads::Held,
    parts: HashMap<i32, UploadedPart>,
}

impl Resumable {
    fn new(upload_id: String, held: open_uploads::Held, parts: Vec<UploadedPart>) -> Resumable {
        Resumable {
            upload_id,
            held,
            parts: parts.into_iter().map(|p| (p.number, p)).collect(),
        }
    }
}

/// The multipart upload of `key` an earlier run on this machine left open (a failure, a
/// crash, an unconfirmed abort), locked for this one, with its parts listed; else one another
/// machine abandoned ([`taken_over`]); `None`: start a new one. An upload the store no longer
/// has loses its record; one whose parts cannot be listed is left to the leftover aborts.
async fn resumable(
    t: &Transfer,
    item: &UploadItem,
    key: &str,
    cancel: &CancellationToken,
) -> Result<Option<Resumable>, TransferError> {
    if t.settings.resume_for.0.is_zero() {
        return Ok(None);
    }
    let (o, store, k) = (t.open_uploads.clone(), t.store.identity(), key.to_string());
    let Ok(Some(left)) =
        crate::logging::job_warnings::spawn_blocking(move || o.leftover_of(&store, &k)).await
    else {
        return taken_over(t, item, key, cancel).await;
    };
    match t
        .gate
        .run(cancel, || t.store.list_parts(key, &left.upload_id))
        .await
    {
        Ok(Some(parts)) => {
            tracing::info!(
                "resuming the multipart upload of {} ({key}) an earlier run left open ({} part(s) in the store)",
                item.path.display(),
                parts.len()
            );
            let held = rewritten(left.held, open_uploads::Held::resume).await;
            Ok(Some(Resumable::new(left.upload_id, held, parts)))
        }
        Ok(None) => {
            finished(left.held).await;
            Ok(None)
        }
        Err(TransferError::Cancelled(c)) => Err(c.into()),
        Err(e) => {
            tracing::warn!(
                "cannot list the parts of the multipart upload of {} ({key}) an earlier run left open ({e}); starting it again",
                item.path.display()
            );
            Ok(None)
        }
    }
}

/// An open upload of `key` that another machine (or this one under another `cache.dir`) left
/// idle for `transfer.take_over_after`, recorded as this run's own from now on: its parts
/// that prove they hold the file's bytes are kept, as a resumed upload's are.
async fn taken_over(
    t: &Transfer,
    item: &UploadItem,
    key: &str,
    cancel: &CancellationToken,
) -> Result<Option<Resumable>, TransferError> {
    let Some((upload_id, parts)) = abandoned_uploads::find(t, key, cancel).await? else {
        return Ok(None);
    };
    // Unrecorded, a failure could not keep it for this machine's next run: start anew.
    let Some(held) = record_open(t, key, &upload_id).await else {
        return Ok(None);
    };
    tracing::info!(
        "taking over the multipart upload of {} ({key}) that another machine or run left open and idle ({} part(s) in the store)",
        item.path.display(),
        parts.len()
    );
    Ok(Some(Resumable::new(upload_id, held, parts)))
}

/// Records a multipart upload the store just opened, until [`finished`] (see
/// [`open_uploads`]): dropped unfinished, the record stays for the next upload to abort it.
/// A record that cannot be written is logged; the upload goes on.
pub(crate) async fn record_open(
    t: &Transfer,
    key: &str,
    upload_id: &str,
) -> Option<open_uploads::Held> {
    let (o, store, key, id) = (
        t.open_uploads.clone(),
        (t.store.identity(), t.store.describe()),
        key.to_string(),
        upload_id.to_string(),
    );
    // Off the runtime: a file create can wait on a busy disk's journal.
    match crate::logging::job_warnings::spawn_blocking(move || {
        o.record(&store.0, &store.1, &key, &id)
    })
    .await
    {
        Ok(Ok(held)) => Some(held),
        Ok(Err(e)) => {
            tracing::warn!("{e}");
            None
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Removes the record of an upload the store confirmed completed or aborted, off the runtime
/// (an unlink can wait on a busy disk's journal), and waits for it: a process that exited
/// first would leave the record for the next run to abort a finished upload again.
pub(crate) async fn finished(record: open_uploads::Held) {
    let _ = crate::logging::job_warnings::spawn_blocking(move || record.done()).await;
}

/// Marks the record of an upload about to be aborted, off the runtime: an abort the store
/// does not confirm is then repeated by the next run, not spared as a crash's leftover.
pub(crate) async fn given_up(record: open_uploads::Held) -> open_uploads::Held {
    rewritten(record, open_uploads::Held::give_up).await
}

/// Rewrites an upload's record with `change`, off the runtime (a rename can wait on a busy
/// disk's journal).
async fn rewritten(
    mut record: open_uploads::Held,
    change: fn(&mut open_uploads::Held),
) -> open_uploads::Held {
    match crate::logging::job_warnings::spawn_blocking(move || {
        change(&mut record);
        record
    })
    .await
    {
        Ok(record) => record,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// How long a cancel waits for the reply to a CreateMultipartUpload already sent (a few ms
/// from S3): the upload it names is then aborted, rather than left open and unknown.
const CANCEL_CREATE_WAIT: Duration = Duration::from_millis(300);

/// How long a cancelled upload waits to see its multipart upload aborted when the abort is
/// recorded: someone is waiting for the cancel, and the next upload to the store repeats an
/// abort that was not confirmed by then.
const CANCEL_ABORT_WAIT: Duration = Duration::from_millis(500);

/// Aborts a multipart upload that failed or was cancelled (not under `cancel`: the abort must
/// happen even, especially, then). It runs as its own task: a cancelled upload waits at most
/// [`CANCEL_ABORT_WAIT`] for it, and in the daemon it finishes meanwhile; the record goes
/// once the store confirms.
async fn abort_given_up(
    t: &Transfer,
    key: &str,
    upload_id: String,
    record: Option<open_uploads::Held>,
    cancelled: bool,
) {
    let bounded = cancelled && record.is_some();
    let task = tokio::spawn(
        abort_recorded(
            t.store.clone(),
            t.gate.clone(),
            key.to_string(),
            upload_id,
            record,
        )
        .in_current_span(),
    );
    if !bounded {
        if let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    } else if tokio::time::timeout(CANCEL_ABORT_WAIT, task).await.is_err() {
        tracing::info!(
            "the store has not confirmed the abort of the multipart upload of {key} yet; the next upload to {} repeats it if it does not",
            t.store.describe()
        );
    }
}

/// Aborts `upload_id` of `key`, retried like any request, within [`ABORT_DEADLINE`] and
/// without waiting for a connection slot; the error names the key and why the abort was not
/// confirmed.
pub async fn abort_within(
    store: &dyn ObjectStore,
    gate: &Gate,
    key: &str,
    upload_id: &str,
) -> Result<(), String> {
    match gate
        .run_within(ABORT_DEADLINE, || store.abort_multipart(key, upload_id))
        .await
    {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!(
            "{key}: AbortMultipartUpload of upload {upload_id} had no answer within {ABORT_DEADLINE:?}"
        )),
    }
}

/// Aborts `upload_id` of `key` and drops its record once the store confirms; true then.
async fn abort_recorded(
    store: Arc<dyn ObjectStore>,
    gate: Arc<Gate>,
    key: String,
    upload_id: String,
    record: Option<open_uploads::Held>,
) -> bool {
    let record = futures::future::OptionFuture::from(record.map(given_up)).await;
    match abort_within(&*store, &gate, &key, &upload_id).await {
        Ok(()) => {
            tracing::debug!(key, "multipart upload aborted");
            if let Some(record) = record {
                finished(record).await;
            }
            true
        }
        Err(e) => {
            let later = if record.is_some() {
                "the next upload to this store tries again"
            } else {
                "a lifecycle rule must clean it up"
            };
            tracing::warn!("could not abort a multipart upload: {e}; {later}");
            false
        }
    }
}

/// Aborts the multipart uploads to this store that earlier runs left open (see
/// [`open_uploads`]), all at once; returns those the store confirmed (key and upload id).
/// Those a failure or a crash left, to be resumed, are spared for `transfer.resume_for`,
/// unless `resumable_too`.
pub async fn abort_leftovers(t: &Transfer, resumable_too: bool) -> Vec<crate::store::OpenUpload> {
    let (o, store) = (t.open_uploads.clone(), t.store.identity());
    let Ok(left) = crate::logging::job_warnings::spawn_blocking(move || o.leftovers(&store)).await
    else {
        return Vec::new();
    };
    // Spared ones are unlocked here.
    let window = t.settings.resume_for.0;
    let left = left
        .into_iter()
        .filter(|l| resumable_too || !l.kept_for_resume(window));
    let left: Vec<_> = futures::future::join_all(
        left.map(|l| async { (!taken_over_elsewhere(t, &l).await).then_some(l) }),
    )
    .await
    .into_iter()
    .flatten()
    .collect();
    if left.is_empty() {
        return Vec::new();
    }
    tracing::info!(
        "aborting {} multipart upload(s) to {} left open by an earlier run",
        left.len(),
        t.store.describe()
    );
    let aborted = futures::future::join_all(left.into_iter().map(|l| async {
        let upload = crate::store::OpenUpload {
            key: l.key.clone(),
            upload_id: l.upload_id.clone(),
            initiated_ms: None,
        };
        let done = abort_recorded(
            t.store.clone(),
            t.gate.clone(),
            l.key,
            l.upload_id,
            Some(l.held),
        )
        .await;
        done.then_some(upload)
    }))
    .await;
    aborted.into_iter().flatten().collect()
}

/// Whether an upload this machine left open, about to be aborted, had a part land in it
/// within [`abandoned_uploads::spare_window`] since it was left: another machine (or this one
/// under another `cache.dir`) has taken it over and is at work, and the abort would fail its
/// upload. Its record stays, and a later run looks again. An upload whose parts cannot be
/// listed is aborted, as before.
async fn taken_over_elsewhere(t: &Transfer, l: &open_uploads::Leftover) -> bool {
    if l.left_as == open_uploads::LeftAs::GivenUp {
        return false;
    }
    let Some(Ok(Some(parts))) = t
        .gate
        .run_within(ABORT_DEADLINE, || t.store.list_parts(&l.key, &l.upload_id))
        .await
    else {
        return false;
    };
    let window = abandoned_uploads::spare_window(&t.settings);
    let taken = abandoned_uploads::taken_over_since(&parts, l.left_as, window);
    if taken {
        tracing::info!(
            key = l.key,
            "not aborting the multipart upload an earlier run left open: a part landed in it within {} (another machine took it over)",
            crate::config::Duration(window)
        );
    }
    taken
}

/// A multipart upload open in the store, as its parts are sent.
struct OpenUpload<'a> {
    id: &'a str,
    /// What the store already has of it (a resumed upload).
    held: HashMap<i32, UploadedPart>,
    /// Its record's heartbeat, beaten as its parts land (see [`open_uploads`]); `None` when
    /// the upload could not be recorded.
    heartbeat: Option<open_uploads::Heartbeat>,
}

/// Uploads the parts of `item` (a part `upload` holds of the right size and ETag is kept,
/// any other is sent again), verifies the content, completes. Returns the bytes kept;
/// `counted` gets the bytes it added to the progress, however it ends.
async fn upload_parts(
    t: &Transfer,
    item: &UploadItem,
    key: &str,
    upload: OpenUpload<'_>,
    counted: &Arc<AtomicU64>,
    cancel: &CancellationToken,
) -> Result<u64, TransferError> {
    let OpenUpload {
        id: upload_id,
        held,
        heartbeat,
    } = upload;
    let part_size = part_size_for(t.settings.part_size.0, item.size);
    // Not blocking on a FIFO put where the file was hashed.
    let file =
        Arc::new(open_regular_same(&item.path, item.same_file).map_err(|e| not_read(item, e))?);
    let mut hasher = Some(Box::new(Xxh3Default::new()));
    // A part kept or sent: done in the progress, and counted for a restart to take back.
    let count = |len: u64| {
        t.progress.add_bytes(len);
        counted.fetch_add(len, Relaxed);
    };
    let count = &count;
    let heartbeat = heartbeat.as_ref();
    let started = std::time::Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut etags = Vec::new();
    let mut kept_bytes = 0;
    let parts = item.size.div_ceil(part_size);
    for n in 1..=parts {
        let offset = (n - 1) * part_size;
        let len = part_size.min(item.size - offset);
        // Reserve memory first: waiting here is the bound on buffered parts.
        let permit = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Cancelled.into()),
                Some(done) = in_flight.next(), if !in_flight.is_empty() => etags.push(done?),
                p = t.memory.acquire_many(t.memory_units(len)) => break p.expect("never closed"),
            }
        };
        let candidate = held.get(&(n as i32)).filter(|p| p.size == len);
        // Under cancel: on a busy disk one part's read can take a large share of a second.
        let (data, h, etag) = cancellable(
            cancel,
            read_part(
                &file,
                &item.path,
                offset,
                len,
                hasher.take().expect("returned after each part"),
                candidate.map(|_| t.store.clone()),
            ),
        )
        .await??;
        hasher = Some(h);
        if let Some(kept) = candidate.filter(|p| etag.as_deref() == Some(p.etag.trim_matches('"')))
        {
            etags.push((n as i32, kept.etag.clone()));
            count(len);
            kept_bytes += len;
            continue;
        }
        let body = Bytes::from(data);
        // Counted as it goes out (into `counted` too), the rest once the part is in.
        let sent = Arc::new(SentBytes::also_into(t.progress.clone(), counted.clone()));
        in_flight.push(async move {
            let etag = t
                .gate
                .run(cancel, || {
                    let sent = Some(sent.clone());
                    t.store
                        .upload_part(key, upload_id, n as i32, body.clone(), sent)
                })
                .await?;
            count(len.saturating_sub(sent.reported()));
            drop(permit);
            if let Some(h) = heartbeat.filter(|h| h.due()) {
                let h = h.clone();
                let _ = crate::logging::job_warnings::spawn_blocking(move || h.beat()).await;
            }
            Ok::<_, TransferError>((n as i32, etag))
        });
    }
    while let Some(done) = cancellable(cancel, in_flight.next()).await? {
        etags.push(done?);
    }
    let streamed = ContentHash(hasher.expect("present").digest128());
    let now = std::fs::metadata(&item.path).map_err(TransferError::io(&item.path))?;
    if streamed != item.hash || now.len() != item.size {
        return Err(changed(item));
    }
    etags.sort_by_key(|(n, _)| *n);
    let parts_took = started.elapsed();
    // The last try's time: how long the store took to assemble the object.
    let mut tried = std::time::Instant::now();
    t.gate
        .run(cancel, || {
            tried = std::time::Instant::now();
            t.store.complete_multipart(key, upload_id, &etags)
        })
        .await?;
    if kept_bytes == 0 {
        let completing = tried.elapsed();
        t.copying_store
            .record(item.size, parts_took, completing)
            .await;
    }
    Ok(kept_bytes)
}

/// Reads one part on a blocking thread, feeding it to the running content hash; with `store`,
/// also the ETag that store would give it (to compare with a part a resumed upload holds).
async fn read_part(
    file: &Arc<std::fs::File>,
    path: &Path,
    offset: u64,
    len: u64,
    mut hasher: Box<Xxh3Default>,
    store: Option<Arc<dyn ObjectStore>>,
) -> Result<(Vec<u8>, Box<Xxh3Default>, Option<String>), TransferError> {
    let file = file.clone();
    let read = crate::logging::job_warnings::spawn_blocking(move || -> std::io::Result<_> {
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, offset)?;
        hasher.update(&buf);
        let etag = store.map(|s| s.part_etag(&buf));
        Ok((buf, hasher, etag))
    })
    .await
    .expect("read task panicked");
    read.map_err(|e| match e.kind() {
        // Shorter than planned: it changed.
        std::io::ErrorKind::UnexpectedEof => TransferError::Refused {
            path: path.to_path_buf(),
            message: "file changed during upload (it became shorter); nothing was stored".into(),
        },
        _ => TransferError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_past_ten_thousand_parts() {
        assert_eq!(part_size_for(8 << 20, 1 << 30), 8 << 20);
        let huge = 5u64 << 40; // 5 TiB
        assert!(huge.div_ceil(part_size_for(8 << 20, huge)) <= 10_000);
    }
}
