//! Records hashes in the hash cache from a thread of its own, in batches, while a download
//! goes on: the files it placed (and the files its plan had to read) are trusted by the next
//! sync without being read again.
//!
//! Senders never wait: records queue in memory until the thread commits them (one transaction
//! per [`BATCH`] records or per [`LINGER`], so a slow trickle of files still lands).

use std::path::Path;
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

enum Msg {
    Record(Owned),
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
}

fn record_all(cache: &HashCache, rx: &mpsc::Receiver<Msg>) {
    let mut batch: Vec<Owned> = Vec::with_capacity(BATCH);
    let mut finished = false;
    while !finished {
        match rx.recv() {
            Ok(Msg::Record(r)) => batch.push(r),
            Ok(Msg::Finish) | Err(_) => return,
        }
        let until = Instant::now() + LINGER;
        while batch.len() < BATCH {
            match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Msg::Record(r)) => batch.push(r),
                Ok(Msg::Finish) => {
                    finished = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    finished = true;
                    break;
                }
            }
        }
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
