//! Hashing a scanned tree: hash-cache lookups in one batch, then the misses in parallel
//! (largest first, so one big file does not start last), then the new hashes cached.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;
use tokio_util::sync::CancellationToken;

use super::ContentHash;
use super::cache::{CacheRecord, HashCache, is_racy, now_ns};
use super::file::{HashFileError, hash_file_keeping, open_to_hash};
use crate::manifest::{Manifest, ManifestEntry, ManifestPath};
use crate::progress::Progress;
use crate::scan::{FileStat, ScannedFile};

/// A file with its hash.
#[derive(Debug, Clone)]
pub struct HashedFile {
    pub rel: ManifestPath,
    pub stat: FileStat,
    pub hash: ContentHash,
    /// Served by the hash cache: the content was not read.
    pub from_cache: bool,
}

/// Counts of one hashing run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HashStats {
    pub files: u64,
    pub bytes: u64,
    /// Files whose content was read and hashed.
    pub hashed_files: u64,
    pub hashed_bytes: u64,
    /// Files served by the hash cache without reading their content.
    pub cached_files: u64,
    pub cached_bytes: u64,
}

impl HashStats {
    pub fn add(&mut self, o: &HashStats) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.hashed_files += o.hashed_files;
        self.hashed_bytes += o.hashed_bytes;
        self.cached_files += o.cached_files;
        self.cached_bytes += o.cached_bytes;
    }
}

/// Several files may fail; all are reported (up to a limit) so a user fixes them in one go.
#[derive(Debug, thiserror::Error)]
pub struct HashErrors(pub Vec<HashFileError>);

impl std::fmt::Display for HashErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().take(10).map(|e| e.to_string()).collect();
        write!(f, "{}", lines.join("\n"))?;
        if self.0.len() > 10 {
            write!(f, "\n… and {} more files failed", self.0.len() - 10)?;
        }
        Ok(())
    }
}

/// The hash cache as one hashing run uses it.
#[derive(Clone, Copy)]
pub struct CacheUse<'a> {
    pub cache: &'a HashCache,
    /// The files are every file under the root (a full scan), so cache rows under the root
    /// that match none of them belong to deleted files and are pruned.
    pub complete_scan: bool,
}

/// Receives files as they are hashed (or found in the cache), e.g. to upload them while the
/// rest of the tree is still hashing. Called from the hashing threads.
pub trait HashSink: Sync {
    /// Keep and hand over the content of hashed files up to this size (0: never).
    fn keep_bytes_up_to(&self) -> u64 {
        0
    }
    /// The scan found this many files and bytes.
    fn totals(&self, _files: u64, _bytes: u64) {}
    /// One file is hashed: `abs` is its path, `data` its content when kept.
    fn hashed(&self, file: &HashedFile, abs: &Path, data: Option<bytes::Bytes>);
}

pub enum HashOutcome {
    Done(Vec<HashedFile>, HashStats),
    Cancelled,
}

/// Hashed files recorded in the hash cache per transaction (a few in tests, to have several).
const STORE_CHUNK: usize = if cfg!(test) { 4 } else { 16_384 };

/// How [`hash_tree`] reads the files it hashes.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// Bytes read at a time.
    pub buffer: usize,
    /// A file its path names now must be the one the scan found (same device and inode),
    /// else it is an error: the daemon, acting for a client of another user, checked that
    /// user's access on the scanned file, and a link swapped in since would be read with the
    /// daemon's rights.
    pub scanned_only: bool,
}

/// Hashes the scanned files of `root` on the current rayon pool.
pub fn hash_tree(
    root: &Path,
    mut files: Vec<ScannedFile>,
    cache: Option<CacheUse<'_>>,
    reading: Reading,
    cancel: &CancellationToken,
    progress: &Progress,
    sink: Option<&dyn HashSink>,
) -> Result<HashOutcome, HashErrors> {
    let root_bytes = root.as_os_str().as_bytes();
    // Borrowed bytes for any UTF-8 path: sorting by them allocates nothing.
    fn posix(rel: &ManifestPath) -> std::borrow::Cow<'_, [u8]> {
        rel.to_posix_bytes()
            .expect("scanned paths come from file names")
    }
    let abs = |rel: &ManifestPath| -> Vec<u8> {
        let mut p = root_bytes.strip_suffix(b"/").unwrap_or(root_bytes).to_vec();
        p.push(b'/');
        p.extend_from_slice(&posix(rel));
        p
    };
    // In the order of the absolute paths (the cache's range scan needs it), which is the order
    // of the relative ones: they all follow the same root.
    files.sort_unstable_by(|a, b| posix(&a.rel).cmp(&posix(&b.rel)));
    // Asked by relative path: the absolute ones are built one at a time below, as each file is
    // handed on or hashed (200,000 of them held at once were ~23 MiB of a put's peak).
    let cached = match cache {
        Some(c) => {
            let batch: Vec<_> = files.iter().map(|f| (posix(&f.rel), &f.stat)).collect();
            c.cache
                .lookup_sorted(root_bytes, &batch, c.complete_scan)
                .unwrap_or_else(|e| {
                    tracing::warn!("{e}; hashing without the cache");
                    vec![None; files.len()]
                })
        }
        None => vec![None; files.len()],
    };

    if let Some(sink) = sink {
        sink.totals(files.len() as u64, files.iter().map(|f| f.stat.size).sum());
    }
    let mut stats = HashStats::default();
    let mut done: Vec<HashedFile> = Vec::with_capacity(files.len());
    let mut misses: Vec<ScannedFile> = Vec::new();
    for (f, hit) in files.into_iter().zip(cached) {
        stats.files += 1;
        stats.bytes += f.stat.size;
        match hit {
            Some(hash) => {
                stats.cached_files += 1;
                stats.cached_bytes += f.stat.size;
                progress.add_files(1);
                progress.add_bytes(f.stat.size);
                let file = HashedFile {
                    rel: f.rel,
                    stat: f.stat,
                    hash,
                    from_cache: true,
                };
                if let Some(sink) = sink {
                    let key = abs(&file.rel);
                    sink.hashed(&file, Path::new(std::ffi::OsStr::from_bytes(&key)), None);
                }
                done.push(file);
            }
            None => misses.push(f),
        }
    }
    // Unstable: a stable sort takes a scratch copy of half the list.
    misses.sort_unstable_by_key(|f| std::cmp::Reverse(f.stat.size));

    // The first failure stops the other workers from reading: the files left are only opened,
    // so that every file that cannot be read is reported, and nothing more is sent.
    let stop = cancel.child_token();
    let errors = Mutex::new(Vec::new());
    let failed = |e| {
        errors
            .lock()
            .expect("no panics while holding the lock")
            .push(e);
        stop.cancel();
    };
    let hashed: Vec<(HashedFile, bool)> = misses
        .into_par_iter()
        .filter_map(|f| {
            if cancel.is_cancelled() {
                return None;
            }
            let key = abs(&f.rel);
            let path = std::ffi::OsStr::from_bytes(&key);
            let scanned = (f.stat.dev, f.stat.ino);
            // For a client of another user, only the scanned file is opened (not a device or a
            // FIFO swapped in), and read.
            let same = reading.scanned_only.then_some(scanned);
            if stop.is_cancelled() {
                if let Err(e) = open_to_hash(Path::new(path), same) {
                    failed(e);
                }
                return None;
            }
            let started_ns = now_ns();
            let keep = sink.map_or(0, |s| s.keep_bytes_up_to());
            let on_bytes = |n| progress.add_bytes(n);
            match hash_file_keeping(
                Path::new(path),
                same,
                reading.buffer,
                keep,
                &stop,
                &on_bytes,
            ) {
                Ok(fh) => {
                    progress.add_files(1);
                    let racy = is_racy(&fh.stat, started_ns);
                    let file = HashedFile {
                        rel: f.rel,
                        stat: fh.stat,
                        hash: fh.hash,
                        from_cache: false,
                    };
                    if let Some(sink) = sink {
                        sink.hashed(&file, Path::new(path), fh.data);
                    }
                    Some((file, !racy))
                }
                Err(HashFileError::Cancelled) => None,
                Err(e) => {
                    failed(e);
                    None
                }
            }
        })
        .collect();

    if let Some(c) = cache {
        // Worth keeping even when cancelled or failed: the next run starts from here. A chunk
        // at a time, with only that chunk's absolute paths built.
        for chunk in hashed.chunks(STORE_CHUNK) {
            let keys: Vec<(Vec<u8>, &HashedFile)> = chunk
                .iter()
                .filter(|(_, cacheable)| *cacheable)
                .map(|(f, _)| (abs(&f.rel), f))
                .collect();
            let records: Vec<CacheRecord<'_>> = keys
                .iter()
                .map(|(key, f)| CacheRecord {
                    path: key,
                    stat: &f.stat,
                    hash: f.hash,
                })
                .collect();
            if let Err(e) = c.cache.store(&records) {
                tracing::warn!("{e}; new hashes were not cached");
                break;
            }
        }
    }
    let errors = errors
        .into_inner()
        .expect("no panics while holding the lock");
    if !errors.is_empty() {
        return Err(HashErrors(errors));
    }
    if cancel.is_cancelled() {
        return Ok(HashOutcome::Cancelled);
    }
    // Hashing may have seen newer stats than the scan; count what was hashed.
    for (f, _) in hashed {
        stats.hashed_files += 1;
        stats.hashed_bytes += f.stat.size;
        done.push(f);
    }
    stats.bytes = stats.cached_bytes + stats.hashed_bytes;
    Ok(HashOutcome::Done(done, stats))
}

/// The manifest of a hashed tree. Consumes the files: their paths move into the entries
/// (200,000 paths are not held twice).
pub fn to_manifest(files: Vec<HashedFile>) -> Manifest {
    Manifest::new(
        files
            .into_iter()
            .map(|f| ManifestEntry {
                path: f.rel,
                hash: f.hash,
                size: f.stat.size,
                mtime_us: ManifestEntry::mtime_us_from_ns(f.stat.mtime_ns),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{ScanOptions, ScanOutcome, scan};

    fn scanned(root: &Path) -> Vec<ScannedFile> {
        match scan(root, ScanOptions::default(), &CancellationToken::new()).unwrap() {
            ScanOutcome::Done(f) => f,
            ScanOutcome::Cancelled => unreachable!(),
        }
    }

    /// Hashes all of `root` with `cache`.
    fn hash_cached(root: &Path, cache: &HashCache) -> HashStats {
        match hash_tree(
            root,
            scanned(root),
            Some(CacheUse {
                cache,
                complete_scan: true,
            }),
            Reading {
                buffer: 4096,
                scanned_only: false,
            },
            &CancellationToken::new(),
            &Progress::default(),
            None,
        ) {
            Ok(HashOutcome::Done(_, stats)) => stats,
            _ => panic!("hashing failed"),
        }
    }

    #[test]
    fn a_file_replaced_after_the_scan_is_refused_where_only_the_scanned_one_may_be_read() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("small.txt"), b"mine").unwrap();
        std::fs::write(t.path().join("secret"), b"not for the client").unwrap();
        let files = scanned(&root);
        // Swapped for a link to a file the scan never checked.
        std::fs::remove_file(root.join("small.txt")).unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), root.join("small.txt")).unwrap();
        let hash = |scanned_only| {
            hash_tree(
                &root,
                files.clone(),
                None,
                Reading {
                    buffer: 4096,
                    scanned_only,
                },
                &CancellationToken::new(),
                &Progress::default(),
                None,
            )
        };
        let err = match hash(true) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("read a file the scan did not check"),
        };
        assert!(err.contains("small.txt: replaced by another file"), "{err}");
        // A local run reads what the path names now, as before.
        assert!(matches!(hash(false), Ok(HashOutcome::Done(..))));
    }

    #[test]
    fn a_file_vanishing_after_the_scan_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("keep"), b"k").unwrap();
        std::fs::write(t.path().join("gone"), b"g").unwrap();
        let files = scanned(t.path());
        std::fs::remove_file(t.path().join("gone")).unwrap();
        let err = match hash_tree(
            t.path(),
            files,
            None,
            Reading {
                buffer: 4096,
                scanned_only: false,
            },
            &CancellationToken::new(),
            &Progress::default(),
            None,
        ) {
            Err(e) => e,
            Ok(_) => panic!("must fail"),
        };
        assert!(
            err.to_string()
                .contains("gone: disappeared after it was scanned"),
            "{err}"
        );
    }

    #[test]
    fn racy_files_are_hashed_but_not_cached() {
        let t = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = HashCache::open(cache_dir.path()).unwrap();
        std::fs::write(t.path().join("fresh"), b"just written").unwrap();
        let run = |cache: &HashCache| hash_cached(t.path(), cache);
        assert_eq!(run(&cache).hashed_files, 1);
        assert_eq!(
            run(&cache).hashed_files,
            1,
            "a file changed within the racy window is not trusted"
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(
            run(&cache).hashed_files,
            1,
            "cached now that it is old enough"
        );
        assert_eq!(run(&cache).cached_files, 1);
    }

    #[test]
    fn every_hashed_file_is_cached_whatever_the_number_of_chunks() {
        let t = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = HashCache::open(cache_dir.path()).unwrap();
        let n = 3 * STORE_CHUNK + 1;
        for i in 0..n {
            std::fs::write(t.path().join(format!("f{i}")), i.to_string()).unwrap();
        }
        // Past the racy window, so that every file may be cached.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let run = || hash_cached(t.path(), &cache);
        assert_eq!(run().hashed_files, n as u64);
        let again = run();
        assert_eq!((again.cached_files, again.hashed_files), (n as u64, 0));
    }
}
