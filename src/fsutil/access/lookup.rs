//! Looking a path up as another user would, from descriptors: each component is opened in
//! the directory before it without following a link (`O_PATH | O_NOFOLLOW`), a directory is
//! searched only once the caller's check passed on what was opened, and a link's text is read
//! from the link opened and looked up the same way. Why: a check by path and a use by path
//! are two lookups, and a link swapped in between them (the user's own, flipping between a
//! file they may read and one they may not) would have the daemon use what was not checked.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use super::Refused;

/// A handle on a file or a link itself, not open for its content.
#[cfg(target_os = "linux")]
const HANDLE: libc::c_int = libc::O_PATH;
/// Without `O_PATH` a link cannot be opened: one on the way is refused (`ELOOP`).
#[cfg(not(target_os = "linux"))]
const HANDLE: libc::c_int = libc::O_RDONLY | libc::O_NONBLOCK;

/// The kernel's bound on the links followed in one lookup (`ELOOP` past it).
const MAX_LINKS: usize = 40;

/// What a path names, reached as the caller: the object, open as `O_PATH` (a handle on it,
/// not its content), its stat, and its path with every link resolved (what `realpath` gives
/// for an absolute path, from this lookup: a second one could go elsewhere, and would say
/// where links in directories closed to the caller lead).
#[derive(Debug)]
pub struct Reached {
    pub file: File,
    pub meta: Metadata,
    pub path: PathBuf,
}

/// Why a lookup as the caller did not reach anything.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// A directory on the way the caller may not search.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// A component missing, not a directory, a loop of links: as the caller's own lookup
    /// would have failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// One step of a lookup still to take.
enum Step {
    Root,
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    path.components().filter_map(|c| match c {
        Component::RootDir => Some(Step::Root),
        Component::ParentDir => Some(Step::Up),
        Component::Normal(name) => Some(Step::Name(name.to_os_string())),
        Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Looks `path` up, calling `may_search(dir, its stat)` before a name is looked up in a
/// directory (`dir` as the lookup spells it, for messages). Links are followed, at the end
/// too.
pub(super) fn look_up(
    path: &Path,
    may_search: &dyn Fn(&Path, &Metadata) -> Result<(), Refused>,
) -> Result<Reached, Unreachable> {
    let at = |shown: &Path| {
        let shown = shown.to_path_buf();
        move |source| Unreachable::Io {
            path: shown,
            source,
        }
    };
    let open_start = |start: &Path| -> Result<Reached, Unreachable> {
        let file = open_path(None, start.as_os_str()).map_err(at(start))?;
        let meta = file.metadata().map_err(at(start))?;
        Ok(Reached {
            file,
            meta,
            path: start.to_path_buf(),
        })
    };
    // `here.path` names the directory reached by names that are not links: `..` from it is
    // its parent.
    let mut here = match path.is_absolute() {
        true => open_start(Path::new("/"))?,
        false => open_start(Path::new("."))?,
    };
    // Taken from the end: the next step is the last one pushed.
    let mut todo: Vec<Step> = steps(path).rev().collect();
    let mut links = 0;
    while let Some(step) = todo.pop() {
        let name = match step {
            Step::Root => {
                here = open_start(Path::new("/"))?;
                continue;
            }
            Step::Up => OsStr::new(".."),
            Step::Name(ref name) => name.as_os_str(),
        };
        if !here.meta.is_dir() {
            return Err(at(&here.path)(io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        may_search(&here.path, &here.meta)?;
        let next = match step {
            Step::Up => here.path.parent().unwrap_or(&here.path).to_path_buf(),
            _ => here.path.join(name),
        };
        let file = open_path(Some(&here.file), name).map_err(at(&next))?;
        let meta = file.metadata().map_err(at(&next))?;
        if meta.is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(at(&next)(io::Error::from_raw_os_error(libc::ELOOP)));
            }
            let target = read_link(&file).map_err(at(&next))?;
            // Looked up from the link's directory (`here`), or from `/`.
            todo.extend(steps(&target).collect::<Vec<_>>().into_iter().rev());
            continue;
        }
        here = Reached {
            file,
            meta,
            path: next,
        };
    }
    Ok(here)
}

/// `openat(dir, name, O_PATH | O_NOFOLLOW)` (`dir` none: the working directory).
fn open_path(dir: Option<&File>, name: &OsStr) -> io::Result<File> {
    let name = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name with a NUL byte"))?;
    let dir = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a valid descriptor (or AT_FDCWD) and C string.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            HANDLE | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the call just opened, owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The text of the link `link` (opened `O_PATH | O_NOFOLLOW`).
fn read_link(link: &File) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: a valid descriptor, an empty C string, a buffer of the length given.
        let n = unsafe {
            libc::readlinkat(
                link.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(PathBuf::from(OsString::from_vec(buf)));
        }
        // Cut short: a longer buffer.
        buf.resize(buf.len() * 4, 0);
    }
}
