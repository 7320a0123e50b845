//! The persistent hash cache: (absolute path, dev, ino, size, mtime_ns, ctime_ns) → hash.
//!
//! On disk it is one SQLite database, `hash-cache-v1.sqlite3` under `cache.dir`, in WAL mode:
//! any number of attache processes read and write it at once, and a crash mid-write leaves
//! the last committed state. Format (inspect with `sqlite3`):
//!
//! ```sql
//! CREATE TABLE hashes (
//!   path     BLOB PRIMARY KEY, -- absolute path, raw OS bytes
//!   dev      INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
//!   mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
//!   hash     BLOB NOT NULL,    -- XXH3-128, 16 bytes, big-endian
//!   check_   INTEGER NOT NULL, -- XXH3-64 of all the columns above; a row that fails it is ignored
//!   hashed_at INTEGER NOT NULL -- unix seconds
//! ) WITHOUT ROWID;
//! ```
//!
//! A row is trusted only when every stat field matches the file now and its check value is
//! right. A file whose mtime or ctime is within [`RACY_WINDOW_NS`] of the moment it was read is
//! hashed but not cached: a write landing in the same timestamp tick would go unseen (git's
//! "racily clean" problem).
//!
//! Files attache has just written and verified itself (downloads) are the exception: they are
//! recorded at once (`hash::recorder`), keyed by their stat after they got their name. Their
//! mtime is the manifest's, set by attache, so any later write moves it, and only a write that
//! also set that exact mtime back inside the same clock tick as the naming could go unseen.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::ContentHash;
use crate::scan::FileStat;

/// File name of the database inside `cache.dir`; the version changes with the schema.
pub const FILE_NAME: &str = "hash-cache-v1.sqlite3";

/// Files modified this close to the moment they were read are not cached.
pub const RACY_WINDOW_NS: i64 = 1_000_000_000;

/// Whether a file that looked like `stat` when it was read, at `read_at_ns` (Unix ns), changed
/// too recently for its hash to be cached.
pub fn is_racy(stat: &FileStat, read_at_ns: i64) -> bool {
    stat.mtime_ns.max(stat.ctime_ns) > read_at_ns - RACY_WINDOW_NS
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "hash cache {path}: {source}; fix the permissions of cache.dir, or run with --no-cache"
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "hash cache {path}: {source}: another attache process has kept it locked for {} s; wait for it to finish, give this run another --cache-dir, or run with --no-cache",
        crate::local_db::BUSY_TIMEOUT.as_secs()
    )]
    Locked {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "hash cache {path}: {source}: the disk of cache.dir is full; free some space on it, give this run another --cache-dir, or run with --no-cache"
    )]
    Full {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("hash cache {path}: {source}")]
    Query {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// An open hash cache. Cheap to share between threads (one connection behind a mutex: lookups
/// are batched, so it is never the bottleneck).
pub struct HashCache {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// A file to record: its absolute path bytes, what it looked like and its hash.
pub struct CacheRecord<'a> {
    pub path: &'a [u8],
    pub stat: &'a FileStat,
    pub hash: ContentHash,
}

impl HashCache {
    /// Opens the cache in `dir` if one was made there; `None` (and nothing created) if not:
    /// for looking at it or emptying it.
    pub fn open_existing(dir: &Path) -> Result<Option<Self>, CacheError> {
        match dir.join(FILE_NAME).exists() {
            true => Self::open(dir).map(Some),
            false => Ok(None),
        }
    }

    /// Opens (creating if needed) the cache in `dir`. A damaged database is moved aside to
    /// `<name>.damaged-<unix time>` and a fresh one started, so a broken cache costs a re-hash,
    /// never a wrong hash.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let path = dir.join(FILE_NAME);
        let open_err = |source| open_error(&path, source);
        std::fs::create_dir_all(dir).map_err(|e| open_err(io_to_sqlite(e)))?;
        let conn = match Self::connect(&path) {
            Ok(conn) => conn,
            Err(e) if is_damage(&e) => {
                let aside = path.with_extension(format!(
                    "sqlite3.damaged-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs()
                ));
                tracing::warn!(cache = %path.display(), moved_to = %aside.display(), "hash cache is damaged; starting a new one");
                std::fs::rename(&path, &aside).map_err(|e| open_err(io_to_sqlite(e)))?;
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                Self::connect(&path).map_err(open_err)?
            }
            Err(e) => return Err(open_err(e)),
        };
        Ok(HashCache {
            path,
            conn: Mutex::new(conn),
        })
    }

    fn connect(path: &Path) -> rusqlite::Result<Connection> {
        crate::local_db::open(
            path,
            "CREATE TABLE IF NOT EXISTS hashes (
               path BLOB PRIMARY KEY,
               dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
               mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
               hash BLOB NOT NULL, check_ INTEGER NOT NULL, hashed_at INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A failed query on this cache, naming its file.
    fn query_error(&self, source: rusqlite::Error) -> CacheError {
        CacheError::Query {
            path: self.path.clone(),
            source,
        }
    }

    /// How many files the cache knows.
    pub fn count(&self) -> Result<u64, CacheError> {
        let conn = self.conn.lock().expect("no panics while holding the lock");
        conn.query_row("SELECT count(*) FROM hashes", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| self.query_error(e))
    }

    /// Forgets every file: the next run reads each file once again. Returns how many.
    pub fn clear(&self) -> Result<u64, CacheError> {
        let conn = self.conn.lock().expect("no panics while holding the lock");
        conn.execute("DELETE FROM hashes", [])
            .map(|n| n as u64)
            .map_err(|e| self.query_error(e))
    }

    /// Forgets the files under each directory directly in `parent` that no longer exists
    /// (but `except`, which a sync is about to make): on a render worker, the sessions the
    /// worker agent has removed since (each session's files are recorded under its own
    /// directory, which would otherwise stay in the cache for good). One index seek and one
    /// `stat` per entry of `parent` that has rows, whatever their number; rows are deleted a
    /// few thousand at a time, and `stop` ends it between them. Returns (entries gone, rows
    /// forgotten).
    pub fn forget_vanished_in(
        &self,
        parent: &Path,
        except: &Path,
        stop: &dyn Fn() -> bool,
    ) -> Result<(u64, u64), CacheError> {
        let except = except.as_os_str().as_bytes();
        let q = |e| self.query_error(e);
        let (under, past) = prefix_range(parent.as_os_str().as_bytes());
        let conn = self.conn.lock().expect("no panics while holding the lock");
        let first_from = |from: &[u8], below: &[u8]| -> rusqlite::Result<Option<Vec<u8>>> {
            conn.prepare_cached(
                "SELECT path FROM hashes WHERE path >= ?1 AND path < ?2 ORDER BY path LIMIT 1",
            )?
            .query_row(params![from, below], |r| r.get(0))
            .optional()
        };
        let (mut entries, mut rows) = (0, 0);
        let mut cursor = under.clone();
        while let Some(path) = first_from(&cursor, &past).map_err(q)? {
            // The entry of `parent` this row is under (or is).
            let name_len = path[under.len()..]
                .iter()
                .position(|&b| b == b'/')
                .unwrap_or(path.len() - under.len());
            let entry = path[..under.len() + name_len].to_vec();
            let (entry_under, entry_past) = prefix_range(&entry);
            if entry != except && is_gone(&entry) {
                // The entry itself (a file), then all that was under it (a directory).
                let n = conn
                    .prepare_cached("DELETE FROM hashes WHERE path = ?1")
                    .and_then(|mut d| d.execute(params![entry]))
                    .map_err(q)? as u64
                    + delete_range(&conn, &entry_under, &entry_past, stop).map_err(q)?;
                entries += 1;
                rows += n;
            }
            if stop() {
                break;
            }
            // Next: a sibling whose name extends this one with a byte below '/' (`shot 2`
            // after `shot`) sorts between the entry and its subtree; then past the subtree.
            let mut after_entry = entry.clone();
            after_entry.push(0);
            cursor = match first_from(&after_entry, &entry_under).map_err(q)? {
                Some(sibling) => sibling,
                None => entry_past,
            };
        }
        Ok((entries, rows))
    }

    /// Forgets the files of every directory that no longer exists, wherever it is: a pass over
    /// the whole cache, with one `stat` per directory that has rows (`attache cache trim`,
    /// and a daemon once an hour); `stop` ends it between batches. Files removed from a
    /// directory that is still there stay until a full scan of their root (`hash`, `put`)
    /// prunes them. Returns (directories gone, rows forgotten).
    pub fn forget_vanished(&self, stop: &dyn Fn() -> bool) -> Result<(u64, u64), CacheError> {
        let q = |e| self.query_error(e);
        let (mut dirs, mut rows) = (0, 0);
        // Rows above `after` are still to be seen; those below `deleted_below` went with a
        // directory; `present` is the last directory found there (its files need no `stat`).
        let (mut after, mut deleted_below, mut present) = (Vec::new(), Vec::new(), Vec::new());
        while !stop() {
            // In batches, the lock given up between them for the transfers that share it.
            let conn = self.conn.lock().expect("no panics while holding the lock");
            let batch: Vec<Vec<u8>> = conn
                .prepare_cached("SELECT path FROM hashes WHERE path > ?1 ORDER BY path LIMIT 10000")
                .and_then(|mut st| {
                    st.query_map(params![after], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()
                })
                .map_err(q)?;
            let Some(last) = batch.last() else {
                break;
            };
            after = last.clone();
            for path in &batch {
                let Some(dir) = parent_of(path) else {
                    continue;
                };
                if path.as_slice() < deleted_below.as_slice() || dir == present.as_slice() {
                    continue;
                }
                if !is_gone(dir) {
                    present = dir.to_vec();
                    continue;
                }
                // The highest directory that is gone: one range for all that was under it.
                let mut top = dir;
                while let Some(up) = parent_of(top).filter(|up| is_gone(up)) {
                    top = up;
                }
                let (lo, hi) = prefix_range(top);
                rows += delete_range(&conn, &lo, &hi, stop).map_err(q)?;
                dirs += 1;
                deleted_below = hi;
            }
        }
        Ok((dirs, rows))
    }

    /// Looks up many files under one directory at once. `files` are paths relative to `dir`
    /// (POSIX bytes, so that a caller need not build 200,000 absolute paths to ask), sorted by
    /// their bytes; the answer has one slot per file. One ordered range scan serves the whole
    /// batch; when `files` is every file under `dir` (`prune_unlisted`), rows that match none
    /// of them (deleted or renamed files) are pruned. Otherwise the scan covers only the
    /// listed files' span and keeps nothing else: a few changed outputs of a million-file
    /// root (sync-outputs) read the rows between them, and held all million paths before.
    pub fn lookup_sorted<P: AsRef<[u8]>>(
        &self,
        dir: &[u8],
        files: &[(P, &FileStat)],
        prune_unlisted: bool,
    ) -> Result<Vec<Option<ContentHash>>, CacheError> {
        debug_assert!(files.is_sorted_by(|a, b| a.0.as_ref() <= b.0.as_ref()));
        let q = |e| self.query_error(e);
        let (under, past_dir) = prefix_range(dir);
        let abs = |rel: &P| [under.as_slice(), rel.as_ref()].concat();
        let (lo, hi) = match (files.first(), files.last()) {
            _ if prune_unlisted => (under.clone(), past_dir),
            (Some(first), Some(last)) => {
                let mut after_last = abs(&last.0);
                after_last.push(0); // the first path above it in byte order
                (abs(&first.0), after_last)
            }
            _ => return Ok(Vec::new()),
        };
        let conn = self.conn.lock().expect("no panics while holding the lock");
        let mut stmt = conn
            .prepare_cached(
                "SELECT path, dev, ino, size, mtime_ns, ctime_ns, hash, check_ FROM hashes
                 WHERE path >= ?1 AND path < ?2 ORDER BY path",
            )
            .map_err(q)?;
        let mut rows = stmt.query(params![lo, hi]).map_err(q)?;
        let mut out = vec![None; files.len()];
        let mut stale: Vec<Vec<u8>> = Vec::new();
        let mut i = 0;
        while let Some(row) = rows.next().map_err(q)? {
            let path: Vec<u8> = row.get(0).map_err(q)?;
            // Every row in the range is under `dir/`, so the rows come in the order of their
            // relative paths.
            let Some(rel) = path.strip_prefix(under.as_slice()) else {
                continue;
            };
            while i < files.len() && files[i].0.as_ref() < rel {
                i += 1;
            }
            if i < files.len() && files[i].0.as_ref() == rel {
                out[i] = Row::read(row).map_err(q)?.trusted_hash(&path, files[i].1);
                i += 1;
            } else if prune_unlisted {
                stale.push(path);
            }
        }
        drop(rows);
        drop(stmt);
        // Only a complete scan of `dir` knows that an unlisted row's file is gone.
        if !stale.is_empty() {
            let tx = conn.unchecked_transaction().map_err(q)?;
            {
                let mut del = tx
                    .prepare_cached("DELETE FROM hashes WHERE path = ?1")
                    .map_err(q)?;
                for p in &stale {
                    del.execute(params![p]).map_err(q)?;
                }
            }
            tx.commit().map_err(q)?;
        }
        Ok(out)
    }

    /// Looks up one file.
    pub fn lookup(&self, path: &[u8], stat: &FileStat) -> Result<Option<ContentHash>, CacheError> {
        let conn = self.conn.lock().expect("no panics while holding the lock");
        lookup_on(&conn, &self.path, path, stat)
    }

    /// Many single lookups in one read transaction (see [`Snapshot`]). The cache cannot be
    /// written through `self` while the snapshot lives.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, CacheError> {
        let conn = self.conn.lock().expect("no panics while holding the lock");
        conn.execute_batch("BEGIN")
            .map_err(|e| self.query_error(e))?;
        Ok(Snapshot {
            conn,
            path: &self.path,
        })
    }

    /// Records hashes in one transaction.
    pub fn store(&self, records: &[CacheRecord<'_>]) -> Result<(), CacheError> {
        if records.is_empty() {
            return Ok(());
        }
        let q = |e| self.query_error(e);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let mut conn = self.conn.lock().expect("no panics while holding the lock");
        let tx = conn.transaction().map_err(q)?;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO hashes
                     (path, dev, ino, size, mtime_ns, ctime_ns, hash, check_, hashed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(q)?;
            for r in records {
                let s = r.stat;
                ins.execute(params![
                    r.path,
                    s.dev as i64,
                    s.ino as i64,
                    s.size as i64,
                    s.mtime_ns,
                    s.ctime_ns,
                    r.hash.to_be_bytes().as_slice(),
                    check_value(r.path, s, r.hash),
                    now
                ])
                .map_err(q)?;
            }
        }
        tx.commit().map_err(q)
    }
}

impl Drop for HashCache {
    fn drop(&mut self) {
        crate::local_db::close(&mut self.conn, &self.path);
    }
}

struct Row {
    stat: FileStat,
    hash: Option<ContentHash>,
    check: i64,
}

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        let hash: Vec<u8> = r.get(6)?;
        Ok(Row {
            stat: FileStat {
                dev: r.get::<_, i64>(1)? as u64,
                ino: r.get::<_, i64>(2)? as u64,
                size: r.get::<_, i64>(3)? as u64,
                mtime_ns: r.get(4)?,
                ctime_ns: r.get(5)?,
            },
            hash: <[u8; 16]>::try_from(hash.as_slice())
                .ok()
                .map(ContentHash::from_be_bytes),
            check: r.get(7)?,
        })
    }

    /// The hash, if the row is intact and describes the file as it is now.
    fn trusted_hash(self, path: &[u8], now: &FileStat) -> Option<ContentHash> {
        let hash = self.hash?;
        if check_value(path, &self.stat, hash) != self.check {
            tracing::warn!(path = %String::from_utf8_lossy(path), "hash cache row fails its check value; ignoring it");
            return None;
        }
        (self.stat == *now).then_some(hash)
    }
}

/// XXH3-64 over every field of a row, so a damaged row is never trusted.
fn check_value(path: &[u8], s: &FileStat, hash: ContentHash) -> i64 {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    h.update(path);
    for v in [s.dev, s.ino, s.size, s.mtime_ns as u64, s.ctime_ns as u64] {
        h.update(&v.to_le_bytes());
    }
    h.update(&hash.to_be_bytes());
    h.digest() as i64
}

/// A read transaction over the cache: SQLite takes its shared lock once for all the lookups
/// made through it instead of once per query (a third of the CPU of a warm sync of 200,000
/// files went to that lock). It ends when dropped.
pub struct Snapshot<'a> {
    conn: std::sync::MutexGuard<'a, Connection>,
    path: &'a Path,
}

impl Snapshot<'_> {
    /// Looks up one file.
    pub fn lookup(&self, path: &[u8], stat: &FileStat) -> Result<Option<ContentHash>, CacheError> {
        lookup_on(&self.conn, self.path, path, stat)
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        // Nothing was written: ending the transaction cannot lose anything.
        let _ = self.conn.execute_batch("COMMIT");
    }
}

fn lookup_on(
    conn: &Connection,
    cache: &Path,
    path: &[u8],
    stat: &FileStat,
) -> Result<Option<ContentHash>, CacheError> {
    let q = |source| CacheError::Query {
        path: cache.to_path_buf(),
        source,
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT path, dev, ino, size, mtime_ns, ctime_ns, hash, check_ FROM hashes WHERE path = ?1",
        )
        .map_err(q)?;
    let row = stmt
        .query_row(params![path], Row::read)
        .optional()
        .map_err(q)?;
    Ok(row.and_then(|r| r.trusted_hash(path, stat)))
}

/// Deletes the rows from `lo` (included) to `hi` (excluded), a few thousand per statement so
/// that a cancel (`stop`) is heard between them and no statement holds the database long.
fn delete_range(
    conn: &Connection,
    lo: &[u8],
    hi: &[u8],
    stop: &dyn Fn() -> bool,
) -> rusqlite::Result<u64> {
    const CHUNK: i64 = 5000;
    let mut from = lo.to_vec();
    let mut deleted = 0;
    loop {
        let upto: Option<Vec<u8>> = conn
            .prepare_cached(
                "SELECT path FROM hashes WHERE path >= ?1 AND path < ?2 ORDER BY path LIMIT 1 OFFSET ?3",
            )?
            .query_row(params![from, hi, CHUNK], |r| r.get(0))
            .optional()?;
        let end = upto.clone().unwrap_or_else(|| hi.to_vec());
        deleted += conn
            .prepare_cached("DELETE FROM hashes WHERE path >= ?1 AND path < ?2")?
            .execute(params![from, end])? as u64;
        match upto {
            Some(next) if !stop() => from = next,
            _ => return Ok(deleted),
        }
    }
}

/// Whether `path` is gone for sure (not there, or a file where a directory was); any other
/// failure (a network mount that does not answer, a permission) keeps its rows.
fn is_gone(path: &[u8]) -> bool {
    match std::fs::symlink_metadata(std::ffi::OsStr::from_bytes(path)) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
        ),
    }
}

/// The directory a path is in (`/a` for `/a/b`, `/` for `/a`); `None` for `/` or a relative
/// path.
fn parent_of(path: &[u8]) -> Option<&[u8]> {
    let cut = path.iter().rposition(|&b| b == b'/')?;
    match cut {
        0 if path.len() > 1 => Some(&path[..1]),
        0 => None,
        _ => Some(&path[..cut]),
    }
}

/// The key range of every path strictly below `dir`: `dir/` ≤ key < `dir0` ('0' follows '/').
fn prefix_range(dir: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let base = dir.strip_suffix(b"/").unwrap_or(dir);
    let mut lo = base.to_vec();
    lo.push(b'/');
    let mut hi = base.to_vec();
    hi.push(b'/' + 1);
    (lo, hi)
}

fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Why the cache could not be opened: held locked by another process past the busy timeout,
/// a full disk, or anything else (permissions, mostly).
fn open_error(path: &Path, source: rusqlite::Error) -> CacheError {
    let path = path.to_path_buf();
    if crate::local_db::is_busy(&source) {
        CacheError::Locked { path, source }
    } else if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        CacheError::Full { path, source }
    } else {
        CacheError::Open { path, source }
    }
}

fn io_to_sqlite(e: std::io::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stat(size: u64) -> FileStat {
        FileStat {
            dev: 1,
            ino: 2,
            size,
            mtime_ns: 10,
            ctime_ns: 20,
        }
    }

    /// A cache in `t/cache` that knows `files` (paths under `t`), and those of them that are
    /// made on disk (`made`).
    fn cache_knowing(t: &Path, files: &[&str], made: &[&str]) -> HashCache {
        for f in made {
            let p = t.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x").unwrap();
        }
        let cache = HashCache::open(&t.join("cache")).unwrap();
        let paths: Vec<Vec<u8>> = files
            .iter()
            .map(|f| t.join(f).into_os_string().into_encoded_bytes())
            .collect();
        let st = stat(1);
        let records: Vec<CacheRecord<'_>> = paths
            .iter()
            .map(|p| CacheRecord {
                path: p,
                stat: &st,
                hash: ContentHash::of(b"x"),
            })
            .collect();
        cache.store(&records).unwrap();
        cache
    }

    fn known(cache: &HashCache, t: &Path) -> Vec<String> {
        let conn = cache.conn.lock().unwrap();
        let mut st = conn
            .prepare("SELECT path FROM hashes ORDER BY path")
            .unwrap();
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap();
        let base = t.as_os_str().len() + 1;
        rows.map(|p| String::from_utf8(p.unwrap()[base..].to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn the_files_of_sessions_no_longer_there_are_forgotten_and_no_others() {
        let t = tempfile::tempdir().unwrap();
        let files = [
            "sessions/s1/assetroot-a/scene.ma",
            "sessions/s1/assetroot-a/tex/a.png",
            "sessions/s2/assetroot-a/scene.ma",
            "sessions/s2/assetroot-a/tex/a.png",
            // Sorts between `s2` and `s2/…` (' ' < '/'): a sibling, not part of s2.
            "sessions/s2 old/f",
            "sessions/s3/f",
            "sessions/s4",
            // Sorts between the file `s4` and where its subtree would be.
            "sessions/s4-kept/f",
            "proj/shot/f",
        ];
        let made = [files[0], files[1], files[4], files[7], files[8]];
        let cache = cache_knowing(t.path(), &files, &made);
        // s2 and s3 (directories) and s4 (a file) are gone; `s2 old` and `s4-kept` are there.
        let (gone, rows) = cache
            .forget_vanished_in(
                &t.path().join("sessions"),
                &t.path().join("sessions/s5"),
                &|| false,
            )
            .unwrap();
        assert_eq!((gone, rows), (3, 4));
        assert_eq!(
            known(&cache, t.path()),
            [files[8], files[0], files[1], files[4], files[7]].map(String::from)
        );
        // Again: nothing more to forget.
        assert_eq!(
            cache
                .forget_vanished_in(
                    &t.path().join("sessions"),
                    &t.path().join("sessions/s5"),
                    &|| false
                )
                .unwrap(),
            (0, 0)
        );
    }

    #[test]
    fn a_pass_over_the_whole_cache_forgets_each_directory_gone_once() {
        let t = tempfile::tempdir().unwrap();
        let files = [
            "a/keep/f1",
            "a/keep/f2",
            "a/gone/deep/x/f",
            "a/gone/deep/y/f",
            "a/gone/g",
            "b/also gone/f",
            "c/f",
        ];
        let made = [files[0], files[1], files[6]];
        let cache = cache_knowing(t.path(), &files, &made);
        // `a/gone` and `b` are gone: one range each, whatever was under them.
        let (dirs, rows) = cache.forget_vanished(&|| false).unwrap();
        assert_eq!((dirs, rows), (2, 4));
        assert_eq!(
            known(&cache, t.path()),
            [files[0], files[1], files[6]].map(String::from)
        );
        assert_eq!(cache.forget_vanished(&|| false).unwrap(), (0, 0));
    }

    #[test]
    fn a_snapshot_answers_like_lookup_and_does_not_block_other_writers() {
        let t = tempfile::tempdir().unwrap();
        let c = HashCache::open(t.path()).unwrap();
        let (ha, hb) = (ContentHash::of(b"a"), ContentHash::of(b"b"));
        let s1 = stat(1);
        let rec = |path: &'static [u8], hash| CacheRecord {
            path,
            stat: &s1,
            hash,
        };
        c.store(&[rec(b"/r/a", ha)]).unwrap();
        let snap = c.snapshot().unwrap();
        assert_eq!(snap.lookup(b"/r/a", &stat(1)).unwrap(), Some(ha));
        assert_eq!(snap.lookup(b"/r/a", &stat(2)).unwrap(), None);
        assert_eq!(snap.lookup(b"/r/b", &stat(1)).unwrap(), None);
        // Another process writes while the snapshot is open: no wait for its lock.
        let other = HashCache::open(t.path()).unwrap();
        let started = std::time::Instant::now();
        other.store(&[rec(b"/r/b", hb)]).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(snap);
        assert_eq!(c.lookup(b"/r/b", &stat(1)).unwrap(), Some(hb));
        // The connection is usable for writes again.
        c.store(&[rec(b"/r/c", ha)]).unwrap();
        assert_eq!(other.lookup(b"/r/c", &stat(1)).unwrap(), Some(ha));
    }

    /// Closing does not fold a small log into the database (`local_db`: that flushes the
    /// disk's backlog before the process can exit); what was stored is still there.
    #[test]
    fn closing_keeps_the_log_and_loses_nothing() {
        let t = tempfile::tempdir().unwrap();
        let h = ContentHash::of(b"a");
        let s1 = stat(1);
        let c = HashCache::open(t.path()).unwrap();
        c.store(&[CacheRecord {
            path: b"/r/a",
            stat: &s1,
            hash: h,
        }])
        .unwrap();
        drop(c);
        let wal = t.path().join(format!("{FILE_NAME}-wal"));
        assert!(
            wal.metadata().unwrap().len() > 0,
            "the log was folded in on close"
        );
        assert_eq!(
            HashCache::open(t.path())
                .unwrap()
                .lookup(b"/r/a", &stat(1))
                .unwrap(),
            Some(h)
        );
    }

    #[test]
    fn hit_only_when_every_stat_field_matches() {
        let t = tempfile::tempdir().unwrap();
        let c = HashCache::open(t.path()).unwrap();
        let h = ContentHash::of(b"x");
        c.store(&[CacheRecord {
            path: b"/r/a",
            stat: &stat(1),
            hash: h,
        }])
        .unwrap();
        assert_eq!(c.lookup(b"/r/a", &stat(1)).unwrap(), Some(h));
        for changed in [
            FileStat { size: 2, ..stat(1) },
            FileStat {
                mtime_ns: 11,
                ..stat(1)
            },
            FileStat {
                ctime_ns: 21,
                ..stat(1)
            },
            FileStat { ino: 3, ..stat(1) },
            FileStat { dev: 9, ..stat(1) },
        ] {
            assert_eq!(c.lookup(b"/r/a", &changed).unwrap(), None, "{changed:?}");
        }
    }

    #[test]
    fn survives_reopen_and_is_shared_between_handles() {
        let t = tempfile::tempdir().unwrap();
        let a = HashCache::open(t.path()).unwrap();
        let b = HashCache::open(t.path()).unwrap();
        let h = ContentHash::of(b"y");
        a.store(&[CacheRecord {
            path: b"/r/y",
            stat: &stat(1),
            hash: h,
        }])
        .unwrap();
        assert_eq!(b.lookup(b"/r/y", &stat(1)).unwrap(), Some(h));
        drop((a, b));
        let c = HashCache::open(t.path()).unwrap();
        assert_eq!(c.lookup(b"/r/y", &stat(1)).unwrap(), Some(h));
    }

    #[test]
    fn batch_lookup_matches_and_prunes_stale_rows() {
        let t = tempfile::tempdir().unwrap();
        let c = HashCache::open(t.path()).unwrap();
        let (ha, hc) = (ContentHash::of(b"a"), ContentHash::of(b"c"));
        let s = stat(1);
        c.store(&[
            CacheRecord {
                path: b"/r/a",
                stat: &s,
                hash: ha,
            },
            CacheRecord {
                path: b"/r/b-deleted",
                stat: &s,
                hash: ha,
            },
            CacheRecord {
                path: b"/r/c",
                stat: &s,
                hash: hc,
            },
            CacheRecord {
                path: b"/r0/other-root",
                stat: &s,
                hash: hc,
            },
            CacheRecord {
                path: b"/rr/other-root",
                stat: &s,
                hash: hc,
            },
        ])
        .unwrap();
        let files: Vec<(&[u8], &FileStat)> = vec![(b"a", &s), (b"c", &s), (b"new", &s)];
        // A partial list (some files of the root) prunes nothing.
        assert_eq!(
            c.lookup_sorted(b"/r", &files, false).unwrap(),
            vec![Some(ha), Some(hc), None]
        );
        // Its scan covers only the listed span: each end is found.
        let ends: Vec<(&[u8], &FileStat)> = vec![(b"c", &s)];
        assert_eq!(c.lookup_sorted(b"/r", &ends, false).unwrap(), [Some(hc)]);
        let ends: Vec<(&[u8], &FileStat)> = vec![(b"a", &s), (b"b-deleted", &s)];
        assert_eq!(
            c.lookup_sorted(b"/r", &ends, false).unwrap(),
            [Some(ha), Some(ha)]
        );
        assert_eq!(c.lookup_sorted::<&[u8]>(b"/r", &[], false).unwrap(), []);
        assert_eq!(
            c.lookup(b"/r/b-deleted", &s).unwrap(),
            Some(ha),
            "kept: the list was partial"
        );
        assert_eq!(
            c.lookup_sorted(b"/r", &files, true).unwrap(),
            vec![Some(ha), Some(hc), None]
        );
        assert_eq!(
            c.lookup(b"/r/b-deleted", &s).unwrap(),
            None,
            "stale row pruned"
        );
        assert_eq!(
            c.lookup(b"/r0/other-root", &s).unwrap(),
            Some(hc),
            "other roots kept"
        );
        assert_eq!(
            c.lookup(b"/rr/other-root", &s).unwrap(),
            Some(hc),
            "other roots kept"
        );
    }

    #[test]
    fn a_row_with_a_wrong_check_value_is_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let c = HashCache::open(t.path()).unwrap();
        c.store(&[CacheRecord {
            path: b"/r/a",
            stat: &stat(1),
            hash: ContentHash::of(b"a"),
        }])
        .unwrap();
        let conn = Connection::open(t.path().join(FILE_NAME)).unwrap();
        conn.execute(
            "UPDATE hashes SET hash = ?1",
            params![ContentHash::of(b"evil").to_be_bytes().as_slice()],
        )
        .unwrap();
        assert_eq!(c.lookup(b"/r/a", &stat(1)).unwrap(), None);
    }

    #[test]
    fn a_damaged_database_is_moved_aside() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(FILE_NAME), vec![0xAB; 8192]).unwrap();
        let c = HashCache::open(t.path()).unwrap();
        c.store(&[CacheRecord {
            path: b"/r/a",
            stat: &stat(1),
            hash: ContentHash::of(b"a"),
        }])
        .unwrap();
        let names: Vec<String> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n.contains(".damaged-")), "{names:?}");
    }

    /// A cache another process keeps locked, or on a full disk, is named as such, not as a
    /// permissions problem.
    #[test]
    fn a_locked_cache_says_who_holds_it_and_what_to_do() {
        let message = |code: std::ffi::c_int| {
            let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
            open_error(Path::new("/c/hash-cache-v1.sqlite3"), e).to_string()
        };
        let msg = message(rusqlite::ffi::SQLITE_BUSY);
        assert!(msg.contains("another attache process"), "{msg}");
        assert!(msg.contains("--no-cache"), "{msg}");
        assert!(!msg.contains("permissions"), "{msg}");
        let msg = message(rusqlite::ffi::SQLITE_CANTOPEN);
        assert!(msg.contains("permissions of cache.dir"), "{msg}");
        let msg = message(rusqlite::ffi::SQLITE_FULL);
        assert!(msg.contains("disk of cache.dir is full"), "{msg}");
        assert!(msg.contains("--no-cache"), "{msg}");
        assert!(!msg.contains("permissions"), "{msg}");
    }
}
