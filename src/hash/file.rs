//! Hashing one file with large reads, detecting a file that changes while it is read; and
//! copying one while hashing what was copied.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3Default;

use super::ContentHash;
use crate::scan::FileStat;

#[derive(Debug, thiserror::Error)]
pub enum HashFileError {
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: disappeared after it was scanned")]
    Vanished { path: PathBuf },
    #[error(
        "{path}: kept changing while it was read ({tries} tries); wait until it is complete and run again"
    )]
    Changed { path: PathBuf, tries: u32 },
    #[error(
        "{path}: replaced by another file (a link?) since it was scanned; the daemon reads for a client of another user only the file that user's access was checked on"
    )]
    Replaced { path: PathBuf },
    #[error("cancelled")]
    Cancelled,
}

/// A file's hash and the stat of exactly the content that was hashed.
#[derive(Debug, Clone)]
pub struct FileHash {
    pub hash: ContentHash,
    pub stat: FileStat,
    /// The content, when it fit in one read and the caller asked to keep it.
    pub data: Option<bytes::Bytes>,
}

/// How many times a file that changed under the reader is read again before giving up.
const TRIES: u32 = 3;

/// Files larger than this many read buffers are read on a second thread while this one hashes,
/// so a single large file is hashed at the speed it can be read.
const PIPELINE_MIN_BUFFERS: u64 = 4;

/// Hashes the file at `path` with reads of `buf_size` bytes. `on_bytes` is told of every
/// chunk hashed (for progress). A file whose size, mtime or ctime moves while it is read is
/// read again, so the returned stat always describes the content that was hashed.
pub fn hash_file(
    path: &Path,
    buf_size: usize,
    cancel: &CancellationToken,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<FileHash, HashFileError> {
    hash_file_keeping(path, None, buf_size, 0, cancel, on_bytes)
}

impl HashFileError {
    fn of_io(path: &Path, source: io::Error) -> HashFileError {
        if source.kind() == io::ErrorKind::NotFound {
            HashFileError::Vanished {
                path: path.to_path_buf(),
            }
        } else {
            HashFileError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Opens `path` as hashing does (with `same`, only that file), or says why it cannot be
/// read: after a failure the other files are only opened, so that one run names every file
/// that cannot be read.
pub fn open_to_hash(
    path: &Path,
    same: Option<crate::fsutil::beneath::FileId>,
) -> Result<std::fs::File, HashFileError> {
    // Not blocking on a FIFO or touching a device put where the scan found a file.
    match crate::fsutil::beneath::open_regular_same(path, same) {
        Err(e) if crate::fsutil::beneath::is_replaced(&e) => Err(HashFileError::Replaced {
            path: path.to_path_buf(),
        }),
        opened => opened.map_err(|e| HashFileError::of_io(path, e)),
    }
}

/// Like [`hash_file`], and keeps the content of a file of at most `keep_up_to` bytes that was
/// read in one go (so an upload need not read it again). With `same`, only that file (device
/// and inode) is opened ([`crate::fsutil::beneath::open_regular_same`]).
pub fn hash_file_keeping(
    path: &Path,
    same: Option<crate::fsutil::beneath::FileId>,
    buf_size: usize,
    keep_up_to: u64,
    cancel: &CancellationToken,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<FileHash, HashFileError> {
    let io_err = |source: io::Error| HashFileError::of_io(path, source);
    for _ in 0..TRIES {
        let file = open_to_hash(path, same)?;
        let before = FileStat::of(&file.metadata().map_err(io_err)?);
        let keep = before.size <= keep_up_to;
        let (hash, len, data) = if before.size > buf_size as u64 * PIPELINE_MIN_BUFFERS {
            hash_pipelined(file, before.size, buf_size, cancel, on_bytes).map(|(h, n)| (h, n, None))
        } else {
            hash_inline(file, buf_size, before.size, keep, cancel, on_bytes)
        }
        .map_err(|e| match e {
            ReadError::Cancelled => HashFileError::Cancelled,
            ReadError::Io(source) => io_err(source),
        })?;
        let after = FileStat::of(&std::fs::metadata(path).map_err(io_err)?);
        if after == before && len == before.size {
            return Ok(FileHash {
                hash,
                stat: before,
                data,
            });
        }
        tracing::debug!(path = %path.display(), "file changed while it was hashed; reading it again");
    }
    Err(HashFileError::Changed {
        path: path.to_path_buf(),
        tries: TRIES,
    })
}

enum ReadError {
    Io(io::Error),
    Cancelled,
}

thread_local! {
    /// One read buffer per hashing-pool thread, reused across files. Only the hashing pool
    /// keeps one: a buffer kept by each of the runtime's blocking threads (hundreds, when
    /// many small downloads are verified at once) held hundreds of MiB.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Read buffers grow in steps of this size up to `buf_size`: a small file needs no 1 MiB.
const BUFFER_STEP: usize = 64 << 10;

/// (hash, bytes read, the content if `keep` and it fit in one read)
type Inline = (ContentHash, u64, Option<bytes::Bytes>);

fn hash_inline(
    file: File,
    buf_size: usize,
    expected: u64,
    keep: bool,
    cancel: &CancellationToken,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<Inline, ReadError> {
    // One byte more than the file, so that one read can see its end.
    let size = usize::try_from(expected.saturating_add(1))
        .unwrap_or(usize::MAX)
        .next_multiple_of(BUFFER_STEP)
        .min(buf_size.max(1));
    if rayon::current_thread_index().is_none() {
        let mut buf = vec![0; size];
        return hash_inline_with(&mut buf, file, expected, keep, cancel, on_bytes);
    }
    BUFFER.with_borrow_mut(|buf| {
        buf.resize(size, 0);
        hash_inline_with(buf, file, expected, keep, cancel, on_bytes)
    })
}

fn hash_inline_with(
    buf: &mut [u8],
    file: File,
    expected: u64,
    keep: bool,
    cancel: &CancellationToken,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<Inline, ReadError> {
    let mut hasher = Xxh3Default::new();
    let mut total = 0u64;
    // A file that fits in one buffer (most of them) is hashed in one shot.
    let first = fill_at(&file, buf, 0)?;
    if (first as u64) == expected && first < buf.len() {
        on_bytes(first as u64);
        let data = keep.then(|| bytes::Bytes::copy_from_slice(&buf[..first]));
        return Ok((ContentHash::of(&buf[..first]), first as u64, data));
    }
    let mut n = first;
    loop {
        if n == 0 {
            return Ok((ContentHash(hasher.digest128()), total, None));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        on_bytes(n as u64);
        if cancel.is_cancelled() {
            return Err(ReadError::Cancelled);
        }
        n = fill_at(&file, buf, total)?;
    }
}

/// Files of at least this many read buffers get several readers (if a slot is free).
const SPREAD_MIN_BUFFERS: u64 = 32;

/// How many large files at once are read by several readers. Past that, the cores are busy
/// with other files anyway, and every such file holds six buffers and three threads.
const SPREAD_SLOTS: usize = 2;

/// Files being read by several readers right now.
static SPREAD_IN_USE: AtomicUsize = AtomicUsize::new(0);

/// A slot in [`SPREAD_SLOTS`], given back on drop.
struct SpreadSlot;

impl SpreadSlot {
    fn take() -> Option<SpreadSlot> {
        SPREAD_IN_USE
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < SPREAD_SLOTS).then_some(n + 1)
            })
            .ok()
            .map(|_| SpreadSlot)
    }
}

impl Drop for SpreadSlot {
    fn drop(&mut self) {
        SPREAD_IN_USE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a pipelined file is read: `readers` threads, each with `per_reader` buffers.
#[derive(Clone, Copy)]
struct Spread {
    readers: usize,
    per_reader: usize,
}

/// One reader, three buffers: enough to overlap reading and hashing.
const ONE_READER: Spread = Spread {
    readers: 1,
    per_reader: 3,
};

/// Three readers of two buffers each. One reader copying from the page cache is slower than
/// hashing (6.7 against 27 GiB/s here); several copying at once keep the hasher fed, and a
/// 2 GiB file is hashed at 113% of a plain one-thread read loop instead of 84% (medians of 10
/// fresh processes, 2 vCPUs; 2 readers or 1 buffer each reached 96-102%). See bench/README.md,
/// "Large-file gap (closed)".
const THREE_READERS: Spread = Spread {
    readers: 3,
    per_reader: 2,
};

/// Reads on helper threads into buffers while this thread hashes them in file order. Each of
/// `spread.readers` readers reads every `readers`-th chunk at its offset, so a large file is
/// copied out of the page cache by several threads at once.
fn hash_pipelined(
    file: File,
    size: u64,
    buf_size: usize,
    cancel: &CancellationToken,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<(ContentHash, u64), ReadError> {
    let slot = (size >= buf_size as u64 * SPREAD_MIN_BUFFERS)
        .then(SpreadSlot::take)
        .flatten();
    let spread = if slot.is_some() {
        THREE_READERS
    } else {
        ONE_READER
    };
    type Chunk = Result<(Vec<u8>, usize), ReadError>;
    let mut fulls = Vec::with_capacity(spread.readers);
    let mut empties = Vec::with_capacity(spread.readers);
    let mut readers = Vec::with_capacity(spread.readers);
    for _ in 0..spread.readers {
        let (full_tx, full_rx) = mpsc::sync_channel::<Chunk>(spread.per_reader);
        let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(spread.per_reader);
        for _ in 0..spread.per_reader {
            empty_tx.send(vec![0; buf_size]).expect("receiver alive");
        }
        fulls.push(full_rx);
        empties.push(empty_tx);
        readers.push((full_tx, empty_rx));
    }
    let file = &file;
    // `move`: the hasher's channel ends drop when it returns, which stops the readers before
    // the scope joins them.
    std::thread::scope(move |s| {
        for (r, (full_tx, empty_rx)) in readers.into_iter().enumerate() {
            s.spawn(move || {
                let stride = (buf_size * spread.readers) as u64;
                let mut offset = (r * buf_size) as u64;
                // Stops when the hasher drops its ends (done, failed or cancelled).
                while let Ok(mut buf) = empty_rx.recv() {
                    let got = fill_at(file, &mut buf, offset).map(|n| (buf, n));
                    let stop = !matches!(got, Ok((_, n)) if n == buf_size);
                    if full_tx.send(got).is_err() || stop {
                        return;
                    }
                    offset += stride;
                }
            });
        }
        let mut hasher = Xxh3Default::new();
        let mut total = 0u64;
        for r in (0..spread.readers).cycle() {
            let (buf, n) = fulls[r].recv().expect("reader sends until it stops")?;
            hasher.update(&buf[..n]);
            total += n as u64;
            on_bytes(n as u64);
            // A short chunk is the end of the file (as far as the readers saw it).
            if n < buf_size {
                break;
            }
            if cancel.is_cancelled() {
                return Err(ReadError::Cancelled);
            }
            let _ = empties[r].send(buf);
        }
        drop(slot);
        Ok((ContentHash(hasher.digest128()), total))
    })
}

/// Reads at `offset` until `buf` is full or the file ends; returns the bytes read.
fn fill_at(file: &File, buf: &mut [u8], offset: u64) -> Result<usize, ReadError> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(n)
}

/// Which end of a [`copy_hashing`] failed, or that it was cancelled.
#[derive(Debug)]
pub enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Cancelled,
}

/// Copies `from` to the end of `to` through a buffer of `buf_len` bytes, returning the hash
/// and length of what was copied (the source may have changed since it was last hashed).
/// `cancel` is looked at before each buffer: a copy of gigabytes stops within one.
pub fn copy_hashing(
    mut from: File,
    mut to: &File,
    buf_len: usize,
    cancel: &CancellationToken,
) -> Result<(ContentHash, u64), CopyError> {
    use std::io::{Read, Write};
    let mut buf = vec![0; buf_len];
    let mut hasher = Xxh3Default::new();
    let mut total = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(CopyError::Cancelled);
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok((ContentHash(hasher.digest128()), total)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(path: &Path, buf: usize) -> Result<FileHash, HashFileError> {
        hash_file(path, buf, &CancellationToken::new(), &|_| {})
    }

    #[test]
    fn a_fifo_where_a_file_was_is_refused_at_once_not_waited_on() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("frame.exr");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without a writer, opening it to read would wait forever.
        let e = hash(&fifo, 4096).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn small_medium_and_pipelined_files_hash_like_one_shot() {
        let t = tempfile::tempdir().unwrap();
        // Up to 4 buffers: one read; then one reader; from 32 buffers: three readers, ending on
        // each reader's chunk, short or exactly full.
        let sizes = [0usize, 1, 4095, 4096, 4097, 4 * 4096, 4 * 4096 + 1, 100_000];
        let spread = [32 * 4096, 32 * 4096 + 1, 33 * 4096, 34 * 4096 - 1, 300_001];
        for size in sizes.into_iter().chain(spread) {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let p = t.path().join(format!("f{size}"));
            std::fs::write(&p, &data).unwrap();
            let got = hash(&p, 4096).unwrap();
            assert_eq!(got.hash, ContentHash::of(&data), "size {size}");
            assert_eq!(got.stat.size, size as u64);
        }
    }

    #[test]
    fn progress_counts_every_byte() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, vec![7u8; 50_000]).unwrap();
        let seen = std::sync::atomic::AtomicU64::new(0);
        hash_file(&p, 4096, &CancellationToken::new(), &|n| {
            seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(seen.into_inner(), 50_000);
    }

    #[test]
    fn vanished_and_unreadable_files_are_named() {
        let t = tempfile::tempdir().unwrap();
        let gone = t.path().join("gone");
        let err = hash(&gone, 4096).unwrap_err();
        assert!(matches!(err, HashFileError::Vanished { .. }));
        assert!(err.to_string().contains("gone"));
        let dir_as_file = t.path();
        assert!(matches!(
            hash(dir_as_file, 4096),
            Err(HashFileError::Io { .. })
        ));
    }

    #[test]
    fn cancelled_hash_stops() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, vec![1u8; 1 << 20]).unwrap();
        let token = CancellationToken::new();
        token.cancel();
        assert!(matches!(
            hash_file(&p, 4096, &token, &|_| {}),
            Err(HashFileError::Cancelled)
        ));
    }
}
