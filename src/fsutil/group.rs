//! Giving what a worker places to the group its job runs as: a queue whose jobs run as another
//! OS user (Deadline's `jobRunAsUser`) needs the session's inputs readable and writable by that
//! user's group. The official worker gives them the group and adds group write to the mode;
//! attache adds group read (and search, for directories) too, so a restrictive umask on the
//! worker (0077) does not leave the job files it may write but not read.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Added to the mode of every placed file: group read and write (the official worker adds
/// 0o020).
const FILE_MODE: u32 = 0o060;
/// Added to the mode of every directory placed files are in: group read, write and search.
const DIR_MODE: u32 = 0o070;

/// The group placed files and directories are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAccess {
    /// As given: a group name or a numeric id.
    pub name: String,
    pub gid: u32,
}

impl GroupAccess {
    /// A group by name, or by numeric id; `None` when this machine has no such group.
    pub fn resolve(name: &str) -> Option<GroupAccess> {
        let gid = match name.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_id(name)?,
        };
        Some(GroupAccess {
            name: name.to_string(),
            gid,
        })
    }

    /// Gives an open file (not yet named) to the group, with group read and write.
    pub fn grant_file(&self, file: &File) -> std::io::Result<()> {
        grant(file, self.gid, FILE_MODE)
    }

    /// Gives a directory to the group, with group read, write and search; never through a
    /// symlink.
    pub fn grant_dir(&self, dir: &Path) -> std::io::Result<()> {
        grant(
            &super::beneath::open_dir_nofollow(dir, true)?,
            self.gid,
            DIR_MODE,
        )
    }

    /// What to tell the user when the system refused: the group and what to do.
    pub fn advice(&self, e: &std::io::Error) -> String {
        let what = format!("cannot give it to group {} (--job-group): {e}", self.name);
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                "{what}. attache's user must be a member of that group (the group of the user the job runs as), or attache must run as root"
            )
        } else {
            what
        }
    }
}

/// Sets the group of an open file or directory and adds `bits` to its mode.
fn grant(file: &File, gid: u32, bits: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    if meta.gid() != gid {
        std::os::unix::fs::fchown(file, None, Some(gid))?;
    }
    let mode = meta.permissions().mode();
    if mode & bits != bits {
        file.set_permissions(std::fs::Permissions::from_mode(mode | bits))?;
    }
    Ok(())
}

/// The id of the group `name`, from the system's group database.
pub fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid C string; getgrnam returns NULL or a pointer valid until the
    // next call, read at once.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

/// The name of group `gid`, when this machine knows it.
pub fn group_name(gid: u32) -> Option<String> {
    // SAFETY: getgrgid returns NULL or a pointer valid until the next call, read at once.
    let g = unsafe { libc::getgrgid(gid) };
    (!g.is_null()).then(|| {
        unsafe { std::ffi::CStr::from_ptr((*g).gr_name) }
            .to_string_lossy()
            .into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The process's own group: one it may give its files to without being root.
    fn own_group() -> GroupAccess {
        // SAFETY: getegid cannot fail.
        let gid = unsafe { libc::getegid() };
        GroupAccess::resolve(&gid.to_string()).unwrap()
    }

    #[test]
    fn files_and_directories_get_the_group_and_group_access() {
        let t = tempfile::tempdir().unwrap();
        let g = own_group();
        let dir = t.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        // As a umask of 0077 leaves them.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.join("f");
        let f = File::create(&path).unwrap();
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .unwrap();
        g.grant_file(&f).unwrap();
        g.grant_dir(&dir).unwrap();
        for (p, want) in [(&path, 0o660), (&dir, 0o770)] {
            let m = std::fs::metadata(p).unwrap();
            assert_eq!(m.mode() & 0o7777, want, "{}", p.display());
            assert_eq!(m.gid(), g.gid);
        }
        // A symlink to a directory is not followed.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(g.grant_dir(&link).is_err());
    }

    #[test]
    fn groups_resolve_by_name_or_id() {
        assert_eq!(GroupAccess::resolve("0").unwrap().gid, 0);
        assert_eq!(GroupAccess::resolve("root").unwrap().gid, 0);
        assert!(GroupAccess::resolve("no-such-group-attache").is_none());
    }
}
