//! A file sent as one request body, read as it goes out: single PUTs too big to hold in memory.
//!
//! The bytes are hashed as they are read, and the last chunk is handed over only if the whole
//! content still has the planned hash and size. A body cut short never becomes an object (the
//! store sees fewer bytes than the Content-Length it was promised), so a file that changed
//! while it was sent is never stored under the wrong hash.

use crate::fsutil::beneath::{FileId, is_replaced, open_regular_same};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use xxhash_rust::xxh3::Xxh3Default;

use super::StoreError;
use super::sent_bytes::SentBytes;
use crate::hash::ContentHash;

/// Bytes read from the file at a time. The next chunk is read while this one is sent.
pub const READ_CHUNK: usize = 1 << 20;

/// A file to upload in one request, with the content it must still have.
pub struct FileSource {
    pub path: PathBuf,
    pub size: u64,
    pub hash: ContentHash,
    /// The very file to read (device and inode), for another user's job; `None`: what the
    /// path names, checked by its content.
    pub same_file: Option<FileId>,
    /// Counts bytes as they are first sent (a retry sends them again, counted once).
    sent: Arc<SentBytes>,
    /// Why the file could not all be sent, once it could not: a store's client may only say
    /// that the body failed, and a retry would read a changed file again for nothing.
    failure: Mutex<Option<SourceError>>,
}

/// Why a file's bytes could not all be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("file changed during upload (its content no longer has hash {0}); nothing was stored")]
    Changed(ContentHash),
    #[error("cannot read the file: {0}")]
    Read(String),
}

impl FileSource {
    pub fn new(
        path: PathBuf,
        size: u64,
        hash: ContentHash,
        same_file: Option<FileId>,
        sent: Arc<SentBytes>,
    ) -> FileSource {
        FileSource {
            path,
            size,
            hash,
            same_file,
            sent,
            failure: Mutex::new(None),
        }
    }

    /// Why the file could not all be sent, if it could not.
    pub fn failure(&self) -> Option<SourceError> {
        self.failure.lock().expect("not poisoned").clone()
    }

    /// The store's error for `error`, naming this file.
    pub fn store_error(&self, error: SourceError) -> StoreError {
        StoreError::Source {
            path: self.path.clone(),
            error,
        }
    }

    /// The file's bytes from the start, in chunks of at most [`READ_CHUNK`], each read on a
    /// blocking thread while the one before is sent. The stream ends with an error instead of
    /// the last chunk when the content is not the planned one; once it has, every later
    /// stream is that error alone.
    pub fn chunks(
        self: &Arc<Self>,
    ) -> impl Stream<Item = Result<Bytes, SourceError>> + Send + use<> {
        if let Some(failed) = self.failure() {
            return futures::stream::once(async move { Err(failed) }).left_stream();
        }
        let state = Reader {
            source: self.clone(),
            file: None,
            offset: 0,
            hasher: Some(Box::new(Xxh3Default::new())),
            ahead: None,
            failed: false,
        };
        futures::stream::unfold(state, |mut r| async move {
            let chunk = r.next().await?;
            if let Err(e) = &chunk {
                r.failed = true;
                *r.source.failure.lock().expect("not poisoned") = Some(e.clone());
            }
            Some((chunk, r))
        })
        .right_stream()
    }

    /// The bytes of the file counted as sent so far.
    pub fn sent(&self) -> &SentBytes {
        &self.sent
    }
}

type Read = std::io::Result<(Vec<u8>, Box<Xxh3Default>)>;

struct Reader {
    source: Arc<FileSource>,
    file: Option<Arc<std::fs::File>>,
    offset: u64,
    /// The running hash; moved into the read in flight (`ahead`) while there is one.
    hasher: Option<Box<Xxh3Default>>,
    ahead: Option<tokio::task::JoinHandle<Read>>,
    failed: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<Bytes, SourceError>> {
        let size = self.source.size;
        // The hasher is gone once the last chunk was read (a read in flight holds it).
        if self.failed || (self.ahead.is_none() && self.hasher.is_none()) {
            return None;
        }
        if self.ahead.is_none()
            && let Err(e) = self.read_ahead()
        {
            return Some(Err(e));
        }
        let read = self
            .ahead
            .take()
            .expect("started above")
            .await
            .expect("read task panicked");
        let (buf, hasher) = match read {
            Ok(r) => r,
            // Shorter than planned: it changed.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Some(Err(SourceError::Changed(self.source.hash)));
            }
            Err(e) => return Some(Err(SourceError::Read(e.to_string()))),
        };
        let end = self.offset + buf.len() as u64;
        self.offset = end;
        if end < size {
            self.hasher = Some(hasher);
            if let Err(e) = self.read_ahead() {
                return Some(Err(e));
            }
        } else if let Err(e) = self.check_whole(&hasher) {
            return Some(Err(e));
        }
        self.source.sent.sent_up_to(end);
        Some(Ok(Bytes::from(buf)))
    }

    /// Starts reading the chunk at `offset` (an empty file: reads nothing, once).
    fn read_ahead(&mut self) -> Result<(), SourceError> {
        let file = match &self.file {
            Some(f) => f.clone(),
            None => {
                // Not blocking on a FIFO put where the file was hashed.
                let f =
                    open_regular_same(&self.source.path, self.source.same_file).map_err(|e| {
                        match is_replaced(&e) {
                            true => SourceError::Changed(self.source.hash),
                            false => SourceError::Read(e.to_string()),
                        }
                    })?;
                self.file.insert(Arc::new(f)).clone()
            }
        };
        let (offset, size) = (self.offset, self.source.size);
        let len = (size - offset).min(READ_CHUNK as u64) as usize;
        let mut hasher = self.hasher.take().expect("returned after each read");
        self.ahead = Some(tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, offset)?;
            hasher.update(&buf);
            Ok((buf, hasher))
        }));
        Ok(())
    }

    /// After the last planned byte: the content has the planned hash, and nothing was added.
    fn check_whole(&self, hasher: &Xxh3Default) -> Result<(), SourceError> {
        let changed = || SourceError::Changed(self.source.hash);
        if ContentHash(hasher.digest128()) != self.source.hash {
            return Err(changed());
        }
        let file = self.file.as_ref().expect("opened by the first read");
        match file.metadata() {
            Ok(m) if m.len() == self.source.size => Ok(()),
            Ok(_) => Err(changed()),
            Err(e) => Err(SourceError::Read(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn collect(source: &Arc<FileSource>) -> Vec<Result<Bytes, SourceError>> {
        source.chunks().collect().await
    }

    fn source_of(dir: &tempfile::TempDir, data: &[u8]) -> Arc<FileSource> {
        let path = dir.path().join("f");
        std::fs::write(&path, data).unwrap();
        Arc::new(FileSource::new(
            path,
            data.len() as u64,
            ContentHash::of(data),
            None,
            Arc::new(SentBytes::new(Arc::new(
                crate::progress::Progress::default(),
            ))),
        ))
    }

    #[tokio::test]
    async fn sends_the_whole_file_in_chunks_and_counts_each_byte_once() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..READ_CHUNK * 2 + 7).map(|i| (i % 251) as u8).collect();
        let source = source_of(&dir, &data);
        for _ in 0..2 {
            // a retry reads it all again
            let chunks = collect(&source).await;
            assert_eq!(chunks.len(), 3);
            let sent: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap()).collect();
            assert_eq!(sent, data);
        }
        assert_eq!(source.sent().reported(), data.len() as u64);
    }

    #[tokio::test]
    async fn an_empty_file_is_one_empty_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let source = source_of(&dir, b"");
        let chunks = collect(&source).await;
        assert_eq!(chunks, vec![Ok(Bytes::new())]);
    }

    #[tokio::test]
    async fn changed_content_ends_the_stream_before_its_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![1u8; READ_CHUNK + 10];
        let source = source_of(&dir, &data);
        let mut other = data.clone();
        other[READ_CHUNK + 5] = 2; // same size, the last chunk differs
        std::fs::write(&source.path, &other).unwrap();
        let chunks = collect(&source).await;
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].as_ref().unwrap().len(), READ_CHUNK);
        assert_eq!(chunks[1], Err(SourceError::Changed(source.hash)));
        // Recorded: a retry gets the error alone, without reading the file again.
        assert_eq!(source.failure(), Some(SourceError::Changed(source.hash)));
        std::fs::write(&source.path, &data).unwrap();
        assert_eq!(
            collect(&source).await,
            vec![Err(SourceError::Changed(source.hash))]
        );
    }

    #[tokio::test]
    async fn a_shorter_or_longer_file_is_changed() {
        let data = vec![3u8; 1000];
        let mut longer = data.clone();
        longer.push(3);
        for now in [&data[..999], &longer[..]] {
            let dir = tempfile::tempdir().unwrap();
            let source = source_of(&dir, &data);
            std::fs::write(&source.path, now).unwrap();
            let changed = Err(SourceError::Changed(source.hash));
            assert_eq!(collect(&source).await, vec![changed], "{} bytes", now.len());
        }
    }

    #[tokio::test]
    async fn a_missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let source = source_of(&dir, b"abc");
        std::fs::remove_file(&source.path).unwrap();
        let chunks = collect(&source).await;
        assert!(matches!(chunks.as_slice(), [Err(SourceError::Read(_))]));
    }
}
