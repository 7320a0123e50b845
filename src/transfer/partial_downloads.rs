//! Large objects a download fetched part of, kept in `<cache.dir>/partial-downloads/` (or, for a
//! destination on the content cache's mount, `<cache.content_dir>/.partial-downloads/`) so that
//! the next run that needs the object (after a cancel, a crash, a kill, a store lost for good)
//! fetches only the parts that did not land, not all of it again.
//!
//! Each is two files named by the object's hash and size: `H-S.part`, the object's bytes at
//! their offsets, which becomes the destination file by a rename once every part landed and
//! the whole was verified, so nothing half-written is ever under a destination's name (and so
//! it is used only when its directory is on the destination's mount, and the destination's
//! directory has no default ACL, which a file made elsewhere would miss; a setgid directory's
//! group is given to it as the directory would have); and `H-S.landed`, a
//! line `START END` appended as each part lands, after its bytes were written (and every
//! 4 MiB on the way, so a killed run keeps a large part's progress too). The whole object
//! is verified as ever: a claim a power cut made false (the line written, the bytes not) costs
//! a fetch, never a wrong file.
//!
//! Why a lock: the process that writes a `.part` holds an exclusive `flock` on it, so a second
//! process that needs the same object at the same time stages its own file instead, and a
//! `.part` that can be locked is one no run is writing. One not written to for
//! `transfer.resume_for` is removed by the next download ([`PartialDownloads::sweep`]).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::hash::ContentHash;

/// The partial downloads' directory, under `cache.dir`.
pub const DIR_NAME: &str = "partial-downloads";

/// Their directory under `cache.content_dir` when it is set: a farm puts the content cache on
/// the sessions' filesystem, and so the destinations' mount. Hidden: the content cache takes
/// its other directories for its own.
pub const CONTENT_DIR_NAME: &str = ".partial-downloads";

const PART: &str = "part";
const LANDED: &str = "landed";

/// The first line of a `.landed` file, followed by the object's size.
const HEADER: &str = "attache partial download v1";

/// The partial downloads of one machine (one cache dir).
#[derive(Debug, Clone)]
pub struct PartialDownloads {
    /// Where they may be kept, tried in order for a destination's mount.
    dirs: Vec<PathBuf>,
    /// `transfer.resume_for`: how long one not written to is kept; zero: none is kept.
    keep_for: Duration,
}

/// A partial download this process writes (its `.part` locked).
#[derive(Debug)]
pub struct Partial {
    path: PathBuf,
    file: File,
    landed: LandedLog,
    /// Byte ranges an earlier run wrote, sorted and merged.
    before: Vec<(u64, u64)>,
}

/// The `.landed` record of a partial download, shared by the tasks that write its parts.
#[derive(Debug, Clone)]
pub struct LandedLog(Arc<File>);

impl LandedLog {
    /// Records that bytes `start..end` are written.
    pub fn record(&self, start: u64, end: u64) -> io::Result<()> {
        // One short write in append mode: atomic beside other tasks' lines, and a crash cuts
        // it at worst, which ends the record.
        (&*self.0).write_all(format!("{start} {end}\n").as_bytes())
    }
}

/// What [`PartialDownloads::sweep`] or [`PartialDownloads::clear`] removed, or what
/// [`PartialDownloads::usage`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Partials {
    pub files: u64,
    /// Bytes on disk (a `.part` holds only the parts that landed).
    pub bytes: u64,
}

impl PartialDownloads {
    pub fn new(cache_dir: &Path, keep_for: Duration) -> PartialDownloads {
        PartialDownloads {
            dirs: vec![cache_dir.join(DIR_NAME)],
            keep_for,
        }
    }

    /// The machine's: under `cache.dir`, and under `cache.content_dir` when it is set, kept
    /// for `transfer.resume_for`.
    pub fn of(settings: &crate::config::Settings) -> PartialDownloads {
        let cache = &settings.cache;
        let mut kept = PartialDownloads::new(&cache.dir, settings.transfer.resume_for.0);
        if let Some(content) = &cache.content_dir {
            kept.dirs.push(content.join(CONTENT_DIR_NAME));
        }
        kept
    }

    /// Where they may be kept.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The partial download of the object `hash` (`size` bytes) for a file in `dest_dir`,
    /// what an earlier run wrote of it kept; `None` where it cannot be kept, and the object
    /// is staged beside its destination as any other: keeping is off (`transfer.resume_for`
    /// is zero), none of their directories is on `dest_dir`'s mount (a rename could not place
    /// it), `dest_dir` has a default ACL or is setgid to a group this process cannot give, or
    /// another process is writing it.
    pub fn open(
        &self,
        hash: ContentHash,
        size: u64,
        dest_dir: &Path,
    ) -> io::Result<Option<Partial>> {
        if self.keep_for.is_zero() || has_default_acl(dest_dir) {
            return Ok(None);
        }
        let dest = std::fs::metadata(dest_dir)?;
        // A directory that cannot be used leaves the next one to try; said if none could.
        let mut failed = None;
        for (i, dir) in self.dirs.iter().enumerate() {
            // The content cache's directory is its to make (and give its mode).
            if i > 0 && !dir.parent().is_some_and(Path::is_dir) {
                continue;
            }
            let made = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
            match made.and_then(|()| renames_into(dir, dest_dir, &dest)) {
                Ok(true) => return open_in(dir, hash, size, &dest),
                Ok(false) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(None), Err)
    }

    /// The bytes of object `hash` (`size` bytes) an interrupted download kept, which the next
    /// download of it into the same mount will not fetch (what a dry run says); nothing is
    /// locked or made.
    pub fn kept_bytes(&self, hash: ContentHash, size: u64) -> u64 {
        if self.keep_for.is_zero() {
            return 0;
        }
        let name = format!("{hash}-{size}");
        self.dirs
            .iter()
            .filter(|dir| {
                std::fs::metadata(dir.join(format!("{name}.{PART}"))).is_ok_and(|m| m.len() == size)
            })
            .map(|dir| {
                let landed = read_landed(&dir.join(format!("{name}.{LANDED}")), size);
                landed.iter().map(|(start, end)| end - start).sum()
            })
            .max()
            .unwrap_or(0)
    }

    /// Removes the partial downloads no process is writing that were not written to for
    /// `transfer.resume_for` (all of them when it is zero).
    pub fn sweep(&self) -> io::Result<Partials> {
        self.remove_unlocked(Some(self.keep_for))
    }

    /// Removes every partial download no process is writing.
    pub fn clear(&self) -> io::Result<Partials> {
        self.remove_unlocked(None)
    }

    /// How many partial downloads there are, and their bytes on disk.
    pub fn usage(&self) -> io::Result<Partials> {
        let mut found = Partials::default();
        for (_, meta) in parts(&self.entries()?) {
            found.files += 1;
            found.bytes += meta.blocks() * 512;
        }
        Ok(found)
    }

    /// What their directories hold.
    fn entries(&self) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    for entry in entries {
                        out.push(entry?.path());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Removes the unlocked partial downloads last written longer than `older_than` ago
    /// (`None`: all), and `.landed` files left without their `.part` as long.
    fn remove_unlocked(&self, older_than: Option<Duration>) -> io::Result<Partials> {
        let now = SystemTime::now();
        let old = |meta: &std::fs::Metadata| {
            older_than.is_none_or(|age| {
                meta.modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|since| since >= age)
            })
        };
        let entries = self.entries()?;
        let mut gone = Partials::default();
        for (path, meta) in parts(&entries) {
            if !old(&meta) {
                continue;
            }
            let Ok(file) = File::open(path) else {
                continue;
            };
            if file.try_lock().is_err() {
                continue; // being written
            }
            let _ = std::fs::remove_file(path.with_extension(LANDED));
            if std::fs::remove_file(path).is_ok() {
                gone.files += 1;
                gone.bytes += meta.blocks() * 512;
            }
        }
        // A `.landed` whose `.part` went (a run placed it and stopped before removing it).
        for path in entries {
            if path.extension().is_some_and(|e| e == LANDED)
                && !path.with_extension(PART).exists()
                && std::fs::metadata(&path).is_ok_and(|m| old(&m))
            {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(gone)
    }
}

/// Each `.part` among `entries` with its metadata.
fn parts(entries: &[PathBuf]) -> Vec<(&PathBuf, std::fs::Metadata)> {
    entries
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == PART))
        .filter_map(|path| {
            let meta = std::fs::symlink_metadata(path).ok()?;
            meta.is_file().then_some((path, meta))
        })
        .collect()
}

/// The partial download of `hash` in `dir`, locked for this process, for a file in a
/// directory of metadata `dest` (see [`PartialDownloads::open`]).
fn open_in(
    dir: &Path,
    hash: ContentHash,
    size: u64,
    dest: &std::fs::Metadata,
) -> io::Result<Option<Partial>> {
    let path = dir.join(format!("{hash}-{size}.{PART}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    // Still the file at `path`: not one a run placed (renamed away) or a sweep removed
    // between the open and the lock.
    let held = file.metadata()?;
    match std::fs::metadata(&path) {
        Ok(m) if (m.dev(), m.ino()) == (held.dev(), held.ino()) => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    // A file made in a setgid (0o2000) directory gets its group: so must this one.
    if dest.mode() & 0o2000 != 0
        && held.gid() != dest.gid()
        && std::os::unix::fs::fchown(&file, None, Some(dest.gid())).is_err()
    {
        return Ok(None);
    }
    let landed_path = path.with_extension(LANDED);
    // A `.part` of another length was made and not sized yet: what any record says is not
    // in it.
    let before = match held.len() == size {
        true => read_landed(&landed_path, size),
        false => Vec::new(),
    };
    if before.is_empty() {
        file.set_len(size)?;
        std::fs::write(&landed_path, format!("{HEADER} {size}\n"))?;
    }
    let landed = LandedLog(Arc::new(
        OpenOptions::new().append(true).open(&landed_path)?,
    ));
    Ok(Some(Partial {
        path,
        file,
        landed,
        before,
    }))
}

/// Whether a file in directory `from` can be renamed into directory `to` (with its metadata):
/// both on one mount (one filesystem can be mounted at several places, a bind mount into a
/// container, and a rename between them fails). Where the mount is not known (Linux before
/// 5.8), not.
fn renames_into(from: &Path, to: &Path, to_meta: &std::fs::Metadata) -> io::Result<bool> {
    if std::fs::metadata(from)?.dev() != to_meta.dev() {
        return Ok(false);
    }
    Ok(match (mount_id(from), mount_id(to)) {
        (Some(a), Some(b)) => a == b,
        // Other systems: no bind mounts of Linux's kind.
        _ => cfg!(not(target_os = "linux")),
    })
}

/// The id of the mount `path` is on (`statx`, Linux 5.8 and later).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mount_id(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statx is plain data, and the call fills it; the path is NUL-terminated.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            0,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    (r == 0 && st.stx_mask & libc::STATX_MNT_ID != 0).then_some(st.stx_mnt_id)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn mount_id(_: &Path) -> Option<u64> {
    None
}

/// Whether files made in `dir` get a default ACL, which a file renamed into it would not have.
#[cfg(target_os = "linux")]
fn has_default_acl(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: both are NUL-terminated strings; a null buffer of size 0 asks for the length.
    let len = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.posix_acl_default".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    len > 0
}

#[cfg(not(target_os = "linux"))]
fn has_default_acl(_: &Path) -> bool {
    false
}

/// The ranges a `.landed` file records for an object of `size` bytes, sorted and merged;
/// none when it is missing or not for that size. A line cut short (a crash while appending)
/// ends it.
fn read_landed(path: &Path, size: u64) -> Vec<(u64, u64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut lines = text.split_inclusive('\n');
    if lines.next() != Some(&format!("{HEADER} {size}\n")) {
        return Vec::new();
    }
    let mut ranges: Vec<(u64, u64)> = lines
        .map_while(|line| {
            let (start, end) = line.strip_suffix('\n')?.split_once(' ')?;
            let (start, end) = (start.parse::<u64>().ok()?, end.parse::<u64>().ok()?);
            (start < end && end <= size).then_some((start, end))
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

impl Partial {
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The byte ranges an earlier run wrote, sorted and merged.
    pub fn landed_before(&self) -> &[(u64, u64)] {
        &self.before
    }

    /// Where the parts being fetched record what they wrote (each part's task holds one).
    pub fn log(&self) -> LandedLog {
        self.landed.clone()
    }

    /// Drops what landed (the object did not verify): the next fetch starts over.
    pub fn discard(self) {
        let _ = std::fs::remove_file(self.path.with_extension(LANDED));
        let _ = std::fs::remove_file(&self.path);
    }

    /// Gives the verified object the name `dest` (a rename: atomic, replacing a file there);
    /// returns it, named.
    pub fn persist(self, dest: &Path) -> io::Result<File> {
        std::fs::rename(&self.path, dest)?;
        let _ = std::fs::remove_file(self.path.with_extension(LANDED));
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn hash(n: u128) -> ContentHash {
        ContentHash(n)
    }

    /// Whether a file in `from` can be renamed into `to`.
    fn renames(from: &Path, to: &Path) -> io::Result<bool> {
        renames_into(from, to, &std::fs::metadata(to)?)
    }

    /// Writes `start..end` of `partial` (bytes of `start` mod 251) and records it.
    fn land(partial: &mut Partial, start: u64, end: u64) {
        use std::os::unix::fs::FileExt;
        let bytes: Vec<u8> = (start..end).map(|i| (i % 251) as u8).collect();
        partial.file().write_all_at(&bytes, start).unwrap();
        partial.log().record(start, end).unwrap();
    }

    #[test]
    fn what_a_run_landed_is_there_for_the_next_one_and_placing_it_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let kept = PartialDownloads::new(&t.path().join("cache"), DAY);
        let mut p = kept.open(hash(1), 100, t.path()).unwrap().unwrap();
        assert!(p.landed_before().is_empty());
        land(&mut p, 40, 60);
        land(&mut p, 0, 20);
        land(&mut p, 20, 30);
        drop(p); // a cancel, a failure
        assert_eq!(kept.kept_bytes(hash(1), 100), 50, "what a dry run says");
        assert_eq!(kept.kept_bytes(hash(2), 100), 0);

        let mut p = kept.open(hash(1), 100, t.path()).unwrap().unwrap();
        assert_eq!(p.landed_before(), [(0, 30), (40, 60)]);
        land(&mut p, 30, 40);
        land(&mut p, 60, 100);
        let dest = t.path().join("big.bin");
        p.persist(&dest).unwrap();
        let want: Vec<u8> = (0..100u64).map(|i| (i % 251) as u8).collect();
        assert_eq!(std::fs::read(&dest).unwrap(), want);
        assert_eq!(kept.kept_bytes(hash(1), 100), 0);
        assert_eq!(std::fs::read_dir(&kept.dirs()[0]).unwrap().count(), 0);
    }

    #[test]
    fn a_directory_of_the_same_mount_takes_renames_and_the_machine_says_so() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("a")).unwrap();
        assert!(renames(&t.path().join("a"), t.path()).unwrap());
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(
            mount_id(t.path()).is_some(),
            "this kernel should say which mount a path is on (Linux 5.8+)"
        );
        // /proc is a mount of its own everywhere on Linux.
        #[cfg(target_os = "linux")]
        assert!(!renames(t.path(), Path::new("/proc")).unwrap());
    }

    #[test]
    fn a_destination_on_the_content_cache_s_mount_keeps_them_there() {
        let shm = Path::new("/dev/shm");
        let t = tempfile::tempdir().unwrap();
        if !shm.is_dir() || renames(shm, t.path()).unwrap_or(true) {
            eprintln!("skipped: needs /dev/shm on a mount of its own");
            return;
        }
        // cache.dir on another mount, the content cache on the sessions' one.
        let elsewhere = tempfile::tempdir_in(shm).unwrap();
        let content = t.path().join("content");
        std::fs::create_dir(&content).unwrap();
        let mut settings = crate::config::Settings::default();
        settings.cache.dir = elsewhere.path().to_path_buf();
        settings.cache.content_dir = Some(content.clone());
        settings.transfer.resume_for = crate::config::Duration(DAY);
        let kept = PartialDownloads::of(&settings);
        let session = t.path().join("session");
        std::fs::create_dir(&session).unwrap();
        let mut p = kept.open(hash(10), 10, &session).unwrap().unwrap();
        assert!(
            p.path.starts_with(content.join(CONTENT_DIR_NAME)),
            "{:?}",
            p.path
        );
        land(&mut p, 0, 10);
        p.persist(&session.join("f")).unwrap();
        // Without a content cache there, nothing is kept for that destination.
        let without = PartialDownloads::new(elsewhere.path(), DAY);
        assert!(without.open(hash(11), 10, &session).unwrap().is_none());
    }

    #[test]
    fn a_record_for_another_size_or_cut_short_is_not_trusted() {
        let t = tempfile::tempdir().unwrap();
        let kept = PartialDownloads::new(t.path(), DAY);
        let mut p = kept.open(hash(2), 100, t.path()).unwrap().unwrap();
        land(&mut p, 0, 50);
        land(&mut p, 50, 70);
        drop(p);
        let landed = kept.dirs()[0].join(format!("{}-100.landed", hash(2)));
        // A crash while appending the second line.
        let text = std::fs::read_to_string(&landed).unwrap();
        std::fs::write(&landed, &text[..text.len() - 3]).unwrap();
        let p = kept.open(hash(2), 100, t.path()).unwrap().unwrap();
        assert_eq!(p.landed_before(), [(0, 50)]);
        drop(p);
        // Ranges past the size, or a record of another size, are not taken.
        std::fs::write(&landed, format!("{HEADER} 100\n0 50\n90 101\n")).unwrap();
        assert_eq!(read_landed(&landed, 100), [(0, 50)]);
        assert!(read_landed(&landed, 99).is_empty());
    }

    #[test]
    fn a_partial_download_in_use_is_not_handed_out_twice_nor_swept() {
        let t = tempfile::tempdir().unwrap();
        let kept = PartialDownloads::new(t.path(), DAY);
        let p = kept.open(hash(3), 10, t.path()).unwrap().unwrap();
        assert!(kept.open(hash(3), 10, t.path()).unwrap().is_none());
        assert_eq!(kept.clear().unwrap().files, 0);
        drop(p);
        assert_eq!(kept.usage().unwrap().files, 1);
        assert_eq!(kept.clear().unwrap().files, 1);
        assert_eq!(kept.usage().unwrap(), Partials::default());
    }

    #[test]
    fn a_file_placed_in_a_setgid_directory_gets_its_group_as_one_made_there_would() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dest_dir = t.path().join("session");
        std::fs::create_dir(&dest_dir).unwrap();
        // A group other than this process's: only root may give a directory any group.
        let gid = unsafe { libc::getegid() } + 4242;
        if std::os::unix::fs::chown(&dest_dir, None, Some(gid)).is_err() {
            eprintln!("skipped: giving a directory another group needs root");
            return;
        }
        std::fs::set_permissions(&dest_dir, std::fs::Permissions::from_mode(0o2775)).unwrap();
        let kept = PartialDownloads::new(&t.path().join("cache"), DAY);
        let mut p = kept.open(hash(7), 10, &dest_dir).unwrap().unwrap();
        land(&mut p, 0, 10);
        let placed = p.persist(&dest_dir.join("f")).unwrap();
        assert_eq!(placed.metadata().unwrap().gid(), gid);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_directory_with_a_default_acl_gets_files_made_in_it_not_renamed_into_it() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().unwrap();
        let dest_dir = t.path().join("session");
        std::fs::create_dir(&dest_dir).unwrap();
        let kept = PartialDownloads::new(&t.path().join("cache"), DAY);
        assert!(kept.open(hash(8), 10, &dest_dir).unwrap().is_some());
        // The kernel's ACL format: version 2, then (tag, perms, id): user::rwx, group::r-x,
        // other::r-x.
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm) in [(0x01u16, 7u16), (0x04, 5), (0x20, 5)] {
            acl.extend(tag.to_le_bytes());
            acl.extend(perm.to_le_bytes());
            acl.extend(u32::MAX.to_le_bytes());
        }
        let path = std::ffi::CString::new(dest_dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings and a buffer of the length given.
        let set = unsafe {
            libc::setxattr(
                path.as_ptr(),
                c"system.posix_acl_default".as_ptr(),
                acl.as_ptr().cast(),
                acl.len(),
                0,
            )
        };
        if set != 0 {
            eprintln!("skipped: this filesystem takes no ACL");
            return;
        }
        assert!(kept.open(hash(9), 10, &dest_dir).unwrap().is_none());
    }

    #[test]
    fn a_sweep_removes_those_not_written_to_for_resume_for() {
        let t = tempfile::tempdir().unwrap();
        let kept = PartialDownloads::new(t.path(), DAY);
        let mut old = kept.open(hash(4), 10, t.path()).unwrap().unwrap();
        land(&mut old, 0, 10);
        let aged = std::time::SystemTime::now() - DAY - Duration::from_secs(60);
        old.file().set_modified(aged).unwrap();
        drop(old);
        drop(kept.open(hash(5), 10, t.path()).unwrap().unwrap());
        assert_eq!(kept.sweep().unwrap().files, 1);
        let names: Vec<_> = std::fs::read_dir(&kept.dirs()[0])
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with(&hash(5).to_string())),
            "{names:?}"
        );
        // resume_for = 0: nothing is kept, and a sweep removes what was.
        let off = PartialDownloads::new(t.path(), Duration::ZERO);
        assert!(off.open(hash(6), 10, t.path()).unwrap().is_none());
        assert_eq!(off.sweep().unwrap().files, 1);
    }
}
