//! The hash job: scan and hash roots into manifests, using the hash cache.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Cancelled, normalize_root, on_pool};
use crate::hash::cache::{CacheError, HashCache};
use crate::hash::parallel::{
    CacheUse, HashErrors, HashOutcome, HashSink, HashStats, Reading, hash_tree, to_manifest,
};
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::scan::{
    PathFilter, PatternError, ScanErrors, ScanOptions, ScanOutcome, ScannedFile, scan,
};

/// What to hash and how.
#[derive(Debug, Clone)]
pub struct HashSpec {
    pub roots: Vec<PathBuf>,
    /// `None`: no hash cache (every file is read).
    pub cache_dir: Option<PathBuf>,
    pub threads: usize,
    pub read_buffer: usize,
    pub scan: ScanOptions,
}

impl HashSpec {
    /// The hashing settings for `roots` (`use_cache: false` reads every file).
    pub fn from_settings(
        settings: &crate::config::Settings,
        roots: Vec<PathBuf>,
        use_cache: bool,
    ) -> HashSpec {
        HashSpec {
            roots,
            cache_dir: use_cache.then(|| settings.cache.dir.clone()),
            threads: settings.hash_threads(),
            read_buffer: settings.hash.read_buffer.0 as usize,
            scan: ScanOptions {
                follow_external_symlinks: settings.hash.follow_external_symlinks,
                boundary: None,
                filter: PathFilter::with_rules(
                    &settings.hash.exclude,
                    &settings.hash.include,
                    &settings.hash.filter,
                )
                .expect("hash.exclude, include and filter are checked when the config is loaded"),
                size_age: Default::default(),
                exclude_if_present: settings.hash.exclude_if_present.clone(),
                caller: None,
            },
        }
    }

    /// Leaves out the paths `excludes` match, takes only the files `includes` match, and
    /// asks `rules` after the config's rules (`--exclude`, `--include`, `--filter`, a job's
    /// `exclude`, `include` and `filter`), beside the config's.
    pub fn filter_also(
        &mut self,
        excludes: &[String],
        includes: &[String],
        rules: &[String],
    ) -> Result<(), PatternError> {
        if excludes.is_empty() && includes.is_empty() && rules.is_empty() {
            return Ok(());
        }
        let now = &self.scan.filter;
        let all = |mine: &[String], more: &[String]| -> Vec<String> {
            mine.iter().chain(more).cloned().collect()
        };
        self.scan.filter = PathFilter::with_rules(
            &all(now.exclusions(), excludes),
            &all(now.inclusions(), includes),
            &all(now.rules(), rules),
        )?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashJobError {
    #[error("{root}: {source}")]
    Root {
        root: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Scan(#[from] ScanErrors),
    #[error("{0}")]
    Hash(#[from] HashErrors),
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Not transparent: the CLI finds `Cancelled` in the error chain to exit with 130.
    #[error("cancelled")]
    Cancelled(#[from] Cancelled),
}

/// One hashed root.
#[derive(Debug)]
pub struct HashedRoot {
    /// The root as it names the manifest: absolute, normalized.
    pub root: PathBuf,
    pub manifest: Manifest,
    pub stats: HashStats,
}

/// The result of a hash job.
#[derive(Debug)]
pub struct HashReport {
    pub roots: Vec<HashedRoot>,
    pub stats: HashStats,
    pub seconds: f64,
}

/// Scans and hashes every root (blocking; run it on a blocking thread).
pub fn run(
    spec: &HashSpec,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<HashReport, HashJobError> {
    run_with_sink(spec, cancel, progress, None)
}

/// [`run`], handing every hashed file to `sink` as soon as it is hashed.
pub fn run_with_sink(
    spec: &HashSpec,
    cancel: &CancellationToken,
    progress: &Progress,
    sink: Option<&dyn HashSink>,
) -> Result<HashReport, HashJobError> {
    let started = Instant::now();
    let cache = spec.cache_dir.as_deref().map(HashCache::open).transpose()?;
    let mut roots = Vec::with_capacity(spec.roots.len());
    let mut stats = HashStats::default();
    for root in &spec.roots {
        let root = normalize_root(root).map_err(|source| HashJobError::Root {
            root: root.clone(),
            source,
        })?;
        let hashed = on_pool(spec.threads, || {
            hash_root(&root, spec, cache.as_ref(), cancel, progress, sink)
        })?;
        stats.add(&hashed.stats);
        roots.push(hashed);
    }
    Ok(HashReport {
        roots,
        stats,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn hash_root(
    root: &Path,
    spec: &HashSpec,
    cache: Option<&HashCache>,
    cancel: &CancellationToken,
    progress: &Progress,
    sink: Option<&dyn HashSink>,
) -> Result<HashedRoot, HashJobError> {
    let files = match scan(root, spec.scan.clone(), cancel)? {
        ScanOutcome::Done(files) => files,
        ScanOutcome::Cancelled => return Err(Cancelled.into()),
    };
    let cache = cache.map(|cache| CacheUse {
        cache,
        complete_scan: true,
    });
    hash_listed(root, files, spec, cache, cancel, progress, sink)
}

/// Hashes the files `choose` picks under `root` (on the hashing pool, with the cache), handing
/// each to `sink`: how submit and sync-outputs feed their own file lists to the uploader.
pub fn hash_chosen(
    root: &Path,
    spec: &HashSpec,
    sink: &dyn HashSink,
    cancel: &CancellationToken,
    choose: impl FnOnce(&CancellationToken) -> Result<Vec<ScannedFile>, HashJobError> + Send,
) -> Result<HashReport, HashJobError> {
    let started = Instant::now();
    let cache = spec.cache_dir.as_deref().map(HashCache::open).transpose()?;
    let progress = Progress::default();
    let hashed = on_pool(spec.threads, || {
        let files = choose(cancel)?;
        hash_listed(
            root,
            files,
            spec,
            cache.as_ref().map(|cache| CacheUse {
                cache,
                complete_scan: false,
            }),
            cancel,
            &progress,
            Some(sink),
        )
    })?;
    let stats = hashed.stats;
    Ok(HashReport {
        roots: vec![hashed],
        stats,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Hashes chosen files of `root` (their `rel` paths are relative to it) into its manifest.
pub fn hash_listed(
    root: &Path,
    files: Vec<ScannedFile>,
    spec: &HashSpec,
    cache: Option<CacheUse<'_>>,
    cancel: &CancellationToken,
    progress: &Progress,
    sink: Option<&dyn HashSink>,
) -> Result<HashedRoot, HashJobError> {
    progress.add_total(files.len() as u64, files.iter().map(|f| f.stat.size).sum());
    let reading = Reading {
        buffer: spec.read_buffer,
        scanned_only: spec.scan.caller.is_some(),
    };
    match hash_tree(root, files, cache, reading, cancel, progress, sink)? {
        HashOutcome::Done(files, stats) => Ok(HashedRoot {
            root: root.to_path_buf(),
            manifest: to_manifest(files),
            stats,
        }),
        HashOutcome::Cancelled => Err(Cancelled.into()),
    }
}
