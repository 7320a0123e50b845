//! Job-attachment manifests: the v2023-03-03 model, its byte-exact canonical codec, path
//! validation, merge and diff.

mod decode;
mod encode;
mod ops;
pub mod path;

pub use decode::{DecodeError, ReadError, decode, decode_from};
pub use ops::{ManifestDiff, diff, merge};
pub use path::{ManifestPath, PathError, PathRules, printable};

use crate::hash::ContentHash;

/// The manifest formats attache knows. Decoding dispatches on the document's version field,
/// so a new format is added here without touching callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestVersion {
    /// `"manifestVersion": "2023-03-03"`, the format every released client reads.
    V2023_03_03,
}

impl ManifestVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ManifestVersion::V2023_03_03 => "2023-03-03",
        }
    }
}

/// The only hash algorithm of the v2023-03-03 format.
pub const HASH_ALG: &str = "xxh128";

/// One file of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub path: ManifestPath,
    pub hash: ContentHash,
    pub size: u64,
    /// Modification time in microseconds since the epoch (floor of the nanoseconds).
    pub mtime_us: i64,
}

impl ManifestEntry {
    /// Converts a file's mtime in nanoseconds to the manifest's microseconds, flooring towards
    /// negative infinity as Python's `st_mtime_ns // 1000` does.
    pub fn mtime_us_from_ns(mtime_ns: i64) -> i64 {
        mtime_ns.div_euclid(1000)
    }
}

/// A manifest: the files under one asset root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: ManifestVersion,
    /// Kept in canonical order (UTF-16 code units of the path) by every constructor here.
    entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// A v2023-03-03 manifest of these entries, sorted into canonical order.
    pub fn new(mut entries: Vec<ManifestEntry>) -> Self {
        sort_canonical(&mut entries);
        Manifest {
            version: ManifestVersion::V2023_03_03,
            entries,
        }
    }

    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<ManifestEntry> {
        self.entries
    }

    /// Keeps the entries `keep` accepts (canonical order is kept); returns how many went.
    pub fn retain(&mut self, keep: impl FnMut(&ManifestEntry) -> bool) -> usize {
        let before = self.entries.len();
        self.entries.retain(keep);
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of the entries' sizes (the `totalSize` field).
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// The canonical bytes, identical to the official client's for the same entries.
    pub fn encode(&self) -> Result<Vec<u8>, encode::EncodeError> {
        encode::encode(self)
    }

    /// The same bytes, streamed into `w` (for manifests too large to hold encoded as well).
    pub fn encode_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        encode::encode_to(self, w)
    }

    /// Checks every path against `rules` (decode already applied the native rules).
    pub fn validate_paths(&self, rules: PathRules) -> Result<(), DecodeError> {
        for (index, e) in self.entries.iter().enumerate() {
            e.path
                .validate(rules)
                .map_err(|reason| DecodeError::UnsafePath {
                    index,
                    path: e.path.display().into_owned(),
                    reason,
                })?;
        }
        Ok(())
    }

    /// Keeps one entry per path: of a path listed twice, the later in the document (as a merge
    /// keeps the later manifest's). Neither client writes such a manifest; placing both would
    /// leave whichever landed last. Returns how many entries went.
    pub fn keep_one_per_path(&mut self) -> usize {
        // Canonical order is a stable sort: one path's entries are side by side, in document
        // order.
        if !self.entries.windows(2).any(|w| w[0].path == w[1].path) {
            return 0;
        }
        let before = self.entries.len();
        self.entries.reverse();
        self.entries
            .dedup_by(|earlier, later| earlier.path == later.path);
        self.entries.reverse();
        before - self.entries.len()
    }

    /// Checks that the entries make a tree: no path below a path that is a file (`sub` and
    /// `sub/b`). Neither client writes such a manifest; placed, it would fail half-way.
    pub fn check_tree(&self) -> Result<(), DecodeError> {
        // Each directory a path is in (once per run of paths in the same one) and those above
        // it, looked for among the files: a binary search in canonical order, nothing held.
        let mut last_dir: &[u8] = &[];
        for e in &self.entries {
            let path = e.path.as_wtf8();
            let Some(end) = path.iter().rposition(|&c| c == b'/') else {
                continue;
            };
            let dir = &path[..end];
            if dir == last_dir {
                continue;
            }
            last_dir = dir;
            let ends = dir.iter().enumerate().filter(|(_, c)| **c == b'/');
            for end in ends.map(|(i, _)| i).chain([dir.len()]) {
                let above = ManifestPath::from_wtf8_unchecked(dir[..end].to_vec());
                if self
                    .entries
                    .binary_search_by(|x| x.path.cmp_utf16(&above))
                    .is_ok()
                {
                    return Err(DecodeError::BelowAFile {
                        path: e.path.display().into_owned(),
                        file: above.display().into_owned(),
                    });
                }
            }
        }
        Ok(())
    }
}

pub use encode::{EncodeError, ManifestWriter};

/// A string as Python's `json.dumps(s)` writes it (quoted, ASCII-only escapes): the form of
/// the `asset-root-json` metadata.
pub fn json_quote(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    encode::write_string(&mut out, s.chars().map(u32::from));
    String::from_utf8(out).expect("the encoder writes ASCII")
}

/// Sorts by UTF-16 code units; stable, so equal paths keep their order.
fn sort_canonical(entries: &mut [ManifestEntry]) {
    if !entries.is_sorted_by(|a, b| a.path.cmp_utf16(&b.path).is_le()) {
        entries.sort_by(|a, b| a.path.cmp_utf16(&b.path));
    }
}
