//! The get job: materialize manifests into a directory.
//!
//! Every path is validated before anything touches the disk; directories are created one
//! component at a time and an existing symlink on the way is refused, so nothing is written
//! outside the destination or through a link. Files already there with the right content are
//! left alone (the hash cache makes that check cheap).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::hash::ContentHash;
use crate::hash::cache::HashCache;
use crate::manifest::{Manifest, PathRules};
use crate::scan::FileStat;
use crate::transfer::download::{DownloadItem, DownloadReport, download_all};
use crate::transfer::{Transfer, TransferError};

pub struct GetSpec {
    pub manifest: Manifest,
    pub dest: PathBuf,
    /// Hash cache used to recognize files already in place.
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct GetReport {
    pub files: u64,
    pub bytes: u64,
    /// Files already in place with the right content.
    pub unchanged_files: u64,
    pub download: DownloadReport,
    pub seconds: f64,
}

/// Plans and downloads `spec.manifest` into `spec.dest`.
pub async fn run(
    spec: GetSpec,
    transfer: Arc<Transfer>,
    cancel: &CancellationToken,
) -> Result<GetReport, TransferError> {
    let started = Instant::now();
    spec.manifest
        .validate_paths(PathRules::native())
        .map_err(|e| TransferError::Refused {
            path: spec.dest.clone(),
            message: e.to_string(),
        })?;
    let files = spec.manifest.len() as u64;
    let bytes = spec.manifest.total_size();
    transfer.progress.add_total(files, bytes);
    let (items, unchanged) = {
        let dest = spec.dest.clone();
        let manifest = spec.manifest;
        let cache_dir = spec.cache_dir;
        tokio::task::spawn_blocking(move || plan(&manifest, &dest, cache_dir.as_deref()))
            .await
            .expect("planning task panicked")?
    };
    transfer.progress.add_files(unchanged.0);
    transfer.progress.add_bytes(unchanged.1);
    let download = download_all(transfer, items, cancel).await?;
    Ok(GetReport {
        files,
        bytes,
        unchanged_files: unchanged.0,
        download,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The files to fetch, and (count, bytes) of those already in place. Creates directories.
fn plan(
    manifest: &Manifest,
    dest: &Path,
    cache_dir: Option<&Path>,
) -> Result<(Vec<DownloadItem>, (u64, u64)), TransferError> {
    std::fs::create_dir_all(dest).map_err(TransferError::io(dest))?;
    let cache = cache_dir.and_then(|d| HashCache::open(d).map_err(|e| tracing::warn!("{e}")).ok());
    let mut made: HashSet<PathBuf> = HashSet::new();
    let mut items = Vec::with_capacity(manifest.len());
    let mut unchanged = (0, 0);
    for e in manifest.entries() {
        let rel = e
            .path
            .to_posix_bytes()
            .map_err(|err| TransferError::Refused {
                path: dest.join(e.path.display().as_ref()),
                message: err.to_string(),
            })?;
        let path = dest.join(OsStr::from_bytes(&rel));
        if let Some(parent) = path.parent() {
            make_dirs(dest, parent, &mut made)?;
        }
        if already_there(&path, e.size, e.hash, cache.as_ref()) {
            unchanged.0 += 1;
            unchanged.1 += e.size;
            continue;
        }
        items.push(DownloadItem {
            hash: e.hash,
            size: e.size,
            dest: path,
            mtime_us: e.mtime_us,
        });
    }
    Ok((items, unchanged))
}

/// Creates `dir` (under `root`) component by component, refusing to pass through a symlink
/// or a file.
fn make_dirs(root: &Path, dir: &Path, made: &mut HashSet<PathBuf>) -> Result<(), TransferError> {
    if made.contains(dir) || dir == root {
        return Ok(());
    }
    let rel = dir
        .strip_prefix(root)
        .expect("planned paths are under the root");
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        if made.contains(&at) {
            continue;
        }
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(TransferError::Refused {
                    path: at,
                    message: "is a symlink; attache does not write through links. Remove it and run again".into(),
                });
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(TransferError::Refused {
                    path: at,
                    message: "is a file where the manifest needs a directory".into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&at)
                    .or_else(|e| if at.is_dir() { Ok(()) } else { Err(e) })
                    .map_err(TransferError::io(&at))?;
            }
            Err(e) => {
                return Err(TransferError::Io {
                    path: at,
                    source: e,
                });
            }
        }
        made.insert(at.clone());
    }
    Ok(())
}

/// A regular file of the right size whose content hashes to `hash`.
fn already_there(path: &Path, size: u64, hash: ContentHash, cache: Option<&HashCache>) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() != size {
        return false;
    }
    let stat = FileStat::of(&meta);
    let key = path.as_os_str().as_bytes();
    if let Some(c) = cache
        && let Ok(Some(h)) = c.lookup(key, &stat)
    {
        return h == hash;
    }
    match crate::hash::file::hash_file(path, 1 << 20, &CancellationToken::new(), &|_| {}) {
        Ok(fh) => {
            if let Some(c) = cache {
                let _ = c.store(&[crate::hash::cache::CacheRecord {
                    path: key,
                    stat: &fh.stat,
                    hash: fh.hash,
                }]);
            }
            fh.hash == hash
        }
        Err(_) => false,
    }
}
