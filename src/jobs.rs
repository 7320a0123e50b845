//! Workflows ("jobs"): one run of hash, verify, put, get, check, … driven by the CLI or the daemon.
//! A job takes a spec, a cancellation token and a progress sink, and returns a JSON-ready result.

pub mod asset_references;
pub mod attachments;
pub mod bundle_template;
pub mod check;
pub mod cleanup;
pub mod detached;
pub mod doctor;
pub mod download_outputs;
pub mod fetch_manifest;
pub mod get;
pub mod hash;
pub mod job_manifests;
pub mod local_caches;
pub mod put;
pub mod setup;
pub mod spec;
pub mod submit;
pub mod sync_inputs;
pub mod sync_outputs;
pub mod verify;

use std::path::{Component, Path, PathBuf};

/// A job that stopped because it was cancelled (Ctrl-C, API, shutdown): exit code 130.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// An absolute, lexically normalized root path (`.` and `..` folded, symlinks kept), the way
/// Python's `os.path.abspath` spells it: the root path is part of manifest names.
pub fn normalize_root(root: &Path) -> std::io::Result<PathBuf> {
    let abs = std::path::absolute(root)?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Encodes a manifest that has entries, on a blocking thread, and drops it there: for a large
/// one both take a good part of a second, which on the runtime's worker would stall every
/// other transfer and the API of a daemon.
pub(crate) async fn encode_off_worker(manifest: crate::manifest::Manifest) -> Vec<u8> {
    crate::logging::job_warnings::spawn_blocking(move || {
        manifest.encode().expect("a manifest with entries")
    })
    .await
    .expect("manifest encoding panicked")
}

/// Runs `f` on a rayon pool of `threads` threads (the hashing and walking threads).
pub(crate) fn on_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("attache-hash-{i}"))
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(e) => {
            tracing::warn!("cannot start {threads} hashing threads ({e}); using the global pool");
            f()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_normalized_lexically() {
        assert_eq!(
            normalize_root(Path::new("/a/b/../c/./d/")).unwrap(),
            Path::new("/a/c/d")
        );
        assert_eq!(normalize_root(Path::new("/..")).unwrap(), Path::new("/"));
        assert!(normalize_root(Path::new("rel")).unwrap().is_absolute());
    }
}
