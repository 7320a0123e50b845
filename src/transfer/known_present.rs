//! The known-present index: content hashes recently seen in a store, so a re-upload asks the
//! store nothing about them.
//!
//! SQLite, `<cache.dir>/known-present-v2.sqlite3`, table `present(store TEXT, hash BLOB,
//! verified_at INTEGER)` keyed by (store, hash), the store by its `identity()` (URL, region
//! and endpoint). An entry is trusted for
//! `transfer.known_present_ttl`; each run re-checks about `transfer.known_present_sample`
//! randomly chosen trusted entries older than an hour against the store (so a re-upload right
//! after an upload makes no request at all), and a store that answers 404 for a hash (on upload
//! check or download) removes it: an object deleted by a lifecycle rule is uploaded again
//! instead of failing renders (the official client's 30-day cache does not notice).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, params};

use crate::hash::ContentHash;

pub const FILE_NAME: &str = "known-present-v2.sqlite3";
/// The index before stores were told apart by endpoint: a bucket name seen at one endpoint
/// counted for every other, so its entries cannot be trusted and it is removed.
const OLD_FILE_NAME: &str = "known-present-v1.sqlite3";

#[derive(Debug, thiserror::Error)]
#[error("known-present index {path}: {source}")]
pub struct KnownPresentError {
    path: PathBuf,
    source: rusqlite::Error,
}

/// A store's entries as loaded at once (hash → verified at, Unix seconds), sorted by hash:
/// 32 bytes per entry, less than half of a hash map's peak while it grows.
#[derive(Debug)]
pub struct KnownEntries(Vec<(ContentHash, i64)>);

impl KnownEntries {
    /// When `hash` was last verified present.
    pub fn get(&self, hash: &ContentHash) -> Option<i64> {
        self.0
            .binary_search_by_key(hash, |&(h, _)| h)
            .ok()
            .map(|i| self.0[i].1)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

pub struct KnownPresent {
    path: PathBuf,
    conn: Mutex<Connection>,
    ttl: Duration,
}

impl Drop for KnownPresent {
    fn drop(&mut self) {
        crate::local_db::close(&mut self.conn, &self.path);
    }
}

/// Now, as the index stores times (SQLite integers).
fn now_secs() -> i64 {
    crate::clock::now_secs() as i64
}

impl KnownPresent {
    /// The index the settings ask for: `None` when the cache is off, or (with a warning) when
    /// it cannot be opened; transfers then ask the store about every object.
    pub fn from_settings(
        settings: &crate::config::Settings,
    ) -> Option<std::sync::Arc<KnownPresent>> {
        if !settings.cache.hash_cache {
            return None;
        }
        KnownPresent::open(&settings.cache.dir, settings.transfer.known_present_ttl.0)
            .map_err(|e| tracing::warn!("{e}; asking the store about every object"))
            .ok()
            .map(std::sync::Arc::new)
    }

    /// [`Self::from_settings`] on a blocking thread: another process may hold the index locked
    /// (waited for up to 30 s), which must hold no worker of the runtime (the daemon's API
    /// runs there too).
    pub async fn open_for(
        settings: &crate::config::Settings,
    ) -> Option<std::sync::Arc<KnownPresent>> {
        let settings = settings.clone();
        crate::logging::job_warnings::spawn_blocking(move || KnownPresent::from_settings(&settings))
            .await
            .expect("opening the known-present index panicked")
    }

    /// Whether an entry verified `age` ago is still trusted. A TTL of 0 trusts none, even one
    /// recorded this second (the ages are whole seconds): "ask the store about every object".
    pub fn trusts(&self, age: Duration) -> bool {
        !self.ttl.is_zero() && age <= self.ttl
    }

    /// Opens the index in `dir` if one was made there; `None` (and nothing created) if not:
    /// for looking at it or emptying it.
    pub fn open_existing(
        dir: &Path,
        ttl: Duration,
    ) -> Result<Option<KnownPresent>, KnownPresentError> {
        match dir.join(FILE_NAME).exists() {
            true => Self::open(dir, ttl).map(Some),
            false => Ok(None),
        }
    }

    pub fn open(dir: &Path, ttl: Duration) -> Result<KnownPresent, KnownPresentError> {
        let path = dir.join(FILE_NAME);
        let err = |source| KnownPresentError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        let conn = crate::local_db::open(
            &path,
            "CREATE TABLE IF NOT EXISTS present (
               store TEXT NOT NULL, hash BLOB NOT NULL, verified_at INTEGER NOT NULL,
               PRIMARY KEY (store, hash)) WITHOUT ROWID;",
        )
        .map_err(err)?;
        for suffix in ["", "-wal", "-shm"] {
            let old = dir.join(format!("{OLD_FILE_NAME}{suffix}"));
            if let Err(e) = std::fs::remove_file(&old)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::debug!("cannot remove {}: {e}", old.display());
            }
        }
        Ok(KnownPresent {
            path,
            conn: Mutex::new(conn),
            ttl,
        })
    }

    fn err(&self, source: rusqlite::Error) -> KnownPresentError {
        KnownPresentError {
            path: self.path.clone(),
            source,
        }
    }

    /// Whether `hash` was verified in `store` within the TTL.
    pub fn is_fresh(&self, store: &str, hash: ContentHash) -> Result<bool, KnownPresentError> {
        Ok(self.age(store, hash)?.is_some_and(|age| self.trusts(age)))
    }

    /// How long ago `hash` was last verified in `store`, if it ever was.
    pub fn age(
        &self,
        store: &str,
        hash: ContentHash,
    ) -> Result<Option<Duration>, KnownPresentError> {
        let conn = self.conn.lock().expect("not poisoned");
        let mut stmt = conn
            .prepare_cached("SELECT verified_at FROM present WHERE store = ?1 AND hash = ?2")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![store, hash.to_be_bytes().as_slice()])
            .map_err(|e| self.err(e))?;
        let verified: Option<i64> = match rows.next().map_err(|e| self.err(e))? {
            Some(r) => Some(r.get(0).map_err(|e| self.err(e))?),
            None => None,
        };
        Ok(verified.map(Self::age_of))
    }

    /// Every entry of `store` (hash → when it was verified, Unix seconds), if there are at most
    /// `limit`; `None` when there are more. One query instead of one per object: each query
    /// is a read transaction with its own WAL lock calls, which cost a quarter of the CPU of
    /// a many-small-file upload.
    pub fn entries_of(
        &self,
        store: &str,
        limit: usize,
    ) -> Result<Option<KnownEntries>, KnownPresentError> {
        let conn = self.conn.lock().expect("not poisoned");
        let mut stmt = conn
            .prepare_cached("SELECT hash, verified_at FROM present WHERE store = ?1 LIMIT ?2")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![store, limit as i64 + 1])
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            if out.len() == limit {
                return Ok(None);
            }
            let blob: Vec<u8> = r.get(0).map_err(|e| self.err(e))?;
            let Ok(bytes) = <[u8; 16]>::try_from(blob.as_slice()) else {
                continue; // not written by attache; the per-object query ignores it as well
            };
            out.push((
                ContentHash::from_be_bytes(bytes),
                r.get(1).map_err(|e| self.err(e))?,
            ));
        }
        out.sort_unstable_by_key(|&(h, _)| h);
        out.shrink_to_fit();
        Ok(Some(KnownEntries(out)))
    }

    /// How long ago a time [`Self::entries_of`] returned was.
    pub fn age_of(verified_at: i64) -> Duration {
        Duration::from_secs((now_secs() - verified_at).max(0) as u64)
    }

    /// Records hashes just seen in (or written to) the store.
    pub fn record(&self, store: &str, hashes: &[ContentHash]) -> Result<(), KnownPresentError> {
        let mut conn = self.conn.lock().expect("not poisoned");
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO present (store, hash, verified_at) VALUES (?1, ?2, ?3)",
                )
                .map_err(|e| self.err(e))?;
            let now = now_secs();
            for h in hashes {
                ins.execute(params![store, h.to_be_bytes().as_slice(), now])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The stores the index knows (by identity) and how many objects of each, most first.
    pub fn stores(&self) -> Result<Vec<(String, u64)>, KnownPresentError> {
        let conn = self.conn.lock().expect("not poisoned");
        let mut stmt = conn
            .prepare("SELECT store, count(*) AS n FROM present GROUP BY store ORDER BY n DESC")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Forgets every entry, or those of the store at `url` (`s3://bucket/prefix`, at any
    /// endpoint and region): its next uploads ask it about every object again. Returns how
    /// many entries went.
    pub fn forget_store(&self, url: Option<&str>) -> Result<u64, KnownPresentError> {
        let conn = self.conn.lock().expect("not poisoned");
        let n = match url {
            None => conn.execute("DELETE FROM present", []),
            // `store::identity_is_of`, in SQL: the URL, then " region=… endpoint=…" for S3.
            Some(url) => conn.execute(
                "DELETE FROM present WHERE store = ?1 OR substr(store, 1, length(?1) + 1) = ?1 || ' '",
                params![url.trim_end_matches('/')],
            ),
        };
        n.map(|n| n as u64).map_err(|e| self.err(e))
    }

    /// Forgets the entries older than `transfer.known_present_ttl`, which no run trusts any
    /// more: a machine that uploads for months keeps what it may use, not every object it
    /// ever sent. Returns how many went (none with a ttl of 0, which trusts no entry).
    pub fn forget_expired(&self) -> Result<u64, KnownPresentError> {
        if self.ttl.is_zero() {
            return Ok(0);
        }
        let cutoff = now_secs().saturating_sub(self.ttl.as_secs().min(i64::MAX as u64) as i64);
        let conn = self.conn.lock().expect("not poisoned");
        conn.execute(
            "DELETE FROM present WHERE verified_at < ?1",
            params![cutoff],
        )
        .map(|n| n as u64)
        .map_err(|e| self.err(e))
    }

    /// Forgets a hash the store turned out not to have.
    pub fn forget(&self, store: &str, hash: ContentHash) -> Result<(), KnownPresentError> {
        let conn = self.conn.lock().expect("not poisoned");
        conn.execute(
            "DELETE FROM present WHERE store = ?1 AND hash = ?2",
            params![store, hash.to_be_bytes().as_slice()],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_older_than_the_ttl_are_forgotten_and_fresh_ones_kept() {
        let t = tempfile::tempdir().unwrap();
        let k = KnownPresent::open(t.path(), Duration::from_secs(3600)).unwrap();
        let (a, b) = (ContentHash::of(b"a"), ContentHash::of(b"b"));
        k.record("s3://x", &[a, b]).unwrap();
        k.conn
            .lock()
            .unwrap()
            .execute(
                "UPDATE present SET verified_at = verified_at - 3601 WHERE hash = ?1",
                params![a.to_be_bytes().as_slice()],
            )
            .unwrap();
        assert_eq!(k.forget_expired().unwrap(), 1);
        assert!(k.is_fresh("s3://x", b).unwrap());
        assert_eq!(k.stores().unwrap(), vec![("s3://x".to_string(), 1)]);
        // A ttl of 0 trusts nothing and forgets nothing (the index is off).
        let off = KnownPresent::open(t.path(), Duration::ZERO).unwrap();
        assert_eq!(off.forget_expired().unwrap(), 0);
    }

    #[test]
    fn fresh_entries_expire_and_can_be_forgotten() {
        let t = tempfile::tempdir().unwrap();
        let k = KnownPresent::open(t.path(), Duration::from_secs(3600)).unwrap();
        let (a, b) = (ContentHash::of(b"a"), ContentHash::of(b"b"));
        k.record("s3://x", &[a]).unwrap();
        assert!(k.is_fresh("s3://x", a).unwrap());
        assert!(!k.is_fresh("s3://other", a).unwrap(), "per store");
        assert!(!k.is_fresh("s3://x", b).unwrap());
        k.forget("s3://x", a).unwrap();
        assert!(!k.is_fresh("s3://x", a).unwrap());

        let expired = KnownPresent::open(t.path(), Duration::ZERO).unwrap();
        expired
            .conn
            .lock()
            .unwrap()
            .execute("UPDATE present SET verified_at = 0", [])
            .unwrap();
        k.record("s3://x", &[b]).unwrap();
        expired
            .conn
            .lock()
            .unwrap()
            .execute("UPDATE present SET verified_at = 1", [])
            .unwrap();
        assert!(!k.is_fresh("s3://x", b).unwrap(), "older than the TTL");
        k.record("s3://x", &[a]).unwrap();
        assert!(
            !expired.is_fresh("s3://x", a).unwrap(),
            "a TTL of 0 trusts nothing, even what was recorded this second"
        );
    }

    #[test]
    fn a_store_s_entries_load_at_once_up_to_a_limit() {
        let t = tempfile::tempdir().unwrap();
        let k = KnownPresent::open(t.path(), Duration::from_secs(3600)).unwrap();
        let hashes: Vec<ContentHash> = (0..5u8).map(|i| ContentHash::of(&[i])).collect();
        k.record("s3://x", &hashes).unwrap();
        k.record("s3://other", &[ContentHash::of(b"elsewhere")])
            .unwrap();
        let all = k
            .entries_of("s3://x", 5)
            .unwrap()
            .expect("within the limit");
        assert_eq!(all.len(), 5);
        for h in &hashes {
            assert!(KnownPresent::age_of(all.get(h).unwrap()) < Duration::from_secs(60));
        }
        assert_eq!(all.get(&ContentHash::of(b"elsewhere")), None, "per store");
        assert!(
            k.entries_of("s3://x", 4).unwrap().is_none(),
            "over the limit"
        );
        let none = k.entries_of("s3://empty", 4).unwrap();
        assert_eq!(none.expect("within the limit").len(), 0);
    }

    #[test]
    fn the_index_that_did_not_tell_endpoints_apart_is_removed() {
        let t = tempfile::tempdir().unwrap();
        for name in [OLD_FILE_NAME, "known-present-v1.sqlite3-wal"] {
            std::fs::write(t.path().join(name), b"old").unwrap();
        }
        KnownPresent::open(t.path(), Duration::from_secs(60)).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("v1"))
            .collect();
        names.sort();
        assert!(names.is_empty(), "{names:?}");
        assert!(t.path().join(FILE_NAME).exists());
    }
}
