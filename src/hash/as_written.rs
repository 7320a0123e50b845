//! Hashing a file while it is being written out of order (parallel ranged downloads): a
//! blocking thread reads and hashes each prefix as soon as it is complete, so the check of a
//! large download overlaps the download instead of re-reading the whole file after it.
//!
//! The reader is a thread of its own, not one of the runtime's blocking threads: it waits
//! for writes that need those threads, and many large downloads at once could otherwise take
//! them all and wait forever.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc;

use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3Default;

use super::ContentHash;

/// Read size of the trailing reader (the pages were just written: a page-cache copy).
const CHUNK: usize = 1 << 20;

type Outcome = std::io::Result<Option<ContentHash>>;

pub struct AsWritten {
    ready: Option<mpsc::Sender<u64>>,
    done: tokio::sync::oneshot::Receiver<Outcome>,
}

impl AsWritten {
    /// Starts hashing `file`, which will be `size` bytes long once written.
    pub fn start(
        file: Arc<File>,
        size: u64,
        cancel: CancellationToken,
    ) -> std::io::Result<AsWritten> {
        let (tx, rx) = mpsc::channel::<u64>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let read_back = move || -> Outcome {
            let mut hasher = Xxh3Default::new();
            let mut buf = vec![0; CHUNK.min(size as usize).max(1)];
            let (mut pos, mut ready) = (0u64, 0u64);
            while pos < size {
                if pos == ready {
                    // Wait for more; a closed channel means the download was given up.
                    match rx.recv() {
                        Ok(r) => ready = r,
                        Err(_) => return Ok(None),
                    }
                }
                while let Ok(r) = rx.try_recv() {
                    ready = r;
                }
                if cancel.is_cancelled() {
                    return Ok(None);
                }
                let n = (ready - pos).min(buf.len() as u64) as usize;
                file.read_exact_at(&mut buf[..n], pos)?;
                hasher.update(&buf[..n]);
                pos += n as u64;
            }
            Ok(Some(ContentHash(hasher.digest128())))
        };
        std::thread::Builder::new()
            .name("attache-hash-as-written".into())
            .spawn(move || {
                let _ = done_tx.send(read_back());
            })?;
        Ok(AsWritten {
            ready: Some(tx),
            done,
        })
    }

    /// The first `len` bytes are written (and stay as they are).
    pub fn ready(&self, len: u64) {
        if let Some(tx) = &self.ready {
            let _ = tx.send(len);
        }
    }

    /// The hash, once every byte was declared ready; `None` if cancelled meanwhile.
    pub async fn finish(mut self) -> std::io::Result<Option<ContentHash>> {
        drop(self.ready.take());
        (&mut self.done)
            .await
            .expect("the hash thread always answers")
    }
}

impl Drop for AsWritten {
    fn drop(&mut self) {
        // Closing the channel ends the thread if it still waits for bytes.
        self.ready.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parts_written_out_of_order_hash_like_the_whole_file() {
        let data: Vec<u8> = (0..(5 * CHUNK + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let t = tempfile::tempfile().unwrap();
        t.set_len(data.len() as u64).unwrap();
        let file = Arc::new(t);
        let h =
            AsWritten::start(file.clone(), data.len() as u64, CancellationToken::new()).unwrap();
        let part = 2 * CHUNK + 5;
        let mut parts: Vec<(usize, usize)> = (0..data.len().div_ceil(part))
            .map(|i| (i * part, ((i + 1) * part).min(data.len())))
            .collect();
        parts.reverse();
        // Written last to first: nothing is ready until the first part lands.
        for (start, end) in parts {
            file.write_all_at(&data[start..end], start as u64).unwrap();
            if start == 0 {
                h.ready(data.len() as u64);
            }
        }
        assert_eq!(h.finish().await.unwrap(), Some(ContentHash::of(&data)));
    }

    #[tokio::test]
    async fn a_download_given_up_ends_the_reader() {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let h = AsWritten::start(file, 10 << 20, CancellationToken::new()).unwrap();
        h.ready(0);
        drop(h); // the thread sees the closed channel and returns
        let cancel = CancellationToken::new();
        let file = Arc::new(tempfile::tempfile().unwrap());
        file.set_len(4 << 20).unwrap();
        let h = AsWritten::start(file, 8 << 20, cancel.clone()).unwrap();
        cancel.cancel();
        h.ready(4 << 20);
        assert_eq!(h.finish().await.unwrap(), None);
    }
}
