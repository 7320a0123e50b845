//! What another user may do with a path, by its mode bits: the daemon, which runs as a service
//! user, acts for a client on its socket with that client's rights, so that a user allowed to
//! use the socket cannot have the daemon read or write what the user could not (its token,
//! its TLS key, its store credentials, another user's files).
//!
//! POSIX permission bits only: an ACL that grants more is not seen (the request is refused;
//! the user runs the command without `--daemon`), one that takes away is not either (the
//! group and other bits still have to allow it). `lookup` finds what a path names as that
//! user's own lookup would, so that what is checked is what is used.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use lookup::{Reached, Unreachable};

mod lookup;

/// Read, write and search (execute) in a mode's bits.
pub const READ: u32 = 4;
pub const WRITE: u32 = 2;
pub const SEARCH: u32 = 1;

/// A client's user: its ids and its groups, as the kernel gave them for its connection. Not
/// made for root or the daemon's own user, who may do anything the daemon may.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Its supplementary groups (with `gid`).
    pub groups: Vec<u32>,
}

/// A path the caller may not use as the job would, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {}", path.display(), self.reason())]
pub struct Refused {
    pub path: PathBuf,
    pub who: String,
    pub what: &'static str,
    pub why: Why,
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The mode bits (of it, or of a directory on the way) do not let the user.
    Mode,
    /// What the path names changed between two looks at it (a link swapped in).
    Changed,
    /// A file of the kernel's own (`/proc`, `/sys`…): what it shows depends on who reads it.
    KernelMade,
}

impl Refused {
    /// What was refused, without the path.
    pub fn reason(&self) -> String {
        match self.why {
            Why::Mode => {}
            Why::Changed => {
                return format!(
                    "what it names changed while it was checked for {}, so the daemon did not use it; run the job again once it stays put",
                    self.who
                );
            }
            Why::KernelMade => {
                return format!(
                    "a file of the kernel's (/proc, /sys and their kind) shows each reader what that reader may see, so the daemon does not read one for {}: copy what you need into a file of your own",
                    self.who
                );
            }
        }
        format!(
            "{} may not {} it, and the daemon does for a client only what the client's user could do itself (run the command without --daemon, or ask the owner for access)",
            self.who, self.what
        )
    }
}

impl Caller {
    /// The user of a peer process (`SO_PEERCRED`), with the supplementary groups it had when
    /// it connected (`SO_PEERGROUPS`, [`peer_groups`]); its primary group alone where the
    /// kernel does not tell them (fewer rights, never another process's).
    pub fn of_peer(uid: u32, gid: u32, groups: Option<Vec<u32>>) -> Caller {
        let mut groups = groups.unwrap_or_default();
        groups.push(gid);
        groups.sort_unstable();
        groups.dedup();
        Caller { uid, gid, groups }
    }

    /// Whether `meta`'s mode gives this user the `want` bits (READ, WRITE, SEARCH, or'ed):
    /// the owner's bits for its owner, the group's for a member, the others' for the rest.
    pub fn allows(&self, meta: &std::fs::Metadata, want: u32) -> bool {
        let mode = meta.mode();
        let bits = if meta.uid() == self.uid {
            mode >> 6
        } else if self.groups.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        } & 7;
        bits & want == want
    }

    /// For messages: `user render (uid 1001)`.
    pub fn describe(&self) -> String {
        match crate::fsutil::user_name(self.uid) {
            Some(name) => format!("user {name} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }

    fn refused(&self, path: &Path, what: &'static str) -> Refused {
        Refused {
            path: path.to_path_buf(),
            who: self.describe(),
            what,
            why: Why::Mode,
        }
    }

    /// `path` named something else when it was looked up as this user than when it was
    /// opened: replaced meanwhile, so neither is used.
    fn changed(&self, path: &Path) -> Refused {
        Refused {
            why: Why::Changed,
            ..self.refused(path, "use")
        }
    }

    /// The daemon may read `file` (opened at `path`, `O_PATH` will do) for the caller as it
    /// is: not a file of the kernel's, which would show the daemon (root) more than them.
    pub fn may_read_from(&self, path: &Path, file: &std::fs::File) -> Result<(), Refused> {
        match kernel_made(file) {
            false => Ok(()),
            true => Err(Refused {
                why: Why::KernelMade,
                ..self.refused(path, "read")
            }),
        }
    }

    /// What `path` names, looked up as the caller's own process would look it up: a
    /// component at a time, from descriptors, each directory on the way (and on the way to
    /// what a link names) searched only if the caller may, links followed as the kernel
    /// follows them. Nothing is looked up again by path, so a link swapped in meanwhile does
    /// not change what was checked: what is found is something the caller could reach.
    pub fn look_up(&self, path: &Path) -> Result<Reached, Unreachable> {
        lookup::look_up(
            path,
            &|dir: &Path, meta: &Metadata| match self.allows(meta, SEARCH) {
                true => Ok(()),
                false => Err(self.refused(dir, "enter")),
            },
        )
    }

    /// The caller may read what `path` names, of stat `meta`, by its mode: a file, or a
    /// directory to list and enter.
    pub fn may_read_found(&self, path: &Path, meta: &Metadata) -> Result<(), Refused> {
        let want = if meta.is_dir() { READ | SEARCH } else { READ };
        match self.allows(meta, want) {
            true => Ok(()),
            false => Err(self.refused(path, "read")),
        }
    }

    /// What `path` names, looked up as the caller ([`Self::look_up`]), if they may read it
    /// ([`Self::may_read_found`]) and it is not one of the kernel's files.
    pub fn reach_to_read(&self, path: &Path) -> Result<Reached, Unreachable> {
        let reached = self.look_up(path)?;
        self.may_read_from(path, &reached.file)?;
        self.may_read_found(path, &reached.meta)?;
        Ok(reached)
    }

    /// The caller may read `path` (a file; a directory: list and enter it). A path that does
    /// not exist is not refused here: the job says what it does with it.
    pub fn may_read(&self, path: &Path) -> Result<(), Refused> {
        match self.look_up(path) {
            Ok(reached) => self.may_read_found(path, &reached.meta),
            Err(Unreachable::Refused(refused)) => Err(refused),
            Err(Unreachable::Io { .. }) => Ok(()),
        }
    }

    /// Opens `path` for reading for the caller: looked up as them ([`Self::look_up`]), a
    /// regular file their mode bits let them read and not one of the kernel's, and only then
    /// opened, that very file: nothing else (a device, a FIFO) is opened as the daemon.
    pub fn open_to_read(&self, path: &Path) -> Result<std::fs::File, Unreachable> {
        let reached = self.reach_to_read(path)?;
        crate::fsutil::beneath::reopen_regular(&reached.file, &reached.meta).map_err(|source| {
            Unreachable::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// The caller may write in directory `dir`, opened at `path`: by the mode of the
    /// directory opened, which is what the path names looked up as the caller.
    fn may_write_in_opened(&self, path: &Path, dir: &std::fs::File) -> Result<(), Refused> {
        let what = "write in";
        let meta = dir.metadata().map_err(|_| self.refused(path, what))?;
        let reached = match self.look_up(path) {
            Ok(reached) => reached.meta,
            Err(Unreachable::Refused(refused)) => return Err(refused),
            Err(Unreachable::Io { .. }) => return Err(self.changed(path)),
        };
        if (reached.dev(), reached.ino()) != (meta.dev(), meta.ino()) {
            return Err(self.changed(path));
        }
        match self.allows(&meta, WRITE | SEARCH) {
            true => Ok(()),
            false => Err(self.refused(path, what)),
        }
    }

    /// The daemon may place files for the caller in `dir`, opened at `path`: the caller may
    /// write in it ([`Self::may_write_in_opened`]), or, for a daemon that is not root, it is
    /// the daemon's own (one it made for an earlier job and could not give away; its user's
    /// reach is the bound).
    pub fn may_place_in(&self, path: &Path, dir: &std::fs::File) -> Result<(), Refused> {
        if dir.metadata().is_ok_and(|m| daemons_own(&m)) {
            return Ok(());
        }
        self.may_write_in_opened(path, dir)
    }

    /// Makes a file or directory made for the caller theirs, where the daemon may (as root);
    /// it stays the daemon's otherwise. Its group becomes theirs too where it got the
    /// daemon's (a setgid directory's group, which it took instead, stays).
    pub fn give(&self, file: &std::fs::File) -> std::io::Result<()> {
        // SAFETY: getegid cannot fail.
        let daemons = unsafe { libc::getegid() };
        let gid = file.metadata()?.gid().eq(&daemons).then_some(self.gid);
        match std::os::unix::fs::fchown(file, Some(self.uid), gid) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
            done => done,
        }
    }

    /// Whether a directory or file (its stat) is the caller's, or, for a daemon that is not
    /// root, the daemon's own (made for an earlier job): what the daemon may give to a job's
    /// group for them. Someone else's shared directory (`/tmp`, a spool) is left as it is.
    pub fn owns(&self, meta: &std::fs::Metadata) -> bool {
        meta.uid() == self.uid || daemons_own(meta)
    }

    /// Whether the caller may replace `file` (its stat) in directory `dir` (its stat), which
    /// it may write in: not in a sticky directory (such as `/tmp`) where neither is theirs.
    pub fn may_replace(&self, dir: &std::fs::Metadata, file: &std::fs::Metadata) -> bool {
        dir.mode() & libc::S_ISVTX == 0 || dir.uid() == self.uid || file.uid() == self.uid
    }

    /// The caller may write in directory `path`, or make it: its nearest existing directory
    /// (itself, or the closest one above it) lets the caller add entries.
    pub fn may_write_in(&self, path: &Path) -> Result<(), Refused> {
        let mut nearest = None;
        for dir in path.ancestors() {
            match self.look_up(dir) {
                Ok(reached) => {
                    nearest = Some((dir, reached.meta));
                    break;
                }
                Err(Unreachable::Refused(refused)) => return Err(refused),
                Err(Unreachable::Io { .. }) => {}
            }
        }
        let Some((dir, meta)) = nearest else {
            return Ok(());
        };
        match self.allows(&meta, WRITE | SEARCH) {
            true => Ok(()),
            false => Err(self.refused(dir, "write in")),
        }
    }
}

#[cfg(test)]
impl Caller {
    /// For tests: a user who is neither the owner of `path` nor in its group, for whom the
    /// others' bits decide.
    pub(crate) fn stranger_to(path: &Path) -> Caller {
        let meta = std::fs::metadata(path).unwrap();
        Caller {
            uid: meta.uid() + 1000,
            gid: meta.gid() + 1000,
            groups: vec![meta.gid() + 1000],
        }
    }
}

/// The supplementary groups of the process at the other end of Unix socket `fd` as they were
/// when it connected (`SO_PEERGROUPS`, Linux 4.13). Not `/proc/<pid>/status`: by the time a
/// request comes, that pid may be another process's (a client can cycle the pids until a
/// process of a group it wants gets its own), and a request would get that process's groups.
pub fn peer_groups(fd: std::os::fd::RawFd) -> Option<Vec<u32>> {
    #[cfg(target_os = "linux")]
    {
        let mut groups = vec![0u32; 64];
        loop {
            let mut len = (groups.len() * 4) as libc::socklen_t;
            // SAFETY: a buffer of `len` bytes, and its length, for the kernel to fill.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_PEERGROUPS,
                    groups.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            let n = len as usize / 4;
            if r == 0 {
                groups.truncate(n);
                return Some(groups);
            }
            // ERANGE: too small, and `len` says how much is needed.
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE)
                || n <= groups.len()
            {
                return None;
            }
            groups.resize(n, 0);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

/// The kernel's filesystems whose files it makes up for each reader, by their `statfs` magic
/// (`linux/magic.h`): proc, sysfs, debugfs, tracefs, securityfs, configfs, cgroup (1 and 2),
/// bpf, efivarfs, pstore, selinuxfs, smackfs, binfmt_misc, fusectl.
const KERNEL_MADE: [u64; 15] = [
    0x9fa0,
    0x6265_6572,
    0x6462_6720,
    0x7472_6163,
    0x7363_6673,
    0x6265_6570,
    0x0027_e0eb,
    0x6367_7270,
    0xcafe_4a11,
    0xde5e_81e4,
    0x6165_676c,
    0xf97c_ff8c,
    0x4341_5d53,
    0x4249_4e4d,
    0x6573_5543,
];

/// Whether `file` is on one of the kernel's filesystems ([`KERNEL_MADE`]); false where that
/// cannot be told.
fn kernel_made(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: statfs is plain data, filled by the call on a valid descriptor.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return false;
    }
    KERNEL_MADE.contains(&(fs.f_type as u64))
}

/// Whether `meta` is the daemon's own and the daemon is not root: made by it for an earlier
/// job (it could not give it away), its user's reach being the bound.
fn daemons_own(meta: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid cannot fail.
    let daemon = unsafe { libc::geteuid() };
    daemon != 0 && meta.uid() == daemon
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn the_owner_s_group_s_or_other_s_bits_decide() {
        let t = tempfile::tempdir().unwrap();
        mode(t.path(), 0o755);
        let secret = t.path().join("token");
        std::fs::write(&secret, b"s3cr3t").unwrap();
        let meta = || std::fs::metadata(&secret).unwrap();
        let (uid, gid) = (meta().uid(), meta().gid());
        let owner = Caller {
            uid: uid + 1000,
            gid: gid + 1000,
            groups: vec![gid + 1000],
        };
        let stranger = owner.clone();
        let owner = Caller { uid, ..owner };
        let member = Caller {
            groups: vec![gid],
            ..stranger.clone()
        };
        mode(&secret, 0o640);
        assert!(owner.allows(&meta(), READ | WRITE));
        assert!(member.allows(&meta(), READ) && !member.allows(&meta(), WRITE));
        assert!(!stranger.allows(&meta(), READ));
        let refused = stranger.may_read(&secret).unwrap_err();
        assert_eq!(
            (refused.path.as_path(), refused.what),
            (secret.as_path(), "read")
        );
        mode(&secret, 0o644);
        stranger.may_read(&secret).unwrap();
        // A directory closed to others keeps what is in it from them, whatever its mode.
        let dir = t.path().join("private");
        std::fs::create_dir(&dir).unwrap();
        let inside = dir.join("frame.exr");
        std::fs::write(&inside, b"x").unwrap();
        mode(&inside, 0o644);
        mode(&dir, 0o700);
        let refused = stranger.may_read(&inside).unwrap_err();
        assert_eq!(
            (refused.path.as_path(), refused.what),
            (dir.as_path(), "enter")
        );
        // Nor through a link of theirs, in a directory they may enter.
        let link = t.path().join("link.exr");
        std::os::unix::fs::symlink(&inside, &link).unwrap();
        let refused = stranger.may_read(&link).unwrap_err();
        assert_eq!(
            (refused.path.as_path(), refused.what),
            (dir.as_path(), "enter")
        );
        assert_eq!(
            stranger
                .may_write_in(&dir.join("new/deeper"))
                .unwrap_err()
                .path,
            dir
        );
        mode(&dir, 0o777);
        stranger.may_write_in(&dir.join("new/deeper")).unwrap();
    }

    /// A lookup as the caller goes where the kernel would for them: through links, relative
    /// (`..`) and absolute, each directory on the way checked, and it fails where theirs
    /// would.
    #[test]
    fn a_lookup_as_the_caller_follows_links_and_checks_every_directory_on_the_way() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        mode(t.path(), 0o755);
        let (public, private) = (t.path().join("public"), t.path().join("private"));
        std::fs::create_dir(&public).unwrap();
        std::fs::create_dir(&private).unwrap();
        let (open, closed) = (public.join("scene.ma"), private.join("token"));
        std::fs::write(&open, "scene").unwrap();
        std::fs::write(&closed, "s3cr3t").unwrap();
        mode(&closed, 0o644);
        mode(&private, 0o700);
        let meta = std::fs::metadata(t.path()).unwrap();
        let owner = Caller {
            uid: meta.uid(),
            gid: meta.gid() + 1000,
            groups: vec![meta.gid() + 1000],
        };
        let stranger = Caller {
            uid: meta.uid() + 1000,
            ..owner.clone()
        };
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        // A chain: absolute link to a relative one that climbs out of its directory.
        symlink("../public/scene.ma", private.join("up")).unwrap();
        symlink(private.join("up"), public.join("via-private")).unwrap();
        symlink("scene.ma", public.join("plain")).unwrap();
        let found = |c: &Caller, p: &Path| c.look_up(p).map(|r| r.meta.ino());
        assert_eq!(found(&stranger, &public.join("plain")).unwrap(), ino(&open));
        assert_eq!(
            found(&owner, &public.join("via-private")).unwrap(),
            ino(&open)
        );
        // With every link resolved, as realpath would say.
        let real = owner.look_up(&public.join("via-private")).unwrap().path;
        assert_eq!(real, std::fs::canonicalize(&open).unwrap());
        let refused = |e: Unreachable| match e {
            Unreachable::Refused(r) => (r.path, r.what),
            other => panic!("{other}"),
        };
        // The target is open to them, the directory of the link on the way is not.
        let e = stranger.look_up(&public.join("via-private")).unwrap_err();
        assert_eq!(refused(e), (private.clone(), "enter"));
        symlink(&closed, public.join("token")).unwrap();
        let e = stranger.look_up(&public.join("token")).unwrap_err();
        assert_eq!(refused(e), (private.clone(), "enter"));
        assert_eq!(found(&owner, &public.join("token")).unwrap(), ino(&closed));
        let io = |e: Unreachable| match e {
            Unreachable::Io { path, source } => (path, source.raw_os_error()),
            other => panic!("{other}"),
        };
        symlink("loop-b", public.join("loop-a")).unwrap();
        symlink("loop-a", public.join("loop-b")).unwrap();
        let e = owner.look_up(&public.join("loop-a")).unwrap_err();
        assert_eq!(io(e).1, Some(libc::ELOOP));
        let e = owner.look_up(&public.join("missing/x")).unwrap_err();
        assert_eq!(io(e), (public.join("missing"), Some(libc::ENOENT)));
        let e = owner.look_up(&open.join("x")).unwrap_err();
        assert_eq!(io(e), (open.clone(), Some(libc::ENOTDIR)));
    }

    /// A directory opened at a path is written in for the caller only if the path, looked up
    /// as them, names that very directory: a link retargeted between the open and the check
    /// is refused.
    #[test]
    fn a_directory_opened_is_theirs_only_if_their_lookup_finds_it() {
        let t = tempfile::tempdir().unwrap();
        mode(t.path(), 0o755);
        let (a, b, link) = (
            t.path().join("a"),
            t.path().join("b"),
            t.path().join("shots"),
        );
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        mode(&a, 0o777);
        mode(&b, 0o777);
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let stranger = Caller::stranger_to(&a);
        let opened = std::fs::File::open(&link).unwrap();
        stranger.may_place_in(&link, &opened).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&b, &link).unwrap();
        let refused = stranger.may_place_in(&link, &opened).unwrap_err();
        assert_eq!(refused.why, Why::Changed, "{refused}");
        assert!(
            refused
                .to_string()
                .contains("what it names changed while it was checked"),
            "{refused}"
        );
    }

    /// A file is opened to be read for the caller only once their lookup found it, a regular
    /// file they may read: a FIFO (another user's writer waiting on it) is not opened.
    #[test]
    fn a_file_is_opened_for_the_caller_only_once_found_theirs_to_read() {
        let t = tempfile::tempdir().unwrap();
        mode(t.path(), 0o755);
        let (scene, fifo) = (t.path().join("scene.ma"), t.path().join("fifo"));
        std::fs::write(&scene, "scene").unwrap();
        mode(&scene, 0o644);
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        let stranger = Caller::stranger_to(&scene);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stranger.open_to_read(&scene).unwrap(), &mut text)
            .unwrap();
        assert_eq!(text, "scene");
        // A writer waiting on the FIFO would be let through by an open: none is made.
        let writer = std::thread::spawn({
            let fifo = fifo.clone();
            move || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(fifo)
                    .map(|_| ())
            }
        });
        let e = stranger.open_to_read(&fifo).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!writer.is_finished(), "the FIFO was opened");
        // Let the writer go.
        drop(std::fs::File::open(&fifo).unwrap());
        writer.join().unwrap().unwrap();
        mode(&scene, 0o600);
        assert!(matches!(
            stranger.open_to_read(&scene),
            Err(Unreachable::Refused(_))
        ));
    }

    /// The kernel's files (`/proc`, `/sys`) show each reader what it may see: the daemon,
    /// root, would read more than its client could, so it reads none for them.
    #[test]
    fn a_file_of_the_kernel_s_is_not_read_for_another_user() {
        let stranger = Caller {
            uid: 4_000_000,
            gid: 4_000_000,
            groups: vec![4_000_000],
        };
        let version = Path::new("/proc/version");
        let Err(Unreachable::Refused(refused)) = stranger.open_to_read(version) else {
            panic!("read")
        };
        assert_eq!(refused.why, Why::KernelMade, "{refused}");
        let reached = stranger.look_up(version).unwrap();
        assert!(stranger.may_read_from(version, &reached.file).is_err());
        // An ordinary file is read as its mode says.
        let t = tempfile::NamedTempFile::new().unwrap();
        stranger.may_read_from(t.path(), t.as_file()).unwrap();
    }

    /// A client's groups are those the kernel kept for its connection when it connected
    /// (the groups of the process that made it), not looked up later by its pid.
    #[test]
    fn a_peer_s_groups_are_those_of_its_connection() {
        use std::os::fd::AsRawFd;
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: a buffer of the length given, for the kernel to fill.
        let mut mine = vec![0 as libc::gid_t; 4096];
        let n = unsafe { libc::getgroups(mine.len() as i32, mine.as_mut_ptr()) };
        assert!(n >= 0);
        mine.truncate(n as usize);
        let mut told = peer_groups(ours.as_raw_fd()).expect("SO_PEERGROUPS (Linux 4.13)");
        told.sort_unstable();
        mine.sort_unstable();
        assert_eq!(told, mine);
        let caller = Caller::of_peer(4_000_000, 4_000_001, None);
        assert_eq!(caller.groups, [4_000_001], "the primary group alone");
    }
}
