//! The verify job: re-hash a tree and compare it with a manifest.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::hash::{HashJobError, HashSpec};
use crate::manifest::{Manifest, ManifestDiff, ManifestEntry, diff};
use crate::progress::Progress;

/// What a tree looks like against its manifest.
#[derive(Debug)]
pub struct VerifyReport {
    pub root: PathBuf,
    pub checked: usize,
    /// In the manifest, not on disk.
    pub missing: Vec<ManifestEntry>,
    /// Content differs (hash or size): (expected, found).
    pub content_mismatch: Vec<(ManifestEntry, ManifestEntry)>,
    /// Same content, other mtime: (expected, found).
    pub mtime_mismatch: Vec<(ManifestEntry, ManifestEntry)>,
    /// On disk, not in the manifest.
    pub extra: Vec<ManifestEntry>,
    /// The manifest's files the filters leave out (not checked), as the scan leaves them out
    /// on disk.
    pub left_out: usize,
}

impl VerifyReport {
    /// True when every file of the manifest is on disk with the right content. Extra files and
    /// other mtimes are reported but do not fail unless `strict`.
    pub fn passed(&self, strict: bool) -> bool {
        let base = self.missing.is_empty() && self.content_mismatch.is_empty();
        base && (!strict || (self.extra.is_empty() && self.mtime_mismatch.is_empty()))
    }
}

/// Hashes `spec.roots[0]` and compares it with `expected`. The scan's filters (the config's
/// and the command's) pick among the manifest's files too, as rclone's `check` filters both
/// sides: a file the scan leaves out is not reported missing, nor one under a directory that
/// holds a marker file on disk (`--exclude-if-present`).
pub fn run(
    mut expected: Manifest,
    spec: &HashSpec,
    cancel: &CancellationToken,
    progress: &Progress,
) -> Result<VerifyReport, HashJobError> {
    let mut left_out = expected.retain(|e| spec.scan.filter.takes_path(e.path.as_wtf8()));
    let markers = &spec.scan.exclude_if_present;
    if !markers.is_empty() {
        let root = &spec.roots[0];
        let root = super::normalize_root(root).map_err(|source| HashJobError::Root {
            root: root.clone(),
            source,
        })?;
        // Whether each directory (a path under the root, "" for the root) holds a marker.
        let mut marked: HashMap<Vec<u8>, bool> = HashMap::new();
        let mut is_marked = |dir: &[u8]| {
            *marked.entry(dir.to_vec()).or_insert_with(|| {
                let path = root.join(std::ffi::OsStr::from_bytes(dir));
                crate::scan::marker_in(&path, markers).is_some()
            })
        };
        left_out += expected.retain(|e| {
            let Ok(path) = e.path.to_posix_bytes() else {
                return true;
            };
            // The root, then each directory above the file.
            !is_marked(b"")
                && !(path.iter().enumerate()).any(|(i, b)| *b == b'/' && is_marked(&path[..i]))
        });
    }
    let report = super::hash::run(spec, cancel, progress)?;
    let hashed = report.roots.into_iter().next().expect("one root was given");
    let ManifestDiff {
        added,
        changed,
        removed,
    } = diff(&expected, &hashed.manifest);
    let (content_mismatch, mtime_mismatch) = changed
        .into_iter()
        .partition(|(want, got)| want.hash != got.hash || want.size != got.size);
    Ok(VerifyReport {
        root: hashed.root,
        checked: expected.len(),
        missing: removed,
        content_mismatch,
        mtime_mismatch,
        extra: added,
        left_out,
    })
}
