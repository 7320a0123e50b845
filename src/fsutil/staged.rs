//! A file written in its destination's directory that appears under its final name only when
//! it is complete.
//!
//! On Linux it is made with `O_TMPFILE`: it has no name at all until [`Staged::persist`]
//! links it in, so a process killed mid-write (SIGKILL, OOM, power cut) leaves nothing behind,
//! not even a temporary file, and placing it costs one directory entry instead of three (make
//! a temporary name, add the final one, remove the temporary one). Where that is not possible
//! (another OS, a filesystem without `O_TMPFILE` such as NFS, no `/proc`), it is a hidden
//! temporary file beside the destination, removed when dropped and renamed into place.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

pub struct Staged {
    inner: Inner,
}

enum Inner {
    /// `O_TMPFILE`: no name yet; `dir` is where it will be linked, under a temporary name
    /// made of `prefix` and `suffix` when a file is already there to be replaced.
    #[cfg(target_os = "linux")]
    Unnamed {
        file: File,
        dir: PathBuf,
        prefix: &'static str,
        suffix: &'static str,
    },
    Named(NamedTempFile),
}

impl Staged {
    /// A new empty file in `dir`, with mode 0666 less the umask (like any file a program
    /// writes). `prefix` and `suffix` name it where it needs a temporary name.
    pub fn new_in(dir: &Path, prefix: &'static str, suffix: &'static str) -> io::Result<Staged> {
        #[cfg(target_os = "linux")]
        if let Some(file) = unnamed_in(dir)? {
            return Ok(Staged {
                inner: Inner::Unnamed {
                    file,
                    dir: dir.to_path_buf(),
                    prefix,
                    suffix,
                },
            });
        }
        Ok(Staged {
            inner: Inner::Named(super::temp_file_in(dir, prefix, suffix)?),
        })
    }

    pub fn as_file(&self) -> &File {
        match &self.inner {
            #[cfg(target_os = "linux")]
            Inner::Unnamed { file, .. } => file,
            Inner::Named(t) => t.as_file(),
        }
    }

    pub fn as_file_mut(&mut self) -> &mut File {
        match &mut self.inner {
            #[cfg(target_os = "linux")]
            Inner::Unnamed { file, .. } => file,
            Inner::Named(t) => t.as_file_mut(),
        }
    }

    /// Gives the file the name `dest` (in the directory it was made in), replacing a file
    /// already there atomically: readers see the old file or the whole new one. Returns the
    /// file, now named, so the caller can stat what it placed.
    pub fn persist(self, dest: &Path) -> io::Result<File> {
        match self.inner {
            #[cfg(target_os = "linux")]
            Inner::Unnamed {
                file,
                dir,
                prefix,
                suffix,
            } => {
                let from = proc_fd_path(&file);
                match link_following(&from, dest) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        // linkat never replaces: link under a temporary name, rename over.
                        tempfile::Builder::new()
                            .prefix(prefix)
                            .suffix(suffix)
                            .make_in(&dir, |tmp| link_following(&from, tmp))?
                            .persist(dest)
                            .map_err(|e| e.error)?;
                    }
                    other => other?,
                }
                Ok(file)
            }
            Inner::Named(t) => t.persist(dest).map_err(|e| e.error),
        }
    }
}

/// An `O_TMPFILE` file in `dir`, or `None` where the kernel, the filesystem or a missing
/// `/proc` (needed to link it) does not allow one.
#[cfg(target_os = "linux")]
fn unnamed_in(dir: &Path) -> io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::OnceLock;
    static PROC_FD: OnceLock<bool> = OnceLock::new();
    if !*PROC_FD.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        return Ok(None);
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o666)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(file) => Ok(Some(file)),
        // EOPNOTSUPP: the filesystem has no O_TMPFILE. EISDIR / EINVAL: a kernel that does
        // not know the flag took it for O_DIRECTORY or refused it.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Gives the open `file` the name `to` (a hard link to that very file, whatever path it was
/// opened by names now). `Unsupported` where there is no `/proc/self/fd`.
pub fn link_open_file(file: &File, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    return link_following(&proc_fd_path(file), to);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, to);
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[cfg(target_os = "linux")]
fn proc_fd_path(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// `linkat` following the `/proc/self/fd` link to the open file itself (without the need
/// for `CAP_DAC_READ_SEARCH` that `AT_EMPTY_PATH` has).
#[cfg(target_os = "linux")]
fn link_following(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_is_visible_until_persisted_and_a_dropped_file_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let mut s = Staged::new_in(t.path(), ".x-", ".part").unwrap();
        s.as_file_mut().write_all(b"hello").unwrap();
        #[cfg(target_os = "linux")]
        assert!(names(t.path()).is_empty(), "an O_TMPFILE file has no name");
        drop(s);
        assert!(names(t.path()).is_empty());

        let mut s = Staged::new_in(t.path(), ".x-", ".part").unwrap();
        s.as_file_mut().write_all(b"hello").unwrap();
        s.persist(&t.path().join("out")).unwrap();
        assert_eq!(names(t.path()), ["out"]);
        assert_eq!(std::fs::read(t.path().join("out")).unwrap(), b"hello");
    }

    #[test]
    fn an_existing_file_is_replaced_and_a_directory_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("out"), b"old").unwrap();
        let mut s = Staged::new_in(t.path(), ".x-", ".part").unwrap();
        s.as_file_mut().write_all(b"new").unwrap();
        s.persist(&t.path().join("out")).unwrap();
        assert_eq!(std::fs::read(t.path().join("out")).unwrap(), b"new");
        assert_eq!(names(t.path()), ["out"]);

        std::fs::create_dir(t.path().join("d")).unwrap();
        let s = Staged::new_in(t.path(), ".x-", ".part").unwrap();
        let err = s.persist(&t.path().join("d")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory, "{err}");
        assert_eq!(
            names(t.path()),
            ["d", "out"],
            "no temporary name left behind"
        );
    }

    #[test]
    fn the_file_gets_the_usual_mode() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let s = Staged::new_in(t.path(), ".x-", ".part").unwrap();
        s.persist(&t.path().join("out")).unwrap();
        std::fs::write(t.path().join("plain"), b"").unwrap();
        let mode = |n: &str| {
            std::fs::metadata(t.path().join(n))
                .unwrap()
                .permissions()
                .mode()
        };
        // 0666 less the umask, like a file any program writes (not tempfile's 0600).
        assert_eq!(mode("out"), mode("plain"));
    }
}
