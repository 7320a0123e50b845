//! Multipart uploads this machine started and has not completed or aborted yet: one small
//! record each in `<cache.dir>/open-uploads/`, so that an upload a cancel could not wait to
//! see aborted, or that a crash, a kill or a lost store left open, is resumed by the next
//! upload of the same object or aborted by the next upload to the same store, instead of
//! keeping its parts (billed storage) in the bucket. The aborts spare an upload a failure
//! kept (`kept_at`) or a crash left (a kill, a power cut: see [`Heartbeat`]) for
//! `transfer.resume_for` since its run stopped, so that the run after it resumes rather than
//! starts again; one the user cancelled, or that failed for good, is marked `given_up` before
//! its abort is sent, so an abort the store did not confirm is repeated by the next run, not
//! spared.
//!
//! Why a lock: the process that runs an upload holds an exclusive `flock` on its record until
//! the upload is completed or aborted. The kernel drops the lock with the process, so a
//! record that can be locked is a leftover whatever ended its owner, and a record in use by
//! another job or process on the machine is never touched.
//!
//! Why a heartbeat: a crash cannot write down when it came. A running upload sets its
//! record's modification time as its parts land, so a crash's record says when its run last
//! worked: `resume_for` counts from then (a long upload killed hours in is still resumed),
//! and the parts another machine sends after taking the upload over are told from the
//! crashed run's own (`abandoned_uploads::taken_over_since`).

use std::collections::{HashMap, HashSet};
use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::clock::now_secs;

/// The records' directory, under `cache.dir`.
pub const DIR_NAME: &str = "open-uploads";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot record the multipart upload of {key} in {dir}: {source} (check that cache.dir is writable)"
)]
pub struct RecordError {
    key: String,
    dir: PathBuf,
    source: std::io::Error,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    /// The store's `identity()`, which the records of a store are matched by.
    store: String,
    /// The store's URL, to open it again (records written before there was `url` have it
    /// in `store`).
    #[serde(default)]
    url: String,
    key: String,
    upload_id: String,
    /// Unix seconds.
    started_at: u64,
    /// Unix seconds: when a failure left the upload open for a later run to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kept_at: Option<u64>,
    /// The upload is being aborted (a cancel, a lasting failure): not one to spare.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    given_up: bool,
}

/// The records of one machine (one cache dir).
#[derive(Debug, Clone)]
pub struct OpenUploads {
    dir: PathBuf,
}

/// A record, locked by this process: while an upload runs, or while a leftover is aborted.
#[derive(Debug)]
pub struct Held {
    path: PathBuf,
    _lock: File,
}

/// A running upload's sign of life: sets its record's modification time (see the module's
/// doc). Cheap to clone; a beat within the same second as the last one is not due.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    path: Arc<Path>,
    last: Arc<AtomicU64>,
}

impl Heartbeat {
    /// Whether a beat is due: none yet this second. Claims it.
    pub fn due(&self) -> bool {
        let now = now_secs();
        self.last.swap(now, Relaxed) != now
    }

    /// Sets the record's modification time to now (system calls: off the async runtime). A
    /// failure is logged: the record then says its run stopped earlier than it did.
    pub fn beat(&self) {
        // Opened anew, not the locked file duplicated: a duplicate would keep the lock while
        // a beat is under way after the upload is done; a `flock` stays with the first open.
        let set = File::open(&self.path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
        if let Err(e) = set {
            tracing::debug!("cannot set the time of {}: {e}", self.path.display());
        }
    }
}

impl Held {
    /// The heartbeat of the upload holding this record.
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            path: self.path.as_path().into(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The upload is completed or aborted: its record goes. Dropping a `Held` without this
    /// keeps the record, unlocked, for the next upload to the store to abort.
    pub fn done(self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", self.path.display());
        }
    }

    /// A failure left the upload open to be resumed: the record says since when, so that
    /// other runs leave it alone for `transfer.resume_for` ([`Leftover::kept_for_resume`]).
    /// It is unlocked when this returns. A record that cannot be rewritten stays as it was.
    pub fn keep_for_resume(mut self) {
        if let Err(e) = self.rewrite(|r| {
            r.kept_at = Some(now_secs());
            r.given_up = false;
        }) {
            tracing::warn!("cannot mark {} for resuming: {e}", self.path.display());
        }
    }

    /// A run resumes the upload: the record is a running upload's again (neither kept nor
    /// given up), so that should this run crash too, the record says so, and when. Still
    /// locked after; a record that cannot be rewritten stays as it was.
    pub fn resume(&mut self) {
        if let Err(e) = self.rewrite(|r| {
            r.kept_at = None;
            r.given_up = false;
        }) {
            tracing::debug!("cannot mark {} resumed: {e}", self.path.display());
        }
    }

    /// The upload is about to be aborted: should the store not confirm it, the next run
    /// aborts it again rather than sparing it as a crash's leftover. Still locked after.
    pub fn give_up(&mut self) {
        if let Err(e) = self.rewrite(|r| {
            r.kept_at = None;
            r.given_up = true;
        }) {
            tracing::debug!("cannot mark {} given up: {e}", self.path.display());
        }
    }

    /// Replaces the record with `change` applied, whole (written beside it, locked, then
    /// renamed over it), and holds the new one.
    fn rewrite(&mut self, change: impl FnOnce(&mut Record)) -> std::io::Result<()> {
        let mut record: Record =
            serde_json::from_slice(&std::fs::read(&self.path)?).map_err(std::io::Error::other)?;
        change(&mut record);
        self._lock = write_locked(&self.path, &record)?;
        Ok(())
    }
}

/// Writes `record` at `path` (replacing any record there) complete and locked before it gets
/// its name, so nobody sees it half-written or unlocked; returns the locked file.
fn write_locked(path: &Path, record: &Record) -> std::io::Result<File> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = crate::fsutil::temp_file_in(dir, ".record-", ".tmp")?;
    tmp.as_file().lock()?;
    tmp.write_all(&serde_json::to_vec(record).expect("a record serializes"))?;
    tmp.persist(path).map_err(|e| e.error)
}

/// A multipart upload a previous run (or a job no longer running) left open.
#[derive(Debug)]
pub struct Leftover {
    pub key: String,
    pub upload_id: String,
    pub started_at: u64,
    /// How its run stopped.
    pub left_as: LeftAs,
    pub held: Held,
}

/// How a leftover's run stopped, as its record says: what tells the parts another machine
/// sent after taking the upload over (`abandoned_uploads::taken_over_since`) from its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftAs {
    /// A cancel or a lasting failure gave it up: this machine is aborting it (the store did
    /// not confirm the abort, if it is a leftover).
    GivenUp,
    /// A failure kept it to be resumed, at this time (unix seconds).
    Kept { at: u64 },
    /// A crash or a kill left it; its run last worked on it at this time (unix seconds: its
    /// record's last [`Heartbeat`], its start for a record written before there were any).
    Crashed { at: u64 },
}

impl LeftAs {
    /// When its run stopped (unix seconds); `None` for one given up.
    pub fn stopped_at(self) -> Option<u64> {
        match self {
            LeftAs::GivenUp => None,
            LeftAs::Kept { at } | LeftAs::Crashed { at } => Some(at),
        }
    }

    fn kept_for_resume(self, window: std::time::Duration) -> bool {
        self.stopped_at()
            .is_some_and(|at| now_secs() < at.saturating_add(window.as_secs()))
    }
}

impl Record {
    /// `modified`: the record's modification time (unix seconds).
    fn left_as(&self, modified: u64) -> LeftAs {
        match (self.given_up, self.kept_at) {
            (true, _) => LeftAs::GivenUp,
            (false, Some(at)) => LeftAs::Kept { at },
            (false, None) => LeftAs::Crashed {
                at: modified.max(self.started_at),
            },
        }
    }
}

impl Leftover {
    /// Whether it waits for a run that resumes it, and other runs do not abort it: its run
    /// stopped (a failure kept it, a crash left it) less than `window` ago.
    pub fn kept_for_resume(&self, window: std::time::Duration) -> bool {
        self.left_as.kept_for_resume(window)
    }
}

/// A machine's records by what becomes of their uploads (`attache cache`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Held by an upload running now (a CLI or the daemon).
    pub running: u64,
    /// Left by a failure or a crash less than `transfer.resume_for` ago: the next upload of
    /// the same file resumes it.
    pub kept: u64,
    /// Given up (an abort not confirmed), or left longer ago: the next upload to its store,
    /// or `attache cleanup`, aborts it (unless another machine took it over).
    pub to_abort: u64,
}

impl Tally {
    pub fn total(&self) -> u64 {
        self.running + self.kept + self.to_abort
    }
}

impl OpenUploads {
    pub fn new(cache_dir: &Path) -> OpenUploads {
        OpenUploads {
            dir: cache_dir.join(DIR_NAME),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records the upload `upload_id` of `key` in `store` (its `identity()`; `url` is its
    /// `describe()`), locked until the returned [`Held`] is done or dropped.
    pub fn record(
        &self,
        store: &str,
        url: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Held, RecordError> {
        let err = |source| RecordError {
            key: key.into(),
            dir: self.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let record = Record {
            store: store.into(),
            url: url.into(),
            key: key.into(),
            upload_id: upload_id.into(),
            started_at: now_secs(),
            kept_at: None,
            given_up: false,
        };
        let path = self.dir.join(record_name(store, upload_id));
        let lock = write_locked(&path, &record).map_err(err)?;
        Ok(Held { path, _lock: lock })
    }

    /// The uploads recorded open, running or left (to resume within `resume_for`, or to
    /// abort).
    pub fn tally(&self, resume_for: std::time::Duration) -> Tally {
        let mut t = Tally::default();
        for r in read_records(&self.dir) {
            if r.unheld.is_none() {
                t.running += 1;
            } else if r.record.left_as(r.modified).kept_for_resume(resume_for) {
                t.kept += 1;
            } else {
                t.to_abort += 1;
            }
        }
        t
    }

    /// The records of `store` that no running upload holds, each locked for the caller.
    /// Unreadable entries are skipped (with a debug log): this must never stop an upload.
    pub fn leftovers(&self, store: &str) -> Vec<Leftover> {
        self.leftovers_where(|r| r.store == store)
    }

    /// The records `wanted` picks that no running upload holds, each locked, oldest first.
    fn leftovers_where(&self, wanted: impl Fn(&Record) -> bool) -> Vec<Leftover> {
        let mut out: Vec<Leftover> = read_records(&self.dir)
            .into_iter()
            .filter(|r| wanted(&r.record))
            .filter_map(|r| {
                Some(Leftover {
                    held: r.unheld?,
                    left_as: r.record.left_as(r.modified),
                    key: r.record.key,
                    upload_id: r.record.upload_id,
                    started_at: r.record.started_at,
                })
            })
            .collect();
        out.sort_by_key(|l| l.started_at);
        out
    }

    /// The newest record of `key` in `store` that no running upload holds, locked for the
    /// caller (to resume it); the others stay as they are.
    pub fn leftover_of(&self, store: &str, key: &str) -> Option<Leftover> {
        let mut left = self.leftovers_where(|r| r.store == store && r.key == key);
        left.pop()
    }

    /// The URLs of the stores with records no running upload holds.
    pub fn stores_with_leftovers(&self) -> Vec<String> {
        let mut stores: Vec<String> = read_records(&self.dir)
            .into_iter()
            .filter(|r| r.unheld.is_some())
            .map(|r| {
                if r.record.url.is_empty() {
                    r.record.store
                } else {
                    r.record.url
                }
            })
            .collect();
        stores.sort();
        stores.dedup();
        stores
    }

    /// The upload ids recorded for `store`, without locking any.
    pub fn upload_ids(&self, store: &str) -> RecordedIds {
        let mut ids = RecordedIds::default();
        for r in read_records(&self.dir) {
            if r.record.store == store {
                if r.unheld.is_some() {
                    let left_as = r.record.left_as(r.modified);
                    ids.left.insert(r.record.upload_id, left_as);
                } else {
                    ids.running.insert(r.record.upload_id);
                }
            }
        }
        ids
    }
}

/// A store's recorded upload ids: those a running upload on this machine holds, and the
/// leftovers.
#[derive(Debug, Default)]
pub struct RecordedIds {
    pub running: HashSet<String>,
    pub left: HashMap<String, LeftAs>,
}

/// A record as read, and locked for the reader if no running upload holds it.
struct ReadRecord {
    record: Record,
    /// Its modification time, unix seconds.
    modified: u64,
    /// `None`: a running upload holds it.
    unheld: Option<Held>,
}

/// The records in `dir`; unreadable ones are skipped with a debug log.
fn read_records(dir: &Path) -> Vec<ReadRecord> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match read_record(path.clone()) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e) => tracing::debug!("skipping {}: {e}", path.display()),
        }
    }
    out
}

/// Reads the record at `path`, locking it if no one holds it. `None`: its owner removed it
/// between our open and lock (the upload is finished).
fn read_record(path: PathBuf) -> std::io::Result<Option<ReadRecord>> {
    let mut file = File::open(&path)?;
    let unheld = match file.try_lock() {
        Ok(()) => true,
        Err(TryLockError::WouldBlock) => false,
        Err(TryLockError::Error(e)) => return Err(e),
    };
    let meta = file.metadata()?;
    if unheld && meta.nlink() == 0 {
        return Ok(None);
    }
    let mut json = Vec::new();
    file.read_to_end(&mut json)?;
    let record = serde_json::from_slice(&json).map_err(std::io::Error::other)?;
    Ok(Some(ReadRecord {
        record,
        modified: meta.mtime().max(0) as u64,
        unheld: unheld.then_some(Held { path, _lock: file }),
    }))
}

/// One name per (store, upload): upload ids are unique only within a store.
fn record_name(store: &str, upload_id: &str) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    h.update(store.as_bytes());
    h.update(&[0]);
    h.update(upload_id.as_bytes());
    format!("{:032x}.json", h.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_upload_is_not_a_leftover_and_a_finished_one_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let o = OpenUploads::new(t.path());
        let held = o
            .record("s3://b/p", "s3://b/p", "p/Data/a.xxh128", "u1")
            .unwrap();
        assert!(o.leftovers("s3://b/p").is_empty(), "held by its upload");
        let ids = o.upload_ids("s3://b/p");
        assert_eq!(ids.running.into_iter().collect::<Vec<_>>(), ["u1"]);
        assert!(ids.left.is_empty());
        assert!(o.upload_ids("s3://other/p").running.is_empty());
        held.done();
        assert!(o.upload_ids("s3://b/p").running.is_empty());
        assert!(o.leftovers("s3://b/p").is_empty());
        assert_eq!(std::fs::read_dir(o.dir()).unwrap().count(), 0);
    }

    #[test]
    fn an_upload_given_up_unconfirmed_is_left_to_the_next_run_of_the_same_store_only() {
        let t = tempfile::tempdir().unwrap();
        let o = OpenUploads::new(t.path());
        drop(
            o.record("s3://b/p", "s3://b/p", "p/Data/a.xxh128", "u1")
                .unwrap(),
        );
        let other = "s3://other/p region=r endpoint=http://127.0.0.1:1";
        drop(
            o.record(other, "s3://other/p", "p/Data/a.xxh128", "u1")
                .unwrap(),
        );
        let ids = o.upload_ids("s3://b/p");
        assert_eq!(ids.left.len(), 1);
        assert!(matches!(ids.left["u1"], LeftAs::Crashed { .. }));
        assert!(ids.running.is_empty());
        let left = o.leftovers("s3://b/p");
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].key.as_str(), left[0].upload_id.as_str()),
            ("p/Data/a.xxh128", "u1")
        );
        // Locked for whoever took it: another run does not abort it too.
        assert!(o.leftovers("s3://b/p").is_empty());
        let first = left.into_iter().next().unwrap();
        drop(first);
        let again = o.leftovers("s3://b/p");
        assert_eq!(again.len(), 1, "an abort that failed keeps the record");
        again.into_iter().for_each(|l| l.held.done());
        assert!(o.leftovers("s3://b/p").is_empty());
        // Named by URL, to be opened; matched by identity, so the same bucket name at another
        // endpoint is not taken for it.
        assert_eq!(o.stores_with_leftovers(), ["s3://other/p"]);
        assert!(o.leftovers("s3://other/p").is_empty());
        assert_eq!(o.leftovers(other).len(), 1);
    }

    #[test]
    fn an_upload_kept_to_be_resumed_is_found_by_its_key_and_says_since_when() {
        let t = tempfile::tempdir().unwrap();
        let o = OpenUploads::new(t.path());
        drop(o.record("s", "s", "p/Data/a.xxh128", "old").unwrap());
        drop(o.record("s", "s", "p/Data/b.xxh128", "other").unwrap());
        let left = o.leftover_of("s", "p/Data/a.xxh128").unwrap();
        assert_eq!(left.upload_id, "old");
        assert!(
            matches!(left.left_as, LeftAs::Crashed { at } if at == left.started_at),
            "a crash's leftover, stopped as it started: {:?}",
            left.left_as
        );
        assert!(
            left.kept_for_resume(std::time::Duration::from_secs(3600)),
            "a crash's leftover started within the window is spared"
        );
        assert!(!left.kept_for_resume(std::time::Duration::ZERO));
        assert!(
            o.leftover_of("s", "p/Data/a.xxh128").is_none(),
            "locked for the one resuming it"
        );
        assert!(o.leftover_of("other store", "p/Data/b.xxh128").is_none());
        left.held.keep_for_resume();
        let kept = o.leftover_of("s", "p/Data/a.xxh128").unwrap();
        assert!(matches!(kept.left_as, LeftAs::Kept { .. }));
        assert!(kept.kept_for_resume(std::time::Duration::from_secs(3600)));
        assert!(!kept.kept_for_resume(std::time::Duration::ZERO));
        assert_eq!(
            (kept.key.as_str(), kept.upload_id.as_str()),
            ("p/Data/a.xxh128", "old"),
            "the record is rewritten whole"
        );
        drop(kept);
        assert_eq!(o.leftovers("s").len(), 2);
    }

    #[test]
    fn an_upload_given_up_stays_locked_and_is_not_spared_and_a_kept_one_no_longer_given_up() {
        let t = tempfile::tempdir().unwrap();
        let o = OpenUploads::new(t.path());
        let hour = std::time::Duration::from_secs(3600);
        let mut held = o.record("s", "s", "p/Data/a.xxh128", "u").unwrap();
        held.give_up();
        assert!(
            o.leftovers("s").is_empty(),
            "the rewritten record is locked as the old one was"
        );
        drop(held);
        let left = o.leftover_of("s", "p/Data/a.xxh128").unwrap();
        assert_eq!(left.left_as, LeftAs::GivenUp);
        assert!(!left.kept_for_resume(hour), "an abort to repeat");
        left.held.keep_for_resume();
        let mut kept = o.leftover_of("s", "p/Data/a.xxh128").unwrap();
        assert!(matches!(kept.left_as, LeftAs::Kept { .. }));
        assert!(kept.kept_for_resume(hour));
        // Resumed, then a crash: a crash's leftover.
        kept.held.resume();
        assert!(o.leftovers("s").is_empty(), "still locked");
        drop(kept);
        let crashed = o.leftover_of("s", "p/Data/a.xxh128").unwrap();
        assert!(matches!(crashed.left_as, LeftAs::Crashed { .. }));
        assert!(crashed.kept_for_resume(hour));
        drop(crashed);
        // A crash's leftover that stopped longer ago than the window is not spared.
        let old_json = o.dir().join("old.json");
        std::fs::write(
            &old_json,
            br#"{"store":"s","key":"k","upload_id":"v","started_at":1}"#,
        )
        .unwrap();
        filetime::set_file_mtime(&old_json, filetime::FileTime::from_unix_time(2, 0)).unwrap();
        let old = o.leftover_of("s", "k").unwrap();
        assert_eq!(old.left_as, LeftAs::Crashed { at: 2 });
        assert!(!old.kept_for_resume(hour));
        assert_eq!(
            std::fs::read_dir(o.dir()).unwrap().count(),
            2,
            "no temp file left"
        );
    }

    #[test]
    fn a_crash_s_leftover_is_kept_from_its_run_s_last_heartbeat_not_from_its_start() {
        let t = tempfile::tempdir().unwrap();
        let o = OpenUploads::new(t.path());
        let hour = std::time::Duration::from_secs(3600);
        let held = o.record("s", "s", "k", "u").unwrap();
        // As if it had started two hours ago: a long upload.
        let path = std::fs::read_dir(o.dir())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut r: Record = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        r.started_at -= 7200;
        std::fs::write(&path, serde_json::to_vec(&r).unwrap()).unwrap();
        let two_hours_ago = filetime::FileTime::from_unix_time(r.started_at as i64, 0);
        filetime::set_file_mtime(&path, two_hours_ago).unwrap();
        let beat = held.heartbeat();
        assert!(beat.due());
        beat.beat();
        assert!(!beat.due(), "one beat a second");
        // A crash: the heartbeat does not keep the record locked.
        drop(held);
        let left = o.leftover_of("s", "k").expect("unlocked");
        drop(beat);
        assert_eq!(left.started_at, r.started_at);
        let LeftAs::Crashed { at } = left.left_as else {
            panic!("{:?}", left.left_as)
        };
        assert!(
            at + 1 >= now_secs(),
            "stopped at its last beat, not its start"
        );
        assert!(left.kept_for_resume(hour));
        drop(left);
        let counted = |running, kept, to_abort| Tally {
            running,
            kept,
            to_abort,
        };
        assert_eq!(o.tally(hour), counted(0, 1, 0));
        // Without the beat, it stopped two hours ago.
        filetime::set_file_mtime(&path, two_hours_ago).unwrap();
        let left = o.leftover_of("s", "k").unwrap();
        assert_eq!(left.left_as, LeftAs::Crashed { at: r.started_at });
        assert!(!left.kept_for_resume(hour));
        drop(left);
        assert_eq!(o.tally(hour), counted(0, 0, 1));
        let running = o.record("s", "s", "k2", "u2").unwrap();
        assert_eq!(o.tally(hour), counted(1, 0, 1));
        assert_eq!(o.tally(hour).total(), 2);
        running.done();
    }

    #[test]
    fn junk_in_the_directory_is_skipped() {
        let t = tempfile::tempdir().unwrap();
        let o = OpenUploads::new(t.path());
        std::fs::create_dir_all(o.dir()).unwrap();
        std::fs::write(o.dir().join("x.json"), b"{not json").unwrap();
        std::fs::write(o.dir().join(".record-1.tmp"), b"").unwrap();
        drop(o.record("s3://b/p", "s3://b/p", "k", "u").unwrap());
        assert_eq!(o.leftovers("s3://b/p").len(), 1);
        // A record from before records had a `url`: its store is its URL.
        std::fs::write(
            o.dir().join("old.json"),
            br#"{"store":"s3://old","key":"k","upload_id":"u","started_at":1}"#,
        )
        .unwrap();
        assert_eq!(o.stores_with_leftovers(), ["s3://b/p", "s3://old"]);
    }
}
