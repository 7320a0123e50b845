//! The SQLite files attache keeps on each machine (the hash cache, the known-present index):
//! how a connection to one is opened and closed, the same for both.
//!
//! Closing: the last connection to close would otherwise copy the log into the database and
//! flush both to disk before the process can exit, a wait of its own for the disk's whole
//! backlog (0.2–0.4 s after a cancelled 4 GiB upload, on top of the cancel). So SQLite's
//! checkpoint on close is off: a small log is kept and folded in by a later commit (SQLite
//! does that every 1,000 pages); nothing is lost. A large one (hashing 200,000 files leaves
//! 30 MiB) is folded in and truncated by [`close`], flush included, rather than left in the
//! cache directory until the next write.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

/// The largest log left beside a database when its connection closes.
const KEEP_LOG_UP_TO: u64 = 8 << 20;

/// How long a connection waits for another one's lock, and how long [`open`] keeps trying.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens (creating if needed) the database at `path` in WAL mode, with the caller's `schema`
/// (`CREATE TABLE IF NOT EXISTS …`) applied.
///
/// Two connections setting up the same new file at once (two daemon jobs starting together
/// with one cache dir) can get "database is locked" at once, whatever the busy timeout:
/// switching the file to WAL, or creating a table the other has just created, is a lock
/// upgrade SQLite refuses rather than waits for (waiting could deadlock). The setup is tried
/// again then, for as long as the busy timeout.
pub fn open(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match connect(path, schema) {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2 + rand::random::<u64>() % 20));
            }
            result => return result,
        }
    }
}

fn connect(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Other attache processes may hold the write lock briefly; wait rather than fail.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a power cut may lose the last commits, never corrupt the file.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

/// SQLite's "database is locked" (another connection holds the lock it needs).
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// For the owner's `Drop`: folds a log over [`KEEP_LOG_UP_TO`] into the database at `path`.
pub fn close(conn: &mut Mutex<Connection>, path: &Path) {
    if let Ok(conn) = conn.get_mut() {
        fold_large_log(conn, path, KEEP_LOG_UP_TO);
    }
}

/// A log over `keep` bytes is folded into the database and truncated. Another process using
/// the database makes it give up at once; its own close or commits fold it.
fn fold_large_log(conn: &Connection, db: &Path, keep: u64) {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > keep) {
        let _ = conn.busy_timeout(Duration::ZERO);
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_len(db: &Path) -> u64 {
        std::fs::metadata(format!("{}-wal", db.display()))
            .unwrap()
            .len()
    }

    fn count(db: &Path) -> i64 {
        open(db, "")
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// Closing keeps a small log (no flush before exit), and loses nothing.
    #[test]
    fn a_small_log_is_kept_on_close() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("db.sqlite3");
        let mut conn =
            Mutex::new(open(&db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap());
        close(&mut conn, &db);
        drop(conn);
        assert!(log_len(&db) > 0, "the log was folded in on close");
        assert_eq!(count(&db), 1);
    }

    #[test]
    fn a_log_over_the_limit_is_folded_in_and_truncated() {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("db.sqlite3");
        let conn = open(&db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
        fold_large_log(&conn, &db, u64::MAX);
        assert!(log_len(&db) > 0, "under the limit: kept");
        fold_large_log(&conn, &db, 0);
        assert_eq!(log_len(&db), 0, "over the limit: truncated");
        drop(conn);
        assert_eq!(count(&db), 1);
    }

    /// Daemon jobs starting together open the same new cache file at once: every one gets it.
    #[test]
    fn connections_setting_up_one_new_file_at_once_all_get_it() {
        let t = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let db = t.path().join(format!("db-{round}.sqlite3"));
            let start = std::sync::Barrier::new(6);
            std::thread::scope(|s| {
                let opened: Vec<_> = (0..6)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            open(&db, "CREATE TABLE IF NOT EXISTS t (x);").map(drop)
                        })
                    })
                    .collect();
                for o in opened {
                    o.join().unwrap().unwrap();
                }
            });
        }
    }
}
