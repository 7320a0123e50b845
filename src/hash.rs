//! Content hashing: the XXH3-128 content hash type, file hashing, the parallel hasher, the
//! persistent hash cache and the recorder that fills it while files are downloaded.

pub mod as_written;
pub mod cache;
pub mod file;
pub mod parallel;
pub mod recorder;

use std::fmt;

/// Lowercase hex of a digest's bytes, in order (Python's `hexdigest()`).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// XXH3-128 (seed 0) of a file's content: the key of its object in the store.
///
/// Stored as a `u128` (16 bytes) rather than its 32-character hex form so that a
/// million-entry manifest stays small in memory.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub u128);

impl ContentHash {
    /// Hashes a byte slice.
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(xxhash_rust::xxh3::xxh3_128(bytes))
    }

    /// Parses exactly 32 hex digits (either case), the only form `xxh128` hashes take.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(ContentHash)
    }

    /// 32 lowercase hex digits, high 64 bits first (Python's `hexdigest()`).
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// The hash as 16 big-endian bytes (the order of its hex form).
    pub fn to_be_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// Inverse of [`ContentHash::to_be_bytes`].
    pub fn from_be_bytes(bytes: [u8; 16]) -> Self {
        ContentHash(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// As its 32 hex digits, as manifests and reports spell it.
impl serde::Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({:032x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_content_hash_matches_the_official_client() {
        assert_eq!(
            ContentHash::of(b"").to_hex(),
            "99aa06d3014798d86001c324468d497f"
        );
        assert_eq!(
            ContentHash::of(b"hello world\n").to_hex(),
            "eefac9d87100cd1336b2e733a5484425"
        );
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let h = ContentHash::of(b"x");
        assert_eq!(ContentHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(
            ContentHash::from_hex(&h.to_hex().to_uppercase()),
            Some(h),
            "uppercase hex is accepted"
        );
        assert_eq!(ContentHash::from_hex("abc"), None);
        assert_eq!(ContentHash::from_hex(&"g".repeat(32)), None);
        assert_eq!(ContentHash::from_hex(&format!("+{}", "0".repeat(31))), None);
        assert_eq!(ContentHash::from_be_bytes(h.to_be_bytes()), h);
    }
}
