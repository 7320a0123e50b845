//! Small file-system helpers shared by commands and jobs; `staged` holds files that get their
//! name only when complete, `group` gives placed files to the group a job runs as, `access`
//! says what another user may do with a path and looks paths up as that user would (the
//! daemon acting for its clients), `beneath` reads and writes a session's records without
//! following a link its user planted.

pub mod access;
pub mod beneath;
pub mod group;
pub mod staged;

use std::io::Write;
use std::path::Path;

/// Advice to append to the message of an I/O error the user can fix on their side: a full
/// filesystem or a used-up disk quota, a refusal (naming the user refused), a read-only
/// mount. Empty for any other error.
pub fn io_advice(e: &std::io::Error) -> std::borrow::Cow<'static, str> {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            ". The filesystem is full or a disk quota is used up: free some space on it and run again".into()
        }
        // A daemon runs as a service user, a job as another OS user, an NFS export squashes
        // root: who was refused is what to check first.
        std::io::ErrorKind::PermissionDenied => format!(
            ". attache runs as {}: give it access to that path, or choose another",
            running_user()
        )
        .into(),
        std::io::ErrorKind::ReadOnlyFilesystem => {
            ". The filesystem is mounted read-only: choose a path on a writable one".into()
        }
        _ => "".into(),
    }
}

/// The user this process runs as, by name when the machine knows it: `user render (uid
/// 1001)`.
pub fn running_user() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    match user_name(uid) {
        Some(n) => format!("user {n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The name of user `uid`, when this machine knows it.
pub fn user_name(uid: u32) -> Option<String> {
    // SAFETY: getpwuid returns NULL or a pointer valid until the next call, read at once.
    let pw = unsafe { libc::getpwuid(uid) };
    (!pw.is_null()).then(|| {
        unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }
            .to_string_lossy()
            .into_owned()
    })
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers see the old file or the whole new one, never a part. A path that is a device,
/// FIFO or socket (`/dev/null`, `/dev/stdout`) is written in place instead.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`], but without waiting for the disk: for records a power cut may cost
/// (a reader must then cope with an old, empty or missing file), written where an `fsync`
/// could wait for the disk's whole backlog (the daemon's job records: up to half a second
/// each while a transfer fills the page cache, which held up every cancel).
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_inner(path, |w| w.write_all(bytes), false)
}

/// Like [`write_atomic`], with the content written by `write` (buffered) as it is produced.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    write_atomic_inner(path, write, true)
}

fn write_atomic_inner(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
    sync: bool,
) -> std::io::Result<()> {
    // `-o /dev/null`, `-o /dev/stdout`, a FIFO: write into it. Renaming a temporary file over
    // it would replace the device node with a regular file (as root, even /dev/null).
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        let mut w = std::io::BufWriter::new(&file);
        write(&mut w)?;
        return w.flush();
    }
    replace_inner(path, write, sync)
}

/// Like [`write_atomic_with`], but whatever is at `path` (a link, a FIFO, a device) is
/// replaced by the new file, never written into: for files in a directory another user may
/// have planted something in (a session's records).
pub fn replace_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    replace_inner(path, write, true)
}

fn replace_inner(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
    sync: bool,
) -> std::io::Result<()> {
    let tmp = AtomicFile::create(path)?;
    let mut w = std::io::BufWriter::new(tmp.file());
    write(&mut w)?;
    w.flush()?;
    drop(w);
    tmp.commit(sync)
}

/// A file written under a temporary name beside its path and renamed to it only by
/// [`AtomicFile::commit`]: readers see the old file or the whole new one. Dropped without a
/// commit (an error, a cancel), the temporary file is removed.
pub struct AtomicFile {
    path: std::path::PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl AtomicFile {
    /// Starts the file that will be `path` (its directory must exist).
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp: temp_file_in(dir, TEMP_PREFIX, "")?,
        })
    }

    pub fn file(&self) -> &std::fs::File {
        self.tmp.as_file()
    }

    /// The name it gets on commit.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the file its name; with `sync`, once its data is on the disk.
    pub fn commit(self, sync: bool) -> std::io::Result<()> {
        if sync {
            self.tmp.as_file().sync_data()?;
        }
        self.tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Writes every byte of `bufs`, in order, at `offset` (`pwritev`: one system call for many
/// buffers, and no copy of them into one).
pub fn write_all_vectored_at(
    file: &std::fs::File,
    bufs: &[bytes::Bytes],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    IoSlice::advance_slices(&mut rest, 0); // drops leading empty buffers
    while !rest.is_empty() {
        let count = rest.len().min(1024) as libc::c_int; // IOV_MAX on Linux
        let at = libc::off_t::try_from(offset).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "offset too large")
        })?;
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix; the slices outlive the call.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), rest.as_ptr().cast(), count, at) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut rest, n as usize);
    }
    Ok(())
}

/// Chunks written at consecutive offsets of a file from `at` on, gathered until `batch` bytes
/// wait and then written with one [`write_all_vectored_at`] (the chunks as they are, no copy).
pub struct BatchedWriter<'a> {
    file: &'a std::fs::File,
    /// Where the first waiting chunk goes.
    at: u64,
    waiting: Vec<bytes::Bytes>,
    waiting_len: u64,
    batch: u64,
}

impl<'a> BatchedWriter<'a> {
    pub fn new(file: &'a std::fs::File, at: u64, batch: usize) -> BatchedWriter<'a> {
        BatchedWriter {
            file,
            at,
            waiting: Vec::new(),
            waiting_len: 0,
            batch: batch as u64,
        }
    }

    /// Adds `chunk` after everything pushed so far; writes the batch once it is full.
    pub fn push(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        self.waiting_len += chunk.len() as u64;
        self.waiting.push(chunk);
        if self.waiting_len >= self.batch {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what waits.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if !self.waiting.is_empty() {
            write_all_vectored_at(self.file, &self.waiting, self.at)?;
            self.at += self.waiting_len;
            self.waiting.clear();
            self.waiting_len = 0;
        }
        Ok(())
    }

    /// The offset just past everything pushed, written or not.
    pub fn end(&self) -> u64 {
        self.at + self.waiting_len
    }

    /// The offset just past what is written to the file.
    pub fn written_end(&self) -> u64 {
        self.at
    }
}

/// A manifest mtime (microseconds since the epoch, possibly negative) as a file time.
pub fn file_time_from_us(mtime_us: i64) -> filetime::FileTime {
    let ns = i128::from(mtime_us) * 1000;
    filetime::FileTime::from_unix_time(
        ns.div_euclid(1_000_000_000) as i64,
        ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// The name every temporary file attache writes beside its final one starts with.
pub const TEMP_PREFIX: &str = ".attache-tmp-";

/// Whether a file can be made in `dir` (and is removed again): the check before a command
/// or the daemon relies on writing there. The error is the system's, without the temporary
/// file's name (which means nothing to the user).
pub fn can_write_in(dir: &Path) -> std::io::Result<()> {
    temp_file_in(dir, TEMP_PREFIX, "").map(drop).map_err(|e| {
        let text = e.to_string();
        let system = text.split(" at path ").next().unwrap_or_default();
        std::io::Error::new(e.kind(), system.to_string())
    })
}

/// A temporary file in `dir` (removed if dropped) that will become a regular file: created
/// with mode 0666 less the umask, like any file a program writes, rather than tempfile's 0600.
pub fn temp_file_in(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .suffix(suffix)
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
}

/// The whole content of `file`, if it is at most `max` bytes; a larger one is an error of kind
/// `InvalidData` saying so, read no further (a huge or sparse file does not fill the memory).
pub fn read_capped(file: &mut impl std::io::Read, max: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, max + 1), &mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB: not a document attache reads",
                max.div_ceil(1 << 20)
            ),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn a_document_over_its_limit_is_refused_without_reading_it_all() {
        let mut small: &[u8] = b"{}";
        assert_eq!(read_capped(&mut small, 2).unwrap(), b"{}");
        let mut endless = std::io::repeat(b' ');
        let e = read_capped(&mut endless, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
    }

    #[test]
    fn a_full_disk_a_refusal_or_a_read_only_mount_gets_advice_other_errors_none() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let advice = io_advice(&std::io::Error::from_raw_os_error(errno));
            assert!(advice.contains("free some space"), "{errno}: {advice}");
        }
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        for errno in [libc::EACCES, libc::EPERM] {
            let advice = io_advice(&std::io::Error::from_raw_os_error(errno));
            assert!(
                advice.contains("attache runs as ") && advice.contains(&format!("uid {uid}")),
                "{errno}: {advice}"
            );
        }
        let advice = io_advice(&std::io::Error::from_raw_os_error(libc::EROFS));
        assert!(advice.contains("mounted read-only"), "{advice}");
        for errno in [libc::ENOENT, libc::EIO] {
            assert_eq!(io_advice(&std::io::Error::from_raw_os_error(errno)), "");
        }
    }

    #[test]
    fn vectored_writes_land_in_order_at_their_offset() {
        let t = tempfile::tempdir().unwrap();
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(t.path().join("f"))
            .unwrap();
        f.set_len(8).unwrap();
        // More buffers than one pwritev takes (IOV_MAX), empty ones among them.
        let mut bufs = vec![bytes::Bytes::new(), bytes::Bytes::from_static(b"ab")];
        bufs.extend((0..1500).map(|i| bytes::Bytes::from(vec![b'0' + (i % 10) as u8])));
        bufs.push(bytes::Bytes::new());
        write_all_vectored_at(&f, &bufs, 3).unwrap();
        let got = std::fs::read(t.path().join("f")).unwrap();
        let mut want = vec![0u8; 3];
        want.extend_from_slice(b"ab");
        want.extend((0..1500).map(|i| b'0' + (i % 10) as u8));
        assert_eq!(got, want);
    }

    #[test]
    fn batched_writes_land_in_order_and_only_full_batches_go_before_the_flush() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        let f = std::fs::File::create(&path).unwrap();
        let mut w = BatchedWriter::new(&f, 2, 5);
        w.push(bytes::Bytes::from_static(b"abc")).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"",
            "3 of 5 bytes: still waiting"
        );
        w.push(bytes::Bytes::from_static(b"defg")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0abcdefg");
        w.push(bytes::Bytes::from_static(b"hi")).unwrap();
        assert_eq!(w.end(), 11, "past everything pushed, written or not");
        w.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0abcdefghi");
    }

    #[test]
    fn writing_to_a_fifo_writes_into_it_and_keeps_it_a_fifo() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("out");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_atomic(&fifo, b"manifest bytes").unwrap();
        assert_eq!(reader.join().unwrap(), b"manifest bytes");
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "still a FIFO, not replaced by a file");
    }

    #[test]
    fn a_regular_file_is_replaced_whole() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.json");
        std::fs::write(&p, b"old and longer").unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }
}
