//! Records hashes in the hash cache from a thread of its own, in batches, while a download
//! goes on: the files it placed (and the files its plan had to read) are trusted by the next
//! sync without being read again.
//!
//! Senders never wait: records queue in memory until the thread commits them (one transaction
//! per [`BATCH`] records or per [`LINGER`], so a slow trickle of files still lands).
//!
//! Records can also come as one stream in path order ([`RecordSink::record_in_order`]), pulled
//! by the thread as it commits them. The table is keyed by path: records in key order fill
//! each page of it once, where the same records in the order files land (no order at all)
//! rewrite a random page each. That is what makes recording many small files cheap.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ContentHash;
use super::cache::{CacheRecord, HashCache};
use crate::scan::FileStat;

/// Records per transaction, at most.
const BATCH: usize = 1024;

/// How long a record may wait for others to share its transaction.
const LINGER: Duration = Duration::from_millis(200);

struct Owned {
    path: Box<[u8]>,
    stat: FileStat,
    hash: ContentHash,
}

/// Records in path order, made as they are pulled (so none wait in memory as paths).
type InOrder = Box<dyn Iterator<Item = (PathBuf, FileStat, ContentHash)> + Send>;

enum Msg {
    Record(Owned),
    InOrder(InOrder),
    /// Commit what came before and stop. Explicit, rather than waiting for every sender to be
    /// dropped: a task cut short by a cancel may hold a sink a while longer.
    Finish,
}

/// The recording thread. [`CacheRecorder::finish`] waits until everything sent is committed.
pub struct CacheRecorder {
    tx: mpsc::Sender<Msg>,
    thread: JoinHandle<()>,
}

/// Where a download sends what it placed; cheap to clone into every task.
#[derive(Clone)]
pub struct RecordSink(mpsc::Sender<Msg>);

impl CacheRecorder {
    /// Starts the thread; it owns `cache` (a connection of its own, so it writes while other
    /// connections read).
    pub fn start(cache: HashCache) -> std::io::Result<CacheRecorder> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("attache-cache".into())
            .spawn(move || record_all(&cache, &rx))?;
        Ok(CacheRecorder { tx, thread })
    }

    pub fn sink(&self) -> RecordSink {
        RecordSink(self.tx.clone())
    }

    /// Commits everything recorded so far and ends the thread; later records are dropped.
    /// Blocks for one transaction (longer while another process holds the cache's write
    /// lock): call it from a blocking thread.
    pub fn finish(self) {
        let _ = self.tx.send(Msg::Finish);
        let _ = self.thread.join();
    }

    /// Like [`Self::finish`] without waiting: for a cancelled or failed job, which must not
    /// wait on the cache. What was recorded is committed if the process lives long enough.
    pub fn detach(self) {
        let _ = self.tx.send(Msg::Finish);
    }
}

impl RecordSink {
    /// `path` is absolute; `stat` is what the file looked like when its content was `hash`.
    pub fn record(&self, path: &Path, stat: FileStat, hash: ContentHash) {
        use std::os::unix::ffi::OsStrExt;
        // Fails only when the thread has finished: the cache is an optimization.
        let _ = self.0.send(Msg::Record(Owned {
            path: path.as_os_str().as_bytes().into(),
            stat,
            hash,
        }));
    }

    /// Records `records`, which must come sorted by path, after what was sent before. The
    /// thread pulls them one transaction at a time: nothing is built ahead of the commits.
    pub fn record_in_order<I>(&self, records: I)
    where
        I: Iterator<Item = (PathBuf, FileStat, ContentHash)> + Send + 'static,
    {
        let _ = self.0.send(Msg::InOrder(Box::new(records)));
    }
}

fn record_all(cache: &HashCache, rx: &mpsc::Receiver<Msg>) {
    let mut batch: Vec<Owned> = Vec::with_capacity(BATCH);
    loop {
        match rx.recv() {
            Ok(Msg::Record(r)) => batch.push(r),
            Ok(Msg::InOrder(records)) => {
                commit_in_order(cache, records, &mut batch);
                continue;
            }
            Ok(Msg::Finish) | Err(_) => return,
        }
        let until = Instant::now() + LINGER;
        while batch.len() < BATCH {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Msg::Record(r)) => batch.push(r),
                Ok(Msg::InOrder(records)) => {
                    // What came first is committed first.
                    commit(cache, &mut batch);
                    commit_in_order(cache, records, &mut batch);
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Ok(Msg::Finish) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    commit(cache, &mut batch);
                    return;
                }
            }
        }
        commit(cache, &mut batch);
    }
}

/// Commits `records` in transactions of [`BATCH`], using `batch` (empty) as the buffer.
fn commit_in_order(cache: &HashCache, records: InOrder, batch: &mut Vec<Owned>) {
    use std::os::unix::ffi::OsStringExt;
    for (path, stat, hash) in records {
        let path = path.into_os_string().into_vec().into_boxed_slice();
        batch.push(Owned { path, stat, hash });
        if batch.len() == BATCH {
            commit(cache, batch);
        }
    }
    commit(cache, batch);
}

/// Commits `batch` in one transaction and empties it. A failure is logged: the cache is an
/// optimization, and the files it would have vouched for are hashed by the next sync.
fn commit(cache: &HashCache, batch: &mut Vec<Owned>) {
    let records: Vec<CacheRecord<'_>> = batch
        .iter()
        .map(|r| CacheRecord {
            path: &r.path,
            stat: &r.stat,
            hash: r.hash,
        })
        .collect();
    if let Err(e) = cache.store(&records) {
        tracing::warn!("{e}");
    }
    drop(records);
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_sent_before_finish_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let rec = CacheRecorder::start(HashCache::open(dir.path()).unwrap()).unwrap();
        let sink = rec.sink();
        let files: Vec<_> = (0..(BATCH as u64 + 10))
            .map(|i| {
                let stat = FileStat {
                    dev: 1,
                    ino: 100 + i,
                    size: i,
                    mtime_ns: 10,
                    ctime_ns: 20,
                };
                (format!("/d/f{i}"), stat, ContentHash(i as u128 + 7))
            })
            .collect();
        for (p, s, h) in &files {
            sink.record(Path::new(p), s.clone(), *h);
        }
        // A sink still held (a task cut short by a cancel) does not hold up the finish, and
        // what it sends afterwards is dropped.
        rec.finish();
        sink.record(Path::new("/d/late"), files[0].1.clone(), ContentHash(1));
        let cache = HashCache::open(dir.path()).unwrap();
        for (p, s, h) in &files {
            assert_eq!(cache.lookup(p.as_bytes(), s).unwrap(), Some(*h), "{p}");
        }
    }

    #[test]
    fn records_in_path_order_land_after_what_was_sent_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let rec = CacheRecorder::start(HashCache::open(dir.path()).unwrap()).unwrap();
        let sink = rec.sink();
        let stat = |ino| FileStat {
            dev: 1,
            ino,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
        };
        sink.record(Path::new("/d/a"), stat(1), ContentHash(1));
        // Over three transactions, the last one partial; the first record names /d/a again.
        let ordered: Vec<_> = std::iter::once((PathBuf::from("/d/a"), stat(1), ContentHash(2)))
            .chain((0..(2 * BATCH as u64 + 3)).map(|i| {
                (
                    PathBuf::from(format!("/d/o{i:05}")),
                    stat(10 + i),
                    ContentHash(i.into()),
                )
            }))
            .collect();
        sink.record_in_order(ordered.clone().into_iter());
        sink.record(Path::new("/d/z"), stat(2), ContentHash(3));
        rec.finish();
        let cache = HashCache::open(dir.path()).unwrap();
        for (p, s, h) in &ordered {
            let p = p.to_str().unwrap();
            assert_eq!(cache.lookup(p.as_bytes(), s).unwrap(), Some(*h), "{p}");
        }
        assert_eq!(
            cache.lookup(b"/d/z", &stat(2)).unwrap(),
            Some(ContentHash(3))
        );
    }

    #[test]
    fn a_detached_recorder_still_commits_what_it_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let rec = CacheRecorder::start(HashCache::open(dir.path()).unwrap()).unwrap();
        let stat = FileStat {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
        };
        rec.sink()
            .record(Path::new("/d/f"), stat.clone(), ContentHash(9));
        rec.detach();
        let cache = HashCache::open(dir.path()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.lookup(b"/d/f", &stat).unwrap().is_none() {
            assert!(Instant::now() < deadline, "never committed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
