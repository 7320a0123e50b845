//! A machine's local content cache (off unless `cache.content_size` is set): a copy of each
//! object a download fetched, named by its hash, so that a later download on the machine (the
//! next session's `sync-inputs`, another job with the same textures) copies it from local
//! disk instead of fetching it again. A copy from the cache is verified against its hash as
//! it is placed, like every download, so a blob damaged on disk is never placed: it is
//! dropped and the object fetched.
//!
//! Layout: `<dir>/<first two hex digits>/<hash>`. A fetched file on the cache's file system
//! becomes a blob by a hard link (no copy: a new name for the verified file); elsewhere it is
//! copied beside its name and renamed (nobody ever reads a half-written one). A blob's atime
//! is its last use (set explicitly, whatever the mount's atime options: its mtime belongs to
//! the linked file, which carries the manifest's), and the least recently used go once the
//! cache holds more than its size. Nothing else is kept: no index to rebuild or to lose, and
//! any number of processes on the machine can share the directory (removing a blob another
//! one is reading is harmless on Unix).
//!
//! A linked blob shares its inode with the file it was fetched into: a job that writes into
//! that file in place changes the blob too. That is why every use verifies the blob (and drops
//! a damaged one) rather than trusting it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::hash::ContentHash;
use crate::hash::file::{CopyError, copy_hashing};

/// A blob used again within this long is not marked used again: fine enough for the order of
/// eviction, and each mark moves the ctime of the files the blob is linked to (which the hash
/// cache then no longer recognizes without reading them).
const MARK_EVERY: Duration = Duration::from_secs(3600);

/// Temporary files a writer left (a crash mid-copy) are removed after this long.
const STALE_TEMP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct ContentCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// How [`ContentCache::insert`] kept a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Not kept: the cache has it already, it is larger than the whole cache, or (copied)
    /// the file no longer holds that content.
    No,
    /// A hard link to the file: the file's ctime moved (and its atime is now).
    Linked,
    Copied,
    /// [`ContentCache::link`] could not link it: [`ContentCache::copy_in`] copies it.
    NotLinked,
}

/// A blob as an eviction sees it: last use, size, path.
type Blob = (SystemTime, u64, PathBuf);

/// What an eviction pass found and did.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Evicted {
    pub files: u64,
    pub bytes: u64,
    /// Bytes the cache holds after it.
    pub kept_bytes: u64,
}

impl ContentCache {
    pub fn new(dir: PathBuf, max_bytes: u64) -> ContentCache {
        ContentCache { dir, max_bytes }
    }

    /// The cache the settings ask for; `None` with `cache.content_size` 0 (off). Its directory
    /// is its user's alone (mode 0700): a blob is a hard link to a file a download placed,
    /// which keeps its own mode, and must not be a way in to a file in a directory closed
    /// to others.
    pub fn from_settings(settings: &crate::config::CacheSettings) -> Option<ContentCache> {
        use std::os::unix::fs::PermissionsExt;
        let max = settings.content_size.0;
        let dir = settings.content_dir();
        if max > 0
            && let Ok(meta) = std::fs::metadata(&dir)
            && meta.permissions().mode() & 0o077 != 0
            && let Err(e) = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        {
            tracing::debug!("cannot make {} private: {e}", dir.display());
        }
        (max > 0).then(|| ContentCache::new(dir, max))
    }

    /// Makes `dir` (the cache's, or one in it) and what leads to it, each its user's alone.
    fn make_dir(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, hash: ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The blob of `hash` if the cache has one of `size` bytes, without marking it used.
    pub fn peek(&self, hash: ContentHash, size: u64) -> Option<PathBuf> {
        self.found(hash, size).map(|(path, _)| path)
    }

    /// The blob of `hash` and its metadata, if it is a file of `size` bytes.
    fn found(&self, hash: ContentHash, size: u64) -> Option<(PathBuf, std::fs::Metadata)> {
        let path = self.path_of(hash);
        let meta = std::fs::metadata(&path).ok()?;
        (meta.is_file() && meta.len() == size).then_some((path, meta))
    }

    /// [`Self::peek`], marking the blob used (it goes last) unless it was within
    /// [`MARK_EVERY`].
    pub fn take(&self, hash: ContentHash, size: u64) -> Option<PathBuf> {
        let (path, meta) = self.found(hash, size)?;
        if meta
            .accessed()
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_none_or(|ago| ago > MARK_EVERY)
        {
            mark_used(&path);
        }
        Some(path)
    }

    /// Drops the blob of `hash` (it did not hold its content, or could not be read).
    pub fn discard(&self, hash: ContentHash) {
        let path = self.path_of(hash);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::warn!(
                "{}: the content cache's copy did not hold its object or could not be read; removed it",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
        }
    }

    /// Keeps `src`, a file just placed and verified with content `hash` of `size` bytes, by a
    /// hard link: a few system calls, no data moved, fit to run anywhere.
    /// [`Inserted::NotLinked`] (another file system): [`Self::copy_in`] must copy it.
    pub fn link(&self, src: &Path, hash: ContentHash, size: u64) -> std::io::Result<Inserted> {
        self.link_with(src, hash, size, |to| std::fs::hard_link(src, to))
    }

    /// [`Self::link`] of the open `file` (placed at `shown`) itself, not of what a path names
    /// by the time it is linked.
    pub fn link_file(
        &self,
        file: &std::fs::File,
        shown: &Path,
        hash: ContentHash,
        size: u64,
    ) -> std::io::Result<Inserted> {
        self.link_with(shown, hash, size, |to| {
            crate::fsutil::staged::link_open_file(file, to)
        })
    }

    fn link_with(
        &self,
        src: &Path,
        hash: ContentHash,
        size: u64,
        link: impl Fn(&Path) -> std::io::Result<()>,
    ) -> std::io::Result<Inserted> {
        if size > self.max_bytes {
            return Ok(Inserted::No);
        }
        let path = self.path_of(hash);
        // The directory is made only when the link says it is missing: one system call per
        // object in the common case.
        let mut linked = link(&path);
        if linked
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            self.make_dir(path.parent().expect("a blob has a directory"))?;
            linked = link(&path);
        }
        match linked {
            Ok(()) => {
                mark_used(&path);
                Ok(Inserted::Linked)
            }
            // Another download kept it meanwhile.
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    && self.peek(hash, size).is_some() =>
            {
                Ok(Inserted::No)
            }
            // Another file system (EXDEV), one without hard links, or a blob of another size
            // (damaged) in the way: a copy replaces it.
            Err(e) => {
                tracing::debug!("cannot link {} into the content cache: {e}", src.display());
                Ok(Inserted::NotLinked)
            }
        }
    }

    /// Keeps the open file `from` by a copy, checked against `hash` as it is made: reads and
    /// writes the whole file, unless `cancel` stops it (an `Interrupted` error; nothing is
    /// kept).
    pub fn copy_in(
        &self,
        from: std::fs::File,
        hash: ContentHash,
        size: u64,
        cancel: &CancellationToken,
    ) -> std::io::Result<Inserted> {
        if size > self.max_bytes {
            return Ok(Inserted::No);
        }
        let path = self.path_of(hash);
        let dir = path.parent().expect("a blob has a directory");
        self.make_dir(dir)?;
        let tmp = crate::fsutil::temp_file_in(dir, ".blob-", ".tmp")?;
        let buf_len = size.clamp(4096, 1 << 20) as usize;
        let (got, got_size) =
            copy_hashing(from, tmp.as_file(), buf_len, cancel).map_err(|e| match e {
                CopyError::Read(e) | CopyError::Write(e) => e,
                CopyError::Cancelled => {
                    std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled")
                }
            })?;
        if (got, got_size) != (hash, size) {
            return Ok(Inserted::No);
        }
        tmp.persist(&path).map_err(|e| e.error)?;
        mark_used(&path);
        Ok(Inserted::Copied)
    }

    /// Removes the least recently used blobs until the cache holds at most its size, and
    /// temporary files a crash left. One pass over the directory's entries (a stat each).
    pub fn evict(&self) -> std::io::Result<Evicted> {
        let (mut blobs, mut total) = self.blobs(true)?;
        let mut out = Evicted::default();
        if total > self.max_bytes {
            blobs.sort_unstable();
            for (_, len, path) in blobs {
                if total <= self.max_bytes {
                    break;
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        out.files += 1;
                        out.bytes += len;
                        total -= len;
                    }
                    // Another process evicted it first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => total -= len,
                    Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
                }
            }
        }
        out.kept_bytes = total;
        Ok(out)
    }

    /// How many blobs the cache holds, and their bytes; and that a blob can be written there
    /// (a temporary file is made and removed).
    pub fn usage(&self) -> std::io::Result<(u64, u64)> {
        self.make_dir(&self.dir)?;
        drop(crate::fsutil::temp_file_in(&self.dir, ".blob-", ".tmp")?);
        self.contents()
    }

    /// How many blobs the cache holds, and their bytes (nothing written).
    pub fn contents(&self) -> std::io::Result<(u64, u64)> {
        let (blobs, total) = self.blobs(false)?;
        Ok((blobs.len() as u64, total))
    }

    /// Every blob (last use, size, path) and their total size; `remove_stale`: also removes
    /// temporary files older than [`STALE_TEMP`].
    fn blobs(&self, remove_stale: bool) -> std::io::Result<(Vec<Blob>, u64)> {
        let now = SystemTime::now();
        let (mut blobs, mut total) = (Vec::new(), 0u64);
        let subs = match std::fs::read_dir(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((blobs, total)),
            subs => subs?,
        };
        for sub in subs.flatten() {
            // Its blobs are in directories named by hash; a hidden one is another's (the
            // partial downloads kept here, `transfer::partial_downloads`).
            if !sub.file_type().is_ok_and(|t| t.is_dir())
                || sub.file_name().as_encoded_bytes().starts_with(b".")
            {
                continue;
            }
            for e in std::fs::read_dir(sub.path())?.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if e.file_name().as_encoded_bytes().starts_with(b".") {
                    let written = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    if remove_stale && now.duration_since(written).unwrap_or_default() > STALE_TEMP
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                    continue;
                }
                let used = meta.accessed().unwrap_or(SystemTime::UNIX_EPOCH);
                total += meta.len();
                blobs.push((used, meta.len(), e.path()));
            }
        }
        Ok((blobs, total))
    }
}

/// Brings the content cache back under its size after a transfer added to it, off the
/// runtime (a stat per object); what it removed is logged.
pub async fn evict_after_adding(cache: Arc<ContentCache>) {
    let dir = cache.dir().to_path_buf();
    match crate::logging::job_warnings::spawn_blocking(move || cache.evict()).await {
        Ok(Ok(e)) if e.files > 0 => tracing::info!(
            "content cache {}: removed {} least recently used object(s) ({}), {} kept",
            dir.display(),
            e.files,
            bytesize::ByteSize(e.bytes).display().iec(),
            bytesize::ByteSize(e.kept_bytes).display().iec()
        ),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("content cache {}: cannot evict: {e}", dir.display()),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Sets the blob's atime to now: its last use (only the atime, so a linked file keeps the
/// manifest's mtime).
fn mark_used(path: &Path) {
    if let Err(e) = filetime::set_file_atime(path, filetime::FileTime::now()) {
        tracing::debug!("cannot mark {} used: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn file(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, ContentHash) {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        (p, ContentHash::of(bytes))
    }

    /// What a download does with a file it fetched: a link, else a copy.
    fn insert(c: &ContentCache, src: &Path, hash: ContentHash, size: u64) -> Inserted {
        match c.link(src, hash, size).unwrap() {
            Inserted::NotLinked => c
                .copy_in(
                    std::fs::File::open(src).unwrap(),
                    hash,
                    size,
                    &CancellationToken::new(),
                )
                .unwrap(),
            kept => kept,
        }
    }

    fn used_at(path: &Path, secs: i64) {
        filetime::set_file_atime(path, filetime::FileTime::from_unix_time(secs, 0)).unwrap();
    }

    #[test]
    fn a_file_is_kept_by_a_link_found_by_hash_and_size_and_its_mtime_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let c = ContentCache::new(t.path().join("content"), 1 << 20);
        let (src, h) = file(t.path(), "a", b"hello");
        let mtime = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_mtime(&src, mtime).unwrap();
        assert_eq!(c.take(h, 5), None);
        assert_eq!(insert(&c, &src, h, 5), Inserted::Linked);
        assert_eq!(insert(&c, &src, h, 5), Inserted::No, "already there");
        let blob = c.take(h, 5).unwrap();
        let (a, b) = (src.metadata().unwrap(), blob.metadata().unwrap());
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "a hard link");
        assert_eq!(filetime::FileTime::from_last_modification_time(&a), mtime);
        assert_eq!(std::fs::read(&blob).unwrap(), b"hello");
        assert_eq!(c.peek(h, 4), None, "another size is another object");
        // A blob cut short is replaced (by a copy: the name is taken).
        std::fs::write(&blob, b"hel").unwrap();
        assert_eq!(c.take(h, 5), None);
        let (fresh, _) = file(t.path(), "fresh", b"hello");
        assert_eq!(insert(&c, &fresh, h, 5), Inserted::Copied);
        assert_eq!(std::fs::read(c.peek(h, 5).unwrap()).unwrap(), b"hello");
        // Larger than the whole cache: not kept.
        let small = ContentCache::new(t.path().join("small"), 4);
        assert_eq!(insert(&small, &src, h, 5), Inserted::No);
        c.discard(h);
        assert_eq!(c.peek(h, 5), None);
        assert_eq!(std::fs::read(&fresh).unwrap(), b"hello", "the file stays");
    }

    /// A download keeps the file it placed, open, whatever its path names by then; and the
    /// cache is its user's alone, whatever mode a blob keeps.
    #[test]
    fn the_file_placed_is_kept_not_what_its_path_names_later_and_only_its_user_reaches_it() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let settings = crate::config::CacheSettings {
            dir: t.path().join("cache"),
            content_size: crate::config::ByteSize(1 << 20),
            ..Default::default()
        };
        std::fs::create_dir_all(settings.content_dir()).unwrap();
        let open_dir = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(settings.content_dir(), open_dir).unwrap();
        let c = ContentCache::from_settings(&settings).unwrap();
        let mode = std::fs::metadata(c.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let (placed, h) = file(t.path(), "frame.exr", b"the frame");
        let opened = std::fs::File::open(&placed).unwrap();
        // Moved away, and another file put at its path (a link, a directory renamed: the same).
        std::fs::rename(&placed, t.path().join("moved.exr")).unwrap();
        std::fs::write(&placed, b"someone else's").unwrap();
        assert_eq!(
            c.link_file(&opened, &placed, h, 9).unwrap(),
            Inserted::Linked
        );
        let blob = c.peek(h, 9).unwrap();
        assert_eq!(std::fs::read(&blob).unwrap(), b"the frame");
        let blob_dir = std::fs::metadata(blob.parent().unwrap()).unwrap();
        assert_eq!(blob_dir.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_file_that_cannot_be_linked_is_copied_and_checked() {
        // On Linux /dev/shm is another file system than the temp dir (tmpfs), when it exists.
        let (Ok(shm), t) = (
            tempfile::tempdir_in("/dev/shm"),
            tempfile::tempdir().unwrap(),
        ) else {
            return;
        };
        if shm.path().metadata().unwrap().dev() == t.path().metadata().unwrap().dev() {
            return;
        }
        let c = ContentCache::new(shm.path().join("content"), 1 << 20);
        let (src, h) = file(t.path(), "a", b"hello");
        assert_eq!(insert(&c, &src, h, 5), Inserted::Copied);
        let blob = c.peek(h, 5).unwrap();
        assert_eq!(std::fs::read(&blob).unwrap(), b"hello");
        assert_ne!(
            blob.metadata().unwrap().ino(),
            src.metadata().unwrap().ino()
        );
        // A source that no longer holds the content is not kept.
        let (other, h2) = file(t.path(), "b", b"world");
        std::fs::write(&other, b"WORLD").unwrap();
        assert_eq!(insert(&c, &other, h2, 5), Inserted::No);
        assert_eq!(c.peek(h2, 5), None);
        let left: Vec<_> = std::fs::read_dir(blob.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file left: {left:?}");
    }

    #[test]
    fn a_cancelled_copy_keeps_nothing() {
        let t = tempfile::tempdir().unwrap();
        let c = ContentCache::new(t.path().join("content"), 1 << 30);
        let (src, h) = file(t.path(), "a", &vec![7; 3 << 20]);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = c
            .copy_in(std::fs::File::open(&src).unwrap(), h, 3 << 20, &cancel)
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted);
        assert_eq!(c.peek(h, 3 << 20), None);
        assert!(files_in(c.dir()).is_empty(), "{:?}", files_in(c.dir()));
        let copied = c.copy_in(
            std::fs::File::open(&src).unwrap(),
            h,
            3 << 20,
            &CancellationToken::new(),
        );
        assert_eq!(copied.unwrap(), Inserted::Copied);
    }

    /// Every file in the cache's subdirectories, temporary ones too.
    fn files_in(dir: &Path) -> Vec<PathBuf> {
        let subs = std::fs::read_dir(dir).into_iter().flatten().flatten();
        subs.flat_map(|sub| {
            std::fs::read_dir(sub.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .collect()
    }

    #[test]
    fn eviction_removes_the_least_recently_used_down_to_the_size_and_stale_temp_files() {
        let t = tempfile::tempdir().unwrap();
        let c = ContentCache::new(t.path().join("content"), 250);
        let mut blobs = Vec::new();
        for (i, used) in [(0u8, 300), (1, 100), (2, 200)] {
            let (src, h) = file(t.path(), &format!("f{i}"), &[i; 100]);
            assert_eq!(insert(&c, &src, h, 100), Inserted::Linked);
            let blob = c.peek(h, 100).unwrap();
            used_at(&blob, used);
            blobs.push((h, blob));
        }
        let stale = blobs[0].1.with_file_name(".blob-x.tmp");
        std::fs::write(&stale, b"partial").unwrap();
        filetime::set_file_mtime(&stale, filetime::FileTime::from_unix_time(1, 0)).unwrap();
        let fresh = blobs[0].1.with_file_name(".blob-y.tmp");
        std::fs::write(&fresh, b"being written").unwrap();
        // Partial downloads kept beside the blobs are neither counted nor evicted.
        let kept = c.dir().join(".partial-downloads");
        std::fs::create_dir(&kept).unwrap();
        std::fs::write(kept.join("x-1000.part"), [7; 1000]).unwrap();

        let e = c.evict().unwrap();
        assert_eq!((e.files, e.bytes, e.kept_bytes), (1, 100, 200));
        assert!(kept.join("x-1000.part").exists());
        assert!(!blobs[1].1.exists(), "the least recently used goes");
        assert!(blobs[0].1.exists() && blobs[2].1.exists());
        assert!(!stale.exists() && fresh.exists());
        assert!(t.path().join("f1").exists(), "the linked file stays");
        // Taking a blob marks it used: it outlives one untouched since.
        assert!(c.take(blobs[2].0, 100).is_some());
        let c = ContentCache::new(c.dir().to_path_buf(), 150);
        let e = c.evict().unwrap();
        assert_eq!((e.files, e.kept_bytes), (1, 100));
        assert!(!blobs[0].1.exists() && blobs[2].1.exists());
        let again = c.evict().unwrap();
        assert_eq!((again.files, again.kept_bytes), (0, 100));
    }
}
