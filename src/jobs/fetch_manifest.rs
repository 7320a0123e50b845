//! Reading a manifest object from the store: decoded as it streams in, checked against the
//! hash the job recorded.
//!
//! Streamed because a million-entry manifest is 116 MiB of JSON: read whole first, it was held
//! beside its decoded entries, and that was a sync's peak memory. The decoder runs on a thread
//! of its own (a million entries take a second or more): the other transfers of a daemon go
//! on, and a cancel does not wait for it.

use std::io::{self, Read};
use std::path::PathBuf;

use bytes::{Buf, Bytes};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3Default;

use super::detached;
use crate::hash::ContentHash;
use crate::manifest::{Manifest, decode_from};
use crate::store::{ObjectStore, StoreError};
use crate::transfer::{Transfer, TransferError};

/// Body chunks queued between the reading task and the decoder (a few MiB at most).
const QUEUED_CHUNKS: usize = 16;

/// Manifests read at once (each has a decoder thread): a step of a thousand tasks has a
/// thousand output manifests, which one by one cost a thousand round trips.
const AT_ONCE: usize = 16;

/// The manifests `keys` (no hash to check them against), read [`AT_ONCE`] at a time, each
/// with its user metadata, as a stream in the order of `keys`.
pub fn read_at_once<'a>(
    t: &'a Transfer,
    keys: &'a [String],
    cancel: &'a CancellationToken,
) -> impl Stream<Item = Result<(Manifest, Metadata), TransferError>> + Send + 'a {
    // The (lazy) futures made first: a stream mapping keys through a closure is not provably
    // `Send` for the daemon's spawn.
    let reads: Vec<_> = keys
        .iter()
        .map(|key| fetch_with_metadata(t, key, None, cancel))
        .collect();
    futures::stream::iter(reads).buffered(AT_ONCE)
}

/// [`read_at_once`], all of them; the first failure stops the rest.
pub async fn fetch_manifests(
    t: &Transfer,
    keys: &[String],
    cancel: &CancellationToken,
) -> Result<Vec<(Manifest, Metadata)>, TransferError> {
    read_at_once(t, keys, cancel).try_collect().await
}

/// Reads the manifest object `key`, decodes it (which refuses unsafe paths) and, when the job
/// recorded one, checks its hash. A failed read is retried whole, as any store request is.
pub async fn fetch_manifest(
    t: &Transfer,
    key: &str,
    expected: Option<&str>,
    cancel: &CancellationToken,
) -> Result<Manifest, TransferError> {
    Ok(fetch_with_metadata(t, key, expected, cancel).await?.0)
}

/// [`fetch_manifest`], and the object's user metadata.
async fn fetch_with_metadata(
    t: &Transfer,
    key: &str,
    expected: Option<&str>,
    cancel: &CancellationToken,
) -> Result<(Manifest, Metadata), TransferError> {
    let decoded = t
        .gate
        .run(cancel, || attempt(t.store.as_ref(), key, expected))
        .await?;
    decoded.map_err(|message| TransferError::Refused {
        path: PathBuf::from(key),
        message,
    })
}

/// An object's user metadata.
type Metadata = Vec<(String, String)>;

/// One read of the object, its body handed chunk by chunk to a decoder thread. A store error
/// wins over whatever the decoder made of the body it cut short.
async fn attempt(
    store: &dyn ObjectStore,
    key: &str,
    expected: Option<&str>,
) -> Result<Result<(Manifest, Metadata), String>, StoreError> {
    let mut obj = store.get(key, None).await?;
    let metadata = std::mem::take(&mut obj.metadata);
    let (chunks, rx) = mpsc::channel(QUEUED_CHUNKS);
    let (done, decoded) = oneshot::channel();
    let expected = expected.map(str::to_owned);
    detached::spawn(move || {
        let _ = done.send(decode_checked(BodyReader::new(rx), expected));
    });
    while let Some(chunk) = obj.body.next().await {
        if chunks.send(chunk?).await.is_err() {
            break; // the decoder has its answer without the rest
        }
    }
    drop(chunks);
    let decoded = decoded.await.expect("the manifest decoder panicked");
    Ok(decoded.map(|manifest| (manifest, metadata)))
}

/// Decodes the body and checks its hash. Without an expected hash, the first error ends it.
fn decode_checked(mut body: BodyReader, expected: Option<String>) -> Result<Manifest, String> {
    let decoded = decode_from(&mut body);
    if let Some(want) = expected {
        // The whole body is hashed, also after a decode error: a damaged manifest is reported
        // as damaged, not as whatever its damage looks like to the decoder.
        io::copy(&mut body, &mut io::sink()).expect("the body reader does not fail");
        let got = body.hash();
        if !got.to_hex().eq_ignore_ascii_case(&want) {
            return Err(format!(
                "manifest hash is {got}, the job says {want}: the manifest was changed or damaged"
            ));
        }
    }
    decoded.map_err(|e| format!("manifest is not usable: {e}"))
}

/// The chunks of an object's body as a blocking `Read`, hashed as they arrive. It ends when
/// the reading task stops sending (at the end of the body, or when that task is dropped).
struct BodyReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
    hasher: Xxh3Default,
}

impl BodyReader {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        BodyReader {
            rx,
            chunk: Bytes::new(),
            hasher: Xxh3Default::new(),
        }
    }

    /// The hash of every byte received so far.
    fn hash(&self) -> ContentHash {
        ContentHash(self.hasher.digest128())
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.hasher.update(&chunk);
                    self.chunk = chunk;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}
