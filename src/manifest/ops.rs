//! Merging and diffing manifests.

use std::collections::HashMap;

use super::{Manifest, ManifestEntry, ManifestPath};

/// Merges manifests for the same root: where a path appears more than once, the entry from
/// the later manifest wins (how a worker layers several submissions onto one local root).
pub fn merge(manifests: impl IntoIterator<Item = Manifest>) -> Manifest {
    let mut index: HashMap<ManifestPath, usize> = HashMap::new();
    let mut entries: Vec<ManifestEntry> = Vec::new();
    for m in manifests {
        for e in m.into_entries() {
            match index.get(&e.path) {
                Some(&i) => entries[i] = e,
                None => {
                    index.insert(e.path.clone(), entries.len());
                    entries.push(e);
                }
            }
        }
    }
    Manifest::new(entries)
}

/// What changed from one manifest to another, each list in canonical path order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestDiff {
    pub added: Vec<ManifestEntry>,
    /// (old, new) pairs whose hash, size or mtime differ.
    pub changed: Vec<(ManifestEntry, ManifestEntry)>,
    pub removed: Vec<ManifestEntry>,
}

impl ManifestDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Compares two manifests by path (a merge-walk over both canonical orders).
pub fn diff(old: &Manifest, new: &Manifest) -> ManifestDiff {
    let mut d = ManifestDiff::default();
    let (mut a, mut b) = (
        old.entries().iter().peekable(),
        new.entries().iter().peekable(),
    );
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => d.removed.push(a.next().unwrap().clone()),
            (None, Some(_)) => d.added.push(b.next().unwrap().clone()),
            (Some(x), Some(y)) => match x.path.cmp_utf16(&y.path) {
                std::cmp::Ordering::Less => d.removed.push(a.next().unwrap().clone()),
                std::cmp::Ordering::Greater => d.added.push(b.next().unwrap().clone()),
                std::cmp::Ordering::Equal => {
                    let (x, y) = (a.next().unwrap(), b.next().unwrap());
                    if x != y {
                        d.changed.push((x.clone(), y.clone()));
                    }
                }
            },
        }
    }
    d
}
