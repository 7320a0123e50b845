//! Stores that copy every part of a multipart upload again when they complete it (s3s-fs,
//! stores that keep objects as plain files): there a multipart upload writes its bytes twice
//! and takes about twice as long as one PUT of the file. Such a store is told by how long its
//! completions take: about as long as sending the parts, where S3 and Garage complete in a
//! fraction of a second whatever the size.
//!
//! Each multipart upload of 64 MiB or more whose parts this run sent is measured: its size,
//! how long its parts took and how long its completion took. One whose completion was slow
//! or quick (not one in between, such as after parts held back by a bandwidth limit) is
//! recorded per store in `<cache.dir>/copying-stores.json`. When the last two recorded were
//! both slow, the last within [`CONFIRMED_FOR`] and the one before within [`REMEMBERED_FOR`],
//! files up to `transfer.copying_store_threshold` go to that store in one PUT (read from the
//! file as it is sent). Two, so that one slow completion (a busy S3) does not change how a
//! real S3 is written to; a quick one ends the verdict at once. Once a day the next large
//! file goes in parts again to measure the store anew, so that a verdict wrongly taken (two
//! slow completions of S3 in a row) holds a day at most, at the cost, on a store that does
//! copy, of one upload in parts a day.
//!
//! A store that knows it copies (attache's own `file://` store) is not measured: files up to
//! the threshold go to it in one PUT from the first upload on.
//!
//! The file is read, changed and rewritten whole (atomically) under an exclusive lock on
//! `copying-stores.json.lock` beside it, so that uploads completing at the same moment in
//! several processes all land, and a `cache clear --copying-stores` is not undone by a
//! process that read the file before it (each writes only what it measured since).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file under `cache.dir`.
pub const FILE_NAME: &str = "copying-stores.json";

/// How long the older of the two slow measurements counts.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the last slow measurement counts: after it, the next large file goes in parts
/// and measures the store again.
pub const CONFIRMED_FOR: Duration = Duration::from_secs(24 * 3600);

/// Uploads smaller than this are not measured: their completion is quick everywhere.
const MEASURED_FROM: u64 = 64 << 20;

/// A completion this long or longer, and at least half as long as sending the parts, is
/// a copying store's; a shorter one, and under a tenth of the parts' time, is not.
const SLOW_COMPLETION: Duration = Duration::from_millis(500);

/// Measurements kept per store.
const KEPT: usize = 4;

/// How long one multipart upload's parts and its completion took.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub bytes: u64,
    pub parts_ms: u64,
    pub complete_ms: u64,
}

impl Measurement {
    /// Whether the completion took as long as a copy of the parts would.
    pub fn slow(&self) -> bool {
        self.complete_ms >= SLOW_COMPLETION.as_millis() as u64
            && self.complete_ms.saturating_mul(2) >= self.parts_ms
    }

    /// Whether the completion was over before a copy of the parts could be.
    pub fn quick(&self) -> bool {
        self.complete_ms < SLOW_COMPLETION.as_millis() as u64
            && self.complete_ms.saturating_mul(10) < self.parts_ms
    }
}

/// What is known of one store: its measurements, slow or quick, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreMeasurements(pub Vec<Measurement>);

impl StoreMeasurements {
    /// Until when (Unix ms) the store is taken for one that copies parts on completion;
    /// `None`: it is not.
    pub fn copies_until(&self, now_ms: i64) -> Option<i64> {
        let ms = |d: Duration| d.as_millis() as i64;
        let until = match self.0[..] {
            [.., older, newer] if older.slow() && newer.slow() => {
                (older.at_ms + ms(REMEMBERED_FOR)).min(newer.at_ms + ms(CONFIRMED_FOR))
            }
            _ => return None,
        };
        (until > now_ms).then_some(until)
    }

    fn add(&mut self, m: Measurement) {
        self.0.push(m);
        self.keep_last();
    }

    /// In time order, the last [`KEPT`].
    fn keep_last(&mut self) {
        self.0.sort_by_key(|m| m.at_ms);
        let extra = self.0.len().saturating_sub(KEPT);
        self.0.drain(..extra);
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    /// By store identity (`ObjectStore::identity`).
    stores: BTreeMap<String, StoreMeasurements>,
}

fn read(path: &Path) -> File {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::debug!("{}: {e}; starting over", path.display());
            File::default()
        }),
        Err(_) => File::default(),
    }
}

/// Every store this machine measured, from `cache_dir`.
pub fn measured(cache_dir: &Path) -> BTreeMap<String, StoreMeasurements> {
    read(&cache_dir.join(FILE_NAME)).stores
}

/// Forgets what was measured of the store at `url` (at any endpoint and region; every store
/// with `None`). Returns how many stores were forgotten.
pub fn forget(cache_dir: &Path, url: Option<&str>) -> std::io::Result<u64> {
    let path = cache_dir.join(FILE_NAME);
    if !path.exists() {
        return Ok(0); // nothing measured: no directory or lock file made
    }
    let mut forgotten = 0;
    update(&path, |file| {
        let before = file.stores.len();
        match url {
            Some(url) => file
                .stores
                .retain(|id, _| !crate::store::identity_is_of(id, url)),
            None => file.stores.clear(),
        }
        forgotten = (before - file.stores.len()) as u64;
        forgotten > 0
    })?;
    Ok(forgotten)
}

/// Forgets the measurements older than [`REMEMBERED_FOR`], which no verdict uses any more
/// (`attache cache trim`, and a daemon every hour), and the stores left with none: a machine
/// that met many stores (test servers on passing ports) keeps those it still uses. Returns
/// how many stores were forgotten.
pub fn forget_stale(cache_dir: &Path, now_ms: i64) -> std::io::Result<u64> {
    let path = cache_dir.join(FILE_NAME);
    if !path.exists() {
        return Ok(0);
    }
    let cutoff = now_ms - REMEMBERED_FOR.as_millis() as i64;
    let mut forgotten = 0;
    update(&path, |file| {
        let before: usize = file.stores.values().map(|m| m.0.len()).sum();
        let stores = file.stores.len();
        for m in file.stores.values_mut() {
            m.0.retain(|m| m.at_ms > cutoff);
        }
        file.stores.retain(|_, m| !m.0.is_empty());
        forgotten = (stores - file.stores.len()) as u64;
        file.stores.values().map(|m| m.0.len()).sum::<usize>() < before
    })?;
    Ok(forgotten)
}

/// Reads the file at `path`, lets `change` change it and rewrites it when `change` says it
/// did, holding an exclusive lock on `<path>.lock` throughout: a lock per open file, so two
/// processes, or two uploads of one, take turns.
fn update(path: &Path, change: impl FnOnce(&mut File) -> bool) -> std::io::Result<()> {
    let dir = path.parent().expect("a file in cache.dir");
    std::fs::create_dir_all(dir)?;
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)?;
    lock.lock()?;
    let mut file = read(path);
    if change(&mut file) {
        write(path, &file)?;
    }
    Ok(())
}

fn write(path: &Path, file: &File) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(file).expect("serializable");
    crate::fsutil::write_atomic_unsynced(path, &json)
}

/// One store's measurements, for the uploads of one transfer: read from `cache.dir` the first
/// time they are needed, added to as uploads complete.
pub struct CopyingStore {
    path: PathBuf,
    store: String,
    /// `transfer.copying_store_threshold`; 0: measure nothing, change nothing.
    threshold: u64,
    /// The store says it copies parts on completion (`ObjectStore::completion_copies_parts`).
    copies: bool,
    known: OnceLock<Mutex<StoreMeasurements>>,
}

impl CopyingStore {
    pub fn new(cache_dir: &Path, store: String, threshold: u64, copies: bool) -> CopyingStore {
        CopyingStore {
            path: cache_dir.join(FILE_NAME),
            store,
            threshold,
            copies,
            known: OnceLock::new(),
        }
    }

    fn known(&self) -> &Mutex<StoreMeasurements> {
        self.known.get_or_init(|| {
            let mut file = read(&self.path);
            Mutex::new(file.stores.remove(&self.store).unwrap_or_default())
        })
    }

    /// The threshold uploads to this store use, given `configured`
    /// (`transfer.multipart_threshold`): raised to `transfer.copying_store_threshold` while
    /// the store is taken for one that copies parts on completion.
    pub fn multipart_threshold(&self, configured: u64) -> u64 {
        if self.threshold <= configured {
            return configured;
        }
        let copies = self.copies
            || self
                .known()
                .lock()
                .expect("not poisoned")
                .copies_until(crate::clock::now_ms())
                .is_some();
        if copies { self.threshold } else { configured }
    }

    /// Records a multipart upload of `bytes` whose parts took `parts` (all sent by this run)
    /// and whose completion took `complete`, when that says whether the store copies parts
    /// (a long completion after parts slowed by a bandwidth limit, say, does not); says so in
    /// the log when it changes the store's verdict. Writes the file on a blocking thread.
    pub async fn record(&self, bytes: u64, parts: Duration, complete: Duration) {
        if self.threshold == 0 || self.copies || bytes < MEASURED_FROM {
            return;
        }
        let m = Measurement {
            at_ms: crate::clock::now_ms(),
            bytes,
            parts_ms: parts.as_millis() as u64,
            complete_ms: complete.as_millis() as u64,
        };
        tracing::debug!(
            store = %self.store,
            bytes,
            parts_ms = m.parts_ms,
            complete_ms = m.complete_ms,
            slow = m.slow(),
            quick = m.quick(),
            "multipart upload completed"
        );
        if !m.slow() && !m.quick() {
            return;
        }
        let (was, now) = {
            let mut known = self.known().lock().expect("not poisoned");
            let was = known.copies_until(m.at_ms).is_some();
            known.add(m);
            (was, known.copies_until(m.at_ms))
        };
        match (was, now) {
            (false, Some(_)) => tracing::info!(
                "{}: completing a multipart upload took {:.1} s, against {:.1} s to send its {} (twice in a row): this store copies every part again on completion. Files up to {} go to it in one PUT, but for one in parts a day to measure it again (transfer.copying_store_threshold; \"0\" keeps multipart_threshold)",
                self.store,
                complete.as_secs_f64(),
                parts.as_secs_f64(),
                bytesize::ByteSize(bytes).display().iec(),
                bytesize::ByteSize(self.threshold).display().iec(),
            ),
            (true, None) => tracing::info!(
                "{}: a multipart upload completed quickly ({:.1} s after {:.1} s of parts): files over transfer.multipart_threshold go to it in parts again",
                self.store,
                complete.as_secs_f64(),
                parts.as_secs_f64()
            ),
            _ => {}
        }
        let (path, store) = (self.path.clone(), self.store.clone());
        let _ = crate::logging::job_warnings::spawn_blocking(move || {
            let added = update(&path, |file| {
                file.stores.entry(store).or_default().add(m);
                true
            });
            if let Err(e) = added {
                tracing::debug!("{}: {e}", path.display());
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    fn m(at_ms: i64, parts_ms: u64, complete_ms: u64) -> Measurement {
        Measurement {
            at_ms,
            bytes: 1 << 30,
            parts_ms,
            complete_ms,
        }
    }

    #[test]
    fn a_completion_as_long_as_half_the_parts_is_slow() {
        // s3s-fs, four 1 GiB files at once: parts about 12 s, completions about 7 s.
        assert!(m(0, 12_000, 7_200).slow());
        assert!(m(0, 1_000, 500).slow());
        // S3 and Garage: a fraction of a second, whatever the size.
        assert!(!m(0, 12_000, 300).slow());
        assert!(!m(0, 1_000, 499).slow());
        assert!(m(0, 12_000, 300).quick() && m(0, 1_000, 99).quick());
        assert!(!m(0, 12_000, 7_200).quick());
        // Neither: long, but short against the parts (a slow link, a bandwidth limit); short,
        // but not against the parts (a store that copies quickly).
        assert!(!m(0, 120_000, 5_000).slow() && !m(0, 120_000, 5_000).quick());
        assert!(!m(0, 1_000, 300).slow() && !m(0, 1_000, 300).quick());
    }

    #[test]
    fn two_slow_completions_in_a_row_make_a_copying_store_for_a_day_from_the_last() {
        let now = 100 * DAY;
        let slow = |at| m(at, 12_000, 7_000);
        let one = StoreMeasurements(vec![slow(now - DAY)]);
        assert_eq!(one.copies_until(now), None);
        let mut s = StoreMeasurements(vec![slow(now - DAY), slow(now)]);
        assert_eq!(s.copies_until(now), Some(now + DAY));
        // A day after the last of them, the next large file goes in parts: measured slow
        // again, one more day.
        assert_eq!(s.copies_until(now + DAY - 1), Some(now + DAY));
        assert_eq!(s.copies_until(now + DAY), None);
        s.add(slow(now + 3 * DAY));
        assert_eq!(s.copies_until(now + 3 * DAY), Some(now + 4 * DAY));
        // Not with the one before it more than a week old.
        s.add(slow(now + 11 * DAY));
        assert_eq!(s.copies_until(now + 11 * DAY), None);
    }

    #[test]
    fn a_quick_completion_ends_it() {
        let now = 100 * DAY;
        let mut s = StoreMeasurements(vec![m(now - 2, 12_000, 7_000), m(now - 1, 12_000, 7_000)]);
        assert!(s.copies_until(now).is_some());
        s.add(m(now, 12_000, 200));
        assert_eq!(s.copies_until(now), None);
        // A slow one and a quick one, in either order, are not two slow ones.
        s.add(m(now, 12_000, 7_000));
        assert_eq!(s.copies_until(now), None);
    }

    #[test]
    fn only_the_last_measurements_are_kept_in_time_order() {
        let mut s = StoreMeasurements::default();
        for i in 0..10 {
            s.add(m(i, 1, 1));
        }
        let at = |s: &StoreMeasurements| {
            s.0.iter()
                .map(|m| (m.at_ms, m.parts_ms))
                .collect::<Vec<_>>()
        };
        assert_eq!(at(&s), [(6, 1), (7, 1), (8, 1), (9, 1)]);
        // One added out of order (another upload's, finished a moment later) goes in its
        // place; two equal ones (two uploads in the same millisecond) stay two.
        s.add(m(11, 1, 1));
        s.add(m(11, 1, 1));
        s.add(m(10, 2, 2));
        assert_eq!(at(&s), [(9, 1), (10, 2), (11, 1), (11, 1)]);
    }

    #[tokio::test]
    async fn uploads_completing_together_in_several_processes_all_land() {
        // Each thread opens the lock file for itself, as another process would.
        let dir = tempfile::tempdir().unwrap();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let dir = dir.path().to_owned();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let store = CopyingStore::new(&dir, format!("s3://b{i}"), 5 << 30, false);
                    for _ in 0..3 {
                        rt.block_on(store.record(
                            1 << 30,
                            Duration::from_secs(12),
                            Duration::from_secs(7),
                        ));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let measured = measured(dir.path());
        assert_eq!(measured.len(), 16);
        assert!(measured.values().all(|m| m.0.len() == 3), "{measured:?}");
    }

    #[tokio::test]
    async fn a_clear_is_not_undone_by_a_transfer_that_read_the_file_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let id = "s3://a";
        let slow = (Duration::from_secs(12), Duration::from_secs(7));
        let earlier = CopyingStore::new(dir.path(), id.into(), 5 << 30, false);
        earlier.record(1 << 30, slow.0, slow.1).await;
        earlier.record(1 << 30, slow.0, slow.1).await;
        let running = CopyingStore::new(dir.path(), id.into(), 5 << 30, false);
        assert_eq!(running.multipart_threshold(16 << 20), 5 << 30);
        assert_eq!(forget(dir.path(), None).unwrap(), 1);
        // The running transfer completes one more: only that one is written.
        running.record(1 << 30, slow.0, slow.1).await;
        assert_eq!(measured(dir.path())[id].0.len(), 1);
        let next = CopyingStore::new(dir.path(), id.into(), 5 << 30, false);
        assert_eq!(next.multipart_threshold(16 << 20), 16 << 20);
    }

    #[test]
    fn a_trim_forgets_measurements_a_week_old_and_stores_left_with_none() {
        let dir = tempfile::tempdir().unwrap();
        let now = 100 * DAY;
        let (old, recent) = (m(now - 8 * DAY, 12_000, 7_000), m(now - DAY, 12_000, 7_000));
        let file = File {
            stores: [
                ("s3://gone".to_string(), StoreMeasurements(vec![old])),
                (
                    "s3://kept".to_string(),
                    StoreMeasurements(vec![old, recent]),
                ),
            ]
            .into(),
        };
        write(&dir.path().join(FILE_NAME), &file).unwrap();
        assert_eq!(forget_stale(dir.path(), now).unwrap(), 1);
        let left = measured(dir.path());
        assert_eq!(left.keys().collect::<Vec<_>>(), ["s3://kept"]);
        assert_eq!(left["s3://kept"].0, [recent]);
        assert_eq!(forget_stale(dir.path(), now).unwrap(), 0);
        // Nothing measured: nothing written.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(forget_stale(empty.path(), now).unwrap(), 0);
        assert!(!empty.path().join(FILE_NAME).exists());
    }

    #[tokio::test]
    async fn measurements_are_kept_per_store_in_the_cache_dir_and_raise_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        const GIB: u64 = 1 << 30;
        let id = "s3://a region=us-east-1 endpoint=http://127.0.0.1:9000";
        let a = CopyingStore::new(dir.path(), id.into(), 5 * GIB, false);
        let slow = (Duration::from_secs(12), Duration::from_secs(7));
        a.record(GIB, slow.0, slow.1).await;
        assert_eq!(
            a.multipart_threshold(16 << 20),
            16 << 20,
            "one is not enough"
        );
        // Small uploads are not measured.
        a.record(MEASURED_FROM - 1, slow.0, slow.1).await;
        assert_eq!(a.multipart_threshold(16 << 20), 16 << 20);
        a.record(GIB, slow.0, slow.1).await;
        assert_eq!(a.multipart_threshold(16 << 20), 5 * GIB);
        // A long completion after parts slowed down (a bandwidth limit) says nothing.
        a.record(GIB, Duration::from_secs(120), Duration::from_secs(5))
            .await;
        assert_eq!(a.multipart_threshold(16 << 20), 5 * GIB);
        // A configured threshold above it stays.
        assert_eq!(a.multipart_threshold(5 * GIB + 1), 5 * GIB + 1);

        // The next run reads it; another store is not affected.
        let again = CopyingStore::new(dir.path(), id.into(), 5 * GIB, false);
        assert_eq!(again.multipart_threshold(16 << 20), 5 * GIB);
        let b = CopyingStore::new(dir.path(), "s3://b".into(), 5 * GIB, false);
        assert_eq!(b.multipart_threshold(16 << 20), 16 << 20);
        assert_eq!(measured(dir.path()).len(), 1);
        assert_eq!(measured(dir.path())[id].0.len(), 2, "the two slow ones");

        // Turned off: nothing changes, nothing is measured.
        let off = CopyingStore::new(dir.path(), id.into(), 0, false);
        assert_eq!(off.multipart_threshold(16 << 20), 16 << 20);
        let c = CopyingStore::new(dir.path(), "s3://c".into(), 0, false);
        c.record(GIB, slow.0, slow.1).await;
        c.record(GIB, slow.0, slow.1).await;
        assert_eq!(measured(dir.path()).len(), 1);

        assert_eq!(forget(dir.path(), Some("s3://b")).unwrap(), 0);
        assert_eq!(forget(dir.path(), Some("s3:/")).unwrap(), 0);
        assert_eq!(forget(dir.path(), Some("s3://a/")).unwrap(), 1);
        let forgotten = CopyingStore::new(dir.path(), id.into(), 5 * GIB, false);
        assert_eq!(forgotten.multipart_threshold(16 << 20), 16 << 20);

        // A store that says it copies (file://): one PUT from the start, nothing measured.
        let fs = CopyingStore::new(dir.path(), "file:///s".into(), 5 * GIB, true);
        assert_eq!(fs.multipart_threshold(16 << 20), 5 * GIB);
        fs.record(GIB, slow.0, slow.1).await;
        assert!(!measured(dir.path()).contains_key("file:///s"));
        let fs_off = CopyingStore::new(dir.path(), "file:///s".into(), 0, true);
        assert_eq!(fs_off.multipart_threshold(16 << 20), 16 << 20);
    }
}
