//! Walking input roots into file entries, in parallel, with attache's symlink and
//! special-file policy; `filter` holds the patterns that leave paths out (or take only some),
//! `rules` rclone's ordered filter rules asked before them, `size_age` the bounds on a file's
//! size and age.

pub mod filter;
mod rclone_glob;
pub mod rules;
pub mod size_age;

use std::ffi::{OsStr, OsString};
use std::fs::{self, FileType, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::fsutil::access::Unreachable;
use crate::fsutil::beneath::OpenDir;
use crate::manifest::ManifestPath;
pub use filter::{PathFilter, PatternError};

/// What a file looked like when it was scanned: the identity the hash cache is keyed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileStat {
    pub fn of(m: &Metadata) -> Self {
        FileStat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// One regular file under a root (a symlink inside the root stands for its target).
#[derive(Debug, Clone)]
pub struct ScannedFile {
    /// Path relative to the root, as the manifest will spell it.
    pub rel: ManifestPath,
    pub stat: FileStat,
}

impl ScannedFile {
    /// The file's path on disk (the link's own path when it is a symlink).
    pub fn abs_path(&self, root: &Path) -> PathBuf {
        let rel = self
            .rel
            .to_posix_bytes()
            .expect("scanned paths come from file names");
        root.join(OsStr::from_bytes(&rel))
    }
}

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Hash the target of a symlink that points outside the root instead of refusing it.
    pub follow_external_symlinks: bool,
    /// Where symlinks may point (default: the scanned root). A worker scanning outputs allows
    /// links within the whole session directory.
    pub boundary: Option<PathBuf>,
    /// Paths left out (and, with inclusion patterns, the only files taken), matched against
    /// the path as the manifest spells it; an excluded directory is not entered.
    pub filter: PathFilter,
    /// Files out of these bounds of size and modification time are left out.
    pub size_age: size_age::SizeAge,
    /// Names of marker files, as rclone's `--exclude-if-present`: a directory holding a file
    /// of one of these names is left out whole (the marker too), and not entered.
    pub exclude_if_present: Vec<String>,
    /// The daemon's client, when it is another user: a file or directory its user may not
    /// read is refused, not read for it.
    pub caller: Option<std::sync::Arc<crate::fsutil::access::Caller>>,
}

/// Why one of `names` cannot be the name of a marker file (`--exclude-if-present`): each
/// must be a plain file name, as a directory holding it lists it.
pub fn check_marker_names(names: &[String]) -> Result<(), String> {
    match names
        .iter()
        .find(|n| n.is_empty() || *n == "." || *n == ".." || n.contains(['/', '\0']))
    {
        Some(name) => Err(format!(
            "{name:?} is not a file name: give the name of the marker file alone, e.g. .nojobattach"
        )),
        None => Ok(()),
    }
}

/// The first of the marker names `names` (`--exclude-if-present`) that names a file (not a
/// directory; a link counts) in directory `dir`, which is then left out whole.
pub fn marker_in<'n>(dir: &Path, names: &'n [String]) -> Option<&'n str> {
    names
        .iter()
        .find(|name| fs::symlink_metadata(dir.join(name)).is_ok_and(|m| !m.is_dir()))
        .map(String::as_str)
}

/// A problem with one path of the tree.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: symlink points outside the directory {root} (to {target}); {what_to_do}")]
    EscapingSymlink {
        path: PathBuf,
        root: PathBuf,
        target: PathBuf,
        what_to_do: &'static str,
    },
    #[error("{path}: symlink loop")]
    SymlinkLoop { path: PathBuf },
    #[error("{path}: broken symlink (its target does not exist); {}", leave_out(.path))]
    BrokenSymlink { path: PathBuf },
    #[error(
        "{path}: is a {kind}; only regular files, directories and symlinks to them can be attached; {}",
        leave_out(.path)
    )]
    SpecialFile { path: PathBuf, kind: &'static str },
    #[error("{path}: not a directory; pass the directory that holds it")]
    RootNotDirectory { path: PathBuf },
    /// The daemon scans for a client whose user may not read this.
    #[error(transparent)]
    NotTheCallers(#[from] crate::fsutil::access::Refused),
}

/// What to do about a path that cannot be attached: the flag that leaves it out.
fn leave_out(path: &Path) -> String {
    let name = path
        .file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy();
    format!("remove it, or leave it out with --exclude '{name}' (or hash.exclude)")
}

impl ScanError {
    /// A lookup of `path` (as another user, or by `canonicalize`) that did not reach anything,
    /// as a scan says it.
    fn unreachable(path: &Path, e: Unreachable) -> ScanError {
        match e {
            Unreachable::Refused(refused) => refused.into(),
            Unreachable::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP) => {
                ScanError::SymlinkLoop {
                    path: path.to_path_buf(),
                }
            }
            Unreachable::Io { path: at, source } if at != path => ScanError::Io {
                path: path.to_path_buf(),
                source: io::Error::new(source.kind(), format!("{}: {source}", at.display())),
            },
            Unreachable::Io { source, .. } => ScanError::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// Every problem found in a tree (the walk goes on past the first, so a user can fix them all).
#[derive(Debug, thiserror::Error)]
pub struct ScanErrors(pub Vec<ScanError>);

impl ScanErrors {
    /// A root given that is a file, not a directory: the command line to fix (exit 2), not a
    /// failure of the run.
    pub fn is_root_not_directory(&self) -> bool {
        matches!(self.0[..], [ScanError::RootNotDirectory { .. }])
    }
}

impl std::fmt::Display for ScanErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 10;
        for (i, e) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        if self.0.len() > SHOWN {
            write!(f, "\n… and {} more problems", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// The outcome of a scan.
#[derive(Debug)]
pub enum ScanOutcome {
    Done(Vec<ScannedFile>),
    Cancelled,
}

/// Scans `dir`, a directory under `root`, with paths relative to `root` (how submit takes an
/// input directory and sync-outputs an output directory of an asset root).
pub fn scan_under(
    root: &Path,
    dir: &Path,
    opts: ScanOptions,
    cancel: &CancellationToken,
) -> Result<ScanOutcome, ScanErrors> {
    scan_under_keeping(root, dir, opts, &|_| true, cancel)
}

/// Like [`scan_under`], keeping only the files `keep` accepts: the others are never held, so
/// looking for the few changed files of a million-file tree costs memory for the few.
pub fn scan_under_keeping(
    root: &Path,
    dir: &Path,
    opts: ScanOptions,
    keep: &(dyn Fn(&ScannedFile) -> bool + Sync),
    cancel: &CancellationToken,
) -> Result<ScanOutcome, ScanErrors> {
    let prefix = dir
        .strip_prefix(root)
        .expect("dir is under root")
        .as_os_str()
        .as_encoded_bytes();
    walk(dir, prefix.to_vec(), opts, keep, cancel)
}

/// Sorts files by path and keeps one file per path (inputs may overlap).
pub fn dedup_by_path(files: &mut Vec<ScannedFile>) {
    files.sort_by(|a, b| a.rel.as_wtf8().cmp(b.rel.as_wtf8()));
    files.dedup_by(|a, b| a.rel == b.rel);
}

/// Walks `root` on the current rayon pool and returns its regular files in no particular
/// order. Files that vanish between listing and stat are left out (they are gone).
pub fn scan(
    root: &Path,
    opts: ScanOptions,
    cancel: &CancellationToken,
) -> Result<ScanOutcome, ScanErrors> {
    walk(root, Vec::new(), opts, &|_| true, cancel)
}

/// Walks `root`, naming files `rel_prefix/…`, keeping those `keep` accepts.
fn walk(
    root: &Path,
    rel_prefix: Vec<u8>,
    opts: ScanOptions,
    keep: &(dyn Fn(&ScannedFile) -> bool + Sync),
    cancel: &CancellationToken,
) -> Result<ScanOutcome, ScanErrors> {
    let one = |e| ScanErrors(vec![e]);
    let io = |source| {
        one(ScanError::Io {
            path: root.to_path_buf(),
            source,
        })
    };
    let (meta, opening, real_root) = match &opts.caller {
        None => (fs::metadata(root).map_err(io)?, Opening::ByPath, None),
        // For another user: the tree is walked through descriptors from a root looked up as
        // that user, so a directory swapped for a link mid-scan is not entered.
        Some(caller) => {
            let reached = caller
                .reach_to_read(root)
                .map_err(|e| one(ScanError::unreachable(root, e)))?;
            let opening = match reached.meta.is_dir() {
                true => Opening::Top(OpenDir::reopen(&reached.file, root).map_err(io)?),
                false => Opening::ByPath,
            };
            // Where links may lead, as their lookup resolves it.
            let real_root = match &opts.boundary {
                None => reached.path,
                Some(bound) => {
                    caller
                        .look_up(bound)
                        .map_err(|e| one(ScanError::unreachable(bound, e)))?
                        .path
                }
            };
            (reached.meta, opening, Some(real_root))
        }
    };
    if !meta.is_dir() {
        return Err(one(ScanError::RootNotDirectory {
            path: root.to_path_buf(),
        }));
    }
    // Where links may lead, with every link resolved.
    let real_root = match real_root {
        Some(real) => real,
        None => fs::canonicalize(opts.boundary.as_deref().unwrap_or(root)).map_err(io)?,
    };
    let prefix_len = rel_prefix.len();
    let walker = Walker {
        root,
        real_root: &real_root,
        opts,
        keep,
        cancel,
        files: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
    };
    let top = DirTask {
        path: root.to_path_buf(),
        rel: rel_prefix,
        ancestors: vec![(meta.dev(), meta.ino())],
        opening,
    };
    rayon::scope(|s| walker.walk_dir(s, top));
    if cancel.is_cancelled() {
        return Ok(ScanOutcome::Cancelled);
    }
    let mut errors = walker
        .errors
        .into_inner()
        .expect("no panics while holding the lock");
    if !errors.is_empty() {
        let files = walker
            .files
            .into_inner()
            .expect("no panics while holding the lock");
        errors.extend(unreadable(root, prefix_len, &files, &walker.opts, cancel));
        return Err(ScanErrors(errors));
    }
    Ok(ScanOutcome::Done(
        walker
            .files
            .into_inner()
            .expect("no panics while holding the lock"),
    ))
}

/// The files found that cannot be opened for reading, as hashing would open them: with the
/// problems of a failed scan, so that one run names every file to fix, not the walk's alone.
/// Not for another user's scan, whose files are checked against that user's rights as found.
/// `prefix_len`: the length of the files' path prefix that names `root`.
fn unreadable(
    root: &Path,
    prefix_len: usize,
    files: &[ScannedFile],
    opts: &ScanOptions,
    cancel: &CancellationToken,
) -> Vec<ScanError> {
    if opts.caller.is_some() {
        return Vec::new();
    }
    files
        .iter()
        .take_while(|_| !cancel.is_cancelled())
        .filter_map(|f| {
            let rel = f.rel.to_posix_bytes().ok()?;
            // `prefix/name…` under `root`, or `name…` without a prefix.
            let below = rel.get(prefix_len..)?;
            let below = below.strip_prefix(b"/").unwrap_or(below);
            let path = root.join(OsStr::from_bytes(below));
            match crate::fsutil::beneath::open_regular_following(&path) {
                Ok(_) => None,
                Err(source) => Some(ScanError::Io { path, source }),
            }
        })
        .collect()
}

struct DirTask {
    path: PathBuf,
    /// Relative path bytes of this directory ("" for the root).
    rel: Vec<u8>,
    /// (dev, ino) of this directory and every directory above it, to refuse symlink loops.
    ancestors: Vec<(u64, u64)>,
    opening: Opening,
}

/// How a directory is opened when its turn comes: by path for the daemon's own user, through
/// descriptors for another user (the directory above it, or a lookup as that user for a link
/// followed), so what is listed is the directory that was checked.
enum Opening {
    ByPath,
    Top(OpenDir),
    Below(Arc<OpenDir>, OsString),
    Linked,
}

struct Walker<'a> {
    root: &'a Path,
    real_root: &'a Path,
    opts: ScanOptions,
    keep: &'a (dyn Fn(&ScannedFile) -> bool + Sync),
    cancel: &'a CancellationToken,
    files: Mutex<Vec<ScannedFile>>,
    errors: Mutex<Vec<ScanError>>,
}

impl<'a> Walker<'a> {
    fn walk_dir<'s>(&'s self, scope: &rayon::Scope<'s>, dir: DirTask) {
        if self.cancel.is_cancelled() {
            return;
        }
        let open = match self.open_dir(&dir.path, dir.opening, &dir.ancestors) {
            Ok(open) => open,
            Err(e) => return self.fail(e),
        };
        let listed = open.as_ref().map_or_else(|| dir.path.clone(), |o| o.at(""));
        if let Some(marker) = marker_in(&listed, &self.opts.exclude_if_present) {
            tracing::debug!(path = %dir.path.display(), marker, "excluded: holds a marker file");
            return;
        }
        let entries = match fs::read_dir(&listed) {
            Ok(entries) => entries,
            Err(source) => {
                return self.fail(ScanError::Io {
                    path: dir.path,
                    source,
                });
            }
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(source) => {
                    self.fail(ScanError::Io {
                        path: dir.path.clone(),
                        source,
                    });
                    continue;
                }
            };
            let name = entry.file_name();
            let path = dir.path.join(&name);
            // Where the entry is looked at: through its directory's descriptor, if open.
            let look: std::borrow::Cow<Path> = match &open {
                Some(o) => o.at(&name).into(),
                None => path.as_path().into(),
            };
            let mut rel = dir.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    self.fail(ScanError::Io { path, source });
                    continue;
                }
            };
            // Before the entry is looked at: an excluded link that escapes the root, or an
            // excluded directory that cannot be read, is no error.
            let is_dir = (!file_type.is_symlink()).then_some(file_type.is_dir());
            if self.opts.filter.excludes(&rel, is_dir) {
                tracing::debug!(path = %path.display(), "excluded");
                continue;
            }
            // A file not included is not looked at either (a link is, to see where it goes).
            if is_dir == Some(false) && !self.opts.filter.takes_file(&rel) {
                tracing::debug!(path = %path.display(), "not included");
                continue;
            }
            match self.classify(&path, &look, file_type) {
                // A link to a directory, for the patterns of directories only.
                Ok(Some(Found::Dir(_)))
                    if is_dir.is_none() && self.opts.filter.excludes(&rel, Some(true)) =>
                {
                    tracing::debug!(path = %path.display(), "excluded");
                }
                // A link to a file, for the inclusion patterns.
                Ok(Some(Found::File(_)))
                    if is_dir.is_none() && !self.opts.filter.takes_file(&rel) =>
                {
                    tracing::debug!(path = %path.display(), "not included");
                }
                Ok(Some(Found::File(meta))) => {
                    let stat = FileStat::of(&meta);
                    if !self.opts.size_age.takes_stat(&stat) {
                        tracing::debug!(path = %path.display(), "out of the size or age bounds");
                        continue;
                    }
                    let file = ScannedFile {
                        rel: ManifestPath::from_posix_bytes(&rel),
                        stat,
                    };
                    if (self.keep)(&file) {
                        files.push(file);
                    }
                }
                Ok(Some(Found::Dir(meta))) => {
                    let id = (meta.dev(), meta.ino());
                    if dir.ancestors.contains(&id) {
                        self.fail(ScanError::SymlinkLoop { path });
                        continue;
                    }
                    let mut ancestors = dir.ancestors.clone();
                    ancestors.push(id);
                    let opening = match &open {
                        None => Opening::ByPath,
                        Some(_) if file_type.is_symlink() => Opening::Linked,
                        Some(o) => Opening::Below(o.clone(), name),
                    };
                    let task = DirTask {
                        path,
                        rel,
                        ancestors,
                        opening,
                    };
                    scope.spawn(move |s| self.walk_dir(s, task));
                }
                Ok(None) => {}
                Err(e) => self.fail(e),
            }
        }
        if !files.is_empty() {
            self.files
                .lock()
                .expect("no panics while holding the lock")
                .append(&mut files);
        }
    }

    /// Opens directory `path` for listing as `opening` says (`None`: listed by path) and
    /// checks it is the one found (the last of `ancestors`).
    fn open_dir(
        &self,
        path: &Path,
        opening: Opening,
        ancestors: &[(u64, u64)],
    ) -> Result<Option<Arc<OpenDir>>, ScanError> {
        let io = |source| ScanError::Io {
            path: path.to_path_buf(),
            source,
        };
        let replaced = || {
            io::Error::other(
                "it was replaced while the tree was scanned (by a link, or another directory); run again once it stays put",
            )
        };
        let opened = match opening {
            Opening::ByPath => return Ok(None),
            Opening::Top(opened) => opened,
            Opening::Below(above, name) => above
                .open_below(Path::new(&name))
                .map_err(|e| match e.kind() {
                    io::ErrorKind::NotADirectory => replaced(),
                    _ => e,
                })
                .map_err(io)?,
            Opening::Linked => {
                let caller = self.opts.caller.as_ref().expect("opened for another user");
                let reached = caller
                    .look_up(path)
                    .map_err(|e| ScanError::unreachable(path, e))?;
                OpenDir::reopen(&reached.file, path).map_err(io)?
            }
        };
        let meta = opened.file().metadata().map_err(io)?;
        if Some(&(meta.dev(), meta.ino())) != ancestors.last() {
            return Err(io(replaced()));
        }
        // Another filesystem mounted there: it may be one of the kernel's.
        if let Some(caller) = &self.opts.caller {
            caller.may_read_from(path, opened.file())?;
        }
        Ok(Some(Arc::new(opened)))
    }

    /// Decides what a directory entry is, following symlinks by policy; `look` is where to
    /// look at it (`path`, or through its directory's descriptor). `None`: vanished.
    fn classify(
        &self,
        path: &Path,
        look: &Path,
        file_type: FileType,
    ) -> Result<Option<Found>, ScanError> {
        let meta = if file_type.is_symlink() {
            self.resolve_symlink(path)?
        } else {
            match fs::symlink_metadata(look) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => {
                    return Err(ScanError::Io {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        };
        let ft = meta.file_type();
        if let Some(caller) = &self.opts.caller {
            caller.may_read_found(path, &meta)?;
        }
        if ft.is_file() {
            Ok(Some(Found::File(meta)))
        } else if ft.is_dir() {
            Ok(Some(Found::Dir(meta)))
        } else {
            Err(ScanError::SpecialFile {
                path: path.to_path_buf(),
                kind: special_kind(ft),
            })
        }
    }

    /// A link inside the root stands for its target; one escaping the root is refused unless
    /// the user allowed it.
    fn resolve_symlink(&self, path: &Path) -> Result<Metadata, ScanError> {
        let broken = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
        let (target, meta) = match &self.opts.caller {
            // For another user: looked up as that user (with --follow-external-symlinks the
            // target may be outside the tree), through directories they may enter, which is
            // all they are told of where it leads; its stat is the one hashing insists on.
            Some(caller) => match caller.look_up(path) {
                Ok(reached) => {
                    caller.may_read_from(path, &reached.file)?;
                    (reached.path, Some(reached.meta))
                }
                Err(Unreachable::Io { source, .. }) if broken(&source) => {
                    return Err(ScanError::BrokenSymlink {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => return Err(ScanError::unreachable(path, e)),
            },
            None => match fs::canonicalize(path) {
                Ok(target) => (target, None),
                Err(source) if broken(&source) => {
                    return Err(ScanError::BrokenSymlink {
                        path: path.to_path_buf(),
                    });
                }
                Err(source) if source.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(ScanError::SymlinkLoop {
                        path: path.to_path_buf(),
                    });
                }
                Err(source) => {
                    return Err(ScanError::Io {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            },
        };
        if !target.starts_with(self.real_root) && !self.opts.follow_external_symlinks {
            // Where links are never followed (a task's outputs), no flag can help.
            let what_to_do = if self.opts.boundary.is_some() {
                "a task's outputs are the files inside its session directory: write them there, not a link to them"
            } else {
                "copy the file into that directory, or give --follow-external-symlinks (hash, put, submit, manifest verify) or set hash.follow_external_symlinks = true to hash the target"
            };
            return Err(ScanError::EscapingSymlink {
                path: path.to_path_buf(),
                root: self.root.to_path_buf(),
                target,
                what_to_do,
            });
        }
        match meta {
            Some(meta) => Ok(meta),
            None => fs::metadata(&target).map_err(|source| ScanError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn fail(&self, e: ScanError) {
        self.errors
            .lock()
            .expect("no panics while holding the lock")
            .push(e);
    }
}

enum Found {
    File(Metadata),
    Dir(Metadata),
}

fn special_kind(ft: FileType) -> &'static str {
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "FIFO (named pipe)"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn run(root: &Path, opts: ScanOptions) -> Result<Vec<String>, ScanErrors> {
        match scan(root, opts, &CancellationToken::new())? {
            ScanOutcome::Done(files) => {
                let mut v: Vec<String> =
                    files.iter().map(|f| f.rel.display().into_owned()).collect();
                v.sort();
                Ok(v)
            }
            ScanOutcome::Cancelled => panic!("not cancelled"),
        }
    }

    #[test]
    fn walks_nested_dirs_and_follows_internal_links() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/b/x.txt"), b"x").unwrap();
        fs::write(r.join("top"), b"").unwrap();
        symlink("a/b/x.txt", r.join("link.txt")).unwrap();
        symlink("a", r.join("dirlink")).unwrap();
        let got = run(r, ScanOptions::default()).unwrap();
        assert_eq!(got, ["a/b/x.txt", "dirlink/b/x.txt", "link.txt", "top"]);
    }

    /// rclone's --exclude-if-present: a directory holding a marker file is left out whole,
    /// with everything under it, even what it cannot read or links that escape; a directory
    /// of that name is no marker, a link of that name is one; each directory is asked anew.
    #[test]
    fn a_directory_holding_a_marker_file_is_left_out_whole() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for f in [
            "keep.txt",
            "cache/.nojobattach",
            "cache/sim.bgeo",
            "cache/deep/frame.bgeo",
            "shots/a.exr",
            "shots/.nojobattach/not-a-marker.txt",
            "linked/.nojobattach",
            "other/.ignore-me",
            "other/b.exr",
        ] {
            let p = r.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        // Under a left-out directory: neither an escaping link nor a closed directory matters.
        symlink("/etc/passwd", r.join("cache/escape")).unwrap();
        fs::create_dir(r.join("cache/closed")).unwrap();
        fs::set_permissions(r.join("cache/closed"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::remove_file(r.join("linked/.nojobattach")).unwrap();
        fs::write(r.join("linked/c.exr"), "c").unwrap();
        symlink("../keep.txt", r.join("linked/.nojobattach")).unwrap();
        let marked = |names: &[&str]| ScanOptions {
            exclude_if_present: names.iter().map(|n| n.to_string()).collect(),
            ..ScanOptions::default()
        };
        let files = run(r, marked(&[".nojobattach"]));
        fs::set_permissions(r.join("cache/closed"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            files.unwrap(),
            [
                "keep.txt",
                "other/.ignore-me",
                "other/b.exr",
                "shots/.nojobattach/not-a-marker.txt",
                "shots/a.exr",
            ]
        );
        // Several names; one at the top leaves out the whole tree.
        assert_eq!(
            run(r, marked(&["absent", ".ignore-me", ".nojobattach"])).unwrap(),
            [
                "keep.txt",
                "shots/.nojobattach/not-a-marker.txt",
                "shots/a.exr",
            ]
        );
        assert!(run(r, marked(&["keep.txt"])).unwrap().is_empty());
        // Without the option the markers are files like any other.
        fs::remove_file(r.join("cache/escape")).unwrap();
        assert_eq!(run(r, ScanOptions::default()).unwrap().len(), 10);
        for bad in ["", ".", "..", "a/b", "/abs"] {
            let names = [".nojobattach".to_string(), bad.to_string()];
            let e = check_marker_names(&names).unwrap_err();
            assert!(e.starts_with(&format!("{bad:?} is not a file name")), "{e}");
        }
        check_marker_names(&[".nojobattach".into(), "CACHEDIR.TAG".into()]).unwrap();
    }

    #[test]
    fn link_stat_is_its_targets() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("real"), b"12345").unwrap();
        symlink("real", t.path().join("link")).unwrap();
        let ScanOutcome::Done(files) =
            scan(t.path(), ScanOptions::default(), &CancellationToken::new()).unwrap()
        else {
            panic!()
        };
        assert!(files.iter().all(|f| f.stat.size == 5), "{files:?}");
    }

    #[test]
    fn escaping_symlink_is_refused_unless_allowed() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        let t = tempfile::tempdir().unwrap();
        symlink(outside.path().join("secret"), t.path().join("esc")).unwrap();
        let err = run(t.path(), ScanOptions::default()).unwrap_err();
        assert!(
            matches!(err.0[..], [ScanError::EscapingSymlink { .. }]),
            "{err}"
        );
        assert!(err.to_string().contains("--follow-external-symlinks"));
        let ok = run(
            t.path(),
            ScanOptions {
                follow_external_symlinks: true,
                ..ScanOptions::default()
            },
        )
        .unwrap();
        assert_eq!(ok, ["esc"]);
    }

    #[test]
    fn symlink_loops_and_broken_links_are_named() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        symlink("self", r.join("self")).unwrap();
        fs::create_dir(r.join("d")).unwrap();
        symlink("..", r.join("d/up")).unwrap();
        symlink("missing", r.join("dangling")).unwrap();
        let err = run(r, ScanOptions::default()).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 3, "{text}");
        assert!(text.contains("self: symlink loop"), "{text}");
        assert!(text.contains("up: symlink loop"), "{text}");
        assert!(text.contains("dangling: broken symlink"), "{text}");
    }

    #[test]
    fn fifo_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let err = run(t.path(), ScanOptions::default()).unwrap_err();
        assert!(
            matches!(
                err.0[..],
                [ScanError::SpecialFile {
                    kind: "FIFO (named pipe)",
                    ..
                }]
            ),
            "{err}"
        );
    }

    #[test]
    fn non_utf8_names_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let name = OsStr::from_bytes(b"bad-\xff\xfe.txt");
        fs::write(t.path().join(name), b"z").unwrap();
        let ScanOutcome::Done(files) =
            scan(t.path(), ScanOptions::default(), &CancellationToken::new()).unwrap()
        else {
            panic!()
        };
        assert_eq!(files[0].rel.display(), "bad-\\udcff\\udcfe.txt");
        assert_eq!(files[0].abs_path(t.path()), t.path().join(name));
    }

    #[test]
    fn root_must_be_a_directory() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"").unwrap();
        let err = run(&t.path().join("f"), ScanOptions::default()).unwrap_err();
        assert!(matches!(err.0[..], [ScanError::RootNotDirectory { .. }]));
        let err = run(&t.path().join("nope"), ScanOptions::default()).unwrap_err();
        assert!(matches!(err.0[..], [ScanError::Io { .. }]));
    }

    #[test]
    fn cancelled_scan_reports_cancelled() {
        let t = tempfile::tempdir().unwrap();
        let token = CancellationToken::new();
        token.cancel();
        assert!(matches!(
            scan(t.path(), ScanOptions::default(), &token),
            Ok(ScanOutcome::Cancelled)
        ));
    }

    #[test]
    fn a_scan_under_a_root_names_files_from_the_root_and_keeps_only_what_it_is_told() {
        let t = tempfile::tempdir().unwrap();
        for f in [
            "out/a.exr",
            "out/deep/b.exr",
            "out/deep/keep.exr",
            "other/c.exr",
        ] {
            let p = t.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        let names = |keep: &(dyn Fn(&ScannedFile) -> bool + Sync)| {
            let dir = t.path().join("out");
            let outcome = scan_under_keeping(
                t.path(),
                &dir,
                ScanOptions::default(),
                keep,
                &CancellationToken::new(),
            );
            let ScanOutcome::Done(files) = outcome.unwrap() else {
                panic!("not cancelled")
            };
            let mut v: Vec<String> = files.iter().map(|f| f.rel.display().into_owned()).collect();
            v.sort();
            v
        };
        assert_eq!(
            names(&|_| true),
            ["out/a.exr", "out/deep/b.exr", "out/deep/keep.exr"]
        );
        let kept = names(&|f| f.rel.as_wtf8().ends_with(b"keep.exr") || f.stat.size == 9);
        assert_eq!(kept, ["out/a.exr", "out/deep/keep.exr"]);
    }

    /// A tree scanned for another user, with `sub` holding the same names as a directory
    /// closed to that user (`private`); `swap` is called with the tree's directory once, when
    /// the first file of `swap_at` (a directory, "" for the top) is kept. The scan runs on
    /// one thread, so a directory is walked only once the one above it is listed. Returns what
    /// the scan gave and the inodes of `private`'s files.
    fn scan_for_a_stranger_swapping(
        swap_at: &'static str,
        swap: &(dyn Fn(&Path) + Sync),
    ) -> (Result<ScanOutcome, ScanErrors>, Vec<u64>) {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let mode = |p: &Path, m| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        mode(t.path(), 0o755);
        let (private, tree) = (t.path().join("private"), t.path().join("tree"));
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::create_dir(&private).unwrap();
        fs::write(tree.join("a.txt"), "a").unwrap();
        for name in ["s1", "s2", "s3", "s4"] {
            fs::write(tree.join("sub").join(name), "public").unwrap();
            fs::write(private.join(name), "secret").unwrap();
            mode(&private.join(name), 0o644);
        }
        mode(&private, 0o700);
        let secrets = ["s1", "s2", "s3", "s4"]
            .map(|n| fs::metadata(private.join(n)).unwrap().ino())
            .to_vec();
        let opts = ScanOptions {
            caller: Some(std::sync::Arc::new(
                crate::fsutil::access::Caller::stranger_to(t.path()),
            )),
            ..ScanOptions::default()
        };
        let swapped = std::sync::Once::new();
        let keep = |f: &ScannedFile| {
            let dir = f.rel.display().into_owned();
            let dir = dir.rsplit_once('/').map_or("", |(d, _)| d).to_string();
            if dir == swap_at {
                swapped.call_once(|| swap(&tree));
            }
            true
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let outcome = pool
            .install(|| scan_under_keeping(&tree, &tree, opts, &keep, &CancellationToken::new()));
        assert!(swapped.is_completed(), "the swap was made");
        (outcome, secrets)
    }

    /// A directory of the tree swapped, mid-scan, for a link to one the user may not enter is
    /// not listed for them: its files are looked at through the directory that was checked.
    #[test]
    fn a_directory_swapped_for_a_link_mid_scan_is_not_followed_for_another_user() {
        let swap_to_private = |tree: &Path| {
            fs::rename(tree.join("sub"), tree.join("../moved")).unwrap();
            symlink(tree.join("../private"), tree.join("sub")).unwrap();
        };
        // While `sub` is listed: its other files are still the ones it held.
        let (outcome, secrets) = scan_for_a_stranger_swapping("sub", &swap_to_private);
        let Ok(ScanOutcome::Done(files)) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(files.len(), 5);
        assert!(files.iter().all(|f| !secrets.contains(&f.stat.ino)));
        // Before it is opened: refused, naming it.
        let (outcome, _) = scan_for_a_stranger_swapping("", &swap_to_private);
        let e = outcome.unwrap_err().to_string();
        assert!(
            e.contains("tree/sub: cannot read: it was replaced while the tree was scanned"),
            "{e}"
        );
        // Swapped for another directory: refused too.
        let (outcome, _) = scan_for_a_stranger_swapping("", &|tree: &Path| {
            fs::rename(tree.join("sub"), tree.join("../moved")).unwrap();
            fs::create_dir(tree.join("sub")).unwrap();
        });
        assert!(outcome.unwrap_err().to_string().contains("was replaced"));
    }

    /// For another user, a link is followed as their lookup would follow it: into a directory
    /// closed to them it is refused there, and the scan tells nothing of what lies beyond
    /// (where a link in it leads, whether a name exists).
    #[test]
    fn a_link_into_a_directory_closed_to_another_user_tells_them_nothing_beyond_it() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let mode = |p: &Path, m| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        mode(t.path(), 0o755);
        let (private, tree) = (t.path().join("private"), t.path().join("tree"));
        fs::create_dir(&private).unwrap();
        fs::create_dir(&tree).unwrap();
        fs::write(private.join("token"), "s3cr3t").unwrap();
        symlink("/etc/hostname-of-the-vault", private.join("where")).unwrap();
        mode(&private, 0o700);
        let stranger = ScanOptions {
            caller: Some(std::sync::Arc::new(
                crate::fsutil::access::Caller::stranger_to(t.path()),
            )),
            ..ScanOptions::default()
        };
        for target in ["token", "missing", "where"] {
            let link = tree.join("l");
            let _ = fs::remove_file(&link);
            symlink(private.join(target), &link).unwrap();
            let e = run(&tree, stranger.clone()).unwrap_err();
            let [ScanError::NotTheCallers(refused)] = e.0.as_slice() else {
                panic!("{target}: {e}")
            };
            assert_eq!(
                (refused.path.as_path(), refused.what),
                (private.as_path(), "enter")
            );
            assert!(!e.to_string().contains("vault"), "{e}");
        }
        // A link to a file of the kernel's, which would show the daemon more than them.
        let link = tree.join("l");
        fs::remove_file(&link).unwrap();
        symlink("/proc/self/status", &link).unwrap();
        let e = run(&tree, stranger.clone()).unwrap_err();
        assert!(e.to_string().contains("a file of the kernel's"), "{e}");
        // Their own view of a link in a directory open to them is told as before.
        let link = tree.join("l");
        fs::remove_file(&link).unwrap();
        symlink(t.path().join("missing"), &link).unwrap();
        let e = run(&tree, stranger).unwrap_err();
        assert!(
            matches!(e.0.as_slice(), [ScanError::BrokenSymlink { .. }]),
            "{e}"
        );
    }
}
