//! The sync-outputs job (worker): find the files a task wrote under each root's output
//! directories (new, or changed since sync-inputs or since another task of the session
//! published them), upload them, then publish each root's output manifest under the task's
//! output key.

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::attachments::{Attachments, ManifestProperties, PathFormat, local_root};
use super::hash::{HashJobError, HashSpec, hash_chosen};
use super::put::{PutError, run_with};
use super::sync_inputs::{read_manifest_file, read_record, root_id};
use super::{Cancelled, detached};
use crate::fsutil::beneath::{self, Beneath, LastDir, OpenDir};
use crate::hash::ContentHash;
use crate::hash::cache::{CacheRecord, HashCache};
use crate::manifest::{
    Manifest, ManifestEntry, ManifestPath, PathRules, decode_from, json_quote, merge,
};
use crate::scan::FileStat;
use crate::scan::{ScanOptions, ScanOutcome, ScannedFile, dedup_by_path, scan_under_keeping};
use crate::store::PutOptions;
use crate::store::layout::{OutputManifestPath, manifests_prefix};
use crate::transfer::Transfer;
use crate::transfer::content_cache::{ContentCache, Inserted};

pub struct SyncOutputsSpec {
    pub attachments: Attachments,
    pub session_dir: PathBuf,
    pub location_map: Vec<(String, PathBuf)>,
    pub farm_id: String,
    pub queue_id: String,
    pub job_id: String,
    pub step_id: String,
    /// `None`: a chunked step's session action, published at the step level.
    pub task_id: Option<String>,
    pub session_action_id: String,
    /// `%Y-%m-%dT%H:%M:%S.%fZ`.
    pub start_time: String,
    pub hash: HashSpec,
}

/// What sync-outputs did for one asset root with output directories.
#[derive(Debug, serde::Serialize)]
pub struct OutputRoot {
    pub root_path: String,
    /// New and changed outputs found, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// How the outputs were hashed (read, or known to the hash cache).
    pub hash: crate::hash::parallel::HashStats,
    pub upload: crate::transfer::upload::UploadReport,
    /// The output manifest's path (relative to the manifests prefix), once published (with a
    /// dry run: where it would be); none without outputs.
    pub output_manifest_path: Option<String>,
    /// Outputs kept in this machine's content cache (by a hard link), for a dependent step's
    /// task on this machine.
    pub content_cache_files: u64,
}

/// What sync-outputs did: the manifests to report to the farm, and per root the counts.
#[derive(Debug, serde::Serialize)]
pub struct SyncOutputsReport {
    pub manifests: Vec<OutputManifest>,
    pub roots: Vec<OutputRoot>,
    /// Nothing was uploaded or published: `manifests` are what would have been.
    pub dry_run: bool,
}

/// One published output manifest, as the worker reports it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputManifest {
    pub output_manifest_path: String,
    pub output_manifest_hash: String,
}

pub async fn run(
    spec: SyncOutputsSpec,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<SyncOutputsReport, PutError> {
    let keys = OutputManifestPath {
        farm: &spec.farm_id,
        queue: &spec.queue_id,
        job: &spec.job_id,
        step: &spec.step_id,
        task: spec.task_id.as_deref(),
        start_time: &spec.start_time,
        session_action: &spec.session_action_id,
    };
    let prefix = manifests_prefix(transfer.store.root_prefix());
    // The attachments are untrusted on a worker: check every output directory before any work.
    for m in &spec.attachments.manifests {
        for dir in output_dirs_here(m) {
            check_output_dir(&spec.session_dir, &dir)?;
        }
    }
    // A mistyped --session-dir would otherwise find no outputs and succeed: the task's
    // frames lost, and its log saying only that nothing changed.
    if !spec.session_dir.is_dir() {
        let (kind, what) = match spec.session_dir.exists() {
            true => (std::io::ErrorKind::NotADirectory, "not a directory"),
            false => (std::io::ErrorKind::NotFound, "no such session directory"),
        };
        return Err(PutError::Hash(HashJobError::Root {
            root: spec.session_dir.clone(),
            source: std::io::Error::new(
                kind,
                format!(
                    "{what} (give the --session-dir of the task's session, where sync-inputs placed its inputs)"
                ),
            ),
        }));
    }
    let mut published = Vec::new();
    let mut roots = Vec::new();
    for m in &spec.attachments.manifests {
        let dirs = output_dirs_here(m);
        if dirs.is_empty() {
            continue;
        }
        let local = local_root(&spec.session_dir, m, &spec.location_map);
        if !local.is_dir() {
            tracing::warn!(
                "{}: no {} for the root {} (sync-inputs makes it): no outputs there to sync; is this the task's session directory?",
                spec.session_dir.display(),
                local.display(),
                m.root_path
            );
        }
        let (local2, dirs, session, hash_spec, task) = (
            local.clone(),
            dirs.clone(),
            spec.session_dir.clone(),
            spec.hash.clone(),
            spec.task_id.clone(),
        );
        let only_files_hashed = hash_spec.scan.caller.is_some();
        let put = run_with(
            move |sink, job| {
                hash_chosen(&local2, &hash_spec, sink, job, |job| {
                    changed_outputs(
                        &local2,
                        &dirs,
                        &session,
                        task.as_deref(),
                        &hash_spec.scan,
                        job,
                    )
                })
            },
            only_files_hashed,
            transfer.clone(),
            cancel,
        )
        .await?;
        let hashed = put.hash.roots.into_iter().next().expect("one root hashed");
        let manifest = hashed.manifest;
        let mut root = OutputRoot {
            root_path: m.root_path.clone(),
            files: manifest.len() as u64,
            bytes: manifest.total_size(),
            hash: hashed.stats,
            upload: put.upload,
            output_manifest_path: None,
            content_cache_files: 0,
        };
        if manifest.is_empty() {
            tracing::debug!(root = %m.root_path, "no new or changed outputs");
            roots.push(root);
            continue;
        }
        // What the content cache may keep, once the manifest is published.
        let keep: Vec<Output> = match &transfer.content_cache {
            Some(_) if !transfer.dry_run => {
                manifest.entries().iter().filter_map(Output::of).collect()
            }
            _ => Vec::new(),
        };
        // What the session's next sync-outputs compares with, once this one is published.
        let published_now = (!transfer.dry_run).then(|| manifest.clone());
        // The data is all there: publish the manifest.
        let bytes = bytes::Bytes::from(super::encode_off_worker(manifest).await);
        let rel = keys.for_root(m.file_system_location_name.as_deref(), &m.root_path);
        let key = format!("{prefix}{rel}");
        let opts = PutOptions {
            metadata: output_manifest_metadata(
                &m.root_path,
                m.file_system_location_name.as_deref(),
            ),
            ..PutOptions::default()
        };
        if cancel.is_cancelled() {
            return Err(PutError::Transfer(Cancelled.into()));
        }
        if !transfer.dry_run {
            transfer
                .gate
                .run(cancel, || transfer.store.put(&key, bytes.clone(), &opts))
                .await
                .map_err(PutError::Transfer)?;
        }
        if let Some(outputs) = published_now {
            let (session, local, task) = (
                spec.session_dir.clone(),
                local.clone(),
                spec.task_id.clone(),
            );
            crate::logging::job_warnings::spawn_blocking(move || {
                record_outputs(&session, &local, task.as_deref(), outputs)
            })
            .await
            .expect("recording outputs panicked");
        }
        if let Some(cache) = transfer.content_cache.clone()
            && !keep.is_empty()
        {
            let (cache_dir, stop, local) =
                (spec.hash.cache_dir.clone(), cancel.clone(), local.clone());
            root.content_cache_files = crate::logging::job_warnings::spawn_blocking(move || {
                keep_outputs(&cache, &local, keep, cache_dir.as_deref(), &stop)
            })
            .await
            .expect("keeping outputs panicked");
        }
        root.output_manifest_path = Some(rel.clone());
        roots.push(root);
        published.push(OutputManifest {
            output_manifest_path: rel,
            output_manifest_hash: ContentHash::of(&bytes).to_hex(),
        });
    }
    if let Some(cache) = transfer.content_cache.clone()
        && roots.iter().any(|r| r.content_cache_files > 0)
    {
        // One pass over the cache for the whole run, not one per root.
        crate::transfer::content_cache::evict_after_adding(cache).await;
    }
    Ok(SyncOutputsReport {
        manifests: published,
        roots,
        dry_run: transfer.dry_run,
    })
}

/// Where the session's sync-outputs record what each task published from `local_root`:
/// one file per task (`step` for a chunk's session action, which has no task id).
/// (Under the session directory, whose user may plant links there: see `fsutil::beneath`.)
fn published_dir(session_dir: &Path, local_root: &Path) -> Beneath {
    Beneath::new(
        session_dir,
        Path::new(".attache")
            .join("outputs")
            .join(root_id(local_root).to_string()),
    )
}

fn published_name(task: Option<&str>) -> String {
    format!("{}.manifest", task.unwrap_or("step"))
}

/// What the session's other tasks published from `local`, oldest first (so that, merged, the
/// latest publication of a path wins).
fn published_by_others(session_dir: &Path, local: &Path, task: Option<&str>) -> Vec<Manifest> {
    let mine = published_name(task);
    let Ok(dir) = published_dir(session_dir, local).open_dir(false) else {
        return Vec::new();
    };
    let mut records: Vec<(std::time::SystemTime, Manifest)> = dir
        .names()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| {
            Path::new(n).extension().is_some_and(|x| x == "manifest")
                && n.as_os_str() != mine.as_str()
        })
        .filter_map(|n| {
            let file = dir.open_file(&n).ok()?;
            let modified = file.metadata().ok()?.modified().ok()?;
            Some((modified, decode_from(file).ok()?))
        })
        .collect();
    records.sort_by_key(|(modified, _)| *modified);
    records.into_iter().map(|(_, m)| m).collect()
}

/// Adds the outputs just published from `local` to the session's record of what this task
/// published. Deadline runs a step's tasks one after another in one session: the next task
/// publishes only what it wrote or changed, not every frame before it again, while a run of
/// the same task again (a retry) publishes all of its own (its latest run is what
/// download-outputs takes). A record that cannot be written costs only that: a warning, and
/// the next task sends them again.
fn record_outputs(session_dir: &Path, local: &Path, task: Option<&str>, published: Manifest) {
    let path = published_dir(session_dir, local).join(published_name(task));
    let all = merge(read_manifest_file(&path).into_iter().chain([published]));
    let written = path.open_parent(true).and_then(|(dir, name)| {
        crate::fsutil::replace_atomic_with(&dir.at(&name), |w| all.encode_to(w))
    });
    if let Err(e) = written {
        tracing::warn!(
            "cannot record the outputs published in {}: {e}; the session's next tasks send them again",
            path.shown().display()
        );
    }
}

/// An output just published, as it was hashed.
struct Output {
    /// Its path under its local root.
    rel: PathBuf,
    hash: ContentHash,
    size: u64,
    mtime_us: i64,
}

impl Output {
    fn of(e: &ManifestEntry) -> Option<Output> {
        let rel = e.path.to_posix_bytes().ok()?;
        Some(Output {
            rel: PathBuf::from(std::ffi::OsStr::from_bytes(&rel)),
            hash: e.hash,
            size: e.size,
            mtime_us: e.mtime_us,
        })
    }
}

/// Keeps outputs just uploaded in this machine's content cache, so that a task of a step
/// that depends on this one, run on this machine, takes them from there. Only by hard links:
/// a copy would write every frame a second time right after the render, for a use that may
/// not come. A file whose size or mtime moved since it was hashed is left out (every use of
/// the cache checks the content anyway). A link moves the file's ctime: the hash cache gets
/// the new stat, or the session's next sync-outputs would read the file again. Returns how
/// many were kept (the caller trims the cache once, after every root).
fn keep_outputs(
    cache: &ContentCache,
    local: &Path,
    outputs: Vec<Output>,
    cache_dir: Option<&Path>,
    cancel: &CancellationToken,
) -> u64 {
    let mut linked: Vec<(Vec<u8>, FileStat, ContentHash)> = Vec::new();
    let Ok(root) = OpenDir::open(local) else {
        return 0;
    };
    let mut last = LastDir::default();
    for o in &outputs {
        if cancel.is_cancelled() {
            break;
        }
        let as_hashed = |m: &std::fs::Metadata| {
            let s = FileStat::of(m);
            m.is_file()
                && s.size == o.size
                && ManifestEntry::mtime_us_from_ns(s.mtime_ns) == o.mtime_us
        };
        // The very file looked at is linked, reached from its root without following a link:
        // in a session its user may rename and link while a daemon (root's) works there.
        let (Some(parent), Some(name)) = (o.rel.parent(), o.rel.file_name()) else {
            continue;
        };
        let Ok(dir) = last.reach(parent, || root.open_below(parent)) else {
            continue;
        };
        let Ok(file) = beneath::handle_not_following(&dir.at(name)) else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| as_hashed(&m)) {
            continue;
        }
        let path = local.join(&o.rel);
        #[cfg(target_os = "linux")]
        let kept = cache.link_file(&file, &path, o.hash, o.size);
        #[cfg(not(target_os = "linux"))]
        let kept = cache.link(&path, o.hash, o.size);
        match kept {
            Ok(Inserted::Linked) => {
                if let Ok(m) = file.metadata() {
                    linked.push((path.into_os_string().into_vec(), FileStat::of(&m), o.hash));
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(
                    "cannot keep {} in the content cache in {}: {e}",
                    path.display(),
                    cache.dir().display()
                );
                break;
            }
        }
    }
    if linked.is_empty() {
        return 0;
    }
    if let Some(dir) = cache_dir {
        let records: Vec<CacheRecord> = linked
            .iter()
            .map(|(path, stat, hash)| CacheRecord {
                path,
                stat,
                hash: *hash,
            })
            .collect();
        if let Err(e) = HashCache::open(dir).and_then(|c| c.store(&records)) {
            tracing::warn!("hash cache: {e}");
        }
    }
    linked.len() as u64
}

/// A root's output directories as this machine's paths: a Windows workstation writes
/// `renders\\beauty`, which is `renders/beauty` here (as the official worker reads it).
fn output_dirs_here(m: &ManifestProperties) -> Vec<String> {
    m.output_relative_directories
        .iter()
        .flatten()
        .map(|d| match m.root_path_format {
            PathFormat::Windows => d.replace('\\', "/"),
            PathFormat::Posix => d.clone(),
        })
        .collect()
}

/// An output directory must be `.` or a safe relative path (no `..`, not absolute): one that
/// leaves the asset root would upload whatever it finds there.
fn check_output_dir(session_dir: &std::path::Path, dir: &str) -> Result<(), PutError> {
    if dir == "." {
        return Ok(());
    }
    ManifestPath::from_utf8(dir.trim_end_matches('/'))
        .validate(PathRules::native())
        .map_err(|reason| {
            PutError::Hash(HashJobError::Root {
                root: session_dir.to_path_buf(),
                source: std::io::Error::other(format!(
                    "outputRelativeDirectories entry {dir:?} is refused: {reason}"
                )),
            })
        })
}

/// An output manifest's object metadata, as the official worker sets it: `asset-root` is the
/// root path when it is ASCII, otherwise both it and `asset-root-json` hold its JSON-quoted,
/// ASCII-escaped form (readers prefer `asset-root-json`); `file-system-location-name` names
/// the root's storage-profile location, if it has one.
pub fn output_manifest_metadata(root_path: &str, location: Option<&str>) -> Vec<(String, String)> {
    let mut metadata = if root_path.is_ascii() {
        vec![("asset-root".into(), root_path.into())]
    } else {
        let quoted = json_quote(root_path);
        vec![
            ("asset-root".into(), quoted.clone()),
            ("asset-root-json".into(), quoted),
        ]
    };
    if let Some(name) = location.filter(|n| !n.is_empty()) {
        metadata.push(("file-system-location-name".into(), name.into()));
    }
    metadata
}

/// Files under the output directories that neither sync-inputs placed nor another task of
/// the session published, or whose size or mtime changed since, but for those `exclude`
/// leaves out. Symlinks may point anywhere inside the
/// session directory, nowhere else.
fn changed_outputs(
    local: &std::path::Path,
    dirs: &[String],
    session_dir: &std::path::Path,
    task: Option<&str>,
    scan: &ScanOptions,
    cancel: &CancellationToken,
) -> Result<Vec<ScannedFile>, HashJobError> {
    // A million-entry record takes a second to read: a cancel does not wait for it.
    let (session, local_root) = (session_dir.to_path_buf(), local.to_path_buf());
    let task = task.map(str::to_string);
    let record: Vec<ManifestEntry> = detached::run_blocking(cancel, move || {
        // What sync-inputs placed, and what the session's other tasks published (later wins:
        // an input a task rewrote is compared with what that task published).
        let placed = read_record(&session, &local_root);
        let published = published_by_others(&session, &local_root, task.as_deref());
        let mut entries = merge(placed.into_iter().chain(published)).into_entries();
        // Byte order, to search it (a manifest is in UTF-16 order). A sorted vector rather
        // than a hash map: a million entries cost 48 MiB beside their paths, not 69.
        entries.sort_unstable_by(|a, b| a.path.as_wtf8().cmp(b.path.as_wtf8()));
        entries
    })?;
    let changed = |f: &ScannedFile| {
        let now = (
            f.stat.size,
            ManifestEntry::mtime_us_from_ns(f.stat.mtime_ns),
        );
        match record.binary_search_by(|e| e.path.as_wtf8().cmp(f.rel.as_wtf8())) {
            Ok(i) => (record[i].size, record[i].mtime_us) != now,
            Err(_) => true,
        }
    };
    let opts = ScanOptions {
        follow_external_symlinks: false,
        boundary: Some(session_dir.to_path_buf()),
        filter: scan.filter.clone(),
        size_age: scan.size_age,
        exclude_if_present: scan.exclude_if_present.clone(),
        caller: scan.caller.clone(),
    };
    let mut out = Vec::new();
    for dir in dirs {
        let rel_dir = if dir == "." {
            String::new()
        } else {
            dir.trim_matches('/').to_string()
        };
        let path = if rel_dir.is_empty() {
            local.to_path_buf()
        } else {
            local.join(&rel_dir)
        };
        // For another user, whether it is there is as their lookup finds it (it may be a link):
        // the daemon's own would tell them what lies in directories closed to them.
        let is_dir = match &scan.caller {
            None => path.is_dir(),
            Some(caller) => match caller.look_up(&path) {
                Ok(reached) => reached.meta.is_dir(),
                Err(crate::fsutil::access::Unreachable::Refused(refused)) => {
                    return Err(crate::scan::ScanErrors(vec![refused.into()]).into());
                }
                Err(crate::fsutil::access::Unreachable::Io { .. }) => false,
            },
        };
        if !is_dir {
            // Another task may make it yet (the official worker says the same).
            tracing::info!(
                "found 0 files: output directory {} does not exist",
                path.display()
            );
            continue;
        }
        // Unchanged files are dropped as the scan finds them: a million of them are never
        // held.
        match scan_under_keeping(local, &path, opts.clone(), &changed, cancel)? {
            ScanOutcome::Done(found) => out.extend(found),
            ScanOutcome::Cancelled => return Err(Cancelled.into()),
        }
    }
    dedup_by_path(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn outputs(
        local: &Path,
        dirs: &[&str],
        scan: &ScanOptions,
    ) -> Result<Vec<ScannedFile>, HashJobError> {
        let dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
        let session = local.parent().unwrap();
        changed_outputs(local, &dirs, session, None, scan, &CancellationToken::new())
    }

    /// The content cache keeps the very output hashed: not a file of the same size and mtime
    /// that a link swapped in for a directory on its way names by then.
    #[test]
    fn outputs_are_kept_only_as_the_files_hashed() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let local = t.path().join("assetroot-1");
        let cache = ContentCache::new(t.path().join("content"), 1 << 30);
        let output = |rel: &str, content: &[u8]| {
            let path = local.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            Output {
                rel: PathBuf::from(rel),
                hash: ContentHash::of(content),
                size: content.len() as u64,
                mtime_us: ManifestEntry::mtime_us_from_ns(FileStat::of(&meta).mtime_ns),
            }
        };
        let kept = output("renders/beauty.0001.exr", b"frame one");
        let swapped = output("comp/beauty.0002.exr", b"frame two");
        // `comp` becomes a link to a directory with a file of the same name, size and mtime.
        let other = t.path().join("elsewhere");
        std::fs::create_dir_all(&other).unwrap();
        let decoy = other.join("beauty.0002.exr");
        std::fs::write(&decoy, b"not-yours").unwrap();
        let mtime = std::fs::metadata(local.join(&swapped.rel))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&decoy)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::remove_dir_all(local.join("comp")).unwrap();
        std::os::unix::fs::symlink(&other, local.join("comp")).unwrap();
        // Back in a directory seen before, and at the root.
        let back = output("renders/beauty.0003.exr", b"frame three");
        let top = output("beauty.exr", b"the movie");
        let (kept_hash, swapped_hash) = (kept.hash, swapped.hash);
        let (back_hash, top_hash) = (back.hash, top.hash);
        let stop = CancellationToken::new();
        assert_eq!(
            keep_outputs(&cache, &local, vec![kept, swapped, back, top], None, &stop),
            3
        );
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        for (hash, size, rel) in [
            (kept_hash, 9, "renders/beauty.0001.exr"),
            (back_hash, 11, "renders/beauty.0003.exr"),
            (top_hash, 9, "beauty.exr"),
        ] {
            let blob = cache.peek(hash, size).expect("the output hashed is kept");
            assert_eq!(ino(&blob), ino(&local.join(rel)), "{rel}");
        }
        assert_eq!(cache.peek(swapped_hash, 9), None, "nothing under its hash");
        assert_eq!(
            std::fs::metadata(&decoy).unwrap().nlink(),
            1,
            "never linked"
        );
    }

    /// For another user, whether an output directory is there is what their own lookup
    /// finds: a link of theirs into a directory closed to them is refused, whether or not its
    /// target exists.
    #[test]
    fn output_directories_are_found_as_the_caller_would_find_them() {
        let t = tempfile::tempdir().unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(t.path(), 0o755).unwrap();
        let (session, private) = (t.path().join("session"), t.path().join("private"));
        let local = session.join("assetroot-1");
        std::fs::create_dir_all(local.join("renders")).unwrap();
        std::fs::write(local.join("renders/beauty.exr"), "frame").unwrap();
        std::fs::create_dir_all(private.join("cache")).unwrap();
        mode(&private, 0o700).unwrap();
        let own = ScanOptions::default();
        assert_eq!(outputs(&local, &["renders"], &own).unwrap().len(), 1);
        let stranger = ScanOptions {
            caller: Some(std::sync::Arc::new(
                crate::fsutil::access::Caller::stranger_to(t.path()),
            )),
            ..ScanOptions::default()
        };
        for target in ["cache", "missing"] {
            let link = local.join("out");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(private.join(target), &link).unwrap();
            let e = outputs(&local, &["out"], &stranger).unwrap_err();
            assert!(e.to_string().contains("may not enter it"), "{target}: {e}");
        }
        assert!(
            outputs(&local, &["nothing-yet"], &stranger)
                .unwrap()
                .is_empty()
        );
    }
}
