//! Merging and diffing manifests.

use super::{Manifest, ManifestEntry};

/// Merges manifests for the same root: where a path appears more than once, the entry from
/// the later manifest wins (how a worker layers several submissions onto one local root).
pub fn merge(manifests: impl IntoIterator<Item = Manifest>) -> Manifest {
    let mut manifests = manifests.into_iter();
    let Some(first) = manifests.next() else {
        return Manifest::new(Vec::new());
    };
    let mut entries = first.into_entries();
    let mut more = false;
    for m in manifests {
        more = true;
        entries.extend(m.into_entries());
    }
    if !more {
        return Manifest::new(entries);
    }
    // Later wins: stable sorts keep one path's entries side by side in input order, which is
    // what `keep_one_per_path` takes. No index of cloned paths: a million-entry merge needs no
    // second copy of the paths. (Bytes first: cheaper to compare than the canonical order,
    // which is then a check of what is mostly sorted already.)
    entries.sort_by(|a, b| a.path.as_wtf8().cmp(b.path.as_wtf8()));
    let mut merged = Manifest::new(entries);
    merged.keep_one_per_path();
    merged
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::ContentHash;
    use crate::manifest::DecodeError;
    use crate::manifest::ManifestPath;

    fn entry(path: &str, content: &[u8]) -> ManifestEntry {
        ManifestEntry {
            path: ManifestPath::from_utf8(path),
            hash: ContentHash::of(content),
            size: content.len() as u64,
            mtime_us: 1,
        }
    }

    /// Each entry's path and hash, in the manifest's order.
    fn paths_and_hashes(m: &Manifest) -> Vec<(String, ContentHash)> {
        m.entries()
            .iter()
            .map(|e| (e.path.display().into_owned(), e.hash))
            .collect()
    }

    #[test]
    fn a_manifest_that_is_not_a_tree_is_found_out_and_a_path_listed_twice_is_placed_once() {
        let tree = |paths: &[&str]| {
            Manifest::new(paths.iter().map(|p| entry(p, p.as_bytes())).collect()).check_tree()
        };
        // Names that sort between `sub` and `sub/…` (`sub-x`, `sub.exr`) do not hide a fault.
        tree(&["sub", "sub-x", "sub.exr", "subway/a", "tex/sub/b"]).unwrap();
        tree(&["a/b/c", "a/b/d", "a/bc", "a/b.c"]).unwrap();
        assert_eq!(
            tree(&["sub", "sub-x", "sub.exr", "sub/b"]),
            Err(DecodeError::BelowAFile {
                path: "sub/b".into(),
                file: "sub".into()
            })
        );
        assert_eq!(
            tree(&["x", "a/b", "a/b/c/d"]),
            Err(DecodeError::BelowAFile {
                path: "a/b/c/d".into(),
                file: "a/b".into()
            })
        );
        // Of a path listed twice, the later entry is kept; the other paths stay in order.
        let mut twice = Manifest::new(vec![
            entry("b.txt", b"b"),
            entry("a.txt", b"first"),
            entry("c/d", b"d"),
            entry("a.txt", b"later"),
        ]);
        assert_eq!(twice.keep_one_per_path(), 1);
        assert_eq!(
            paths_and_hashes(&twice),
            [
                ("a.txt".into(), ContentHash::of(b"later")),
                ("b.txt".into(), ContentHash::of(b"b")),
                ("c/d".into(), ContentHash::of(b"d")),
            ]
        );
        assert_eq!(twice.keep_one_per_path(), 0);
        tree(&["a.txt", "a.txt", "b"]).unwrap();
        // Merged, a path is there once (the later wins), but one manifest's file can still
        // stand where another has a directory.
        let merged = merge([
            Manifest::new(vec![entry("a.txt", b"1"), entry("sub", b"file")]),
            Manifest::new(vec![entry("a.txt", b"2"), entry("sub/b", b"below")]),
        ]);
        assert!(matches!(
            merged.check_tree(),
            Err(DecodeError::BelowAFile { .. })
        ));
    }

    #[test]
    fn merge_keeps_every_path_once_and_the_later_entry_wins() {
        let first = Manifest::new(vec![
            entry("b", b"b1"),
            entry("a", b"a1"),
            entry("c/d", b"d1"),
        ]);
        let second = Manifest::new(vec![entry("c/d", b"d2"), entry("e", b"e2")]);
        let third = Manifest::new(vec![entry("a", b"a3")]);
        let merged = merge([first.clone(), second, third]);
        assert_eq!(
            paths_and_hashes(&merged),
            vec![
                ("a".into(), ContentHash::of(b"a3")),
                ("b".into(), ContentHash::of(b"b1")),
                ("c/d".into(), ContentHash::of(b"d2")),
                ("e".into(), ContentHash::of(b"e2")),
            ]
        );
        assert_eq!(merge([first.clone()]), first, "one manifest passes through");
    }
}
