//! Records hashes in the hash cache from a thread of its own, in batches, while a download
//! goes on: the files it placed (and the files its plan had to read) are trusted by the next
//! sync without being read again.
//!
//! Records queue in memory until the thread commits them (one transaction per [`BATCH`]
//! records or per [`LINGER`], so a slow trickle of files still lands). At most [`QUEUED`] wait:
//! past that a sender waits for a commit. Copying a million small files outran the thread,
//! which shares two vCPUs with the copies, and the queue grew by 90 MiB.
//!
//! The table is keyed by path, so records sent nearly in path order are cheap to commit: each
//! transaction fills a few neighbouring pages, where records in no order rewrite a random
//! page each. Downloads place small files in path order for that reason.

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::ContentHash;
use super::cache::{CacheRecord, HashCache};
use crate::scan::FileStat;

/// Records per transaction, at most.
const BATCH: usize = 1024;

/// Records sent and not yet committed, at most.
const QUEUED: usize = 8 * BATCH;

/// How often the thread looks for more records while it gathers a transaction.
const TICK: Duration = Duration::from_millis(10);

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
    sink: RecordSink,
    thread: JoinHandle<()>,
}

/// Where a download sends what it placed; cheap to clone into every task.
#[derive(Clone)]
pub struct RecordSink {
    tx: mpsc::Sender<Msg>,
    /// One permit per record that may still be queued; the thread gives them back as it
    /// commits, and closes it when it ends (so no sender waits for a thread that is gone).
    room: Arc<Semaphore>,
}

impl CacheRecorder {
    /// Starts the thread; it owns `cache` (a connection of its own, so it writes while other
    /// connections read).
    pub fn start(cache: HashCache) -> std::io::Result<CacheRecorder> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let room = Arc::new(Semaphore::new(QUEUED));
        let thread = std::thread::Builder::new()
            .name("attache-cache".into())
            .spawn({
                let room = room.clone();
                move || {
                    let room = CloseOnDrop(room);
                    record_all(&cache, &rx, &room.0);
                }
            })?;
        Ok(CacheRecorder {
            sink: RecordSink { tx, room },
            thread,
        })
    }

    pub fn sink(&self) -> RecordSink {
        self.sink.clone()
    }

    /// Commits everything recorded so far and ends the thread; later records are dropped.
    /// Blocks for one transaction (longer while another process holds the cache's write
    /// lock): call it from a blocking thread.
    pub fn finish(self) {
        let _ = self.sink.tx.send(Msg::Finish);
        let _ = self.thread.join();
    }

    /// Like [`Self::finish`] without waiting: for a cancelled job, which must not
    /// wait on the cache. What was recorded is committed if the process lives long enough.
    pub fn detach(self) {
        let _ = self.sink.tx.send(Msg::Finish);
    }
}

impl RecordSink {
    /// `path` is absolute; `stat` is what the file looked like when its content was `hash`.
    /// Waits while [`QUEUED`] records are queued.
    pub async fn record(&self, path: &Path, stat: FileStat, hash: ContentHash) {
        use std::os::unix::ffi::OsStrExt;
        // Closed only when the thread has finished: the record is dropped (the cache is an
        // optimization).
        if let Ok(permit) = self.room.acquire().await {
            permit.forget();
            let _ = self.tx.send(Msg::Record(Owned {
                path: path.as_os_str().as_bytes().into(),
                stat,
                hash,
            }));
        }
    }

    /// [`Self::record`] from a blocking thread.
    pub fn record_blocking(&self, path: &Path, stat: FileStat, hash: ContentHash) {
        futures::executor::block_on(self.record(path, stat, hash));
    }
}

/// Closes the queue however the thread ends, a panic included: a sender waiting for room
/// then goes on (its record dropped) instead of waiting for a thread that is gone.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn record_all(cache: &HashCache, rx: &mpsc::Receiver<Msg>, room: &Semaphore) {
    let mut batch: Vec<Owned> = Vec::with_capacity(BATCH);
    loop {
        // Idle: wait for the first record.
        match rx.recv() {
            Ok(Msg::Record(r)) => batch.push(r),
            Ok(Msg::Finish) | Err(_) => return,
        }
        // Then gather the rest by polling every TICK rather than waiting on the channel:
        // a thread waiting there is woken by every send (a system call and a context switch
        // per file: 2 s of system time in a 200,000-file download).
        let until = Instant::now() + LINGER;
        loop {
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(Msg::Record(r)) => batch.push(r),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Ok(Msg::Finish) | Err(mpsc::TryRecvError::Disconnected) => {
                        commit(cache, &mut batch);
                        return;
                    }
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if batch.len() == BATCH || left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(TICK));
        }
        let committed = batch.len();
        commit(cache, &mut batch);
        room.add_permits(committed);
    }
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

    fn a_stat() -> FileStat {
        FileStat {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
        }
    }

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
            sink.record_blocking(Path::new(p), s.clone(), *h);
        }
        // A sink still held (a task cut short by a cancel) does not hold up the finish, and
        // what it sends afterwards is dropped.
        rec.finish();
        sink.record_blocking(Path::new("/d/late"), files[0].1.clone(), ContentHash(1));
        let cache = HashCache::open(dir.path()).unwrap();
        for (p, s, h) in &files {
            assert_eq!(cache.lookup(p.as_bytes(), s).unwrap(), Some(*h), "{p}");
        }
    }

    #[test]
    fn senders_never_wait_for_a_recorder_that_has_ended() {
        let dir = tempfile::tempdir().unwrap();
        let rec = CacheRecorder::start(HashCache::open(dir.path()).unwrap()).unwrap();
        let sink = rec.sink();
        rec.finish();
        // More than the queue holds: without the thread to commit them, a sender would wait
        // for room forever.
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let stat = a_stat();
            for i in 0..(QUEUED + 10) {
                sink.record_blocking(Path::new(&format!("/d/f{i}")), stat.clone(), ContentHash(1));
            }
            done_tx.send(()).unwrap();
        });
        done.recv_timeout(Duration::from_secs(10))
            .expect("a sender waited for a recorder that had ended");
    }

    #[test]
    fn a_recorder_thread_that_panics_still_closes_the_queue() {
        let room = Arc::new(Semaphore::new(0));
        let guard = CloseOnDrop(room.clone());
        let ended = std::thread::spawn(move || {
            let _guard = guard;
            panic!("a commit panicked");
        })
        .join();
        assert!(ended.is_err());
        // No room left and no thread to make any: a sender must not wait.
        assert!(futures::executor::block_on(room.acquire()).is_err());
    }

    #[test]
    fn a_detached_recorder_still_commits_what_it_was_sent() {
        let dir = tempfile::tempdir().unwrap();
        let rec = CacheRecorder::start(HashCache::open(dir.path()).unwrap()).unwrap();
        let stat = a_stat();
        rec.sink()
            .record_blocking(Path::new("/d/f"), stat.clone(), ContentHash(9));
        rec.detach();
        let cache = HashCache::open(dir.path()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.lookup(b"/d/f", &stat).unwrap().is_none() {
            assert!(Instant::now() < deadline, "never committed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
