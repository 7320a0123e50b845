//! Downloading content objects into files, verified before they become visible.
//!
//! Each distinct hash is fetched once: into a staged file in its destination's directory (one
//! GET for small objects, parallel ranged GETs written at their offsets for large ones),
//! checked for size and XXH3-128, given the manifest's mtime and only then given its name.
//! Other files with the same content are copied from the first. With the content cache on
//! (`transfer::content_cache`), an object it holds is copied from there (verified as it is
//! copied), and every object fetched is kept in it (a hard link where it can be). A failed, corrupt or
//! cancelled file leaves nothing behind; on Linux the staged file has no name until it is
//! complete, so not even a killed process leaves a partial file (`fsutil::staged`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3Default;

use super::content_cache::{self, ContentCache, Inserted};
use super::inflight::{self, Claim, Done};
use super::partial_downloads::{LandedLog, Partial};
use super::{Transfer, TransferError, cancellable, run_pieces, spawned};
use crate::fsutil::BatchedWriter;
use crate::fsutil::access::Caller;
use crate::fsutil::beneath::{OpenDir, open_regular};
use crate::fsutil::group::GroupAccess;
use crate::fsutil::staged::Staged;
use crate::hash::ContentHash;
use crate::hash::file::{CopyError, copy_hashing};
use crate::hash::recorder::RecordSink;
use crate::jobs::Cancelled;
use crate::scan::FileStat;
use crate::store::StoreError;
use crate::store::layout::{data_key, legacy_data_key};

/// One file to materialize, as a plan holds it (a million of them at once): the path is
/// relative to the download's root.
#[derive(Debug, Clone)]
pub struct DownloadItem {
    pub hash: ContentHash,
    pub size: u64,
    /// POSIX path bytes under the root; its directory must exist (the caller creates it
    /// safely).
    pub rel: Box<[u8]>,
    /// Manifest mtime, microseconds since the epoch.
    pub mtime_us: i64,
}

/// Where a download places its files.
pub struct Destination {
    /// The root, open: each file's directory is opened from it ([`open_dir_of`]).
    pub root: OpenDir,
    /// For a daemon's client of another user, that user: a file goes only in a directory the
    /// daemon may place files in for them, and replaces only a file they could replace.
    pub caller: Option<Arc<Caller>>,
    /// The directories (device, inode) found to be such, each checked once, not per file.
    checked: std::sync::Mutex<std::collections::HashSet<(u64, u64)>>,
}

impl Destination {
    pub fn new(root: OpenDir, caller: Option<Arc<Caller>>) -> Destination {
        Destination {
            root,
            caller,
            checked: Default::default(),
        }
    }

    /// For another user's job, that the daemon may place their files in `dir`.
    fn may_place_in(&self, dir: &OpenDir) -> Result<(), TransferError> {
        use std::os::unix::fs::MetadataExt;
        let Some(caller) = &self.caller else {
            return Ok(());
        };
        let meta = dir
            .file()
            .metadata()
            .map_err(TransferError::io(dir.shown()))?;
        let checked = || {
            self.checked
                .lock()
                .expect("no panics while holding the lock")
        };
        if checked().contains(&(meta.dev(), meta.ino())) {
            return Ok(());
        }
        caller.may_place_in(dir.shown(), dir.file())?;
        checked().insert((meta.dev(), meta.ino()));
        Ok(())
    }
}

/// One file being materialized, with its full destination path (made only while it is
/// worked on).
#[derive(Clone)]
struct Target {
    hash: ContentHash,
    size: u64,
    into: Arc<Destination>,
    /// The path below the root.
    rel: PathBuf,
    /// The whole path, for messages, records and copies.
    dest: PathBuf,
    mtime_us: i64,
    /// The group the file is given before it gets its name ([`Transfer::group_access`]).
    group: Option<Arc<GroupAccess>>,
}

impl Target {
    fn of(t: &Transfer, into: &Arc<Destination>, item: &DownloadItem) -> Target {
        let rel = PathBuf::from(OsStr::from_bytes(&item.rel));
        Target {
            hash: item.hash,
            size: item.size,
            into: into.clone(),
            dest: into.root.shown().join(&rel),
            rel,
            mtime_us: item.mtime_us,
            group: t.group_access.clone(),
        }
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DownloadReport {
    pub files: u64,
    pub objects: u64,
    pub downloaded_bytes: u64,
    /// Files copied locally from another file with the same content.
    pub copied_files: u64,
    /// Objects fetched again after a corrupt or short body.
    pub refetched: u64,
    /// Parts of large objects whose body was cut, fetched on from where they stopped
    /// rather than the whole object again.
    pub resumed_parts: u64,
    /// Bytes of large objects an earlier run fetched before it was cancelled, killed or
    /// failed, kept on this machine and not fetched again (`transfer::partial_downloads`).
    pub resumed_bytes: u64,
    /// Objects copied from this machine's content cache instead of fetched.
    pub content_cache_files: u64,
    pub content_cache_bytes: u64,
}

impl DownloadReport {
    /// Adds another download's counts into this one.
    pub fn add(&mut self, other: DownloadReport) {
        // Destructured: a field added later must be added here too.
        let DownloadReport {
            files,
            objects,
            downloaded_bytes,
            copied_files,
            refetched,
            resumed_parts,
            resumed_bytes,
            content_cache_files,
            content_cache_bytes,
        } = other;
        self.files += files;
        self.objects += objects;
        self.downloaded_bytes += downloaded_bytes;
        self.copied_files += copied_files;
        self.refetched += refetched;
        self.resumed_parts += resumed_parts;
        self.resumed_bytes += resumed_bytes;
        self.content_cache_files += content_cache_files;
        self.content_cache_bytes += content_cache_bytes;
    }
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    objects: AtomicU64,
    downloaded_bytes: AtomicU64,
    copied_files: AtomicU64,
    refetched: AtomicU64,
    resumed_parts: AtomicU64,
    resumed_bytes: AtomicU64,
    /// A large object could not be kept as a partial download (said once).
    partial_failed: std::sync::atomic::AtomicBool,
    content_cache_files: AtomicU64,
    content_cache_bytes: AtomicU64,
    /// Objects added to the content cache.
    content_cache_added: AtomicU64,
    /// An object could not be added to the content cache (said once).
    content_cache_failed: std::sync::atomic::AtomicBool,
}

/// Objects from this size up are fetched first, largest first: they take longest, and large
/// ones are split into parallel parts anyway. Smaller ones follow in the plan's order, which
/// is the manifest's path order, and so do the copies of files with the same content: the
/// files land, and reach the hash cache, nearly sorted by path. The cache's table is keyed
/// by path: records in key order fill each page of it once, where records in no order
/// rewrite a random page each (a million small files fetched by size and recorded as they
/// landed made a 31 s sync take 50 s).
const IN_PLAN_ORDER_BELOW: u64 = 64 << 10;

/// Fetches of one object before its corruption is reported.
const TRIES: u32 = 3;

/// Times a part of a large object whose body is cut is fetched on from where it stopped,
/// before the whole object is fetched again.
const PART_RESUMES: u32 = 3;

/// The plan of a download of `items`: sorted (off the runtime's workers, which every job's
/// requests share: a million-entry plan takes a fraction of a second), and for a real one
/// the partial downloads left too long swept first.
async fn plan_of(t: &Transfer, items: Vec<DownloadItem>) -> (Vec<DownloadItem>, FetchPlan) {
    let (partials, large, dry_run) = (
        t.partial_downloads.clone(),
        ranged_from(t.settings.part_size.0),
        t.dry_run,
    );
    crate::logging::job_warnings::spawn_blocking(move || {
        let plan = FetchPlan::of(&items);
        if !dry_run
            && items.iter().any(|i| i.size >= large)
            && let Err(e) = partials.sweep()
        {
            tracing::debug!("cannot sweep the partial downloads: {e}");
        }
        (items, plan)
    })
    .await
    .expect("sorting the plan panicked")
}

/// What [`download_all`] would do with `items` (the transfer is a dry run's): the objects it
/// would fetch, the bytes partial downloads hold, the files the content cache or copies give.
pub async fn dry_run(t: Arc<Transfer>, items: Vec<DownloadItem>) -> DownloadReport {
    let (items, FetchPlan { firsts, copies }) = plan_of(&t, items).await;
    let (cache, copied_files) = (t.content_cache.clone(), copies.len() as u64);
    let (kept, large) = (
        t.partial_downloads.clone(),
        ranged_from(t.settings.part_size.0),
    );
    // Looking in the content cache is a stat per object: off the runtime.
    let report = crate::logging::job_warnings::spawn_blocking(move || {
        dry_run_report(
            &items,
            &firsts,
            copied_files,
            cache.as_deref(),
            (&kept, large),
        )
    });
    report.await.expect("planning the dry run panicked")
}

/// Downloads every item under `root`, `transfer.workers` objects at a time: each distinct
/// object once, into the first file that has it, then the other files with the same content
/// copied from that one. The first failure stops the rest. Every placed file is sent to
/// `record` (for the hash cache) as it lands. Each file is placed in its directory opened
/// from the root's descriptor without following a link, so a link swapped in below the root
/// while the download runs (by the user of a session the daemon writes into for them) does
/// not take the file elsewhere.
pub async fn download_all(
    t: Arc<Transfer>,
    into: Destination,
    items: Vec<DownloadItem>,
    record: Option<RecordSink>,
    cancel: &CancellationToken,
) -> Result<DownloadReport, TransferError> {
    let (items, FetchPlan { firsts, copies }) = plan_of(&t, items).await;
    let (items, root) = (Arc::new(items), Arc::new(into));
    let counters = Arc::new(Counters::default());
    let stop = cancel.child_token();
    let fetches = futures::stream::iter(firsts).map({
        let (t, c, stop, record) = (t.clone(), counters.clone(), stop.clone(), record.clone());
        let (items, root) = (items.clone(), root.clone());
        move |first| {
            let (t, c, stop, record) = (t.clone(), c.clone(), stop.clone(), record.clone());
            let item = Target::of(&t, &root, &items[first]);
            async move {
                let (item, stat) = place(&t, &c, item, &stop).await?;
                if let Some(sink) = record {
                    sink.record(&item.dest, stat, item.hash).await;
                }
                Ok(())
            }
        }
    });
    run_pieces(fetches, t.settings.workers, stop.clone(), cancel).await?;
    // Only once every object is in its first file.
    let batches = copy_batches(&copies, &items);
    let copies = Arc::new(copies);
    let copy_all = futures::stream::iter(batches).map({
        let (t, c, stop) = (t.clone(), counters.clone(), stop.clone());
        move |batch: std::ops::Range<usize>| {
            let (t, c, stop, record) = (t.clone(), c.clone(), stop.clone(), record.clone());
            let work = copies[batch]
                .iter()
                .map(|&(to, from)| {
                    (
                        root.root.shown().join(OsStr::from_bytes(&items[from].rel)),
                        Target::of(&t, &root, &items[to]),
                    )
                })
                .collect();
            async move { copy_all_into(&t, &c, work, record.as_ref(), &stop).await }
        }
    });
    run_pieces(copy_all, t.settings.workers, stop, cancel).await?;
    if let Some(cache) = t.content_cache.clone()
        && counters.content_cache_added.load(Relaxed) > 0
    {
        content_cache::evict_after_adding(cache).await;
    }
    Ok(DownloadReport {
        files: counters.files.load(Relaxed),
        objects: counters.objects.load(Relaxed),
        downloaded_bytes: counters.downloaded_bytes.load(Relaxed),
        copied_files: counters.copied_files.load(Relaxed),
        refetched: counters.refetched.load(Relaxed),
        resumed_parts: counters.resumed_parts.load(Relaxed),
        resumed_bytes: counters.resumed_bytes.load(Relaxed),
        content_cache_files: counters.content_cache_files.load(Relaxed),
        content_cache_bytes: counters.content_cache_bytes.load(Relaxed),
    })
}

/// What a download of `items` would do: fetch each object (`firsts`) the content cache does
/// not hold, but for what interrupted downloads kept (`kept.0`) of those of `kept.1` bytes and
/// more, and copy the other files locally.
fn dry_run_report(
    items: &[DownloadItem],
    firsts: &[usize],
    copied_files: u64,
    cache: Option<&ContentCache>,
    kept: (&super::partial_downloads::PartialDownloads, u64),
) -> DownloadReport {
    let mut report = DownloadReport {
        files: items.len() as u64,
        copied_files,
        ..DownloadReport::default()
    };
    for &i in firsts {
        let (hash, size) = (items[i].hash, items[i].size);
        if cache.is_some_and(|c| c.peek(hash, size).is_some()) {
            report.content_cache_files += 1;
            report.content_cache_bytes += size;
        } else {
            let resumed = match size >= kept.1 {
                true => kept.0.kept_bytes(hash, size),
                false => 0,
            };
            report.objects += 1;
            report.downloaded_bytes += size - resumed;
            report.resumed_bytes += resumed;
        }
    }
    report
}

/// The order of a download, as indices into its items (so a million-entry plan is neither
/// moved nor copied).
struct FetchPlan {
    /// The first file of each distinct object, which it is fetched into: objects from
    /// [`IN_PLAN_ORDER_BELOW`] bytes first, largest first, then the others in plan order.
    firsts: Vec<usize>,
    /// `(file, first)`: every other file, copied from the first with the same content; in
    /// plan order.
    copies: Vec<(usize, usize)>,
}

impl FetchPlan {
    fn of(items: &[DownloadItem]) -> FetchPlan {
        let content = |i: usize| (items[i].hash, items[i].size);
        let mut by_content: Vec<usize> = (0..items.len()).collect();
        by_content.sort_unstable_by_key(|&i| (content(i), i));
        let mut plan = FetchPlan {
            firsts: Vec::new(),
            copies: Vec::new(),
        };
        for same in by_content.chunk_by(|&a, &b| content(a) == content(b)) {
            plan.firsts.push(same[0]);
            plan.copies.extend(same[1..].iter().map(|&i| (i, same[0])));
        }
        drop(by_content);
        plan.firsts.sort_unstable_by_key(|&i| match items[i].size {
            size if size >= IN_PLAN_ORDER_BELOW => (false, std::cmp::Reverse(size), i),
            _ => (true, std::cmp::Reverse(0), i), // in plan order
        });
        plan.copies.sort_unstable();
        plan
    }
}

/// Places `item` (its object's first file) from the store; returns it with its stat as it
/// was once it had its name.
async fn place(
    t: &Arc<Transfer>,
    c: &Arc<Counters>,
    item: Target,
    cancel: &CancellationToken,
) -> Result<(Target, FileStat), TransferError> {
    if cancel.is_cancelled() {
        return Err(Cancelled.into());
    }
    let stat = place_first(t, c, &item, cancel).await?;
    c.files.fetch_add(1, Relaxed);
    t.progress.add_files(1);
    Ok((item, stat))
}

/// Consecutive copies of small files share one blocking call, up to this many files or
/// [`COPY_BATCH_BYTES`]: a million-file plan with few distinct objects is mostly copies, and
/// handing each to a blocking thread of its own cost more than the copy.
const COPY_BATCH_FILES: usize = 32;
const COPY_BATCH_BYTES: u64 = 1 << 20;

/// Cuts `copies` into ranges of consecutive copies, [`COPY_BATCH_FILES`] or
/// [`COPY_BATCH_BYTES`] at most (a larger file is a batch of its own).
fn copy_batches(copies: &[(usize, usize)], items: &[DownloadItem]) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, &(to, _)) in copies.iter().enumerate() {
        let size = items[to].size;
        if i > start && (i - start == COPY_BATCH_FILES || bytes + size > COPY_BATCH_BYTES) {
            batches.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < copies.len() {
        batches.push(start..copies.len());
    }
    batches
}

/// Copies each `(src, item)` of `work`, `src` being a file already placed with the same
/// content, in one blocking call; fetches the object instead where `src` no longer has that
/// content (changed or removed since it was placed). Every file placed is sent to `record`,
/// also when another failed or the job was cancelled.
async fn copy_all_into(
    t: &Arc<Transfer>,
    c: &Arc<Counters>,
    work: Vec<(PathBuf, Target)>,
    record: Option<&RecordSink>,
    cancel: &CancellationToken,
) -> Result<(), TransferError> {
    let copied = {
        let cancel = cancel.clone();
        crate::logging::job_warnings::spawn_blocking(move || {
            work.into_iter()
                .take_while(|_| !cancel.is_cancelled())
                .map(|(src, item)| {
                    let copied = copy_verified_now(&src, &item, &cancel);
                    (src, item, copied)
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("copy task panicked")
    };
    let mut failed = None;
    for (src, item, copied) in copied {
        let placed = match copied {
            Ok(stat) => {
                c.files.fetch_add(1, Relaxed);
                c.copied_files.fetch_add(1, Relaxed);
                t.progress.add_files(1);
                t.progress.add_bytes(item.size);
                Ok((item, stat))
            }
            // The source side failed (unreadable, changed, gone): the object is fetched into
            // this file instead.
            Err(TransferError::Io { path, .. } | TransferError::Refused { path, .. })
                if path == src && failed.is_none() =>
            {
                tracing::debug!(path = %path.display(), "cannot copy from it; fetching");
                place(t, c, item, cancel).await
            }
            Err(e) => Err(e),
        };
        match placed {
            Ok((item, stat)) => {
                if let Some(sink) = record {
                    sink.record(&item.dest, stat, item.hash).await;
                }
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None if cancel.is_cancelled() => Err(Cancelled.into()),
        None => Ok(()),
    }
}

/// Copies `item` from the content cache if it holds the object, else fetches it from the
/// store, unless another job of the daemon is fetching the same object: then it waits and
/// copies that job's verified file. A fetched object is added to the content cache.
async fn place_first(
    t: &Arc<Transfer>,
    c: &Arc<Counters>,
    item: &Target,
    cancel: &CancellationToken,
) -> Result<FileStat, TransferError> {
    if let Some(cache) = t.content_cache.clone() {
        let (target, stop) = (item.clone(), cancel.clone());
        let cached = crate::logging::job_warnings::spawn_blocking(move || {
            from_cache(&cache, &target, &stop)
        })
        .await
        .expect("copy task panicked")?;
        if let Some(stat) = cached {
            c.content_cache_files.fetch_add(1, Relaxed);
            c.content_cache_bytes.fetch_add(item.size, Relaxed);
            t.progress.add_bytes(item.size);
            return Ok(stat);
        }
    }
    c.objects.fetch_add(1, Relaxed);
    let store_id = t.store.identity();
    let claim = t
        .inflight
        .as_ref()
        .map(|f| f.claim(&store_id, item.hash, true));
    let guard = match claim {
        Some(Claim::Theirs(rx)) => {
            if let Done::Placed(src) = cancellable(cancel, inflight::wait(rx)).await?
                && let Ok(stat) = copy_verified(&src, item, cancel).await
            {
                c.copied_files.fetch_add(1, Relaxed);
                t.progress.add_bytes(item.size);
                return Ok(stat);
            }
            None
        }
        Some(Claim::Mine(guard)) => Some(guard),
        None => None,
    };
    let tmp = fetch_verified(t, c, item, cancel).await?;
    let (mut stat, placed) = finalize(tmp, item)?;
    if let Some(guard) = guard {
        guard.done(Done::Placed(item.dest.clone()));
    }
    if let Some(cache) = &t.content_cache {
        keep_in_cache(cache, c, item, (&mut stat, placed), cancel).await;
    }
    Ok(stat)
}

/// Keeps a file just fetched in the content cache: a hard link, made here (a few system
/// calls, as naming the file was), else a copy on a blocking thread. A link moved the file's
/// ctime: `stat` becomes the new one, which the hash cache records.
async fn keep_in_cache(
    cache: &Arc<ContentCache>,
    c: &Counters,
    item: &Target,
    (stat, placed): (&mut FileStat, std::fs::File),
    cancel: &CancellationToken,
) {
    let (hash, size) = (item.hash, item.size);
    // The file placed itself, open: not what its path names by now.
    let kept = match cache.link_file(&placed, &item.dest, hash, size) {
        Ok(Inserted::NotLinked) => {
            let (cache, stop) = (cache.clone(), cancel.clone());
            let copy = move || {
                use std::io::Seek;
                let mut from = placed;
                from.rewind()?;
                cache.copy_in(from, hash, size, &stop)
            };
            match crate::logging::job_warnings::spawn_blocking(copy).await {
                Ok(kept) => kept,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        Ok(Inserted::Linked) => placed.metadata().map(|meta| {
            *stat = FileStat::of(&meta);
            Inserted::Linked
        }),
        kept => kept,
    };
    match kept {
        Ok(Inserted::No) => {}
        Ok(_) => {
            c.content_cache_added.fetch_add(1, Relaxed);
        }
        Err(_) if cancel.is_cancelled() => {}
        // Once per download: every other object would fail the same way.
        Err(e) if !c.content_cache_failed.swap(true, Relaxed) => tracing::warn!(
            "cannot add {} to the content cache in {}: {e}; the download goes on without it",
            item.dest.display(),
            cache.dir().display(),
        ),
        Err(_) => {}
    }
}

/// Places `item` from the content cache: `None` when the cache has no copy of its object,
/// or a copy that does not hold it (which is dropped).
fn from_cache(
    cache: &ContentCache,
    item: &Target,
    cancel: &CancellationToken,
) -> Result<Option<FileStat>, TransferError> {
    let Some(blob) = cache.take(item.hash, item.size) else {
        return Ok(None);
    };
    match copy_verified_now(&blob, item, cancel) {
        Ok(stat) => Ok(Some(stat)),
        Err(TransferError::Refused { path, .. }) if path == blob => {
            cache.discard(item.hash);
            Ok(None)
        }
        // Unreadable (its permissions changed with the file it is linked to, say): of no
        // use, and in the way of a copy that would be.
        Err(TransferError::Io { path, source }) if path == blob => {
            tracing::debug!("cannot read {}: {source}; fetching", path.display());
            cache.discard(item.hash);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Copies a local file with the same content to `item.dest`, hashing the bytes as they are
/// copied (the source may have been changed since it was written) before the copy becomes
/// visible.
async fn copy_verified(
    src: &Path,
    item: &Target,
    cancel: &CancellationToken,
) -> Result<FileStat, TransferError> {
    let (src, item, cancel) = (src.to_path_buf(), item.clone(), cancel.clone());
    crate::logging::job_warnings::spawn_blocking(move || copy_verified_now(&src, &item, &cancel))
        .await
        .expect("copy task panicked")
}

/// [`copy_verified`] on the calling thread (a blocking one).
fn copy_verified_now(
    src: &Path,
    item: &Target,
    cancel: &CancellationToken,
) -> Result<FileStat, TransferError> {
    let tmp = stage_beside(item)?;
    // Not through a link, nor blocking on a FIFO put where a placed file was.
    let from = open_regular(src).map_err(TransferError::io(src))?;
    // A small file needs no 1 MiB buffer (one per copy, zeroed).
    let buf_len = item.size.clamp(4096, 1 << 20) as usize;
    let (got, got_size) =
        copy_hashing(from, tmp.as_file(), buf_len, cancel).map_err(|e| match e {
            CopyError::Read(e) => TransferError::io(src)(e),
            CopyError::Write(e) => TransferError::io(&item.dest)(e),
            CopyError::Cancelled => Cancelled.into(),
        })?;
    if got != item.hash || got_size != item.size {
        return Err(TransferError::Refused {
            path: src.to_path_buf(),
            message: "changed since it was downloaded; fetching the object instead".into(),
        });
    }
    finalize(tmp, item).map(|(stat, _)| stat)
}

/// The directory `item` is placed in, opened from the root without following a link: one
/// on the way is refused, naming it, and so is (for another user's job) one the daemon may
/// not place that user's files in.
fn open_dir_of(item: &Target) -> Result<OpenDir, TransferError> {
    let root = &item.into.root;
    let rel = item.rel.parent().unwrap_or(Path::new(""));
    let dir = root
        .open_below(rel)
        .map_err(TransferError::on_the_way(root.shown()))?;
    item.into.may_place_in(&dir)?;
    Ok(dir)
}

/// A file staged in the destination's directory (so giving it its name is atomic).
fn stage_beside(item: &Target) -> Result<Landing, TransferError> {
    stage_in(open_dir_of(item)?)
}

/// A file staged in `dir`, the destination's directory.
fn stage_in(dir: OpenDir) -> Result<Landing, TransferError> {
    let staged = Staged::new_in(&dir.at(""), ".attache-", ".part")
        .map_err(TransferError::io(dir.shown()))?;
    Ok(Landing {
        into: LandsIn::Staged(staged),
        dir,
    })
}

/// Where an object is fetched into before it gets its name, and the directory it gets it in.
struct Landing {
    into: LandsIn,
    /// Declared after `into`, so dropped after it: a staged file's temporary name is reached
    /// through this directory's descriptor.
    dir: OpenDir,
}

enum LandsIn {
    /// A file staged beside its destination (`fsutil::staged`).
    Staged(Staged),
    /// A large object's partial download (`transfer::partial_downloads`), kept for a later run
    /// when this one stops before it is complete.
    Kept(Partial),
}

impl Landing {
    fn as_file(&self) -> &std::fs::File {
        match &self.into {
            LandsIn::Staged(s) => s.as_file(),
            LandsIn::Kept(p) => p.file(),
        }
    }

    /// The byte ranges an earlier run wrote.
    fn landed_before(&self) -> &[(u64, u64)] {
        match &self.into {
            LandsIn::Staged(_) => &[],
            LandsIn::Kept(p) => p.landed_before(),
        }
    }

    /// Where the parts record what they wrote, for a later run; `None`: not kept.
    fn log(&self) -> Option<LandedLog> {
        match &self.into {
            LandsIn::Staged(_) => None,
            LandsIn::Kept(p) => Some(p.log()),
        }
    }

    /// What landed does not hold the object: nothing of it is kept.
    fn discard(self) {
        if let LandsIn::Kept(p) = self.into {
            p.discard();
        }
    }

    /// For another user's job, that the file there (if any) is one that user could replace.
    fn may_replace(&self, item: &Target) -> Result<(), TransferError> {
        let Some(caller) = &item.into.caller else {
            return Ok(());
        };
        let name = item.rel.file_name().unwrap_or_default();
        let (Ok(there), Ok(dir)) = (
            std::fs::symlink_metadata(self.dir.at(name)),
            self.dir.file().metadata(),
        ) else {
            return Ok(());
        };
        if caller.may_replace(&dir, &there) {
            return Ok(());
        }
        Err(TransferError::Refused {
            path: item.dest.clone(),
            message: format!(
                "{} may not replace it: another user's file in a sticky directory. Download with --conflict create-copy or skip, or into another directory",
                caller.describe()
            ),
        })
    }

    /// Gives the file `item`'s name in the directory opened for it.
    fn persist(self, item: &Target) -> std::io::Result<std::fs::File> {
        let Landing { into, dir } = self;
        let name = item.rel.file_name().unwrap_or_default();
        let placed = match into {
            LandsIn::Staged(s) => s.persist(&dir.at(name)),
            LandsIn::Kept(p) => p.persist(&dir.at(name)),
        };
        drop(dir);
        placed
    }
}

/// Where a large object is fetched into: its partial download, with what an earlier run
/// fetched of it, or (where it cannot be kept) a file staged beside its destination.
fn keep_or_stage(t: &Transfer, c: &Counters, item: &Target) -> Result<Landing, TransferError> {
    let dir = open_dir_of(item)?;
    match t.partial_downloads.open(item.hash, item.size, &dir.at("")) {
        Ok(Some(p)) => {
            return Ok(Landing {
                into: LandsIn::Kept(p),
                dir,
            });
        }
        Ok(None) => {}
        // Once per download: every other object would fail the same way.
        Err(e) if !c.partial_failed.swap(true, Relaxed) => tracing::warn!(
            "cannot keep partial downloads for {} (in {}): {e}; large objects are fetched \
             without (a cancelled or failed run's are fetched again whole): check that \
             cache.dir is writable",
            item.dest.display(),
            t.partial_downloads
                .dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        Err(_) => {}
    }
    stage_in(dir)
}

/// Sets the manifest mtime (and atime), and the group if the job runs as another user, and
/// gives the verified file its name. Returns its stat as named (naming it moved its ctime).
fn finalize(tmp: Landing, item: &Target) -> Result<(FileStat, std::fs::File), TransferError> {
    if let Some(caller) = &item.into.caller {
        caller
            .give(tmp.as_file())
            .map_err(TransferError::io(&item.dest))?;
    }
    if let Some(g) = &item.group {
        g.grant_file(tmp.as_file())
            .map_err(|e| TransferError::Refused {
                path: item.dest.clone(),
                message: g.advice(&e),
            })?;
    }
    let t = crate::fsutil::file_time_from_us(item.mtime_us);
    filetime::set_file_handle_times(tmp.as_file(), Some(t), Some(t))
        .map_err(TransferError::io(&item.dest))?;
    tmp.may_replace(item)?;
    let file = tmp.persist(item).map_err(|e| {
        if e.kind() == std::io::ErrorKind::IsADirectory {
            TransferError::Refused {
                path: item.dest.clone(),
                message: "is a directory; cannot replace it with a file".into(),
            }
        } else {
            TransferError::Io {
                path: item.dest.clone(),
                source: e,
            }
        }
    })?;
    let meta = file.metadata().map_err(TransferError::io(&item.dest))?;
    Ok((FileStat::of(&meta), file))
}

/// Fetches the object into a temporary file (a large one: its partial download, see
/// [`keep_or_stage`]) and checks it, fetching again on a mismatch.
async fn fetch_verified(
    t: &Arc<Transfer>,
    c: &Arc<Counters>,
    item: &Target,
    cancel: &CancellationToken,
) -> Result<Landing, TransferError> {
    let prefix = t.store.root_prefix();
    let mut key = data_key(prefix, item.hash);
    let mut tried_legacy = false;
    let mut tries = 0;
    // Bytes of the object the progress counts. What earlier runs fetched is counted once (a
    // fetch again within this run finds what this run fetched too); what a try fetched and
    // the next does not keep grows the progress's total, as it is fetched again.
    let mut in_progress = None;
    loop {
        tries += 1;
        let this_try = TryCounts::new(t, c);
        let fetched;
        let tmp = if item.size >= ranged_from(t.settings.part_size.0) {
            let mut tmp = keep_or_stage(t, c, item)?;
            let kept: u64 = tmp.landed_before().iter().map(|(s, e)| e - s).sum();
            match in_progress {
                None if kept > 0 => {
                    c.resumed_bytes.fetch_add(kept, Relaxed);
                    t.progress.add_bytes(kept);
                    tracing::info!(
                        key,
                        bytes = kept,
                        "fetching on from what an earlier run fetched"
                    );
                }
                None => {}
                Some(counted) => t.progress.add_total(0, u64::saturating_sub(counted, kept)),
            }
            in_progress = Some(kept);
            fetched = fetch_ranged(t, c, &key, item, &mut tmp, &this_try, cancel).await;
            tmp
        } else {
            let tmp = stage_beside(item)?;
            t.progress.add_total(0, in_progress.unwrap_or(0));
            in_progress = Some(0);
            fetched = fetch_whole(t, &key, item, tmp.as_file(), &this_try, cancel).await;
            tmp
        };
        in_progress = in_progress.map(|n| n + this_try.counted.load(Relaxed));
        let (got, got_size) = match fetched {
            Ok(v) => v,
            Err(TransferError::Store(e)) if e.is_not_found() && !tried_legacy => {
                // Objects from very old clients have no `.xxh128` suffix.
                tried_legacy = true;
                key = legacy_data_key(prefix, item.hash);
                tries -= 1;
                continue;
            }
            Err(TransferError::Store(e)) if e.is_not_found() => {
                if let Some(k) = &t.known {
                    let _ = k.forget(&t.store.identity(), item.hash);
                }
                return Err(TransferError::Missing {
                    dest: item.dest.clone(),
                    source: Box::new(StoreError::NotFound {
                        store: t.store.describe(),
                        key: data_key(prefix, item.hash),
                    }),
                });
            }
            // A body cut off mid-stream fails after the request itself succeeded: fetch again.
            Err(TransferError::Store(e))
                if e.is_retryable() && tries < TRIES && this_try.answered.load(Relaxed) > 0 =>
            {
                c.refetched.fetch_add(1, Relaxed);
                tracing::warn!(key, "download interrupted ({e}); fetching it again");
                continue;
            }
            Err(e) => return Err(e),
        };
        if got == item.hash && got_size == item.size {
            return Ok(tmp);
        }
        tmp.discard();
        if tries >= TRIES {
            return Err(TransferError::Corrupt {
                key,
                dest: item.dest.clone(),
                expected: item.hash,
                expected_size: item.size,
                got,
                got_size,
                tries,
            });
        }
        c.refetched.fetch_add(1, Relaxed);
        tracing::warn!(
            key,
            got = %got,
            got_size,
            "downloaded content does not match its hash; fetching it again"
        );
    }
}

/// One try at fetching an object: what it saw, and the counters of the bytes it receives.
struct TryCounts {
    /// GETs the store answered: a failure after one was is a cut body, worth another try; one
    /// before is a request the gate has retried already.
    answered: AtomicU64,
    /// Bytes it added to the progress.
    counted: AtomicU64,
    counters: Arc<Counters>,
    progress: Arc<crate::progress::Progress>,
}

impl TryCounts {
    fn new(t: &Transfer, c: &Arc<Counters>) -> Arc<TryCounts> {
        Arc::new(TryCounts {
            answered: AtomicU64::new(0),
            counted: AtomicU64::new(0),
            counters: c.clone(),
            progress: t.progress.clone(),
        })
    }

    /// `len` bytes of a body came: downloaded, and done in the progress.
    fn received(&self, len: u64) {
        self.counters.downloaded_bytes.fetch_add(len, Relaxed);
        self.progress.add_bytes(len);
        self.counted.fetch_add(len, Relaxed);
    }
}

/// One GET, written and hashed as it streams. Returns (hash, bytes written).
async fn fetch_whole(
    t: &Transfer,
    key: &str,
    item: &Target,
    tmp: &std::fs::File,
    this_try: &TryCounts,
    cancel: &CancellationToken,
) -> Result<(ContentHash, u64), TransferError> {
    let mut obj = t.gate.run(cancel, || t.store.get(key, None)).await?;
    this_try.answered.fetch_add(1, Relaxed);
    let mut hasher = Xxh3Default::new();
    let mut received = 0u64;
    // Page-cache writes are cheaper inline than a hop to a blocking thread. Body chunks are
    // ~16-64 KiB: gathered into INLINE_BATCH writes, not one write each (mixed-tree download:
    // client CPU 2.9 s against 2.3 s).
    let mut out = BatchedWriter::new(tmp, 0, INLINE_BATCH);
    while let Some(chunk) = cancellable(cancel, obj.body.next()).await? {
        let chunk = chunk?;
        let len = chunk.len() as u64;
        hasher.update(&chunk);
        received += len;
        this_try.received(len);
        if received > item.size {
            break; // longer than the manifest says: mismatch, no need to read on
        }
        out.push(chunk).map_err(TransferError::io(&item.dest))?;
    }
    out.flush().map_err(TransferError::io(&item.dest))?;
    Ok((ContentHash(hasher.digest128()), received))
}

/// Objects of at least this size are fetched in ranged parts of `part_size`: two or more.
/// Not the upload's `multipart_threshold`, which a store that copies every part again on
/// Complete wants high, while its downloads still gain from parallel ranges.
fn ranged_from(part_size: u64) -> u64 {
    2 * part_size
}

/// Bytes of a body (whole object or ranged part) gathered before one inline write.
const INLINE_BATCH: usize = 256 << 10;

/// Parallel ranged GETs written at their offsets, the file hashed as its prefix fills in. A
/// part whose body is cut or ends short is fetched on from where it stopped
/// ([`PART_RESUMES`] times); one that runs past its range fails the fetch (and the object is
/// fetched again). What an earlier run landed in a partial download is not fetched; each
/// part that lands is recorded for a later run.
async fn fetch_ranged(
    t: &Arc<Transfer>,
    c: &Arc<Counters>,
    key: &str,
    item: &Target,
    tmp: &mut Landing,
    this_try: &Arc<TryCounts>,
    cancel: &CancellationToken,
) -> Result<(ContentHash, u64), TransferError> {
    tmp.as_file()
        .set_len(item.size)
        .map_err(TransferError::io(&item.dest))?;
    let file = Arc::new(
        tmp.as_file()
            .try_clone()
            .map_err(TransferError::io(&item.dest))?,
    );
    // Hashed as the file fills in: each prefix is read back as soon as it is complete.
    let hashing =
        crate::hash::as_written::AsWritten::start(file.clone(), item.size, cancel.clone())
            .map_err(TransferError::io(&item.dest))?;
    // Parts done beyond the contiguous prefix (start → end), and that prefix's end, which
    // the hash reads up to as it grows.
    let (mut landed, mut prefix) = (std::collections::BTreeMap::new(), 0);
    let mut land = |start: u64, end: u64| {
        landed.insert(start, end);
        while let Some(end) = landed.remove(&prefix) {
            prefix = end;
        }
        hashing.ready(prefix);
    };
    let before = tmp.landed_before().to_vec();
    for &(start, end) in &before {
        land(start, end);
    }
    let ranges = parts_missing(&before, item.size, t.settings.part_size.0.max(1));
    let log = tmp.log();
    // Stops the other parts when one fails, so that each records how far it came and lets go
    // of the file before this returns.
    let stop = cancel.child_token();
    let mut parts = futures::stream::iter(ranges)
        .map(|(start, end)| {
            let (t, c, file, cancel) = (t.clone(), c.clone(), file.clone(), stop.clone());
            let (key, dest, log, this_try) = (
                key.to_string(),
                item.dest.clone(),
                log.clone(),
                this_try.clone(),
            );
            // A task per part too: its body chunks are handled on the worker that reads them.
            spawned(async move {
                let cancel = &cancel;
                // Written inline in INLINE_BATCH pwritevs, as whole objects are: a hop to a
                // blocking thread per 1 MiB batch cost more CPU (large tree: 8.2 s against
                // 7.5 s) and held 4 times the bytes.
                let mut out = PartWriter {
                    out: BatchedWriter::new(&file, start, INLINE_BATCH),
                    start,
                    recorded: start,
                    log,
                };
                let mut resumes = 0;
                loop {
                    let from = out.end();
                    // A request that fails, the gate has retried already: the fetch fails.
                    let obj = t
                        .gate
                        .run(cancel, || t.store.get(&key, Some(from..end)))
                        .await?;
                    this_try.answered.fetch_add(1, Relaxed);
                    let read = read_body(&this_try, obj, end, &mut out, &dest, cancel).await;
                    let (why, failed) = match read {
                        Ok(true) if out.end() == end => break,
                        Ok(true) => ("its body ended short".to_string(), None),
                        // Longer than asked: not this object; the whole fetch fails.
                        Ok(false) => return Ok((start, end, false)),
                        Err(TransferError::Store(e)) if e.is_retryable() => {
                            (e.to_string(), Some(e))
                        }
                        Err(e) => return Err(e),
                    };
                    // What came is kept: the rest of the part is asked for, not all of it,
                    // nor the whole object (a connection lost near the end of 50 GiB).
                    if resumes == PART_RESUMES {
                        // A store still failing fails the fetch, the parts that landed kept
                        // for the next try or run; a body short every time is not this
                        // object's.
                        return match failed {
                            Some(e) => Err(e.into()),
                            None => Ok((start, end, false)),
                        };
                    }
                    resumes += 1;
                    out.flush().map_err(TransferError::io(&dest))?;
                    c.resumed_parts.fetch_add(1, Relaxed);
                    tracing::warn!(
                        key,
                        at = out.end(),
                        "a part's download was interrupted ({why}); fetching the rest of it"
                    );
                }
                out.flush().map_err(TransferError::io(&dest))?;
                Ok::<_, TransferError>((start, end, true))
            })
        })
        .buffer_unordered(t.settings.max_parts_in_flight.max(1));
    let (mut complete, mut failed) = (true, None);
    while let Some(r) = parts.next().await {
        let (start, end, whole) = match r {
            Ok(done) => done,
            Err(e) => {
                if failed.is_none() {
                    failed = Some(e);
                    stop.cancel();
                }
                continue;
            }
        };
        complete &= whole;
        if whole {
            land(start, end);
        }
    }
    drop(parts);
    if let Some(e) = failed {
        return Err(e);
    }
    if !complete {
        return Ok((ContentHash(0), 0));
    }
    match hashing.finish().await {
        Ok(Some(hash)) => Ok((hash, item.size)),
        Ok(None) => Err(Cancelled.into()),
        Err(e) => Err(TransferError::Io {
            path: item.dest.clone(),
            source: e,
        }),
    }
}

/// A part's writer that, however the part's task ends (done, failed, cancelled, aborted),
/// records what it wrote in the partial download's log for a later run: a cancel keeps the
/// parts in flight as far as they came, not only the whole ones.
struct PartWriter<'a> {
    out: BatchedWriter<'a>,
    start: u64,
    /// How far the log says the part is written.
    recorded: u64,
    log: Option<LandedLog>,
}

impl PartWriter<'_> {
    /// Adds `chunk` after what was pushed. Each [`RECORD_EVERY`] bytes written are recorded as
    /// they go, so that a run killed with no chance to record (`kill -9`, the OOM killer)
    /// keeps them too: the kernel has them, as it has the record.
    fn push(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        self.out.push(chunk)?;
        let written = self.out.written_end();
        if written - self.recorded >= RECORD_EVERY
            && let Some(log) = &self.log
            && log.record(self.start, written).is_ok()
        {
            self.recorded = written;
        }
        Ok(())
    }
}

/// How many bytes of a part are written between two records of its progress: a record is a
/// write of a few bytes to the log.
const RECORD_EVERY: u64 = 4 << 20;

impl<'a> std::ops::Deref for PartWriter<'a> {
    type Target = BatchedWriter<'a>;
    fn deref(&self) -> &BatchedWriter<'a> {
        &self.out
    }
}

impl<'a> std::ops::DerefMut for PartWriter<'a> {
    fn deref_mut(&mut self) -> &mut BatchedWriter<'a> {
        &mut self.out
    }
}

impl Drop for PartWriter<'_> {
    fn drop(&mut self) {
        // A write that failed leaves it unknown how far the bytes are there: none more
        // recorded.
        if let Some(log) = &self.log
            && self.out.end() > self.recorded
            && self.out.flush().is_ok()
            && let Err(e) = log.record(self.start, self.out.end())
        {
            // Costs a later run these bytes, not this one anything.
            tracing::debug!("cannot record a part of a partial download: {e}");
        }
    }
}

/// The ranges of an object of `size` bytes not in `landed` (sorted, merged), cut into parts
/// of at most `part` bytes.
fn parts_missing(landed: &[(u64, u64)], size: u64, part: u64) -> Vec<(u64, u64)> {
    let mut parts = Vec::new();
    let mut cut = |from: u64, to: u64| {
        let mut start = from;
        while start < to {
            let end = (start + part).min(to);
            parts.push((start, end));
            start = end;
        }
    };
    let mut at = 0;
    for &(start, end) in landed {
        cut(at, start);
        at = end;
    }
    cut(at, size);
    parts
}

/// Pushes the body of a ranged GET's answer to `out` up to `end`; false when it runs past.
async fn read_body(
    this_try: &TryCounts,
    mut obj: crate::store::GetObject,
    end: u64,
    out: &mut PartWriter<'_>,
    dest: &Path,
    cancel: &CancellationToken,
) -> Result<bool, TransferError> {
    while let Some(chunk) = cancellable(cancel, obj.body.next()).await? {
        let chunk = chunk?;
        let len = chunk.len() as u64;
        if out.end() + len > end {
            return Ok(false);
        }
        this_try.received(len);
        out.push(chunk).map_err(TransferError::io(dest))?;
    }
    Ok(true)
}

/// A transfer to a file:// store under `dir` that holds one object, `data`.
#[cfg(test)]
pub(crate) async fn store_holding(dir: &Path, data: &[u8]) -> (Arc<Transfer>, ContentHash) {
    let store = dir.join("store");
    let hash = ContentHash::of(data);
    let key = store.join(data_key("", hash));
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(&key, data).unwrap();
    let mut s = crate::config::Settings::default();
    s.cache.dir = dir.join("cache");
    let t = crate::jobs::setup::transfer_for(
        &format!("file://{}", store.display()),
        &s,
        Arc::new(crate::transfer::limiter::Bandwidth::new(&s.bandwidth)),
        Arc::default(),
    )
    .await
    .unwrap();
    (t, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(rel: &str, size: u64, hash: u128) -> DownloadItem {
        DownloadItem {
            hash: ContentHash(hash),
            size,
            rel: rel.as_bytes().into(),
            mtime_us: 0,
        }
    }

    #[test]
    fn large_objects_come_first_then_small_ones_and_copies_in_the_plans_order() {
        let big = IN_PLAN_ORDER_BELOW;
        let items = vec![
            item("a", 10, 7),
            item("b", big, 1),
            item("c", 20, 5),
            item("d", 10, 7), // same content as "a": copied from it
            item("e", 3 * big, 2),
            item("f", 5, 3),
            item("g", 20, 5),  // same content as "c"
            item("h", big, 1), // same content as "b"
            item("i", 5, 7),   // the same hash as "a" but another size: another object
        ];
        let name = |i: usize| std::str::from_utf8(&items[i].rel).unwrap();
        let plan = FetchPlan::of(&items);
        let firsts: Vec<_> = plan.firsts.iter().map(|&i| name(i)).collect();
        assert_eq!(firsts, ["e", "b", "a", "c", "f", "i"]);
        let copies: Vec<_> = plan
            .copies
            .iter()
            .map(|&(to, from)| (name(to), name(from)))
            .collect();
        assert_eq!(copies, [("d", "a"), ("g", "c"), ("h", "b")]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_whose_source_no_longer_has_the_content_fetches_the_object_instead() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"the object's content".repeat(100);
        let (t, hash) = store_holding(dir.path(), &data).await;
        // The first file with that content was changed after it was placed.
        let src = dir.path().join("first");
        std::fs::write(&src, b"edited since").unwrap();
        let dest = dir.path().join("second");
        let root = Arc::new(Destination::new(OpenDir::open(dir.path()).unwrap(), None));
        let target = |rel: &str| {
            let placed = DownloadItem {
                hash,
                size: data.len() as u64,
                rel: rel.as_bytes().into(),
                mtime_us: 1_700_000_000_000_000,
            };
            Target::of(&t, &root, &placed)
        };
        let item = target("second");
        let c = Arc::new(Counters::default());
        // A source that is gone altogether: the same.
        let third = target("third");
        let work = vec![(src, item), (dir.path().join("gone"), third)];
        let cache_dir = dir.path().join("hash-cache");
        let open = || crate::hash::cache::HashCache::open(&cache_dir).unwrap();
        let recorder = crate::hash::recorder::CacheRecorder::start(open()).unwrap();
        let sink = recorder.sink();
        copy_all_into(&t, &c, work, Some(&sink), &CancellationToken::new())
            .await
            .unwrap();
        crate::logging::job_warnings::spawn_blocking(move || recorder.finish())
            .await
            .unwrap();
        for placed in [dest, dir.path().join("third")] {
            assert_eq!(std::fs::read(&placed).unwrap(), data);
            // Recorded with the stat of the file the fetch made.
            let stat = FileStat::of(&std::fs::metadata(&placed).unwrap());
            let key = placed.as_os_str().as_bytes();
            assert_eq!(open().lookup(key, &stat).unwrap(), Some(hash), "{placed:?}");
        }
        assert_eq!(c.objects.load(Relaxed), 2, "both fetched from the store");
        assert_eq!(c.copied_files.load(Relaxed), 0);
        assert_eq!(c.files.load(Relaxed), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_swapped_in_below_the_root_after_the_plan_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"a frame".repeat(100);
        let (t, hash) = store_holding(dir.path(), &data).await;
        let root = dir.path().join("session");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(elsewhere.join("deeper")).unwrap();
        // The plan made session/shot/deeper; the session's user then puts a link there.
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("shot")).unwrap();
        let items = ["shot/deeper/a.exr", "shot/deeper/b.exr"]
            .map(|rel| item(rel, data.len() as u64, hash.0))
            .to_vec();
        let root_dir = Destination::new(OpenDir::open(&root).unwrap(), None);
        let got = download_all(t, root_dir, items, None, &CancellationToken::new()).await;
        match got {
            Err(TransferError::Refused { path, message }) => {
                assert_eq!(path, root.join("shot"));
                assert!(
                    message.contains("does not write through links"),
                    "{message}"
                );
            }
            other => panic!("{:?}", other.map(|r| r.files)),
        }
        assert_eq!(
            std::fs::read_dir(elsewhere.join("deeper")).unwrap().count(),
            0,
            "written through the link"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_cancelled_during_its_copies_leaves_whole_recorded_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"one content for every file ".repeat(40);
        let (t, hash) = store_holding(dir.path(), &data).await;
        // One object, fetched once; every other file is a copy of the first.
        const FILES: usize = 20_000;
        let root = dir.path().join("out");
        for d in 0..20 {
            std::fs::create_dir_all(root.join(format!("d{d:02}"))).unwrap();
        }
        let items: Vec<_> = (0..FILES)
            .map(|i| DownloadItem {
                mtime_us: 1_700_000_000_000_000,
                ..item(
                    &format!("d{:02}/f{i:05}", i % 20),
                    data.len() as u64,
                    hash.0,
                )
            })
            .collect();
        let cache_dir = dir.path().join("hash-cache");
        let open = || crate::hash::cache::HashCache::open(&cache_dir).unwrap();
        let recorder = crate::hash::recorder::CacheRecorder::start(open()).unwrap();
        let cancel = CancellationToken::new();
        // Cancel once the copies are under way (the first file is the fetch).
        let watcher = tokio::spawn({
            let (progress, cancel) = (t.progress.clone(), cancel.clone());
            async move {
                while progress.snapshot().files_done < 200 {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                cancel.cancel();
            }
        });
        let root_dir = Destination::new(OpenDir::open(&root).unwrap(), None);
        let got = download_all(t, root_dir, items, Some(recorder.sink()), &cancel).await;
        watcher.await.unwrap();
        assert!(
            matches!(got, Err(TransferError::Cancelled(_))),
            "{:?}",
            got.map(|r| r.files)
        );
        let placed = |root: &Path| -> Vec<PathBuf> {
            let mut all = Vec::new();
            for d in std::fs::read_dir(root).unwrap() {
                for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                    all.push(f.unwrap().path());
                }
            }
            all
        };
        let files = placed(&root);
        assert!(
            files.len() > 1 && files.len() < FILES,
            "cancelled after {} of {FILES} files",
            files.len()
        );
        // Nothing goes on once the download has returned.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(placed(&root).len(), files.len());
        crate::logging::job_warnings::spawn_blocking(move || recorder.finish())
            .await
            .unwrap();
        let cache = open();
        for f in &files {
            let name = f.file_name().unwrap().to_str().unwrap();
            assert!(
                name.starts_with('f') && name.len() == 6,
                "left behind: {f:?}"
            );
            assert_eq!(std::fs::read(f).unwrap(), data, "{f:?}");
            let stat = FileStat::of(&std::fs::metadata(f).unwrap());
            let key = f.as_os_str().as_bytes();
            assert_eq!(cache.lookup(key, &stat).unwrap(), Some(hash), "{f:?}");
        }
    }

    #[test]
    fn only_the_ranges_an_earlier_run_did_not_land_are_fetched_in_parts() {
        assert_eq!(parts_missing(&[], 25, 10), [(0, 10), (10, 20), (20, 25)]);
        // Landed in other parts (another part_size then): the gaps, cut into parts.
        assert_eq!(
            parts_missing(&[(0, 7), (12, 14), (20, 25)], 25, 10),
            [(7, 12), (14, 20)]
        );
        assert_eq!(parts_missing(&[(3, 25)], 25, 2), [(0, 2), (2, 3)]);
        assert!(parts_missing(&[(0, 25)], 25, 10).is_empty());
    }

    #[test]
    fn copies_of_small_files_are_batched_and_a_large_one_goes_alone() {
        let mut items: Vec<_> = (0..40).map(|i| item(&format!("s{i:02}"), 10, 1)).collect();
        items.push(item("big", COPY_BATCH_BYTES, 2));
        items.push(item("t", 10, 1));
        let copies: Vec<_> = (1..items.len()).map(|i| (i, 0)).collect();
        assert_eq!(
            copy_batches(&copies, &items),
            [0..COPY_BATCH_FILES, COPY_BATCH_FILES..39, 39..40, 40..41]
        );
        assert!(copy_batches(&[], &items).is_empty());
    }
}
