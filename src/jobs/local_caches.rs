//! What this machine's caches hold, and emptying or trimming them (`attache cache`): the hash
//! cache, the known-present index, the content cache, the partial downloads of large objects,
//! the records of open multipart uploads, and the stores measured to copy parts on completion.
//!
//! Each is safe to empty at any time, also while transfers run: what is forgotten is found
//! out again (files read, the store asked, objects fetched).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Settings;
use crate::hash::cache::HashCache;
use crate::transfer::content_cache::ContentCache;
use crate::transfer::copying_stores;
use crate::transfer::known_present::KnownPresent;
use crate::transfer::partial_downloads::{PartialDownloads, Partials};

#[derive(Debug, thiserror::Error)]
pub enum LocalCacheError {
    #[error(transparent)]
    HashCache(#[from] crate::hash::cache::CacheError),
    #[error(transparent)]
    KnownPresent(#[from] crate::transfer::known_present::KnownPresentError),
    #[error("content cache {path}: {source}")]
    Content {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source} (check that cache.dir is writable)")]
    CopyingStores {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "partial downloads in {dirs:?}: {source} (check that cache.dir is readable and writable)"
    )]
    Partial {
        dirs: Vec<PathBuf>,
        source: std::io::Error,
    },
}

/// One SQLite file: where, how large on disk (with its write-ahead log), how many rows.
#[derive(Debug, Serialize)]
pub struct DbUsage {
    pub path: PathBuf,
    pub bytes: u64,
    pub entries: u64,
}

#[derive(Debug, Serialize)]
pub struct StoreEntries {
    /// The store's identity: URL, region and endpoint.
    pub store: String,
    pub entries: u64,
}

#[derive(Debug, Serialize)]
pub struct ContentUsage {
    pub dir: PathBuf,
    pub files: u64,
    pub bytes: u64,
    /// `cache.content_size`; 0: off (what is there is still shown).
    pub limit: u64,
}

/// What `attache cache` shows.
#[derive(Debug, Serialize)]
pub struct CacheUsage {
    pub dir: PathBuf,
    /// `None`: `cache.hash_cache = false`.
    pub hash_cache: Option<DbUsage>,
    pub known_present: Option<DbUsage>,
    pub known_present_stores: Vec<StoreEntries>,
    pub content: ContentUsage,
    /// Large objects a cancelled, killed or failed download fetched part of, kept for the next
    /// one to fetch on from.
    pub partial_downloads: PartialUsage,
    /// Multipart uploads recorded open on this machine: running, or left (resumable, or for
    /// the next upload or `attache cleanup` to abort).
    pub open_uploads: u64,
    /// The same, by what becomes of them.
    pub open_upload_states: crate::transfer::open_uploads::Tally,
    /// Stores whose multipart completions were measured (`transfer.copying_store_threshold`).
    pub copying_stores: CopyingStoresUsage,
}

#[derive(Debug, Serialize)]
pub struct CopyingStoresUsage {
    pub path: PathBuf,
    pub stores: Vec<MeasuredStore>,
}

#[derive(Debug, Serialize)]
pub struct MeasuredStore {
    /// The store's identity: URL, region and endpoint.
    pub store: String,
    /// Until when (Unix ms) files up to `transfer.copying_store_threshold` go to it in one
    /// PUT; `None`: it is not taken for a store that copies parts on completion.
    pub copies_until_ms: Option<i64>,
    pub measurements: Vec<crate::transfer::copying_stores::Measurement>,
}

#[derive(Debug, Serialize)]
pub struct PartialUsage {
    /// Where they are kept: under `cache.dir`, and `cache.content_dir` when it is set.
    pub dirs: Vec<PathBuf>,
    pub files: u64,
    pub bytes: u64,
}

/// What `attache cache clear` removed.
#[derive(Debug, Default, Serialize)]
pub struct Cleared {
    pub hash_entries: Option<u64>,
    pub known_present_entries: Option<u64>,
    pub content_files: Option<u64>,
    pub content_bytes: Option<u64>,
    pub partial_downloads: Option<Partials>,
    /// Stores whose measurements were forgotten.
    pub copying_stores: Option<u64>,
}

/// Which caches to empty.
#[derive(Debug, Default, Clone)]
pub struct ClearSpec {
    pub hash: bool,
    /// `Some(None)`: every store; `Some(Some(url))`: that store only.
    pub known_present: Option<Option<String>>,
    pub content: bool,
    pub partial_downloads: bool,
    /// Like `known_present`, for the measurements of stores' multipart completions.
    pub copying_stores: Option<Option<String>>,
}

/// Size on disk of a SQLite database and its `-wal` file.
fn db_bytes(path: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum()
}

/// The machine's content cache (also when `cache.content_size` is 0: what is there is still
/// shown and can be emptied), held to `limit` bytes.
fn content_cache(settings: &Settings, limit: u64) -> ContentCache {
    ContentCache::new(settings.cache.content_dir(), limit)
}

fn content_error(cache: &ContentCache) -> impl Fn(std::io::Error) -> LocalCacheError + '_ {
    |source| LocalCacheError::Content {
        path: cache.dir().to_path_buf(),
        source,
    }
}

fn copying_stores_error(dir: &Path) -> impl Fn(std::io::Error) -> LocalCacheError + '_ {
    move |source| LocalCacheError::CopyingStores {
        path: dir.join(copying_stores::FILE_NAME),
        source,
    }
}

fn partial_error(kept: &PartialDownloads) -> impl Fn(std::io::Error) -> LocalCacheError + '_ {
    |source| LocalCacheError::Partial {
        dirs: kept.dirs().to_vec(),
        source,
    }
}

/// The stores the known-present index holds objects of, with how many each.
pub fn known_present_stores(settings: &Settings) -> Result<Vec<StoreEntries>, LocalCacheError> {
    let ttl = settings.transfer.known_present_ttl.0;
    let Some(k) = KnownPresent::open_existing(&settings.cache.dir, ttl)? else {
        return Ok(Vec::new());
    };
    Ok(k.stores()?
        .into_iter()
        .map(|(store, entries)| StoreEntries { store, entries })
        .collect())
}

pub fn usage(settings: &Settings) -> Result<CacheUsage, LocalCacheError> {
    let dir = settings.cache.dir.clone();
    let (mut hash_cache, mut known_present, mut stores) = (None, None, Vec::new());
    if settings.cache.hash_cache {
        // Looking creates nothing: a database not made yet is shown empty.
        let path = dir.join(crate::hash::cache::FILE_NAME);
        let entries = match HashCache::open_existing(&dir)? {
            Some(c) => c.count()?,
            None => 0,
        };
        hash_cache = Some(DbUsage {
            entries,
            bytes: db_bytes(&path),
            path,
        });
        let path = dir.join(crate::transfer::known_present::FILE_NAME);
        stores = known_present_stores(settings)?;
        known_present = Some(DbUsage {
            entries: stores.iter().map(|s| s.entries).sum(),
            bytes: db_bytes(&path),
            path,
        });
    }
    let cache = content_cache(settings, settings.cache.content_size.0);
    let (files, bytes) = cache.contents().map_err(content_error(&cache))?;
    let open_upload_states =
        crate::transfer::open_uploads::OpenUploads::new(&dir).tally(settings.transfer.resume_for.0);
    let kept = PartialDownloads::of(settings);
    let partials = kept.usage().map_err(partial_error(&kept))?;
    let now = crate::clock::now_ms();
    let copying_stores = CopyingStoresUsage {
        path: dir.join(copying_stores::FILE_NAME),
        stores: copying_stores::measured(&dir)
            .into_iter()
            .map(|(store, m)| MeasuredStore {
                store,
                copies_until_ms: m.copies_until(now),
                measurements: m.0,
            })
            .collect(),
    };
    Ok(CacheUsage {
        dir,
        hash_cache,
        known_present,
        known_present_stores: stores,
        content: ContentUsage {
            dir: cache.dir().to_path_buf(),
            files,
            bytes,
            limit: settings.cache.content_size.0,
        },
        partial_downloads: PartialUsage {
            dirs: kept.dirs().to_vec(),
            files: partials.files,
            bytes: partials.bytes,
        },
        open_uploads: open_upload_states.total(),
        open_upload_states,
        copying_stores,
    })
}

/// Empties what `spec` names.
pub fn clear(settings: &Settings, spec: &ClearSpec) -> Result<Cleared, LocalCacheError> {
    let dir = &settings.cache.dir;
    let mut out = Cleared::default();
    // A database not made yet is empty already: clearing it creates nothing.
    if spec.hash {
        out.hash_entries = Some(match HashCache::open_existing(dir)? {
            Some(c) => c.clear()?,
            None => 0,
        });
    }
    if let Some(store) = &spec.known_present {
        let ttl = settings.transfer.known_present_ttl.0;
        out.known_present_entries = Some(match KnownPresent::open_existing(dir, ttl)? {
            Some(k) => k.forget_store(store.as_deref())?,
            None => 0,
        });
    }
    if spec.content {
        // Held to nothing: every object goes (a temporary file being written is left).
        let cache = content_cache(settings, 0);
        let gone = cache.evict().map_err(content_error(&cache))?;
        out.content_files = Some(gone.files);
        out.content_bytes = Some(gone.bytes);
    }
    if spec.partial_downloads {
        // Those being written are left.
        let kept = PartialDownloads::of(settings);
        out.partial_downloads = Some(kept.clear().map_err(partial_error(&kept))?);
    }
    if let Some(store) = &spec.copying_stores {
        let forgotten =
            copying_stores::forget(dir, store.as_deref()).map_err(copying_stores_error(dir))?;
        out.copying_stores = Some(forgotten);
    }
    Ok(out)
}

/// What `attache cache trim` did.
#[derive(Debug, Default, Serialize)]
pub struct Trimmed {
    /// Hash cache rows of files under directories that no longer exist, and those
    /// directories (`None`: the hash cache is off).
    pub hash_files: Option<u64>,
    pub hash_directories: Option<u64>,
    /// Known-present entries older than `transfer.known_present_ttl`.
    pub known_present_expired: Option<u64>,
    /// The content cache held to its size (`None`: it is off and no size was given).
    pub content: Option<crate::transfer::content_cache::Evicted>,
    /// Partial downloads not written to for `transfer.resume_for`.
    pub partial_downloads: Option<Partials>,
    /// Stores whose multipart completions were all measured over a week ago.
    pub copying_stores: Option<u64>,
}

/// Forgets what the machine's databases hold in vain (the hashes of files whose directory is
/// gone, such as render sessions the worker agent removed; known-present entries too old to
/// be trusted), removes partial downloads not written to for `transfer.resume_for`, and
/// removes the content cache's least recently used objects until it holds
/// at most `to` (default: `cache.content_size`; nothing when that is 0 and `to` is `None`).
/// A database not made yet is left so.
pub fn trim(settings: &Settings, to: Option<u64>) -> Result<Trimmed, LocalCacheError> {
    let mut out = forget_stale(settings, &|| false)?;
    let limit = to.unwrap_or(settings.cache.content_size.0);
    if limit > 0 || to.is_some() {
        let cache = content_cache(settings, limit);
        out.content = Some(cache.evict().map_err(content_error(&cache))?);
    }
    Ok(out)
}

/// The databases' and partial downloads' part of [`trim`] (a daemon does it every hour);
/// `stop` ends the pass over the hash cache early.
pub fn forget_stale(
    settings: &Settings,
    stop: &dyn Fn() -> bool,
) -> Result<Trimmed, LocalCacheError> {
    let dir = &settings.cache.dir;
    let mut out = Trimmed::default();
    if settings.cache.hash_cache {
        let (dirs, files) = match HashCache::open_existing(dir)? {
            Some(c) => c.forget_vanished(stop)?,
            None => (0, 0),
        };
        (out.hash_directories, out.hash_files) = (Some(dirs), Some(files));
        let ttl = settings.transfer.known_present_ttl.0;
        out.known_present_expired = Some(match KnownPresent::open_existing(dir, ttl)? {
            Some(k) => k.forget_expired()?,
            None => 0,
        });
    }
    let kept = PartialDownloads::of(settings);
    out.partial_downloads = Some(kept.sweep().map_err(partial_error(&kept))?);
    let now = crate::clock::now_ms();
    out.copying_stores =
        Some(copying_stores::forget_stale(dir, now).map_err(copying_stores_error(dir))?);
    Ok(out)
}
