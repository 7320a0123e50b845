//! Files of a session's records (`<session>/.attache/…`), read and written without following
//! a link below the session directory.
//!
//! Why: the session's user owns its directory, and a daemon running as root (or as another
//! user) writes the records there for that user's jobs. A link planted at `.attache`, or at a
//! record's name, would otherwise have the daemon create files where the user may not, write a
//! manifest into a device (`-> /dev/sda`), or block on a FIFO. Each directory is opened from
//! the one before it and later used through its open descriptor (`/proc/self/fd/N/name`), so
//! a link swapped in meanwhile is not followed either.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// What is said of a link (or a file) met where a directory is kept: the error of kind
/// `NotADirectory` that [`Beneath::open_dir`] gives, after the path.
pub const NOT_A_DIRECTORY: &str = "is a link or a file where attache keeps a directory; attache does not write through links. Remove it and run again";

/// A link or a file met where a directory is needed: the payload of the `NotADirectory`
/// errors of [`Beneath::open_dir`] and [`OpenDir::open_below`], so a caller can name `path`
/// in its own words ([`InTheWay::of`]).
#[derive(Debug, thiserror::Error)]
#[error("{}: {NOT_A_DIRECTORY}", path.display())]
pub struct InTheWay {
    pub path: PathBuf,
}

impl InTheWay {
    /// The link or file `e` met, if that is what it is.
    pub fn of(e: &io::Error) -> Option<&InTheWay> {
        e.get_ref()?.downcast_ref()
    }
}

impl From<InTheWay> for io::Error {
    fn from(e: InTheWay) -> io::Error {
        io::Error::new(io::ErrorKind::NotADirectory, e)
    }
}

/// Another error met at `path` on the way to a directory: the payload of the other errors of
/// [`OpenDir::open_below`] and [`OpenDir::make_below`] ([`AtPath::split`]).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct AtPath {
    pub path: PathBuf,
    pub source: io::Error,
}

impl AtPath {
    fn error(path: PathBuf, source: io::Error) -> io::Error {
        io::Error::new(source.kind(), AtPath { path, source })
    }

    /// The path `e` was met at, if it names one, and its cause.
    pub fn split(e: io::Error) -> (Option<PathBuf>, io::Error) {
        if !e.get_ref().is_some_and(|r| r.is::<AtPath>()) {
            return (None, e);
        }
        let inner = e.into_inner().expect("checked above");
        let at = inner.downcast::<AtPath>().expect("checked above");
        (Some(at.path), at.source)
    }
}

/// A path under a directory the caller trusts (`base`, such as a session directory) whose
/// components below it are not (`rel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beneath {
    base: PathBuf,
    rel: PathBuf,
}

impl Beneath {
    pub fn new(base: impl Into<PathBuf>, rel: impl Into<PathBuf>) -> Beneath {
        Beneath {
            base: base.into(),
            rel: rel.into(),
        }
    }

    /// The whole path, for messages.
    pub fn shown(&self) -> PathBuf {
        self.base.join(&self.rel)
    }

    /// `name` under this path.
    pub fn join(&self, name: impl AsRef<Path>) -> Beneath {
        Beneath::new(&self.base, self.rel.join(name))
    }

    /// The directory this path is in, and its last component.
    fn split(&self) -> io::Result<(Beneath, &OsStr)> {
        match (self.rel.parent(), self.rel.file_name()) {
            (Some(dir), Some(name)) => Ok((Beneath::new(&self.base, dir), name)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: not a file under {}",
                    self.shown().display(),
                    self.base.display()
                ),
            )),
        }
    }

    /// Opens this path as a directory, each component below `base` without following a link
    /// (a link or a file there is an error of kind `NotADirectory` naming it, [`InTheWay`]);
    /// with `create`, missing ones are made.
    pub fn open_dir(&self, create: bool) -> io::Result<OpenDir> {
        if !create {
            return OpenDir::open(&self.base)?.walk(&self.rel, false);
        }
        std::fs::create_dir_all(&self.base)?;
        let base = OpenDir::open(&self.base)?;
        let dir = base.walk(&self.rel, true)?;
        self.give_to_base_owner(&base)?;
        Ok(dir)
    }

    /// Gives the directories below `base` that a daemon running as root made (its records'
    /// `.attache/…`) to `base`'s owner: the session's user, who could not otherwise remove
    /// their own session directory. They could have made these themselves.
    fn give_to_base_owner(&self, base: &OpenDir) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(());
        }
        let owner = base.file.metadata()?;
        if owner.uid() == 0 {
            return Ok(());
        }
        let mut below = PathBuf::new();
        for part in self.rel.components() {
            below.push(part);
            let dir = base.open_below(&below)?;
            if dir.file.metadata()?.uid() == 0 {
                // Where root may not give files away (an NFS export squashing root), they stay.
                match std::os::unix::fs::fchown(&dir.file, Some(owner.uid()), Some(owner.gid())) {
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                    done => done?,
                }
            }
        }
        Ok(())
    }

    /// Opens this path's directory (made if `create`) and gives it with the file's name.
    pub fn open_parent(&self, create: bool) -> io::Result<(OpenDir, PathBuf)> {
        let (dir, name) = self.split()?;
        Ok((dir.open_dir(create)?, PathBuf::from(name)))
    }

    /// Opens this path for reading if it is a regular file ([`open_regular`]), reached
    /// without following a link.
    pub fn open_file(&self) -> io::Result<File> {
        let (dir, name) = self.open_parent(false)?;
        dir.open_file(name)
    }
}

/// The directory reached last, kept for the names that follow in it: a tree's files come a
/// directory at a time, so each directory is opened once, not once per file.
#[derive(Default)]
pub struct LastDir(Option<(PathBuf, OpenDir)>);

impl LastDir {
    /// The directory `key` names, opened by `open` unless it is the one kept. An error
    /// forgets the one kept.
    pub fn reach(
        &mut self,
        key: &Path,
        open: impl FnOnce() -> io::Result<OpenDir>,
    ) -> io::Result<&OpenDir> {
        if self.0.as_ref().is_none_or(|(kept, _)| kept != key) {
            self.0 = None;
            self.0 = Some((key.to_path_buf(), open()?));
        }
        Ok(&self.0.as_ref().expect("kept above").1)
    }
}

/// A directory open for use by the names in it.
pub struct OpenDir {
    file: File,
    shown: PathBuf,
}

impl OpenDir {
    /// Opens the directory `path`, through a link at its end too (the caller trusts it).
    pub fn open(path: &Path) -> io::Result<OpenDir> {
        Ok(OpenDir {
            file: open_dir_nofollow(path, false)?,
            shown: path.to_path_buf(),
        })
    }

    /// Opens the directory `handle` is on (an `O_PATH` handle, say), named `shown`: that
    /// very directory, not what `shown` names now.
    pub fn reopen(handle: &File, shown: &Path) -> io::Result<OpenDir> {
        Ok(OpenDir {
            file: open_dir_nofollow(&through(handle, shown), false)?,
            shown: shown.to_path_buf(),
        })
    }

    /// The directory's path as it was named, for messages.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// Opens the directory `rel` (plain names) below this one without following a link on
    /// the way: a link or a file there is an error of kind `NotADirectory` ([`InTheWay`],
    /// naming it). One `openat2` where the kernel has it (Linux 5.6), else a component at a
    /// time.
    pub fn open_below(&self, rel: &Path) -> io::Result<OpenDir> {
        #[cfg(target_os = "linux")]
        if let Some(file) =
            openat2_beneath(&self.file, rel).map_err(|e| AtPath::error(self.shown.join(rel), e))?
        {
            return Ok(OpenDir {
                file,
                shown: self.shown.join(rel),
            });
        }
        self.walk(rel, false)
    }

    /// Opens the directory `rel` below this one as [`Self::open_below`] does, making the
    /// missing ones (each through the descriptor of the one above it).
    pub fn make_below(&self, rel: &Path) -> io::Result<OpenDir> {
        self.walk(rel, true)
    }

    /// The directory, open (for a check of what was opened).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Opens `rel` below this directory a component at a time, each without following a
    /// link; with `create`, missing ones are made (through the descriptor of the one above).
    fn walk(&self, rel: &Path, create: bool) -> io::Result<OpenDir> {
        let mut dir = OpenDir {
            file: self.file.try_clone()?,
            shown: self.shown.clone(),
        };
        for part in rel.components() {
            let Component::Normal(name) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: only plain names may follow {}",
                        self.shown.join(rel).display(),
                        self.shown.display()
                    ),
                ));
            };
            let at = dir.at(name);
            let shown = dir.shown.join(name);
            if create {
                match std::fs::create_dir(&at) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(AtPath::error(shown, e));
                    }
                    _ => {}
                }
            }
            let file = open_dir_nofollow(&at, true).map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR)
                {
                    InTheWay {
                        path: shown.clone(),
                    }
                    .into()
                } else {
                    AtPath::error(shown.clone(), e)
                }
            })?;
            dir = OpenDir { file, shown };
        }
        Ok(dir)
    }

    /// The path that reaches `name` in this directory through its descriptor: valid while
    /// this lives, and no link on the way to the directory is looked up again.
    pub fn at(&self, name: impl AsRef<Path>) -> PathBuf {
        through(&self.file, &self.shown).join(name)
    }

    /// Opens `name` in this directory for reading if it is a regular file ([`open_regular`]).
    pub fn open_file(&self, name: impl AsRef<Path>) -> io::Result<File> {
        open_regular(&self.at(name))
    }

    /// The names in this directory.
    pub fn names(&self) -> io::Result<Vec<std::ffi::OsString>> {
        Ok(std::fs::read_dir(self.at(""))?
            .flatten()
            .map(|e| e.file_name())
            .collect())
    }
}

/// `openat2(dir, rel, O_DIRECTORY, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: `None` where the
/// kernel (older than 5.6) or a sandbox (seccomp) does not allow the call, and where it met
/// a link or a file, for [`OpenDir::walk`] to name it.
#[cfg(target_os = "linux")]
fn openat2_beneath(dir: &File, rel: &Path) -> io::Result<Option<File>> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    if rel.as_os_str().is_empty() {
        return dir.try_clone().map(Some);
    }
    let Ok(path) = std::ffi::CString::new(rel.as_os_str().as_bytes()) else {
        return Ok(None);
    };
    // SAFETY: open_how is plain data; zero is "no flag" for each field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid descriptor, C string and open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor the call just opened, owned by nothing else.
        return Ok(Some(unsafe { File::from_raw_fd(fd as i32) }));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(
            libc::ENOSYS | libc::EPERM | libc::E2BIG | libc::ELOOP | libc::ENOTDIR | libc::EXDEV,
        ) => Ok(None),
        _ => Err(e),
    }
}

#[cfg(target_os = "linux")]
fn through(dir: &File, _shown: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// Elsewhere the components were checked as they were opened, and the path is used again.
#[cfg(not(target_os = "linux"))]
fn through(_dir: &File, shown: &Path) -> PathBuf {
    shown.to_path_buf()
}

/// Opens the directory `path`; with `nofollow`, not through a link at its end.
pub(crate) fn open_dir_nofollow(path: &Path, nofollow: bool) -> io::Result<File> {
    let flags = libc::O_DIRECTORY | if nofollow { libc::O_NOFOLLOW } else { 0 };
    OpenOptions::new().read(true).custom_flags(flags).open(path)
}

/// Opens `path` for reading if it is a regular file: not through a link at its end, and
/// without waiting on a FIFO or touching a device (an error says what it is instead).
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_regular_with(path, libc::O_NOFOLLOW)
}

/// As [`open_regular`], through a link at its end too.
pub fn open_regular_following(path: &Path) -> io::Result<File> {
    open_regular_with(path, 0)
}

/// A file's device and inode: the very file, whatever its path names later.
pub type FileId = (u64, u64);

/// The file opened was not the one expected ([`open_regular_same`]): its path names another
/// one now.
#[derive(Debug, thiserror::Error)]
#[error("it is not the file it was when it was hashed (replaced since, by a link or another file)")]
pub struct Replaced;

/// As [`open_regular_following`], and with `same`, only if it is that file (else an error
/// holding [`Replaced`]): for another user's job, the file checked and hashed for them, not
/// what a link swapped in since names. That one is looked at before it is opened for reading
/// ([`reopen_regular`]), so nothing else (a device, a FIFO another user waits on) is opened
/// as the daemon.
pub fn open_regular_same(path: &Path, same: Option<FileId>) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let Some(id) = same else {
        return open_regular_following(path);
    };
    #[cfg(target_os = "linux")]
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?;
    #[cfg(not(target_os = "linux"))]
    let handle = open_regular_following(path)?;
    let meta = handle.metadata()?;
    if (meta.dev(), meta.ino()) != id {
        return Err(io::Error::other(Replaced));
    }
    reopen_regular(&handle, &meta)
}

/// A handle on what `path` names, the last component not followed if a link: on Linux an
/// `O_PATH` one (nothing is opened for reading, so a device or a FIFO is not either); elsewhere
/// opened for reading, non-blocking.
pub fn handle_not_following(path: &Path) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    let flags = libc::O_PATH | libc::O_NOFOLLOW;
    #[cfg(not(target_os = "linux"))]
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    OpenOptions::new().read(true).custom_flags(flags).open(path)
}

/// Opens for reading the regular file `handle` is on (an `O_PATH` handle, of stat `meta`):
/// that very file, through `/proc/self/fd`. Anything else is refused without being opened.
pub fn reopen_regular(handle: &File, meta: &std::fs::Metadata) -> io::Result<File> {
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    #[cfg(target_os = "linux")]
    return OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(through(handle, Path::new("")));
    #[cfg(not(target_os = "linux"))]
    handle.try_clone()
}

/// Whether `e` says the file opened was not the one expected.
pub fn is_replaced(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<Replaced>())
}

fn open_regular_with(path: &Path, flags: libc::c_int) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_record_is_written_and_read_under_directories_made_on_the_way() {
        let t = tempfile::tempdir().unwrap();
        let record = Beneath::new(t.path(), ".attache/outputs/abc/task-1.manifest");
        let (dir, name) = record.open_parent(true).unwrap();
        let f = crate::fsutil::AtomicFile::create(&dir.at(&name)).unwrap();
        f.file().write_all(b"{}").unwrap();
        f.commit(false).unwrap();
        drop(dir);
        let mut text = String::new();
        record
            .open_file()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "{}");
        assert!(
            t.path()
                .join(".attache/outputs/abc/task-1.manifest")
                .is_file()
        );
        let (dir, _) = record.open_parent(false).unwrap();
        assert_eq!(
            dir.names().unwrap(),
            vec![std::ffi::OsString::from("task-1.manifest")]
        );
    }

    #[test]
    fn a_link_on_the_way_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (session, elsewhere) = (t.path().join("session"), t.path().join("elsewhere"));
        std::fs::create_dir_all(&session).unwrap();
        std::fs::create_dir_all(elsewhere.join("outputs")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, session.join(".attache")).unwrap();
        let record = Beneath::new(&session, ".attache/outputs/abc/task-1.manifest");
        let e = record.open_parent(true).err().unwrap().to_string();
        assert!(e.contains("session/.attache: is a link or a file"), "{e}");
        assert!(record.open_file().is_err());
        assert!(
            !elsewhere.join("outputs/abc").exists(),
            "made a directory through the link"
        );
    }

    #[test]
    fn a_directory_below_is_opened_without_following_a_link_on_the_way() {
        let t = tempfile::tempdir().unwrap();
        let (root, elsewhere) = (t.path().join("session"), t.path().join("elsewhere"));
        std::fs::create_dir_all(root.join("shot/renders")).unwrap();
        std::fs::create_dir_all(elsewhere.join("renders")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("linked")).unwrap();
        std::fs::write(root.join("shot/file"), "x").unwrap();
        let opened = OpenDir::open(&root).unwrap();
        let below = opened.open_below(Path::new("shot/renders")).unwrap();
        std::fs::write(below.at("frame.exr"), "f").unwrap();
        assert!(root.join("shot/renders/frame.exr").is_file());
        // The one call and the walk it falls back to both refuse, naming what is in the way.
        for (rel, in_the_way) in [
            ("linked/renders", root.join("linked")),
            ("shot/file/x", root.join("shot/file")),
        ] {
            for e in [
                opened.open_below(Path::new(rel)).err().unwrap(),
                opened.walk(Path::new(rel), false).err().unwrap(),
            ] {
                assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{rel}: {e}");
                assert_eq!(InTheWay::of(&e).unwrap().path, in_the_way, "{rel}");
            }
        }
        let e = opened.open_below(Path::new("shot/missing")).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("session/shot/missing"), "{e}");
    }

    #[test]
    fn a_link_or_a_fifo_at_the_name_is_not_read() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(".attache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(t.path().join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), dir.join("a.manifest")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("b.manifest").to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for name in ["a.manifest", "b.manifest"] {
            // Returns at once (no wait for a FIFO writer), with an error.
            assert!(
                Beneath::new(t.path(), Path::new(".attache").join(name))
                    .open_file()
                    .is_err()
            );
        }
    }

    /// Given the file it must be, an open looks before it opens: a FIFO swapped in at its
    /// path (another user's writer waiting on it) is not opened, and is told as a replaced
    /// file.
    #[test]
    fn an_open_of_the_very_file_opens_nothing_else() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let (path, fifo) = (t.path().join("frame.exr"), t.path().join("fifo"));
        std::fs::write(&path, "frame").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let id = (meta.dev(), meta.ino());
        let mut text = String::new();
        io::Read::read_to_string(&mut open_regular_same(&path, Some(id)).unwrap(), &mut text)
            .unwrap();
        assert_eq!(text, "frame");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&fifo, &path).unwrap();
        let writer = std::thread::spawn({
            let fifo = fifo.clone();
            move || OpenOptions::new().write(true).open(fifo).map(|_| ())
        });
        let e = open_regular_same(&path, Some(id)).unwrap_err();
        assert!(is_replaced(&e), "{e}");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!writer.is_finished(), "the FIFO was opened");
        drop(File::open(&fifo).unwrap());
        writer.join().unwrap().unwrap();
    }

    /// A daemon running as root makes a session's record directories for the session's user:
    /// theirs, so they can remove their own session directory.
    #[test]
    fn record_directories_a_root_daemon_makes_are_the_session_user_s() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let session = t.path().join("session");
        std::fs::create_dir(&session).unwrap();
        std::os::unix::fs::chown(&session, Some(4_000_000), Some(4_000_001)).unwrap();
        Beneath::new(&session, ".attache/inputs")
            .open_dir(true)
            .unwrap();
        for dir in [".attache", ".attache/inputs"] {
            let meta = std::fs::metadata(session.join(dir)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4_000_000, 4_000_001), "{dir}");
        }
    }
}
