//! The get job: materialize manifests into a directory.
//!
//! Every path is validated before anything touches the disk; directories are created one
//! component at a time and an existing symlink on the way is refused, so nothing is written
//! outside the destination or through a link. Files already there with the right content are
//! left alone (the hash cache makes that check cheap).

use std::borrow::Cow;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::Cancelled;
use crate::fsutil::AtomicFile;
use crate::fsutil::access::Caller;
use crate::fsutil::beneath::{Beneath, LastDir, OpenDir};
use crate::fsutil::group::GroupAccess;
use crate::hash::ContentHash;
use crate::hash::cache::{HashCache, Snapshot, is_racy, now_ns};
use crate::hash::recorder::{CacheRecorder, RecordSink};
use crate::manifest::{
    Manifest, ManifestEntry, ManifestPath, ManifestVersion, ManifestWriter, PathRules,
};
use crate::scan::FileStat;
use crate::transfer::download::{self, Destination, DownloadItem, DownloadReport, download_all};
use crate::transfer::{Transfer, TransferError};

pub struct GetSpec {
    pub manifest: Manifest,
    pub dest: PathBuf,
    /// Hash cache used to recognize files already in place.
    pub cache_dir: Option<PathBuf>,
    pub conflict: Conflict,
    /// Refuse to start when the files to fetch do not fit on the destination's file system.
    pub check_space: bool,
    /// Write what is at each path once the get is done to this file (sync-inputs' record,
    /// which output detection compares against; paths relative to the destination). It is
    /// written as the plan goes and gets its name only when the whole download succeeded.
    pub record: Option<Beneath>,
    /// For a client of another user (the daemon's): where that user may write.
    pub for_caller: Option<WritableFor>,
    /// Files an earlier get of the same caller placed (a watch's rounds): one still as it was
    /// left is replaced when its content differs, whatever `conflict` says.
    pub replaceable: Option<Arc<Placed>>,
}

/// Files placed, by path: their size and mtime (µs) as they were left.
pub type Placed = std::collections::HashMap<PathBuf, (u64, i64)>;

/// The directory a client of another user was checked to be able to write in, that a
/// destination is in (or is). The get opens it once, checks it again on what it opened (a
/// link swapped in since the check is not written through), and reaches the destination from
/// it without following a link: the files go nowhere that user could not put them.
#[derive(Clone)]
pub struct WritableFor {
    pub caller: Arc<Caller>,
    pub checked: PathBuf,
}

/// What to do when a file with other content is already at a destination path.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Conflict {
    /// Leave the existing file.
    Skip,
    /// Replace it (atomically).
    #[default]
    Overwrite,
    /// Write the manifest's file beside it as `name (1).ext`.
    #[serde(alias = "create_copy")]
    CreateCopy,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct GetReport {
    pub files: u64,
    pub bytes: u64,
    /// Files already in place with the right content.
    pub unchanged_files: u64,
    /// Of those, files that had to be read to be recognized (the hash cache did not know them
    /// or they had changed since it did).
    pub unchanged_read_files: u64,
    /// Files left alone because other content was there (`--conflict skip`).
    pub skipped_files: u64,
    /// Files that had other content, kept, the manifest's written beside them as
    /// `name (1).ext` (`--conflict create-copy`; with `dry_run`: that would be).
    pub beside_files: u64,
    /// Files that had other content, replaced (`--conflict overwrite`; with `dry_run`: that
    /// would be).
    pub replaced_files: u64,
    /// With `dry_run`: what the download would fetch, nothing was.
    pub download: DownloadReport,
    /// Planned only (the transfer's `dry_run`): nothing was written (no directory, no file,
    /// no mtime), nothing fetched.
    pub dry_run: bool,
    pub seconds: f64,
}

impl GetReport {
    /// Adds another get's counts into this one (a watch's rounds into one root).
    pub fn add(&mut self, other: GetReport) {
        // Destructured: a field added later must be added here too.
        let GetReport {
            files,
            bytes,
            unchanged_files,
            unchanged_read_files,
            skipped_files,
            beside_files,
            replaced_files,
            download,
            dry_run,
            seconds,
        } = other;
        self.files += files;
        self.bytes += bytes;
        self.unchanged_files += unchanged_files;
        self.unchanged_read_files += unchanged_read_files;
        self.skipped_files += skipped_files;
        self.beside_files += beside_files;
        self.replaced_files += replaced_files;
        self.download.add(download);
        self.dry_run |= dry_run;
        self.seconds += seconds;
    }
}

/// Plans and downloads `spec.manifest` into `spec.dest`.
pub async fn run(
    spec: GetSpec,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<GetReport, TransferError> {
    let started = Instant::now();
    let dry_run = transfer.dry_run;
    let caller = spec.for_caller.as_ref().map(|w| w.caller.clone());
    // Everything before the first request stats, opens and makes things on the disk: off the
    // runtime, and not waited for once cancelled. A disk stalled in a flush holds a system
    // call for seconds; the preparation sees the cancel at its next entry and removes the
    // directories it made, while the command is already gone.
    let prepared = {
        let (transfer, cancel) = (transfer.clone(), cancel.clone());
        crate::logging::job_warnings::spawn_blocking(move || prepare(spec, &transfer, &cancel))
    };
    let Prepared {
        mut plan,
        recorder,
        files,
        bytes,
    } = crate::transfer::cancellable(cancel, prepared)
        .await?
        .expect("planning task panicked")?;
    let items = std::mem::take(&mut plan.items);
    let sink = recorder.as_ref().map(CacheRecorder::sink);
    let download = match plan.root.take() {
        Some(root) => {
            let into = Destination::new(root, caller);
            download_all(transfer, into, items, sink, cancel).await
        }
        None => Ok(download::dry_run(transfer, items).await),
    };
    if let Some(r) = recorder {
        let cancelled = matches!(download, Err(TransferError::Cancelled(_)));
        crate::logging::job_warnings::spawn_blocking(move || end_recording(r, cancelled))
            .await
            .expect("cache recorder panicked");
    }
    let download = download?;
    if let Some(record) = plan.record.take() {
        crate::logging::job_warnings::spawn_blocking(move || record.commit())
            .await
            .expect("committing the record panicked")?;
    }
    Ok(GetReport {
        files,
        bytes,
        unchanged_files: plan.unchanged.0,
        unchanged_read_files: plan.unchanged_read,
        skipped_files: plan.skipped.0,
        beside_files: plan.beside,
        replaced_files: plan.replaced,
        download,
        dry_run,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A get planned, ready to fetch.
struct Prepared {
    plan: Plan,
    /// Takes the hashes the plan computed and the files the download places.
    recorder: Option<CacheRecorder>,
    /// The manifest's files and bytes (a path listed twice counted once).
    files: u64,
    bytes: u64,
}

/// Checks the manifest and the destination, and plans: on a blocking thread.
fn prepare(
    mut spec: GetSpec,
    transfer: &Transfer,
    cancel: &CancellationToken,
) -> Result<Prepared, TransferError> {
    let twice = spec.manifest.keep_one_per_path();
    match twice {
        0 => {}
        1 => tracing::warn!("a path of the manifest is listed twice: the later entry is placed"),
        n => tracing::warn!(
            "{n} paths of the manifest are listed twice: the later entry of each is placed"
        ),
    }
    spec.manifest
        .validate_paths(PathRules::native())
        .and_then(|()| spec.manifest.check_tree())
        .map_err(|e| TransferError::Refused {
            path: spec.dest.clone(),
            message: e.to_string(),
        })?;
    // The hash cache is keyed by absolute paths.
    let dest = std::path::absolute(&spec.dest).map_err(TransferError::io(&spec.dest))?;
    let files = spec.manifest.len() as u64;
    let bytes = spec.manifest.total_size();
    transfer.progress.add_total(files, bytes);
    no_file_in_the_way(&dest)?;
    // Into a directory not there yet every file is downloaded: a download that cannot fit is
    // refused before the plan makes its directories, so no empty tree is left to be taken for
    // a download.
    let checked_early = spec.check_space && std::fs::symlink_metadata(&dest).is_err();
    if checked_early {
        let existing = dest.ancestors().find(|d| d.is_dir()).unwrap_or(&dest);
        check_space(existing, spec.manifest.entries().iter().map(|e| e.size))?;
    }
    // Hashes the plan had to compute and files the download places go to the cache as they
    // come, so the next sync trusts them without reading them.
    let recorder = spec.cache_dir.as_deref().and_then(start_recorder);
    let dirs = Dirs::new(
        &dest,
        !transfer.dry_run,
        transfer.group_access.as_deref(),
        spec.for_caller.as_ref(),
    );
    let planned = plan(
        spec.manifest,
        dirs,
        spec.cache_dir.as_deref(),
        recorder.as_ref().map(CacheRecorder::sink).as_ref(),
        (
            spec.conflict,
            spec.replaceable.as_deref(),
            spec.record.as_ref(),
        ),
        cancel,
    )
    .and_then(|plan| {
        // Checked already when the whole manifest is downloaded: nothing was there to keep.
        if spec.check_space && !checked_early {
            // A dry run may plan into a directory that does not exist yet.
            let existing = dest.ancestors().find(|d| d.is_dir()).unwrap_or(&dest);
            check_space(existing, plan.items.iter().map(|i| i.size))
                .inspect_err(|_| remove_made(&plan.created))?;
        }
        Ok(plan)
    });
    let plan = match planned {
        Ok(plan) => plan,
        Err(e) => {
            if let Some(r) = recorder {
                end_recording(r, matches!(e, TransferError::Cancelled(_)));
            }
            return Err(e);
        }
    };
    transfer
        .progress
        .add_files(plan.unchanged.0 + plan.skipped.0);
    transfer
        .progress
        .add_bytes(plan.unchanged.1 + plan.skipped.1);
    Ok(Prepared {
        plan,
        recorder,
        files,
        bytes,
    })
}

/// Ends `recorder` once the get is over (blocking: call it from a blocking thread). A cancel
/// must not wait on the cache. Anything else, a failure too, commits what was recorded: after
/// a full disk or a missing object, the next run trusts the files already placed instead of
/// reading them all again.
fn end_recording(recorder: CacheRecorder, cancelled: bool) {
    match cancelled {
        true => recorder.detach(),
        false => recorder.finish(),
    }
}

fn start_recorder(cache_dir: &Path) -> Option<CacheRecorder> {
    // A cache that cannot be opened is reported once, by the plan.
    let cache = HashCache::open(cache_dir).ok()?;
    CacheRecorder::start(cache)
        .map_err(|e| tracing::warn!("hash cache recorder: {e}"))
        .ok()
}

/// Refuses a destination directory that is a file, or below one, naming that file (rather
/// than "File exists" once the files are fetched).
pub fn no_file_in_the_way(dir: &Path) -> Result<(), TransferError> {
    let file = dir
        .ancestors()
        .find(|d| std::fs::metadata(d).is_ok_and(|m| !m.is_dir()));
    match file {
        Some(file) => Err(TransferError::Refused {
            path: file.to_path_buf(),
            message: "is a file, not a directory: the files go into a directory; give another \
                      path, or move the file away"
                .into(),
        }),
        None => Ok(()),
    }
}

/// Fails early, naming the numbers, when files of `sizes` will not fit under `dir`: their
/// blocks (each file takes whole blocks: 200,000 files of 1 KiB take 781 MiB of 4 KiB blocks,
/// not 195 MiB) or their inodes.
fn check_space(dir: &Path, sizes: impl Iterator<Item = u64>) -> Result<(), TransferError> {
    let c =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| TransferError::Refused {
            path: dir.to_path_buf(),
            message: "path contains a NUL byte".into(),
        })?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer for the call's duration.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(TransferError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    let room = Room {
        block: st.f_frsize as u64,
        free_blocks: st.f_bavail as u64,
        // A filesystem without an inode count (btrfs) reports 0 inodes in all.
        free_inodes: (st.f_files > 0).then_some(st.f_favail as u64),
    };
    room.fits(sizes).map_err(|message| TransferError::Refused {
        path: dir.to_path_buf(),
        message,
    })
}

/// The free room of a filesystem.
struct Room {
    block: u64,
    free_blocks: u64,
    /// `None`: the filesystem does not count inodes.
    free_inodes: Option<u64>,
}

impl Room {
    /// Whether files of `sizes` fit; otherwise what is lacking, to show the user.
    fn fits(&self, sizes: impl Iterator<Item = u64>) -> Result<(), String> {
        let block = self.block.max(1);
        let (mut bytes, mut blocks, mut files) = (0u64, 0u64, 0u64);
        for size in sizes {
            bytes += size;
            blocks += size.div_ceil(block);
            files += 1;
        }
        let iec = |n: u64| bytesize::ByteSize(n).display().iec().to_string();
        let (need, free) = (blocks * block, self.free_blocks * block);
        if need > free {
            let rounded = if need > bytes {
                format!(" ({} in whole blocks of {})", iec(need), iec(block))
            } else {
                String::new()
            };
            return Err(format!(
                "not enough disk space: {} to download{rounded}, {} free. Free some space or choose another directory",
                iec(bytes),
                iec(free)
            ));
        }
        if let Some(inodes) = self.free_inodes
            && files > inodes
        {
            return Err(format!(
                "not enough inodes: {files} files to create, {inodes} free on this filesystem. Delete files there or choose another directory"
            ));
        }
        Ok(())
    }
}

struct Plan {
    items: Vec<DownloadItem>,
    /// (files, bytes) already in place.
    unchanged: (u64, u64),
    /// Files in place that had to be read to be recognized.
    unchanged_read: u64,
    /// (files, bytes) left alone under `Conflict::Skip`.
    skipped: (u64, u64),
    /// Files the manifest's go beside (`--conflict create-copy`).
    beside: u64,
    /// Files with other content that the download replaces (`Conflict::Overwrite`).
    replaced: u64,
    /// The record of what each path will hold, written as the plan went.
    record: Option<PlacedRecord>,
    /// The destination, open: the download places every file from it (`None` in a dry run).
    root: Option<OpenDir>,
    /// The directories the plan made, top down.
    created: Vec<PathBuf>,
}

impl Plan {
    /// The manifest's file `e` found in place, reached at `path` (`meta`: its stat): counted,
    /// given the manifest's mtime if `touch`, recorded.
    fn keep(
        &mut self,
        there: InPlace,
        path: &Path,
        meta: &std::fs::Metadata,
        e: &ManifestEntry,
        touch: bool,
    ) -> Result<(), TransferError> {
        self.unchanged_read += u64::from(there == InPlace::Read);
        self.unchanged.0 += 1;
        self.unchanged.1 += e.size;
        if touch {
            fix_mtime(path, meta, e.mtime_us);
        }
        if let Some(r) = self.record.as_mut() {
            r.push(e)?;
        }
        Ok(())
    }
}

/// sync-inputs' record of what is at each path, written entry by entry as the plan decides,
/// so a million entries are not held beside the plan until the download ends. Dropped
/// without a commit (a failed or cancelled download), it leaves nothing.
struct PlacedRecord {
    file: AtomicFile,
    writer: ManifestWriter<std::fs::File>,
    /// The record's directory, reached without a link the session's user planted; open
    /// until the record is named in it.
    _dir: OpenDir,
    /// The record's path, for messages.
    shown: PathBuf,
}

impl PlacedRecord {
    fn create(path: &Beneath) -> std::io::Result<PlacedRecord> {
        let (dir, name) = path.open_parent(true)?;
        let file = AtomicFile::create(&dir.at(&name))?;
        // Held while this record is written: a record whose writer was killed (kill -9, a
        // power cut) is a temporary file no one holds, removed by the next sync-inputs here.
        file.file().lock()?;
        remove_abandoned_records(&dir, file.file());
        let writer = ManifestWriter::new(file.file().try_clone()?, ManifestVersion::V2023_03_03);
        Ok(PlacedRecord {
            file,
            writer,
            _dir: dir,
            shown: path.shown(),
        })
    }

    fn push(&mut self, e: &ManifestEntry) -> Result<(), TransferError> {
        self.writer.push(e).map_err(TransferError::io(&self.shown))
    }

    /// Names the record, once its data is on the disk.
    fn commit(self) -> Result<(), TransferError> {
        let path = self.shown.clone();
        if self.writer.entries() == 0 {
            return Ok(()); // nothing placed, nothing to compare against
        }
        self.writer
            .finish()
            .and_then(|_| self.file.commit(true))
            .map_err(TransferError::io(&path))
    }
}

/// Removes the temporary records in `dir` that no writer holds (a sync-inputs killed while
/// writing one), `mine` aside.
fn remove_abandoned_records(dir: &OpenDir, mine: &std::fs::File) {
    use std::os::unix::fs::MetadataExt;
    let Ok(names) = dir.names() else {
        return;
    };
    let me = mine.metadata().map(|m| m.ino()).ok();
    for name in names {
        let temporary = name
            .as_encoded_bytes()
            .starts_with(crate::fsutil::TEMP_PREFIX.as_bytes());
        if !temporary {
            continue;
        }
        // Only a regular file is opened (a FIFO planted there would block the open).
        if let Ok(f) = dir.open_file(&name)
            && f.metadata().map(|m| m.ino()).ok() != me
            && f.try_lock().is_ok()
        {
            let _ = std::fs::remove_file(dir.at(&name));
        }
    }
}

/// Files found with other content that the log names, one line each; the rest are counted.
const CONFLICTS_NAMED: u64 = 20;

/// Names the `n`th file found with other content at `path`, and what happens to it: an
/// artist whose edit a download replaces learns which file it was.
fn name_conflict(n: u64, path: &Path, what: &str) {
    if n <= CONFLICTS_NAMED {
        tracing::info!("{}: other content there; {what}", path.display());
    }
}

/// Entries planned between two returns of the manifest's memory.
const SHRINK_EVERY: usize = 64 * 1024;

/// Decides, per entry, what to fetch and where. Creates directories. Consumes the manifest:
/// each entry goes to the record (if any) and its path moves into the plan, so a
/// million-entry manifest is held once, not twice.
fn plan(
    manifest: Manifest,
    mut dirs: Dirs,
    cache_dir: Option<&Path>,
    sink: Option<&RecordSink>,
    conflicts: (Conflict, Option<&Placed>, Option<&Beneath>),
    cancel: &CancellationToken,
) -> Result<Plan, TransferError> {
    let planned = plan_in(manifest, &mut dirs, cache_dir, sink, conflicts, cancel);
    match planned {
        Ok(mut p) => {
            p.created = std::mem::take(&mut dirs.created);
            Ok(p)
        }
        Err(e) => {
            remove_made(&dirs.created);
            Err(e)
        }
    }
}

/// [`plan`], the directories it makes kept in `dirs`.
fn plan_in(
    manifest: Manifest,
    dirs: &mut Dirs,
    cache_dir: Option<&Path>,
    sink: Option<&RecordSink>,
    (conflict, replaceable, record_to): (Conflict, Option<&Placed>, Option<&Beneath>),
    cancel: &CancellationToken,
) -> Result<Plan, TransferError> {
    // A dry run creates no directory, nor anything else.
    let dry_run = !dirs.create;
    let dest = dirs.root;
    dirs.make_root()?;
    let cache = cache_dir.and_then(|d| HashCache::open(d).map_err(|e| tracing::warn!("{e}")).ok());
    // Files already in place are checked against the cache in one read transaction; hashes
    // of files that had to be read go to the recorder (its own connection).
    let snapshot = cache
        .as_ref()
        .and_then(|c| c.snapshot().map_err(|e| tracing::warn!("{e}")).ok());
    let mut p = Plan {
        items: Vec::with_capacity(manifest.len()),
        unchanged: (0, 0),
        unchanged_read: 0,
        skipped: (0, 0),
        beside: 0,
        replaced: 0,
        root: None,
        created: Vec::new(),
        record: match record_to {
            Some(path) if !dry_run => {
                Some(PlacedRecord::create(path).map_err(TransferError::io(path.shown()))?)
            }
            _ => None,
        },
    };
    // A file in place gets the manifest's mtime, not in a dry run, and for another user's
    // job only if it is theirs (a file of someone else's with that content is left as it is).
    let for_caller = dirs.for_caller;
    let touch = |meta: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        !dry_run && for_caller.is_none_or(|w| w.caller.uid == meta.uid())
    };
    // Taken from the back of a reversed vector that shrinks as it goes, so the entries'
    // memory (48 MiB for a million) is handed back while the plan grows, not after it.
    let mut entries = manifest.into_entries();
    entries.reverse();
    let mut conflicts = 0u64;
    while let Some(mut e) = entries.pop() {
        if entries.len().is_multiple_of(SHRINK_EVERY) {
            entries.shrink_to_fit();
        }
        // The path's POSIX bytes: the manifest's own when they are (valid UTF-8: nearly every
        // path), which then move into the plan without a copy.
        let converted: Option<Box<[u8]>> = match e.path.to_posix_bytes() {
            Err(err) => {
                return Err(TransferError::Refused {
                    path: dest.join(e.path.display().as_ref()),
                    message: err.to_string(),
                });
            }
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(bytes)) => Some(bytes.into()),
        };
        let mut path = dest.join(OsStr::from_bytes(
            converted.as_deref().unwrap_or(e.path.as_wtf8()),
        ));
        let mut copy_rel: Option<Box<[u8]>> = None;
        let parent = path.parent().expect("a file under the root");
        dirs.make(parent)?;
        // For another user's job, what is in place is looked at through its directory's
        // descriptor, not by a path a link of theirs swapped in meanwhile could take
        // elsewhere (`None`: a dry run's directory that is not there yet). Otherwise by path:
        // a lookup through /proc/self/fd costs a no-change sync of 50,000 files a quarter
        // more time.
        let dir = match for_caller {
            Some(_) => Some(dirs.reach(parent)?),
            None => None,
        };
        let reach = |p: &Path| match dir {
            Some(dir) => dir.map(|d| d.at(p.file_name().unwrap_or_default())),
            None => Some(p.to_path_buf()),
        };
        let (hash, size, mtime_us) = (e.hash, e.size, e.mtime_us);
        let found = reach(&path).and_then(|at| {
            let meta = std::fs::symlink_metadata(&at).ok()?;
            let there = already_there(
                (&at, &path),
                &meta,
                (size, hash),
                snapshot.as_ref(),
                sink,
                cancel,
            );
            Some((there, meta, at))
        });
        // A cancel stops the plan here: a million entries take seconds even when no file has
        // to be read, and minutes when they all do.
        if cancel.is_cancelled() {
            return Err(Cancelled.into());
        }
        match found {
            None => {}
            Some((there @ (InPlace::Known | InPlace::Read), meta, at)) => {
                p.keep(there, &at, &meta, &e, touch(&meta))?;
                continue;
            }
            Some((InPlace::No, existing, _)) => {
                // A file an earlier get of the caller left there is replaced, as its own.
                let ours = replaced_as_placed(replaceable, &path, &existing);
                match if ours { Conflict::Overwrite } else { conflict } {
                    // Found now, not after its content was fetched (and dry runs say so too).
                    Conflict::Overwrite if existing.is_dir() => {
                        return Err(TransferError::Refused {
                            path,
                            message: "is a directory where the manifest has a file; attache does \
                                  not delete directories. Move it away, or give --conflict \
                                  create-copy (the file goes beside it) or skip, and run again"
                                .into(),
                        });
                    }
                    Conflict::Overwrite => {
                        p.replaced += 1;
                        conflicts += 1;
                        let verb = if dry_run {
                            "would replace"
                        } else {
                            "replacing"
                        };
                        name_conflict(conflicts, &path, &format!("{verb} it"));
                    }
                    Conflict::Skip => {
                        conflicts += 1;
                        name_conflict(conflicts, &path, "left alone (--conflict skip)");
                        p.skipped.0 += 1;
                        p.skipped.1 += size;
                        // The record says what is there: the file that was left alone.
                        let stat = FileStat::of(&existing);
                        e.size = stat.size;
                        e.mtime_us = ManifestEntry::mtime_us_from_ns(stat.mtime_ns);
                        if let Some(r) = p.record.as_mut() {
                            r.push(&e)?;
                        }
                        continue;
                    }
                    Conflict::CreateCopy => {
                        let original = path;
                        // A copy an earlier run made, still holding the manifest's file, is that
                        // file in place: a rerun makes no `name (2).ext`.
                        let (copy_path, in_place) = copy_name(&original, reach, |p, at, meta| {
                            let there = already_there(
                                (at, p),
                                meta,
                                (size, hash),
                                snapshot.as_ref(),
                                sink,
                                cancel,
                            );
                            (there != InPlace::No).then(|| (there, meta.clone(), at.to_path_buf()))
                        });
                        path = copy_path;
                        let copy = path.strip_prefix(dest).expect("beside the original");
                        let copy: Box<[u8]> = copy.as_os_str().as_bytes().into();
                        e.path = ManifestPath::from_posix_bytes(&copy);
                        if let Some((there, meta, at)) = in_place {
                            p.keep(there, &at, &meta, &e, touch(&meta))?;
                            continue;
                        }
                        conflicts += 1;
                        p.beside += 1;
                        name_conflict(
                            conflicts,
                            &original,
                            &format!("the manifest's file goes beside it as {}", path.display()),
                        );
                        copy_rel = Some(copy);
                    }
                }
            }
        }
        if let Some(r) = p.record.as_mut() {
            r.push(&e)?;
        }
        let rel = match copy_rel.or(converted) {
            Some(bytes) => bytes,
            None => e.path.into_wtf8(),
        };
        p.items.push(DownloadItem {
            hash,
            size,
            rel,
            mtime_us,
        });
    }
    if conflicts > CONFLICTS_NAMED {
        tracing::info!(
            "…and {} more files with other content",
            conflicts - CONFLICTS_NAMED
        );
    }
    drop(snapshot);
    if !dry_run {
        p.root = Some(dirs.opened_root().map_err(TransferError::io(dest))?);
    }
    Ok(p)
}

/// `name (1).ext`, `name (2).ext`, …: the first that `holds_it` (the manifest's file, put
/// there by an earlier run), with what it said, or else the first that does not exist. Each
/// is looked at where `reach` says (`None`: nowhere, none exists).
fn copy_name<T>(
    path: &Path,
    reach: impl Fn(&Path) -> Option<PathBuf>,
    holds_it: impl Fn(&Path, &Path, &std::fs::Metadata) -> Option<T>,
) -> (PathBuf, Option<T>) {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let stem = path.file_stem().map_or(&[][..], |s| s.as_bytes());
    let ext = path.extension().map_or(&[][..], |e| e.as_bytes());
    // An "extension" that fills the name is part of the stem.
    let (stem, ext) = match ext.len() + " (1000)".len() + 1 < NAME_MAX {
        true => (stem, ext),
        false => (path.file_name().map_or(&[][..], |n| n.as_bytes()), &[][..]),
    };
    for n in 1.. {
        let mark = format!(" ({n})");
        let dot = if ext.is_empty() { 0 } else { 1 };
        // A name longer than the filesystem takes (255 bytes) loses the end of its stem,
        // at a character's edge, to make room for the mark.
        let room = NAME_MAX.saturating_sub(mark.len() + dot + ext.len());
        let mut name = shortened(stem, room).to_vec();
        name.extend_from_slice(mark.as_bytes());
        if !ext.is_empty() {
            name.push(b'.');
            name.extend_from_slice(ext);
        }
        let p = path.with_file_name(std::ffi::OsString::from_vec(name));
        let Some(at) = reach(&p) else {
            return (p, None);
        };
        match std::fs::symlink_metadata(&at) {
            Err(_) => return (p, None),
            Ok(meta) => {
                if let Some(found) = holds_it(&p, &at, &meta) {
                    return (p, Some(found));
                }
            }
        }
    }
    unreachable!("some number is free")
}

/// The longest file name Linux filesystems take, in bytes.
const NAME_MAX: usize = 255;

/// `name` cut to at most `room` bytes, not inside a UTF-8 character.
fn shortened(name: &[u8], room: usize) -> &[u8] {
    if name.len() <= room {
        return name;
    }
    let mut end = room;
    // A continuation byte (10xxxxxx) is inside a character: step back to its start.
    while end > 0 && name[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &name[..end]
}

/// Gives a file already in place (`meta`: its stat) the manifest's mtime when it differs, so
/// output detection stays exact.
fn fix_mtime(path: &Path, meta: &std::fs::Metadata, mtime_us: i64) {
    if ManifestEntry::mtime_us_from_ns(FileStat::of(meta).mtime_ns) == mtime_us {
        return;
    }
    let t = crate::fsutil::file_time_from_us(mtime_us);
    // Of the file checked, not of what a link swapped in since names.
    if let Err(e) = filetime::set_symlink_file_times(path, t, t) {
        tracing::warn!(path = %path.display(), "cannot set mtime: {e}");
    }
}

/// `root`, opened into `opened` the first time; a new descriptor of that directory each time.
fn open_root(opened: &mut Option<OpenDir>, root: &Path) -> std::io::Result<OpenDir> {
    if opened.is_none() {
        *opened = Some(OpenDir::open(root)?);
    }
    opened
        .as_ref()
        .expect("opened above")
        .open_below(Path::new(""))
}

/// The directories of a download: made under the root as the plan needs them, each checked
/// once, and given to the job's group (if any).
struct Dirs<'a> {
    root: &'a Path,
    made: HashSet<PathBuf>,
    /// Without it (a dry run), only check what is there.
    create: bool,
    group: Option<&'a GroupAccess>,
    for_caller: Option<&'a WritableFor>,
    /// The root, open once it exists: each directory is made through the descriptor of the
    /// one above it, so a link swapped in meanwhile is not followed.
    opened: Option<OpenDir>,
    /// The directory [`Self::reach`] opened last (a plan goes through a directory's files
    /// one after another).
    last: LastDir,
    /// The directories this get made, top down (for its own user only): removed again, if
    /// still empty, when the plan is refused.
    created: Vec<PathBuf>,
}

impl<'a> Dirs<'a> {
    fn new(
        root: &'a Path,
        create: bool,
        group: Option<&'a GroupAccess>,
        for_caller: Option<&'a WritableFor>,
    ) -> Dirs<'a> {
        Dirs {
            root,
            made: HashSet::new(),
            create,
            group,
            for_caller,
            opened: None,
            last: LastDir::default(),
            created: Vec::new(),
        }
    }

    /// Directory `dir` under the root (made already), open: what is in it is looked at
    /// through its descriptor. `None`: a dry run's directory that is not there.
    fn reach(&mut self, dir: &Path) -> Result<Option<&OpenDir>, TransferError> {
        let (root, opened) = (self.root, &mut self.opened);
        let rel = dir
            .strip_prefix(root)
            .expect("planned paths are under the root");
        match self
            .last
            .reach(dir, || open_root(opened, root)?.open_below(rel))
        {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.create => Ok(None),
            Err(e) => Err(TransferError::on_the_way(self.root)(e)),
        }
    }

    /// Creates the root (and what leads to it) if missing. For another user's job, the root
    /// is reached from the directory checked for that user, opened and checked again here.
    fn make_root(&mut self) -> Result<(), TransferError> {
        let Some(w) = self.for_caller else {
            if self.create {
                let existed = self.root.is_dir();
                let mut missing: Vec<PathBuf> = (self.root.ancestors())
                    .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
                    .map(Path::to_path_buf)
                    .collect();
                std::fs::create_dir_all(self.root).map_err(TransferError::io(self.root))?;
                missing.reverse();
                self.created = missing;
                self.grant(self.root, self.root, existed)?;
            }
            return Ok(());
        };
        let Some(base) = w.checked.ancestors().find(|d| d.is_dir()) else {
            return Err(TransferError::io(&w.checked)(
                std::io::ErrorKind::NotFound.into(),
            ));
        };
        let rel = self
            .root
            .strip_prefix(base)
            .map_err(|_| TransferError::Refused {
                path: self.root.to_path_buf(),
                message: format!("is not under {}, where the job may write", base.display()),
            })?;
        let opened = OpenDir::open(base).map_err(TransferError::io(base))?;
        w.caller.may_place_in(base, opened.file())?;
        if rel.as_os_str().is_empty() && self.create && owned_by(&w.caller, &opened) {
            self.grant(&opened.at(""), self.root, true)?;
        }
        self.opened = self.descend(opened, base.to_path_buf(), rel)?;
        Ok(())
    }

    /// Creates `dir` (under the root) component by component, refusing to pass through a
    /// symlink or a file.
    fn make(&mut self, dir: &Path) -> Result<(), TransferError> {
        if self.made.contains(dir) || dir == self.root {
            return Ok(());
        }
        let rel = dir
            .strip_prefix(self.root)
            .expect("planned paths are under the root");
        let root = match self.opened_root() {
            Ok(root) => Some(root),
            // A dry run's root that is not there: nothing below it can be in the way.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.create => None,
            Err(e) => return Err(TransferError::io(self.root)(e)),
        };
        let reached = match root {
            Some(root) => self.descend(root, self.root.to_path_buf(), rel)?,
            None => None,
        };
        if reached.is_none() {
            self.made.insert(dir.to_path_buf());
        }
        Ok(())
    }

    /// Goes down `rel` from `dir` (named `shown`) a component at a time, through each
    /// directory's descriptor and without following a link: makes what is missing (unless a
    /// dry run) and takes each directory over once ([`Self::take_over`]). `None`: a dry run's
    /// directory that is not there yet.
    fn descend(
        &mut self,
        mut dir: OpenDir,
        mut shown: PathBuf,
        rel: &Path,
    ) -> Result<Option<OpenDir>, TransferError> {
        for part in rel.components() {
            shown.push(part);
            let name = Path::new(part.as_os_str());
            let known = self.made.contains(&shown);
            let made = !known && self.check_or_make(&dir.at(name), &shown)?;
            dir = match dir.open_below(name) {
                Ok(next) => next,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.create => {
                    return Ok(None);
                }
                Err(e) => return Err(TransferError::on_the_way(self.root)(e)),
            };
            if !known {
                if made && self.for_caller.is_none() {
                    self.created.push(shown.clone());
                }
                self.take_over(&dir, &shown, made)?;
                self.made.insert(shown.clone());
            }
        }
        Ok(Some(dir))
    }

    /// For another user's job, a directory that was there must be one that user may write
    /// in, and one made for them becomes theirs (where the daemon may give it away: as
    /// root), so that their next job may write in it too. Then (unless a dry run) it is given
    /// to the job's group: for another user's job, only one made for it or theirs already.
    fn take_over(&self, dir: &OpenDir, shown: &Path, made: bool) -> Result<(), TransferError> {
        let mut grant = self.create;
        if let Some(w) = self.for_caller {
            if made {
                w.caller
                    .give(dir.file())
                    .map_err(TransferError::io(shown))?;
            } else {
                w.caller.may_place_in(shown, dir.file())?;
                grant &= owned_by(&w.caller, dir);
            }
        }
        if grant {
            self.grant(&dir.at(""), shown, !made)?;
        }
        Ok(())
    }

    /// The root, open (a new descriptor each time, of the directory first opened).
    fn opened_root(&mut self) -> std::io::Result<OpenDir> {
        open_root(&mut self.opened, self.root)
    }

    /// Checks what is at `at` (reached through its parent's descriptor; `shown` for
    /// messages): a link or a file is refused; a missing directory is made (unless a dry
    /// run). Returns whether it made it.
    fn check_or_make(&self, at: &Path, shown: &Path) -> Result<bool, TransferError> {
        match std::fs::symlink_metadata(at) {
            Ok(m) if m.file_type().is_symlink() => Err(TransferError::Refused {
                path: shown.to_path_buf(),
                message:
                    "is a symlink; attache does not write through links. Remove it and run again"
                        .into(),
            }),
            Ok(m) if m.is_dir() => Ok(false),
            Ok(_) => Err(TransferError::Refused {
                path: shown.to_path_buf(),
                message: "is a file where the manifest needs a directory".into(),
            }),
            // Nothing below a directory that is not there can be in the way.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.create => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(at) {
                Ok(()) => Ok(true),
                // Made by another job meanwhile.
                Err(_) if at.is_dir() => Ok(false),
                Err(e) => Err(TransferError::io(shown)(e)),
            },
            Err(e) => Err(TransferError::Io {
                path: shown.to_path_buf(),
                source: e,
            }),
        }
    }

    fn grant(&self, at: &Path, shown: &Path, existed: bool) -> Result<(), TransferError> {
        grant_dir(self.group, at, shown, existed)
    }
}

/// Whether the file at `path` (`existing`: its stat) is one an earlier get placed
/// (`replaceable`), still as it was left.
fn replaced_as_placed(
    replaceable: Option<&Placed>,
    path: &Path,
    existing: &std::fs::Metadata,
) -> bool {
    let Some(&(size, mtime_us)) = replaceable.and_then(|r| r.get(path)) else {
        return false;
    };
    let now = FileStat::of(existing);
    existing.is_file()
        && now.size == size
        && ManifestEntry::mtime_us_from_ns(now.mtime_ns) == mtime_us
}

/// Removes the directories a refused get made (`created`, top down), deepest first, each
/// only if still empty: no tree of empty directories is left to be taken for a download.
fn remove_made(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Whether `dir` is `caller`'s ([`Caller::owns`]).
fn owned_by(caller: &Caller, dir: &OpenDir) -> bool {
    dir.file().metadata().is_ok_and(|m| caller.owns(&m))
}

/// Makes `dest`, a root a job writes its outputs into, as a get makes its destination: for
/// `for_caller` only where that user may write, and given to the job's `group`.
pub fn make_dest(
    dest: &Path,
    group: Option<&GroupAccess>,
    for_caller: Option<&WritableFor>,
) -> Result<(), TransferError> {
    Dirs::new(dest, true, group, for_caller).make_root()
}

/// Gives a directory files are placed in (or a root the job writes its outputs to), reached at
/// `at` (named `shown` in messages), to the job's group, as the files are. One that was there
/// before (a storage-profile location, a directory of the project) may belong to someone
/// else: that it cannot be given is a warning, not a failure.
fn grant_dir(
    group: Option<&GroupAccess>,
    at: &Path,
    shown: &Path,
    existed: bool,
) -> Result<(), TransferError> {
    let Some(g) = group else {
        return Ok(());
    };
    match g.grant_dir(at) {
        Ok(()) => Ok(()),
        Err(e) if existed => {
            tracing::warn!(path = %shown.display(), "{}", g.advice(&e));
            Ok(())
        }
        Err(e) => Err(TransferError::Refused {
            path: shown.to_path_buf(),
            message: g.advice(&e),
        }),
    }
}

/// What is at a destination path, as far as the plan is concerned.
#[derive(Debug, PartialEq, Eq)]
enum InPlace {
    /// Not the manifest's content (or not a regular file, or not readable).
    No,
    /// The manifest's content, as the hash cache knows.
    Known,
    /// The manifest's content, found by reading the file.
    Read,
}

/// Whether the regular file at `path`, reached at `at` (`meta`: its stat), has the right size
/// and content. A file the cache does not know is hashed (a cancel stops that), and its hash
/// sent to `sink` unless it changed too recently to be trusted.
fn already_there(
    (at, path): (&Path, &Path),
    meta: &std::fs::Metadata,
    (size, hash): (u64, ContentHash),
    cache: Option<&Snapshot<'_>>,
    sink: Option<&RecordSink>,
    cancel: &CancellationToken,
) -> InPlace {
    if !meta.is_file() || meta.len() != size {
        return InPlace::No;
    }
    let stat = FileStat::of(meta);
    let key = path.as_os_str().as_bytes();
    if let Some(c) = cache
        && let Ok(Some(h)) = c.lookup(key, &stat)
    {
        return if h == hash {
            InPlace::Known
        } else {
            InPlace::No
        };
    }
    let read_at = now_ns();
    match crate::hash::file::hash_file(at, 1 << 20, cancel, &|_| {}) {
        Ok(fh) => {
            if let Some(sink) = sink
                && !is_racy(&fh.stat, read_at)
            {
                sink.record_blocking(path, fh.stat, fh.hash);
            }
            if fh.hash == hash {
                InPlace::Read
            } else {
                InPlace::No
            }
        }
        Err(_) => InPlace::No,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_left_by_a_killed_sync_is_removed_one_being_written_is_not() {
        let t = tempfile::tempdir().unwrap();
        let abandoned = t.path().join(".attache-tmp-killed");
        std::fs::write(&abandoned, b"half a record").unwrap();
        let written = t.path().join(".attache-tmp-writing");
        std::fs::write(&written, b"a record being written").unwrap();
        let writer = std::fs::File::open(&written).unwrap();
        writer.lock().unwrap();
        let record = PlacedRecord::create(&Beneath::new(t.path(), "root.manifest")).unwrap();
        assert!(!abandoned.exists(), "no writer holds it");
        assert!(written.exists(), "its writer holds it");
        assert!(record.file.file().metadata().is_ok());
    }

    #[test]
    fn a_copy_s_name_fits_the_filesystem_and_keeps_whole_characters() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().unwrap();
        let none = |_: &Path, _: &Path, _: &std::fs::Metadata| None::<()>;
        let here = |p: &Path| Some(p.to_path_buf());
        let name_of = |p: &Path| p.file_name().unwrap().as_bytes().to_vec();
        let short = t.path().join("frame.exr");
        assert_eq!(name_of(&copy_name(&short, here, none).0), b"frame (1).exr");
        // 254 bytes: the stem gives way to " (1)", the extension stays.
        let long = t.path().join(format!("{}.txt", "L".repeat(250)));
        let (copy, _) = copy_name(&long, here, none);
        let name = name_of(&copy);
        assert_eq!(name.len(), NAME_MAX);
        assert!(name.ends_with(b"L (1).txt"), "{}", copy.display());
        std::fs::write(&copy, b"it is made").unwrap();
        // Two-byte characters: cut between them, never inside one.
        let accents = t.path().join(format!("{}.exr", "é".repeat(125)));
        let name = name_of(&copy_name(&accents, here, none).0);
        assert!(name.len() <= NAME_MAX);
        assert!(std::str::from_utf8(&name).unwrap().ends_with("é (1).exr"));
    }

    /// Checks `path` as a file in place (expecting `content`) with an empty cache, and says
    /// whether its hash was recorded.
    fn recorded_after_check(path: &Path, content: &[u8], cache_dir: &Path) -> bool {
        let rec = CacheRecorder::start(HashCache::open(cache_dir).unwrap()).unwrap();
        let meta = std::fs::symlink_metadata(path).unwrap();
        let sink = rec.sink();
        let hash = ContentHash::of(content);
        let there = already_there(
            (path, path),
            &meta,
            (content.len() as u64, hash),
            None,
            Some(&sink),
            &CancellationToken::new(),
        );
        assert_eq!(there, InPlace::Read);
        rec.finish();
        let stat = FileStat::of(&meta);
        let cache = HashCache::open(cache_dir).unwrap();
        cache.lookup(path.as_os_str().as_bytes(), &stat).unwrap() == Some(hash)
    }

    #[test]
    fn a_cancel_stops_the_plan_before_it_goes_through_the_manifest() {
        let t = tempfile::tempdir().unwrap();
        let entries = (0..100)
            .map(|i| ManifestEntry {
                path: ManifestPath::from_posix_bytes(format!("d{i}/f").as_bytes()),
                hash: ContentHash::of(&[i as u8]),
                size: 1,
                mtime_us: 0,
            })
            .collect();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let got = plan(
            Manifest::new(entries),
            Dirs::new(t.path(), true, None, None),
            None,
            None,
            (Conflict::Overwrite, None, None),
            &cancel,
        );
        assert!(
            matches!(got, Err(TransferError::Cancelled(_))),
            "{:?}",
            got.err()
        );
        let made = std::fs::read_dir(t.path()).unwrap().count();
        assert!(made <= 1, "{made} directories made after the cancel");
    }

    #[test]
    fn room_counts_whole_blocks_and_inodes() {
        let room = Room {
            block: 4096,
            free_blocks: 100,
            free_inodes: Some(50),
        };
        // 100 files of 1 KiB: 100 KiB of bytes, but 100 blocks of 4 KiB: just fits.
        assert_eq!(
            room.fits(std::iter::repeat_n(1024, 100)),
            Err("not enough inodes: 100 files to create, 50 free on this filesystem. Delete files there or choose another directory".to_string())
        );
        let room = Room {
            free_inodes: None,
            ..room
        };
        assert_eq!(room.fits(std::iter::repeat_n(1024, 100)), Ok(()));
        // One more file does not fit, though its bytes are far below the free space.
        let err = room.fits(std::iter::repeat_n(1024, 101)).unwrap_err();
        assert_eq!(
            err,
            "not enough disk space: 101.0 KiB to download (404.0 KiB in whole blocks of 4.0 KiB), 400.0 KiB free. Free some space or choose another directory"
        );
        // Empty files take no block.
        assert_eq!(room.fits(std::iter::repeat_n(0, 10_000)), Ok(()));
        // Whole blocks: no note on the rounding.
        let err = room.fits([101 * 4096].into_iter()).unwrap_err();
        assert!(
            err.starts_with("not enough disk space: 404.0 KiB to download, 400.0 KiB free"),
            "{err}"
        );
    }

    #[test]
    fn a_file_in_place_is_recorded_only_once_it_is_old_enough_to_trust() {
        let t = tempfile::tempdir().unwrap();
        let (cache, path) = (t.path().join("cache"), t.path().join("f"));
        std::fs::write(&path, b"in place").unwrap();
        assert!(
            !recorded_after_check(&path, b"in place", &cache),
            "written just now: a write in the same clock tick would go unseen"
        );
        std::thread::sleep(std::time::Duration::from_nanos(
            crate::hash::cache::RACY_WINDOW_NS as u64 + 100_000_000,
        ));
        assert!(recorded_after_check(&path, b"in place", &cache));
    }

    /// The plan writes sync-inputs' record as it goes: the manifest's entry for each file in
    /// place or to fetch, what is there for a file left alone, the new name of a copy. The
    /// record is named only on commit.
    #[test]
    fn the_record_says_what_each_path_holds_and_is_named_only_on_commit() {
        let entry = |path: &str, content: &[u8]| ManifestEntry {
            path: ManifestPath::from_posix_bytes(path.as_bytes()),
            hash: ContentHash::of(content),
            size: content.len() as u64,
            mtime_us: 1_700_000_000_000_000,
        };
        let manifest = Manifest::new(vec![
            entry("new", b"fetched"),
            entry("other.txt", b"the manifest's"),
            entry("same", b"in place"),
        ]);
        for conflict in [Conflict::Skip, Conflict::CreateCopy] {
            let t = tempfile::tempdir().unwrap();
            let dest = t.path().join("dest");
            std::fs::create_dir_all(&dest).unwrap();
            std::fs::write(dest.join("same"), b"in place").unwrap();
            std::fs::write(dest.join("other.txt"), b"X").unwrap();
            let record = t.path().join("records/r.manifest");
            let at = Beneath::new(t.path(), "records/r.manifest");
            let mut p = plan(
                manifest.clone(),
                Dirs::new(&dest, true, None, None),
                None,
                None,
                (conflict, None, Some(&at)),
                &CancellationToken::new(),
            )
            .unwrap();
            assert!(!record.exists(), "{conflict:?}: named before the download");
            p.record.take().unwrap().commit().unwrap();
            let got = crate::manifest::decode_from(std::fs::File::open(&record).unwrap())
                .unwrap()
                .into_entries();
            let fetched: Vec<&[u8]> = p.items.iter().map(|i| &i.rel[..]).collect();
            let left = FileStat::of(&std::fs::metadata(dest.join("other.txt")).unwrap());
            let other = match conflict {
                Conflict::Skip => {
                    assert_eq!(fetched, [&b"new"[..]]);
                    ManifestEntry {
                        size: 1,
                        mtime_us: ManifestEntry::mtime_us_from_ns(left.mtime_ns),
                        ..entry("other.txt", b"the manifest's")
                    }
                }
                _ => {
                    assert_eq!(fetched, [&b"new"[..], &b"other (1).txt"[..]]);
                    entry("other (1).txt", b"the manifest's")
                }
            };
            let want = vec![entry("new", b"fetched"), other, entry("same", b"in place")];
            assert_eq!(got, want, "{conflict:?}");
            let names = std::fs::read_dir(t.path().join("records")).unwrap().count();
            assert_eq!(names, 1, "{conflict:?}: a temporary file beside the record");
        }
    }

    /// A transfer to a store holding one object, a user other than the test's, and the
    /// spec of a get of `paths` (each that object) into `dest` for that user, who was checked
    /// to be able to write in `checked`. `None` where the test does not run as root: as
    /// another user, a daemon may write in its own directories (`Caller::may_place_in`).
    async fn for_another_user(
        t: &Path,
    ) -> Option<(
        Arc<Transfer>,
        Arc<Caller>,
        impl Fn(&[&str], PathBuf, PathBuf) -> GetSpec,
    )> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: a daemon acting for another user as root needs root");
            return None;
        }
        std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = b"a frame".repeat(50);
        let (transfer, hash) = crate::transfer::download::store_holding(t, &data).await;
        let meta = std::fs::metadata(t).unwrap();
        let caller = Arc::new(Caller {
            uid: meta.uid() + 1000,
            gid: meta.gid() + 1000,
            groups: vec![meta.gid() + 1000],
        });
        let spec = {
            let caller = caller.clone();
            move |paths: &[&str], dest: PathBuf, checked: PathBuf| GetSpec {
                manifest: Manifest::new(
                    paths
                        .iter()
                        .map(|p| ManifestEntry {
                            path: ManifestPath::from_posix_bytes(p.as_bytes()),
                            hash,
                            size: data.len() as u64,
                            mtime_us: 1_700_000_000_000_000,
                        })
                        .collect(),
                ),
                dest,
                cache_dir: None,
                conflict: Conflict::Overwrite,
                check_space: false,
                record: None,
                for_caller: Some(WritableFor {
                    caller: caller.clone(),
                    checked,
                }),
                replaceable: None,
            }
        };
        Some((transfer, caller, spec))
    }

    fn mode(p: &Path, m: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    /// For a client of another user, the download's root is reached from the directory
    /// checked for that user, checked again on what was opened, and without following a link
    /// below it: the files go nowhere that user could not put them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn for_another_user_files_go_only_where_that_user_may_write() {
        let t = tempfile::tempdir().unwrap();
        let Some((transfer, caller, get)) = for_another_user(t.path()).await else {
            return;
        };
        let (open, closed) = (t.path().join("open"), t.path().join("closed"));
        for (d, m) in [(&open, 0o777), (&closed, 0o755)] {
            std::fs::create_dir(d).unwrap();
            mode(d, m);
        }
        let cancel = CancellationToken::new();
        let frame = ["shot/a.exr"];
        run(
            get(&frame, open.join("out"), open.clone()),
            transfer.clone(),
            &cancel,
        )
        .await
        .unwrap();
        assert!(open.join("out/shot/a.exr").is_file());
        // What was made for them is theirs, their group's too (not the daemon's group).
        use std::os::unix::fs::MetadataExt;
        for made in ["out", "out/shot", "out/shot/a.exr"] {
            let meta = std::fs::metadata(open.join(made)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (caller.uid, caller.gid), "{made}");
        }

        // The directory checked, now a link to one that user may not write in.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&closed, &link).unwrap();
        let got = run(
            get(&frame, link.join("out"), link.clone()),
            transfer.clone(),
            &cancel,
        );
        let e = got.await.err().unwrap().to_string();
        assert!(e.contains("may not write in it"), "{e}");
        // The same for a root a task writes its outputs into (made, and given to a group).
        let w = get(&[], link.join("renders"), link.clone()).for_caller;
        let e = make_dest(&link.join("renders"), None, w.as_ref()).unwrap_err();
        assert!(e.to_string().contains("may not write in it"), "{e}");
        // A link below it, to a directory anyone may write in.
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        mode(&elsewhere, 0o777);
        std::os::unix::fs::symlink(&elsewhere, open.join("assetroot-1")).unwrap();
        let got = run(
            get(&frame, open.join("assetroot-1"), open.clone()),
            transfer,
            &cancel,
        );
        let e = got.await.err().unwrap().to_string();
        assert!(e.contains("assetroot-1: is a symlink"), "{e}");
        for d in [&closed, &elsewhere] {
            assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "written in {d:?}");
        }
    }

    /// In a directory every user may write in (a sticky one, as `/tmp`), another user's job
    /// writes in no directory of someone else's and replaces no file of theirs; what is made
    /// for it is its user's, so that user's next job writes there too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_user_s_job_writes_in_no_directory_and_replaces_no_file_of_someone_else() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let Some((transfer, caller, get)) = for_another_user(t.path()).await else {
            return;
        };
        let shared = t.path().join("shared");
        std::fs::create_dir_all(shared.join("private")).unwrap();
        mode(&shared, 0o1777);
        mode(&shared.join("private"), 0o700);
        std::fs::write(shared.join("victim"), b"root's").unwrap();
        mode(&shared.join("victim"), 0o644);
        let cancel = CancellationToken::new();
        let into = |paths: &[&str]| {
            run(
                get(paths, shared.clone(), shared.clone()),
                transfer.clone(),
                &cancel,
            )
        };

        let e = into(&["private/planted.txt"])
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("shared/private: user") && e.contains("may not write in it"),
            "{e}"
        );
        let e = into(&["victim"]).await.err().unwrap().to_string();
        assert!(
            e.contains("shared/victim: user") && e.contains("may not replace"),
            "{e}"
        );
        assert_eq!(std::fs::read(shared.join("victim")).unwrap(), b"root's");
        assert_eq!(
            std::fs::read_dir(shared.join("private")).unwrap().count(),
            0
        );

        // Given to a job group: what is made for it is, the shared directory is not.
        let group = GroupAccess {
            name: "caller's".into(),
            gid: caller.gid,
        };
        let transfer = transfer.clone().with_group_access(Some(group));
        let spec = get(&["mine/a.exr"], shared.clone(), shared.clone());
        run(spec, transfer.clone(), &cancel).await.unwrap();
        let made = std::fs::metadata(shared.join("mine")).unwrap();
        assert_eq!(made.uid(), caller.uid, "the directory made is its user's");
        assert_eq!(made.gid(), caller.gid, "and its group's");
        let placed = std::fs::metadata(shared.join("mine/a.exr")).unwrap();
        assert_eq!((placed.uid(), placed.gid()), (caller.uid, caller.gid));
        let shared_meta = std::fs::metadata(&shared).unwrap();
        assert_eq!(
            shared_meta.mode() & 0o7777,
            0o1777,
            "the shared directory as it was"
        );
        assert_ne!(shared_meta.gid(), caller.gid);
        into(&["mine/b.exr", "mine/a.exr"]).await.unwrap();
        assert!(shared.join("mine/b.exr").is_file());
    }
}
